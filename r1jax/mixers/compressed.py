"""DeepSeek-V4's compressed attentions (DeepSeek-AI 2026, DeepSeek-V4 technical report, section 2.3; MaxText's
layers/attention_compressed.py was read, not copied): each query attends, in one softmax, to a sliding window of raw
tokens and to compressed entries, each a learned summary of a block of m tokens,

  c_i = RMSNorm( sum_j softmax_j(g_j + b_(j mod m)) * z_j )   per dimension, over the tokens j the entry pools,
  z_j = x_j W_z,  g_j = x_j W_g,  b: a learned bias per position in a block;  key_i = RoPE(c_i, i m),  value_i = c_i.

hca  heavily compressed attention: m = 128, blocks without overlap; every entry whose block has ended is attended.
csa  compressed sparse attention: m = 4 with overlap (entry i pools 2m tokens: block i - 1 through one half of the
     projections, block i through the other, V4's Ca / Cb), and a lightning indexer (DSA's, as in V3.2: relu scores
     weighted per head, over compressed indexer keys pooled the same way) picks the top-k entries per query
     (V4-Flash: 512, V4-Pro: 1024), trained as DSA's sparse stage (a detached input, KL to the main attention over
     the picked entries).
Both keep a window of the last w raw tokens (V4: 128) and a learned sink logit per head (V4's attention sink). An
entry is visible to query t once its block has ended ((i + 1) m - 1 <= t). Left out of this ablation: V4's single
shared key/value head (here the dense mixer's projections, with GQA), its query latent, RoPE'd values un-rotated at
the output, the grouped output projection and the compressed layers' RoPE base of 160,000. V4's stated cost at 1M
tokens against V3.2: 27% of the per-token FLOPs and 10% of the KV cache (V4-Pro), 10% and 7% (V4-Flash).

Training and prefill attend CSA's picks as a mask over every entry where there are few entries (MASK_ENTRIES),
else gather them per query (one softmax either way; the same output and gradients, tests/test_compressed.py).

Decoding keeps a ring of the window's w tokens, a ring of the last m (2m with overlap) tokens' projections and gates
(the block being compressed), and every compressed entry (and, for csa, indexer key): `cache_per_token` numbers per
token on top of the window's constant share.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import layers
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.mixers.dense import project_out, project_qkv
from r1jax.mixers.sparse import indexer_queries, indexer_scores, kl_divergence, map_query_chunks
from r1jax.registry import register_mixer

INDEXER_LOSSES = ("kl", "none")
INDEXER_GRADS = ("none", "gate")
# CSA's training and prefill attend their picks as a mask over all M entries where M <= MASK_ENTRIES * top_k, and
# gather them per query above: the train step of the sparse driver's MQAR (T=256, M = 64, top 16; one core of an
# AMD EPYC) took 108 ms masked against 123 ms gathered (XLA's CPU gather is slow next to its small matmuls).
MASK_ENTRIES = 8


@dataclasses.dataclass(frozen=True)
class HCAOptions:
  rate: int = 128  # m: tokens per compressed entry (V4's HCA: 128; its CSA: 4)
  overlap: bool = False  # True: entry i pools blocks i - 1 and i (2m tokens, V4's CSA) | False: block i (V4's HCA)
  window: int = 128  # w: raw tokens in the sliding window beside the entries (V4: 128)
  sink: bool = True  # a learned logit per head in the softmax (V4's attention sink) | False: none
  query_chunk: int = 256  # queries per chunk C: memory O(C (w + T / m)) for the scores

  def __post_init__(self):
    self._positive("rate", "window", "query_chunk")

  def _positive(self, *fields: str) -> None:
    for field in fields:
      if getattr(self, field) < 1:
        raise ConfigError(f"{field}={getattr(self, field)} is invalid. Fix: use a positive number.")

  def cache_per_token(self, cfg) -> float:
    """Numbers a decoding cache holds per token and layer beyond its constant part (the window's ring of 2 w G K and
    the block being compressed): one compressed entry of G K per m tokens (keys and values are the entry)."""
    return (cfg.num_kv_heads or cfg.num_heads) * (cfg.d_model // cfg.num_heads) / self.rate


@dataclasses.dataclass(frozen=True)
class CSAOptions(HCAOptions):
  rate: int = 4  # m (V4's CSA: 4)
  overlap: bool = True  # V4's CSA pools overlapping windows of 2m tokens
  top_k: int = 512  # compressed entries each query attends (V4-Flash: 512, V4-Pro: 1024)
  indexer_heads: int = 4  # indexer heads J (V4: 64; few and narrow keep its O(T^2 / m) scoring cheap)
  indexer_dim: int = 16  # indexer head dim I (V4: 128), even: RoPE on its first half
  indexer_loss: str = "kl"  # kl: KL(main attention over the picked entries || softmax(index scores)), DSA's sparse
  #                           stage | none
  indexer_grad: str = "none"  # none: only indexer_loss trains the indexer (V3.2 / V4) | gate: its scores are added
  #                             to the picked entries' logits, so the task loss trains it too
  indexer_loss_weight: float = 1.0  # weight of the indexer loss in the objective
  sample_temperature: float = 0.0  # > 0: training picks are a Gumbel-top-k sample of softmax(scores / tau), as the
  #                                  sparse mixer's (exploration from scratch; eval and decoding greedy) | 0: greedy

  def __post_init__(self):
    super().__post_init__()
    self._positive("top_k", "indexer_heads")
    if self.sample_temperature < 0:
      raise ConfigError(f"sample_temperature={self.sample_temperature} is invalid. Fix: use 0 (greedy) or > 0.")
    if self.indexer_dim < 4 or self.indexer_dim % 4:
      raise ConfigError(f"indexer_dim={self.indexer_dim} is invalid. Fix: use a multiple of 4 (RoPE on half of it).")
    for field, allowed in (("indexer_loss", INDEXER_LOSSES), ("indexer_grad", INDEXER_GRADS)):
      if getattr(self, field) not in allowed:
        raise ConfigError(f"{field}={getattr(self, field)!r} is invalid. Fix: use one of {allowed}.")

  def cache_per_token(self, cfg) -> float:
    """As HCA's, plus one indexer key of I numbers per m tokens."""
    return super().cache_per_token(cfg) + self.indexer_dim / self.rate


def arrange(z_BxTxGxF: jax.Array, g_BxTxGxF: jax.Array, m: int, overlap: bool) -> tuple[jax.Array, jax.Array]:
  """The tokens each complete block's entry pools: [B, M, L, G, F'] for M = T // m entries, L = m (2m with overlap:
  block i - 1 through the first half of the features, block i through the second; F' = F / 2). Gates of tokens
  before position 0 are -inf."""
  B, T, G, F = z_BxTxGxF.shape
  M = T // m
  z, g = (a[:, : M * m].reshape(B, M, m, G, F) for a in (z_BxTxGxF, g_BxTxGxF))
  if not overlap:
    return z, g
  h = F // 2
  prev = lambda a, fill: jnp.pad(a[..., :h], [(0, 0), (1, 0)] + [(0, 0)] * 3, constant_values=fill)[:, :M]  # noqa: E731
  return jnp.concatenate([prev(z, 0.0), z[..., h:]], 2), jnp.concatenate([prev(g, -jnp.inf), g[..., h:]], 2)


def pool(z_BxMxLxGxF: jax.Array, g_BxMxLxGxF: jax.Array) -> jax.Array:
  """Softmax-gated sums over each entry's tokens (axis 2), per feature, in float32: [B, M, G, F]."""
  w = jax.nn.softmax(g_BxMxLxGxF.astype(jnp.float32), axis=2)
  return jnp.sum(w * z_BxMxLxGxF.astype(jnp.float32), axis=2)


def visible(t: jax.Array, M: int, m: int) -> jax.Array:
  """[..., M]: entry i has ended by position t ((i + 1) m - 1 <= t); t [...] broadcasts."""
  ends_M = (jnp.arange(M) + 1) * m - 1
  return ends_M.reshape((1,) * jnp.ndim(t) + (M,)) <= t[..., None]


def attend(
  q_BxCxHxK: jax.Array,
  k_win_BxnxSxGxK: jax.Array,
  v_win_BxnxSxGxK: jax.Array,
  ok_win_BxCxS: jax.Array,
  entries: jax.Array,
  entry_keys: jax.Array,
  ok_ent_BxCxN: jax.Array,
  sink_H: jax.Array | None,
  bias_BxCxN: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """One softmax (float32) over the window's keys, the entries' keys and the sink logit: output [B, C, H, K] and the
  probabilities on the entries [B, C, G, H/G, N]. The queries come in n blocks of C / n, block i reading window keys
  [B, i, S, G, K] (masked per query by `ok_win`); the entries (values) and their keys are shared by the queries
  ([B, N, G, K]: HCA) or per query ([B, C, G, N, K]: CSA's picks); `bias` is added to the entries' logits."""
  B, C, H, K = q_BxCxHxK.shape
  n, S, G = k_win_BxnxSxGxK.shape[1:4]
  q = q_BxCxHxK.reshape(B, n, C // n, G, H // G, K)
  e = "BNGK" if entries.ndim == 4 else "BCGNK"
  lw = jnp.einsum("BnqGRK,BnSGK->BnqGRS", q, k_win_BxnxSxGxK, preferred_element_type=jnp.float32)
  lw = lw.reshape(B, C, G, H // G, S) * K**-0.5
  q = q.reshape(B, C, G, H // G, K)
  le = jnp.einsum(f"BCGRK,{e}->BCGRN", q, entry_keys.astype(q.dtype), preferred_element_type=jnp.float32) * K**-0.5
  if bias_BxCxN is not None:
    le = le + bias_BxCxN[:, :, None, None]
  logits = [
    jnp.where(ok_win_BxCxS[:, :, None, None], lw, -jnp.inf),
    jnp.where(ok_ent_BxCxN[:, :, None, None], le, -jnp.inf),
  ]
  if sink_H is not None:  # a logit with no value: attention mass that goes nowhere
    logits.append(jnp.broadcast_to(sink_H.reshape(1, 1, G, H // G, 1), (B, C, G, H // G, 1)))
  N, dt = le.shape[-1], v_win_BxnxSxGxK.dtype
  p = jax.nn.softmax(jnp.concatenate(logits, -1), -1)
  p_win = p[..., :S].astype(dt).reshape(B, n, C // n, G, H // G, S)
  out = jnp.einsum("BnqGRS,BnSGK->BnqGRK", p_win, v_win_BxnxSxGxK).reshape(B, C, G, H // G, K)
  out = out + jnp.einsum(f"BCGRN,{e}->BCGRK", p[..., S : S + N].astype(dt), entries.astype(dt))
  return out.reshape(B, C, H, K), p[..., S : S + N]


def gather(a_BxMxGxK: jax.Array, idx_BxCxN: jax.Array) -> jax.Array:
  """Each query's picked entries, per group: [B, M, G, K] -> [B, C, G, N, K], one row gather from the group-major
  [B * G * M, K] table, so that the attention's einsums have their batch dims leading and the contraction minor (as
  r1jax.mixers.sparse.gathered_attention: gathering [B, C, N, G, K] cost a transpose of each gather, 4 of the 10
  largest ops of CSA's train step at T=256)."""
  B, M, G, K = a_BxMxGxK.shape
  C, N = idx_BxCxN.shape[1:]
  offset_Bx1xGx1 = (M * (G * jnp.arange(B)[:, None] + jnp.arange(G)[None, :]))[:, None, :, None]
  rows = (idx_BxCxN[:, :, None, :] + offset_Bx1xGx1).reshape(-1)
  table = a_BxMxGxK.transpose(0, 2, 1, 3).reshape(B * G * M, K)
  return table.at[rows].get(mode="promise_in_bounds").reshape(B, C, G, N, K)  # M may be 0 (then N is 0)


class CompressedAttention(nn.Module):
  """The window, the compressor, CSA's indexer and the one softmax (see the module docstring); registered as `hca`
  (HCAOptions) and `csa` (CSAOptions). Sows `qkv`, `entries` (normed, not RoPE'd: [B, M, G, K]) and, for csa,
  `indexer` (queries, head weights, RoPE'd entry keys [B, M, I]) and `selected` (picks [B, T, N], validity)."""

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: HCAOptions

  @staticmethod
  def decode_window(opts: HCAOptions) -> str:
    return f"keeps every compressed entry (its window: a ring of the last {opts.window} tokens): no window over it"

  @property
  def sparse(self) -> bool:
    return isinstance(self.opts, CSAOptions)

  def _projections(self, x_BxTxD: jax.Array, name: str, G: int, F: int, positions) -> tuple[jax.Array, jax.Array]:
    """The compressor `name`'s z [B, T, G, F'] and float32 gates + b_(position mod m) (F' = 2F with overlap)."""
    cfg, o = self.cfg, self.opts
    Fp, dt = F * (2 if o.overlap else 1), layers.dtype(cfg.dtype)
    w_z, w_g = (
      layers.param(self, f"{name}_w{n}", (cfg.d_model, G, Fp), ("embed", None, None), cfg.init_std, cfg.param_dtype)
      for n in "zg"
    )
    b_mxGxF = layers.param(self, f"{name}_bias", (o.rate, G, Fp), (None, None, None), 0.0, "float32")
    x = x_BxTxD.astype(dt)
    z_BxTxGxF = jnp.einsum("BTD,DGF->BTGF", x, w_z.astype(dt))
    g_BxTxGxF = jnp.einsum("BTD,DGF->BTGF", x, w_g.astype(dt), preferred_element_type=jnp.float32)
    b = b_mxGxF[jnp.asarray(positions) % o.rate]
    return z_BxTxGxF, g_BxTxGxF + (b[None] if b.ndim == 3 else b)

  def _norm(self, name: str, pooled: jax.Array) -> jax.Array:
    cfg = self.cfg
    return layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=f"{name}_norm")(pooled)

  def _entry_cache(self, name: str, entries_BxMxGxF: jax.Array, decode: decoding.Decode):
    """The cache variable of compressor `name`'s entries: [B, max_len // m (at least 1), G, F]."""
    B, _, G, F = entries_BxMxGxF.shape
    shape = (B, max(decode.max_len // self.opts.rate, 1), G, F)
    return self.variable(decoding.CACHE, f"{name}_entries", jnp.zeros, shape, entries_BxMxGxF.dtype)

  def _entries(self, x_BxTxD: jax.Array, name: str, G: int, F: int, decode) -> jax.Array:
    """The compressor `name`'s normed entries [B, M, G, F]: of every complete block (training, prefill; a prefill
    caches them and the last tokens' projections), or, in a step, the cached ones with the entry of a block that
    ends at this token written (rows that commit)."""
    o = self.opts
    m, L = o.rate, o.rate * (2 if o.overlap else 1)
    z, g = self._projections(x_BxTxD, name, G, F, decoding.positions_of(decode, x_BxTxD.shape[1]))
    if decode is None or decode.mode == "prefill":
      self.sow("intermediates", f"{name}_zg", (z, g))
      entries = self._norm(name, pool(*arrange(z, g, m, o.overlap)))
      if decode is not None:
        decoding.ring(self, f"{name}_z", z, decode, L)
        decoding.ring(self, f"{name}_g", g, decode, L)
        cache = self._entry_cache(name, entries, decode)
        if entries.shape[1]:
          cache.value = jax.lax.dynamic_update_slice_in_dim(cache.value, entries, 0, 1)
      return entries
    t_B = decode.positions
    z_ring, pos_BxL = decoding.ring(self, f"{name}_z", z, decode, L)
    g_ring, _ = decoding.ring(self, f"{name}_g", g, decode, L)
    want_BxL = t_B[:, None] - L + 1 + jnp.arange(L)[None]  # the positions the entry ending here pools, in order
    slot_BxL = jnp.mod(want_BxL, z_ring.shape[1])
    z_BxLxGxF = jnp.take_along_axis(z_ring, slot_BxL[:, :, None, None], 1)
    held_BxL = (jnp.take_along_axis(pos_BxL, slot_BxL, 1) == want_BxL) & (want_BxL >= 0)  # empty slots hold -1
    g_BxLxGxF = jnp.where(
      held_BxL[:, :, None, None], jnp.take_along_axis(g_ring, slot_BxL[:, :, None, None], 1), -jnp.inf
    )
    if o.overlap:  # block i - 1 through the first half of the features, block i through the second
      z_BxLxGxF, g_BxLxGxF = (jnp.concatenate([a[:, :m, :, :F], a[:, m:, :, F:]], 1) for a in (z_BxLxGxF, g_BxLxGxF))
    new_Bx1xGxF = self._norm(name, pool(z_BxLxGxF[:, None], g_BxLxGxF[:, None]))
    cache = self._entry_cache(name, new_Bx1xGxF, decode)
    ends_B = ((t_B + 1) % m == 0) & decoding.commits(decode)
    written = jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice_in_dim(c, n, i, 0))(
      cache.value, new_Bx1xGxF.astype(cache.value.dtype), t_B // m
    )
    cache.value = jnp.where(ends_B[:, None, None, None], written, cache.value)
    return cache.value

  def _indexer(self, x_BxTxD: jax.Array, decode) -> tuple[jax.Array, jax.Array, jax.Array]:
    """CSA's lightning indexer on a detached input: queries [B, T, J, I] and head weights [B, T, J] (J^-1/2 I^-1/2)
    at the tokens' positions, and the RoPE'd compressed indexer keys [B, M, I]; RoPE on the first half of I."""
    cfg, o = self.cfg, self.opts
    J, I = o.indexer_heads, o.indexer_dim
    x = jax.lax.stop_gradient(x_BxTxD).astype(layers.dtype(cfg.dtype))
    wq = layers.param(self, "idx_wq", (cfg.d_model, J, I), ("embed", None, None), cfg.init_std, cfg.param_dtype)
    ww = layers.param(self, "idx_ww", (cfg.d_model, J), ("embed", None), cfg.init_std, cfg.param_dtype)
    pos = decoding.positions_of(decode, x.shape[1])
    q_BxTxJxI, w_BxTxJ = indexer_queries(x, x, wq, ww, pos, cfg, I // 2, scale=True)
    e = self._entries(x, "idx", 1, I, decode)
    k_BxMxI = layers.rope(e, np.arange(e.shape[1]) * o.rate, cfg.rope_base, I // 2)[:, :, 0]
    return q_BxTxJxI, w_BxTxJ, k_BxMxI

  def _picks(self, index, start, C: int, ok_xCxM: jax.Array, noise_key: jax.Array | None = None):
    """CSA's picks for C queries from `start`: entry ids [B, C, N], validity, and their index scores; with a
    `noise_key`, a Gumbel-top-k sample of softmax(scores / sample_temperature) (training)."""
    q, w, k_BxMxI = index
    q_C, w_C = (jax.lax.dynamic_slice_in_dim(a, start, C, 1) for a in (q, w))
    scores_BxCxM = indexer_scores(q_C, w_C, k_BxMxI, "BCJI,BSI->BCJS")
    N = min(self.opts.top_k, k_BxMxI.shape[1])
    # the pick is not differentiable; the indexer learns through the picked entries' scores (its KL, or the gate)
    pick = jax.lax.stop_gradient(scores_BxCxM)
    if noise_key is not None:
      noise = jax.random.gumbel(jax.random.fold_in(noise_key, start), pick.shape)
      pick = pick / self.opts.sample_temperature + noise
    top, idx_BxCxN = jax.lax.top_k(jnp.where(ok_xCxM, pick, -jnp.inf), N)
    return idx_BxCxN, jnp.isfinite(top), jnp.take_along_axis(scores_BxCxM, idx_BxCxN, -1)

  def _sink(self) -> jax.Array | None:
    return layers.param(self, "sink", (self.cfg.num_heads,), ("heads",), 0.0, "float32") if self.opts.sink else None

  def _step(self, x_BxTxD: jax.Array, decode: decoding.Decode) -> tuple[jax.Array, dict]:
    """One decoding step: the window's ring and the compressors take the token (an entry whose block ends here is
    written), then the query attends to the window, the visible entries (csa: its picks) and the sink."""
    cfg, o = self.cfg, self.opts
    pos_Bx1 = decode.token_positions(1)
    q_Bx1xHxK, k, v = project_qkv(self, x_BxTxD, cfg, positions=pos_Bx1)
    G, K = k.shape[2:]
    k_ring, kpos_BxW = decoding.ring(self, "k_win", k, decode, o.window)
    v_ring, _ = decoding.ring(self, "v_win", v, decode, o.window)
    ok_win = decoding.in_window(kpos_BxW, decode, o.window)
    entries_BxMxGxK = self._entries(x_BxTxD, "cmp", G, K, decode)
    M = entries_BxMxGxK.shape[1]
    keys_BxMxGxK = layers.rope(entries_BxMxGxK, np.arange(M) * o.rate, cfg.rope_base)
    ok_Bx1xM = visible(pos_Bx1, M, o.rate)
    bias = None
    if self.sparse:
      idx, ok_Bx1xM, scores = self._picks(self._indexer(x_BxTxD, decode), 0, 1, ok_Bx1xM)
      entries_BxMxGxK, keys_BxMxGxK = gather(entries_BxMxGxK, idx), gather(keys_BxMxGxK, idx)
      bias = jnp.where(ok_Bx1xM, scores, 0.0) if o.indexer_grad == "gate" else None
    k_ring, v_ring = k_ring[:, None], v_ring[:, None]  # one block of one query
    out, _ = attend(q_Bx1xHxK, k_ring, v_ring, ok_win, entries_BxMxGxK, keys_BxMxGxK, ok_Bx1xM, self._sink(), bias)
    return project_out(self, out, cfg), {}

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, *, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
    decode = decode.whole() if decode is not None else None  # see decode_window
    if decoding.stepping(decode):
      return self._step(x_BxTxD, decode)
    cfg, o = self.cfg, self.opts
    B, T, _ = x_BxTxD.shape
    m, W, C = o.rate, o.window, min(o.query_chunk, T)
    q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = project_qkv(self, x_BxTxD, cfg)
    self.sow("intermediates", "qkv", (q_BxTxHxK, k_BxTxGxK, v_BxTxGxK))
    G, K = k_BxTxGxK.shape[2:]
    entries_BxMxGxK = self._entries(x_BxTxD, "cmp", G, K, decode)
    self.sow("intermediates", "entries", entries_BxMxGxK)
    M = entries_BxMxGxK.shape[1]
    keys_BxMxGxK = layers.rope(entries_BxMxGxK, np.arange(M) * m, cfg.rope_base)
    index = self._indexer(x_BxTxD, decode) if self.sparse else None
    if index is not None:
      self.sow("intermediates", "indexer", index)
    want_kl = self.sparse and o.indexer_loss == "kl" and decode is None
    sampled = self.sparse and o.sample_temperature > 0 and not deterministic
    noise_key = self.make_rng("dropout") if sampled else None
    sink = self._sink()
    n = -(-T // C)
    Q = W if C % W == 0 else C  # queries per window block
    # queries padded to whole chunks; keys padded by W - 1 in front, so a chunk's window is one contiguous slice
    q_pad = jnp.pad(q_BxTxHxK, [(0, 0), (0, n * C - T), (0, 0), (0, 0)])
    kv_pad = [jnp.pad(a, [(0, 0), (W - 1, n * C - T), (0, 0), (0, 0)]) for a in (k_BxTxGxK, v_BxTxGxK)]
    if index is not None:
      index = tuple(jnp.pad(a, [(0, 0), (0, n * C - T)] + [(0, 0)] * (a.ndim - 2)) for a in index[:2]) + index[2:]

    def chunk(start, S):
      del S  # every chunk reads its window slice and all entries
      pos_C = jnp.minimum(start + jnp.arange(C), T - 1)  # padding rows repeat the last query (sliced off)
      q_C = jax.lax.dynamic_slice_in_dim(q_pad, start, C, 1)
      # queries in blocks of Q, each reading the Q + W - 1 keys its window spans (not the chunk's C + W - 1)
      at_nxS = Q * np.arange(C // Q)[:, None] + np.arange(Q + W - 1)[None]
      k_win, v_win = (jax.lax.dynamic_slice_in_dim(a, start, C + W - 1, 1)[:, at_nxS] for a in kv_pad)
      s_CxS = start - (W - 1) + np.repeat(at_nxS, Q, 0)  # each query's window keys' positions
      ok_win_CxS = (s_CxS >= 0) & (s_CxS <= pos_C[:, None]) & (pos_C[:, None] - s_CxS < W)
      ok_CxM = visible(pos_C, M, m)
      res, bias = {}, None
      if self.sparse:
        idx, ok, scores = self._picks(index, start, C, ok_CxM[None], noise_key)
        bias = jnp.where(ok, scores, 0.0) if o.indexer_grad == "gate" else None
        res.update(idx=idx, valid=ok)
        masked = M <= MASK_ENTRIES * idx.shape[-1]
        if masked:  # the picks as a mask over all M entries (their logits, scores as the bias, probabilities)
          hit_BxCxNxM = (idx[..., None] == jnp.arange(M)[None, None, None]) & ok[..., None]
          ent, keys, ok_e = entries_BxMxGxK, keys_BxMxGxK, hit_BxCxNxM.any(2)
          bias_e = None if bias is None else jnp.sum(jnp.where(hit_BxCxNxM, bias[..., None], 0.0), 2)
        else:
          ent, keys, ok_e, bias_e = gather(entries_BxMxGxK, idx), gather(keys_BxMxGxK, idx), ok, bias
      else:
        masked, bias_e = False, None
        ent, keys, ok_e = entries_BxMxGxK, keys_BxMxGxK, jnp.broadcast_to(ok_CxM[None], (B, C, M))
      out, p_ent = attend(
        q_C, k_win, v_win, jnp.broadcast_to(ok_win_CxS[None], (B,) + ok_win_CxS.shape), ent, keys, ok_e, sink, bias_e
      )
      if masked:  # back to the picks' order
        p_ent = jnp.take_along_axis(
          p_ent, jnp.broadcast_to(idx[:, :, None, None], p_ent.shape[:-1] + idx.shape[-1:]), -1
        )
      res["out"] = out
      if want_kl:  # DSA's sparse stage on the picked entries: the main attention's share of them, renormalised
        p = jax.lax.stop_gradient(p_ent.mean((2, 3)))
        p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30)
        res["kl"] = kl_divergence(p, jnp.where(ok, scores, -1e30))  # finite: a query may see no entry yet
      return res

    res = map_query_chunks(chunk, T, C)
    aux = {}
    if self.sparse:
      self.sow("intermediates", "selected", (res["idx"], res["valid"]))
    if want_kl:
      aux["indexer_kl"] = jnp.mean(res["kl"])
      aux["loss_indexer"] = o.indexer_loss_weight * aux["indexer_kl"]
    if decode is not None:  # prefill: the window's rings (the compressors cached theirs in _entries)
      decoding.ring(self, "k_win", k_BxTxGxK, decode, W)
      decoding.ring(self, "v_win", v_BxTxGxK, decode, W)
    return project_out(self, res["out"], cfg), aux


@register_mixer("hca", HCAOptions)
class HeavilyCompressedAttention(CompressedAttention):
  """DeepSeek-V4's HCA: a window and every compressed entry (m = 128 in V4), dense (see the module docstring)."""


@register_mixer("csa", CSAOptions)
class CompressedSparseAttention(CompressedAttention):
  """DeepSeek-V4's CSA: a window and the indexer's top-k overlapping compressed entries (see the module docstring)."""
