"""The seed articles' "three-dimensional attention" for 1D sequences: attention over time plus attention over the
transposed (channel) axis, summed and scaled, made causal so that it can run in a decoder LM.

The seed's code (a PyTorch sketch) is `(time_attn(x, x, x) + space_attn(xᵀ, xᵀ, xᵀ)ᵀ) * head_dim**-0.5`, where
`x.transpose(1, 2)` makes the D channels the tokens and the T time steps their features. As written it only runs
when T == D, and its projections over the time axis would let every position see the future. What is kept here is
the mechanism: per head, the K channels attend to each other, with similarities from the time axis. That is
cross-covariance attention (XCiT, El-Nouby et al. 2021). It is made causal by using, at step t, only steps <= t:

  C_t[i, j] = sum_{s <= t} q_s[i] k_s[j] / sqrt(t + 1)      (the K x K similarities; the scale is MHA's
                                                              1/sqrt(feature size) at the prefix length)
  channel_t[i] = sum_j softmax_j(C_t[i, :]) v_t[j]

The time branch is the dense causal attention mixer with its own projections. The channel branch cannot move
information between positions except through the prefix statistics in C_t.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import layers
from r1jax.inference import decoding
from r1jax.mixers.dense import Attention, AttentionOptions, project_out
from r1jax.registry import register_mixer


@dataclasses.dataclass(frozen=True)
class TimeChannelOptions:
  time: bool = True  # include the time (dense causal attention) branch; False: channel attention alone
  seed_scale: bool = True  # multiply the sum by head_dim**-0.5, as the seed's code does


def causal_channel_attention(q_BxTxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array) -> jax.Array:
  """Causal cross-covariance attention (see the module docstring); O(T*H*K^2) time and memory."""
  T = q_BxTxHxK.shape[1]
  f32 = jnp.float32
  outer_BxTxHxKxK = jnp.einsum("BTHI,BTHJ->BTHIJ", q_BxTxHxK.astype(f32), k_BxTxHxK.astype(f32))
  scale_1xTx1x1x1 = jax.lax.rsqrt(jnp.arange(1, T + 1, dtype=f32)).reshape(1, T, 1, 1, 1)
  logits_BxTxHxKxK = jnp.cumsum(outer_BxTxHxKxK, axis=1) * scale_1xTx1x1x1
  w_BxTxHxKxK = jax.nn.softmax(logits_BxTxHxKxK, axis=-1)
  return jnp.einsum("BTHIJ,BTHJ->BTHI", w_BxTxHxKxK, v_BxTxHxK.astype(f32)).astype(v_BxTxHxK.dtype)


class ChannelAttention(nn.Module):
  """Causal channel-axis attention with its own q, k, v and output projections (no RoPE: channels have no position)."""

  cfg: "ModelConfig"  # noqa: F821

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, decode: decoding.Decode | None = None) -> jax.Array:
    cfg = self.cfg
    B, T, D = x_BxTxD.shape
    H = cfg.num_heads
    K, dt = D // H, layers.dtype(cfg.dtype)
    x = x_BxTxD.astype(dt)
    q, k, v = (
      jnp.einsum(
        "BTD,DHK->BTHK",
        x,
        layers.param(self, n, (D, H, K), ("embed", "heads", "kv"), cfg.init_std, cfg.param_dtype).astype(dt),
      )
      for n in ("wq", "wk", "wv")
    )
    if decode is None:
      return project_out(self, causal_channel_attention(q, k, v), cfg)
    # decoding: the running sum of q_s k_s^T over the prefix, [B, H, K, K] float32
    C = decoding.state(self, "qk_sum", (B, H, K, K), jnp.float32)
    f32 = jnp.float32
    if decoding.stepping(decode):
      keep_Bx1x1x1 = decoding.commits(decode)[:, None, None, None]
      C.value = C.value + keep_Bx1x1x1 * jnp.einsum("BHI,BHJ->BHIJ", q[:, 0].astype(f32), k[:, 0].astype(f32))
      scale_Bx1x1x1 = jax.lax.rsqrt(decode.positions.astype(f32) + 1.0)[:, None, None, None]
      w_BxHxKxK = jax.nn.softmax(C.value * scale_Bx1x1x1, axis=-1)
      o = jnp.einsum("BHIJ,BHJ->BHI", w_BxHxKxK, v[:, 0].astype(f32)).astype(v.dtype)[:, None]
      return project_out(self, o, cfg)
    keep_BxTx1x1 = decoding.prompt_mask(decode, T)[:, :, None, None].astype(f32)
    C.value = jnp.einsum("BTHI,BTHJ->BHIJ", q.astype(f32) * keep_BxTx1x1, k.astype(f32))
    return project_out(self, causal_channel_attention(q, k, v), cfg)


@register_mixer("time_channel", TimeChannelOptions)
class TimeChannelAttention(nn.Module):
  """(time attention + channel attention) * head_dim**-0.5: the seed's form, causal."""

  cfg: "ModelConfig"  # noqa: F821
  opts: TimeChannelOptions

  @staticmethod
  def decode_window(opts: TimeChannelOptions) -> str:
    return "its channel branch's running sums summarise the whole past (its time attention keeps the window)"

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, *, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
    y_BxTxD = ChannelAttention(self.cfg, name="channel")(x_BxTxD, decode)
    if self.opts.time:
      y_BxTxD = (
        y_BxTxD
        + Attention(self.cfg, AttentionOptions(), name="time")(x_BxTxD, deterministic=deterministic, decode=decode)[0]
      )
    if self.opts.seed_scale:
      y_BxTxD = y_BxTxD * (self.cfg.d_model // self.cfg.num_heads) ** -0.5
    return y_BxTxD, {}
