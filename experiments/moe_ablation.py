"""Top-k mixture-of-experts feed-forwards against dense SwiGLU on Tiny Shakespeare: equal active and equal total
parameters, top-1/2/4, balancing (Switch aux loss, DeepSeek-V3 aux-free bias, none), a shared expert, capacity vs
dropless dispatch, DeepSeekMoE's fine-grained + shared experts and DeepSeek-V3's routing; then the papers' anchors
and the seed claim (declared in r1jax/claims.py), measured. "Inference" speed is the forward-only throughput of the
evaluation batches.

  python experiments/moe_ablation.py             # 11 variants x 3 seeds, 5-9 min (2-core CPU)
  python experiments/moe_ablation.py --quick     # smoke run
  python experiments/moe_ablation.py --variants=  # every variant (also ragged_dot, z-loss, capacity 1.0 / 2.0)
  python experiments/moe_ablation.py --config.train.steps=2000 --config.model.num_layers=4   # longer (GPU-sized)

Dropless runs use the padded-block grouped matmul: on a CPU, jax.lax.ragged_dot computes every expert densely
(`--variants=top2,ragged` shows the cost; both give the same numbers).
"""

from r1jax import ablation, configs
from r1jax.moe import ffn_params

MOE, F = "model.ffn_options.moe", 128  # F: the dense SwiGLU width and the width of one (coarse) expert


def moe(**options) -> dict:
  return {"model.ffn": "moe", **{f"{MOE}.{k}": v for k, v in {"grouped_matmul": "blocks", **options}.items()}}


FINE = dict(num_experts=32, d_expert=F // 4, top_k=7, num_shared=1)  # DeepSeekMoE: 4x finer, same total/active
VARIANTS = {
    "dense": {},  # the active parameters of one expert
    "dense_8x": {"model.d_ff": 8 * F},  # the total parameters of 8 experts
    "top1": moe(top_k=1),  # Switch
    "top2": moe(top_k=2),  # GShard
    "top4": moe(top_k=4),
    "aux_free": moe(top_k=2, balance="aux_free"),
    "no_balance": moe(top_k=2, balance="none"),
    "shared": moe(top_k=2, num_shared=1),
    "capacity": moe(top_k=2, dispatch="capacity", capacity_factor=1.25),
    "deepseekmoe": moe(**FINE),
    "deepseek_v3": moe(**FINE, score="sigmoid", norm_topk=True, num_groups=4, topk_groups=2, balance="aux_free"),
    "capacity_1": moe(top_k=2, dispatch="capacity", capacity_factor=1.0),
    "capacity_2": moe(top_k=2, dispatch="capacity", capacity_factor=2.0),
    "z_loss": moe(top_k=2, z_weight=1e-3),
    "ragged": moe(top_k=2, grouped_matmul="ragged_dot"),
}
DEFAULT = tuple(VARIANTS)[:11]
BASE = ablation.override(configs.shakespeare_char(), {
    "model.num_layers": 2, "model.d_model": 64, "model.num_heads": 4, "model.d_ff": F, "optim.lr": 3e-3,
    "train.steps": 200, "train.eval_every": 0, "train.checkpoint_every": 0, "data.eval_max_batches": 4,
    f"{MOE}.num_experts": 8, f"{MOE}.d_expert": F}, "moe")
QUICK = {"train.steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3, "data.eval_max_batches": 1}
# DeepSeekMoE (Dai et al. 2024) Table 1, Pile loss at 2B total params; DeepSeek-V3 (2024) Table 5, 1B-scale loss.
ANCHORS = {"dense": 2.060, "top1": 1.881, "top2": 1.867, "deepseekmoe": 1.808}
V3_ANCHOR = {"aux": 2.258, "aux_free": 2.253}


def report(rows_by_task: dict[str, list[dict]], ablations: dict) -> str:
  """Parameters per variant, MoE against the dense model of equal total parameters, and the anchors."""
  (rows,), (a,) = rows_by_task.values(), ablations.values()
  by = {r["variant"]: r for r in rows}
  model = lambda v: a.configs()[(v, a.seeds[0])].model
  base = rows[0]["variant"]  # the table's ratios are to the first variant run ("dense" by default)
  dense_total, dense_active = ffn_params(model(base))
  lines = ["## Feed-forward parameters and cost, measured", "",
           f"| variant | FFN params / {base} | active FFN params / {base} | FLOPs/token / {base} | "
           f"train tok/s / {base} | val loss |", "|---|---|---|---|---|---|"]
  for r in rows:
    total, active = ffn_params(model(r["variant"]))
    lines.append(f"| {r['variant']} | {total / dense_total:.2f} | {active / dense_active:.2f} | "
                 f"{r['perf/flops_per_token:ratio']:.2f} | {r['perf/tokens_per_sec:ratio']:.2f} | "
                 f"{r['eval/loss']:.4f} ± {r['eval/loss:std']:.4f} |")
  if "dense_8x" in by:  # the seed claim's comparison; its verdict comes from r1jax.claims (appended to the report)
    lines += ["", "## MoE against dense_8x (same total parameters): inference is the forward-only eval throughput", "",
              "| variant | inference (eval) tok/s / dense_8x | train tok/s / dense_8x | FLOPs/token / dense_8x | "
              "loss change |", "|---|---|---|---|---|"]
    ratio = lambda v, key: by[v][key] / by["dense_8x"][key]
    for v in [v for v in by if v.startswith(("top", "deepseek"))]:
      lines.append(f"| {v} | {ratio(v, 'perf/eval_tokens_per_sec'):.2f} | {ratio(v, 'perf/tokens_per_sec'):.2f} | "
                   f"{ratio(v, 'perf/flops_per_token'):.2f} | {ratio(v, 'eval/loss') - 1:+.2%} |")
  shown = [v for v in ANCHORS if v in by]
  if shown:
    lines += ["", "DeepSeekMoE Table 1 (Pile loss, lower is better; dense, Switch = top1, GShard = top2): "
              + ", ".join(f"{v} {ANCHORS[v]:.3f}" for v in shown), "measured val loss: "
              + ", ".join(f"{v} {by[v]['eval/loss']:.4f}" for v in shown)]
  if "top2" in by and "aux_free" in by:
    load = lambda v: by[v].get("eval/ffn/max_load", float("nan"))
    lines += [f"DeepSeek-V3 (1B): aux loss {V3_ANCHOR['aux']:.3f} vs aux-free {V3_ANCHOR['aux_free']:.3f}; measured: "
              f"aux {by['top2']['eval/loss']:.4f} (max/mean load {load('top2'):.2f}) vs aux-free "
              f"{by['aux_free']['eval/loss']:.4f} (max/mean load {load('aux_free'):.2f})"]
  return "\n".join(lines)


if __name__ == "__main__":
  ablation.cli("moe_ablation", BASE, VARIANTS, seeds=(0, 1, 2), baseline="dense", quick=QUICK,
               default_variants=DEFAULT, report=report)
