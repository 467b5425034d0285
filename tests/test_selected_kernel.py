"""The block-sparse attention kernels (r1jax/mixers/selected_kernel.py), run on the CPU by Pallas's interpreter,
against the masked dense reference: values and gradients for GQA groups of 1, 4 and 16 heads (broadcast products and
tensor-core dots), odd lengths, empty and full block lists, a sliding window; the NSA, block top-k and local mixers
through them equal their XLA paths; the automatic choice per platform; sharded equals unsharded."""

import contextlib
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_selected import _picks, masked_reference

from r1jax import registry, sharding
from r1jax.config import MeshConfig
from r1jax.errors import ConfigError
from r1jax.mixers import selected_kernel as sk
from r1jax.mixers.local import local_attention
from r1jax.mixers.selected import selected_block_attention

from helpers import small_model_config


def _inputs(B, T, H, G, K, seed=0, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(ks[0], (B, T, H, K), dtype)
  k, v = (jax.random.normal(s, (B, T, G, K), dtype) for s in ks[1:3])
  return q, k, v, jax.random.normal(ks[3], (B, T, H, K), jnp.float32)


def _check(fast, slow, q, k, v, ct, tol):
  np.testing.assert_allclose(jax.jit(fast)(q, k, v), slow(q, k, v), rtol=tol, atol=tol)
  grads = [jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * ct), argnums=(0, 1, 2)))(q, k, v) for f in (fast, slow)]
  for name, a, b in zip("qkv", *grads):
    assert np.isfinite(np.asarray(a)).all()
    np.testing.assert_allclose(a, b, rtol=10 * tol, atol=10 * tol, err_msg=f"d{name}")


@pytest.mark.parametrize(
  "B,T,H,G,K,block,N,rows",
  [
    (2, 37, 2, 2, 16, 16, 2, 4),  # one head per group (no GQA): broadcast products
    (1, 50, 8, 2, 16, 16, 3, 8),  # 4 heads per group
    (1, 61, 16, 1, 16, 16, 2, 2),  # 16 heads per group: tensor-core dots
  ],
)
def test_kernel_values_and_gradients_match_the_masked_reference(B, T, H, G, K, block, N, rows):
  q, k, v, ct = _inputs(B, T, H, G, K, seed=T)
  ids, valid = _picks(jax.random.key(T + 1), B, T, G, N, block)
  fast = lambda q, k, v: sk.selected_attention_kernel(q, k, v, ids, valid, block, rows=rows, interpret=True)  # noqa: E731
  _check(fast, lambda q, k, v: masked_reference(q, k, v, ids, valid, block), q, k, v, ct, 2e-5)


@pytest.mark.parametrize("lists", ["empty", "full"])
def test_kernel_with_empty_and_full_block_lists(lists):
  """No valid pick: zero output and zero gradients; every block picked: dense causal attention."""
  B, T, H, G, K, block = 1, 40, 4, 1, 16, 16
  q, k, v, ct = _inputs(B, T, H, G, K, seed=3)
  NB = -(-T // block)
  ids = jnp.broadcast_to(jnp.arange(NB), (B, T, G, NB))
  valid = jnp.full(ids.shape, lists == "full")
  fast = lambda q, k, v: sk.selected_attention_kernel(q, k, v, ids, valid, block, rows=8, interpret=True)  # noqa: E731
  _check(fast, lambda q, k, v: masked_reference(q, k, v, ids, valid, block), q, k, v, ct, 2e-5)
  if lists == "empty":
    assert not np.asarray(jax.jit(fast)(q, k, v)).any()


def test_kernel_sliding_window_matches_the_window_reference():
  B, T, H, G, K, window = 2, 45, 4, 2, 16, 20
  q, k, v, ct = _inputs(B, T, H, G, K, seed=5)
  block = sk.window_block(window)
  ids, valid = sk.window_blocks(B, T, G, window, block)
  fast = lambda q, k, v: sk.selected_attention_kernel(q, k, v, ids, valid, block, window=window, interpret=True)  # noqa: E731
  _check(fast, lambda q, k, v: masked_reference(q, k, v, ids, valid, block, window), q, k, v, ct, 2e-5)
  np.testing.assert_allclose(
    jax.jit(lambda q, k, v: local_attention(q, k, v, window, "pallas"))(q, k, v),
    local_attention(q, k, v, window, "naive"),
    rtol=2e-5,
    atol=2e-5,
  )


def test_kernel_in_bfloat16_matches_the_xla_path():
  B, T, H, G, K, block, N = 1, 64, 16, 1, 32, 16, 3
  q, k, v, ct = _inputs(B, T, H, G, K, seed=7, dtype=jnp.bfloat16)
  ids, valid = _picks(jax.random.key(8), B, T, G, N, block)
  fast = lambda q, k, v: sk.selected_attention_kernel(q, k, v, ids, valid, block, interpret=True)  # noqa: E731
  xla = lambda q, k, v: selected_block_attention(q, k, v, ids, valid, block)  # noqa: E731
  got, want = jax.jit(fast)(q, k, v), masked_reference(*(a.astype(jnp.float32) for a in (q, k, v)), ids, valid, block)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2, rtol=3e-2)
  np.testing.assert_allclose(got.astype(jnp.float32), jax.jit(xla)(q, k, v).astype(jnp.float32), atol=3e-2, rtol=3e-2)


def test_auto_takes_the_kernel_on_a_gpu_where_it_tiles(monkeypatch):
  assert sk.choose("auto", "nsa.implementation", 1, 64, 64) == "xla"  # on the CPU
  monkeypatch.setattr(sharding, "platform", lambda: "gpu")
  assert sk.choose("auto", "nsa.implementation", 1, 64, 64) == "pallas"
  assert sk.choose("auto", "nsa.implementation", 3, 64, 64) == "xla"  # 3 heads per group do not tile
  assert sk.choose("xla", "nsa.implementation", 1, 64, 64) == "xla"
  with pytest.raises(ConfigError, match="nsa.implementation=pallas cannot run: head dim 8 .*Fix:"):
    sk.choose("pallas", "nsa.implementation", 1, 8, 64)


def _mixer_outputs(name, options, mesh=None):
  """Output and parameter gradients of mixer `name` (32 wide, 2 heads of 16, T 48) with these options."""
  cfg = small_model_config("mixer", name, options, d_model=32, num_heads=2)
  module = registry.MIXERS[name].module(cfg, cfg.options("mixer", name))
  x = jax.random.normal(jax.random.key(0), (2, 48, 32))
  params = module.init(jax.random.key(1), x, deterministic=True)

  def loss(p, x):
    return jnp.sum(module.apply(p, x, deterministic=True)[0] ** 2)

  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    return jax.jit(jax.value_and_grad(loss))(params, x)


@pytest.mark.parametrize(
  "name,options",
  [
    ("nsa", dict(cmp_block=16, cmp_stride=8, slc_block=16, top_blocks=3, window=16)),
    ("block_sparse", dict(block_size=16, top_blocks=1)),
  ],
)
def test_sparse_mixers_through_the_kernel_equal_their_xla_path(name, options):
  got, want = (_mixer_outputs(name, {**options, "implementation": impl}) for impl in ("pallas", "xla"))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max())


@pytest.mark.slow
def test_kernel_on_a_mesh_equals_one_device():
  """Batch over data, heads over tensor: the kernels run per device in shard_map."""
  mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=1, tensor=2), devices=jax.devices()[:4])
  options = dict(block_size=16, top_blocks=1, implementation="pallas")
  with nn.logical_axis_rules(sharding.RULES):
    got = _mixer_outputs("block_sparse", options, mesh)
  want = _mixer_outputs("block_sparse", options)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max())


def test_unknown_implementation_is_one_clear_line():
  from r1jax.mixers.block_sparse import BlockSparseOptions
  from r1jax.mixers.nsa import NSAOptions

  for options in (NSAOptions, BlockSparseOptions):
    with pytest.raises(ConfigError, match="implementation='triton' .*Fix: use one of"):
      dataclasses.replace(options(), implementation="triton")
