"""Memory-efficient causal attention in plain XLA: FlashAttention's algorithm (Dao et al. 2022; FlashAttention-2, Dao
2023) for backends without a fused kernel (the CPU; cuDNN's stays the GPU path).

Queries in blocks of `block_q`, keys in blocks of `block_k`; each query block runs an online softmax (Milakov and
Gimelshein 2018) over only the key blocks its causal (or sliding-window) mask reaches, so the key blocks beyond the
diagonal cost nothing. The forward keeps the output and the per-row log-sum-exp; the backward (a custom VJP)
recomputes each block's probabilities from them, key block by key block, accumulating dK, dV per key block and dQ
in place: forward, backward and prefill run in O(T) memory, never a [T, T] matrix. Grouped-query heads (G key/value
heads, H/G query heads each) share each loaded key block, as FlashAttention-2 and NSA's group-centric kernels do.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

BLOCK = 512  # query and key block (rows): at head size 64 a block pair is ~0.13 GFLOP, loop overhead negligible


class Geometry(NamedTuple):
  """Which keys a query reads: key m sits at position m * stride + offset (1, 0: the queries' own positions;
  NSA's compressed keys: block m ends at m * d + l - 1); query t reads the keys at positions <= t, and with a
  window w only those > t - w. `block`: rows per query block and keys per key block."""

  block: int
  window: int | None = None
  stride: int = 1
  offset: int = 0


def _layout(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, block: int):
  """Heads-major padded layouts: q [B, G, T', R, K] (scaled by 1/sqrt(K)), k, v [B, G, S', K]; T', S' multiples of
  `block`. Padded keys sit after every real query, so the causal mask hides them; padded queries are sliced off."""
  B, T, H, K = q_BxTxHxK.shape
  G, S = k_BxSxGxK.shape[2], k_BxSxGxK.shape[1]
  q = (q_BxTxHxK * jnp.asarray(K**-0.5, q_BxTxHxK.dtype)).reshape(B, T, G, H // G, K).transpose(0, 2, 1, 3, 4)
  k, v = (a.transpose(0, 2, 1, 3) for a in (k_BxSxGxK, v_BxSxGxK))
  return (
    jnp.pad(q, [(0, 0), (0, 0), (0, -T % block), (0, 0), (0, 0)]),
    jnp.pad(k, [(0, 0), (0, 0), (0, -S % block), (0, 0)]),
    jnp.pad(v, [(0, 0), (0, 0), (0, -S % block), (0, 0)]),
  )


def _key_blocks(i, g: Geometry, nk: int):
  """[first, last] key block that query block i reaches (last < first: none)."""
  last_key = (i * g.block + g.block - 1 - g.offset) // g.stride  # the last key at or before the block's last query
  last = jnp.minimum(last_key // g.block, nk - 1)
  if g.window is None:
    return 0, last
  first_key = jnp.maximum((i * g.block - g.window - g.offset) // g.stride + 1, 0)  # after its first query's window
  return first_key // g.block, last


def _query_blocks(j, g: Geometry, n: int):
  """[first, last] query block that reaches key block j (last < first: none)."""
  first = (j * g.block * g.stride + g.offset) // g.block  # the block of the query at the block's first key
  if g.window is None:
    return first, n - 1
  last_pos = ((j + 1) * g.block - 1) * g.stride + g.offset
  return first, jnp.minimum((last_pos + g.window - 1) // g.block, n - 1)


def _mask(i, j, g: Geometry, R: int):
  """[block * R, block] True where row (query i*block + r // R) may attend key j*block + c."""
  q_pos = i * g.block + jnp.arange(g.block * R) // R
  k_pos = (j * g.block + jnp.arange(g.block)) * g.stride + g.offset
  ok = k_pos[None, :] <= q_pos[:, None]
  if g.window is not None:
    ok &= k_pos[None, :] > q_pos[:, None] - g.window
  return ok


def _rows(a_BxGxTxRxK, i, block: int):
  """Query block i as rows [B, G, block * R, K]."""
  B, G, _, R, K = a_BxGxTxRxK.shape
  return jax.lax.dynamic_slice_in_dim(a_BxGxTxRxK, i * block, block, 2).reshape(B, G, block * R, K)


def _forward(q, k, v, g: Geometry):
  """Output [B, G, T', R, K] (inputs' dtype; zero where a query reads no key) and log-sum-exp [B, G, T' * R] (at
  least float32; -inf where it reads none) of the padded layouts."""
  B, G, Tp, R, K = q.shape
  n, nk, b = Tp // g.block, k.shape[2] // g.block, g.block
  f32 = jnp.promote_types(q.dtype, jnp.float32)  # accumulation: float32 (float64 for float64)

  def query_block(i):
    q_i = _rows(q, i, b)

    def key_block(j, carry):
      m, l, acc = carry
      k_j = jax.lax.dynamic_slice_in_dim(k, j * b, b, 2)
      v_j = jax.lax.dynamic_slice_in_dim(v, j * b, b, 2)
      s = jnp.einsum("BGMK,BGNK->BGMN", q_i, k_j, preferred_element_type=f32)
      ok = _mask(i, j, g, R)
      m_new = jnp.maximum(m, jnp.max(jnp.where(ok, s, -jnp.inf), -1))
      m_new = jnp.maximum(m_new, -1e30)  # a row with nothing yet stays finite: exp(-inf - -1e30) = 0, no NaN
      p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
      alpha = jnp.exp(m - m_new)
      pv = jnp.einsum("BGMN,BGNK->BGMK", p.astype(v.dtype), v_j, preferred_element_type=f32)
      return m_new, l * alpha + p.sum(-1), acc * alpha[..., None] + pv

    first, last = _key_blocks(i, g, nk)
    init = (jnp.full((B, G, b * R), -1e30, f32), jnp.zeros((B, G, b * R), f32), jnp.zeros((B, G, b * R, K), f32))
    m, l, acc = jax.lax.fori_loop(first, last + 1, key_block, init)
    l_safe = jnp.where(l > 0, l, 1.0)
    return (acc / l_safe[..., None]).astype(q.dtype), jnp.where(l > 0, m + jnp.log(l_safe), -jnp.inf)

  o_nxBxGxMxK, lse_nxBxGxM = jax.lax.map(query_block, jnp.arange(n))
  o = jnp.moveaxis(o_nxBxGxMxK, 0, 2).reshape(B, G, Tp, R, K)
  return o, jnp.moveaxis(lse_nxBxGxM, 0, 2).reshape(B, G, Tp * R)


def _backward(q, k, v, o, lse, do, g: Geometry):
  """dq, dk, dv of the padded layouts (FlashAttention-2's backward: per key block, a loop over the query blocks
  that reach it, probabilities recomputed from the saved log-sum-exp)."""
  B, G, Tp, R, K = q.shape
  n, nk, b = Tp // g.block, k.shape[2] // g.block, g.block
  f32 = jnp.promote_types(q.dtype, jnp.float32)
  delta = jnp.sum(do.astype(f32) * o.astype(f32), -1).reshape(B, G, Tp * R)  # rowsum(dO * O)

  def key_block(dq, j):
    k_j = jax.lax.dynamic_slice_in_dim(k, j * b, b, 2)
    v_j = jax.lax.dynamic_slice_in_dim(v, j * b, b, 2)

    def query_block(i, carry):
      dq, dk_j, dv_j = carry
      q_i, do_i = _rows(q, i, b), _rows(do, i, b)
      lse_i = jax.lax.dynamic_slice_in_dim(lse, i * b * R, b * R, 2)
      delta_i = jax.lax.dynamic_slice_in_dim(delta, i * b * R, b * R, 2)
      s = jnp.einsum("BGMK,BGNK->BGMN", q_i, k_j, preferred_element_type=f32)
      p = jnp.where(_mask(i, j, g, R), jnp.exp(s - lse_i[..., None]), 0.0)
      dv_j += jnp.einsum("BGMN,BGMK->BGNK", p.astype(do.dtype), do_i, preferred_element_type=f32)
      dp = jnp.einsum("BGMK,BGNK->BGMN", do_i, v_j, preferred_element_type=f32)
      ds = (p * (dp - delta_i[..., None])).astype(q.dtype)
      dk_j += jnp.einsum("BGMN,BGMK->BGNK", ds, q_i, preferred_element_type=f32)
      dq_i = jnp.einsum("BGMN,BGNK->BGMK", ds, k_j, preferred_element_type=f32).reshape(B, G, b, R, K)
      dq = jax.lax.dynamic_update_slice_in_dim(dq, jax.lax.dynamic_slice_in_dim(dq, i * b, b, 2) + dq_i, i * b, 2)
      return dq, dk_j, dv_j

    first, last = _query_blocks(j, g, n)
    zeros = jnp.zeros((B, G, b, K), f32)
    dq, dk_j, dv_j = jax.lax.fori_loop(first, last + 1, query_block, (dq, zeros, zeros))
    return dq, (dk_j, dv_j)

  dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros((B, G, Tp, R, K), f32), jnp.arange(nk))
  dk, dv = (jnp.moveaxis(a, 0, 2).reshape(B, G, nk * b, K) for a in (dk, dv))
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, g):
  return _forward(q, k, v, g)


def _attention_fwd(q, k, v, g):
  o, lse = _forward(q, k, v, g)
  return (o, lse), (q, k, v, o, lse)


def _attention_bwd(g, res, cotangents):
  q, k, v, o, lse = res
  do, _ = cotangents  # the log-sum-exp is returned for reading (NSA's block scores), not differentiated
  dq, dk, dv = _backward(q, k, v, o, lse, do, g)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)


def flash_attention(
  q_BxTxHxK: jax.Array,
  k_BxSxGxK: jax.Array,
  v_BxSxGxK: jax.Array,
  window: int | None = None,
  block: int = BLOCK,
  stride: int = 1,
  offset: int = 0,
  with_lse: bool = False,
):
  """Causal softmax attention in O(T) memory (see the module docstring), differentiable in q, k and v.

  Args:
    q_BxTxHxK: queries at positions 0..T-1; k_BxSxGxK, v_BxSxGxK: keys and values (G divides H), key m at position
      m * stride + offset (the queries' own positions by default).
    window: None for full causal attention; w for the sliding window t - w < s <= t.
    block: rows per query and key block (a smaller one for short T: min(block, T) rounded up to 8).
    with_lse: also return the per-query log-sum-exp of the logits [B, T, H] (-inf where a query reads no key),
      stop-gradient'd: for reading the attention probabilities, exp(logit - lse).
  Returns:
    [B, T, H, K] in the queries' dtype (zero where a query reads no key), and the log-sum-exp if asked.
  """
  B, T, H, K = q_BxTxHxK.shape
  if H % k_BxSxGxK.shape[2] or k_BxSxGxK.shape != v_BxSxGxK.shape or k_BxSxGxK.shape[-1] != K:
    raise ValueError(f"flash_attention: keys {k_BxSxGxK.shape}, values {v_BxSxGxK.shape}, queries {q_BxTxHxK.shape}")
  g = Geometry(min(block, -(-T // 8) * 8), window, stride, offset)
  q, k, v = _layout(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, g.block)
  o, lse = _attention(q, k, v, g)  # [B, G, T', R, K], [B, G, T' * R]
  o = o.transpose(0, 2, 1, 3, 4).reshape(B, -1, H, K)[:, :T]
  if not with_lse:
    return o
  G = k.shape[1]
  lse = jax.lax.stop_gradient(lse).reshape(B, G, -1, H // G).transpose(0, 2, 1, 3).reshape(B, -1, H)[:, :T]
  return o, lse
