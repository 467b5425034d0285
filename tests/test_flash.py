"""The blocked O(T)-memory attention (r1jax/mixers/flash.py) against the naive reference: values and gradients,
GQA, sliding windows, lengths that are not a multiple of the block; its memory at 64k; the dense mixer's flash path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.config import ModelConfig
from r1jax.lab.scaling import compile_mixer
from r1jax.mixers import dense
from r1jax.mixers.flash import flash_attention
from r1jax.train import static_memory_bytes


def _qkv(seed, B, T, H, G, K, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 4)
  shapes = ((B, T, H, K), (B, T, G, K), (B, T, G, K), (B, T, H, K))
  return [jax.random.normal(k, s, dtype) for k, s in zip(ks, shapes)]


# (B, T, H, G, K, window, block): odd lengths padded to a block, GQA groups of 1, 2 and 4 query heads, a window
# shorter than, equal to and longer than a block, one block, many blocks
CASES = [
  (2, 37, 4, 2, 8, None, 8),
  (1, 64, 2, 2, 16, None, 16),
  (2, 50, 4, 1, 8, 7, 16),
  (1, 33, 2, 2, 8, 8, 8),
  (1, 45, 4, 4, 8, 30, 8),
  (2, 20, 2, 1, 8, None, 512),
]


@pytest.mark.parametrize("B,T,H,G,K,window,block", CASES)
def test_values_and_gradients_match_the_reference(B, T, H, G, K, window, block):
  q, k, v, ct = _qkv(T, B, T, H, G, K)
  mask = None if window is None else reference.window_mask(T, window)
  fast = jax.jit(lambda q, k, v: flash_attention(q, k, v, window, block))
  slow = lambda q, k, v: reference.attention(q, k, v, mask)  # noqa: E731
  np.testing.assert_allclose(fast(q, k, v), slow(q, k, v), rtol=2e-5, atol=2e-5)
  g_fast = jax.jit(jax.grad(lambda *a: jnp.sum(fast(*a) * ct), argnums=(0, 1, 2)))(q, k, v)
  g_slow = jax.grad(lambda *a: jnp.sum(slow(*a) * ct), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip("qkv", g_fast, g_slow):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"d{name}")


@pytest.mark.parametrize("T,l,d,block", [(40, 4, 2, 8), (70, 8, 4, 16), (33, 6, 3, 8)])
def test_strided_keys_equal_nsas_compressed_attention(T, l, d, block):
  """Keys at positions m * d + l - 1 (NSA's compressed blocks, each read once it has ended): output, probabilities
  (from the returned log-sum-exp) and gradients equal the direct masked softmax in r1jax.mixers.nsa; a query before
  the first block ends reads nothing and outputs zero."""
  from r1jax.mixers.nsa import compressed_attention, num_compressed

  M = num_compressed(T, l, d)
  q, _, _, ct = _qkv(T, 2, T, 4, 2, 8)
  k, v = (jax.random.normal(jax.random.key(T + i), (2, M, 2, 8)) for i in (1, 2))
  fast = jax.jit(lambda q, k, v: flash_attention(q, k, v, None, block, d, l - 1, with_lse=True))
  (o, lse), (want_o, want_p) = fast(q, k, v), compressed_attention(q, k, v, l, d)
  np.testing.assert_allclose(o, want_o, rtol=2e-5, atol=2e-5)
  logits = jnp.einsum("BTHK,BMHK->BTHM", q, jnp.repeat(k, 2, 2)) * 8**-0.5
  ended = (jnp.arange(M) * d + l - 1)[None, None, None, :] <= jnp.arange(T)[None, :, None, None]
  p = jnp.where(ended, jnp.exp(logits - lse[..., None]), 0.0)
  np.testing.assert_allclose(p, want_p, rtol=2e-5, atol=2e-5)
  g_fast = jax.grad(lambda *a: jnp.sum(fast(*a)[0] * ct), argnums=(0, 1, 2))(q, k, v)
  g_slow = jax.grad(lambda *a: jnp.sum(compressed_attention(*a, l, d)[0] * ct), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip("qkv", g_fast, g_slow):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"d{name}")


def test_bfloat16_inputs_accumulate_in_float32():
  q, k, v, _ = _qkv(0, 2, 96, 4, 2, 16, jnp.bfloat16)
  out = flash_attention(q, k, v, block=32)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), reference.attention(q, k, v), rtol=3e-2, atol=3e-2)


def test_forward_and_backward_at_64k_take_O_T_memory():
  """One layer at T = 65536 (batch 1, 2 heads of 64), compiled, not run: XLA's memory estimate of forward+backward
  stays a few times the inputs (each 32 MiB), where the [T, T] scores alone would take 32 GiB."""
  cfg = ModelConfig(vocab_size=64, d_model=128, num_heads=2, mixer_options={"attention": {"impl": "flash"}})
  compiled, _, _ = compile_mixer(cfg, 65536, 1, backward=True)
  assert static_memory_bytes(compiled) < 2**30


def test_the_dense_mixer_takes_the_flash_path_from_its_length():
  assert dense.resolve_impl("auto", jnp.float32, 64, dense.FLASH_FROM) == "flash"
  assert dense.resolve_impl("auto", jnp.float32, 64, dense.FLASH_FROM - 1) == "xla"
  cfg = ModelConfig(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2)
  x = jax.random.normal(jax.random.key(3), (2, 40, 32))
  make = lambda impl: dense.Attention(cfg, dense.AttentionOptions(impl=impl))  # noqa: E731
  params = make("flash").init(jax.random.key(0), x, deterministic=True)
  y_flash, _ = jax.jit(lambda p, x: make("flash").apply(p, x, deterministic=True))(params, x)
  y_naive, _ = make("naive").apply(params, x, deterministic=True)
  np.testing.assert_allclose(y_flash, y_naive, rtol=1e-5, atol=1e-5)
