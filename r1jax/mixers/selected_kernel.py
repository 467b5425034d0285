"""Block-sparse flash attention for GPU in Pallas (Triton): each query attends to the key blocks its group picked,
streaming only those blocks through an online softmax; NSA's selected branch (Yuan et al. 2025) and block top-k
(MoBA, Lu et al. 2025) on a GPU. The XLA path (r1jax/mixers/selected.py) is the reference it must equal.

Group-centric, as NSA's kernel (section 3.4): one program per (sequence, key/value group, query position) loads the
R = H/G query heads of the group together, then its n picked blocks of l' keys one at a time (scores, causal mask
inside the own block, online softmax; FlashAttention-2's recurrence, Dao 2023). It keeps the output and the rows'
log-sum-exp; the backward recomputes the probabilities from them:
- dq: the forward's programs again, over the same block lists;
- dk, dv: the block lists transposed. The (query, block) pairs are sorted by key block into groups of at most
  `rows` queries (selected.py's `_pairs`, as MoBA does); one program per group loads its key block once, streams its
  queries and writes the block's partial dk, dv; a second kernel sums each block's partials in a fixed order
  (deterministic, no atomics). Bounding a program to `rows` queries keeps the first block (picked by every query)
  from serialising the backward.
Scores and probabilities in float32, operands in their dtype (bfloat16 on GPU). With R >= 16 the products are
tensor-core dots (Triton's minimum M); with fewer heads per group (R = 1: no GQA) they are broadcast multiply-adds:
such a program is bound by loading its blocks either way. Off a GPU, `interpret=True` runs the same kernels through
Pallas's interpreter (the tests check them against the reference on the CPU).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton
from jax.sharding import PartitionSpec as P

from r1jax import sharding
from r1jax.errors import ConfigError
from r1jax.mixers.selected import (
  GATHER_MAX_BLOCK,
  _pairs,
  gathered_block_attention,
  masked_block_attention,
  masked_path,
  selected_block_attention,
)

WARPS = 4
MIN_DOT = 16  # Triton's dot needs at least 16 rows, columns and depth
ROWS = 256  # least queries per program of the dk/dv kernel (more where there are over GROUPS groups of ROWS)
GROUPS = 16384  # dk/dv programs (+ one per key block) above which a program takes more queries: partials of
#                 (pairs / rows + blocks) x l' x K floats, twice, stay bounded (fwd+bwd compiled for an H100 at
#                 64k tokens, 12 heads, n = 16, l' = 64: 2.69 GiB with ROWS, 1.66 GiB)
IMPLEMENTATIONS = ("auto", "xla", "pallas")  # the sparse mixers' `implementation` option (see `choose`)
NAMES = ("r1jax_sel_fwd", "r1jax_sel_dq", "r1jax_sel_dkdv", "r1jax_sel_sum")  # the Pallas calls, as in compiled HLO


def _pow2(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


def supported(heads_per_group: int, head_dim: int, block: int) -> str:
  """'' where the kernels tile these sizes, else why not (Triton's tiles are powers of 2; dots need 16)."""
  if not (_pow2(heads_per_group) and _pow2(head_dim) and _pow2(block)):
    return f"heads per group {heads_per_group}, head dim {head_dim} and block {block} must be powers of 2"
  if head_dim < MIN_DOT or block < MIN_DOT:
    return f"head dim {head_dim} and block {block} must be at least {MIN_DOT}"
  return ""


def kernel_flops(name: str, operand_shapes: list[tuple[int, ...]]) -> float:
  """Multiply-add work (2 FLOPs each) of one call from its operands' shapes, as compiled HLO lists them (fwd and dq:
  count[P], ids[P, N], q[P, R, K], ..., arange(l') last), every pick counted as a valid whole block (an upper bound:
  the kernels skip invalid picks, and the causal mask inside the own block is not subtracted): forward 2 products
  per key (q.k, p.v); backward 7 (dq's 3: q.k again, do.v, ds.k; dk/dv's 4: q.k, do.v, ds^T.q, p^T.do), all counted
  on dq's call, since dk/dv's operands do not say how many of their padded rows are real pairs."""
  if name not in NAMES[:2]:
    return 0.0
  (P, N), (_, R, K), (b,) = operand_shapes[1], operand_shapes[2], operand_shapes[-1]
  return 2.0 * P * N * b * R * K * (2 if name == NAMES[0] else 7)


def _scores(q_RxK, k_bxK, dots: bool) -> jax.Array:
  if dots:
    return jax.lax.dot_general(q_RxK, k_bxK, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  return jnp.sum(q_RxK.astype(jnp.float32)[:, None, :] * k_bxK.astype(jnp.float32)[None, :, :], -1)


def _rows_times(p_Rxb, v_bxK, dots: bool) -> jax.Array:
  """p [R, b] @ v [b, K] in float32."""
  if dots:
    return jnp.dot(p_Rxb.astype(v_bxK.dtype), v_bxK, preferred_element_type=jnp.float32)
  return jnp.sum(p_Rxb[:, :, None] * v_bxK.astype(jnp.float32)[None, :, :], 1)


def _cols_times(p_Rxb, d_RxK, dots: bool) -> jax.Array:
  """p^T [b, R] @ d [R, K] in float32."""
  if dots:
    return jax.lax.dot_general(
      p_Rxb.astype(d_RxK.dtype), d_RxK, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
  return jnp.sum(p_Rxb[:, :, None] * d_RxK.astype(jnp.float32)[:, None, :], 0)


def _full(x, value: float, shape) -> jax.Array:
  """A float32 constant of `shape` varying like the loaded value `x` (a loop's initial carry must match its body's
  in shard_map, where Pallas's interpreter gives loaded values the shard_map axes)."""
  return jax.lax.full_like(x, value, jnp.float32, shape)


def _reads(key_pos, t, window: int):
  """Which keys a query at t reads: not after it and, with a window, inside its last `window` positions."""
  ok = key_pos <= t
  return ok & (key_pos > t - window) if window else ok


def _fwd_kernel(
  count_ref, ids_ref, q_ref, k_ref, v_ref, pos_ref, o_ref, lse_ref, *, T: int, NB: int, window: int, dots: bool
):
  p = pl.program_id(0)
  t, q = p % T, q_ref[...]
  R, K = q.shape
  b = pos_ref.shape[0]

  def step(n, carry):
    m, l, acc = carry
    gid = ids_ref[p, n]
    blk = jnp.maximum(gid, 0)
    k, v = k_ref[pl.ds(blk * b, b), :], v_ref[pl.ds(blk * b, b), :]
    ok = (gid >= 0) & _reads((blk % NB) * b + pos_ref[...], t, window)  # [b]: picked, and read by the query
    s = jnp.where(ok[None, :], _scores(q, k, dots), -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, 1))  # from -1e30: a fully masked block leaves m finite and adds exp(-inf) = 0
    alpha = jnp.exp(m - m_new)
    e = jnp.exp(s - m_new[:, None])
    return m_new, l * alpha + jnp.sum(e, 1), acc * alpha[:, None] + _rows_times(e, v, dots)

  init = (_full(q, -1e30, (R,)), _full(q, 0.0, (R,)), _full(q, 0.0, (R, K)))
  m, l, acc = jax.lax.fori_loop(0, count_ref[p], step, init)  # the valid picks come first
  o_ref[...] = (acc / jnp.where(l > 0, l, 1.0)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(l > 0, m + jnp.log(l), jnp.inf)  # no pick: +inf, so the backward's exp(s - lse) is 0


def _dq_kernel(
  count_ref, ids_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, pos_ref, dq_ref, *, T, NB, window, dots
):
  p = pl.program_id(0)
  t, q, do, lse, delta = p % T, q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  b = pos_ref.shape[0]

  def step(n, dq):
    gid = ids_ref[p, n]
    blk = jnp.maximum(gid, 0)
    k, v = k_ref[pl.ds(blk * b, b), :], v_ref[pl.ds(blk * b, b), :]
    ok = (gid >= 0) & _reads((blk % NB) * b + pos_ref[...], t, window)
    e = jnp.where(ok[None, :], jnp.exp(_scores(q, k, dots) - lse[:, None]), 0.0)
    ds = e * (_scores(do, v, dots) - delta[:, None])
    return dq + _rows_times(ds, k, dots)

  dq = jax.lax.fori_loop(0, count_ref[p], step, _full(q, 0.0, q.shape))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkdv_kernel(
  count_ref,
  query_ref,
  block_ref,
  q_ref,
  k_ref,
  v_ref,
  do_ref,
  lse_ref,
  delta_ref,
  pos_ref,
  dk_ref,
  dv_ref,
  *,
  T,
  NB,
  window,
  dots,
):
  c = pl.program_id(0)
  blk = block_ref[c]
  b, K = pos_ref.shape[0], k_ref.shape[1]
  k, v = k_ref[pl.ds(blk * b, b), :], v_ref[pl.ds(blk * b, b), :]
  key_pos = (blk % NB) * b + pos_ref[...]

  def step(r, carry):  # the group's queries are a prefix of its rows (selected._pairs pads each block at its end)
    dk, dv = carry
    i = query_ref[c, r]
    q, do, lse, delta = q_ref[i], do_ref[i], lse_ref[i], delta_ref[i]
    e = jnp.where(_reads(key_pos, i % T, window)[None, :], jnp.exp(_scores(q, k, dots) - lse[:, None]), 0.0)
    ds = e * (_scores(do, v, dots) - delta[:, None])
    return dk + _cols_times(ds, q, dots), dv + _cols_times(e, do, dots)

  zeros = _full(k, 0.0, (b, K))
  dk, dv = jax.lax.fori_loop(0, count_ref[c], step, (zeros, zeros))
  dk_ref[...], dv_ref[...] = dk, dv


def _sum_kernel(first_ref, count_ref, dk_ref, dv_ref, dk_out, dv_out):
  j = pl.program_id(0)
  first = first_ref[j]

  def step(c, carry):
    return carry[0] + dk_ref[first + c], carry[1] + dv_ref[first + c]

  zeros = _full(first, 0.0, dk_out.shape)
  dk, dv = jax.lax.fori_loop(0, count_ref[j], step, (zeros, zeros))
  dk_out[...], dv_out[...] = dk.astype(dk_out.dtype), dv.astype(dv_out.dtype)


def _params():
  return pl_triton.CompilerParams(num_warps=WARPS, num_stages=2)  # Triton, not Mosaic GPU (see grouped_matmul.py)


def _forward(q_PxRxK, k_XxK, v_XxK, ids_PxN, T, NB, window, interpret):
  count_P = jnp.sum(ids_PxN >= 0, 1).astype(jnp.int32)
  P, R, K = q_PxRxK.shape
  b = k_XxK.shape[0] // (P // T * NB)
  row, whole = pl.BlockSpec((None, R, K), lambda p: (p, 0, 0)), pl.no_block_spec
  return pl.pallas_call(
    functools.partial(_fwd_kernel, T=T, NB=NB, window=window, dots=R >= MIN_DOT),
    out_shape=(
      sharding.shaped_like(q_PxRxK, (P, R, K), q_PxRxK.dtype),
      sharding.shaped_like(q_PxRxK, (P, R), jnp.float32),
    ),
    grid=(P,),
    in_specs=[whole, whole, row, whole, whole, whole],
    out_specs=(row, pl.BlockSpec((None, R), lambda p: (p, 0))),
    interpret=interpret,
    compiler_params=_params(),
    name=NAMES[0],
  )(*sharding.vary_together(count_P, ids_PxN, q_PxRxK, k_XxK, v_XxK, jnp.arange(b, dtype=jnp.int32)))


def _backward(q_PxRxK, k_XxK, v_XxK, ids_PxN, o_PxRxK, lse_PxR, do_PxRxK, T, NB, window, rows, interpret):
  P, R, K = q_PxRxK.shape
  S, X = P // T, k_XxK.shape[0]
  b, dots, pos = X // (S * NB), R >= MIN_DOT, jnp.arange(X // (S * NB), dtype=jnp.int32)
  count_P = jnp.sum(ids_PxN >= 0, 1).astype(jnp.int32)
  delta_PxR = jnp.sum(do_PxRxK.astype(jnp.float32) * o_PxRxK.astype(jnp.float32), -1)
  row, row1, whole = (
    pl.BlockSpec((None, R, K), lambda p: (p, 0, 0)),
    pl.BlockSpec((None, R), lambda p: (p, 0)),
    pl.no_block_spec,
  )
  dq = pl.pallas_call(
    functools.partial(_dq_kernel, T=T, NB=NB, window=window, dots=dots),
    out_shape=sharding.shaped_like(q_PxRxK, (P, R, K), q_PxRxK.dtype),
    grid=(P,),
    in_specs=[whole, whole, row, whole, whole, row, row1, row1, whole],
    out_specs=row,
    interpret=interpret,
    compiler_params=_params(),
    name=NAMES[1],
  )(*sharding.vary_together(count_P, ids_PxN, q_PxRxK, k_XxK, v_XxK, do_PxRxK, lse_PxR, delta_PxR, pos))

  N = ids_PxN.shape[1]
  ids_SxTxN = jnp.where(ids_PxN >= 0, ids_PxN - (jnp.arange(P) // T * NB)[:, None], 0).reshape(S, T, N)
  rows = rows or max(ROWS, 1 << max(0, -(-P * N // GROUPS) - 1).bit_length())  # a power of 2 >= pairs / GROUPS
  operands = (q_PxRxK, k_XxK, v_XxK, do_PxRxK, lse_PxR, delta_PxR, pos)  # as the dq kernel's
  row_query, group_block, _, first_J, groups_J = _pairs(ids_SxTxN, (ids_PxN >= 0).reshape(S, T, N), NB, rows)
  count_C = jnp.sum(row_query >= 0, 1).astype(jnp.int32)
  C = row_query.shape[0]
  part = sharding.shaped_like(q_PxRxK, (C, b, K), jnp.float32)
  tile = pl.BlockSpec((None, b, K), lambda c: (c, 0, 0))
  dk_C, dv_C = pl.pallas_call(
    functools.partial(_dkdv_kernel, T=T, NB=NB, window=window, dots=dots),
    out_shape=(part, part),
    grid=(C,),
    in_specs=[pl.no_block_spec] * 10,
    out_specs=(tile, tile),
    interpret=interpret,
    compiler_params=_params(),
    name=NAMES[2],
  )(*sharding.vary_together(count_C, jnp.maximum(row_query, 0), group_block.astype(jnp.int32), *operands))
  dk, dv = pl.pallas_call(
    _sum_kernel,
    out_shape=(sharding.shaped_like(q_PxRxK, (S * NB, b, K), k_XxK.dtype),) * 2,
    grid=(S * NB,),
    in_specs=[pl.no_block_spec] * 4,
    out_specs=(tile, tile),
    interpret=interpret,
    compiler_params=_params(),
    name=NAMES[3],
  )(*sharding.vary_together(first_J, groups_J, dk_C, dv_C))
  return dq, dk.reshape(X, K), dv.reshape(X, K)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _attend(q_PxRxK, k_XxK, v_XxK, ids_PxN, T, NB, window, rows, interpret):
  return _forward(q_PxRxK, k_XxK, v_XxK, ids_PxN, T, NB, window, interpret)[0]


def _attend_fwd(q_PxRxK, k_XxK, v_XxK, ids_PxN, T, NB, window, rows, interpret):
  o, lse = _forward(q_PxRxK, k_XxK, v_XxK, ids_PxN, T, NB, window, interpret)
  return o, (q_PxRxK, k_XxK, v_XxK, ids_PxN, o, lse)


def _attend_bwd(T, NB, window, rows, interpret, res, do_PxRxK):
  q, k, v, ids, o, lse = res
  dq, dk, dv = _backward(q, k, v, ids, o, lse, do_PxRxK.astype(q.dtype), T, NB, window, rows, interpret)
  return dq, dk, dv, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def selected_attention_kernel(
  q_BxTxHxK: jax.Array,
  k_BxTxGxK: jax.Array,
  v_BxTxGxK: jax.Array,
  ids_BxTxGxN: jax.Array,
  valid_BxTxGxN: jax.Array,
  block: int,
  *,
  window: int = 0,
  rows: int = 0,
  interpret: bool = False,
) -> jax.Array:
  """selected.selected_block_attention's contract through the kernels: causal attention of each query over the key
  blocks its group picked (a block picked twice counts twice; no valid pick: zeros); with `window` > 0 only the
  keys of its last `window` positions count. Sizes as `supported` says; `rows`: queries per dk/dv program (0: at
  least ROWS, more for over GROUPS programs)."""
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxTxGxK.shape[2]
  R, S, NB = H // G, B * G, -(-T // block)
  slab = lambda a: a.transpose(0, 2, 1, *range(3, a.ndim)).reshape(S * a.shape[1], *a.shape[3:])  # noqa: E731
  q_PxRxK = slab(q_BxTxHxK.reshape(B, T, G, R, K) * jnp.asarray(K**-0.5, q_BxTxHxK.dtype))
  pad = [(0, 0), (0, NB * block - T), (0, 0), (0, 0)]
  k_XxK, v_XxK = (slab(jnp.pad(a, pad)) for a in (k_BxTxGxK, v_BxTxGxK))
  offset_P = (jnp.arange(S * T, dtype=jnp.int32) // T * NB)[:, None]
  valid_PxN = slab(valid_BxTxGxN)
  ids_PxN = jnp.where(valid_PxN, slab(ids_BxTxGxN).astype(jnp.int32) + offset_P, -1)
  ids_PxN = jnp.take_along_axis(ids_PxN, jnp.argsort(~valid_PxN, 1, stable=True), 1)  # valid picks first
  o_PxRxK = _attend(q_PxRxK, k_XxK, v_XxK, ids_PxN, T, NB, window, rows, interpret)
  return o_PxRxK.reshape(B, G, T, R, K).transpose(0, 2, 1, 3, 4).reshape(B, T, H, K)


def window_blocks(B: int, T: int, G: int, window: int, block: int) -> tuple[jax.Array, jax.Array]:
  """The key blocks a sliding window of `window` tokens reaches from each query ([B, T, G, n]: the own block and the
  ceil((window - 1) / block) before it) and which exist."""
  n = -(-(window - 1) // block) + 1
  own_T = jnp.arange(T, dtype=jnp.int32) // block
  ids_TxN = own_T[:, None] - jnp.arange(n - 1, -1, -1, dtype=jnp.int32)[None, :]
  shape = (B, T, G, n)
  return jnp.broadcast_to(jnp.maximum(ids_TxN, 0)[None, :, None], shape), jnp.broadcast_to(
    (ids_TxN >= 0)[None, :, None], shape
  )


def window_block(window: int) -> int:
  """Key block for a sliding window through the kernels: 64, or the power of 2 >= window (at least 16) below it."""
  return min(64, max(MIN_DOT, 1 << (window - 1).bit_length()))


def check_implementation(implementation: str, field: str) -> None:
  """Validates a sparse mixer's `implementation` option (NSA's, block top-k's)."""
  if implementation not in IMPLEMENTATIONS:
    raise ConfigError(f"{field}={implementation!r} is unknown. Fix: use one of {IMPLEMENTATIONS}")


def choose(implementation: str, field: str, heads_per_group: int, head_dim: int, block: int) -> str:
  """`auto`: the kernels on a GPU where they tile these sizes (sharding.platform(): the platform traced for), else
  XLA; `pallas` where they do not tile: a ConfigError naming `field`."""
  why = supported(heads_per_group, head_dim, block)
  if implementation == "auto":
    return "pallas" if sharding.platform() == "gpu" and not why else "xla"
  if implementation == "pallas" and why:
    raise ConfigError(f"{field}=pallas cannot run: {why}. Fix: change those sizes, or use {field}=auto")
  return implementation


def attend(
  q_BxTxHxK: jax.Array,
  k_BxTxGxK: jax.Array,
  v_BxTxGxK: jax.Array,
  ids_BxTxGxN: jax.Array,
  valid_BxTxGxN: jax.Array,
  block: int,
  implementation: str,
  field: str,
  window: int = 0,
) -> jax.Array:
  """Attention over picked key blocks through the implementation `choose` picks: XLA's (r1jax/mixers/selected.py: short
  sequences as a mask over all keys, else small blocks gathered per query, larger ones by whole-block matmuls; no
  window) or the kernels (interpreted off a GPU). On a mesh that splits the batch or the heads, the kernels run per
  device in shard_map (XLA cannot partition a Pallas call: it would gather every sequence)."""
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxTxGxK.shape[2]
  if choose(implementation, field, H // G, K, block) == "xla":
    if window:
      raise ValueError("the XLA path has no window bound: pass implementation='pallas' with a window")
    if masked_path(T, ids_BxTxGxN.shape[-1], block):  # the choice: selected.py's docstring
      xla = masked_block_attention
    elif block <= GATHER_MAX_BLOCK:
      xla = gathered_block_attention
    else:
      xla = selected_block_attention
    return xla(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, ids_BxTxGxN, valid_BxTxGxN, block)
  interpret = sharding.platform() != "gpu"
  kernel = functools.partial(selected_attention_kernel, block=block, window=window, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  size = lambda axes: math.prod(mesh.shape[a] for a in axes)  # noqa: E731
  batch, heads = sharding.split_axes("act_batch"), sharding.split_axes("act_heads")
  batch, heads = (batch if B % size(batch) == 0 else ()), (heads if G % size(heads) == 0 else ())
  if not batch and not heads:
    return kernel(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, ids_BxTxGxN, valid_BxTxGxN)
  spec = P(batch or None, None, heads or None, None)  # a group's query heads stay with its key/value head
  # Pallas's interpreter loses the shard_map axes of a loop over refs (jax 0.10): interpreted, the check is off
  return jax.shard_map(kernel, in_specs=(spec,) * 5, out_specs=spec, check_vma=not interpret)(
    q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, ids_BxTxGxN, valid_BxTxGxN
  )
