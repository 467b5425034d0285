"""Video classifier over patch clips [B, T, S, P] with space-time attention (TimeSformer, Bertasius et al. 2021;
ViViT, Arnab et al. 2021): patch embedding + learned space and time position embeddings, pre-RMSNorm blocks of the
`spacetime` mixer and a registry feed-forward, mean pooling over all tokens, a linear head.

Follows TimeSformer where variants differ: the space-only model gets no time embedding (its frames are an unordered
set, and its prediction averages them), and ViViT's factorised encoder (kind=factorised) prepends a learned CLS token to
each frame, runs the first half of the layers as space attention, keeps only the frames' CLS tokens, and runs the rest
as time attention over them (ViViT pools with a CLS token twice; here the final pooling is a mean, as for the others).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import layers, registry
from r1jax.config import ModelConfig
from r1jax.model import Transformer, collect_aux, mask_padded_classes


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
  def __call__(self, patches_BxTxSxP: jax.Array, *, deterministic: bool = True,
               target_pos_BxN: jax.Array | None = None) -> tuple[jax.Array, dict]:
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
