"""Token-choice top-k mixture-of-experts feed-forward (Switch, GShard, DeepSeekMoE, DeepSeek-V3), with capacity and
dropless dispatch and expert parallelism over the mesh's `expert` axis.

Routing: float32 router logits x W_r; scores softmax (Shazeer et al. 2017; Switch, Fedus et al. 2021; GShard,
Lepikhin et al. 2020; DeepSeekMoE, Dai et al. 2024) or sigmoid (DeepSeek-V3, 2024); optionally group-limited
(DeepSeek-V3: keep the `topk_groups` groups with the largest sum of their top-2 scores, then pick top-k inside);
gates are the unbiased scores of the chosen experts, optionally renormalised to sum 1.
Balancing: the Switch loss alpha E sum_i f_i P_i, the router z-loss (ST-MoE, Zoph et al. 2022), or DeepSeek-V3's
auxiliary-loss-free bias b (added to the scores for selection only; after each step b_i -= gamma if expert i got more
than the mean load, += gamma if less), kept in the `balance` variable collection.
Dispatch: `capacity` gives each expert ceil(cf T k / E) slots per sequence and drops the overflow (GShard, with
slots taken in token order so that a decoder stays causal); `dropless` sorts the token copies by expert and runs
grouped matmuls, through `jax.lax.ragged_dot` or through blocks of `block_size` rows padded per expert (MegaBlocks,
Gale et al. 2022; XLA's CPU backend computes ragged_dot densely for every group, E times the work). Copies move to
their rows and back by gathers whose gradients are gathers through the inverse map (permute_rows), no scatter-adds.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from r1jax import layers, sharding
from r1jax.errors import ConfigError
from r1jax.ffn import grouped_matmul as gmm
from r1jax.ffn.swiglu import SwiGLU, SwiGLUOptions
from r1jax.registry import register_ffn

SCORES = ("softmax", "sigmoid")
BALANCES = ("aux", "aux_free", "none")
DISPATCHES = ("dropless", "capacity")
MATMULS = ("auto", "ragged_dot", "blocks", "pallas")


@dataclasses.dataclass(frozen=True)
class MoEOptions:
  num_experts: int = 8  # E routed experts, >= 1
  top_k: int = 2  # experts per token, in [1, num_experts] (Switch 1, GShard 2, DeepSeek-V3 8)
  d_expert: int = 0  # hidden width of each expert; 0: model.d_ff (fine-grained experts: d_ff / m with m x experts)
  num_shared: int = 0  # always-active shared experts of width d_expert (DeepSeekMoE), >= 0
  score: str = "softmax"  # softmax (Switch, GShard, DeepSeekMoE) | sigmoid (DeepSeek-V3)
  norm_topk: bool = False  # renormalise the k chosen gates to sum 1 (GShard, DeepSeek-V3); needs top_k >= 2
  num_groups: int = 1  # expert groups, dividing num_experts; > 1: group-limited routing (DeepSeek-V3 n_group)
  topk_groups: int = 1  # groups a token may route into, in [1, num_groups] (DeepSeek-V3 topk_group)
  route_scale: float = 1.0  # the chosen gates are multiplied by this, > 0 (DeepSeek-V3 671B: 2.5)
  balance: str = "aux"  # aux (Switch loss) | aux_free (DeepSeek-V3 bias) | none
  aux_weight: float = 0.01  # alpha of the Switch loss (Switch: 0.01)
  z_weight: float = 0.0  # router z-loss weight (ST-MoE: 1e-3), with any balance
  bias_rate: float = 1e-3  # gamma of aux_free, per step (DeepSeek-V3: 0.001)
  dispatch: str = "dropless"  # dropless (every routed copy computed) | capacity (per-expert slots, overflow dropped)
  capacity_factor: float = 1.25  # capacity: slots per expert per sequence = ceil(cf * T * top_k / E), > 0
  grouped_matmul: str = "auto"  # dropless: ragged_dot (jax.lax.ragged_dot) | blocks (padded row blocks, one batched
  # matmul with each block's expert weights gathered) | pallas (the same blocks, each multiplying its expert's weights
  # in place: r1jax/ffn/grouped_matmul.py, GPU, or interpreted elsewhere) | auto (blocks on CPU, pallas on GPU where
  # d_model and d_expert are multiples of 64 else blocks: XLA's GPU lowering of ragged_dot computes every expert for
  # every row; ragged_dot on TPU)
  block_size: int = 0  # blocks: rows per block, >= 0; 0: chosen from the copies per step (auto_block_size)

  def __post_init__(self):
    def need(ok, field, problem, fix):
      if not ok:
        raise ConfigError(f"{field}: {problem}. Fix: {fix}.")

    need(
      self.num_experts >= 1 and 1 <= self.top_k <= self.num_experts,
      "top_k",
      f"needs 1 <= top_k <= num_experts, got top_k={self.top_k}, num_experts={self.num_experts}",
      "lower top_k or raise num_experts",
    )
    need(
      self.d_expert >= 0 and self.num_shared >= 0 and self.block_size >= 0,
      "d_expert/num_shared/block_size",
      "must be >= 0",
      "use 0 for the defaults",
    )
    need(self.score in SCORES, "score", f"unknown {self.score!r}", f"use one of {SCORES}")
    need(self.balance in BALANCES, "balance", f"unknown {self.balance!r}", f"use one of {BALANCES}")
    need(self.dispatch in DISPATCHES, "dispatch", f"unknown {self.dispatch!r}", f"use one of {DISPATCHES}")
    need(self.grouped_matmul in MATMULS, "grouped_matmul", f"unknown {self.grouped_matmul!r}", f"use one of {MATMULS}")
    need(
      not (self.norm_topk and self.top_k == 1),
      "norm_topk",
      "with top_k=1 the renormalised gate is always 1, so the router gets no gradient from the loss",
      "use norm_topk=False for top-1 (Switch)",
    )
    need(
      self.num_groups >= 1 and self.num_experts % self.num_groups == 0,
      "num_groups",
      f"{self.num_groups} groups do not divide {self.num_experts} experts",
      "pick a divisor of num_experts",
    )
    need(
      1 <= self.topk_groups <= self.num_groups,
      "topk_groups",
      f"{self.topk_groups} not in [1, num_groups]",
      "use e.g. num_groups // 2",
    )
    need(
      self.top_k <= self.topk_groups * (self.num_experts // self.num_groups),
      "top_k",
      f"{self.top_k} experts cannot be found in {self.topk_groups} groups of {self.num_experts // self.num_groups}",
      "raise topk_groups",
    )
    need(
      self.capacity_factor > 0 and self.aux_weight >= 0 and self.z_weight >= 0 and self.bias_rate >= 0,
      "capacity_factor/aux_weight/z_weight/bias_rate",
      "capacity_factor must be > 0, the others >= 0",
      "use e.g. 1.25, 0.01, 1e-3, 1e-3",
    )
    need(self.route_scale > 0, "route_scale", f"{self.route_scale} must be > 0", "use 1.0 (DeepSeek-V3 671B: 2.5)")

  def sharded_dims(self, model) -> list[tuple[str, int, str]]:
    """(field, size, mesh axis) pairs that must divide evenly (checked before compilation)."""
    return [("num_experts", self.num_experts, "expert"), ("d_expert", self.d_expert or model.hidden_ff, "tensor")]


def ffn_params(model) -> tuple[int, int]:
  """(total, active per token) feed-forward parameters over all layers of a ModelConfig: a dense SwiGLU has 3 D F;
  an MoE layer 3 D F_e (E + shared) in total and 3 D F_e (k + shared) active per token, plus its D E router."""
  total = active = 0
  for name in model.layer_names("ffn"):
    opts = model.options("ffn", name)
    if isinstance(opts, MoEOptions):
      per_expert, router = 3 * model.d_model * (opts.d_expert or model.hidden_ff), model.d_model * opts.num_experts
      total += per_expert * (opts.num_experts + opts.num_shared) + router
      active += per_expert * (opts.top_k + opts.num_shared) + router
    elif name != "none":
      total += 3 * model.d_model * model.hidden_ff
      active += 3 * model.d_model * model.hidden_ff
  return total, active


def route(logits_NxE: jax.Array, bias_E: jax.Array, opts: MoEOptions):
  """Token-choice top-k. Returns (expert ids [N, k], gates [N, k], scores [N, E]); the bias shifts selection only.

  Group-limited routing as DeepSeek-V3's `Gate` (inference/model.py): with a bias (balance=aux_free) a group scores
  the sum of its two best biased scores, without one its best score; the chosen gates are scaled by route_scale."""
  logits = logits_NxE.astype(jnp.float32)
  scores_NxE = jax.nn.softmax(logits, -1) if opts.score == "softmax" else jax.nn.sigmoid(logits)
  select_NxE = jax.lax.stop_gradient(scores_NxE) + bias_E[None, :]
  if opts.num_groups > 1:
    N, E, G = select_NxE.shape[0], select_NxE.shape[1], opts.num_groups
    grouped = select_NxE.reshape(N, G, E // G)
    best = min(2, E // G) if opts.balance == "aux_free" else 1
    group_score_NxG = jax.lax.top_k(grouped, best)[0].sum(-1)
    _, keep_NxG = jax.lax.top_k(group_score_NxG, opts.topk_groups)
    allowed_NxG = jnp.sum(jax.nn.one_hot(keep_NxG, G, dtype=jnp.bool_), axis=1)
    select_NxE = jnp.where(jnp.repeat(allowed_NxG, E // G, axis=1), select_NxE, -jnp.inf)
  _, idx_NxK = jax.lax.top_k(select_NxE, opts.top_k)
  gate_NxK = jnp.take_along_axis(scores_NxE, idx_NxK, axis=-1)
  if opts.norm_topk:
    gate_NxK = gate_NxK / (jnp.sum(gate_NxK, -1, keepdims=True) + 1e-20)
  return idx_NxK, gate_NxK * opts.route_scale, scores_NxE


def _swiglu(x, w1, w3, w2, mm):
  return mm(nn.silu(mm(x, w1)) * mm(x, w3), w2)


@jax.custom_vjp
def permute_rows(x_RxD: jax.Array, to_S: jax.Array, from_R: jax.Array) -> jax.Array:
  """x[to] with zero rows where `to` is out of range. `to` and `from` are inverse maps on their in-range entries (each
  row of x lands in at most one output row), so the gradient is the gather g[from], not a scatter-add."""
  return x_RxD.at[to_S].get(mode="fill", fill_value=0)


def _permute_fwd(x_RxD, to_S, from_R):
  return permute_rows(x_RxD, to_S, from_R), (to_S, from_R)


def _permute_bwd(maps, g_SxD):
  to_S, from_R = maps
  return g_SxD.at[from_R].get(mode="fill", fill_value=0), None, None


permute_rows.defvjp(_permute_fwd, _permute_bwd)


def auto_block_size(copies: int, num_experts: int) -> int:
  """Rows per block when block_size=0. Each block reads its expert's weights, and each expert's last block is padded:
  per step about (copies / b + E) weight reads against E * b / 2 padding rows, balanced near b = sqrt(16 copies / E)
  (a power of 2, at most 256; measured with benchmarks/moe_dispatch.py). With no more copies than experts (decoding),
  one row per block: only the chosen experts' weights are read."""
  if copies <= num_experts:
    return 1
  return int(min(256, 2 ** round(math.log2(math.sqrt(16 * copies / num_experts)))))


def grouped_layout(opts: MoEOptions, copies: int, num_experts: int, d_model: int, d_expert: int) -> tuple[str, int]:
  """(grouped matmul, rows per block) of the dropless path for this many copies: `auto` resolved for the platform
  the program is traced for (sharding.platform(): a GPU target compiles the GPU path on a machine without one)."""
  matmul, platform = opts.grouped_matmul, sharding.platform()
  if matmul == "auto":
    pallas_ok = platform == "gpu" and gmm.supported(d_model, d_expert)
    matmul = {"cpu": "blocks", "gpu": "pallas" if pallas_ok else "blocks"}.get(platform, "ragged_dot")
  if matmul == "ragged_dot":
    return matmul, 1
  block = opts.block_size or auto_block_size(copies, num_experts)
  if matmul == "pallas":  # Triton's tiles: a power of 2 from 16 rows (its dot's minimum) to 128
    if not gmm.supported(d_model, d_expert):
      raise ConfigError(
        f"moe.grouped_matmul=pallas needs d_model and d_expert multiples of {gmm.TILE}, got {d_model} and "
        f"{d_expert}. Fix: change the widths, or use grouped_matmul=auto."
      )
    block = min(128, max(gmm.MIN_BLOCK, 2 ** math.ceil(math.log2(block))))
  return matmul, block


def sort_by_expert(expert_M: jax.Array, num_experts: int, block: int):
  """Rows for M routed copies (expert ids; num_experts and above: not computed here), sorted by expert and each
  expert's group padded to a multiple of `block` rows. Returns (row of each copy [M] (out of range if not computed),
  copy in each row [R] (M for padding), expert of each block [R / block], copies per expert [E])."""
  M, E = expert_M.shape[0], num_experts
  blocks = -(-M // block) + (min(E, M) if block > 1 else 0)  # sum_e ceil(n_e / b) <= M / b + (non-empty groups)
  order_M = jnp.argsort(expert_M, stable=True)
  sizes_E = jnp.bincount(expert_M, length=E + 1)[:E].astype(jnp.int32)
  padded_E = -(-sizes_E // block) * block
  start_E, pstart_E = jnp.cumsum(sizes_E) - sizes_E, jnp.cumsum(padded_E) - padded_E
  rank_M = jnp.zeros((M,), jnp.int32).at[order_M].set(jnp.arange(M, dtype=jnp.int32))  # position in sorted order
  mine_M = expert_M < E
  e_M = jnp.minimum(expert_M, E - 1)
  row_M = jnp.where(mine_M, pstart_E[e_M] + rank_M - start_E[e_M], blocks * block)
  copy_R = jnp.full((blocks * block,), M, jnp.int32).at[row_M].set(jnp.arange(M, dtype=jnp.int32), mode="drop")
  expert_B = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded_E), jnp.arange(blocks) * block, side="right"), E - 1)
  return row_M, copy_R, expert_B, sizes_E


def grouped_swiglu(x_RxD, sizes_E, expert_B, w1_ExDxF, w3_ExDxF, w2_ExFxD, matmul: str) -> jax.Array:
  """Rows laid out by sort_by_expert through their expert's SwiGLU: `ragged_dot` over groups of sizes_E rows (block
  1); `blocks`, one batched matmul over blocks with each block's expert weights (rows per block: R / blocks);
  `pallas`, the same blocks through the grouped-matmul kernels (interpreted off a GPU)."""
  dt = x_RxD.dtype
  if matmul == "ragged_dot":
    return _swiglu(x_RxD, w1_ExDxF, w3_ExDxF, w2_ExFxD, lambda a, w: jax.lax.ragged_dot(a, w.astype(dt), sizes_E))
  if matmul == "pallas":
    interpret = sharding.platform() != "gpu"
    return _swiglu(x_RxD, w1_ExDxF, w3_ExDxF, w2_ExFxD, lambda a, w: gmm.grouped_matmul(a, w, expert_B, interpret))
  xb = x_RxD.reshape(expert_B.shape[0], -1, x_RxD.shape[1])
  take = lambda w: w[expert_B].astype(dt)
  yb = _swiglu(xb, take(w1_ExDxF), take(w3_ExDxF), take(w2_ExFxD), lambda a, w: jnp.einsum("Bbi,Bio->Bbo", a, w))
  return yb.reshape(x_RxD.shape[0], -1)


def dropless(x_NxD, idx_NxK, gate_NxK, weights, opts: MoEOptions, first_expert=0) -> jax.Array:
  """sum_k gate_k E_{idx_k}(x) per token, every routed copy computed; `weights` hold experts first_expert... only
  (expert parallelism), copies routed elsewhere contribute zero. Phases: sort the copies by expert, gather them
  into rows, the experts' grouped matmuls, gather the rows back and weight them by the gates."""
  N, K = idx_NxK.shape
  E_local = weights[0].shape[0]
  local_M = idx_NxK.reshape(-1) - first_expert
  local_M = jnp.where((local_M >= 0) & (local_M < E_local), local_M, E_local)  # other shards' copies: not here
  matmul, block = grouped_layout(opts, N * K, E_local, *weights[0].shape[1:])
  row_M, copy_R, expert_B, sizes_E = sort_by_expert(local_M, E_local, block)
  x_MxD = jnp.broadcast_to(x_NxD[:, None], (N, K, x_NxD.shape[1])).reshape(N * K, -1)
  y_RxD = grouped_swiglu(permute_rows(x_MxD, copy_R, row_M), sizes_E, expert_B, *weights, matmul)
  y_MxD = permute_rows(y_RxD, row_M, copy_R)  # zero for copies computed on another shard
  return jnp.einsum("NKD,NK->ND", y_MxD.reshape(N, K, -1), gate_NxK.astype(y_MxD.dtype))


def capacity(x_BxTxD, idx_BxTxK, gate_BxTxK, weights, opts: MoEOptions) -> tuple[jax.Array, jax.Array]:
  """GShard dispatch per sequence: expert buffers [B, E, C, D] filled in token order, copies past C dropped.
  Returns (output [B, T, D], kept copies [B, T, K] as 0/1).

  GShard fills all first choices before any second choice; in a decoder that lets later tokens evict earlier
  tokens' copies (a leak from the future), so slots go to tokens in position order here, which keeps it causal.
  """
  B, T, K = idx_BxTxK.shape
  E = weights[0].shape[0]
  C = min(T, math.ceil(opts.capacity_factor * T * K / E))
  idx_BxM = idx_BxTxK.reshape(B, T * K)
  onehot_BxMxE = jax.nn.one_hot(idx_BxM, E, dtype=jnp.int32)
  slot_BxM = jnp.sum((jnp.cumsum(onehot_BxMxE, axis=1) - 1) * onehot_BxMxE, -1)
  keep_BxM = slot_BxM < C
  dest_BxM = jnp.where(keep_BxM, idx_BxM * C + slot_BxM, E * C)  # E * C: out of range, dropped
  src_M = jnp.repeat(jnp.arange(T), K)
  put = lambda x, d: jnp.zeros((E * C, x.shape[-1]), x.dtype).at[d].set(x[src_M], mode="drop")
  buf_BxExCxD = jax.vmap(put)(x_BxTxD, dest_BxM).reshape(B, E, C, -1)
  buf_BxExCxD = layers.constrain(buf_BxExCxD, ("act_expert_batch", "act_expert", None, "act_embed"))
  w1, w3, w2 = (w.astype(x_BxTxD.dtype) for w in weights)
  y_BxExCxD = _swiglu(buf_BxExCxD, w1, w3, w2, lambda a, w: jnp.einsum("BECi,Eio->BECo", a, w))
  y_BxExCxD = layers.constrain(y_BxExCxD, ("act_batch", None, None, "act_embed"))
  get = lambda y, d: y.reshape(E * C, -1).at[d].get(mode="fill", fill_value=0)
  y_BxTxKxD = jax.vmap(get)(y_BxExCxD, dest_BxM).reshape(B, T, K, -1)
  out_BxTxD = jnp.einsum("BTKD,BTK->BTD", y_BxTxKxD, gate_BxTxK.astype(y_BxTxKxD.dtype))
  return out_BxTxD, keep_BxM.reshape(B, T, K)


def sharded_dropless(x_NxD, idx_NxK, gate_NxK, weights, opts: MoEOptions) -> jax.Array:
  """Dropless on a mesh, in shard_map, so that every device sorts and computes only copies of its own tokens (XLA
  cannot split a sort over a sharded batch: it gathers every token to every device, which compiled for 8 GPUs to
  5.2x the active FLOPs per token). Each device takes its batch shard's tokens; with experts split over the
  `expert` axis, the tokens of its expert group (gathered) through its own experts, the outputs reduce-scattered
  back; with the experts' hidden width split (`mlp`), its share of every expert, the partial outputs summed; the
  model width's weight shards (`embed`, FSDP) gathered."""
  expert, embed, mlp = _mesh_axis("expert"), _mesh_axis("embed"), _mesh_axis("mlp")
  tokens = nn.logical_to_mesh_axes(("act_batch", None))

  def local(x, idx, gate, w1, w3, w2):
    if embed:
      w1, w3 = (jax.lax.all_gather(w, embed, axis=1, tiled=True) for w in (w1, w3))
      w2 = jax.lax.all_gather(w2, embed, axis=2, tiled=True)
    first = 0
    if expert:
      x, idx, gate = (jax.lax.all_gather(a, expert, tiled=True) for a in (x, idx, gate))
      first = jax.lax.axis_index(expert) * w1.shape[0]
    y = dropless(x, idx, gate, (w1, w3, w2), opts, first_expert=first)
    if mlp:
      y = jax.lax.psum(y, mlp)
    return jax.lax.psum_scatter(y, expert, tiled=True) if expert else y

  w_in, w_out = P(expert, embed, mlp), P(expert, mlp, embed)
  return jax.shard_map(local, in_specs=(tokens, tokens, tokens, w_in, w_in, w_out), out_specs=tokens)(
    x_NxD, idx_NxK, gate_NxK, *weights
  )


def _mesh_axis(logical: str) -> str | None:
  """The mesh axis a logical axis maps to (one, in the rules table) where the current mesh splits it; else None."""
  return (sharding.split_axes(logical) or (None,))[0]


def _sharded_mesh() -> bool:
  """Whether the current mesh splits the tokens or the experts' weights (then dropless runs in shard_map)."""
  return any(sharding.split_axes(n) for n in ("act_batch", "expert", "embed", "mlp"))


@register_ffn("moe", MoEOptions)
class MoE(nn.Module):
  """Top-k routed SwiGLU experts plus optional shared experts. Aux: `loss_balance`, `loss_z` (weighted), and
  diagnostics `max_load` (max / mean copies per expert), `load_cv`, `dropped` (fraction of copies), `entropy`
  (router score entropy, nats), `bias_abs` (mean |b|, aux_free). Sows the chosen expert ids [B, T, k] as `experts`."""

  cfg: "ModelConfig"  # noqa: F821
  opts: MoEOptions

  @staticmethod
  def decode_options(opts: MoEOptions) -> MoEOptions:
    """Decoding routes a token through the dropless path (capacity slots are a training-time batch construct)."""
    return dataclasses.replace(opts, dispatch="dropless")

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, *, deterministic: bool) -> tuple[jax.Array, dict]:
    cfg, o = self.cfg, self.opts
    B, T, D = x_BxTxD.shape
    E, F, K = o.num_experts, o.d_expert or cfg.hidden_ff, o.top_k
    dt = layers.dtype(cfg.dtype)
    router_DxE = layers.param(self, "router", (D, E), ("embed", None), cfg.init_std, "float32")
    w1 = layers.param(self, "w1", (E, D, F), ("expert", "embed", "mlp"), cfg.init_std, cfg.param_dtype)
    w3 = layers.param(self, "w3", (E, D, F), ("expert", "embed", "mlp"), cfg.init_std, cfg.param_dtype)
    w2 = layers.param(self, "w2", (E, F, D), ("expert", "mlp", "embed"), layers.out_std(cfg), cfg.param_dtype)
    bias = self.variable("balance", "bias", jnp.zeros, (E,), jnp.float32) if o.balance == "aux_free" else None
    x = x_BxTxD.astype(dt)

    logits_BxTxE = jnp.einsum("BTD,DE->BTE", x_BxTxD.astype(jnp.float32), router_DxE)
    bias_E = bias.value if bias is not None else jnp.zeros((E,), jnp.float32)
    idx_NxK, gate_NxK, scores_NxE = route(logits_BxTxE.reshape(B * T, E), bias_E, o)
    if o.dispatch == "capacity":
      y_BxTxD, keep_BxTxK = capacity(x, idx_NxK.reshape(B, T, K), gate_NxK.reshape(B, T, K), (w1, w3, w2), o)
      dropped = 1.0 - jnp.mean(keep_BxTxK.astype(jnp.float32))
    else:
      args = (x.reshape(B * T, D), idx_NxK, gate_NxK, (w1, w3, w2), o)
      y_NxD = sharded_dropless(*args) if _sharded_mesh() else dropless(*args)
      y_BxTxD, dropped = y_NxD.reshape(B, T, D), jnp.zeros((), jnp.float32)
    if o.num_shared:  # DeepSeekMoE shared experts: one dense SwiGLU as wide as num_shared experts together
      shared = SwiGLU(dataclasses.replace(cfg, d_ff=o.num_shared * F), SwiGLUOptions(), name="shared")
      y_BxTxD = y_BxTxD + shared(x, deterministic=deterministic)[0]

    load_E = jnp.bincount(idx_NxK.reshape(-1), length=E).astype(jnp.float32)  # routed copies (before drops)
    probs_NxE = scores_NxE / jnp.sum(scores_NxE, -1, keepdims=True)  # sigmoid scores normalised (DeepSeek-V3)
    aux = {
      "max_load": jnp.max(load_E) / jnp.mean(load_E),
      "load_cv": jnp.std(load_E) / jnp.mean(load_E),
      "dropped": dropped,
      "entropy": -jnp.mean(jnp.sum(probs_NxE * jnp.log(probs_NxE + 1e-20), -1)),
    }
    if o.balance == "aux":  # Switch: f_i = share of routed copies, P_i = mean router probability
      aux["loss_balance"] = o.aux_weight * E * jnp.sum(load_E / (B * T * K) * jnp.mean(probs_NxE, 0))
    if o.z_weight:
      aux["loss_z"] = o.z_weight * jnp.mean(jax.nn.logsumexp(logits_BxTxE, -1) ** 2)
    if bias is not None:
      aux["bias_abs"] = jnp.mean(jnp.abs(bias_E))
      if not deterministic and self.is_mutable_collection("balance") and not self.is_initializing():
        bias.value = bias_E + o.bias_rate * jnp.sign(jnp.mean(load_E) - load_E)  # DeepSeek-V3's update rule
    self.sow("intermediates", "experts", idx_NxK.reshape(B, T, K))
    return layers.constrain(y_BxTxD.astype(dt), ("act_batch", "act_length", "act_embed")), aux
