"""Attention over selected key blocks in XLA (r1jax/mixers/selected.py: whole-block matmuls, the per-query gather of
small blocks and the mask over all keys of short sequences; the choice between them in selected_kernel.attend)
against the naive reference: values and gradients, GQA, lengths that are not a multiple of the block, row groups
split over several steps, queries with nothing to read, blocks picked twice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.mixers import selected, selected_kernel
from r1jax.mixers.selected import selected_block_attention


def _picks(key, B, T, G, N, block):
  """N random blocks per query and group plus its own, unique among the valid ones; ~30% of picks invalid, and
  the first query of each row picks nothing valid (its output is zero)."""
  k1, k2 = jax.random.split(key)
  own = jnp.broadcast_to((jnp.arange(T) // block)[None, :, None, None], (B, T, G, 1))
  ids = jnp.concatenate([jax.random.randint(k1, (B, T, G, N), 0, -(-T // block)), own], -1)
  valid = jax.random.bernoulli(k2, 0.7, ids.shape).at[..., -1].set(True)
  later = (jnp.arange(N + 1)[:, None] > jnp.arange(N + 1)[None, :])[None, None, None]
  valid &= ~((ids[..., :, None] == ids[..., None, :]) & valid[..., None, :] & later).any(-1)
  return ids, valid.at[:, 0].set(False)


def masked_reference(q, k, v, ids, valid, block, window=0):
  """Dense attention under the mask of each query's picked blocks (causal; with a window, its last `window` keys);
  a query with nothing to read outputs zeros."""
  B, T, H, _ = q.shape
  G = k.shape[2]
  picked_BxTxGxS = ((ids[..., None] == (jnp.arange(T) // block)[None, None, None, None]) & valid[..., None]).any(3)
  near = reference.window_mask(T, window) if window else reference.causal_mask(T)
  mask = jnp.repeat(picked_BxTxGxS.transpose(0, 2, 1, 3), H // G, 1) & near[None, None]
  any_BxHxT = mask.any(-1)  # a query with no pick reads key 0 in the reference, and its output is zeroed
  safe = mask | (~any_BxHxT[..., None] & (jnp.arange(T) == 0)[None, None, None])
  return reference.attention(q, k, v, safe) * any_BxHxT.transpose(0, 2, 1)[..., None]


@pytest.mark.parametrize("path", ["whole_blocks", "gathered", "masked"])
@pytest.mark.parametrize(
  "B,T,H,G,K,block,N,rows,step",
  [(2, 37, 4, 2, 8, 8, 3, 4, 3), (1, 64, 2, 2, 16, 16, 2, 8, 512), (2, 50, 4, 1, 8, 4, 5, 2, 7)],
)
def test_values_and_gradients_match_the_masked_reference(path, B, T, H, G, K, block, N, rows, step):
  ks = jax.random.split(jax.random.key(T), 5)
  q = jax.random.normal(ks[0], (B, T, H, K))
  k, v = (jax.random.normal(s, (B, T, G, K)) for s in ks[1:3])
  ct = jax.random.normal(ks[3], (B, T, H, K))
  ids, valid = _picks(ks[4], B, T, G, N, block)
  if path == "whole_blocks":
    fast = jax.jit(lambda q, k, v: selected_block_attention(q, k, v, ids, valid, block, rows, step))
  else:
    xla = selected.gathered_block_attention if path == "gathered" else selected.masked_block_attention
    fast = jax.jit(lambda q, k, v: xla(q, k, v, ids, valid, block))
  slow = lambda q, k, v: masked_reference(q, k, v, ids, valid, block)  # noqa: E731
  np.testing.assert_allclose(fast(q, k, v), slow(q, k, v), rtol=2e-5, atol=2e-5)
  g_fast = jax.jit(jax.grad(lambda *a: jnp.sum(fast(*a) * ct), argnums=(0, 1, 2)))(q, k, v)
  g_slow = jax.grad(lambda *a: jnp.sum(slow(*a) * ct), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip("qkv", g_fast, g_slow):
    assert np.isfinite(np.asarray(a)).all()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"d{name}")


def test_xla_masks_short_sequences_gathers_small_blocks_and_multiplies_whole_blocks_of_larger_ones(monkeypatch):
  """XLA's path (selected_kernel.attend): T <= MASK_MAX_LEN and T <= MASK_KEYS n l' as a mask, else blocks of at most
  GATHER_MAX_BLOCK keys through the gather, larger ones through the row groups."""
  calls = []
  for name in ("gathered_block_attention", "selected_block_attention", "masked_block_attention"):
    monkeypatch.setattr(selected_kernel, name, lambda *a, name=name: calls.append(name))
  for T, block, n in [
    (selected.MASK_MAX_LEN, selected.MASK_MAX_LEN // selected.MASK_KEYS, 1),  # picks cover a quarter: masked
    (selected.MASK_MAX_LEN, selected.GATHER_MAX_BLOCK, 1),  # too few picks for the mask
    (selected.MASK_MAX_LEN, selected.GATHER_MAX_BLOCK + 1, 1),
    (2 * selected.MASK_MAX_LEN, selected.MASK_MAX_LEN, 2),  # too long for the mask, whatever the picks
  ]:
    x = jnp.zeros((1, T, 2, 8))
    ids, valid = jnp.zeros((1, T, 2, n), jnp.int32), jnp.ones((1, T, 2, n), bool)
    selected_kernel.attend(x, x, x, ids, valid, block, "xla", "nsa.implementation")
  assert calls == [
    "masked_block_attention",
    "gathered_block_attention",
    "selected_block_attention",
    "selected_block_attention",
  ]


def test_a_block_picked_twice_counts_twice_on_every_path():
  """The contract's duplicates: each path weighs a block picked twice as two copies of its keys."""
  B, T, H, G, K, block = 2, 32, 4, 2, 8, 4
  ks = jax.random.split(jax.random.key(3), 4)
  q = jax.random.normal(ks[0], (B, T, H, K))
  k, v = (jax.random.normal(s, (B, T, G, K)) for s in ks[1:3])
  own = jnp.broadcast_to((jnp.arange(T) // block)[None, :, None, None], (B, T, G, 1))
  first = jax.random.randint(ks[3], (B, T, G, 1), 0, T // block)
  ids = jnp.concatenate([first, first, own], -1)  # the first pick twice
  valid = jnp.ones(ids.shape, bool)
  outs = [
    selected.masked_block_attention(q, k, v, ids, valid, block),
    selected.gathered_block_attention(q, k, v, ids, valid, block),
    selected_block_attention(q, k, v, ids, valid, block, 4, 8),
  ]
  for out in outs[1:]:
    np.testing.assert_allclose(outs[0], out, rtol=2e-5, atol=2e-5)
  once = selected.masked_block_attention(q, k, v, ids, valid.at[..., 1].set(False), block)
  assert not np.allclose(outs[0], once, atol=1e-3)  # the duplicate weighs


@pytest.mark.parametrize("max_key", [2**31 - 1, 0])  # one int32 sort of (block, pair) keys; the argsort fallback
def test_pairs_are_ordered_by_block_stably_on_both_sort_paths(max_key):
  blk = jax.random.randint(jax.random.key(0), (777,), 0, 13)  # 12 blocks and the invalid id 12, many repeats
  order, blk_s = selected.order_by_block(blk, 12, max_key)
  expected = np.argsort(np.asarray(blk), kind="stable")
  np.testing.assert_array_equal(order, expected)
  np.testing.assert_array_equal(blk_s, np.asarray(blk)[expected])
