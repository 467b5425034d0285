"""Shared building blocks: logically partitioned parameters, RMSNorm, rotary embeddings, dtypes."""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def dtype(name: str) -> jnp.dtype:
  return jnp.dtype(name)


def param(
  module: nn.Module, name: str, shape: Sequence[int], axes: Sequence[str | None], std: float | None, param_dtype: str
) -> jax.Array:
  """A parameter with logical axis names (for the sharding rules); std=None: ones (norm scales), 0: zeros."""
  init = nn.initializers.ones if std is None else nn.initializers.normal(std) if std else nn.initializers.zeros
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype(param_dtype))


def out_std(cfg) -> float:
  """Init std of residual output projections: scaled by 1/sqrt(2 * layers) (GPT-2, Radford et al. 2019)."""
  return cfg.init_std / math.sqrt(2 * cfg.num_layers)


class RMSNorm(nn.Module):
  """Root-mean-square LayerNorm (Zhang & Sennrich 2019), computed in float32."""

  eps: float
  out_dtype: str
  param_dtype: str

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    scale_D = param(self, "scale", (x_BxTxD.shape[-1],), ("norm",), None, self.param_dtype)
    x = x_BxTxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    scale_1x1xD = scale_D.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
    return (x * scale_1x1xD).astype(dtype(self.out_dtype))


def rope(x_BxTxHxK: jax.Array, positions_T: np.ndarray | jax.Array, base: float, dims: int | None = None) -> jax.Array:
  """Rotary position embedding (Su et al. 2021), rotating half-split pairs (GPT-NeoX layout), in float32; positions
  [T], or [B, T] (each row its own, as in decoding). `dims`: rotate only the first `dims` of the last axis (partial
  RoPE, as DeepSeek-V3.2's indexer: 64 of 128), the rest pass through; None: all of it.

  Static (numpy) positions give numpy sin/cos tables, compiled in as constants: XLA fuses the rotation into its
  consumers, and on CPU a gather of rotated keys (sparse attention) otherwise recomputes sin and cos per gathered
  element (3x slower forward there)."""
  if dims is not None and dims < x_BxTxHxK.shape[-1]:
    rotated = rope(x_BxTxHxK[..., :dims], positions_T, base)
    return jnp.concatenate([rotated, x_BxTxHxK[..., dims:]], axis=-1)
  K = x_BxTxHxK.shape[-1]
  if K % 2:
    raise ValueError(f"RoPE needs an even head dimension, got {K}; change model.d_model / model.num_heads")
  xp = np if isinstance(positions_T, np.ndarray) else jnp
  inv_freq_F = 1.0 / (base ** (xp.arange(0, K, 2, dtype=xp.float32) / K))
  inv_freq = inv_freq_F.reshape((1,) * positions_T.ndim + (-1,))
  angle_xTxF = positions_T.astype(xp.float32)[..., None] * inv_freq  # [T, F], or [B, T, F] per row (decoding)
  if angle_xTxF.ndim == 2:
    angle_xTxF = angle_xTxF[None]
  sin, cos = xp.sin(angle_xTxF)[:, :, None, :], xp.cos(angle_xTxF)[:, :, None, :]
  x1, x2 = jnp.split(x_BxTxHxK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxK.dtype)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Logical sharding constraint on an activation (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, tuple(axes))
