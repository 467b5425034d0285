"""Context-aware weight updates: the fast-weight recurrence S_t = a_t S_{t-1} + (1 - a_t) k_t v_t^T, read out as
o_t = S_t^T q_t (fast weights, Ba et al. 2016; linear attention, Katharopoulos et al. 2020; RetNet, Sun et al. 2023;
GLA, Yang et al. 2024; Mamba-2, Dao & Gu 2024), optionally with the delta rule (DeltaNet, Schlag et al. 2021; Gated
DeltaNet, Yang et al. 2025), in three forms that agree numerically:

  recurrent  `lax.scan` over time with an O(1) [K, P] state per head (what step-by-step decoding runs);
  parallel   the decay-masked quadratic form O = ((Q K^T) * D) U with D[t, i] = a_{i+1} ... a_t: O(T^2);
  chunkwise  the parallel form inside chunks of C plus a scan of the state across chunk boundaries, in float32:
             O(T*C*K + T*K*P) (GLA's and fla's training form; the parallel form is the one-chunk case).

With the delta rule, each write first removes what the state already holds for k_t:
S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T. Inside a chunk the written values u_t solve the unit
lower-triangular system (I + A) U = diag(b) V - diag(b * gamma) K S_0 (the WY / UT form of Yang et al. 2024).
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import layers
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.registry import register_mixer

GATES = ("fixed", "head", "scalar", "vector")
FORMS = ("chunkwise", "parallel", "recurrent")
LOG_A_MIN = -1e4  # a below exp(-1e4) is 0 in float32
FEATURE_MAPS = {"identity": lambda x: x, "elu1": lambda x: nn.elu(x) + 1.0, "relu": nn.relu}


@dataclasses.dataclass(frozen=True)
class FastWeightOptions:
  gate: str = "vector"  # a_t: fixed (alpha) | head (learned per head) | scalar (of x_t, per head; Mamba-2) | vector
  #                       (of x_t, per head and key dimension; GLA)
  alpha: float = 0.9  # the fixed gate's a in (0, 1); learned gates start at RetNet's per-head a_h = 1 - 2^(-5-h)
  input_scale: str = "1-a"  # 1-a (the seed's W_t = a W + (1-a) f(context)) | 1 (RetNet/GLA: S = a S + k v^T)
  delta: bool = False  # delta rule (Gated DeltaNet) with a learned write strength b_t; needs a scalar gate
  feature_map: str = "identity"  # phi on q and k: identity | elu1 (elu + 1, Katharopoulos) | relu
  key_dim: int = 0  # K, state rows per head; 0: d_model / heads. The state is heads x K x (d_model / heads)
  form: str = "chunkwise"  # chunkwise | parallel | recurrent (all equal; see the module docstring)
  chunk: int = 0  # C of the chunkwise form; 0: 64 for per-head gates, 16 for vector gates (a [C, C, K] decay)
  gate_temp: float = 16.0  # data-dependent gates: log a_t = logsigmoid(x W + b) / gate_temp (GLA's tau = 16)
  out_norm: bool = True  # per-head RMSNorm of o_t (RetNet's / GLA's GroupNorm)
  out_gate: bool = True  # o_t * silu(x_t W_g) (RetNet, GLA)
  short_conv: int = 4  # causal depthwise convolution of this width over x before q, k, v (H3, Mamba, GLA and
  #                      DeltaNet in fla, Zoology's Based): lets k_t carry token t-1, as MQAR's key-value binding
  #                      needs; 0 = none

  def __post_init__(self):
    for field, value, allowed in (
      ("gate", self.gate, GATES),
      ("form", self.form, FORMS),
      ("input_scale", self.input_scale, ("1-a", "1")),
      ("feature_map", self.feature_map, tuple(FEATURE_MAPS)),
    ):
      if value not in allowed:
        raise ConfigError(f"{field}={value!r} is unknown. Fix: use one of {allowed}")
    if not 0.0 < self.alpha < 1.0:
      raise ConfigError(f"alpha={self.alpha} must lie in (0, 1). Fix: e.g. alpha=0.9 (a memory of ~10 tokens)")
    if self.chunk < 0 or self.key_dim < 0 or self.gate_temp <= 0 or self.short_conv < 0:
      raise ConfigError(
        f"chunk={self.chunk}, key_dim={self.key_dim}, gate_temp={self.gate_temp}, short_conv="
        f"{self.short_conv}: need chunk >= 0 (0 = auto), key_dim >= 0 (0 = d_model / heads), "
        "gate_temp > 0, short_conv >= 0"
      )
    if self.delta and self.gate == "vector":
      raise ConfigError("delta=True needs one decay per head. Fix: gate=fixed|head|scalar, or delta=False")


def _pad_time(x: jax.Array, length: int) -> jax.Array:
  return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def _recurrent(q, k, v, log_a, beta, state, delta: bool):
  """One step at a time: S = a S + k u^T with u = v, or u = b (v - a S^T k) (delta rule); o = S^T q."""

  def step(S_BxHxKxP, inputs):
    q_t, k_t, v_t, la_t, b_t = inputs
    S_BxHxKxP = jnp.exp(la_t)[..., None] * S_BxHxKxP
    u_BxHxP = b_t[..., None] * (v_t - jnp.einsum("BHK,BHKP->BHP", k_t, S_BxHxKxP)) if delta else v_t
    S_BxHxKxP = S_BxHxKxP + k_t[..., None] * u_BxHxP[..., None, :]
    return S_BxHxKxP, jnp.einsum("BHK,BHKP->BHP", q_t, S_BxHxKxP)

  time_major = [jnp.swapaxes(a, 0, 1) for a in (q, k, v, log_a, beta)]
  state, o_TxBxHxP = jax.lax.scan(step, state, time_major)
  return jnp.swapaxes(o_TxBxHxP, 0, 1), state


def unit_lower_inverse(L_xCxC: jax.Array) -> jax.Array:
  """Inverse of unit lower-triangular matrices [..., C, C] by merging diagonal blocks of 1, 2, 4, ... rows:
  [[A, 0], [M, B]]^-1 = [[A^-1, 0], [-B^-1 M A^-1, B^-1]]. Only batched matmuls (a batched triangular solve is
  a slow loop on XLA's CPU backend); as stable as blocked forward substitution."""
  C = L_xCxC.shape[-1]
  C2 = 1 << max(C - 1, 0).bit_length()  # pad to a power of two with an identity block
  L = jnp.pad(L_xCxC, [(0, 0)] * (L_xCxC.ndim - 2) + [(0, C2 - C)] * 2)
  L = L + jnp.diag((jnp.arange(C2) >= C).astype(L.dtype)).reshape((1,) * (L.ndim - 2) + (C2, C2))
  batch = L.shape[:-2]
  inv = jnp.ones(batch + (C2, 1, 1), L.dtype)  # the inverses of the 1 x 1 diagonal blocks
  s = 1
  while s < C2:
    n = C2 // (2 * s)
    blocks = jnp.diagonal(L.reshape(batch + (n, 2 * s, n, 2 * s)), axis1=-4, axis2=-2)  # [..., 2s, 2s, n]
    M = jnp.moveaxis(blocks, -1, -3)[..., s:, :s]  # [..., n, s, s]: the lower-left block of each 2s block
    A_inv, B_inv = inv.reshape(batch + (n, 2, s, s))[..., 0, :, :], inv.reshape(batch + (n, 2, s, s))[..., 1, :, :]
    low = -B_inv @ M @ A_inv
    top = jnp.concatenate([A_inv, jnp.zeros_like(A_inv)], axis=-1)
    inv = jnp.concatenate([top, jnp.concatenate([low, B_inv], axis=-1)], axis=-2)
    s *= 2
  return inv[..., 0, :C, :C]


def _chunkwise(q, k, v, log_a, beta, state, chunk: int, delta: bool):
  """Chunks of C in parallel (the decay-masked quadratic form inside each), then a float32 scan over chunks."""
  B, T, H, K = q.shape
  C = min(chunk, T)
  N = -(-T // C)

  def chunks(x):  # [B, T, H, ...] -> [B, H, N, C, ...]; padded steps have a = 1, k = 0 and b = 0: no change
    x = _pad_time(x, N * C)
    return jnp.moveaxis(x.reshape(B, N, C, *x.shape[2:]), 3, 1)

  q, k, v, beta = chunks(q), chunks(k), chunks(v), chunks(beta)
  lg = jnp.cumsum(chunks(log_a), axis=3)  # [B, H, N, C, A]: log of a_1 ... a_t from the chunk start (A = 1 or K)
  causal_CxC = jnp.tril(jnp.ones((C, C), bool))
  diff = lg[..., :, None, :] - lg[..., None, :, :]  # [B, H, N, t, i, A]: log(a_{i+1} ... a_t)
  decay = jnp.exp(jnp.where(causal_CxC[None, None, None, :, :, None], diff, -jnp.inf))
  if lg.shape[-1] == 1:
    scores = jnp.einsum("BHNtK,BHNiK->BHNti", q, k) * decay[..., 0]
  else:  # per-key-dimension decay: [C, C, K] per chunk (GLA's secondary chunking would cut this memory)
    scores = jnp.sum(q[..., :, None, :] * k[..., None, :, :] * decay, -1)  # (faster than a 3-way einsum)
  q_in = q * jnp.exp(lg)  # reads the state at the chunk start
  k_out = k * jnp.exp(lg[..., -1:, :] - lg)  # writes into the state at the chunk end
  u0, w = v, None  # u = u0 - w S_0: the values actually written
  if delta:  # one decay per head (checked in fast_weights)
    kk = jnp.einsum("BHNtK,BHNiK->BHNti", k, k) * decay[..., 0]
    strict = jnp.tril(jnp.ones((C, C), bool), -1)
    unit_lower = jnp.eye(C)[None, None, None] + jnp.where(strict[None, None, None], beta[..., :, None] * kk, 0.0)
    inverse = unit_lower_inverse(unit_lower)
    u0 = jnp.einsum("BHNti,BHNiP->BHNtP", inverse, beta[..., None] * v)
    w = jnp.einsum("BHNti,BHNiK->BHNtK", inverse, (beta * jnp.exp(lg[..., 0]))[..., None] * k)
    q_in = q_in - jnp.einsum("BHNti,BHNiK->BHNtK", scores, w)
  o_intra = jnp.einsum("BHNti,BHNiP->BHNtP", scores, u0)
  end_decay = jnp.exp(lg[..., -1, :])[..., None]  # [B, H, N, A, 1]

  def across(S_BxHxKxP, xs):
    k_out_n, u0_n, w_n, end_decay_n = xs
    u_BxHxCxP = u0_n - jnp.einsum("BHCK,BHKP->BHCP", w_n, S_BxHxKxP) if delta else u0_n
    return end_decay_n * S_BxHxKxP + jnp.einsum("BHCK,BHCP->BHKP", k_out_n, u_BxHxCxP), S_BxHxKxP

  by_chunk = [jnp.moveaxis(a, 2, 0) for a in (k_out, u0, k_out if w is None else w, end_decay)]
  state, starts_NxBxHxKxP = jax.lax.scan(across, state, by_chunk)  # sequential over chunks only
  o = o_intra + jnp.einsum("BHNCK,NBHKP->BHNCP", q_in, starts_NxBxHxKxP)
  return jnp.moveaxis(o, 1, 3).reshape(B, N * C, H, -1)[:, :T], state


def fast_weights(
  q_BxTxHxK: jax.Array,
  k_BxTxHxK: jax.Array,
  v_BxTxHxP: jax.Array,
  log_a_BxTxHxA: jax.Array,
  beta_BxTxH: jax.Array | None = None,
  *,
  form: str = "chunkwise",
  chunk: int = 64,
  state_BxHxKxP: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The recurrence S_t = diag(a_t) S_{t-1} + k_t u_t^T, o_t = S_t^T q_t, in any of its three forms, in float32.

  Args:
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxP: queries, keys (any input scale already applied), values.
    log_a_BxTxHxA: log a_t <= 0, one per head (A = 1) or per key dimension (A = K).
    beta_BxTxH: delta-rule write strengths b_t (then A must be 1), or None for the plain (additive) update u = v.
    form: chunkwise | parallel | recurrent;  chunk: C of the chunkwise form.
    state_BxHxKxP: the state before step 1 (zeros if None).
  Returns:
    (o [B, T, H, P] float32, the state after step T [B, H, K, P] float32).
  """
  B, T, H, K = q_BxTxHxK.shape
  P = v_BxTxHxP.shape[-1]
  if log_a_BxTxHxA.shape[-1] not in (1, K) or k_BxTxHxK.shape != q_BxTxHxK.shape or v_BxTxHxP.shape[:3] != (B, T, H):
    raise ValueError(
      f"fast_weights: shapes q {q_BxTxHxK.shape}, k {k_BxTxHxK.shape}, v {v_BxTxHxP.shape}, "
      f"log_a {log_a_BxTxHxA.shape} do not fit [B,T,H,K], [B,T,H,K], [B,T,H,P], [B,T,H,1|K]"
    )
  delta = beta_BxTxH is not None
  if delta and log_a_BxTxHxA.shape[-1] != 1:
    raise ValueError("fast_weights: the delta rule needs one decay per head (log_a [..., 1])")
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  q, k, v = f32(q_BxTxHxK), f32(k_BxTxHxK), f32(v_BxTxHxP)
  log_a = jnp.maximum(f32(log_a_BxTxHxA), LOG_A_MIN)  # a = 0 would make lg_t - lg_i = inf - inf in the chunks
  beta = f32(beta_BxTxH) if delta else jnp.zeros((B, T, H), jnp.float32)
  state = jnp.zeros((B, H, K, P), jnp.float32) if state_BxHxKxP is None else f32(state_BxHxKxP)
  if form == "recurrent":
    return _recurrent(q, k, v, log_a, beta, state, delta)
  return _chunkwise(q, k, v, log_a, beta, state, T if form == "parallel" else chunk, delta)


def state_shape(cfg, opts: FastWeightOptions) -> tuple[int, int, int]:
  """(H, K, P) of a fast-weight layer's state per sequence: heads, key_dim (0: d_model / heads), d_model / heads."""
  H = cfg.num_heads
  return H, opts.key_dim or cfg.d_model // H, cfg.d_model // H


def retnet_decays(num_heads: int) -> jax.Array:
  """RetNet's per-head decays a_h = 1 - 2^(-5-h): memories of 32, 64, 128, ... tokens."""
  return 1.0 - 2.0 ** (-5.0 - jnp.arange(num_heads, dtype=jnp.float32))


@register_mixer("fast_weight", FastWeightOptions)
class FastWeight(nn.Module):
  """Fast-weight / gated linear attention layer: per-head state S_t (K x P) updated from the context each step."""

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: FastWeightOptions

  @staticmethod
  def decode_window(opts: FastWeightOptions) -> str:
    return "its state (H x K x P per layer) summarises the whole past, fading by its learned decay: no window"

  def setup(self):
    cfg, o = self.cfg, self.opts
    D = cfg.d_model
    H, K, P = state_shape(cfg, o)
    std, pd = cfg.init_std, cfg.param_dtype
    self.wq = layers.param(self, "wq", (D, H, K), ("embed", "heads", "kv"), std, pd)
    self.wk = layers.param(self, "wk", (D, H, K), ("embed", "heads", "kv"), std, pd)
    self.wv = layers.param(self, "wv", (D, H, P), ("embed", "heads", "kv"), std, pd)
    self.wo = layers.param(self, "wo", (H, P, D), ("heads", "kv", "embed"), layers.out_std(cfg), pd)
    a0_H = retnet_decays(H)
    if o.gate == "head":  # a_h = sigmoid(theta_h)
      self.gate_bias = self._const("gate_bias", jnp.log(a0_H / (1 - a0_H)), ("heads",))
    elif o.gate in ("scalar", "vector"):  # bias such that a = sigmoid(b)^(1/tau) starts at a0
      b_H = jnp.log(a0_H**o.gate_temp) - jnp.log1p(-(a0_H**o.gate_temp))
      shape, axes = ((H,), ("heads",)) if o.gate == "scalar" else ((H, K), ("heads", "kv"))
      self.wa = layers.param(self, "wa", (D, *shape), ("embed", *axes), std, pd)
      self.gate_bias = self._const(
        "gate_bias", jnp.broadcast_to(b_H.reshape((H,) + (1,) * (len(shape) - 1)), shape), axes
      )
    if o.delta:
      self.wb = layers.param(self, "wb", (D, H), ("embed", "heads"), std, pd)
    if o.out_gate:
      self.wg = layers.param(self, "wg", (D, H, P), ("embed", "heads", "kv"), std, pd)
    if o.out_norm:
      self.norm = layers.RMSNorm(cfg.norm_eps, "float32", pd)
    if o.short_conv:  # one kernel per stream, starting as the identity (the current token's tap is 1)
      identity = jnp.zeros((o.short_conv, D)).at[-1].set(1.0)
      self.conv = {n: self._const(f"conv_{n}", identity, (None, "embed")) for n in "qkv"}
    self.cache = decoding.StateCache()  # decoding: the fast weights (and the convolution's last inputs)

  def _const(self, name, value, axes):
    init = nn.with_logical_partitioning(lambda key, shape, dtype: jnp.asarray(value, dtype), axes)
    return self.param(name, init, value.shape, layers.dtype(self.cfg.param_dtype))

  def _inputs(self, x_BxTxD, history_BxWxD=None):
    """q, k (input scale applied), v, log a [B, T, H, 1|K], delta-rule strength b [B, T, H] or None, and the last
    short_conv - 1 inputs (the convolution's state; `history` holds those before x, zeros if None)."""
    o, dt = self.opts, layers.dtype(self.cfg.dtype)
    x = x_BxTxD.astype(dt)
    B, T, D = x.shape
    streams, history = {n: x for n in "qkv"}, None
    if o.short_conv:
      W = o.short_conv
      past = jnp.zeros((B, W - 1, D), dt) if history_BxWxD is None else history_BxWxD.astype(dt)
      padded = jnp.concatenate([past, x], axis=1)  # [B, W - 1 + T, D]
      # each tap an einsum: its kernel's gradient is then a contraction over B and T, where XLA's CPU code compiled
      # the broadcast product's reduction into a fusion ~4x slower (T=16k, D=128, three streams of 4 taps,
      # fwd+bwd: 242 -> 59 ms), as for nsa.gated_sum
      streams = {
        n: sum(jnp.einsum("BTD,D->BTD", padded[:, j : j + T], c[j].astype(dt)) for j in range(W))
        for n, c in self.conv.items()
      }
      history = padded[:, T:]
    phi = FEATURE_MAPS[o.feature_map]
    q = phi(jnp.einsum("BTD,DHK->BTHK", streams["q"], self.wq.astype(dt))).astype(jnp.float32)
    k = phi(jnp.einsum("BTD,DHK->BTHK", streams["k"], self.wk.astype(dt))).astype(jnp.float32)
    v = jnp.einsum("BTD,DHP->BTHP", streams["v"], self.wv.astype(dt)).astype(jnp.float32)
    H, K = q.shape[2:]
    if o.delta:  # unit keys keep I - b k k^T a contraction (DeltaNet)
      q, k = (a * jax.lax.rsqrt(jnp.sum(a * a, -1, keepdims=True) + 1e-6) for a in (q, k))
    else:
      q = q * K**-0.5
    if o.gate == "fixed":
      log_a = jnp.full((B, T, H, 1), math.log(o.alpha), jnp.float32)
    elif o.gate == "head":
      log_a = jnp.broadcast_to(jax.nn.log_sigmoid(self.gate_bias.astype(jnp.float32))[:, None], (B, T, H, 1))
    else:
      z = jnp.einsum("BTD,D...->BT...", x.astype(jnp.float32), self.wa.astype(jnp.float32))
      z = z + self.gate_bias[None, None]
      log_a = (jax.nn.log_sigmoid(z) / o.gate_temp).reshape(B, T, H, -1)
    scale = -jnp.expm1(log_a) if o.input_scale == "1-a" else jnp.ones_like(log_a)  # 1 - a, exact near a = 1
    beta = None
    if o.delta:
      beta = jax.nn.sigmoid(jnp.einsum("BTD,DH->BTH", x.astype(jnp.float32), self.wb.astype(jnp.float32)))
      beta = beta * scale[..., 0]
    else:
      k = k * scale
    return q, k, v, log_a, beta, history

  def _output(self, x_BxTxD, o_BxTxHxP):
    dt = layers.dtype(self.cfg.dtype)
    if self.opts.out_norm:
      o_BxTxHxP = self.norm(o_BxTxHxP)
    o_BxTxHxP = o_BxTxHxP.astype(dt)
    if self.opts.out_gate:
      o_BxTxHxP = o_BxTxHxP * nn.silu(jnp.einsum("BTD,DHP->BTHP", x_BxTxD.astype(dt), self.wg.astype(dt)))
    y_BxTxD = jnp.einsum("BTHP,HPD->BTD", o_BxTxHxP, self.wo.astype(dt))
    return layers.constrain(y_BxTxD, ("act_batch", "act_length", "act_embed"))

  def __call__(
    self, x_BxTxD: jax.Array, *, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
    del deterministic
    B, T, _ = x_BxTxD.shape
    if decoding.stepping(decode):
      step = lambda s: self.step(x_BxTxD[:, 0], s)  # noqa: E731
      return self.cache(self.init_state(B), step, decoding.commits(decode))[:, None], {}
    q, k, v, log_a, beta, _ = self._inputs(x_BxTxD)
    if decode is not None:  # prefill: steps past a row's prompt leave the state unchanged (a = 1, k = 0, b = 0)
      keep_BxTx1x1 = decoding.prompt_mask(decode, T)[:, :, None, None]
      k, log_a = k * keep_BxTx1x1, log_a * keep_BxTx1x1
      beta = None if beta is None else beta * keep_BxTx1x1[..., 0]
    self.sow("intermediates", "log_a", log_a)
    chunk = self.opts.chunk or (16 if self.opts.gate == "vector" else 64)
    o_BxTxHxP, S = fast_weights(q, k, v, log_a, beta, form=self.opts.form, chunk=chunk)
    if decode is not None:
      state = {"S": S}
      if self.opts.short_conv:
        state["conv"] = decoding.last_inputs(
          x_BxTxD.astype(layers.dtype(self.cfg.dtype)), decode.lengths, self.opts.short_conv - 1
        )
      self.cache(self.init_state(B), lambda _: (None, state))
    state_size = float(math.prod(state_shape(self.cfg, self.opts)))
    return self._output(x_BxTxD, o_BxTxHxP), {"decay": jnp.mean(jnp.exp(log_a)), "state_size": state_size}

  def init_state(self, batch: int) -> dict[str, jax.Array]:
    """The empty decoding state (`apply(..., method='init_state')`): the fast weights S [B, H, K, P] and, with a
    short convolution, its last inputs [B, short_conv - 1, D]."""
    state = {"S": jnp.zeros((batch, *state_shape(self.cfg, self.opts)), jnp.float32)}
    if self.opts.short_conv:
      state["conv"] = jnp.zeros((batch, self.opts.short_conv - 1, self.cfg.d_model), layers.dtype(self.cfg.dtype))
    return state

  def step(self, x_BxD: jax.Array, state: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One decoding step in O(1) time and memory: (y_t [B, D], the next state)."""
    x_Bx1xD = x_BxD[:, None]
    q, k, v, log_a, beta, history = self._inputs(x_Bx1xD, state.get("conv"))
    o_Bx1xHxP, S = fast_weights(q, k, v, log_a, beta, form="recurrent", state_BxHxKxP=state["S"])
    return self._output(x_Bx1xD, o_Bx1xHxP)[:, 0], {"S": S, **({"conv": history} if history is not None else {})}
