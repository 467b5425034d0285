"""Multi-token prediction (DeepSeek-V3, arXiv:2412.19437, section 2.2) on Tiny Shakespeare at the main job's setting
(nanoGPT's small CPU model, 2000 steps): the main head's text loss with D = 0, 1 and 2 MTP modules (lambda = 0.3)
over 3 seeds, and each depth's teacher-forced acceptance rate (how often its top-1 equals the main head's prediction
of that token: what a self-speculative draft of it would need).

  python experiments/mtp_ablation.py                    # 3 variants x 3 seeds
  python experiments/mtp_ablation.py --quick --seeds=0  # smoke run

Anchors: DeepSeek-V3 reports 85-90% acceptance of the second token with one module at 671B parameters (1.8x tokens
per second); Gloeckle et al. (arXiv:2404.19737) find that multi-token prediction hurts models below about 1B
parameters. This model has 0.8M, so expect the main head to pay for the modules, and measure how much.
"""

from r1jax.lab import ablation, configs

BASE = configs.shakespeare_char()
VARIANTS = {
  "d0": {},  # the main job's model
  "d1": {"model.mtp_depth": 1},
  "d2": {"model.mtp_depth": 2},
}


def report(rows_by_task: dict[str, list[dict]], ablations: dict) -> tuple[str, dict]:
  """The main head's loss against D = 0, and per depth its loss, accuracy and teacher-forced acceptance rate."""
  (rows,), (a,) = rows_by_task.values(), ablations.values()
  base = next(r for r in rows if r["variant"] == "d0") if any(r["variant"] == "d0" for r in rows) else rows[0]
  lines = [
    "## Multi-token prediction: the main head's cost and the modules' acceptance (eval split, mean ± std over seeds)",
    "",
    f"| variant | params | main-head loss | / {base['variant']} | depth k: loss, top-1 accuracy, acceptance |",
    "|---|---|---|---|---|",
  ]
  facts = {}
  for r in rows:
    depth = a.configs()[(r["variant"], a.seeds[0])].model.mtp_depth
    per_depth = []
    for k in range(1, depth + 1):
      m = {f: r[f"eval/mtp/{f}{k}"] for f in ("loss", "accuracy", "accept")}
      per_depth.append(m)
      std = r.get(f"eval/mtp/accept{k}:std", 0.0)
      per_depth[-1]["accept_std"] = std
    text = "; ".join(
      f"{k}: {m['loss']:.3f}, {m['accuracy']:.1%}, {m['accept']:.1%} ± {m['accept_std']:.1%}"
      for k, m in enumerate(per_depth, 1)
    )
    lines.append(
      f"| {r['variant']} | {r['num_params']:,.0f} | {r['eval/loss']:.4f} ± {r['eval/loss:std']:.4f} | "
      f"{r['eval/loss'] / base['eval/loss']:.3f} | {text or '-'} |"
    )
    facts[r["variant"]] = {"depth": depth, "loss": r["eval/loss"], "loss_std": r["eval/loss:std"], "depths": per_depth}
  return "\n".join(lines), {"mtp": facts}


if __name__ == "__main__":
  ablation.cli("mtp_ablation", BASE, VARIANTS, seeds=(0, 1, 2), baseline="d0", report=report, workers="auto")
