"""Multi-head latent attention (MLA: DeepSeek-V2, Liu et al. 2024, section 2.1; kept in DeepSeek-V3 and, with
DSA's indexer on top, in DeepSeek-V3.2), the attention DeepSeek ships for a small KV cache.

Keys and values come from one low-rank joint latent per token:
  c_kv = RMSNorm(x W_DKV)                              [d_c]  (the latent is normalised, as in V3)
  k_C,h = c_kv W_UK,h      v_h = c_kv W_UV,h            per head [d_h], [d_v]
  k_R = RoPE(x W_KR)                                   [d_r]  one decoupled RoPE key shared by every head
Queries: c_q = RMSNorm(x W_DQ) [d_c'] when q_rank > 0 (else c_q = x); q_C,h = c_q W_UQ,h, q_R,h = RoPE(c_q W_QR,h).
Score_h(t, s) = [q_C,h(t); q_R,h(t)] . [k_C,h(s); k_R(s)] / sqrt(d_h + d_r). RoPE cannot sit on k_C: a rotation
between c_kv and k_C would stop W_UK from being absorbed into the query, hence the decoupled k_R.

Training (and a prefill) runs this expanded form. The decoding cache holds only c_kv and k_R per token and layer:
d_c + d_r numbers against 2 * G * K for MHA / GQA. A decoding step absorbs W_UK into the query
(q_lat,h = W_UK,h q_C,h, a query in latent space: q_C,h . k_C,h(s) = q_lat,h . c_kv(s)) and W_UV into the output
(o_h = W_UV,h^T sum_s p_h(s) c_kv(s)), so per-head keys and values are never materialised (V2 section 2.1.2;
DeepSeek-V3 inference/model.py's `absorb` path). `absorb=False` decodes by expanding per-head keys and values from
the latent cache instead: the reference the absorbed step is tested against.

Sparse MLA (DeepSeek-V3.2, DSA in MQA mode): with sparse=True a lightning indexer (sparse.indexer_inputs) picks k
earlier tokens per query and every head attends to the same k latents, in training (sparse.topk_attention over the
expanded keys) and in decoding (the picked latents gathered from the cache). Trained as DSA's sparse stage by default
(indexer on a detached input, KL to the main attention over the picked keys, no gate); from scratch, sampled
training picks (sample_temperature > 0) let it find keys a greedy indexer never tries (experiments/
sparse_attn_ablation.py's probes). The indexer is V3.2's (sparse.indexer_inputs): its query reads the query latent
c_q (x when q_rank = 0), its key x through a LayerNorm, partial RoPE, the 1 / sqrt(d_I) score scale;
`indexer=SparseOptions(**DSA_INDEXER, **INDEXER_V0), indexer_query="input"` is r1jax's earlier recipe.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import layers
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.mixers.dense import project_out
from r1jax.mixers.sparse import DSA_INDEXER, SparseOptions, indexer_inputs, indexer_step_picks, topk_attention
from r1jax.registry import register_mixer, wants_diagnostics


@dataclasses.dataclass(frozen=True)
class MLAOptions:
  kv_rank: int = 0  # d_c, the cached joint latent; 0: 4 * head_dim (DeepSeek-V2: d_c = 4 d_h)
  q_rank: int = 0  # d_c', the query latent; 0: queries straight from x (DeepSeek-V2-Lite)
  rope_dim: int = 0  # d_r, the decoupled RoPE key and per-head query width; 0: head_dim / 2 (DeepSeek-V2)
  head_dim: int = 0  # d_h, per-head content query/key width; 0: d_model / num_heads
  v_dim: int = 0  # d_v, per-head value width; 0: head_dim
  absorb: bool = True  # decoding steps absorb W_UK and W_UV | False: expand keys/values from the latent cache
  sparse: bool = False  # True: sparse MLA (V3.2): every head attends to the indexer's top-k tokens | False: dense
  # Sparse MLA's lightning indexer (select=indexer): its key budget top_k, heads, width, losses, sampled training
  # picks, query chunk and diagnostics, as the sparse mixer's; DeepSeek-V3.2's recipe by default (sparse.DSA_INDEXER)
  indexer: SparseOptions = SparseOptions(**DSA_INDEXER)
  indexer_query: str = "latent"  # latent: the indexer's query reads the query latent c_q (V3.2; x where q_rank = 0,
  #                                which has none) | input: x (r1jax's recipe before issue 41)

  def __post_init__(self):
    for field in ("kv_rank", "q_rank", "rope_dim", "head_dim", "v_dim"):
      if getattr(self, field) < 0:
        raise ConfigError(
          f"{field}={getattr(self, field)} is invalid. Fix: use 0 (the default rule) or a positive width."
        )
    if self.rope_dim % 2:
      raise ConfigError(f"rope_dim={self.rope_dim} is odd. Fix: RoPE rotates pairs; use an even width.")
    if self.indexer_query not in ("latent", "input"):
      raise ConfigError(f"indexer_query={self.indexer_query!r} is invalid. Fix: use 'latent' or 'input'.")
    if self.indexer.select != "indexer":
      raise ConfigError(
        f"indexer.select={self.indexer.select!r} is invalid. Fix: sparse MLA picks its keys with the "
        "lightning indexer; leave indexer.select at 'indexer'."
      )

  def dims(self, cfg) -> dict[str, int]:
    """The resolved widths: d_c, d_cq (0: no query latent), d_r, d_h, d_v."""
    K = cfg.d_model // cfg.num_heads
    d_h = self.head_dim or K
    return {
      "d_c": self.kv_rank or 4 * K,
      "d_cq": self.q_rank,
      "d_r": self.rope_dim or max(2, K // 2 // 2 * 2),
      "d_h": d_h,
      "d_v": self.v_dim or d_h,
    }

  def cache_per_token(self, cfg) -> int:
    """Numbers a decoding cache holds per token and layer: d_c + d_r (MHA: 2 * heads * K)."""
    d = self.dims(cfg)
    return d["d_c"] + d["d_r"]

  def check_model(self, cfg) -> None:
    """Constraints with the model's widths (ModelConfig calls this before anything is built)."""
    if cfg.num_kv_heads not in (0, cfg.num_heads):
      raise ConfigError(
        f"model.num_kv_heads={cfg.num_kv_heads} with mixer mla: MLA's heads share one latent, not "
        "key/value groups. Fix: leave model.num_kv_heads at 0."
      )


def causal_attention(q_BxTxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxV: jax.Array) -> jax.Array:
  """Causal softmax attention with float32 logits where values may be narrower or wider than keys (MLA's d_v)."""
  T, K = q_BxTxHxK.shape[1], q_BxTxHxK.shape[-1]
  logits = jnp.einsum("BTHK,BSHK->BHTS", q_BxTxHxK, k_BxTxHxK, preferred_element_type=jnp.float32) * K**-0.5
  logits = jnp.where(np.tril(np.ones((T, T), bool)), logits, -jnp.inf)
  probs = jax.nn.softmax(logits, -1).astype(v_BxTxHxV.dtype)
  return jnp.einsum("BHTS,BSHV->BTHV", probs, v_BxTxHxV)


def absorbed_attention(
  q_lat_BxTxHxC: jax.Array,
  q_rope_BxTxHxR: jax.Array,
  c_BxTxNxC: jax.Array,
  k_rope_BxTxNxR: jax.Array,
  ok_BxTxN: jax.Array,
  scale: float,
  bias_BxTxN: jax.Array | None = None,
) -> jax.Array:
  """Attention in latent space: logits (q_lat . c + q_R . k_R) * scale (+ bias: the indexer gate) over N cached
  latents per query (a row's whole cache, broadcast over T, or each query's picks); returns the attention-weighted
  latent [B, T, H, d_c] (float32 softmax)."""
  logits = jnp.einsum("BTHC,BTNC->BTHN", q_lat_BxTxHxC, c_BxTxNxC, preferred_element_type=jnp.float32) + jnp.einsum(
    "BTHR,BTNR->BTHN", q_rope_BxTxHxR, k_rope_BxTxNxR, preferred_element_type=jnp.float32
  )
  logits = logits * scale + (0.0 if bias_BxTxN is None else bias_BxTxN[:, :, None, :])
  probs = jax.nn.softmax(jnp.where(ok_BxTxN[:, :, None, :], logits, -jnp.inf), -1).astype(c_BxTxNxC.dtype)
  return jnp.einsum("BTHN,BTNC->BTHC", probs, c_BxTxNxC)


@register_mixer("mla", MLAOptions)
class MultiHeadLatentAttention(nn.Module):
  """MLA (see the module docstring); aux in sparse mode: the indexer loss, and recall / mass in a diagnostics pass.
  Sows `latent` (c_kv [B, T, d_c], k_R [B, T, d_r]) and, sparse, `selected` (picks [B, T, k], validity)."""

  positional_cache = True  # its caches are indexed by position (r1jax/inference/decoding.py: rollback_free)

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: MLAOptions

  def _queries(self, x_BxTxD: jax.Array, positions) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Content queries [B, T, H, d_h], RoPE'd decoupled queries [B, T, H, d_r] and the query latent c_q (None
    without one: q_rank = 0)."""
    cfg, d = self.cfg, self.opts.dims(self.cfg)
    D, H, dt = cfg.d_model, cfg.num_heads, layers.dtype(cfg.dtype)
    x, latent = x_BxTxD.astype(dt), None
    if d["d_cq"]:
      w_DxQ = layers.param(self, "wq_a", (D, d["d_cq"]), ("embed", None), cfg.init_std, cfg.param_dtype)
      x = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="q_norm")(
        jnp.einsum("BTD,DQ->BTQ", x, w_DxQ.astype(dt))
      )
      latent = x
    in_axis = None if d["d_cq"] else "embed"  # from the query latent, or straight from x
    wq = layers.param(
      self, "wq", (x.shape[-1], H, d["d_h"] + d["d_r"]), (in_axis, "heads", "kv"), cfg.init_std, cfg.param_dtype
    )
    q_BxTxHxE = layers.constrain(
      jnp.einsum("BTD,DHE->BTHE", x, wq.astype(dt)), ("act_batch", "act_length", "act_heads", "act_kv")
    )
    return q_BxTxHxE[..., : d["d_h"]], layers.rope(q_BxTxHxE[..., d["d_h"] :], positions, cfg.rope_base), latent

  def _indexer_source(self, q_latent: jax.Array | None) -> jax.Array | None:
    """What the indexer's query reads besides x: the query latent (indexer_query=latent), or None (x)."""
    return q_latent if self.opts.indexer_query == "latent" else None

  def _latent(self, x_BxTxD: jax.Array, positions) -> tuple[jax.Array, jax.Array]:
    """The cached part of a token: c_kv [B, T, d_c] (normalised) and the RoPE'd shared key k_R [B, T, d_r]."""
    cfg, d = self.cfg, self.opts.dims(self.cfg)
    dt = layers.dtype(cfg.dtype)
    w = layers.param(self, "wkv_a", (cfg.d_model, d["d_c"] + d["d_r"]), ("embed", None), cfg.init_std, cfg.param_dtype)
    a_BxTxE = jnp.einsum("BTD,DE->BTE", x_BxTxD.astype(dt), w.astype(dt))
    c_BxTxC = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="kv_norm")(a_BxTxE[..., : d["d_c"]])
    k_rope = layers.rope(a_BxTxE[..., d["d_c"] :][:, :, None], positions, cfg.rope_base)[:, :, 0]
    return c_BxTxC, k_rope

  def _up(self) -> tuple[jax.Array, jax.Array]:
    """W_UK [d_c, H, d_h] and W_UV [d_c, H, d_v]."""
    cfg, d = self.cfg, self.opts.dims(self.cfg)
    dt = layers.dtype(cfg.dtype)
    return tuple(
      layers.param(
        self, n, (d["d_c"], cfg.num_heads, d[w]), (None, "heads", "kv"), cfg.init_std, cfg.param_dtype
      ).astype(dt)
      for n, w in (("wk_b", "d_h"), ("wv_b", "d_v"))
    )

  def _expand(
    self, c_BxSxC: jax.Array, k_rope_BxSxR: jax.Array, wk_CxHxN: jax.Array, wv_CxHxV: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Per-head keys [k_C; k_R] [B, S, H, d_h + d_r] and values [B, S, H, d_v] from latents."""
    k_C = jnp.einsum("BSC,CHN->BSHN", c_BxSxC, wk_CxHxN)
    k_R = jnp.broadcast_to(k_rope_BxSxR[:, :, None], (*k_C.shape[:3], k_rope_BxSxR.shape[-1]))
    axes = ("act_batch", "act_length", "act_heads", "act_kv")
    k = layers.constrain(jnp.concatenate([k_C, k_R.astype(k_C.dtype)], -1), axes)
    return k, layers.constrain(jnp.einsum("BSC,CHV->BSHV", c_BxSxC, wv_CxHxV), axes)

  def _step(self, x_BxTxD: jax.Array, decode: decoding.Decode) -> tuple[jax.Array, dict]:
    """One decoding step over the latent cache: absorbed (default) or expanded (the reference)."""
    o, d = self.opts, self.opts.dims(self.cfg)
    pos_Bx1 = decode.token_positions(1)
    q_C, q_R, q_latent = self._queries(x_BxTxD, pos_Bx1)
    c_new, k_rope_new = self._latent(x_BxTxD, pos_Bx1)
    c_BxSxC = decoding.cached(self, "c_kv", c_new, decode)
    k_rope_BxSxR = decoding.cached(self, "k_rope", k_rope_new, decode, self.cfg.rope_base)
    wk, wv = self._up()
    bias = None  # the indexer gate's scores on the picked keys (sparse, indexer_grad=gate), as in the forward
    if o.sparse:
      idx_Bx1xN, ok_Bx1xN, bias = indexer_step_picks(
        self, x_BxTxD, self.cfg, o.indexer, decode, self._indexer_source(q_latent)
      )
      c_sel, k_rope_sel = (jax.vmap(lambda a, i: a[i])(a, idx_Bx1xN) for a in (c_BxSxC, k_rope_BxSxR))  # [B,1,N,.]
    else:
      ok_Bx1xN = decoding.causal_ok(decode, 1)
      c_sel, k_rope_sel = c_BxSxC[:, None], k_rope_BxSxR[:, None]
    if o.absorb:
      q_lat = jnp.einsum("BTHN,CHN->BTHC", q_C, wk)  # W_UK absorbed into the query
      o_lat = absorbed_attention(q_lat, q_R, c_sel, k_rope_sel, ok_Bx1xN, (d["d_h"] + d["d_r"]) ** -0.5, bias)
      out = jnp.einsum("BTHC,CHV->BTHV", o_lat, wv)  # W_UV absorbed into the output
    else:  # expand every visible cached latent into per-head keys and values
      k, v = self._expand(c_sel[:, 0], k_rope_sel[:, 0], wk, wv)  # [B, N, H, .]: one key/value head per head
      out = decoding.attend(jnp.concatenate([q_C, q_R], -1), k, v, ok_Bx1xN, bias)
    return project_out(self, out, self.cfg), {}

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, *, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
    if decoding.stepping(decode):
      return self._step(x_BxTxD, decode)
    o = self.opts
    positions = np.arange(x_BxTxD.shape[1])
    q_C, q_R, q_latent = self._queries(x_BxTxD, positions)
    c_BxTxC, k_rope_BxTxR = self._latent(x_BxTxD, positions)
    self.sow("intermediates", "latent", (c_BxTxC, k_rope_BxTxR))
    k, v = self._expand(c_BxTxC, k_rope_BxTxR, *self._up())
    q = jnp.concatenate([q_C, q_R.astype(q_C.dtype)], -1)
    aux = {}
    if o.sparse:
      so = o.indexer
      index = indexer_inputs(self, x_BxTxD, self.cfg, so, latent_BxTxQ=self._indexer_source(q_latent))
      self.sow("intermediates", "indexer", index)
      want_kl = so.indexer_loss != "none" and decode is None
      want_diag = so.diagnostics and wants_diagnostics(self)
      noise_key = self.make_rng("dropout") if so.sample_temperature > 0 and not deterministic else None
      res = topk_attention(q, k, v, so, index, noise_key=noise_key, want_kl=want_kl, want_diag=want_diag)
      out = res["out"]
      self.sow("intermediates", "selected", (res["idx"], res["valid"]))
      if want_kl:
        aux["indexer_kl"] = jnp.mean(res["kl"])
        aux["loss_indexer"] = so.indexer_loss_weight * aux["indexer_kl"]
      if want_diag:
        aux["recall"], aux["mass"] = jnp.mean(res["recall"]), jnp.mean(res["mass"])
    else:
      out = causal_attention(q, k, v)
    if decode is not None:  # prefill: the latent cache (and the indexer's keys)
      decoding.cached(self, "c_kv", c_BxTxC, decode)
      decoding.cached(self, "k_rope", k_rope_BxTxR, decode)
      if o.sparse:
        decoding.cached(self, "ik", index[1], decode)
    return project_out(self, out, self.cfg), aux
