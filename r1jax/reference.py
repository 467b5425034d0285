"""Naive references in plain jnp (float32 or float64): obviously correct, slow, used only to check fast paths."""

import jax.numpy as jnp
import numpy as np


def causal_mask(T: int, S: int | None = None) -> np.ndarray:
  """[T, S] boolean mask, True where query t may attend key s (s <= t, keys right-aligned when S > T)."""
  S = T if S is None else S
  return np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)


def attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask_TxS=None, scale=None):
  """Softmax attention, one head at a time from the definition; G key/value heads shared by H/G query heads.

  Args:
    q_BxTxHxK, k_BxSxGxK, v_BxSxGxK: queries, keys, values.
    mask_TxS: boolean mask (True = attend), broadcastable to [B, H, T, S]; None = causal.
  Returns:
    [B, T, H, K] in the inputs' precision promoted to at least float32.
  """
  dt = jnp.promote_types(q_BxTxHxK.dtype, jnp.float32)
  q, k, v = (jnp.asarray(a, dt) for a in (q_BxTxHxK, k_BxSxGxK, v_BxSxGxK))
  B, T, H, K = q.shape
  S, G = k.shape[1], k.shape[2]
  mask = causal_mask(T, S) if mask_TxS is None else mask_TxS
  scale = 1.0 / np.sqrt(K) if scale is None else scale
  outs = []
  for h in range(H):
    g = h // (H // G)  # query head h reads key/value head g
    logits_BxTxS = jnp.einsum("btk,bsk->bts", q[:, :, h], k[:, :, g]) * scale
    m = jnp.broadcast_to(mask, (B, H, T, S))[:, h] if np.ndim(mask) == 4 else jnp.broadcast_to(mask, (B, T, S))
    logits_BxTxS = jnp.where(m, logits_BxTxS, -jnp.inf)
    w = jnp.exp(logits_BxTxS - jnp.max(logits_BxTxS, axis=-1, keepdims=True))
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    outs.append(jnp.einsum("bts,bsk->btk", w, v[:, :, g]))
  return jnp.stack(outs, axis=2)


def cross_entropy(logits_NxV, targets_N):
  """Mean negative log-likelihood from the softmax definition."""
  logits = jnp.asarray(logits_NxV, jnp.float32)
  logz = jnp.log(jnp.sum(jnp.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  return jnp.mean(logz - jnp.take_along_axis(logits, targets_N[:, None], -1)[:, 0])
