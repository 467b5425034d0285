"""Reporting: a run's result.json, an ablation's table (mean ± std, ratios to a named baseline), its JSON/CSV/markdown
files and plots, all written atomically. Figures are `matplotlib.figure.Figure`s: no global backend is switched, so
a notebook that calls this keeps showing its own figures."""

import csv
import dataclasses
import io
import json
import math
import os
from typing import Any

import numpy as np

from r1jax.atomic import save_figure, write_record, write_text

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
RATIOS = (
  "eval/loss",
  "eval/accuracy",
  "perf/flops_per_token",
  "perf/tokens_per_sec",
  "perf/eval_tokens_per_sec",
  "perf/memory_bytes",
)


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
  """COLUMNS plus one per mixer/ffn eval diagnostic (averaged over layers), multi-token prediction metric and INT8
  evaluator metric (r1jax/evaluators.py) that any run reported."""
  keys = dict.fromkeys(
    k.split(":")[0]
    for r in rows_or_flats
    for k in r
    if k.startswith(("eval/mixer/", "eval/ffn/", "eval/mtp/", "eval/int8/", "eval/float/")) and "/layer" not in k
  )
  return COLUMNS + tuple((k, k[len("eval/") :], "{:.3f}", 1.0) for k in keys)


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
  head = (
    ["variant", "seeds"]
    + [title for _, title, *_ in cols]
    + [f"{k.split('/')[-1]} / {baseline}" for k in RATIOS]
    + (["failed runs"] if failures else [])
  )
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


def scale(result: dict) -> dict[str, Any]:
  """What a run's numbers hold at: model size, data, length, steps and backend (kept in results.json)."""
  c = result["config"]
  return {
    "num_layers": c["model"]["num_layers"],
    "d_model": c["model"]["d_model"],
    "data": c["data"]["kind"],
    "seq_len": c["data"]["seq_len"],
    "steps": c["train"]["steps"],
    "backend": result["perf"].get("backend", "?"),
  }


def curve(result: dict) -> dict[str, list]:
  """A run's evaluations over training, {"step": [...], "eval/loss": [...], "eval/accuracy": [...]}, and its logged
  train loss, {"train_step": [...], "train/loss": [...]} (kept in results.json)."""
  evals = [r for r in result["history"] if "eval/loss" in r]
  keys = [k for k in ("eval/loss", "eval/accuracy") if evals and k in evals[0]]
  train = [r for r in result["history"] if "train/loss" in r]
  return {
    "step": [r["step"] for r in evals],
    **{k: [r[k] for r in evals] for k in keys},
    "train_step": [r["step"] for r in train],
    "train/loss": [r["train/loss"] for r in train],
  }


def summary(name: str, sweep_id: str, baseline: str, results: dict[tuple[str, int], dict]) -> dict:
  """An ablation's results.json: the rows (mean ± std, ratios), each run's flat metrics, scale and eval curve. It is
  self-contained (no checkpoints or per-run files needed), so a committed copy can be plotted and judged."""
  done = {f"{v}/seed{s}": r for (v, s), r in results.items() if "failed" not in r}
  return {
    "name": name,
    "sweep_id": sweep_id,
    "baseline": baseline,
    "rows": summarise(results, baseline),
    "runs": {f"{v}/seed{s}": flat(r) for (v, s), r in results.items()},
    "scale": {label: scale(r) for label, r in done.items()},
    "curves": {label: curve(r) for label, r in done.items()},
    # where each run came from (its result.json's; None for one written before r1jax recorded it)
    "runs_provenance": {label: r.get("provenance") for label, r in done.items()},
  }


def plot(saved: dict) -> dict[str, Any]:
  """{"learning_curves": train loss (logged) with the eval points, and eval accuracy where the task has one, against
  step (mean over finished seeds, band min-max), "quality_vs_flops"} of a results.json (`summary`), as matplotlib
  Figures (display them in a notebook, or save them)."""
  from matplotlib.figure import Figure

  rows = saved["rows"]
  scored = any("eval/accuracy" in c for c in saved["curves"].values())  # a task with an accuracy of its own
  curves_fig = Figure(figsize=(11 if scored else 6, 4), layout="tight")
  axes = curves_fig.subplots(1, 2 if scored else 1, squeeze=False)[0]
  for i, row in enumerate(rows):
    curves = [c for label, c in saved["curves"].items() if label.split("/")[0] == row["variant"]]
    if not curves:
      continue
    color = f"C{i % 10}"
    if all(c.get("train_step") for c in curves):  # mean train loss over seeds, as logged
      steps = sorted(set.intersection(*(set(c["train_step"]) for c in curves)))
      train = np.array([[dict(zip(c["train_step"], c["train/loss"]))[s] for s in steps] for c in curves])
      axes[0].plot(steps, train.mean(0), color=color, lw=1, alpha=0.7)
    for ax, key in zip(axes, ("eval/loss", "eval/accuracy")):
      steps = sorted(set.intersection(*(set(c["step"]) for c in curves)))
      vals = np.array([[dict(zip(c["step"], c[key]))[s] for s in steps] for c in curves])
      ax.plot(
        steps, vals.mean(0), marker="o", ms=4, ls="--" if key == "eval/loss" else "-", color=color, label=row["variant"]
      )
      if len(curves) > 1:
        ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.2, color=color)
  axes[0].set(
    xlabel="step", ylabel="loss (nats/token)", title="train loss (line) and eval loss (points); mean over seeds"
  )
  if scored:
    axes[1].set(xlabel="step", ylabel="eval accuracy", title="task accuracy (band: min-max over seeds)")
  axes[0].legend(fontsize=8)
  cost_fig = Figure(figsize=(6, 4), layout="tight")
  ax = cost_fig.subplots()
  for row in rows:
    if row["seeds"]:
      ax.errorbar(
        row["perf/flops_per_token"],
        row["eval/loss"],
        yerr=row["eval/loss:std"] if row["seeds"] > 1 else None,
        fmt="o",
        capsize=3,
      )
      ax.annotate(row["variant"], (row["perf/flops_per_token"], row["eval/loss"]), fontsize=8)
  ax.set(
    xscale="log",
    xlabel="train FLOPs per token (compiled step)",
    ylabel="eval loss (nats/token)",
    title="quality vs cost",
  )
  return {"learning_curves": curves_fig, "quality_vs_flops": cost_fig}


def group_accuracy(saved: dict) -> dict[str, dict[str, float]]:
  """variant -> {group: accuracy, mean over its seeds} from the per-group metrics (`eval/accuracy/<group>`, e.g. the
  passkey's `len256/depth0.2-0.4`) of a results.json (`summary`); {} when the task has no groups."""
  by: dict[str, dict[str, list[float]]] = {}
  for label, metrics in saved["runs"].items():
    for k, v in metrics.items():
      if k.startswith("eval/accuracy/"):
        by.setdefault(label.split("/")[0], {}).setdefault(k[len("eval/accuracy/") :], []).append(v)
  return {variant: {g: float(np.mean(v)) for g, v in groups.items()} for variant, groups in by.items()}


def depth_figure(acc: dict[str, dict[str, float]], chance: float = 0.1):
  """Accuracy against needle depth, one panel per context length, from `group_accuracy` of a passkey run (groups
  named len<L>/depth<a>-<b>); a matplotlib Figure."""
  from matplotlib.figure import Figure

  groups = list(next(iter(acc.values())))
  lengths = list(dict.fromkeys(g.split("/")[0] for g in groups))
  fig = Figure(figsize=(5 * len(lengths), 3.6), layout="tight")
  axes = fig.subplots(1, len(lengths), squeeze=False)[0]
  for variant, a in acc.items():
    for ax, n in zip(axes, lengths):
      mine = [g for g in groups if g.startswith(n + "/")]
      lo_hi = [tuple(map(float, g.split("depth")[1].split("-"))) for g in mine]
      ax.plot([(lo + hi) / 2 for lo, hi in lo_hi], [a[g] for g in mine], marker="o", label=variant)
  for ax, n in zip(axes, lengths):
    ax.axhline(chance, color="k", ls=":", label=f"chance ({chance:g})")
    ax.set(
      xlabel="needle depth (fraction of the context, bin centre)",
      ylabel="digit accuracy",
      ylim=(0, 1.02),
      title=f"passkey, context of {n[3:]} characters",
    )
  axes[-1].legend(fontsize=7)
  return fig


REF_STYLES = (("k", "--"), ("tab:red", ":"), ("tab:gray", "-."))  # reference lines of a panel, in order


@dataclasses.dataclass(frozen=True)
class Panel:
  """One bar panel of `bars`: a results column, its axis label (with units), a display scale and reference lines
  ((value, legend label), e.g. chance or a published anchor; at most len(REF_STYLES))."""

  key: str
  label: str
  scale: float = 1.0
  refs: tuple[tuple[float, str], ...] = ()


def bars(rows: list[dict], panels: list[Panel], title: str = "") -> Any:
  """A Figure with one bar panel per column of a results table: the mean over seeds, error bars (std) only where a
  row has several seeds, reference lines in the legend, and a log axis where the values span two decades or more."""
  from matplotlib.figure import Figure

  fig = Figure(figsize=(3.6 * len(panels), 3.2), layout="constrained")
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  names = [r["variant"] for r in rows]
  for ax, p in zip(axes, panels):
    vals = np.array([r.get(p.key, np.nan) for r in rows], np.float64) * p.scale
    errs = [r.get(p.key + ":std", 0.0) * p.scale if r.get("seeds", 1) > 1 else 0.0 for r in rows]
    ax.bar(names, vals, yerr=errs, capsize=3)
    for (value, label), (color, style) in zip(p.refs, REF_STYLES):
      ax.axhline(value, color=color, lw=1.0, ls=style, label=label)
    positive = vals[np.isfinite(vals) & (vals > 0)]
    if len(positive) and positive.max() / positive.min() >= 100:
      ax.set_yscale("log")
    ax.set_ylabel(p.label)
    ax.tick_params(axis="x", rotation=45)
    if p.refs:
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  return fig


def load_summary(folder: str) -> dict:
  """An ablation's results.json (`summary`) from its folder, e.g. a committed one under results/<driver>/[<task>]."""
  path = os.path.join(folder, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no results. Fix: run the experiment driver that writes this folder.")
  with open(path) as f:
    return json.load(f)


def paired(saved: dict, first: str, second: str, key: str = "eval/loss") -> np.ndarray:
  """Per-seed differences first - second of a result key, over the seeds both variants finished (in a driver every
  variant of a seed sees the same batches, so these differences cancel the seed's shared noise)."""
  runs = {label: run for label, run in saved["runs"].items() if "failed" not in run}
  seeds = sorted(
    {label.split("/")[1] for label in runs if label.startswith(f"{first}/")}
    & {label.split("/")[1] for label in runs if label.startswith(f"{second}/")}
  )
  return np.array([runs[f"{first}/{s}"][key] - runs[f"{second}/{s}"][key] for s in seeds])


def write_summary(
  out_dir: str, name: str, sweep_id: str, baseline: str, results: dict[tuple[str, int], dict]
) -> tuple[list[dict], str]:
  """results.json / .csv / .md and the plots of an ablation in `out_dir`; returns (rows, markdown table)."""
  saved = summary(name, sweep_id, baseline, results)
  rows = saved["rows"]
  table = markdown_table(rows, baseline)
  write_record(os.path.join(out_dir, "results.json"), saved)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  write_text(os.path.join(out_dir, "results.csv"), buf.getvalue())
  write_text(os.path.join(out_dir, "results.md"), f"# {name}\n\n{table}\n")
  for fname, fig in plot(saved).items():
    save_figure(os.path.join(out_dir, f"{fname}.png"), fig, dpi=120)
  return rows, table
