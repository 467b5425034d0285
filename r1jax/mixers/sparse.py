"""Dynamic token top-k sparse attention: each query attends to k keys picked by a rule, gathered ([B,T,k,...]),
never through a T x T softmax.

Rules with the same key budget k:
  indexer  a learned 'lightning indexer' (DeepSeek-V3.2 DSA, 2025): I[t,s] = sum_j w[t,j] relu(q[t,j] . k[s]) with
           few narrow heads scores every earlier key; the top-k are attended (cf. Routing Transformer, Roy et al.
           2021, which picks keys by learned clusters). The scoring is O(T^2 * H_I * K_I), cheap next to dense
           attention only when H_I * K_I << 4 * H * K. As V3.2-Exp's inference/model.py by default: the key
           LayerNorm'd, RoPE on the first half of the dims, w scaled by 1/sqrt(H_I * K_I) (INDEXER_V0: r1jax's
           earlier recipe; v32_indexer_params loads V3.2's weights).
  window   the last k keys (sliding window, Longformer / Mistral), no selection cost.
  random   k random earlier keys, a fixed pattern per layer (BigBird's random keys).
An indexer trained only on the keys it picks (DSA's sparse-stage KL) never sees the others; from scratch it can lock
onto keys that carry nothing. `sample_temperature` > 0 makes training picks a sample: the top-k of I / tau plus
Gumbel noise, i.e. k keys drawn without replacement from softmax(I / tau) (the Gumbel-top-k trick, Kool et al. 2019;
the exploration of noisy top-k gating, Shazeer et al. 2017). An untrained indexer then picks nearly at random, a
trained one mostly its top keys; eval stays greedy.
Queries are processed in chunks of C (memory O(C*T) for the scores), in two passes: the first picks every query's
keys (the O(T^2) scoring and top-k, not differentiated, so never rematerialised), the second attends over the picks
(each chunk rematerialised in the backward). The picks are kept, [B, T, k] ids: O(T*k) memory.
"""

import dataclasses
import functools
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import layers
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.mixers.dense import FLASH_FROM, project_out, project_qkv
from r1jax.registry import register_mixer, wants_diagnostics

SELECTS = ("indexer", "window", "random")
INDEXER_GRADS = ("gate", "none")
INDEXER_LOSSES = ("none", "kl", "kl_dense")


@dataclasses.dataclass(frozen=True)
class SparseOptions:
  select: str = "indexer"  # indexer | window | random (see the module docstring)
  top_k: int = 32  # keys attended per query (k >= T: every earlier key)
  indexer_heads: int = 4  # indexer heads H_I (DSA uses 64; few and narrow keep the O(T^2) scoring cheap)
  indexer_dim: int = 16  # indexer head dim K_I
  indexer_grad: str = "gate"  # gate: indexer scores are added to the selected logits so the LM loss trains the
  #                             indexer | none: only indexer_loss trains it (DSA)
  indexer_loss: str = "none"  # none | kl: DSA's KL(main attention || softmax(I)) over the selected keys |
  #                             kl_dense: DSA's dense warm-up KL over all earlier keys (costs a dense pass)
  indexer_loss_weight: float = 1.0  # weight of the indexer loss in the objective
  detach_indexer_input: bool = False  # DSA: the indexer reads stop_gradient(x), so it never shapes the residual
  # DeepSeek-V3.2's indexer (inference/model.py `Indexer`) by default; INDEXER_V0 names r1jax's earlier recipe
  indexer_key_norm: bool = True  # True: LayerNorm on the indexer key before RoPE (V3.2) | False: none (v0)
  indexer_rope_fraction: float = 0.5  # share of the indexer dims RoPE rotates, the first ones (V3.2: 64 of 128) |
  #                                     1.0: all (v0); the count must be even
  indexer_scale: bool = True  # True: the score carries 1 / sqrt(indexer_dim) (V3.2) | False: not (v0)
  sample_temperature: float = 0.0  # > 0: training picks are a Gumbel-top-k sample of softmax(I / tau) (exploration;
  #                                  eval and decoding stay greedy) | 0: greedy top-k in training too (DSA)
  query_chunk: int = 256  # queries per chunk C
  diagnostics: bool = True  # in a diagnostics pass (registry.DIAGNOSTICS), recall of the dense top-k and mass kept

  def __post_init__(self):
    checks = (
      (self.select in SELECTS, "select", f"use one of {SELECTS}"),
      (self.top_k >= 1, "top_k", "use a positive key budget"),
      (
        self.indexer_heads >= 1 and self.indexer_dim >= 2 and self.indexer_dim % 2 == 0,
        "indexer_heads/indexer_dim",
        "use >= 1 heads of an even dim (RoPE)",
      ),
      (
        0 < self.indexer_rope_fraction <= 1 and self.rope_dims() % 2 == 0 and self.rope_dims() >= 2,
        "indexer_rope_fraction",
        f"use a fraction in (0, 1] that rotates an even number (>= 2) of the {self.indexer_dim} indexer dims",
      ),
      (self.indexer_grad in INDEXER_GRADS, "indexer_grad", f"use one of {INDEXER_GRADS}"),
      (self.indexer_loss in INDEXER_LOSSES, "indexer_loss", f"use one of {INDEXER_LOSSES}"),
      (self.query_chunk >= 1, "query_chunk", "use a positive chunk size"),
      (
        self.sample_temperature >= 0 and (self.sample_temperature == 0 or self.select == "indexer"),
        "sample_temperature",
        "use 0 (greedy), or a positive temperature with select=indexer",
      ),
    )
    for ok, field, fix in checks:
      if not ok:
        raise ConfigError(f"{field}={getattr(self, field.split('/')[0])!r} is invalid. Fix: {fix}")

  def rope_dims(self) -> int:
    """How many of the indexer's leading dims RoPE rotates."""
    return round(self.indexer_rope_fraction * self.indexer_dim)


# r1jax's indexer before issue 41 (every result committed before it): no key norm, RoPE over every dim, no
# 1 / sqrt(d_I) in the score (and in sparse MLA the query from x: MLAOptions.indexer_query="input");
# `configs.dsa(..., indexer="v0")` takes it.
INDEXER_V0 = {"indexer_key_norm": False, "indexer_rope_fraction": 1.0, "indexer_scale": False}

# DeepSeek-V3.2's DSA (V3.2-Exp report, section 2): the indexer reads a detached input and only its KL loss trains it
# (no gate); KL over its own picks in the sparse stage (the warm-up stage uses kl_dense: over all earlier keys).
# The named DSA configs (r1jax/lab/configs.py) and sparse MLA's default indexer are built from this one declaration.
DSA_INDEXER = {"indexer_grad": "none", "detach_indexer_input": True, "indexer_loss": "kl"}


def gathered_attention(
  q_BxTxHxK: jax.Array,
  k_BxSxGxK: jax.Array,
  v_BxSxGxK: jax.Array,
  idx_BxTxN: jax.Array,
  valid_BxTxN: jax.Array,
  bias_BxTxN: jax.Array | None = None,
  rows: int = 1,
) -> tuple[jax.Array, jax.Array]:
  """Softmax attention of each query over its N selected keys only (shared by the query's heads).

  Args:
    q_BxTxHxK: queries; k_BxSxGxK, v_BxSxGxK: keys/values (G key/value heads, H/G query heads each; the values'
      width may differ from K, as MLA's).
    idx_BxTxN: key positions per query, or [B, T, G, N]: per query and key/value group (NSA's selection); with
      `rows` > 1, ids of blocks of `rows` consecutive keys (S a multiple of rows), block j = keys [j*rows, (j+1)*rows).
    valid_BxTxN: False for padding picks (at least one True per row), per key: [..., N * rows].
    bias_BxTxN: added to the logits (the indexer gate), or None.
  Returns:
    output [B, T, H, K_v] and float32 probabilities [B, T, G, H/G, N * rows].
  """
  B, T, H, K = q_BxTxHxK.shape
  S, G = k_BxSxGxK.shape[1:3]
  if idx_BxTxN.ndim == 3:  # one set for every group
    idx_BxTxN, valid_BxTxN = idx_BxTxN[:, :, None], valid_BxTxN[:, :, None]
  # One row gather from [B*G*S/rows, rows*K] straight into [B, T, G, N*rows, K]: batch dims lead and the contraction
  # is minor in both einsums, which makes the backward 3-4x faster on CPU than gathering [B, T, N, G, K] (whole key
  # vectors); a block of rows is one contiguous row of the gather. The ids are in range (no masking select).
  offset_BxGx1 = ((jnp.arange(B)[:, None] * G + jnp.arange(G)[None, :]) * (S // rows))[:, :, None]
  flat_idx = (idx_BxTxN + offset_BxGx1[:, None]).reshape(-1)
  gather = lambda a: (
    a.transpose(0, 2, 1, 3)
    .reshape(B * G * (S // rows), -1)
    .at[flat_idx]
    .get(  # noqa: E731
      mode="promise_in_bounds"
    )
    .reshape(B, T, G, idx_BxTxN.shape[-1] * rows, -1)
  )
  k_BxTxGxNxK, v_BxTxGxNxK = gather(k_BxSxGxK), gather(v_BxSxGxK)
  q_BxTxGxRxK = q_BxTxHxK.reshape(B, T, G, H // G, K)
  logits = jnp.einsum("BTGRK,BTGNK->BTGRN", q_BxTxGxRxK, k_BxTxGxNxK, preferred_element_type=jnp.float32)
  logits = logits * K**-0.5
  if bias_BxTxN is not None:
    logits = logits + bias_BxTxN[:, :, None, None, :]
  logits = jnp.where(valid_BxTxN[:, :, :, None, :], logits, -jnp.inf)
  probs_BxTxGxRxN = jax.nn.softmax(logits, axis=-1)
  o = jnp.einsum("BTGRN,BTGNK->BTGRK", probs_BxTxGxRxN.astype(v_BxSxGxK.dtype), v_BxTxGxNxK)
  return o.reshape(B, T, H, -1), probs_BxTxGxRxN


def indexer_scores(iq_BxCxJxI: jax.Array, iw_BxCxJ: jax.Array, ik: jax.Array, spec: str) -> jax.Array:
  """DSA's index score sum_j w[t,j] relu(q[t,j] . k[s]) in float32, for the keys `ik` as contracted by the einsum
  `spec` (all earlier keys [B, S, I], or each query's gathered ones [B, C, N, I])."""
  relu_BxCxJxS = nn.relu(jnp.einsum(spec, iq_BxCxJxI, ik, preferred_element_type=jnp.float32))
  return jnp.einsum("BCJ,BCJS->BCS", iw_BxCxJ.astype(jnp.float32), relu_BxCxJxS)


def dense_probs(q_BxCxHxK: jax.Array, k_BxSxGxK: jax.Array, pos_C: jax.Array) -> jax.Array:
  """Causal dense attention probabilities averaged over heads, [B, C, S] float32 (diagnostics, DSA's warm-up)."""
  B, C, H, K = q_BxCxHxK.shape
  G = k_BxSxGxK.shape[2]
  logits = (
    jnp.einsum(
      "BCGRK,BSGK->BCGRS", q_BxCxHxK.reshape(B, C, G, H // G, K), k_BxSxGxK, preferred_element_type=jnp.float32
    )
    * K**-0.5
  )
  causal_CxS = jnp.arange(k_BxSxGxK.shape[1])[None, :] <= pos_C[:, None]
  return jax.nn.softmax(jnp.where(causal_CxS[None, :, None, None], logits, -jnp.inf), -1).mean((2, 3))


def selection_diagnostics(p_dense_BxCxS: jax.Array, idx_BxCxN: jax.Array, valid_BxCxN: jax.Array) -> dict:
  """Per query: recall of the dense top-N keys among the selected ones, and the dense attention mass they hold."""
  N = idx_BxCxN.shape[-1]
  p_sel = jnp.where(valid_BxCxN, jnp.take_along_axis(p_dense_BxCxS, idx_BxCxN, -1), 0.0)
  # a pick is among the dense top-N iff fewer than N keys are more probable (= p_sel >= the N-th largest, ties
  # included); a fused compare-and-count, ~7x faster on CPU than lax.top_k over every key
  above_BxCxN = jnp.sum(p_dense_BxCxS[:, :, None, :] > p_sel[..., None], -1)
  hits = jnp.sum(valid_BxCxN & (above_BxCxN < N) & (p_sel > 0), -1)
  return {"recall": hits / jnp.maximum(jnp.sum(valid_BxCxN, -1), 1), "mass": jnp.sum(p_sel, -1)}


def kl_divergence(p_BxCxN: jax.Array, logits_BxCxN: jax.Array) -> jax.Array:
  """KL(p || softmax(logits)) per row, zero where p is zero (masked keys)."""
  logq = jax.nn.log_softmax(logits_BxCxN, -1)
  return jnp.sum(jnp.where(p_BxCxN > 0, p_BxCxN * (jnp.log(jnp.maximum(p_BxCxN, 1e-30)) - logq), 0.0), -1)


def random_scores(seed: int, t: jax.Array, s: jax.Array) -> jax.Array:
  """Uniform [0, 1) scores of key s for query t, a fixed hash of (layer seed, t, s) (broadcast shapes): the same
  pattern at any sequence length, so a decoding step picks what the full forward picked (murmur3's finaliser)."""
  h = (jnp.asarray(t, jnp.uint32) * jnp.uint32(0x9E3779B1)) ^ (jnp.asarray(s, jnp.uint32) * jnp.uint32(0x85EBCA77))
  h = h ^ jnp.uint32(seed & 0xFFFFFFFF)
  for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
    h = (h ^ (h >> shift)) * jnp.uint32(mult)
  h = h ^ (h >> 16)
  return (h >> 8).astype(jnp.float32) * 2.0**-24


def indexer_inputs(
  mod: nn.Module, x_BxTxD: jax.Array, cfg, o, positions=None, latent_BxTxQ: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """DSA's lightning-indexer inputs, parameters `idx_*` of `mod`: queries [B,T,J,I], one shared key [B,T,I] (both
  RoPE'd at `positions`, None: 0..T-1, over their first o.rope_dims() dims) and head weights [B,T,J] (times
  J^-1/2, and I^-1/2 with indexer_scale); `o` is SparseOptions (or sparse MLA's). The query reads `latent_BxTxQ`
  (sparse MLA's query latent, as V3.2's) when given, else x; the key is LayerNorm'd before RoPE with
  indexer_key_norm (DeepSeek-V3.2's `Indexer`, its FP8 and Hadamard rotation aside)."""
  D, J, I = cfg.d_model, o.indexer_heads, o.indexer_dim
  dt = layers.dtype(cfg.dtype)
  src = x_BxTxD if latent_BxTxQ is None else latent_BxTxQ
  x, src = ((jax.lax.stop_gradient(a) if o.detach_indexer_input else a).astype(dt) for a in (x_BxTxD, src))
  q_axis = "embed" if src is x_BxTxD else None
  wq_QxJxI = layers.param(mod, "idx_wq", (src.shape[-1], J, I), (q_axis, None, None), cfg.init_std, cfg.param_dtype)
  wk_DxI = layers.param(mod, "idx_wk", (D, I), ("embed", None), cfg.init_std, cfg.param_dtype)
  ww_DxJ = layers.param(mod, "idx_ww", (D, J), ("embed", None), cfg.init_std, cfg.param_dtype)
  pos_T = np.arange(x.shape[1]) if positions is None else positions
  R = o.rope_dims()
  k_BxTxI = jnp.einsum("BTD,DI->BTI", x, wk_DxI.astype(dt))
  if o.indexer_key_norm:  # V3.2's LayerNorm (eps 1e-6, in float32) with its own scale and bias
    scale_I = layers.param(mod, "idx_k_scale", (I,), ("norm",), None, cfg.param_dtype).astype(jnp.float32)
    bias_I = layers.param(mod, "idx_k_bias", (I,), ("norm",), 0, cfg.param_dtype).astype(jnp.float32)
    k = k_BxTxI.astype(jnp.float32)
    k = k - jnp.mean(k, -1, keepdims=True)
    k_BxTxI = (
      k * jax.lax.rsqrt(jnp.mean(k * k, -1, keepdims=True) + 1e-6) * scale_I[None, None] + bias_I[None, None]
    ).astype(dt)
  k_BxTxI = layers.rope(k_BxTxI[:, :, None], pos_T, cfg.rope_base, R)[:, :, 0]
  q_BxTxJxI, w_BxTxJ = indexer_queries(src, x, wq_QxJxI, ww_DxJ, pos_T, cfg, R, o.indexer_scale)
  return q_BxTxJxI, k_BxTxI, w_BxTxJ


def indexer_queries(
  src_BxTxQ: jax.Array,
  x_BxTxD: jax.Array,
  wq_QxJxI: jax.Array,
  ww_DxJ: jax.Array,
  positions,
  cfg,
  rope_dims: int,
  scale: bool,
) -> tuple[jax.Array, jax.Array]:
  """A lightning indexer's queries [B,T,J,I] from `src` (x, or a query latent), RoPE'd at `positions` over their
  first `rope_dims` dims, and its head weights [B,T,J] from x, times J^-1/2 (and I^-1/2 with `scale`: V3.2's score
  scale); in cfg.dtype. DSA's indexer (indexer_inputs) and CSA's (r1jax/mixers/compressed.py) share it."""
  dt = layers.dtype(cfg.dtype)
  J, I = wq_QxJxI.shape[1:]
  q_BxTxJxI = layers.rope(
    jnp.einsum("BTQ,QJI->BTJI", src_BxTxQ, wq_QxJxI.astype(dt)), positions, cfg.rope_base, rope_dims
  )
  w_BxTxJ = jnp.einsum("BTD,DJ->BTJ", x_BxTxD, ww_DxJ.astype(dt)) * (J**-0.5 * (I**-0.5 if scale else 1.0))
  return q_BxTxJxI, w_BxTxJ


def v32_indexer_params(w: dict, rope_dims: int) -> dict:
  """DeepSeek-V3.2's indexer weights (PyTorch layout [out, in]: wq_b [J * I, Q], wk [I, D], k_norm_weight,
  k_norm_bias [I], weights_proj [J, D]) as this module's `idx_*` parameters. V3.2 rotates interleaved pairs
  (2i, 2i+1) of the first `rope_dims` dims, layers.rope half-split pairs (i, i + R/2) at the same angles, so those
  dims are reordered (evens, then odds) in the query and key weights and the key norm: every dot product is kept."""
  J, I = w["weights_proj"].shape[0], w["wk"].shape[0]
  order = np.r_[np.arange(0, rope_dims, 2), np.arange(1, rope_dims, 2), np.arange(rope_dims, I)]
  wq = np.asarray(w["wq_b"]).reshape(J, I, -1)[:, order]
  return {
    "idx_wq": jnp.asarray(wq.transpose(2, 0, 1)),
    "idx_wk": jnp.asarray(np.asarray(w["wk"])[order].T),
    "idx_k_scale": jnp.asarray(np.asarray(w["k_norm_weight"])[order]),
    "idx_k_bias": jnp.asarray(np.asarray(w["k_norm_bias"])[order]),
    "idx_ww": jnp.asarray(np.asarray(w["weights_proj"]).T),
  }


def indexer_step_picks(
  mod: nn.Module, x_Bx1xD: jax.Array, cfg, o, decode: decoding.Decode, latent_Bx1xQ: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """A decoding step's indexer picks: the token's indexer key enters the cache `ik` of `mod`, every cached key is
  scored and the top k kept, as the forward picks at this position. Returns picks [B, 1, N], validity, and the gate
  bias (the picked keys' scores recomputed from their indexer keys, as in the forward; None unless
  indexer_grad=gate)."""
  S, pos_Bx1 = decode.slots, decode.token_positions(1)
  iq_Bx1xJxI, ik_Bx1xI, iw_Bx1xJ = indexer_inputs(mod, x_Bx1xD, cfg, o, pos_Bx1, latent_Bx1xQ)
  ik_BxSxI = decoding.cached(mod, "ik", ik_Bx1xI, decode, cfg.rope_base, o.rope_dims())
  pick_Bx1xS = indexer_scores(iq_Bx1xJxI, iw_Bx1xJ, ik_BxSxI, "BCJI,BSI->BCJS")
  causal_Bx1xS = decoding.causal_ok(decode, 1)
  top, idx_Bx1xN = decoding.top_k(jnp.where(causal_Bx1xS, pick_Bx1xS, -jnp.inf), min(o.top_k, S), decode)
  valid_Bx1xN = jnp.isfinite(top)
  if o.indexer_grad != "gate":
    return idx_Bx1xN, valid_Bx1xN, None
  ik_Bx1xNxI = jax.vmap(lambda a, i: a[i])(ik_BxSxI, idx_Bx1xN)
  scores = indexer_scores(iq_Bx1xJxI, iw_Bx1xJ, ik_Bx1xNxI, "BCJI,BCNI->BCJN")
  return idx_Bx1xN, valid_Bx1xN, jnp.where(valid_Bx1xN, scores, 0.0)


def map_query_chunks(fn, T: int, C: int, buckets: int = 1, min_keys: int = 0):
  """Runs fn(start, S) -> pytree of [B, C, ...] over query chunks (rematerialised), returns [B, T, ...] pieces.

  S (static) is how many keys the chunk's queries can reach: T with one bucket; with `buckets` > 1 the chunks are
  split into that many runs, each compiled with S = the end of its last chunk (at least min_keys), so a causal
  chunk skips the keys after it with static shapes (about half of the work, less 1 / (2 * buckets))."""
  n = -(-T // C)
  if n == 1:  # one chunk: no loop, no rematerialisation
    return jax.tree.map(lambda a: a[:, :T], fn(jnp.zeros((), jnp.int32), T))
  edges = sorted({round(n * i / buckets) for i in range(buckets + 1)})
  runs = [
    jax.lax.map(jax.checkpoint(functools.partial(fn, S=min(max(c1 * C, min_keys), T))), jnp.arange(c0, c1) * C)
    for c0, c1 in zip(edges[:-1], edges[1:])
  ]
  out = jax.tree.map(lambda *a: jnp.concatenate(a), *runs)
  return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1).reshape(a.shape[1], n * C, *a.shape[3:])[:, :T], out)


def topk_attention(
  q_BxTxHxK: jax.Array,
  k_BxTxGxK: jax.Array,
  v_BxTxGxK: jax.Array,
  o,
  index=None,
  seed: int = 0,
  noise_key: jax.Array | None = None,
  want_kl: bool = False,
  want_diag: bool = False,
) -> dict:
  """Causal attention of each query over the k keys its rule picks, in query chunks of C (see the module docstring).

  Args:
    o: the rule (select, top_k, query_chunk, sample_temperature, indexer_grad, indexer_loss): SparseOptions, or
      MLA's sparse options.
    index: the indexer's (queries [B,T,J,I], keys [B,T,I], head weights [B,T,J]) for select=indexer, else None.
    seed: the random rule's pattern; noise_key: Gumbel noise for sampled picks (training), or None.
    want_kl: the indexer loss per query ("kl"); want_diag: recall and mass against dense attention (a dense pass).
  Returns:
    {"out": [B,T,H,K_v], "idx", "valid": [B,T,N]} and "kl", "recall", "mass" [B,T] as asked.
  """
  B, T = q_BxTxHxK.shape[:2]
  N, C = min(o.top_k, T), min(o.query_chunk, T)
  pad = -T % C

  def padT(a, mode="constant"):  # queries padded to whole chunks
    return jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2), mode=mode)

  q_pad = padT(q_BxTxHxK)
  if index is not None:
    iq_BxTxJxI, ik_BxTxI, iw_BxTxJ = index
    iq_pad, iw_pad = padT(iq_BxTxJxI), padT(iw_BxTxJ)
    # the picks are not differentiable: pass 1 reads the indexer's inputs without their gradients
    siq_pad, sik_BxTxI, siw_pad = (jax.lax.stop_gradient(a) for a in (iq_pad, ik_BxTxI, iw_pad))

  def positions(start):  # padding rows repeat the last query (sliced off)
    return jnp.minimum(start + jnp.arange(C), T - 1)

  def all_scores(iq, iw, ik, S):  # the indexer's scores of the chunk's queries for the first S keys
    return indexer_scores(iq, iw, ik[:, :S], "BCJI,BSI->BCJS")

  def picks(start, S):  # pass 1, one chunk: its picks [B, C, N] and their validity
    pos_C = positions(start)
    if o.select == "window":
      idx_CxN = pos_C[:, None] - jnp.arange(N)[None, :]
      return jnp.broadcast_to(jnp.maximum(idx_CxN, 0), (B, C, N)), jnp.broadcast_to(idx_CxN >= 0, (B, C, N))
    if o.select == "random":  # one pattern for all rows ([1, C, T]): pick once, then broadcast
      pick_xCxS = random_scores(seed, pos_C[None, :, None], jnp.arange(S)[None, None, :])
    else:
      iq, iw = (jax.lax.dynamic_slice_in_dim(a, start, C, 1) for a in (siq_pad, siw_pad))
      pick_xCxS = all_scores(iq, iw, sik_BxTxI, S)
      if noise_key is not None:
        pick_xCxS = pick_xCxS / o.sample_temperature + jax.random.gumbel(
          jax.random.fold_in(noise_key, start), pick_xCxS.shape
        )
    causal_CxS = jnp.arange(S)[None, :] <= pos_C[:, None]
    top, idx_BxCxN = jax.lax.top_k(jnp.where(causal_CxS[None], pick_xCxS, -jnp.inf), N)
    return jnp.broadcast_to(idx_BxCxN, (B, C, N)), jnp.broadcast_to(jnp.isfinite(top), (B, C, N))

  # Pass 1 picks every query's keys, long sequences skipping the keys after each chunk (8 runs). Its chunks are not
  # rematerialised in the backward (nothing in it is differentiated): the O(T^2) scoring and top-k run once.
  idx_BxTxN, valid_BxTxN = map_query_chunks(picks, T, C, 8 if T >= FLASH_FROM else 1, min_keys=N)
  # padding rows repeat the last query's picks (no row without a valid pick: its softmax would be NaN)
  idx_pad, valid_pad = padT(idx_BxTxN, "edge"), padT(valid_BxTxN, "edge")

  def chunk(start, S):  # pass 2, one chunk: attention over its picks (S = T: the dense passes reach every key)
    pos_C = positions(start)
    q_BxCxHxK = jax.lax.dynamic_slice_in_dim(q_pad, start, C, 1)
    idx_BxCxN, valid_BxCxN = (jax.lax.dynamic_slice_in_dim(a, start, C, 1) for a in (idx_pad, valid_pad))
    scores = None
    if o.select == "indexer":
      # gradients reach the indexer through the picked keys' scores, recomputed from gathered indexer keys (the
      # transpose of gathering them from the chunk's [B, C, T] scores would be a slow scatter)
      iq, iw = (jax.lax.dynamic_slice_in_dim(a, start, C, 1) for a in (iq_pad, iw_pad))
      rows = (idx_BxCxN + T * jnp.arange(B)[:, None, None]).reshape(-1)
      ik_BxCxNxI = jnp.take(ik_BxTxI.reshape(B * T, -1), rows, axis=0).reshape(B, C, N, -1)
      scores = indexer_scores(iq, iw, ik_BxCxNxI, "BCJI,BCNI->BCJN")
    gate = o.select == "indexer" and o.indexer_grad == "gate"
    bias = jnp.where(valid_BxCxN, scores, 0.0) if gate else None
    out_BxCxHxK, probs = gathered_attention(q_BxCxHxK, k_BxTxGxK, v_BxTxGxK, idx_BxCxN, valid_BxCxN, bias)
    res = {"out": out_BxCxHxK}
    if want_kl or want_diag:
      p_dense_BxCxS = dense_probs(q_BxCxHxK, k_BxTxGxK, pos_C) if want_diag or o.indexer_loss == "kl_dense" else None
      if o.indexer_loss == "kl":  # DSA sparse stage: main attention (summed over heads) over the selected keys
        res["kl"] = kl_divergence(jax.lax.stop_gradient(probs.mean((2, 3))), jnp.where(valid_BxCxN, scores, -jnp.inf))
      elif o.indexer_loss == "kl_dense":  # DSA warm-up: dense attention over all earlier keys
        causal_CxS = jnp.arange(S)[None, :] <= pos_C[:, None]
        res["kl"] = kl_divergence(
          jax.lax.stop_gradient(p_dense_BxCxS), jnp.where(causal_CxS[None], all_scores(iq, iw, ik_BxTxI, S), -jnp.inf)
        )
      if want_diag:
        res.update(selection_diagnostics(p_dense_BxCxS, idx_BxCxN, valid_BxCxN))
    return res

  return {**map_query_chunks(chunk, T, C), "idx": idx_BxTxN, "valid": valid_BxTxN}


@register_mixer("sparse", SparseOptions)
class SparseAttention(nn.Module):
  """Causal attention over k selected keys per query; the selection rule is `select` (indexer/window/random)."""

  positional_cache = True  # its caches are indexed by position (r1jax/inference/decoding.py: rollback_free)

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: SparseOptions

  def seed(self) -> int:
    return zlib.crc32("/".join(self.scope.path).encode())  # a fixed random pattern per layer

  def _step(self, x_BxTxD: jax.Array, decode: decoding.Decode) -> tuple[jax.Array, dict]:
    """One decoding step: the rule scores every cached key (the indexer: its cached indexer keys), the top k are
    gathered from the KV cache and attended; the same picks as the full forward's at this position."""
    o = self.opts
    N, pos_Bx1 = min(o.top_k, decode.slots), decode.token_positions(1)
    q_Bx1xHxK, k_Bx1xGxK, v_Bx1xGxK = project_qkv(self, x_BxTxD, self.cfg, positions=pos_Bx1)
    k_BxSxGxK = decoding.cached(self, "k", k_Bx1xGxK, decode, self.cfg.rope_base)
    v_BxSxGxK = decoding.cached(self, "v", v_Bx1xGxK, decode)
    t_Bx1x1, s_Bx1xS = pos_Bx1[:, :, None], decoding.slot_positions(decode)[:, None, :]  # slots hold positions
    ok_Bx1xS = decoding.causal_ok(decode, 1)
    bias = None
    if o.select in ("window", "random"):  # the window: the newest visible keys; random: its fixed pattern
      by = s_Bx1xS if o.select == "window" else random_scores(self.seed(), t_Bx1x1, s_Bx1xS)
      top, idx_Bx1xN = decoding.top_k(jnp.where(ok_Bx1xS, by.astype(jnp.float32), -jnp.inf), N, decode)
      valid_Bx1xN = jnp.isfinite(top)
    else:
      idx_Bx1xN, valid_Bx1xN, bias = indexer_step_picks(self, x_BxTxD, self.cfg, o, decode)
    out_Bx1xHxK, _ = gathered_attention(q_Bx1xHxK, k_BxSxGxK, v_BxSxGxK, idx_Bx1xN, valid_Bx1xN, bias)
    return project_out(self, out_Bx1xHxK, self.cfg), {}

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, *, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
    if decoding.stepping(decode):
      return self._step(x_BxTxD, decode)
    o = self.opts
    q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = project_qkv(self, x_BxTxD, self.cfg)
    self.sow("intermediates", "qkv", (q_BxTxHxK, k_BxTxGxK, v_BxTxGxK))  # kept with mutable=["intermediates"]
    index = None
    if o.select == "indexer":
      index = indexer_inputs(self, x_BxTxD, self.cfg, o)
      self.sow("intermediates", "indexer", index)
    want_kl = o.select == "indexer" and o.indexer_loss != "none" and decode is None
    want_diag = o.diagnostics and wants_diagnostics(self)  # never in a timed or training pass
    # exploration in training: Gumbel-top-k over I / tau draws k keys without replacement from softmax(I / tau)
    noise_key = self.make_rng("dropout") if o.sample_temperature > 0 and not deterministic else None
    res = topk_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, o, index, self.seed(), noise_key, want_kl, want_diag)
    self.sow("intermediates", "selected", (res["idx"], res["valid"]))
    if decode is not None:  # prefill: cache the prompt's keys, values and indexer keys
      for name, a in (("k", k_BxTxGxK), ("v", v_BxTxGxK)) + ((("ik", index[1]),) if o.select == "indexer" else ()):
        decoding.cached(self, name, a, decode)
    aux = {}
    if want_kl:
      aux["indexer_kl"] = jnp.mean(res["kl"])
      aux["loss_indexer"] = o.indexer_loss_weight * aux["indexer_kl"]
    if want_diag:
      aux["recall"], aux["mass"] = jnp.mean(res["recall"]), jnp.mean(res["mass"])
    return project_out(self, res["out"], self.cfg), aux
