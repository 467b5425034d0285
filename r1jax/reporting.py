"""Reporting: a run's result.json, an ablation's table (mean ± std, ratios to a named baseline), its JSON/CSV/markdown
files and plots, all written atomically. Figures are `matplotlib.figure.Figure`s: no global backend is switched, so
a notebook that calls this keeps showing its own figures."""

import csv
import io
import json
import math
import os
from typing import Any

import numpy as np

# (result key, column title, how to format a value, display scale); quality first, then cost.
COLUMNS = (
    ("eval/loss", "eval loss", "{:.4f}", 1.0),
    ("eval/accuracy", "eval acc", "{:.4f}", 1.0),
    ("num_params", "params", "{:,.0f}", 1.0),
    ("perf/flops_per_token", "FLOPs/token", "{:.3g}", 1.0),
    ("perf/tokens_per_sec", "train tok/s", "{:,.0f}", 1.0),
    ("perf/eval_tokens_per_sec", "eval tok/s", "{:,.0f}", 1.0),  # forward only (inference-like), after compile
    ("perf/memory_bytes", "memory MiB", "{:.1f}", 2.0**-20),
    ("perf/wall_sec", "wall s", "{:.0f}", 1.0),
)
RATIOS = ("eval/loss", "eval/accuracy", "perf/flops_per_token", "perf/tokens_per_sec", "perf/eval_tokens_per_sec",
          "perf/memory_bytes")
RESULT_FILE = "result.json"  # a finished run's result, in its workdir


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically: a killed process never leaves a half-written file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=1))


def save_result(result: dict) -> None:
  """<workdir>/result.json of a finished run (nothing without a workdir); the one place a run's result is written."""
  workdir = result["config"]["workdir"]
  if workdir:
    write_json(os.path.join(workdir, RESULT_FILE), result)


def failed_result(config: dict, reason: str) -> dict:
  """What an ablation keeps of a run that stopped (e.g. on a non-finite loss): its config and why."""
  return {"config": config, "failed": reason}


def flat(result: dict) -> dict[str, Any]:
  """A run's final metrics and perf as one flat dict; a failed run's is {"failed": reason}."""
  if "failed" in result:
    return {"failed": result["failed"]}
  out = {"num_params": result["num_params"], **result["final"]}
  out.update({f"perf/{k}": v for k, v in result["perf"].items() if isinstance(v, (int, float))})
  return out


def _mean_std(values: list[float]) -> tuple[float, float]:
  arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
  if not len(arr):
    return float("nan"), float("nan")
  return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def columns(rows_or_flats: list[dict]) -> tuple:
  """COLUMNS plus one per mixer/ffn eval diagnostic (averaged over layers) that any run reported."""
  keys = dict.fromkeys(k.split(":")[0] for r in rows_or_flats for k in r
                       if k.startswith(("eval/mixer/", "eval/ffn/")) and "/layer" not in k)
  return COLUMNS + tuple((k, k[len("eval/"):], "{:.3f}", 1.0) for k in keys)


def summarise(results: dict[tuple[str, int], dict], baseline: str) -> list[dict]:
  """One row per variant: mean and std over its finished seeds of every column, mean ratios to the `baseline`
  variant's row, and `failed` ("seedN: reason; ..." for runs that stopped, "" if none)."""
  rows = []
  variants = list(dict.fromkeys(v for v, _ in results))
  if baseline not in variants:
    raise ValueError(f"baseline {baseline!r} is not among the variants {variants}")
  flats = {key: flat(r) for key, r in results.items()}
  cols = columns(list(flats.values()))
  for variant in variants:
    mine = {s: f for (v, s), f in flats.items() if v == variant}
    done = [f for f in mine.values() if "failed" not in f]
    row = {"variant": variant, "seeds": len(done)}
    for key, *_ in cols:
      row[key], row[key + ":std"] = _mean_std([f.get(key) for f in done])
    row["failed"] = "; ".join(f"seed{s}: {f['failed']}" for s, f in mine.items() if "failed" in f)
    rows.append(row)
  base = next(r for r in rows if r["variant"] == baseline)
  for row in rows:
    for key in RATIOS:
      row[key + ":ratio"] = row[key] / base[key] if base[key] else float("nan")
  return rows


def markdown_table(rows: list[dict], baseline: str) -> str:
  """The table, values as mean +- std over seeds, then ratios to the baseline variant (and failed runs, if any)."""
  cols = columns(rows)
  failures = any(row.get("failed") for row in rows)
  head = (["variant", "seeds"] + [title for _, title, *_ in cols] + [f"{k.split('/')[-1]} / {baseline}" for k in RATIOS]
          + (["failed runs"] if failures else []))
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    cells = [row["variant"], str(row["seeds"])]
    for key, _, fmt, scale in cols:
      mean, std = row[key] * scale, row[key + ":std"] * scale
      cells.append("n/a" if math.isnan(mean) else fmt.format(mean) + (f" ± {fmt.format(std)}" if std else ""))
    cells += ["n/a" if math.isnan(row[k + ":ratio"]) else f"{row[k + ':ratio']:.3f}" for k in RATIOS]
    if failures:
      cells.append(row.get("failed") or "-")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(results: dict[tuple[str, int], dict], rows: list[dict]) -> dict[str, Any]:
  """{"learning_curves": eval loss against step (mean over finished seeds, band min-max), "quality_vs_flops"}, as
  matplotlib Figures (display them in a notebook, or save them)."""
  from matplotlib.figure import Figure

  curves_fig = Figure(figsize=(6, 4), layout="tight")
  ax = curves_fig.subplots()
  for row in rows:
    curves = [[(r["step"], r["eval/loss"]) for r in res["history"] if "eval/loss" in r]
              for (v, _), res in results.items() if v == row["variant"] and "failed" not in res]
    if not curves:
      continue
    steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
    losses = np.array([[dict(c)[s] for s in steps] for c in curves])
    ax.plot(steps, losses.mean(0), marker="o", ms=3, label=row["variant"])
    if len(curves) > 1:
      ax.fill_between(steps, losses.min(0), losses.max(0), alpha=0.2)
  ax.set(xlabel="step", ylabel="eval loss (nats/token)", title="learning curves (band: min-max over seeds)")
  ax.legend()
  cost_fig = Figure(figsize=(6, 4), layout="tight")
  ax = cost_fig.subplots()
  for row in rows:
    if row["seeds"]:
      ax.errorbar(row["perf/flops_per_token"], row["eval/loss"], yerr=row["eval/loss:std"] if row["seeds"] > 1
                  else None, fmt="o", capsize=3)
      ax.annotate(row["variant"], (row["perf/flops_per_token"], row["eval/loss"]), fontsize=8)
  ax.set(xscale="log", xlabel="train FLOPs per token (compiled step)", ylabel="eval loss (nats/token)",
         title="quality vs cost")
  return {"learning_curves": curves_fig, "quality_vs_flops": cost_fig}


def write_summary(out_dir: str, name: str, sweep_id: str, baseline: str,
                  results: dict[tuple[str, int], dict]) -> tuple[list[dict], str]:
  """results.json / .csv / .md and the plots of an ablation in `out_dir`; returns (rows, markdown table)."""
  rows = summarise(results, baseline)
  table = markdown_table(rows, baseline)
  write_json(os.path.join(out_dir, "results.json"), {
      "name": name, "sweep_id": sweep_id, "baseline": baseline, "rows": rows,
      "runs": {f"{v}/seed{s}": flat(r) for (v, s), r in results.items()}})
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  write_text(os.path.join(out_dir, "results.csv"), buf.getvalue())
  write_text(os.path.join(out_dir, "results.md"), f"# {name}\n\n{table}\n")
  for fname, fig in plot(results, rows).items():
    tmp = os.path.join(out_dir, f"{fname}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, os.path.join(out_dir, f"{fname}.png"))
  return rows, table
