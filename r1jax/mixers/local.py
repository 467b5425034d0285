"""Sliding-window (local) causal attention in O(T*w): Longformer's sliding window (Beltagy et al. 2020), Mistral's
SWA, NSA's sliding branch (Yuan et al. 2025).

Query t attends to the w keys s in [t-w+1, t]. The blocked path cuts the sequence into blocks of w; each query
block attends to its own and the previous key block (2w keys) under the band mask, so no T x T matrix is formed.
On a GPU with 16-bit inputs, cuDNN's fused local window does the same (`local_window_size`).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import reference
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.mixers import selected_kernel
from r1jax.mixers.dense import FLASH_FROM, project_out, project_qkv, resolve_impl
from r1jax.mixers.flash import flash_attention
from r1jax.registry import register_mixer

IMPLS = ("auto", "blocked", "flash", "cudnn", "pallas", "naive")


@dataclasses.dataclass(frozen=True)
class LocalOptions:
  window: int = 16  # w: keys per query, itself included (s in [t-w+1, t]); w >= T is global causal attention
  impl: str = "auto"  # auto (on a GPU cuDNN's local window where it applies, else the block-sparse kernel where it
  #                     tiles; elsewhere flash from T >= dense.FLASH_FROM, else blocked) | blocked (w queries over 2w
  #                     keys) | flash (r1jax/mixers/flash.py) | cudnn | pallas (r1jax/mixers/selected_kernel.py over
  #                     the window's key blocks; interpreted off a GPU) | naive

  def __post_init__(self):
    check_window(self.window, self.impl, "impl")


def check_window(window: int, impl: str, impl_field: str) -> None:
  """Validates the sliding-window options shared by the local, fusion and routed mixers."""
  if window < 1:
    raise ConfigError(f"window={window} is invalid. Fix: use a window of >= 1 keys")
  if impl not in IMPLS:
    raise ConfigError(f"{impl_field}={impl!r} is unknown. Fix: use one of {IMPLS}")


def blocked_local_attention(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, window: int) -> jax.Array:
  """Sliding-window causal attention through blocks of w queries over 2w keys: O(T*w) time and memory."""
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxTxGxK.shape[2]
  R, C = H // G, min(window, T)
  Q = -(-T // C)
  pad = [(0, 0), (0, Q * C - T), (0, 0), (0, 0)]
  q_BxQxCxGxRxK = jnp.pad(q_BxTxHxK, pad).reshape(B, Q, C, G, R, K)

  def two_blocks(a_BxTxGxK):  # [B, Q, 2C, G, K]: the previous block (zeros before the first), then the own block
    a = jnp.pad(a_BxTxGxK, pad).reshape(B, Q, C, G, K)
    return jnp.concatenate([jnp.pad(a, [(0, 0), (1, 0), (0, 0), (0, 0), (0, 0)])[:, :-1], a], axis=2)

  k_BxQxSxGxK, v_BxQxSxGxK = two_blocks(k_BxTxGxK), two_blocks(v_BxTxGxK)
  logits = jnp.einsum("BQtGRK,BQsGK->BQGRts", q_BxQxCxGxRxK, k_BxQxSxGxK, preferred_element_type=jnp.float32)
  qpos_QxC = jnp.arange(Q * C).reshape(Q, C)
  kpos_QxS = qpos_QxC[:, :1] - C + jnp.arange(2 * C)[None, :]
  d_QxCxS = qpos_QxC[:, :, None] - kpos_QxS[:, None, :]
  ok_QxCxS = (d_QxCxS >= 0) & (d_QxCxS < window) & (kpos_QxS[:, None, :] >= 0)
  logits = jnp.where(ok_QxCxS[None, :, None, None], logits * K**-0.5, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1).astype(v_BxTxGxK.dtype)
  o_BxQxCxGxRxK = jnp.einsum("BQGRts,BQsGK->BQtGRK", probs, v_BxQxSxGxK)
  return o_BxQxCxGxRxK.reshape(B, Q * C, H, K)[:, :T]


def local_attention(
  q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, window: int, impl: str = "auto"
) -> jax.Array:
  """Causal sliding-window attention, [B, T, H, K] -> [B, T, H, K] (G key/value heads, H/G query heads each)."""
  B, T, H, K = q_BxTxHxK.shape
  G, block = k_BxTxGxK.shape[2], selected_kernel.window_block(window)
  if impl == "auto":  # the blocked-flash path was 4x faster than `blocked` at w = 512, T = 16k on the 2-core CPU
    cudnn = resolve_impl("auto", q_BxTxHxK.dtype, K) == "cudnn"
    kernel = selected_kernel.choose("auto", "impl", H // G, K, block) == "pallas"
    impl = "cudnn" if cudnn else "pallas" if kernel else "flash" if T >= FLASH_FROM else "blocked"
  if impl == "pallas":
    ids, valid = selected_kernel.window_blocks(B, T, G, window, block)
    return selected_kernel.attend(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, ids, valid, block, "pallas", "impl", window)
  if impl == "flash":
    return flash_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, window)
  if impl == "naive":
    mask_TxS = reference.window_mask(T, window)
    return reference.attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, mask_TxS).astype(q_BxTxHxK.dtype)
  if impl == "cudnn":
    return jax.nn.dot_product_attention(
      q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, is_causal=True, local_window_size=(min(window, T) - 1, 0), implementation="cudnn"
    )
  return blocked_local_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, window)


@register_mixer("local", LocalOptions)
class LocalAttention(nn.Module):
  """Sliding-window causal attention (the 'L' layers of a local/global schedule)."""

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: LocalOptions

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, *, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
    del deterministic
    T, w = x_BxTxD.shape[1], self.opts.window
    q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = project_qkv(self, x_BxTxD, self.cfg, positions=decoding.positions_of(decode, T))
    if decode is not None:  # ring buffers of the last w keys and values: memory O(w)
      k_BxWxGxK, kpos_BxW = decoding.ring(self, "k", k_BxTxGxK, decode, w)
      v_BxWxGxK, _ = decoding.ring(self, "v", v_BxTxGxK, decode, w)
    if decoding.stepping(decode):
      ok_Bx1xW = decoding.in_window(kpos_BxW, decode, w)
      o_BxTxHxK = decoding.attend(q_BxTxHxK, k_BxWxGxK, v_BxWxGxK, ok_Bx1xW)
    else:
      o_BxTxHxK = local_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, w, self.opts.impl)
    return project_out(self, o_BxTxHxK, self.cfg), {}
