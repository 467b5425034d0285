"""Hierarchical attention routing: sliding-window layers below and global layers above, learned local/global fusion
(beta fixed, per head, per token) and MoD-style routing of the top-c tokens to global attention, on ListOps and
Tiny Shakespeare; then the seed articles' claims (declared in r1jax/lab/claims.py), measured.

  python experiments/hierarchical_routing_ablation.py             # 5 variants x 3 seeds x 2 tasks, ~10 min (2-core CPU)
  python experiments/hierarchical_routing_ablation.py --quick     # smoke run
  python experiments/hierarchical_routing_ablation.py --variants=  # every variant (schedules, fusions, capacities)
  python experiments/hierarchical_routing_ablation.py --tasks=listops --config.listops.data.seq_len=1024 \
      --config.listops.data.options.listops.min_len=500 \
      --config.listops.train.steps=5000   # LRA-like lengths (GPU-sized)

Routed variants run on ListOps only: their top-c choice looks at the whole sequence (as MoD's training-time
routing), which is harmless for a label read at the last token but leaks the future in next-token prediction.
"""

from r1jax.lab import ablation, configs
from r1jax.lab.analysis import histogram_table, sown

FUSION, ROUTED = "model.mixer_options.fusion", "model.mixer_options.routed"


def schedule(pattern: str) -> dict:
  """A per-layer schedule such as 'LLGG': L = sliding-window (local) layer, G = global layer."""
  return {"model.mixer_pattern": tuple({"L": "local", "G": "attention"}[c] for c in pattern)}


VARIANTS = {
  "global": {"model.mixer": "attention"},
  "local": {"model.mixer": "local"},
  "LLGG": schedule("LLGG"),  # the seed's 'local features below, global above'
  "LGLG": schedule("LGLG"),
  "GGLL": schedule("GGLL"),  # the reverse, as a control
  "fusion_fixed": {"model.mixer": "fusion", f"{FUSION}.beta": "fixed"},  # beta = 0.5
  "fusion_head": {"model.mixer": "fusion", f"{FUSION}.beta": "head"},
  "fusion_token": {"model.mixer": "fusion", f"{FUSION}.beta": "token"},  # NSA's per-token gate
  "routed12": {"model.mixer": "routed", f"{ROUTED}.capacity": 0.125},  # MoD's capacity
  "routed25": {"model.mixer": "routed", f"{ROUTED}.capacity": 0.25},
  "routed50": {"model.mixer": "routed", f"{ROUTED}.capacity": 0.5},
}
DEFAULT = ("global", "local", "LLGG", "fusion_token", "routed25")


def _task(base, window: int, overrides: dict, name: str):
  windows = {f"model.mixer_options.{m}.window": window for m in ("local", "fusion", "routed")}
  return ablation.override(base, {**windows, **overrides}, name)


TASKS = {
  # Expressions of 16-63 tokens; a window of 8 over 4 layers sees at most 29 tokens back from the '='.
  "listops": _task(
    configs.listops(seq_len=64, min_len=16),
    8,
    {
      "model.d_model": 32,
      "model.num_heads": 2,
      "train.steps": 250,
      "train.eval_every": 0,
      "data.options.listops.num_test_examples": 1000,
    },
    "listops",
  ),
  "shakespeare": _task(
    configs.shakespeare_char(),
    16,
    {
      "model.d_model": 32,
      "model.num_heads": 2,
      "data.seq_len": 128,
      "train.steps": 150,
      "train.eval_every": 0,
      "train.checkpoint_every": 0,
      "data.eval_max_batches": 4,
    },
    "shakespeare",
  ),
}
TASK_VARIANTS = {"shakespeare": [v for v in VARIANTS if not v.startswith("routed")]}
LRA_LISTOPS = {"Transformer": 36.37, "Longformer": 35.63, "BigBird": 36.05, "Local Attention": 15.82, "S4": 59.60}


def report(rows_by_task: dict[str, list[dict]], ablations: dict) -> str:
  """Parameters and quality against global attention, and the learned betas per layer (the seed claims' verdicts
  come from r1jax.claims, appended to the report)."""
  lines = [
    "## Against global attention",
    "",
    "| task | variant | params / global | quality / global |",
    "|---|---|---|---|",
  ]
  for task, rows in rows_by_task.items():
    base = next(r for r in rows if r["variant"] == ablations[task].baseline) if ablations[task].baseline else rows[0]
    for row in (r for r in rows if r is not base):
      q = row["eval/accuracy:ratio"] if task == "listops" else 1.0 / row["eval/loss:ratio"]
      lines.append(
        f"| {task} | {row['variant']} | {row['num_params'] / base['num_params']:.3f} | "
        f"{q:.3f} ({100 * (q - 1):+.1f}%) |"
      )
  data = next(iter(ablations["listops"].configs().values())).data if "listops" in ablations else None
  lines += [
    "",
    "quality: test accuracy ratio (ListOps), global loss / variant loss (Shakespeare). A sliding window",
    "changes which keys are read, not the weights, so a local/global schedule has the same parameters.",
    "LRA ListOps at length 2000 (accuracy %): "
    + ", ".join(f"{k} {v}" for k, v in LRA_LISTOPS.items())
    + (f"; this run: {data.opts.min_len}-{data.seq_len - 1} tokens." if data else "."),
  ]
  for task, a in ablations.items():
    seed = a.seeds[0]
    for variant in a.variants:
      if variant.startswith("fusion_") and variant != "fusion_fixed":
        betas = sown(a.configs()[(variant, seed)], "beta")
        lines += [
          "",
          f"### beta per layer: {task} / {variant} (seed {seed}; 1 = local, 0 = global)",
          "",
          histogram_table(betas),
        ]
  return "\n".join(lines)


if __name__ == "__main__":
  ablation.cli(
    "hierarchical_routing_ablation",
    TASKS,
    VARIANTS,
    seeds=(0, 1, 2),
    baseline="global",
    default_variants=DEFAULT,
    report=report,
    task_variants=TASK_VARIANTS,
  )
