"""Dense feed-forward blocks: SwiGLU (Shazeer 2020), the baseline the MoE feed-forwards are compared with."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import layers
from r1jax.registry import register_ffn


@dataclasses.dataclass(frozen=True)
class SwiGLUOptions:
  """SwiGLU has no options beyond model.d_ff."""


@register_ffn("swiglu", SwiGLUOptions)
class SwiGLU(nn.Module):
  """y = W2 (silu(W1 x) * W3 x), hidden width model.d_ff (default 8/3 d_model, matching a 4x GELU MLP's params)."""

  cfg: "ModelConfig"  # noqa: F821
  opts: SwiGLUOptions

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, *, deterministic: bool) -> tuple[jax.Array, dict]:
    del deterministic
    cfg = self.cfg
    D, F = cfg.d_model, cfg.hidden_ff
    dt = layers.dtype(cfg.dtype)
    w1_DxF = layers.param(self, "w1", (D, F), ("embed", "mlp"), cfg.init_std, cfg.param_dtype)
    w3_DxF = layers.param(self, "w3", (D, F), ("embed", "mlp"), cfg.init_std, cfg.param_dtype)
    w2_FxD = layers.param(self, "w2", (F, D), ("mlp", "embed"), layers.out_std(cfg), cfg.param_dtype)
    x = x_BxTxD.astype(dt)
    gate_BxTxF = jnp.einsum("BTD,DF->BTF", x, w1_DxF.astype(dt))
    up_BxTxF = jnp.einsum("BTD,DF->BTF", x, w3_DxF.astype(dt))
    h_BxTxF = layers.constrain(nn.silu(gate_BxTxF) * up_BxTxF, ("act_batch", "act_length", "act_mlp"))
    y_BxTxD = jnp.einsum("BTF,FD->BTD", h_BxTxF, w2_FxD.astype(dt))
    return layers.constrain(y_BxTxD, ("act_batch", "act_length", "act_embed")), {}


@dataclasses.dataclass(frozen=True)
class NoFFNOptions:
  """No options."""


@register_ffn("none", NoFFNOptions)
class NoFFN(nn.Module):
  """No feed-forward (attention-only layers, as in Zoology's MQAR models): the block adds zero."""

  cfg: "ModelConfig"  # noqa: F821
  opts: NoFFNOptions

  def __call__(self, x_BxTxD: jax.Array, *, deterministic: bool) -> tuple[jax.Array, dict]:
    del deterministic
    return jnp.zeros_like(x_BxTxD, dtype=layers.dtype(self.cfg.dtype)), {}
