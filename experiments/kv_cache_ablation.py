"""The KV cache: multi-head attention against grouped-query (2 groups), multi-query, multi-head latent attention
(DeepSeek-V2's MLA), sparse MLA (DeepSeek-V3.2) and DeepSeek-V4's compressed attentions (CSA, HCA and v4, on text),
trained on Tiny Shakespeare at T=256 (loss) and on MQAR (accuracy), 3 seeds; then, in the same run, each layer's
cache per token and the decoding step's latency at 16k and 64k cached tokens, as ratios to MHA. The seed claim
"sharing the K/V cache cuts inference memory by 60%" is judged on cache bytes at the measured quality
(r1jax/lab/claims.py).

  python experiments/kv_cache_ablation.py              # text: 8 variants, MQAR: 3, x 3 seeds, then decoding
  python experiments/kv_cache_ablation.py --quick      # smoke run

Text models: 2 layers of width 64 with 4 heads of 16. Attention parameters per layer (the report prints them): MHA
16,384, GQA 12,288, MQA 10,240, MLA with d_c = 32 and d_r = 16 (content and value heads of 16) 19,488. Cache numbers
per token and layer: MHA 2 x 4 x 16 = 128, GQA 64, MQA 32, MLA d_c + d_r = 48, sparse MLA 48 + the indexer's key
(16). Sparse MLA attends to 16 latents per query (every head the same 16), picked by DSA's lightning indexer trained
by DSA's sparse-stage KL on a detached input, with training picks sampled (Gumbel-top-k, tau = 1) since it starts
from scratch (experiments/sparse_attn_ablation.py's probes: greedy picks from scratch never find an MQAR pair).
MQAR: 8 pairs at T=64, queries at least 24 tokens after their pair, attention-only models with 2 heads of 32, batch
128, lr 1e-2, 1000 steps.
Decoding: `r1jax.lab.scaling.decode_step` on the text task's models (batch 1, a scan of 16 steps at the cache's last
positions, median of 3 after a warm-up), in a fresh worker process with every core.

The default's result (results/kv_cache_ablation/, 3 seeds; commit 1dea441, 15m31s on 2 cores of an AMD EPYC): per
token and layer MHA caches 128 numbers, GQA-2 64, MQA 32, MLA 48, sparse MLA 64 (V3.2's indexer), CSA 20, HCA 4, v4
12 (the compressed attentions' share per token; their windows' rings are a constant); text validation loss 2.113
(MHA), 2.130 (GQA-2), 2.144 (MQA), 2.156 (MLA), 2.217 (sparse MLA), 2.056 (CSA), 2.054 (HCA), 2.066 (v4); MQAR
accuracy 71.1% (MHA), 14.9% (MQA), 43.4% (MLA); the decoding step at 64k cached tokens 1.00, 0.48, 0.48, 0.66, 0.11,
0.10, 0.07 and 0.07 of MHA's (single timings: 0.92, 0.35, 0.80, 0.14, 0.09, 0.05, 0.08 in the run at dc3cd89). V4's
attentions read a window of 16 raw tokens beside their entries: on this text, at T=256, that local view beats full
attention's loss with 3-16% of MHA's cache bytes per token. What was tried for MLA's and MQAR's recipes:
docs/probes/kv_cache_ablation.md.
"""

import functools

import jax
import numpy as np

from r1jax import registry
from r1jax.config import Config
from r1jax.data.core import make_dataset
from r1jax.lab import ablation, configs, scaling, sweep
from r1jax.train import resolve_model_config

MLA = "model.mixer_options.mla"
V4_CSA = {"rate": 4, "top_k": 16, "window": 16, "sample_temperature": 1.0}
V4_HCA = {"rate": 16, "window": 16}
VARIANTS = {
  "mha": {"model.mixer": "attention"},
  "gqa2": {"model.mixer": "attention", "model.num_kv_heads": 2},
  "mqa": {"model.mixer": "attention", "model.num_kv_heads": 1},
  "mla": {"model.mixer": "mla", f"{MLA}.kv_rank": 32, f"{MLA}.rope_dim": 16},
  "mla_sparse": {
    "model.mixer": "mla",
    f"{MLA}.kv_rank": 32,
    f"{MLA}.rope_dim": 16,
    f"{MLA}.sparse": True,
    f"{MLA}.indexer.top_k": 16,
    f"{MLA}.indexer.sample_temperature": 1.0,
  },
  # On request, DeepSeek-V4's compressed attentions (r1jax/mixers/compressed.py) scaled to T=256: CSA's entries pool
  # overlapping blocks of 4 tokens, its indexer picks 16 beside a window of 16 (sampled training picks, as
  # mla_sparse's); HCA pools blocks of 16, window 16; v4 interleaves them (layer 1 CSA, layer 2 HCA)
  "csa": configs.mixer("csa", **V4_CSA),
  "hca": configs.mixer("hca", **V4_HCA),
  "v4": configs.v4(2, window_layers=0, window=16, csa=V4_CSA, hca=V4_HCA),
  # On request, probes of MLA's recipe: DeepSeek-V2's RoPE width d_r = d_h / 2 (8), and with it a latent twice
  # as wide (64)
  "mla_r8": {"model.mixer": "mla", f"{MLA}.kv_rank": 32, f"{MLA}.rope_dim": 8},
  "mla_r8_c64": {"model.mixer": "mla", f"{MLA}.kv_rank": 64, f"{MLA}.rope_dim": 8},
}
MODEL = {"model.num_layers": 2, "model.d_model": 64, "model.num_heads": 4, "model.init_std": 0.1}
MQAR = "data.options.mqar"
TASKS = {
  "shakespeare": ablation.override(
    configs.shakespeare_char(),
    {
      **MODEL,
      "model.init_std": 0.02,
      "data.seq_len": 256,
      "data.batch_size": 8,
      "data.eval_batch_size": 16,
      "data.eval_max_batches": 8,
      "optim.lr": 3e-3,
      "train.steps": 300,
      "train.eval_every": 150,
      "train.checkpoint_every": 150,
    },
    "shakespeare",
  ),
  # MQAR at T=64 with 2 heads of 32: 8 pairs in the first 16 tokens, every query at least 24 tokens after its pair
  # (min_gap 0.5), batch 128, lr 1e-2 (mqar_dense's recipe; see the probes in the docstring)
  "mqar": ablation.override(
    configs.mqar(seq_len=64, num_kv_pairs=8),
    {
      **MODEL,
      "model.num_heads": 2,
      "model.ffn": "none",
      f"{MQAR}.vocab_size": 512,
      f"{MQAR}.min_gap": 0.5,
      "data.batch_size": 128,
      "optim.lr": 1e-2,
      "train.steps": 1000,
      "train.eval_every": 500,
      "train.checkpoint_every": 500,
      "data.eval_max_batches": 4,
    },
    "mqar",
  ),
}
# With 2 heads, 2 key/value groups are multi-head attention, and at T=64 sparse MLA's 16 keys are a quarter of the
# context (it trained at 0.45x MHA's tokens/s there): MQAR runs gqa2 and mla_sparse only on request, and V4's csa,
# hca and v4 too (at T=64 CSA's 16 entries are every entry, HCA's blocks of 16 four).
DEFAULT = {
  "shakespeare": ("mha", "gqa2", "mqa", "mla", "mla_sparse", "csa", "hca", "v4"),
  "mqar": ("mha", "mqa", "mla"),
}
QUICK = {"data.batch_size": 8, "data.eval_batch_size": 16}  # with ablation.QUICK: MQAR's 128 rows shrunk too
CONTEXTS = (16384, 65536)
QUICK_CONTEXTS = (256, 512)


@functools.cache
def vocab_size(task: str) -> int:
  """The vocabulary of `task`'s dataset (read once; every variant of a task shares its data)."""
  cfg = Config.from_dict(TASKS[task])
  return make_dataset(cfg.data, cfg.seed).vocab_size


def model_config(name: str, task: str = "shakespeare"):
  """Variant `name`'s model on `task`, its vocabulary taken from the dataset."""
  cfg = Config.from_dict(ablation.override(TASKS[task], VARIANTS[name], name))
  return resolve_model_config(cfg.model, vocab_size(task))


def attention_params(cfg) -> float:
  """Parameters of a layer's mixer (attention projections, MLA's latent projections and norms, the indexers, the
  compressors), averaged over the layers (V4's pattern mixes two mixers)."""
  counts = []
  for name in cfg.layer_names("mixer"):
    module = registry.MIXERS[name].module(cfg, cfg.options("mixer", name))
    shapes = jax.eval_shape(
      lambda m=module: m.init(jax.random.key(0), jax.numpy.zeros((1, 8, cfg.d_model)), deterministic=True)
    )
    counts.append(int(sum(np.prod(a.shape) for a in jax.tree.leaves(shapes))))
  return float(np.mean(counts))


def cache_numbers(cfg) -> float:
  """Numbers a layer caches per token, averaged over the layers (the compressed attentions' per-token share: their
  window's ring is a constant)."""
  counts = []
  for name in cfg.layer_names("mixer"):
    o = cfg.options("mixer", name)
    if name == "mla":
      counts.append(o.cache_per_token(cfg) + (o.indexer.indexer_dim if o.sparse else 0))
    elif hasattr(o, "cache_per_token"):  # csa, hca
      counts.append(o.cache_per_token(cfg))
    else:
      counts.append(2 * (cfg.num_kv_heads or cfg.num_heads) * (cfg.d_model // cfg.num_heads))
  return float(np.mean(counts))


def report(rows_by_task: dict[str, list[dict]], ablations=None) -> tuple[str, dict]:
  """Cache size, parameters, quality and decoding latency per variant, ratios to MHA; saved to report.json, where
  r1jax.claims judges the KV-memory claim."""
  names = list(dict.fromkeys(row["variant"] for rows in rows_by_task.values() for row in rows))
  contexts = QUICK_CONTEXTS if ablation.quick_mode() else CONTEXTS
  models = {n: model_config(n) for n in names}
  decode = sweep.in_worker(scaling.decode_steps, models, contexts)
  base = "mha" if "mha" in names else names[0]
  quality = {t: {r["variant"]: r for r in rows} for t, rows in rows_by_task.items()}
  head = ["variant", "attention params / layer", "cache numbers / token / layer", f"cache bytes / token (/{base})"]
  head += [f"{t} {'val loss' if t == 'shakespeare' else 'accuracy %'}" for t in quality]
  head += [
    f"decode step ms at {C // 1024}k (/{base})" if C >= 1024 else f"decode step ms at {C} (/{base})" for C in contexts
  ]
  lines = [
    "## The KV cache: size, quality and decoding latency (float32 caches, all layers)",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  saved = {"contexts": list(contexts), "variants": {}}
  per_token = {n: decode[n]["cache_bytes"][-1] / contexts[-1] for n in names}
  for n in names:
    saved["variants"][n] = v = {
      "cache_bytes_per_token": per_token[n],
      "step_sec": decode[n]["step_sec"],
      "attention_params": attention_params(models[n]),
      "cache_numbers": cache_numbers(models[n]),
    }
    cells = [
      n,
      f"{v['attention_params']:,.0f}",
      f"{v['cache_numbers']:g}",
      f"{per_token[n]:,.0f} ({per_token[n] / per_token[base]:.2f})",
    ]
    for t, by in quality.items():
      r = by.get(n)
      if r is None:
        cells.append("-")
      elif t == "shakespeare":
        cells.append(f"{r['eval/loss']:.4f} ± {r['eval/loss:std']:.4f}")
      else:
        cells.append(f"{100 * r['eval/accuracy']:.2f} ± {100 * r['eval/accuracy:std']:.2f}")
    for i in range(len(contexts)):
      sec, ref_sec = decode[n]["step_sec"][i], decode[base]["step_sec"][i]
      cells.append(f"{1e3 * sec:.2f} ({sec / ref_sec:.2f})")
    lines.append("| " + " | ".join(cells) + " |")
  lines += [
    "",
    f"Decoding: {models[base].num_layers} layers x {models[base].d_model}, batch 1, an empty cache of C "
    "positions, median of 3 timed scans of 16 steps after a warm-up.",
  ]
  return "\n".join(lines), {"decode": saved, "baseline": base}


if __name__ == "__main__":
  ablation.cli(
    "kv_cache_ablation",
    TASKS,
    VARIANTS,
    seeds=(0, 1, 2),
    baseline="mha",
    quick=QUICK,
    default_variants=DEFAULT,
    report=report,
    workers="auto",
  )
