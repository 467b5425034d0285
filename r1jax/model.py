"""The models: the decoder-only Transformer LM (pre-RMSNorm, RoPE, registry-chosen mixer and feed-forward per layer)
and the video classifier over patch clips; `make_model` picks by `model.arch`.

Dimension legend, used in every variable name and einsum of r1jax:
  B batch            T query length / time   S key length / space   D model width
  H query heads      G key/value heads       K head dim             F feed-forward hidden
  E experts          C chunk / capacity      V vocabulary           N scored positions per row
  P value head dim   A gate entries per head (1 or K; recurrent mixers)
"""

import dataclasses

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
  def __call__(
    self, x_BxTxD: jax.Array, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
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
  def __call__(
    self,
    tokens_BxT: jax.Array,
    *,
    deterministic: bool = True,
    target_pos_BxN: jax.Array | None = None,
    embeddings_BxTxD: jax.Array | None = None,
    decode: decoding.Decode | None = None,
  ) -> tuple[jax.Array, dict]:
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


# ------------------------------------------------------------------------------------------------------ video
# Video classifier over patch clips [B, T, S, P] with space-time attention (TimeSformer, Bertasius et al. 2021;
# ViViT, Arnab et al. 2021): patch embedding + learned space and time position embeddings, pre-RMSNorm blocks of the
# `spacetime` mixer and a registry feed-forward, mean pooling over all tokens, a linear head.
#
# Follows TimeSformer where variants differ: the space-only model gets no time embedding (its frames are an unordered
# set, and its prediction averages them), and ViViT's factorised encoder (kind=factorised) prepends a learned CLS
# token to each frame, runs the first half of the layers as space attention, keeps only the frames' CLS tokens, and
# runs the rest as time attention over them (ViViT pools with a CLS token twice; here the final pooling is a mean, as
# for the others).


def layer_kinds(cfg: ModelConfig) -> tuple[str, ...]:
  """The space-time kind each layer runs (factorised: space for the first half, rounded up, then time)."""
  kind = cfg.options("mixer", "spacetime").kind
  if kind != "factorised":
    return (kind,) * cfg.num_layers
  spatial = -(-cfg.num_layers // 2)
  return ("space",) * spatial + ("time",) * (cfg.num_layers - spatial)


class VideoBlock(nn.Module):
  """x + spacetime(norm(x)) on [B, T, S, D], then x + ffn(norm(x)) on the T*S tokens as one sequence."""

  cfg: ModelConfig
  layer: int
  kind: str

  @nn.compact
  def __call__(self, x_BxTxSxD: jax.Array, deterministic: bool) -> tuple[jax.Array, dict]:
    cfg, aux = self.cfg, {}
    B, T, S, D = x_BxTxSxD.shape
    mixer = registry.lookup(registry.MIXERS, "spacetime", "model.mixer").module
    opts = dataclasses.replace(cfg.options("mixer", "spacetime"), kind=self.kind)
    h = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="mixer_norm")(x_BxTxSxD)
    h, aux["mixer"] = mixer(cfg, opts, name="mixer")(h, deterministic=deterministic)
    x_BxTxSxD = x_BxTxSxD + nn.Dropout(cfg.dropout)(h, deterministic=deterministic).astype(x_BxTxSxD.dtype)
    name = cfg.layer_names("ffn")[self.layer]
    ffn = registry.lookup(registry.FFNS, name, "model.ffn").module
    h = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="ffn_norm")(x_BxTxSxD).reshape(B, T * S, D)
    h, aux["ffn"] = ffn(cfg, cfg.options("ffn", name), name="ffn")(h, deterministic=deterministic)
    h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic).reshape(B, T, S, D)
    return x_BxTxSxD + h.astype(x_BxTxSxD.dtype), aux


class VideoTransformer(nn.Module):
  """Patches [B, T, S, P] -> float32 class logits [B, 1, V] (V = cfg.padded_vocab; classes >= vocab_size masked),
  plus aux losses/diagnostics under the Transformer's aux contract."""

  cfg: ModelConfig

  @nn.compact
  def __call__(
    self, patches_BxTxSxP: jax.Array, *, deterministic: bool = True, target_pos_BxN: jax.Array | None = None
  ) -> tuple[jax.Array, dict]:
    if target_pos_BxN is not None:
      raise ValueError("a video model scores the whole clip; its batches carry no target_pos")
    cfg = self.cfg
    B, T, S, P = patches_BxTxSxP.shape
    D, V, dt = cfg.d_model, cfg.padded_vocab, layers.dtype(cfg.dtype)
    kinds = layer_kinds(cfg)
    embed_PxD = layers.param(self, "patch_embed", (P, D), (None, "embed"), cfg.init_std, cfg.param_dtype)
    space_SxD = layers.param(self, "space_pos", (S, D), (None, "embed"), cfg.init_std, cfg.param_dtype)
    x_BxTxSxD = jnp.einsum("BTSP,PD->BTSD", patches_BxTxSxP.astype(dt), embed_PxD.astype(dt))
    x_BxTxSxD = x_BxTxSxD + space_SxD.astype(dt)[None, None]
    if set(kinds) != {"space"}:  # TimeSformer's space-only model has no time embedding
      time_TxD = layers.param(self, "time_pos", (T, D), (None, "embed"), cfg.init_std, cfg.param_dtype)
      x_BxTxSxD = x_BxTxSxD + time_TxD.astype(dt)[None, :, None]
    x_BxTxSxD = nn.Dropout(cfg.dropout)(x_BxTxSxD, deterministic=deterministic)
    per_layer = {}
    factorised = kinds != (kinds[0],) * len(kinds)
    if factorised:  # ViViT model 2: a learned CLS token per frame, which alone goes on to the temporal layers
      cls_D = layers.param(self, "frame_cls", (D,), ("embed",), cfg.init_std, cfg.param_dtype)
      cls_BxTx1xD = jnp.broadcast_to(cls_D.astype(dt), (B, T, 1, D))
      x_BxTxSxD = jnp.concatenate([cls_BxTx1xD, x_BxTxSxD], axis=2)
    for i, kind in enumerate(kinds):
      if factorised and kind == "time" and kinds[i - 1] == "space":
        x_BxTxSxD = x_BxTxSxD[:, :, :1]
      x_BxTxSxD, aux = VideoBlock(cfg, i, kind, name=f"layer{i}")(x_BxTxSxD, deterministic)
      for part, values in aux.items():
        for key, value in values.items():
          per_layer.setdefault(f"{part}/{key}", []).append((i, value))
    x_BxTxSxD = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x_BxTxSxD)
    pooled_Bx1xD = jnp.mean(x_BxTxSxD, axis=(1, 2))[:, None, :]
    head_DxV = layers.param(self, "head", (D, V), ("embed", "vocab"), cfg.init_std, cfg.param_dtype)
    logits_Bx1xV = jnp.einsum("BND,DV->BNV", pooled_Bx1xD, head_DxV.astype(dt)).astype(jnp.float32)
    return mask_padded_classes(logits_Bx1xV, cfg.vocab_size), collect_aux(per_layer)


def make_model(cfg: ModelConfig) -> nn.Module:
  """The model of `cfg.arch`: the decoder-only Transformer LM, or the video classifier."""
  return VideoTransformer(cfg) if cfg.arch == "video" else Transformer(cfg)
