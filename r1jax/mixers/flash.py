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

import jax
import jax.numpy as jnp

BLOCK = 512  # query and key block (rows): at head size 64 a block pair is ~0.13 GFLOP, loop overhead negligible


def _layout(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, block: int):
  """Heads-major padded layouts: q [B, G, T', R, K] (scaled by 1/sqrt(K)), k, v [B, G, T', K]; T' a multiple of
  `block`. Padded keys sit after every real query, so the causal mask hides them; padded queries are sliced off."""
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxSxGxK.shape[2]
  pad = -T % block
  q = (q_BxTxHxK * jnp.asarray(K**-0.5, q_BxTxHxK.dtype)).reshape(B, T, G, H // G, K).transpose(0, 2, 1, 3, 4)
  k, v = (a.transpose(0, 2, 1, 3) for a in (k_BxSxGxK, v_BxSxGxK))
  return (
    jnp.pad(q, [(0, 0), (0, 0), (0, pad), (0, 0), (0, 0)]),
    jnp.pad(k, [(0, 0), (0, 0), (0, pad), (0, 0)]),
    jnp.pad(v, [(0, 0), (0, 0), (0, pad), (0, 0)]),
  )


def _key_blocks(i, block: int, window: int | None):
  """[first, last] key block that query block i reaches (causal; within the window when one is set)."""
  last = i
  first = 0 if window is None else jnp.maximum(i * block - window + 1, 0) // block
  return first, last


def _query_blocks(j, block: int, window: int | None, n: int):
  """[first, last] query block that reaches key block j."""
  last = n - 1 if window is None else jnp.minimum((j * block + block - 1 + window - 1) // block, n - 1)
  return j, last


def _mask(i, j, block: int, R: int, window: int | None):
  """[block * R, block] True where row (query i*block + r // R) may attend key j*block + c."""
  q_pos = i * block + jnp.arange(block * R) // R
  k_pos = j * block + jnp.arange(block)
  ok = k_pos[None, :] <= q_pos[:, None]
  if window is not None:
    ok &= k_pos[None, :] > q_pos[:, None] - window
  return ok


def _rows(a_BxGxTxRxK, i, block: int):
  """Query block i as rows [B, G, block * R, K]."""
  B, G, _, R, K = a_BxGxTxRxK.shape
  return jax.lax.dynamic_slice_in_dim(a_BxGxTxRxK, i * block, block, 2).reshape(B, G, block * R, K)


def _forward(q, k, v, block: int, window: int | None):
  """Output [B, G, T', R, K] (inputs' dtype) and log-sum-exp [B, G, T' * R] (at least float32) of the padded layouts."""
  B, G, Tp, R, K = q.shape
  n, f32 = Tp // block, jnp.promote_types(q.dtype, jnp.float32)  # accumulation: float32 (float64 for float64)

  def query_block(i):
    q_i = _rows(q, i, block)

    def key_block(j, carry):
      m, l, acc = carry
      k_j = jax.lax.dynamic_slice_in_dim(k, j * block, block, 2)
      v_j = jax.lax.dynamic_slice_in_dim(v, j * block, block, 2)
      s = jnp.einsum("BGMK,BGNK->BGMN", q_i, k_j, preferred_element_type=f32)
      ok = _mask(i, j, block, R, window)
      m_new = jnp.maximum(m, jnp.max(jnp.where(ok, s, -jnp.inf), -1))
      m_new = jnp.maximum(m_new, -1e30)  # a row with nothing yet stays finite: exp(-inf - -1e30) = 0, no NaN
      p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
      alpha = jnp.exp(m - m_new)
      pv = jnp.einsum("BGMN,BGNK->BGMK", p.astype(v.dtype), v_j, preferred_element_type=f32)
      return m_new, l * alpha + p.sum(-1), acc * alpha[..., None] + pv

    first, last = _key_blocks(i, block, window)
    init = (
      jnp.full((B, G, block * R), -1e30, f32),
      jnp.zeros((B, G, block * R), f32),
      jnp.zeros((B, G, block * R, K), f32),
    )
    m, l, acc = jax.lax.fori_loop(first, last + 1, key_block, init)
    return (acc / l[..., None]).astype(q.dtype), m + jnp.log(l)

  o_nxBxGxMxK, lse_nxBxGxM = jax.lax.map(query_block, jnp.arange(n))
  o = jnp.moveaxis(o_nxBxGxMxK, 0, 2).reshape(B, G, Tp, R, K)
  return o, jnp.moveaxis(lse_nxBxGxM, 0, 2).reshape(B, G, Tp * R)


def _backward(q, k, v, o, lse, do, block: int, window: int | None):
  """dq, dk, dv of the padded layouts (FlashAttention-2's backward: per key block, a loop over the query blocks
  that reach it, probabilities recomputed from the saved log-sum-exp)."""
  B, G, Tp, R, K = q.shape
  n, f32 = Tp // block, jnp.promote_types(q.dtype, jnp.float32)
  delta = jnp.sum(do.astype(f32) * o.astype(f32), -1).reshape(B, G, Tp * R)  # rowsum(dO * O)

  def key_block(dq, j):
    k_j = jax.lax.dynamic_slice_in_dim(k, j * block, block, 2)
    v_j = jax.lax.dynamic_slice_in_dim(v, j * block, block, 2)

    def query_block(i, carry):
      dq, dk_j, dv_j = carry
      q_i, do_i = _rows(q, i, block), _rows(do, i, block)
      lse_i = jax.lax.dynamic_slice_in_dim(lse, i * block * R, block * R, 2)
      delta_i = jax.lax.dynamic_slice_in_dim(delta, i * block * R, block * R, 2)
      s = jnp.einsum("BGMK,BGNK->BGMN", q_i, k_j, preferred_element_type=f32)
      p = jnp.where(_mask(i, j, block, R, window), jnp.exp(s - lse_i[..., None]), 0.0)
      dv_j += jnp.einsum("BGMN,BGMK->BGNK", p.astype(do.dtype), do_i, preferred_element_type=f32)
      dp = jnp.einsum("BGMK,BGNK->BGMN", do_i, v_j, preferred_element_type=f32)
      ds = (p * (dp - delta_i[..., None])).astype(q.dtype)
      dk_j += jnp.einsum("BGMN,BGMK->BGNK", ds, q_i, preferred_element_type=f32)
      dq_i = jnp.einsum("BGMN,BGNK->BGMK", ds, k_j, preferred_element_type=f32).reshape(B, G, block, R, K)
      dq = jax.lax.dynamic_update_slice_in_dim(
        dq, jax.lax.dynamic_slice_in_dim(dq, i * block, block, 2) + dq_i, i * block, 2
      )
      return dq, dk_j, dv_j

    first, last = _query_blocks(j, block, window, n)
    zeros = jnp.zeros((B, G, block, K), f32)
    dq, dk_j, dv_j = jax.lax.fori_loop(first, last + 1, query_block, (dq, zeros, zeros))
    return dq, (dk_j, dv_j)

  dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros((B, G, Tp, R, K), f32), jnp.arange(n))
  dk, dv = (jnp.moveaxis(a, 0, 2).reshape(B, G, Tp, K) for a in (dk, dv))
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(q, k, v, block, window):
  return _forward(q, k, v, block, window)[0]


def _attention_fwd(q, k, v, block, window):
  o, lse = _forward(q, k, v, block, window)
  return o, (q, k, v, o, lse)


def _attention_bwd(block, window, res, do):
  q, k, v, o, lse = res
  dq, dk, dv = _backward(q, k, v, o, lse, do, block, window)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)


def flash_attention(
  q_BxTxHxK: jax.Array,
  k_BxTxGxK: jax.Array,
  v_BxTxGxK: jax.Array,
  window: int | None = None,
  block: int = BLOCK,
) -> jax.Array:
  """Causal softmax attention in O(T) memory (see the module docstring), differentiable.

  Args:
    q_BxTxHxK: queries; k_BxTxGxK, v_BxTxGxK: keys and values of the same positions (G divides H).
    window: None for full causal attention; w for the sliding window t - w < s <= t.
    block: rows per query and key block (a smaller one for short T: min(block, T) rounded up to 8).
  Returns:
    [B, T, H, K] in the queries' dtype.
  """
  B, T, H, K = q_BxTxHxK.shape
  if k_BxTxGxK.shape[1] != T or H % k_BxTxGxK.shape[2]:
    raise ValueError(f"flash_attention: keys {k_BxTxGxK.shape} do not match queries {q_BxTxHxK.shape}")
  block = min(block, -(-T // 8) * 8)
  q, k, v = _layout(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, block)
  o = _attention(q, k, v, block, window)  # [B, G, T', R, K]
  return o.transpose(0, 2, 1, 3, 4).reshape(B, -1, H, K)[:, :T]
