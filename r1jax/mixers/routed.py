"""Dynamic local/global routing: a learned router sends the top-c fraction of each sequence's tokens to global
attention; every other token gets sliding-window attention only. The capacity rule is Mixture-of-Depths'
expert-choice top-k (Raposo et al. 2024) applied to the choice between a local and a global attention path.

Selected queries attend to every earlier key (O(c*T^2)), the rest to their window (O(T*w)). The router gets its
gradient as in MoD, through its score on the selected tokens: their output is local + (global - local) * g/sg(g)
with g = sigmoid(score) and sg the stop-gradient, which equals the global output in value (so capacity 1 is exactly
global attention) while d/d score = (global - local) * (1 - g).

Like MoD's training-time routing, the top-c choice is made over the whole sequence, so whether token t is routed
depends on later tokens' scores. That is harmless for classification read at the last position (ListOps) but is a
leak for next-token prediction; MoD adds a causal predictor for sampling, which is not built here.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import layers
from r1jax.errors import ConfigError
from r1jax.mixers.dense import project_out, project_qkv
from r1jax.mixers.local import check_window, local_attention
from r1jax.registry import register_mixer


@dataclasses.dataclass(frozen=True)
class RoutedOptions:
  capacity: float = 0.25  # fraction c of each sequence's tokens routed to global attention, in (0, 1]
  window: int = 16  # local path: keys per query (see local.LocalOptions.window)
  local_impl: str = "auto"  # auto | blocked | cudnn | naive (the local branch; local.IMPLS)

  def __post_init__(self):
    if not 0.0 < self.capacity <= 1.0:
      raise ConfigError(f"capacity={self.capacity} is invalid. Fix: use a fraction in (0, 1], e.g. 0.25")
    check_window(self.window, self.local_impl, "local_impl")


def routed_tokens(T: int, capacity: float) -> int:
  """Tokens per sequence sent to global attention: ceil(c * T), at least 1."""
  return max(1, min(T, math.ceil(capacity * T - 1e-9)))


def routed_attention(
  q_BxTxHxK: jax.Array,
  k_BxTxGxK: jax.Array,
  v_BxTxGxK: jax.Array,
  score_BxT: jax.Array,
  capacity: float,
  window: int,
  local_impl: str = "auto",
) -> tuple[jax.Array, jax.Array]:
  """Local attention for every query; global causal attention for the top-c scored queries of each sequence.

  Returns:
    output [B, T, H, K] and the routed positions [B, C].
  """
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxTxGxK.shape[2]
  local_BxTxHxK = local_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, window, local_impl)
  score_BxC, idx_BxC = jax.lax.top_k(score_BxT.astype(jnp.float32), routed_tokens(T, capacity))
  take = jax.vmap(lambda a, i: a[i])  # per sequence: rows of a at positions i
  q_BxCxGxRxK = take(q_BxTxHxK, idx_BxC).reshape(B, -1, G, H // G, K)
  logits = jnp.einsum("BCGRK,BSGK->BGRCS", q_BxCxGxRxK, k_BxTxGxK, preferred_element_type=jnp.float32)
  causal_BxCxS = jnp.arange(T)[None, None, :] <= idx_BxC[:, :, None]
  logits = jnp.where(causal_BxCxS[:, None, None], logits * K**-0.5, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1).astype(v_BxTxGxK.dtype)
  global_BxCxHxK = jnp.einsum("BGRCS,BSGK->BCGRK", probs, v_BxTxGxK).reshape(B, -1, H, K)
  g_BxC = jax.nn.sigmoid(score_BxC)
  st_BxC = g_BxC / jax.lax.stop_gradient(g_BxC)  # 1 in value, carries the router's gradient
  delta_BxCxHxK = (global_BxCxHxK - take(local_BxTxHxK, idx_BxC)) * st_BxC[:, :, None, None].astype(q_BxTxHxK.dtype)
  out_BxTxHxK = jax.vmap(lambda o, i, d: o.at[i].add(d))(local_BxTxHxK, idx_BxC, delta_BxCxHxK)
  return out_BxTxHxK, idx_BxC


@register_mixer("routed", RoutedOptions)
class RoutedAttention(nn.Module):
  """Sliding-window attention for all tokens, global attention for the router's top-c tokens (MoD capacity).

  Diagnostics: `gate` (mean sigmoid router score of routed tokens) and `routed_pos` (their mean relative position);
  the routed positions are sown as `intermediates/routed`.
  """

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: RoutedOptions

  @staticmethod
  def not_decodable(opts: RoutedOptions) -> str:
    del opts
    return (
      "its top-c choice ranks the whole sequence, so whether token t is routed depends on later tokens "
      "(MoD's causal predictor for sampling is not built)"
    )

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, *, deterministic: bool) -> tuple[jax.Array, dict]:
    del deterministic
    cfg, o = self.cfg, self.opts
    T = x_BxTxD.shape[1]
    w_D = layers.param(self, "router", (cfg.d_model,), ("embed",), cfg.init_std, cfg.param_dtype)
    score_BxT = jnp.einsum("BTD,D->BT", x_BxTxD.astype(jnp.float32), w_D.astype(jnp.float32))
    q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = project_qkv(self, x_BxTxD, cfg)
    out_BxTxHxK, idx_BxC = routed_attention(
      q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, score_BxT, o.capacity, o.window, o.local_impl
    )
    self.sow("intermediates", "routed", idx_BxC)
    aux = {
      "gate": jnp.mean(jax.nn.sigmoid(jnp.take_along_axis(score_BxT, idx_BxC, 1))),
      "routed_pos": jnp.mean(idx_BxC / max(T - 1, 1)),
    }
    return project_out(self, out_BxTxHxK, cfg), aux
