"""FLOPs of a sequence mixer from its definition: the score and value products (q.k and p.v, 2 FLOPs per
multiply-add) over the pairs each query reads under its mask, plus the work that picks them (NSA's compression and
block scores, DSA's and CSA's indexers, block top-k's block scores; V4's pooling of entries is element-wise, left
out). Projections are left out (the same order for every variant). Forward only; the backward of a product is two
products, so forward+backward is 3x these.

XLA's compiled count (`train.compiled_flops`) is printed beside these in the benchmarks, but counts a loop body
once, so for the blocked and chunked paths it is a lower bound, not a count.
"""

import dataclasses

import jax
import numpy as np

from r1jax.config import ModelConfig
from r1jax.ffn.moe import ffn_params


def _window_pairs(t: np.ndarray, w: int) -> float:
  return float(np.minimum(t + 1, w).sum())


def mixer_flops(cfg: ModelConfig, T: int) -> dict[str, float]:
  """{part: FLOPs} of layer 0's mixer of `cfg` on one sequence of T tokens, and "total"."""
  name = cfg.layer_names("mixer")[0]
  o = cfg.options("mixer", name)
  H, G = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
  K = cfg.d_model // H
  t = np.arange(T, dtype=np.float64)
  attend = 4.0 * H * K  # FLOPs per (query, key) pair: the score and the weighted value, every head
  parts = {}
  if name == "attention":
    parts["attention"] = attend * T * (T + 1) / 2
  elif name == "local":
    parts["attention"] = attend * _window_pairs(t, o.window)
  elif name == "sparse":
    parts["attention"] = attend * _window_pairs(t, o.top_k)
    if o.select == "indexer":  # sum_j w_j relu(q_j . k) for every earlier key: J dot products of I, J weights
      parts["indexer"] = (2.0 * o.indexer_heads * o.indexer_dim + 2.0 * o.indexer_heads) * T * (T + 1) / 2
  elif name == "block_sparse":
    b, n = o.block_size, o.top_blocks
    own = t // b
    parts["attention"] = attend * float(((t % b + 1) + b * np.minimum(n, own)).sum())
    parts["block_scores"] = 2.0 * G * K * float(own.sum())  # the query against each earlier block's mean key
  elif name == "nsa":
    l, d, ls, n, w = o.cmp_block, o.cmp_stride, o.slc_block, o.top_blocks, o.window
    ended = np.where(t + 1 >= l, (t + 1 - l) // d + 1, 0)  # compressed blocks ended by each query
    parts["compressed"] = attend * float(ended.sum())
    M = (T - l) // d + 1 if T >= l else 0
    if o.compress == "mlp":  # per block, key and value: [l*K] @ [l*K, K], then [K] @ [K, K], each group
      parts["compression"] = 2 * 2.0 * M * G * (l * K * K + K * K)
    own = t // ls
    blocks = np.minimum(own, 1) + (own >= 2) + np.minimum(n - 3, np.maximum(own - 2, 0))  # earlier blocks read
    parts["selected"] = attend * float(((t % ls + 1) + ls * blocks).sum())
    parts["window"] = attend * _window_pairs(t, w)
  elif name in ("csa", "hca"):  # a window of raw keys beside the compressed entries ended by each query
    ended = (t + 1) // o.rate
    parts["window"] = attend * _window_pairs(t, o.window)
    parts["compressed"] = attend * float((np.minimum(ended, o.top_k) if name == "csa" else ended).sum())
    if name == "csa":  # the indexer scores every ended entry: J dot products of I, J weights
      parts["indexer"] = (2.0 * o.indexer_heads * o.indexer_dim + 2.0 * o.indexer_heads) * float(ended.sum())
  elif name == "fast_weight":
    P = cfg.d_model // H
    Kf = o.key_dim or K
    parts["recurrence"] = 4.0 * H * Kf * P * T  # per token and head: S += k v^T and q . S, K x P each
  else:
    raise ValueError(f"mixer_flops: no count for mixer {name!r}. Fix: add its definition to r1jax/lab/flops.py")
  parts["total"] = sum(parts.values())
  return parts


def train_flops_per_token(cfg: ModelConfig, T: int, params) -> float:
  """A train step's FLOPs per token from the definition, without recomputation: 6 per active matrix parameter
  (forward 2, backward 4; of an MoE layer its k routed and its shared experts; the embedding only as a tied output
  head) plus 3x each layer's mixer products per token (mixer_flops). `params`: the model's parameter tree (shapes
  suffice). NaN for a mixer that mixer_flops has no count for."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  matrices = sum(int(np.prod(a.shape)) for _, a in leaves if len(a.shape) >= 2)
  if not cfg.tie_embeddings:  # the embedding is a lookup
    matrices -= sum(int(np.prod(a.shape)) for path, a in leaves if str(getattr(path[-1], "key", "")) == "embed")
  total_ffn, active_ffn = ffn_params(cfg)
  mixing = 0.0
  for name in cfg.layer_names("mixer"):
    try:
      mixing += mixer_flops(dataclasses.replace(cfg, mixer=name, mixer_pattern=()), T)["total"] / T
    except ValueError:
      return float("nan")
  return 6.0 * (matrices - (total_ffn - active_ffn)) + 3.0 * mixing


# DeepSeek's published attention shapes (each release's config.json, as MaxText's configs/models/deepseek3.2-671b.yml,
# deepseek4-284b.yml and deepseek4-1600b.yml give them): V3.2's sparse MLA with its indexer over every key, and
# V4's layers by compression rate (0: the window alone, 4: CSA, 128: HCA) over one shared key/value head of 512.
V32_SHAPES = {"layers": 61, "heads": 128, "kv_rank": 512, "rope": 64, "idx_heads": 64, "idx_dim": 128, "top_k": 2048}
V4_SHAPES = {
  "V4-Flash": {"heads": 64, "head_dim": 512, "window": 128, "idx_heads": 64, "idx_dim": 128, "top_k": 512,
               "rates": (0, 0) + (4, 128) * 20 + (4,)},
  "V4-Pro": {"heads": 128, "head_dim": 512, "window": 128, "idx_heads": 64, "idx_dim": 128, "top_k": 1024,
             "rates": (128, 128) + (4, 128) * 29 + (4,)},
}  # fmt: skip


def deepseek_decode_cost(release: str, C: int) -> dict[str, float]:
  """One token decoded at context C by DeepSeek's attention at its published shapes (`release`: "V3.2" or a
  V4_SHAPES key), summed over the layers: the numbers its KV cache holds per token of context (a window's constant
  share left out) and the attention FLOPs of that token (scores and values over the keys it reads, the indexer over
  every key or compressed entry; projections left out, the same per token at any context)."""
  if release == "V3.2":
    s = V32_SHAPES
    index = 2.0 * s["idx_heads"] * (s["idx_dim"] + 1) * C  # J dot products of I and J weights per key
    # absorbed MLA: a score over the latent and the RoPE key, a value accumulated in the latent, every head
    attend = 2.0 * s["heads"] * (2 * s["kv_rank"] + s["rope"]) * min(C, s["top_k"])
    return {"cache": s["layers"] * (s["kv_rank"] + s["rope"] + s["idx_dim"]), "flops": s["layers"] * (index + attend)}
  s = V4_SHAPES[release]
  cache = flops = 0.0
  for m in s["rates"]:
    keys = min(C, s["window"])
    if m:
      entries = C // m
      keys += min(entries, s["top_k"]) if m == 4 else entries
      cache += s["head_dim"] / m + (s["idx_dim"] / m if m == 4 else 0)
      flops += 2.0 * s["idx_heads"] * (s["idx_dim"] + 1) * entries if m == 4 else 0.0
    flops += 4.0 * s["heads"] * s["head_dim"] * keys  # a shared key/value of head_dim: score and value
  return {"cache": cache, "flops": flops}
