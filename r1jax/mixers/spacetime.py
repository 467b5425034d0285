"""Space-time attention over video tokens [B, T, S, D] (T frames, S patches per frame), non-causal (an encoder).

kind (TimeSformer, Bertasius et al. 2021; ViViT, Arnab et al. 2021):
  joint        one attention over all T*S tokens (TimeSformer "joint", ViViT model 1): N*F + 1 comparisons per patch
  divided      attention over time (same patch position), then over space (same frame), each with its own
               projections and an inner residual (TimeSformer "divided", ViViT model 3): N + F + 2 comparisons
  parallel     time attention + space attention of the same input, summed (the seed articles' form)
  dot_product  half the heads attend over space, half over time, one output projection (ViViT model 4)
  space        within each frame only (TimeSformer "space-only"): no information crosses frames
  time         along time at each patch position only: no information crosses positions
  factorised   ViViT model 2 (factorised encoder): the video model (r1jax/model.py) runs the first half of its
               layers as `space`, mean-pools each frame's patches to one token, and runs the rest as `time`
Registered as the mixer `spacetime` of `model.arch=video` (see r1jax/model.py), which feeds it [B, T, S, D].
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import layers
from r1jax.errors import ConfigError
from r1jax.registry import register_mixer

KINDS = ("joint", "divided", "parallel", "dot_product", "space", "time", "factorised")


@dataclasses.dataclass(frozen=True)
class SpaceTimeOptions:
  kind: str = "divided"  # joint | divided | parallel | dot_product | space | time | factorised (a model-level kind)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ConfigError(f"kind: unknown {self.kind!r}. Fix: use one of {KINDS}.")


def attend(q_BxTxSxHxK: jax.Array, k_BxTxSxHxK: jax.Array, v_BxTxSxHxK: jax.Array, axis: str) -> jax.Array:
  """Softmax attention (jax.nn.dot_product_attention) over `axis` in ("joint", "space", "time"): the tokens that
  attend to each other become one batch row (a clip, a frame, or a patch position's track)."""
  B, T, S, H, K = q_BxTxSxHxK.shape
  qkv = (q_BxTxSxHxK, k_BxTxSxHxK, v_BxTxSxHxK)
  if axis == "time":
    qkv = tuple(jnp.swapaxes(a, 1, 2) for a in qkv)
  rows, length = {"joint": (B, T * S), "space": (B * T, S), "time": (B * S, T)}[axis]
  o = jax.nn.dot_product_attention(*(a.reshape(rows, length, H, K) for a in qkv))
  return jnp.swapaxes(o.reshape(B, S, T, H, K), 1, 2) if axis == "time" else o.reshape(B, T, S, H, K)


class Branch(nn.Module):
  """One multi-head attention over an axis, with its own q, k, v and output projections."""

  cfg: "ModelConfig"  # noqa: F821
  axis: str

  @nn.compact
  def __call__(self, x_BxTxSxD: jax.Array) -> jax.Array:
    cfg = self.cfg
    D, H = cfg.d_model, cfg.num_heads
    K, dt = D // H, layers.dtype(cfg.dtype)
    w = {
      n: layers.param(self, n, (D, H, K), ("embed", "heads", "kv"), cfg.init_std, cfg.param_dtype)
      for n in ("wq", "wk", "wv")
    }
    wo_HxKxD = layers.param(self, "wo", (H, K, D), ("heads", "kv", "embed"), layers.out_std(cfg), cfg.param_dtype)
    x = x_BxTxSxD.astype(dt)
    q, k, v = (jnp.einsum("BTSD,DHK->BTSHK", x, w[n].astype(dt)) for n in ("wq", "wk", "wv"))
    if self.axis == "dot_product":  # ViViT model 4: heads [0, H/2) over space, [H/2, H) over time
      half = H // 2
      o = jnp.concatenate(
        [
          attend(q[..., :half, :], k[..., :half, :], v[..., :half, :], "space"),
          attend(q[..., half:, :], k[..., half:, :], v[..., half:, :], "time"),
        ],
        axis=3,
      )
    else:
      o = attend(q, k, v, self.axis)
    return jnp.einsum("BTSHK,HKD->BTSD", o, wo_HxKxD.astype(dt))


@register_mixer("spacetime", SpaceTimeOptions)
class SpaceTimeAttention(nn.Module):
  """`__call__(x [B, T, S, D], *, deterministic) -> (y [B, T, S, D], aux)`; the residual is the caller's."""

  cfg: "ModelConfig"  # noqa: F821
  opts: SpaceTimeOptions
  VIDEO: ClassVar[bool] = True  # takes [B, T, S, D] (the module contract, tests/test_contract.py, reads this)

  @staticmethod
  def not_decodable(opts: SpaceTimeOptions) -> str:
    del opts
    return "it classifies whole clips [B, T, S, D]; it is not autoregressive"

  @nn.compact
  def __call__(self, x_BxTxSxD: jax.Array, *, deterministic: bool) -> tuple[jax.Array, dict]:
    del deterministic
    kind, cfg = self.opts.kind, self.cfg
    if kind == "factorised":
      raise ValueError("kind=factorised stacks space and time layers; the video model gives each layer its kind")
    if kind == "dot_product" and cfg.num_heads % 2:
      raise ConfigError(
        f"model.num_heads={cfg.num_heads}: dot_product splits the heads in two halves. "
        "Fix: use an even number of heads."
      )
    if kind in ("joint", "space", "time", "dot_product"):
      return Branch(cfg, kind, name=kind)(x_BxTxSxD), {}
    t_BxTxSxD = Branch(cfg, "time", name="time")(x_BxTxSxD)
    if kind == "parallel":
      return t_BxTxSxD + Branch(cfg, "space", name="space")(x_BxTxSxD), {}
    # divided: x + t, normalised, then space attention; the mixer's output is both updates, so that the caller's
    # residual x + y equals TimeSformer's two residual steps.
    h = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="space_norm")(x_BxTxSxD + t_BxTxSxD)
    return t_BxTxSxD + Branch(cfg, "space", name="space")(h), {}
