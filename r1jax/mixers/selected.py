"""Attention over selected key blocks in XLA: the training and prefill path of NSA's selected branch (Yuan et al.
2025) and of block top-k (MoBA, Lu et al. 2025), by whole-block matmuls or, for small blocks, by a per-query gather.

Gathering each query's n selected blocks (n * l' keys per query) moves l' times more data than the queries
themselves; on a CPU that gather, not the arithmetic, set the time (16k tokens, n = 16, l' = 64: 2.9 s for 8.6
GFLOP). MoBA's implementation turns it around: the (query, block) pairs are sorted by block, each key block's
queries are gathered into rows of `rows`, and every row group meets its one key block in a dense [rows * R, l']
matmul. Each pair yields a partial softmax (its maximum, sum and weighted values), and a query's n partials merge by
their log-sum-exp, as FlashAttention merges key blocks. Work: the pairs' l' keys each, plus at most rows - 1 padding
rows per key block; memory O(T * n); no [T, T] intermediate in forward or backward (autodiff through row groups
that are recomputed in the backward).

For small blocks the gather is the cheaper one: it moves l' keys and values per (query, block) pair against the
row groups' R = H/G query rows, partial results, sort and padding (up to rows - 1 rows per key block). Measured
forward+backward on one core of an AMD EPYC (XLA CPU, float32, K = 32; gather's time / whole-block's): R = 1, B=16,
T=256, n = 4: l' = 4 0.33, l' = 8 0.84, l' = 16 1.75; R = 1, T=4096, n = 16: l' = 16 2.4, l' = 64 6.4; R = 4,
T=256: l' = 8 0.67, l' = 16 1.29; R = 4, T=4096: l' = 16 0.80, l' = 32 1.81. So XLA's path
(selected_kernel.attend) gathers blocks of at most GATHER_MAX_BLOCK keys.

Short sequences whose picks cover a quarter of the context or more take neither: dense attention over all T keys
with the picks as a mask (masked_block_attention) does [T, T] work in a few large ops. Measured forward+backward on
the same core (masked / the other path's time): T/(n l') = 4: B=64, T=64, n=4, l'=4 (NSA's and block top-k's MQAR
curriculum) 0.74 against the gather (train steps: NSA 111 -> 92 ms, block top-k 46 -> 39 ms); B=16, T=256: n=8,
l'=8 0.74, n=4, l'=16 0.52 against whole blocks; but T=512, n=8, l'=8 (T/(n l') = 8) 1.83 and T=256, n=4, l'=4
(16) 1.95 against the gather, T=512, n=4, l'=32 (4) 1.35 and T=1024, n=4, l'=64 (4) 2.8 against whole blocks. So
XLA's path masks where T <= MASK_MAX_LEN and T <= MASK_KEYS n l'.
"""

import jax
import jax.numpy as jnp

from r1jax.mixers.sparse import gathered_attention

GATHER_MAX_BLOCK = 8  # blocks of at most this many keys are gathered per query (see the module docstring)
MASK_MAX_LEN, MASK_KEYS = 256, 4  # masked over all keys where T <= both MASK_MAX_LEN and MASK_KEYS * n * l'


def masked_path(T: int, picks: int, block: int) -> bool:
  """Whether XLA's path attends `picks` blocks of `block` keys per query in T tokens as a mask (module docstring)."""
  return T <= MASK_MAX_LEN and T <= MASK_KEYS * picks * block


def order_by_block(blk_P: jax.Array, nblocks: int, max_key: int = 2**31 - 1) -> tuple[jax.Array, jax.Array]:
  """The stable sort of P block ids in [0, nblocks]: (the order, the sorted ids). Where every block * P + pair key
  fits in int32 (<= max_key), one sort of those keys: XLA's CPU sort of one primitive array is ~5x faster than
  argsort's sort of (key, index) pairs through a comparator (2^20 pairs: 44 vs 251 ms). NSA's slabs at 64k (n = 16)
  fit; at 128k the argsort runs."""
  P = blk_P.shape[0]
  if (nblocks + 1) * P - 1 > max_key:
    order = jnp.argsort(blk_P, stable=True)
    return order, blk_P[order]
  keys = jnp.sort(blk_P.astype(jnp.int32) * P + jnp.arange(P, dtype=jnp.int32))
  return keys % P, keys // P


def _pairs(ids_SxTxN: jax.Array, valid_SxTxN: jax.Array, NB: int, rows: int):
  """Sorts the (query, block) pairs of S slabs by global key block (slab * NB + block) into row groups of `rows`,
  each group reading one key block. Returns, per padded row, its query (global index into S * T, -1 for padding;
  a group's queries come first), per group its key block, per original pair its padded row (the dump row Ppad for an
  invalid pair), and per key block its first group and number of groups (a block's groups are contiguous).

  Each slab's pairs are sorted on their own (slab-major order is the global block order, and invalid pairs go to
  the dump row wherever they sort), which keeps the sort keys of order_by_block small."""
  S, T, N = ids_SxTxN.shape
  Q, nblocks = T * N, S * NB  # Q pairs per slab
  P = S * Q
  blk_SxQ = jnp.where(valid_SxTxN, ids_SxTxN, NB).reshape(S, Q)  # NB: invalid
  order_SxQ, blk_s_SxQ = jax.vmap(lambda b: order_by_block(b, NB))(blk_SxQ)
  slab_S1 = jnp.arange(S)[:, None]
  counts_SxNB1 = jnp.zeros((S, NB + 1), jnp.int32).at[slab_S1, blk_SxQ].add(1)
  padded = -(-counts_SxNB1[:, :NB].reshape(nblocks) // rows) * rows
  start = jnp.cumsum(padded) - padded  # first padded row of each block
  first_SxNB1 = jnp.cumsum(counts_SxNB1, 1) - counts_SxNB1  # first sorted pair of each block in its slab
  groups = -(-(P + nblocks * (rows - 1)) // rows)  # a static bound on the row groups
  Ppad = groups * rows
  b = jnp.minimum(blk_s_SxQ, NB - 1)
  rank = jnp.arange(Q)[None] - first_SxNB1[slab_S1, b]  # among the pairs of its block
  row_s = jnp.where(blk_s_SxQ < NB, start[slab_S1 * NB + b] + rank, Ppad).reshape(P).astype(jnp.int32)
  query_s = (slab_S1 * T + order_SxQ // N).reshape(P).astype(jnp.int32)  # pairs are query-major within a slab
  row_query = jnp.full((Ppad + 1,), -1, jnp.int32).at[row_s].set(query_s)[:Ppad]
  group_block = jnp.searchsorted(jnp.cumsum(padded), jnp.arange(groups) * rows, side="right")
  pair_row = jnp.zeros((P,), jnp.int32).at[(slab_S1 * Q + order_SxQ).reshape(P)].set(row_s)
  first_group, num_groups = (start // rows).astype(jnp.int32), (padded // rows).astype(jnp.int32)
  return row_query.reshape(groups, rows), jnp.minimum(group_block, nblocks - 1), pair_row, first_group, num_groups


def selected_block_attention(
  q_BxTxHxK: jax.Array,
  k_BxTxGxK: jax.Array,
  v_BxTxGxK: jax.Array,
  ids_BxTxGxN: jax.Array,
  valid_BxTxGxN: jax.Array,
  block: int,
  rows: int = 64,
  groups_per_step: int = 512,
) -> jax.Array:
  """Causal attention of each query over the key blocks its group picked (see the module docstring).

  Args:
    q_BxTxHxK: queries; k_BxTxGxK, v_BxTxGxK: keys and values (G groups of H/G query heads).
    ids_BxTxGxN: key block ids per query and group (block j = keys [j*block, (j+1)*block)); valid_BxTxGxN: False
      for unused picks. A block picked twice counts twice; keys after the query are masked in a picked block.
    block: keys per block; rows: queries per row group; groups_per_step: row groups computed at once (memory).
  Returns:
    [B, T, H, K]; a query with no valid pick outputs zeros.

  Each sequence is sorted on its own (vmapped): XLA partitions a batched sort and gather over a batch split across
  devices, but cannot split one sort over the whole batch: it gathered every sequence to every device (NSA's
  gpt2_small step compiled for 8 GPUs: 118 GiB per device).
  """
  B = q_BxTxHxK.shape[0]
  one = lambda *a: _attend(*(x[None] for x in a), block, rows, max(1, groups_per_step // B))[0]  # noqa: E731
  return jax.vmap(one)(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, ids_BxTxGxN, valid_BxTxGxN)


def _attend(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, ids_BxTxGxN, valid_BxTxGxN, block, rows, groups_per_step):
  B, T, H, K = q_BxTxHxK.shape
  G, N = k_BxTxGxK.shape[2], ids_BxTxGxN.shape[-1]
  R, S, NB = H // G, B * G, -(-T // block)
  f32 = jnp.promote_types(q_BxTxHxK.dtype, jnp.float32)
  slab = lambda a: a.transpose(0, 2, 1, *range(3, a.ndim)).reshape(S, T, *a.shape[3:])  # noqa: E731 [S, T, ...]
  q_PxRxK = slab(q_BxTxHxK.reshape(B, T, G, R, K) * jnp.asarray(K**-0.5, q_BxTxHxK.dtype)).reshape(S * T, R, K)
  pad = [(0, 0), (0, NB * block - T), (0, 0)]
  k_XxbxK, v_XxbxK = (jnp.pad(slab(a), pad).reshape(S * NB, block, K) for a in (k_BxTxGxK, v_BxTxGxK))
  row_query, group_block, pair_row, _, _ = _pairs(slab(ids_BxTxGxN), slab(valid_BxTxGxN), NB, rows)
  groups = row_query.shape[0]
  step = min(groups_per_step, groups)
  extra = -groups % step
  row_query = jnp.pad(row_query, [(0, extra), (0, 0)], constant_values=-1)
  group_block = jnp.pad(group_block, [(0, extra)])

  @jax.checkpoint
  def row_groups(args):  # [step, rows] queries against their [step] key blocks: partial softmaxes
    rq, gb = args
    q_CxrxRxK = q_PxRxK[jnp.maximum(rq, 0)]
    s = jnp.einsum("CrRK,CbK->CrRb", q_CxrxRxK, k_XxbxK[gb], preferred_element_type=f32)
    k_pos = (gb % NB)[:, None] * block + jnp.arange(block)[None, :]  # [C, b]
    ok = (rq >= 0)[:, :, None] & (k_pos[:, None, :] <= (rq % T)[:, :, None])  # [C, r, b]
    ok = ok[:, :, None, :]
    s = jnp.where(ok, s, -jnp.inf)  # exp(-inf) = 0 with a zero gradient (a masked exp(s - m) could overflow)
    m = jnp.maximum(jnp.max(s, -1), -1e30)
    p = jnp.exp(s - m[..., None])
    acc = jnp.einsum("CrRb,CbK->CrRK", p.astype(v_XxbxK.dtype), v_XxbxK[gb], preferred_element_type=f32)
    return acc, m, p.sum(-1)

  acc, m, l = jax.lax.map(row_groups, (row_query.reshape(-1, step, rows), group_block.reshape(-1, step)))
  flat = (
    lambda a, fill: jnp.concatenate(  # noqa: E731 the padded rows, then the dump row of invalid pairs
      [a.reshape(-1, *a.shape[3:])[: groups * rows], jnp.full((1, *a.shape[3:]), fill, a.dtype)]
    )
  )
  acc, m, l = flat(acc, 0.0)[pair_row], flat(m, -1e30)[pair_row], flat(l, 0.0)[pair_row]
  # merge each query's N partials by log-sum-exp
  acc, m, l = acc.reshape(S, T, N, R, K), m.reshape(S, T, N, R), l.reshape(S, T, N, R)
  w = jnp.exp(m - jnp.max(m, 2, keepdims=True))
  den = jnp.sum(w * l, 2)
  # a contraction, not sum(w[..., None] * acc): XLA's CPU code made that broadcast-and-reduce a fusion 6x slower
  # than the dot (T=16k, n = 16, K = 64: forward 151 vs 17 ms, forward+backward 495 vs 79 ms, one call each)
  o_SxTxRxK = jnp.einsum("STNR,STNRK->STRK", w, acc) / jnp.where(den > 0, den, 1.0)[..., None]
  o = o_SxTxRxK.reshape(B, G, T, R, K).transpose(0, 2, 1, 3, 4).reshape(B, T, H, K)
  return o.astype(q_BxTxHxK.dtype)


def masked_block_attention(
  q_BxTxHxK: jax.Array,
  k_BxTxGxK: jax.Array,
  v_BxTxGxK: jax.Array,
  ids_BxTxGxN: jax.Array,
  valid_BxTxGxN: jax.Array,
  block: int,
) -> jax.Array:
  """selected_block_attention's contract as dense attention over all T keys, the picked blocks a mask: a block
  picked c times adds log(c) to its scores (counted c times, as the other paths count it). [T, T] scores: for short
  sequences whose picks cover much of the context (masked_path)."""
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxTxGxK.shape[2]
  R, NB = H // G, -(-T // block)
  f32 = jnp.promote_types(q_BxTxHxK.dtype, jnp.float32)
  ids_BxGxTxN, valid_BxGxTxN = ids_BxTxGxN.transpose(0, 2, 1, 3), valid_BxTxGxN.transpose(0, 2, 1, 3)
  hits = (ids_BxGxTxN[..., None] == jnp.arange(NB)[None, None, None, None]) & valid_BxGxTxN[..., None]
  count_BxGxTxS = jnp.repeat(jnp.sum(hits, -2, dtype=jnp.int32), block, -1)[..., :T]
  ok_BxGxTxS = (count_BxGxTxS > 0) & (jnp.arange(T)[:, None] >= jnp.arange(T)[None, :])[None, None]
  bias = jnp.where(ok_BxGxTxS, jnp.log(jnp.maximum(count_BxGxTxS, 1).astype(f32)), -jnp.inf)
  q_BxGxRxTxK = q_BxTxHxK.reshape(B, T, G, R, K).transpose(0, 2, 3, 1, 4) * jnp.asarray(K**-0.5, q_BxTxHxK.dtype)
  s = jnp.einsum("BGRTK,BSGK->BGRTS", q_BxGxRxTxK, k_BxTxGxK, preferred_element_type=f32) + bias[:, :, None]
  m = jax.lax.stop_gradient(jnp.maximum(jnp.max(s, -1, keepdims=True), -1e30))  # nothing to read: zeros
  p = jnp.exp(s - m)
  den = jnp.sum(p, -1, keepdims=True)
  o = jnp.einsum("BGRTS,BSGK->BTGRK", p.astype(v_BxTxGxK.dtype), v_BxTxGxK, preferred_element_type=f32)
  o = o / jnp.where(den > 0, den, 1.0).transpose(0, 3, 1, 2, 4)
  return o.reshape(B, T, H, K).astype(q_BxTxHxK.dtype)


def block_tokens(
  ids_BxCxGxN: jax.Array, valid_BxCxGxN: jax.Array, pos_C: jax.Array, block: int, T: int
) -> tuple[jax.Array, jax.Array]:
  """The N * block token positions of the picked blocks [B, C, G, N * block] (clipped to T - 1) and which of them a
  query at `pos_C` ([C], or [B, C] per row) reads: valid, not after it, inside the sequence."""
  tok_BxCxGxN = (ids_BxCxGxN[..., None] * block + jnp.arange(block)[None, None, None, None]).reshape(
    *ids_BxCxGxN.shape[:3], -1
  )
  pos_xCx1x1 = (pos_C[None] if pos_C.ndim == 1 else pos_C)[:, :, None, None]
  ok = jnp.repeat(valid_BxCxGxN, block, -1) & (tok_BxCxGxN <= pos_xCx1x1) & (tok_BxCxGxN < T)
  return jnp.minimum(tok_BxCxGxN, T - 1), ok


def gathered_block_attention(
  q_BxCxHxK: jax.Array,
  k_BxTxGxK: jax.Array,
  v_BxTxGxK: jax.Array,
  ids_BxCxGxN: jax.Array,
  valid_BxCxGxN: jax.Array,
  block: int,
  pos_C: jax.Array | None = None,
) -> jax.Array:
  """selected_block_attention's contract by a per-query gather: each picked block is one row of `block` keys of the
  padded keys (sparse.gathered_attention), masked causally at the query positions `pos_C` ([C] or [B, C]; default
  0..C-1). The decoding step's path, and training's for blocks of at most GATHER_MAX_BLOCK keys."""
  B, C, H, K = q_BxCxHxK.shape
  T, G = k_BxTxGxK.shape[1:3]
  pos_C = jnp.arange(C) if pos_C is None else pos_C
  _, ok_BxCxGxS = block_tokens(ids_BxCxGxN, valid_BxCxGxN, pos_C, block, T)
  any_BxCxG = ok_BxCxGxS.any(-1)
  ok_BxCxGxS = ok_BxCxGxS | ~any_BxCxG[..., None]  # a query with nothing to read: defined, then zeroed
  pad = [(0, 0), (0, -T % block), (0, 0), (0, 0)]
  out_BxCxHxK, _ = gathered_attention(
    q_BxCxHxK, jnp.pad(k_BxTxGxK, pad), jnp.pad(v_BxTxGxK, pad), ids_BxCxGxN, ok_BxCxGxS, rows=block
  )
  keep = jnp.repeat(any_BxCxG, H // G, 2)[..., None].astype(out_BxCxHxK.dtype)
  return out_BxCxHxK * keep
