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

from r1jax import layers, registry
from r1jax.config import ModelConfig
from r1jax.inference import decoding


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
        mixer = module(cfg, opts, name=kind)
        if decoding.steps_at_once(module, decode):
          h_BxTxD, aux[kind] = mixer(h_BxTxD, deterministic=deterministic, decode=decode)
        else:  # a step of several tokens (speculative verification), one token at a time: exact for every mixer
          outs = [
            mixer(h_BxTxD[:, j : j + 1], deterministic=deterministic, decode=decode.token(j))
            for j in range(h_BxTxD.shape[1])
          ]
          h_BxTxD, aux[kind] = jnp.concatenate([o for o, _ in outs], 1), outs[-1][1]
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

  Multi-token prediction (`mtp_depth` D > 0; DeepSeek-V3, arXiv:2412.19437, section 2.2; Gloeckle et al. 2024):
  module k = 1..D merges the previous depth's hidden state h^{k-1}_i (h^0: the last block's output, before the final
  norm) with the embedding of token i+k, M_k [RMSNorm(h^{k-1}_i); RMSNorm(Emb(t_{i+k}))], runs one block (the last
  layer's mixer and feed-forward; its layer index L+k-1 in the aux keys) and predicts token i+k+1 through its own
  RMSNorm and the shared output head. In training and evaluation (not decoding, not at target_pos) their logits go
  to `aux["mtp_logits"]` [D, B, T, V] (the last k positions of depth k have no target), which r1jax/objective.py
  turns into the weighted MTP losses. Decoding, a call returns the last block's output as `aux["hidden"]`, and a call
  with `mtp=(k, h)` runs module k alone on h [B, T, D] and the tokens given (those at positions i + k), with its own
  cache: (its logits, {"hidden": its output}) — the drafts of self-speculative decoding
  (r1jax/inference/speculative.py).
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
    mtp: tuple[int, jax.Array] | None = None,
  ) -> tuple[jax.Array, dict]:
    """Args: tokens; deterministic (no dropout); target_pos: score only these positions; embeddings: input
    vectors used instead of the token lookup (gradient-based causality checks); decode: a prefill or decoding
    step with the `cache` collection mutable (r1jax/inference/decoding.py); mtp: (depth k, h^{k-1}) to run MTP module k
    alone (decoding)."""
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

    def collect(i, aux):
      for kind, values in aux.items():
        for key, value in values.items():
          per_layer.setdefault(f"{kind}/{key}", []).append((i, value))

    for i in range(cfg.num_layers if mtp is None else 0):
      x_BxTxD, aux = block_cls(cfg, i, name=f"layer{i}")(x_BxTxD, deterministic, decode)
      collect(i, aux)
    if cfg.tie_embeddings:
      head_DxV = embed_VxD.T
    else:
      head_DxV = layers.param(self, "head", (D, V), ("embed", "vocab"), cfg.init_std, cfg.param_dtype)

    def logits(name, h_BxTxD):  # the final norm `name`, then the shared output head
      h_BxTxD = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=name)(h_BxTxD)
      if target_pos_BxN is not None:  # score only these positions (MQAR answers): skips B*T*V logits
        h_BxTxD = jnp.take_along_axis(h_BxTxD, target_pos_BxN[..., None], axis=1)
      out_BxTxV = jnp.einsum("BTD,DV->BTV", h_BxTxD, head_DxV.astype(h_BxTxD.dtype)).astype(jnp.float32)
      out_BxTxV = layers.constrain(out_BxTxV, ("act_batch", "act_length", "act_vocab"))
      return mask_padded_classes(out_BxTxV, cfg.vocab_size)

    def mtp_module(k, h_BxTxD, ahead_BxTxD, decode):  # M_k [RMSNorm(h); RMSNorm(Emb(t_{i+k}))], a block, the head
      norm = lambda name, a: layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=name)(a)  # noqa: E731
      merged_BxTx2D = jnp.concatenate([norm(f"mtp{k}_norm_h", h_BxTxD), norm(f"mtp{k}_norm_e", ahead_BxTxD)], -1)
      w_2DxD = layers.param(self, f"mtp{k}_proj", (2 * D, D), (None, "embed"), cfg.init_std, cfg.param_dtype)
      h_BxTxD = jnp.einsum("BTE,ED->BTD", merged_BxTx2D, w_2DxD.astype(merged_BxTx2D.dtype))
      h_BxTxD, aux = block_cls(cfg, cfg.num_layers - 1, name=f"mtp{k}")(h_BxTxD, deterministic, decode)
      collect(cfg.num_layers + k - 1, aux)
      return h_BxTxD, logits(f"mtp{k}_norm", h_BxTxD)

    if mtp is not None:
      k, h_BxTxD = mtp
      h_BxTxD, logits_BxTxV = mtp_module(k, h_BxTxD.astype(x_BxTxD.dtype), x_BxTxD, decode)
      return logits_BxTxV, {"hidden": h_BxTxD}
    logits_BxTxV = logits("final_norm", x_BxTxD)
    mtp_logits = []
    if cfg.mtp_depth and decode is None and target_pos_BxN is None:
      h_BxTxD, e_BxTxD = x_BxTxD, embeddings_BxTxD.astype(x_BxTxD.dtype)
      for k in range(1, cfg.mtp_depth + 1):
        ahead_BxTxD = jnp.concatenate([e_BxTxD[:, k:], jnp.zeros_like(e_BxTxD[:, :k])], 1)  # Emb(t_{i+k})
        h_BxTxD, logits_k = mtp_module(k, h_BxTxD, ahead_BxTxD, None)
        mtp_logits.append(logits_k)
    aux = collect_aux(per_layer)
    if mtp_logits:
      aux["mtp_logits"] = jnp.stack(mtp_logits)
    if decode is not None and cfg.mtp_depth:
      aux["hidden"] = x_BxTxD
    return logits_BxTxV, aux


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
  """The model of `cfg.arch`: the decoder-only Transformer LM, or the video classifier; with `cfg.quant`, training on
  INT8 weights (quantization-aware, r1jax/inference/quantize.py)."""
  if cfg.quant:
    from r1jax.inference import quantize  # qwix only where asked for: importing it costs every other process ~1 s

    return quantize.qat(Transformer(cfg))
  return VideoTransformer(cfg) if cfg.arch == "video" else Transformer(cfg)
