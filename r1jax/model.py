"""Decoder-only Transformer LM (pre-RMSNorm, RoPE, registry-chosen mixer and feed-forward per layer).

Dimension legend, used in every variable name and einsum of r1jax:
  B batch            T query length / time   S key length / space   D model width
  H query heads      G key/value heads       K head dim             F feed-forward hidden
  E experts          C chunk / capacity      V vocabulary           N scored positions per row
  P value head dim   A gate entries per head (1 or K; recurrent mixers)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import decoding, layers, registry
from r1jax.config import ModelConfig


class Block(nn.Module):
  """x + mixer(norm(x)), then x + ffn(norm(x)); the mixer and ffn are looked up by name for this layer."""

  cfg: ModelConfig
  layer: int

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, deterministic: bool,
               decode: decoding.Decode | None = None) -> tuple[jax.Array, dict]:
    cfg, aux = self.cfg, {}
    for kind, table in (("mixer", registry.MIXERS), ("ffn", registry.FFNS)):
      name = cfg.layer_names(kind)[self.layer]
      module, opts = registry.lookup(table, name, f"model.{kind}").module, cfg.options(kind, name)
      h_BxTxD = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=f"{kind}_norm")(x_BxTxD)
      if decode is None:
        h_BxTxD, aux[kind] = module(cfg, opts, name=kind)(h_BxTxD, deterministic=deterministic)
      elif kind == "mixer":
        decoding.check_decodable(module, opts, name)
        h_BxTxD, aux[kind] = module(cfg, opts, name=kind)(h_BxTxD, deterministic=deterministic, decode=decode)
      else:  # feed-forwards act per token; one that drops tokens by capacity decodes through its dropless path
        opts = getattr(module, "decode_options", lambda o: o)(opts)
        h_BxTxD, aux[kind] = module(cfg, opts, name=kind)(h_BxTxD, deterministic=deterministic)
      h_BxTxD = nn.Dropout(cfg.dropout)(h_BxTxD, deterministic=deterministic)
      x_BxTxD = layers.constrain(x_BxTxD + h_BxTxD.astype(x_BxTxD.dtype), ("act_batch", "act_length", "act_embed"))
    return x_BxTxD, aux


class Transformer(nn.Module):
  """Token ids [B, T] -> float32 logits [B, T, V] (or [B, N, V] at `target_pos`), plus aux losses/diagnostics.

  Aux contract: each mixer/ffn returns a dict; keys starting with `loss_` are auxiliary losses (already weighted)
  and are summed into `aux["aux_loss"]`; other keys are diagnostics, reported per layer (`mixer/<key>/layer<i>`)
  and averaged over the layers that report them (`mixer/<key>`).
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, *, deterministic: bool = True,
               target_pos_BxN: jax.Array | None = None,
               embeddings_BxTxD: jax.Array | None = None,
               decode: decoding.Decode | None = None) -> tuple[jax.Array, dict]:
    """Args: tokens; deterministic (no dropout); target_pos: score only these positions; embeddings: input
    vectors used instead of the token lookup (gradient-based causality checks); decode: a prefill or decoding
    step with the `cache` collection mutable (r1jax/decoding.py)."""
    cfg = self.cfg
    V, D = cfg.padded_vocab, cfg.d_model
    embed_VxD = layers.param(self, "embed", (V, D), ("vocab", "embed"), cfg.init_std, cfg.param_dtype)
    if embeddings_BxTxD is None:
      embeddings_BxTxD = jnp.take(embed_VxD, tokens_BxT, axis=0)
    x_BxTxD = embeddings_BxTxD.astype(layers.dtype(cfg.dtype))
    x_BxTxD = layers.constrain(x_BxTxD, ("act_batch", "act_length", "act_embed"))
    x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic)
    block_cls = nn.remat(Block, static_argnums=(2, 3)) if cfg.remat else Block
    per_layer = {}
    for i in range(cfg.num_layers):
      x_BxTxD, aux = block_cls(cfg, i, name=f"layer{i}")(x_BxTxD, deterministic, decode)
      for kind, values in aux.items():
        for key, value in values.items():
          per_layer.setdefault(f"{kind}/{key}", []).append((i, value))
    x_BxTxD = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x_BxTxD)
    if target_pos_BxN is not None:  # score only these positions (MQAR answers): skips B*T*V logits
      x_BxTxD = jnp.take_along_axis(x_BxTxD, target_pos_BxN[..., None], axis=1)
    if cfg.tie_embeddings:
      head_DxV = embed_VxD.T
    else:
      head_DxV = layers.param(self, "head", (D, V), ("embed", "vocab"), cfg.init_std, cfg.param_dtype)
    logits_BxTxV = jnp.einsum("BTD,DV->BTV", x_BxTxD, head_DxV.astype(x_BxTxD.dtype)).astype(jnp.float32)
    logits_BxTxV = layers.constrain(logits_BxTxV, ("act_batch", "act_length", "act_vocab"))
    logits_BxTxV = mask_padded_classes(logits_BxTxV, cfg.vocab_size)
    return logits_BxTxV, collect_aux(per_layer)


def collect_aux(per_layer: dict[str, list[tuple[int, jax.Array]]]) -> dict[str, jax.Array]:
  """{"kind/key": [(layer, value)]} -> summed `aux_loss` of the `loss_` keys, layer means and per-layer values."""
  out = {"aux_loss": jnp.zeros((), jnp.float32)}
  for key, values in per_layer.items():
    if key.split("/")[-1].startswith("loss_"):
      out["aux_loss"] += sum(jnp.asarray(v, jnp.float32) for _, v in values)
    out[key] = jnp.mean(jnp.stack([jnp.asarray(v, jnp.float32) for _, v in values]))
    out.update({f"{key}/layer{i}": v for i, v in values})
  return out


def mask_padded_classes(logits_BxNxV: jax.Array, vocab_size: int) -> jax.Array:
  """Rows added to the vocabulary only for shardability never win the softmax."""
  if logits_BxNxV.shape[-1] == vocab_size:
    return logits_BxNxV
  keep_1x1xV = (jnp.arange(logits_BxNxV.shape[-1]) < vocab_size).reshape(1, 1, -1)
  return jnp.where(keep_1x1xV, logits_BxNxV, -1e9)
