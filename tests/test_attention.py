"""Dense attention against the naive reference; the attention mixer's implementations agree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import layers, reference
from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.mixers import dense

from helpers import assert_grad_matches_finite_differences


def _qkv(seed, B, T, H, G, K, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], (B, T, H, K), dtype)
  k = jax.random.normal(ks[1], (B, T, G, K), dtype)
  v = jax.random.normal(ks[2], (B, T, G, K), dtype)
  return q, k, v


# T >= 2 everywhere: one token sees neither the causal mask nor the softmax scale
@pytest.mark.parametrize("B,T,H,G,K", [(1, 2, 1, 1, 8), (2, 17, 4, 4, 16), (3, 64, 4, 2, 8), (2, 33, 6, 1, 32)])
@pytest.mark.parametrize("impl", ["xla", "auto"])
def test_causal_attention_matches_reference(B, T, H, G, K, impl):
  q, k, v = _qkv(T, B, T, H, G, K)
  out = jax.jit(dense.causal_attention, static_argnums=3)(q, k, v, impl)
  np.testing.assert_allclose(out, reference.attention(q, k, v), rtol=2e-5, atol=2e-5)


def test_causal_attention_bfloat16_close_to_float32_reference():
  q, k, v = _qkv(0, 2, 48, 4, 4, 16, jnp.bfloat16)
  out = dense.causal_attention(q, k, v, "xla").astype(jnp.float32)
  np.testing.assert_allclose(out, reference.attention(q, k, v), rtol=3e-2, atol=3e-2)


def test_reference_is_causal_softmax_by_hand():
  """The reference itself, against a loop over queries in numpy float64."""
  q, k, v = (np.asarray(a, np.float64) for a in _qkv(1, 1, 5, 1, 1, 4))
  out = reference.attention(*(a.astype(np.float32) for a in (q, k, v)))
  expect = np.zeros((5, 4))
  for t in range(5):
    s = q[0, t, 0] @ k[0, : t + 1, 0].T / 2.0
    w = np.exp(s - s.max())
    expect[t] = (w / w.sum()) @ v[0, : t + 1, 0]
  np.testing.assert_allclose(out[0, :, 0], expect, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_attention_is_causal_by_gradients():
  q, k, v = _qkv(2, 1, 12, 2, 2, 8)
  t = 5  # output at t must not depend on keys/values after t
  grads = jax.grad(lambda k, v: dense.causal_attention(q, k, v, "xla")[0, t].sum(), argnums=(0, 1))(k, v)
  for g in grads:
    assert np.abs(g[0, t + 1 :]).max() == 0.0
    assert np.abs(g[0, : t + 1]).max() > 0.0


@pytest.mark.slow
def test_mixer_impls_agree_and_jit_equals_eager():
  cfg = ModelConfig(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2)
  x = jax.random.normal(jax.random.key(3), (2, 24, 32))
  make = lambda impl: dense.Attention(cfg, dense.AttentionOptions(impl=impl))
  params = make("xla").init(jax.random.key(0), x, deterministic=True)
  y_xla, aux = make("xla").apply(params, x, deterministic=True)
  y_naive, _ = make("naive").apply(params, x, deterministic=True)
  y_jit, _ = jax.jit(lambda p, x: make("xla").apply(p, x, deterministic=True))(params, x)
  assert aux == {}
  np.testing.assert_allclose(y_xla, y_naive, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y_jit, y_xla, rtol=1e-5, atol=1e-6)


def test_unknown_impl_is_a_config_error():
  with pytest.raises(ConfigError, match="impl='flash2'"):
    dense.AttentionOptions(impl="flash2")


def test_resolve_impl_uses_xla_on_cpu():
  assert dense.resolve_impl("auto", jnp.bfloat16, 64, 512) == "xla"
  assert dense.resolve_impl("cudnn", jnp.float32, 64) == "cudnn"


@pytest.mark.slow
def test_qkv_bias_starts_at_zero_and_learns():
  cfg = ModelConfig(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2)
  x = jax.random.normal(jax.random.key(4), (2, 10, 32))
  biased = dense.Attention(cfg, dense.AttentionOptions(impl="xla", qkv_bias=True))
  params = biased.init(jax.random.key(0), x, deterministic=True)
  assert params["params"]["bq"].value.shape == (4, 8) and params["params"]["bk"].value.shape == (2, 8)
  plain_params = {"params": {k: v for k, v in params["params"].items() if not k.startswith("b")}}
  y_plain, _ = dense.Attention(cfg, dense.AttentionOptions(impl="xla")).apply(plain_params, x, deterministic=True)
  np.testing.assert_allclose(biased.apply(params, x, deterministic=True)[0], y_plain, rtol=1e-6, atol=1e-6)
  params = nn.meta.unbox(params)
  g = assert_grad_matches_finite_differences(lambda p: biased.apply(p, x, deterministic=True)[0].std(), params)
  assert all(np.abs(g["params"][f"b{n}"]).max() > 0 for n in "qkv")


@pytest.mark.parametrize("T,K", [(7, 4), (33, 16)])
def test_rope_static_and_traced_positions_match_reference(T, K):
  """Static positions compile sin/cos in as constants; both forms are RoPE from its definition."""
  x = jax.random.normal(jax.random.key(T), (2, T, 3, K))
  want = reference.rope(x, 10000.0)
  static = layers.rope(x, np.arange(T), 10000.0)
  traced = jax.jit(lambda x, p: layers.rope(x, p, 10000.0))(x, jnp.arange(T))
  np.testing.assert_allclose(static, want, atol=2e-5)
  np.testing.assert_allclose(traced, want, atol=2e-5)
