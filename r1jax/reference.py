"""Naive references in plain jnp (float32 or float64): obviously correct, slow, used only to check fast paths."""

import jax.numpy as jnp
import numpy as np


def causal_mask(T: int, S: int | None = None) -> np.ndarray:
  """[T, S] boolean mask, True where query t may attend key s (s <= t, keys right-aligned when S > T)."""
  S = T if S is None else S
  return np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)


def window_mask(T: int, window: int) -> np.ndarray:
  """[T, T] sliding-window mask: True where query t may attend key s, t - window < s <= t."""
  return np.array([[t - window < s <= t for s in range(T)] for t in range(T)])


def attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask_TxS=None, scale=None, bias_BxTxS=None):
  """Softmax attention, one head at a time from the definition; G key/value heads shared by H/G query heads.

  Args:
    q_BxTxHxK, k_BxSxGxK, v_BxSxGxK: queries, keys, values.
    mask_TxS: boolean mask (True = attend), broadcastable to [B, H, T, S]; None = causal.
    bias_BxTxS: added to every head's logits (e.g. a sparse-attention gate), or None.
  Returns:
    [B, T, H, K] in the inputs' precision promoted to at least float32.
  """
  dt = jnp.promote_types(q_BxTxHxK.dtype, jnp.float32)
  q, k, v = (jnp.asarray(a, dt) for a in (q_BxTxHxK, k_BxSxGxK, v_BxSxGxK))
  B, T, H, K = q.shape
  S, G = k.shape[1], k.shape[2]
  mask = causal_mask(T, S) if mask_TxS is None else mask_TxS
  scale = 1.0 / np.sqrt(K) if scale is None else scale
  outs = []
  for h in range(H):
    g = h // (H // G)  # query head h reads key/value head g
    logits_BxTxS = jnp.einsum("btk,bsk->bts", q[:, :, h], k[:, :, g]) * scale
    if bias_BxTxS is not None:
      logits_BxTxS = logits_BxTxS + jnp.asarray(bias_BxTxS, dt)
    m = jnp.broadcast_to(mask, (B, H, T, S))[:, h] if np.ndim(mask) == 4 else jnp.broadcast_to(mask, (B, T, S))
    logits_BxTxS = jnp.where(m, logits_BxTxS, -jnp.inf)
    w = jnp.exp(logits_BxTxS - jnp.max(logits_BxTxS, axis=-1, keepdims=True))
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    outs.append(jnp.einsum("bts,bsk->btk", w, v[:, :, g]))
  return jnp.stack(outs, axis=2)


def spacetime_mask(T: int, S: int, axis: str) -> np.ndarray:
  """[T*S, T*S] mask over video tokens flattened frame by frame: which token (t, s) attends to which (t', s').
  joint: all; space: the same frame (t == t'); time: the same patch position (s == s')."""
  t, s = np.repeat(np.arange(T), S), np.tile(np.arange(S), T)
  if axis == "joint":
    return np.ones((T * S, T * S), bool)
  return t[:, None] == t[None, :] if axis == "space" else s[:, None] == s[None, :]


def spacetime_branch(x_BxTxSxD, wq_DxHxK, wk_DxHxK, wv_DxHxK, wo_HxKxD, axis):
  """One space-time attention branch on flattened tokens with `spacetime_mask` (dot_product: the first half of the
  heads under the space mask, the second half under the time mask), from the definition in float32."""
  x = jnp.asarray(x_BxTxSxD, jnp.float32)
  B, T, S, D = x.shape
  q, k, v = (
    jnp.einsum("bnd,dhk->bnhk", x.reshape(B, T * S, D), jnp.asarray(w, jnp.float32))
    for w in (wq_DxHxK, wk_DxHxK, wv_DxHxK)
  )
  H = q.shape[2]
  if axis == "dot_product":
    mask = np.concatenate(
      [
        np.broadcast_to(spacetime_mask(T, S, "space"), (B, H // 2, T * S, T * S)),
        np.broadcast_to(spacetime_mask(T, S, "time"), (B, H - H // 2, T * S, T * S)),
      ],
      axis=1,
    )
  else:
    mask = spacetime_mask(T, S, axis)
  o = attention(q, k, v, mask)
  return jnp.einsum("bnhk,hkd->bnd", o, jnp.asarray(wo_HxKxD, jnp.float32)).reshape(B, T, S, D)


def channel_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
  """Causal channel-axis attention from the definition, one step and head at a time in float64: at step t the K
  channels attend to each other with similarities q[:t+1]ᵀ k[:t+1] / sqrt(t+1), mixing the channels of v[t]."""
  q, k, v = (np.asarray(a, np.float64) for a in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK))
  B, T, H, K = q.shape
  out = np.zeros((B, T, H, K))
  for b in range(B):
    for t in range(T):
      for h in range(H):
        logits_KxK = q[b, : t + 1, h].T @ k[b, : t + 1, h] / np.sqrt(t + 1)
        w = np.exp(logits_KxK - logits_KxK.max(-1, keepdims=True))
        out[b, t, h] = (w / w.sum(-1, keepdims=True)) @ v[b, t, h]
  return out


def rope(x_BxTxHxK, base, positions_T=None):
  """RoPE from its definition: rotate each (i, i + K/2) pair of row t at its position p (positions_T[t]; None: t) by
  p * base^(-2i/K), in float64."""
  x = np.asarray(x_BxTxHxK, np.float64)
  K = x.shape[-1]
  out = np.empty_like(x)
  for t in range(x.shape[1]):
    for i in range(K // 2):
      a = (t if positions_T is None else positions_T[t]) * base ** (-2 * i / K)
      x1, x2 = x[:, t, :, i], x[:, t, :, i + K // 2]
      out[:, t, :, i], out[:, t, :, i + K // 2] = x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)
  return out


def cross_entropy(logits_NxV, targets_N):
  """Mean negative log-likelihood from the softmax definition."""
  logits = jnp.asarray(logits_NxV, jnp.float32)
  logz = jnp.log(jnp.sum(jnp.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  return jnp.mean(logz - jnp.take_along_axis(logits, targets_N[:, None], -1)[:, 0])


def topk_mask(scores_BxTxS, k):
  """[B, T, T] mask of each query's k highest-scoring earlier keys (all earlier keys when fewer), by sorting."""
  scores = np.asarray(scores_BxTxS, np.float64)
  B, T, _ = scores.shape
  mask = np.zeros((B, T, T), bool)
  for b in range(B):
    for t in range(T):
      order = np.argsort(-scores[b, t, : t + 1], kind="stable")
      mask[b, t, order[:k]] = True
  return mask


def indexer_scores(q_BxTxJxI, k_BxSxI, w_BxTxJ):
  """DSA lightning-indexer scores I[t, s] = sum_j w[t, j] relu(q[t, j] . k[s]), one head at a time."""
  q, k, w = (np.asarray(a, np.float64) for a in (q_BxTxJxI, k_BxSxI, w_BxTxJ))
  out = 0.0
  for j in range(q.shape[2]):
    out = out + w[:, :, j, None] * np.maximum(np.einsum("bti,bsi->bts", q[:, :, j], k), 0.0)
  return out


def block_select_mask(q_BxTxHxK, k_BxTxGxK, block, n, per_token=True):
  """[B, G, T, T] mask of MoBA/NSA block selection by loops: query t attends to its own block (causally) and to the
  n earlier blocks j with the largest mean(q_t over the heads of g) . mean(k in block j); if not `per_token`, every
  query of block i uses mean(q over block i and the heads of g) instead."""
  q, k = np.asarray(q_BxTxHxK, np.float64), np.asarray(k_BxTxGxK, np.float64)
  B, T, H, _ = q.shape
  G = k.shape[2]
  nb = -(-T // block)
  mask = np.zeros((B, G, T, T), bool)
  for b in range(B):
    for g in range(G):
      heads = slice(g * (H // G), (g + 1) * (H // G))
      kmean = [k[b, j * block : (j + 1) * block, g].sum(0) / block for j in range(nb)]
      for t in range(T):
        i = t // block
        rows = [t] if per_token else range(i * block, (i + 1) * block)
        qmean = sum(q[b, r, heads].sum(0) for r in rows if r < T) / (len(rows) * (H // G))
        scores = [qmean @ kmean[j] for j in range(i)]
        chosen = list(np.argsort(-np.asarray(scores), kind="stable")[:n]) + [i]
        for j in chosen:
          mask[b, g, t, j * block : min((j + 1) * block, T)] = True
  return mask & causal_mask(T)[None, None]


def fast_weight_recurrence(q_BxTxHxK, k_BxTxHxK, v_BxTxHxP, a_BxTxHxA, b_BxTxH=None, state_BxHxKxP=None):
  """The fast-weight recurrence one step at a time in float64, for each batch row and head:
  S_t = diag(a_t) S_{t-1} + k_t v_t^T, or with the delta rule (b given, one a per head)
  S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T; the output is o_t = S_t^T q_t.
  Returns (o [B, T, H, P], final state [B, H, K, P]) as float64 numpy arrays."""
  q, k, v, a = (np.asarray(x, np.float64) for x in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxP, a_BxTxHxA))
  B, T, H, K = q.shape
  P = v.shape[-1]
  S = np.zeros((B, H, K, P)) if state_BxHxKxP is None else np.array(state_BxHxKxP, np.float64)
  o = np.zeros((B, T, H, P))
  for bi in range(B):
    for h in range(H):
      for t in range(T):
        kt, vt, decay = k[bi, t, h], v[bi, t, h], np.broadcast_to(a[bi, t, h], (K,))
        if b_BxTxH is None:
          S[bi, h] = decay[:, None] * S[bi, h] + np.outer(kt, vt)
        else:
          bt = float(np.asarray(b_BxTxH)[bi, t, h])
          S[bi, h] = decay[0] * (np.eye(K) - bt * np.outer(kt, kt)) @ S[bi, h] + bt * np.outer(kt, vt)
        o[bi, t, h] = S[bi, h].T @ q[bi, t, h]
  return o, S


def moe_ffn(x_BxTxD, router_DxE, w1_ExDxF, w3_ExDxF, w2_ExFxD, opts, bias_E=None, capacity=None):
  """A top-k mixture of SwiGLU experts token by token in float64: scores, optional group limit and bias, then
  y = sum_k g_k E_k(x) over the chosen experts (no shared experts). Groups as DeepSeek-V3's `Gate`: with a bias
  (balance=aux_free) a group scores the sum of its two best biased scores, without one its best score; gates are
  scaled by route_scale. With `capacity` C, each sequence's copies claim their expert's C slots in token order and
  later copies are dropped. Returns (y [B, T, D], ids [B, T, k], kept [B, T, k])."""
  x, wr, w1, w3, w2 = (np.asarray(a, np.float64) for a in (x_BxTxD, router_DxE, w1_ExDxF, w3_ExDxF, w2_ExFxD))
  B, T, _ = x.shape
  E = wr.shape[1]
  bias = np.zeros(E) if bias_E is None else np.asarray(bias_E, np.float64)
  silu = lambda z: z / (1.0 + np.exp(-z))
  y, ids, kept = np.zeros_like(x), np.zeros((B, T, opts.top_k), int), np.zeros((B, T, opts.top_k), bool)
  for b in range(B):
    used = [0] * E
    for t in range(T):
      logits = x[b, t] @ wr
      if opts.score == "softmax":
        scores = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
      else:
        scores = 1.0 / (1.0 + np.exp(-logits))
      select = scores + bias
      size = E // opts.num_groups
      best = min(2, size) if opts.balance == "aux_free" else 1
      group_score = [np.sort(select[g * size : (g + 1) * size])[::-1][:best].sum() for g in range(opts.num_groups)]
      groups = np.argsort(-np.asarray(group_score), kind="stable")[: opts.topk_groups]
      chosen = sorted((e for e in range(E) if e // size in groups), key=lambda e: -select[e])[: opts.top_k]
      gates = scores[chosen] / (scores[chosen].sum() if opts.norm_topk else 1.0) * opts.route_scale
      for j, (e, g) in enumerate(zip(chosen, gates)):
        ids[b, t, j] = e
        kept[b, t, j] = capacity is None or used[e] < capacity
        used[e] += 1
        if kept[b, t, j]:
          y[b, t] += g * (silu(x[b, t] @ w1[e]) * (x[b, t] @ w3[e])) @ w2[e]
  return y, ids, kept


def nsa_branches(q_BxTxHxK, kv_cmp, kv_slc, kv_win, opts, mlp_k=None, mlp_v=None):
  """NSA's three branch outputs (Yuan et al. 2025) from masks over all T x T pairs, one query at a time, float64.

  Args:
    q_BxTxHxK: shared queries; kv_cmp, kv_slc, kv_win: each branch's (keys, values) [B, T, G, K].
    opts: r1jax.mixers.nsa.NSAOptions. mlp_k, mlp_v: (pos [l, K], w1 [l*K, F], w2 [F, K]) for compress="mlp".
  Returns:
    (o_cmp, o_slc, o_win) [B, T, H, K], and the selected-token mask [B, G, T, T].
  """
  q = np.asarray(q_BxTxHxK, np.float64)
  B, T, H, K = q.shape
  G = np.shape(kv_cmp[0])[2]
  l, d, ls, n = opts.cmp_block, opts.cmp_stride, opts.slc_block, opts.top_blocks
  M = (T - l) // d + 1 if T >= l else 0

  def compress(a_BxTxGxK, mlp):
    a = np.asarray(a_BxTxGxK, np.float64)
    out = np.zeros((B, M, G, K))
    for i in range(M):
      block_BxLxGxK = a[:, i * d : i * d + l]
      if opts.compress == "mean":
        out[:, i] = block_BxLxGxK.mean(1)
      else:
        pos, w1, w2 = (np.asarray(w, np.float64) for w in mlp)
        flat_BxGxLK = (block_BxLxGxK + pos[None, :, None]).transpose(0, 2, 1, 3).reshape(B, G, l * K)
        h = flat_BxGxLK @ w1
        out[:, i] = (h / (1 + np.exp(-h))) @ w2
    return out

  kc, vc = compress(kv_cmp[0], mlp_k), compress(kv_cmp[1], mlp_v)
  o_cmp, p_cmp = np.zeros((B, T, H, K)), np.zeros((B, T, H, M))
  for t in range(T):
    ended = [i for i in range(M) if i * d + l - 1 <= t]
    for h in range(H):
      g = h // (H // G)
      if ended:
        logits = np.einsum("bk,bik->bi", q[:, t, h], kc[:, ended, g]) / np.sqrt(K)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        p_cmp[:, t, h, ended] = w
        o_cmp[:, t, h] = np.einsum("bi,bik->bk", w, vc[:, ended, g])

  NB = -(-T // ls)
  chosen = np.zeros((B, G, T, T), bool)
  for b in range(B):
    for g in range(G):
      for t in range(T):
        p_i = p_cmp[b, t, g * (H // G) : (g + 1) * (H // G)].sum(0)  # summed over the group's query heads
        score = np.full(NB, -np.inf)
        for j in range(NB):
          if j * ls <= t:  # the block has started by t
            score[j] = sum(p_i[i] for i in range(M) if i * d < (j + 1) * ls and i * d + l > j * ls)
        own = t // ls
        for j in (0, own, own - 1):
          if j >= 0:
            score[j] = np.inf
        picked = np.argsort(-score, kind="stable")[: min(n, NB)]
        for j in picked:
          if score[j] > -np.inf:
            chosen[b, g, t, j * ls : min((j + 1) * ls, t + 1)] = True
  mask_BxHxTxT = np.repeat(chosen, H // G, axis=1)
  o_slc = np.asarray(attention(q_BxTxHxK, kv_slc[0], kv_slc[1], mask_BxHxTxT))
  o_win = np.asarray(attention(q_BxTxHxK, kv_win[0], kv_win[1], window_mask(T, opts.window)))
  return o_cmp, o_slc, o_win, chosen


def mla(x_BxTxD, params, dims, eps, base, mask_BxTxS=None):
  """Multi-head latent attention (DeepSeek-V2 section 2.1) token by token from its equations in float64: the
  latent c = RMSNorm(x W_DKV), per-head keys [c W_UK,h ; RoPE(x W_KR)] and values c W_UV,h, queries
  [q_C,h ; RoPE(q_R,h)] (from RMSNorm(x W_DQ) when the model has a query latent), scale 1/sqrt(d_h + d_r), then the
  output projection. `params` is the mla mixer's parameter dict; mask (True = attend) defaults to causal."""
  x = np.asarray(x_BxTxD, np.float64)
  p = {k: (np.asarray(v["scale"] if isinstance(v, dict) else v, np.float64)) for k, v in params.items()}
  d_c, d_r, d_h = dims["d_c"], dims["d_r"], dims["d_h"]

  def rmsnorm(a, scale):
    return a / np.sqrt(np.mean(a * a, -1, keepdims=True) + eps) * scale

  latent = x @ p["wkv_a"]
  c = rmsnorm(latent[..., :d_c], p["kv_norm"])
  k_rope = rope(latent[..., d_c:][:, :, None], base)  # [B, T, 1, d_r], shared by every head
  xq = rmsnorm(x @ p["wq_a"], p["q_norm"]) if dims["d_cq"] else x
  q = np.einsum("btd,dhe->bthe", xq, p["wq"])
  q = np.concatenate([q[..., :d_h], rope(q[..., d_h:], base)], -1)
  H = q.shape[2]
  k = np.concatenate([np.einsum("btc,chn->bthn", c, p["wk_b"]), np.repeat(k_rope, H, 2)], -1)
  v = np.einsum("btc,chv->bthv", c, p["wv_b"])
  T = x.shape[1]
  mask_BxTxS = np.broadcast_to(causal_mask(T) if mask_BxTxS is None else mask_BxTxS, (x.shape[0], T, T))
  o = np.zeros(v.shape[:2] + (H, v.shape[-1]))
  for b in range(x.shape[0]):
    for t in range(T):
      for h in range(H):
        s = np.nonzero(mask_BxTxS[b, t])[0]
        logits = k[b, s, h] @ q[b, t, h] / np.sqrt(d_h + d_r)
        w = np.exp(logits - logits.max())
        o[b, t, h] = (w / w.sum()) @ v[b, s, h]
  return np.einsum("bthv,hvd->btd", o, p["wo"])


def v32_indexer(x_BxTxD, qr_BxTxQ, w, base, rope_dim):
  """DeepSeek-V3.2-Exp's lightning indexer (inference/model.py `Indexer.forward`) transcribed in float64, its FP8
  quantisation and Hadamard rotation left out: q = qr W_q (heads of I), k = LayerNorm(x W_k) (eps 1e-6), RoPE on the
  first `rope_dim` dims of each as interleaved complex pairs (2i, 2i+1) at angle t * base^(-2i/rope_dim), head
  weights x W_w / sqrt(J) / sqrt(I), I[t, s] = sum_j w[t, j] relu(q[t, j] . k[s]); -inf after t. `w` holds V3.2's
  weights as PyTorch stores them ([out, in]): wq_b [J * I, Q], wk [I, D], k_norm_weight, k_norm_bias [I],
  weights_proj [J, D]. Returns [B, T, T]."""
  x, qr = np.asarray(x_BxTxD, np.float64), np.asarray(qr_BxTxQ, np.float64)
  p = {k: np.asarray(v, np.float64) for k, v in w.items()}
  J, I = p["weights_proj"].shape[0], p["wk"].shape[0]
  B, T, _ = x.shape

  def rotate(a_BxTx_xI):  # complex multiplication of the leading pairs, as torch.view_as_complex(...) * freqs_cis
    pairs = a_BxTx_xI[..., :rope_dim].reshape(*a_BxTx_xI.shape[:-1], rope_dim // 2, 2)
    z = pairs[..., 0] + 1j * pairs[..., 1]
    angle = np.arange(T)[:, None] * base ** (-np.arange(0, rope_dim, 2) / rope_dim)[None, :]  # [T, R/2]
    z = z * np.exp(1j * angle).reshape(1, T, *(1,) * (z.ndim - 3), rope_dim // 2)
    rotated = np.stack([z.real, z.imag], -1).reshape(*a_BxTx_xI.shape[:-1], rope_dim)
    return np.concatenate([rotated, a_BxTx_xI[..., rope_dim:]], -1)

  q = rotate((qr @ p["wq_b"].T).reshape(B, T, J, I))
  k = x @ p["wk"].T
  k = (k - k.mean(-1, keepdims=True)) / np.sqrt(k.var(-1, keepdims=True) + 1e-6) * p["k_norm_weight"]
  k = rotate(k + p["k_norm_bias"])
  weights = x @ p["weights_proj"].T * J**-0.5 * I**-0.5
  scores = np.einsum("btj,btsj->bts", weights, np.maximum(np.einsum("btji,bsi->btsj", q, k), 0.0))
  return np.where(causal_mask(T)[None], scores, -np.inf)


def compressed_entries(z_BxTxGxF, g_BxTxGxF, m, overlap):
  """DeepSeek-V4's compressed entries from their definition, in float64, before the norm: entry i pools block i's
  tokens (with overlap, block i - 1's through the first half of the features and block i's through the second), a
  softmax over those tokens of each feature's gate, then the gated sum. Returns [B, T // m, G, F (F / 2 with
  overlap)]."""
  z, g = np.asarray(z_BxTxGxF, np.float64), np.asarray(g_BxTxGxF, np.float64)
  B, T, G, F = z.shape
  h = F // 2 if overlap else F
  out = np.zeros((B, T // m, G, h))
  for i in range(T // m):
    own = slice(h, F) if overlap else slice(0, F)
    tokens = [(j, own) for j in range(i * m, (i + 1) * m)]
    if overlap and i > 0:
      tokens = [(j, slice(0, h)) for j in range((i - 1) * m, i * m)] + tokens
    zs = np.stack([z[:, j, :, part] for j, part in tokens], 1)
    gs = np.stack([g[:, j, :, part] for j, part in tokens], 1)
    w = np.exp(gs - gs.max(1, keepdims=True))
    out[:, i] = (w / w.sum(1, keepdims=True) * zs).sum(1)
  return out


def compressed_attention(
  q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, entries_BxMxGxK, keys_BxMxGxK, m, window, sink_H, picked=None, bias=None
):
  """DeepSeek-V4's CSA / HCA attention, query by query and head by head in float64: one softmax over the raw keys s
  with t - window < s <= t, the entries i whose block has ended ((i + 1) m - 1 <= t; and picked[b, t, i] where
  `picked` [B, T, M] is given; bias[b, t, i] added to their logits where given) and the sink logit (None: no sink);
  the entries are their own values."""
  q, k, v, c, ck = (np.asarray(a, np.float64) for a in (q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, entries_BxMxGxK, keys_BxMxGxK))
  B, T, H, K = q.shape
  G, M = k.shape[2], c.shape[1]
  out = np.zeros_like(q)
  for b in range(B):
    for t in range(T):
      raw = [s for s in range(T) if t - window < s <= t]
      ent = [i for i in range(M) if (i + 1) * m - 1 <= t and (picked is None or picked[b, t, i])]
      for h in range(H):
        g = h // (H // G)
        keys = np.concatenate([k[b, raw, g], ck[b, ent, g]])
        values = np.concatenate([v[b, raw, g], c[b, ent, g]])
        logits = keys @ q[b, t, h] / np.sqrt(K)
        if bias is not None:
          logits[len(raw) :] += np.asarray(bias, np.float64)[b, t, ent]
        if sink_H is not None:
          logits = np.append(logits, float(sink_H[h]))
        w = np.exp(logits - logits.max())
        out[b, t, h] = (w[: len(keys)] / w.sum()) @ values
  return out
