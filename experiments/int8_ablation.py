"""INT8 weights (r1jax/inference/quantize.py, with qwix) on Tiny Shakespeare at the main job's setting (nanoGPT's small
CPU model, 2000 steps), for dense attention and for multi-head latent attention: each model trained in float and then
rounded to INT8 (post-training quantization), and trained on fake-quantized INT8 weights (quantization-aware
training) and then rounded; eval loss and accuracy of the float and the INT8 model over 3 seeds, and the
parameters' bytes in memory and on disk.

  python experiments/int8_ablation.py                    # 4 variants x 3 seeds
  python experiments/int8_ablation.py --quick --seeds=0  # smoke run

The seed articles' claims: 000 "采用8位整数量化,将模型体积压缩至原大小的1/4" (INT8 compresses the model to a quarter of
its size, precision kept); 001 "量化感知训练...使模型在INT8量化后准确率仅下降1.2%" (with QAT, accuracy drops only 1.2%
after INT8 quantization). Decode latency with INT8 weights: `python benchmarks/decode.py --int8_workdir=<a run>`.
"""

from r1jax.lab import ablation, configs

BASE = ablation.override(configs.shakespeare_char(), {"train.evaluators": ("timed", "bpc", "int8")}, "int8_ablation")
MLA = {"model.mixer": "mla"}
VARIANTS = {
  "float": {},  # the main job's model; INT8 after training
  "qat": {"model.quant": "int8"},
  "mla_float": MLA,
  "mla_qat": {**MLA, "model.quant": "int8"},
}


def report(rows_by_task: dict[str, list[dict]], ablations: dict) -> tuple[str, dict]:
  """Per variant: the float model's and the INT8 model's eval loss and accuracy, the drops, and the sizes."""
  (rows,), _ = rows_by_task.values(), ablations
  lines = [
    "## INT8 weights: quality and size (eval split, mean ± std over seeds)",
    "",
    "| variant | loss (as trained) | INT8 loss | loss change | accuracy (as trained) | INT8 accuracy | accuracy "
    "change (points) | bytes in memory: float, INT8 (ratio) | on disk (ratio) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  facts = {}
  for r in rows:
    f = {
      "loss": r["eval/loss"],
      "int8_loss": r["eval/int8/loss"],
      "accuracy": r["eval/accuracy"],
      "int8_accuracy": r["eval/int8/accuracy"],
      "memory_ratio": r["eval/int8/memory_bytes"] / r["eval/float/memory_bytes"],
      "disk_ratio": r["eval/int8/disk_bytes"] / r["eval/float/disk_bytes"],
    }
    facts[r["variant"]] = f
    lines.append(
      f"| {r['variant']} | {f['loss']:.4f} ± {r['eval/loss:std']:.4f} | {f['int8_loss']:.4f} ± "
      f"{r['eval/int8/loss:std']:.4f} | {f['int8_loss'] / f['loss'] - 1:+.2%} | {f['accuracy']:.2%} | "
      f"{f['int8_accuracy']:.2%} | {100 * (f['int8_accuracy'] - f['accuracy']):+.2f} | "
      f"{r['eval/float/memory_bytes']:,.0f}, {r['eval/int8/memory_bytes']:,.0f} ({f['memory_ratio']:.3f}) | "
      f"{f['disk_ratio']:.3f} |"
    )
  if "float" in facts and "qat" in facts:
    base = facts["float"]
    lines += [
      "",
      f"QAT against float training, both in INT8: loss {facts['qat']['int8_loss'] / base['int8_loss'] - 1:+.2%}, "
      f"accuracy {100 * (facts['qat']['int8_accuracy'] - base['int8_accuracy']):+.2f} points; against the float "
      f"model in float: loss {facts['qat']['int8_loss'] / base['loss'] - 1:+.2%}, accuracy "
      f"{100 * (facts['qat']['int8_accuracy'] - base['accuracy']):+.2f} points.",
    ]
  return "\n".join(lines), {"int8": facts}


if __name__ == "__main__":
  ablation.cli("int8_ablation", BASE, VARIANTS, seeds=(0, 1, 2), baseline="float", report=report, workers="auto")
