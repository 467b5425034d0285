"""Multi-scale fusion of local and global attention: o = beta * local + (1 - beta) * global.

This is the seed articles' 'Attention_final = beta*Local + (1-beta)*Global'. Published forms: NSA (Yuan et al.
2025) gates its sliding, compressed and selected branches with per-token sigmoid gates computed from the input;
Longformer (Beltagy et al. 2020) mixes local and global keys in one softmax instead. Both branches share one
q/k/v projection here, so a fusion layer has the dense layer's parameters plus the gate.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import layers
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.mixers.dense import IMPLS as GLOBAL_IMPLS
from r1jax.mixers.dense import causal_attention, project_out, project_qkv
from r1jax.mixers.local import check_window, local_attention
from r1jax.registry import register_mixer

BETAS = ("fixed", "head", "token")


@dataclasses.dataclass(frozen=True)
class FusionOptions:
  beta: str = "head"  # fixed: beta_init everywhere | head: one learned beta per head | token: per token and head,
  #                     sigmoid of a linear map of the input (NSA's gate)
  beta_init: float = 0.5  # fixed: the beta, in [0, 1]; learned: its initial value, in (0, 1)
  window: int = 16  # local branch: keys per query (see local.LocalOptions.window)
  local_impl: str = "auto"  # auto | blocked | cudnn | naive (the local branch; local.IMPLS)
  global_impl: str = "auto"  # auto | xla | cudnn | naive (the global branch; dense.IMPLS)

  def __post_init__(self):
    checks = (
      (self.beta in BETAS, "beta", f"use one of {BETAS}"),
      (
        0.0 <= self.beta_init <= 1.0 and (self.beta == "fixed" or 0.0 < self.beta_init < 1.0),
        "beta_init",
        "use a value in [0, 1] for beta=fixed and in (0, 1) for a learned beta",
      ),
      (self.global_impl in GLOBAL_IMPLS, "global_impl", f"use one of {GLOBAL_IMPLS}"),
    )
    for ok, field, fix in checks:
      if not ok:
        raise ConfigError(f"{field}={getattr(self, field)!r} is invalid. Fix: {fix}")
    check_window(self.window, self.local_impl, "local_impl")


@register_mixer("fusion", FusionOptions)
class FusionAttention(nn.Module):
  """beta * sliding-window attention + (1 - beta) * global causal attention, beta fixed, per head or per token.

  beta is sown as `intermediates/beta` ([B, T, H]) for histograms; `beta` and `beta_std` are diagnostics.
  """

  positional_cache = True  # its caches are indexed by position (r1jax/inference/decoding.py: rollback_free)
  multi_token_step = True  # a step takes several tokens at once (a causal mask over the cache)

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: FusionOptions

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, *, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
    del deterministic
    cfg, o = self.cfg, self.opts
    B, T, _ = x_BxTxD.shape
    H = cfg.num_heads
    q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = project_qkv(self, x_BxTxD, cfg, positions=decoding.positions_of(decode, T))
    if decode is not None:  # one KV cache read by both branches (the local one through the window mask)
      k_BxSxGxK = decoding.cached(self, "k", k_BxTxGxK, decode, cfg.rope_base)
      v_BxSxGxK = decoding.cached(self, "v", v_BxTxGxK, decode)
    if decoding.stepping(decode):
      local_BxTxHxK = decoding.attend(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, decoding.causal_ok(decode, T, o.window))
      global_BxTxHxK = decoding.attend(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, decoding.causal_ok(decode, T))
    else:
      local_BxTxHxK = local_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, o.window, o.local_impl)
      global_BxTxHxK = causal_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, o.global_impl)
    if o.beta == "fixed":
      beta_BxTxH = jnp.full((B, T, H), o.beta_init, jnp.float32)
    else:
      # The learned parameter starts at 0; the constant offset logit(beta_init) sets the initial beta.
      logit0 = math.log(o.beta_init / (1.0 - o.beta_init))
      bias_H = layers.param(self, "beta_bias", (H,), ("heads",), 0.0, cfg.param_dtype).astype(jnp.float32)
      if o.beta == "head":
        gate_BxTxH = jnp.broadcast_to(bias_H, (B, T, H))
      else:
        # Zero-initialised, so every token starts at beta_init; the gradient still reaches it through x.
        w_DxH = layers.param(self, "beta_gate", (cfg.d_model, H), ("embed", "heads"), 0.0, cfg.param_dtype)
        gate_BxTxH = jnp.einsum("BTD,DH->BTH", x_BxTxD.astype(jnp.float32), w_DxH.astype(jnp.float32))
        gate_BxTxH = gate_BxTxH + bias_H[None, None]
      beta_BxTxH = jax.nn.sigmoid(gate_BxTxH + logit0)
    self.sow("intermediates", "beta", beta_BxTxH)
    beta_BxTxHx1 = beta_BxTxH[..., None].astype(local_BxTxHxK.dtype)
    out_BxTxHxK = beta_BxTxHx1 * local_BxTxHxK + (1 - beta_BxTxHx1) * global_BxTxHxK
    aux = {"beta": jnp.mean(beta_BxTxH), "beta_std": jnp.std(beta_BxTxH)}
    return project_out(self, out_BxTxHxK, cfg), aux
