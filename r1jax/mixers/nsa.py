"""Native Sparse Attention (Yuan et al. 2025, "Native Sparse Attention: Hardware-Aligned and Natively Trainable
Sparse Attention", DeepSeek): three attention branches on shared queries, mixed by per-head sigmoid gates computed
from the input,

  o_t = g_cmp(x_t) * Attn(q_t, compressed blocks) + g_slc(x_t) * Attn(q_t, selected blocks)
        + g_win(x_t) * Attn(q_t, sliding window),

each branch with its own keys and values (the paper's guard against shortcut learning between branches):

(a) compressed: the keys (values) of each block of l tokens, blocks every d tokens, summarised into one key (value)
    by mean pooling or by the paper's learned MLP over the block's keys plus an intra-block position embedding; a
    query reads the blocks that have ended by its position. O(T * T/d).
(b) selected: selection blocks of l' tokens scored by the compressed branch's attention probabilities, each
    compressed block's probability going to every selection block it overlaps (with l = l' = d, the identity; the
    paper's Eq. 9 sums the compressed scores spanning a selection block), summed over the query heads of a key/value
    group so that a group reads one block set (the paper's GQA sharing); the top n blocks per query and group,
    the first block and the two local blocks (the query's own and the previous one) always among them; attention
    over their n*l' tokens (causal inside the own block). O(T * n * l').
(c) sliding window: the last w tokens (r1jax.mixers.local). O(T * w).

No T x T matrix is formed. Gates start near the sliding window (weights 0, biases -2, -2, +2: sigmoid 0.12, 0.12,
0.88; gate_init=window), as lucidrains/native-sparse-attention-pytorch initialises them: local patterns are learned
first (fla-org/native-sparse-attention's layer has no gate bias: its gate projection is a bias-free linear map, so
every gate starts near sigmoid(0) = 0.5, our gate_init=equal). Differences from the paper: the selection gradient
is the paper's (none through the top-n choice; the compressed branch learns the scores through its own attention
output).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import layers
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.mixers import selected_kernel
from r1jax.mixers.dense import FLASH_FROM, project_kv, project_out, project_qkv
from r1jax.mixers.flash import flash_attention
from r1jax.mixers.local import local_attention
from r1jax.mixers.selected import block_tokens, gathered_block_attention
from r1jax.mixers.sparse import dense_probs, map_query_chunks
from r1jax.registry import register_mixer, wants_diagnostics

COMPRESS = ("mlp", "mean")
FORCED = 3  # blocks always selected: the first one and the two local ones
# gate logit offsets (cmp, slc, win) per gate_init: near the window (lucidrains) or all three at 0.5 (fla: no bias)
GATE_INIT = {"window": np.array([-2.0, -2.0, 2.0], np.float32), "equal": np.zeros(3, np.float32)}


@dataclasses.dataclass(frozen=True)
class NSAOptions:
  cmp_block: int = 16  # l: tokens per compressed block (paper: 32)
  cmp_stride: int = 8  # d: tokens between compressed blocks (paper: 16); divides l and l'
  compress: str = "mlp"  # mlp (the paper's: MLP over the block's keys + intra-block positions) | mean (pooling)
  slc_block: int = 16  # l': tokens per selection block (paper: 64)
  top_blocks: int = 4  # n: selection blocks per query and group, the first and the 2 local ones included (paper: 16)
  window: int = 32  # w: sliding-window tokens (paper: 512)
  gate_init: str = "window"  # window: gates start at (0.12, 0.12, 0.88), local patterns first | equal: all at 0.5
  query_chunk: int = 256  # queries per chunk of the selection branch (bounds its gathered keys to C * n * l')
  implementation: str = "auto"  # the selected branch: xla (r1jax/mixers/selected.py) | pallas (the block-sparse
  #                               kernels, r1jax/mixers/selected_kernel.py; interpreted off a GPU) | auto (pallas on a
  #                               GPU where its sizes tile, else xla)
  diagnostics: bool = True  # in a diagnostics pass (registry.DIAGNOSTICS): dense attention mass in the selection

  def __post_init__(self):
    checks = (
      (
        self.cmp_stride >= 1 and self.cmp_block >= self.cmp_stride and self.cmp_block % self.cmp_stride == 0,
        "cmp_block/cmp_stride",
        "use a stride d >= 1 that divides the block length l (e.g. l=16, d=8)",
      ),
      (
        self.slc_block >= 1 and self.slc_block % self.cmp_stride == 0,
        "slc_block",
        "use a selection block l' that is a multiple of cmp_stride",
      ),
      (self.top_blocks >= FORCED, "top_blocks", f"use n >= {FORCED} (the first and the 2 local blocks)"),
      (self.compress in COMPRESS, "compress", f"use one of {COMPRESS}"),
      (self.gate_init in GATE_INIT, "gate_init", f"use one of {tuple(GATE_INIT)}"),
      (self.window >= 1 and self.query_chunk >= 1, "window/query_chunk", "use positive sizes"),
    )
    for ok, field, fix in checks:
      if not ok:
        raise ConfigError(f"nsa.{field.split('/')[0]}={getattr(self, field.split('/')[0])!r} is invalid. Fix: {fix}")
    selected_kernel.check_implementation(self.implementation, "nsa.implementation")


def num_compressed(T: int, l: int, d: int) -> int:
  """Compressed blocks in T tokens: block i covers [i*d, i*d + l)."""
  return (T - l) // d + 1 if T >= l else 0


def compress_blocks(k_BxTxGxK: jax.Array, l: int, d: int, mode: str, mlp: tuple | None) -> jax.Array:
  """[B, M, G, K] block summaries: mean pooling, or MLP(flatten(block + intra-block positions)).

  Block i is the chunks i..i+b-1 of d tokens (b = l/d): chunk means averaged, or the MLP's first layer split into b
  slices of rows, each applied to every chunk once and the results of a block's chunks summed (the positions'
  share, flatten(pos) @ W1, added once); contiguous slices only, no gather, stack or scatter in either pass."""
  B, T, G, K = k_BxTxGxK.shape
  M, b = num_compressed(T, l, d), l // d
  if M == 0:
    return jnp.zeros((B, 0, G, K), k_BxTxGxK.dtype)
  chunks_BxNxdxGxK = k_BxTxGxK[:, : (M + b - 1) * d].reshape(B, M + b - 1, d, G, K)
  if mode == "mean":
    means_BxNxGxK = chunks_BxNxdxGxK.mean(2)
    return sum(means_BxNxGxK[:, r : r + M] for r in range(b)) / b
  pos_LxK, w1_LKxF, w2_FxK = mlp
  flat_BxNxGxE = chunks_BxNxdxGxK.transpose(0, 1, 3, 2, 4).reshape(B, M + b - 1, G, d * K)  # token-major, as W1's rows
  y_rxBxNxGxF = jnp.einsum("BNGE,rEF->rBNGF", flat_BxNxGxE, w1_LKxF.reshape(b, d * K, -1))
  h_BxMxGxF = sum(y_rxBxNxGxF[r, :, r : r + M] for r in range(b)) + (pos_LxK.reshape(1, -1) @ w1_LKxF)[None, None]
  return jnp.einsum("BMGF,FK->BMGK", nn.silu(h_BxMxGxF), w2_FxK)


def compressed_attention(
  q_BxTxHxK: jax.Array, kc_BxMxGxK: jax.Array, vc_BxMxGxK: jax.Array, l: int, d: int, pos: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Attention over the compressed blocks that have ended by each query (none: zero output, zero probabilities);
  query positions `pos` [T], or [B, T] per row (a decoding step), default 0..T-1.

  Returns output [B, T, H, K] and float32 probabilities [B, T, H, M]."""
  B, T, H, K = q_BxTxHxK.shape
  M, G = kc_BxMxGxK.shape[1:3]
  R = H // G
  pos_xT = (jnp.arange(T) if pos is None else pos).reshape(-1, T)  # [1, T] or [B, T]
  q_BxTxGxRxK = q_BxTxHxK.reshape(B, T, G, R, K)
  logits = jnp.einsum("BTGRK,BMGK->BTGRM", q_BxTxGxRxK, kc_BxMxGxK, preferred_element_type=jnp.float32) * K**-0.5
  ended_xTxM = (jnp.arange(M)[None, None, :] * d + l - 1) <= pos_xT[..., None]  # on device: no T x M constant
  any_xTx1x1x1 = ended_xTxM.any(-1)[..., None, None, None]
  logits = jnp.where(ended_xTxM[:, :, None, None], logits, -jnp.inf)
  logits = jnp.where(any_xTx1x1x1, logits, 0.0)  # rows with no block: defined, then zeroed
  probs = jax.nn.softmax(logits, -1) * any_xTx1x1x1
  o = jnp.einsum("BTGRM,BMGK->BTGRK", probs.astype(vc_BxMxGxK.dtype), vc_BxMxGxK)
  return o.reshape(B, T, H, K), probs.reshape(B, T, H, M)


def overlap_scores(p_xM: jax.Array, T: int, l: int, d: int, ls: int) -> jax.Array:
  """[..., NB] selection-block scores from compressed-block scores [..., M]: block j sums the compressed blocks that
  overlap its tokens [j*l', (j+1)*l') (the paper's Eq. 9). With d dividing l and l', those are the a + b - 1
  compressed blocks j*a - b + 1 + r (a = l'/d, b = l/d, r = 0..a+b-2): as many strided slices, no cumsum or gather
  (missing blocks count 0)."""
  M, NB, a, b = p_xM.shape[-1], -(-T // ls), ls // d, l // d
  padded = jnp.pad(p_xM, [(0, 0)] * (p_xM.ndim - 1) + [(b - 1, max(NB * a - M, 0) + a)])
  return sum(jax.lax.slice_in_dim(padded, r, r + (NB - 1) * a + 1, a, -1) for r in range(a + b - 1))


def select_blocks(p_BxCxGxM: jax.Array, pos_C: jax.Array, T: int, o: NSAOptions) -> tuple[jax.Array, jax.Array]:
  """Top-n selection blocks per query and group from the group's compressed probabilities; the first block and the
  two local ones forced. Returns block ids [B, C, G, n'] (n' = min(n, number of blocks): the forced blocks (the
  first, the previous, the own one; a repeat is invalid), then the top n' - 3 of the others) and their validity."""
  NB = -(-T // o.slc_block)
  score = overlap_scores(p_BxCxGxM, T, o.cmp_block, o.cmp_stride, o.slc_block)  # [B, C, G, NB]
  own_xCx1 = (pos_C[None] if pos_C.ndim == 1 else pos_C)[:, :, None] // o.slc_block  # positions [C] or [B, C]
  forced_xCx3 = jnp.concatenate([jnp.zeros_like(own_xCx1), own_xCx1 - 1, own_xCx1], -1)
  ok_xCx3 = jnp.concatenate([jnp.ones_like(own_xCx1, bool), own_xCx1 >= 2, own_xCx1 >= 1], -1)
  shape = score.shape[:3] + (FORCED,)
  ids = jnp.broadcast_to(jnp.maximum(forced_xCx3, 0)[:, :, None], shape)
  valid = jnp.broadcast_to(ok_xCx3[:, :, None], shape)
  n = min(o.top_blocks, NB) - FORCED
  if n > 0:  # the others: earlier than the previous block (only they can be neither forced nor in the future)
    j_1x1xNB = jnp.arange(NB)[None, None, :]
    others_xCxNB = (j_1x1xNB >= 1) & (j_1x1xNB < own_xCx1 - 1)
    top, chosen = jax.lax.top_k(jnp.where(others_xCxNB[:, :, None], score, -jnp.inf), n)
    ids, valid = jnp.concatenate([ids, chosen], -1), jnp.concatenate([valid, top > -jnp.inf], -1)
  elif n < 0:  # fewer blocks than the forced ones: all of them, those begun by the query valid
    ids = jnp.broadcast_to(jnp.arange(NB), score.shape)
    valid = jnp.broadcast_to((jnp.arange(NB)[None, None, :] <= own_xCx1)[:, :, None], score.shape)
  return ids, valid


def gated_sum(g_BxTxHxC: jax.Array, branches: tuple) -> jax.Array:
  """sum_c g[..., c] * branch_c ([B, T, H, K] each; NSA's Eq. 5), in the branches' dtype. Each product is an einsum:
  its gradient for the gate is then a contraction over K, where XLA's CPU code compiled the broadcast product's
  reduction into a fusion ~7x slower (T=64k, H=2, K=64, fwd+bwd of the sum: 553 -> 76 ms)."""
  dt = branches[-1].dtype
  return sum(jnp.einsum("BTH,BTHK->BTHK", g_BxTxHxC[..., c].astype(dt), b.astype(dt)) for c, b in enumerate(branches))


@register_mixer("nsa", NSAOptions)
class NativeSparseAttention(nn.Module):
  """NSA's three gated branches (see the module docstring). Sows `qkv` (shared q and each branch's k, v),
  `branches` (o_cmp, o_slc, o_win) and `selected` (block ids [B, T, G, n'], validity); aux: mean gate per branch,
  and in a diagnostics pass `mass`, the share of dense attention (selection keys, averaged over heads) inside
  a group's selected tokens, averaged over groups."""

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: NSAOptions

  @staticmethod
  def decode_window(opts: NSAOptions) -> str:
    return (
      f"keeps every compressed and selectable block (its window branch: the last {opts.window} tokens): "
      "no window over its cache"
    )

  def _mlp(self, name: str, K: int) -> tuple | None:
    o, cfg = self.opts, self.cfg
    if o.compress == "mean":
      return None
    l = o.cmp_block
    pos = layers.param(self, f"{name}_pos", (l, K), (None, "kv"), cfg.init_std, cfg.param_dtype)
    w1 = layers.param(self, f"{name}_w1", (l * K, K), (None, "kv"), (l * K) ** -0.5, cfg.param_dtype)
    w2 = layers.param(self, f"{name}_w2", (K, K), ("kv", None), K**-0.5, cfg.param_dtype)
    dt = layers.dtype(cfg.dtype)
    return pos.astype(dt), w1.astype(dt), w2.astype(dt)

  def _gates(self, x_BxTxD: jax.Array) -> jax.Array:
    """sigmoid(x W + b) per head and branch [B, T, H, 3], initialised as gate_init says."""
    cfg, H = self.cfg, self.cfg.num_heads
    wg = layers.param(self, "gate_w", (cfg.d_model, H, 3), ("embed", "heads", None), 0.0, cfg.param_dtype)
    bg = layers.param(self, "gate_b", (H, 3), ("heads", None), 0.0, "float32") + GATE_INIT[self.opts.gate_init][None]
    return jax.nn.sigmoid(
      jnp.einsum("BTD,DHC->BTHC", x_BxTxD.astype(jnp.float32), wg.astype(jnp.float32)) + bg[None, None]
    )

  def _step(self, x_BxTxD: jax.Array, decode: decoding.Decode) -> tuple[jax.Array, dict]:
    """One decoding step: the token's keys enter the selection cache, the window's and the compressor's ring
    buffers; a compressed block that ends here is summarised into the compressed cache; then the three branches
    read (T - l) / d + 1 summaries, n * l' selected tokens and w window tokens."""
    o, cfg = self.opts, self.cfg
    B, S, l, d = x_BxTxD.shape[0], decode.max_len, o.cmp_block, o.cmp_stride
    H, t_B = cfg.num_heads, decode.positions
    pos_Bx1 = decode.token_positions(1)
    q_Bx1xHxK, k_slc, v_slc = project_qkv(self, x_BxTxD, cfg, positions=pos_Bx1)
    K = q_Bx1xHxK.shape[-1]
    (k_cmp, v_cmp), (k_win, v_win) = (
      project_kv(self, x_BxTxD, cfg, suffix, positions=pos_Bx1) for suffix in ("_cmp", "_win")
    )
    k_slc, v_slc = (decoding.cached(self, n, a, decode) for n, a in (("k_slc", k_slc), ("v_slc", v_slc)))
    G = k_slc.shape[2]

    # (a) the compressed cache: block i = (t + 1 - l) / d ends at this token when that is a whole number >= 0
    M = max(num_compressed(S, l, d), 1)
    i_B = (t_B + 1 - l) // d
    ends_B = (t_B + 1 >= l) & ((t_B + 1 - l) % d == 0)
    written_B = ends_B & decoding.commits(decode)
    order_Bxl = jnp.mod(t_B[:, None] - l + 1 + jnp.arange(l)[None, :], l)  # ring slots of the block, in order
    summaries = []
    for name, a, mlp in (("k_cmp", k_cmp, "cmp_k"), ("v_cmp", v_cmp, "cmp_v")):
      ring_BxlxGxK, _ = decoding.ring(self, name, a, decode, l)
      block_BxlxGxK = jnp.take_along_axis(ring_BxlxGxK, order_Bxl[:, :, None, None], 1)
      new_Bx1xGxK = compress_blocks(block_BxlxGxK, l, d, o.compress, self._mlp(mlp, K))
      cache = self.variable(decoding.CACHE, f"{name}_blocks", jnp.zeros, (B, M, G, K), new_Bx1xGxK.dtype)
      written = jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice_in_dim(c, n, i, 0))(
        cache.value, new_Bx1xGxK.astype(cache.value.dtype), jnp.maximum(i_B, 0)
      )
      cache.value = jnp.where(written_B[:, None, None, None], written, cache.value)
      summaries.append(cache.value)
    kc_BxMxGxK, vc_BxMxGxK = summaries
    o_cmp, p_Bx1xHxM = compressed_attention(q_Bx1xHxK, kc_BxMxGxK, vc_BxMxGxK, l, d, pos_Bx1)

    # (b) selection from the group's compressed probabilities, as the forward's select_blocks at this position
    p_Bx1xGxM = p_Bx1xHxM.reshape(B, 1, G, H // G, M).sum(3)
    if num_compressed(S, l, d) == 0:
      p_Bx1xGxM = p_Bx1xGxM[..., :0]
    ids, valid = select_blocks(p_Bx1xGxM, pos_Bx1, S, o)
    o_slc = gathered_block_attention(q_Bx1xHxK, k_slc, v_slc, ids, valid, o.slc_block, pos_Bx1)

    # (c) the window, from its ring buffers
    k_ring, kpos_BxW = decoding.ring(self, "k_win", k_win, decode, o.window)
    v_ring, _ = decoding.ring(self, "v_win", v_win, decode, o.window)
    ok_Bx1xW = decoding.in_window(kpos_BxW, decode, o.window)
    o_win = decoding.attend(q_Bx1xHxK, k_ring, v_ring, ok_Bx1xW)

    g_Bx1xHx3 = self._gates(x_BxTxD)
    return project_out(self, gated_sum(g_Bx1xHx3, (o_cmp, o_slc, o_win)), cfg), {}

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, *, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
    decode = decode.whole() if decode is not None else None  # see decode_window
    if decoding.stepping(decode):
      return self._step(x_BxTxD, decode)
    o, cfg = self.opts, self.cfg
    B, T, _ = x_BxTxD.shape
    H = cfg.num_heads
    q_BxTxHxK, k_slc, v_slc = project_qkv(self, x_BxTxD, cfg)  # wq, wk, wv: the selection branch's keys/values
    K = q_BxTxHxK.shape[-1]
    (k_cmp, v_cmp), (k_win, v_win) = (project_kv(self, x_BxTxD, cfg, suffix) for suffix in ("_cmp", "_win"))
    self.sow("intermediates", "qkv", (q_BxTxHxK, (k_cmp, v_cmp), (k_slc, v_slc), (k_win, v_win)))

    # (a) compressed blocks; from T >= dense.FLASH_FROM through the blocked path, which skips the blocks that have not
    # ended (half of them) and never holds [T, M]: the selection's probabilities are recomputed per query chunk
    kc = compress_blocks(k_cmp, o.cmp_block, o.cmp_stride, o.compress, self._mlp("cmp_k", K))
    vc = compress_blocks(v_cmp, o.cmp_block, o.cmp_stride, o.compress, self._mlp("cmp_v", K))
    G, M = k_slc.shape[2], kc.shape[1]
    C = min(o.query_chunk, T)
    padT = lambda a: jnp.pad(a, [(0, 0), (0, -T % C)] + [(0, 0)] * (a.ndim - 2))  # noqa: E731 whole chunks
    blocked = T >= FLASH_FROM and M > 0
    if blocked:
      o_cmp, lse_BxTxH = flash_attention(q_BxTxHxK, kc, vc, stride=o.cmp_stride, offset=o.cmp_block - 1, with_lse=True)
      q_pad, lse_pad = padT(jax.lax.stop_gradient(q_BxTxHxK)), padT(lse_BxTxH)
      kc_sg = jax.lax.stop_gradient(kc)
    else:
      o_cmp, p_cmp_BxTxHxM = compressed_attention(q_BxTxHxK, kc, vc, o.cmp_block, o.cmp_stride)
      p_pad = padT(jax.lax.stop_gradient(p_cmp_BxTxHxM.reshape(B, T, G, H // G, -1).sum(3)))  # scores, not trained

    def group_probs(start, pos_C, S):
      """[B, C, G, M] (blocked: [B, C, G, Ms], the blocks ended within the chunk's S tokens; the rest count as zero):
      the chunk's compressed-attention probabilities, summed over each group's heads."""
      if not blocked:
        return jax.lax.dynamic_slice_in_dim(p_pad, start, C, 1)
      Ms = max(num_compressed(S, o.cmp_block, o.cmp_stride), 1)
      q_C = jax.lax.dynamic_slice_in_dim(q_pad, start, C, 1).reshape(B, C, G, H // G, K)
      lse_C = jax.lax.dynamic_slice_in_dim(lse_pad, start, C, 1).reshape(B, C, G, H // G)
      logits = jnp.einsum("BCGRK,BMGK->BCGRM", q_C, kc_sg[:, :Ms], preferred_element_type=jnp.float32) * K**-0.5
      ended_CxM = (jnp.arange(Ms)[None, :] * o.cmp_stride + o.cmp_block - 1) <= pos_C[:, None]
      p = jnp.where(ended_CxM[None, :, None, None], jnp.exp(logits - lse_C[..., None]), 0.0).sum(3)
      return p  # [B, C, G, Ms]: overlap_scores pads the blocks not yet ended with zeros itself

    # (b) selected blocks: picked in query chunks, attended as selected_kernel.attend chooses
    want_diag = o.diagnostics and wants_diagnostics(self)  # a dense pass: never in a timed or training pass

    def chunk(start, S):  # S: the tokens this chunk's queries can reach (see map_query_chunks)
      pos_C = jnp.minimum(start + jnp.arange(C), T - 1)  # padding rows repeat the last query (sliced off)
      ids, valid = select_blocks(group_probs(start, pos_C, S), pos_C, T, o)
      tok_ok = dict(zip(("tok", "ok"), block_tokens(ids, valid, pos_C, o.slc_block, T))) if want_diag else {}
      return {"ids": ids, "valid": valid, **tok_ok}

    res = map_query_chunks(chunk, T, C, 8 if blocked and not want_diag else 1)
    o_slc = selected_kernel.attend(
      q_BxTxHxK, k_slc, v_slc, res["ids"], res["valid"], o.slc_block, o.implementation, "nsa.implementation"
    )
    self.sow("intermediates", "selected", (res["ids"], res["valid"]))

    # (c) sliding window
    o_win = local_attention(q_BxTxHxK, k_win, v_win, o.window)
    self.sow("intermediates", "branches", (o_cmp, o_slc, o_win))

    g_BxTxHx3 = self._gates(x_BxTxD)
    if decode is not None:  # prefill: the caches a step reads (blocks past a prompt are rewritten before they are read)
      for name, a in (("k_slc", k_slc), ("v_slc", v_slc)):
        decoding.cached(self, name, a, decode)
      for name, a, size in (
        ("k_cmp", k_cmp, o.cmp_block),
        ("v_cmp", v_cmp, o.cmp_block),
        ("k_win", k_win, o.window),
        ("v_win", v_win, o.window),
      ):
        decoding.ring(self, name, a, decode, size)
      M = max(num_compressed(decode.max_len, o.cmp_block, o.cmp_stride), 1)
      for name, a in (("k_cmp_blocks", kc), ("v_cmp_blocks", vc)):
        cache = self.variable(decoding.CACHE, name, jnp.zeros, (B, M, *a.shape[2:]), a.dtype)
        cache.value = jax.lax.dynamic_update_slice_in_dim(cache.value, a, 0, 1)
    out = gated_sum(g_BxTxHx3, (o_cmp, o_slc, o_win))
    aux = {f"gate_{n}": jnp.mean(g_BxTxHx3[..., i]) for i, n in enumerate(("cmp", "slc", "win"))}
    if want_diag:  # the dense attention mass on each group's selected tokens (positions from the selected branch)
      p_dense_BxTxS = dense_probs(q_BxTxHxK, k_slc, jnp.arange(T))  # averaged over all heads
      tok = res["tok"]
      p_BxTxGxN = jnp.take_along_axis(p_dense_BxTxS, tok.reshape(B, T, -1), -1).reshape(tok.shape)
      aux["mass"] = jnp.mean(jnp.sum(jnp.where(res["ok"], p_BxTxGxN, 0.0), -1))  # per group's selection, averaged
    return project_out(self, out, cfg), aux
