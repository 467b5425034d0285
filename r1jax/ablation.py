"""Ablation runner: a base config + named variants (config overrides) x seeds -> table, JSON/CSV/markdown, plots."""

import csv
import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from r1jax.checkpoint import check_same_config
from r1jax import sweep
from r1jax.config import Config, to_dict
from r1jax.registry import ConfigError

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


def override(base: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str) -> ml_collections.ConfigDict:
  """A copy of `base` with dotted-key overrides, e.g. {"model.num_layers": 2}; unknown keys raise ConfigError."""
  cfg = ml_collections.ConfigDict(base.to_dict())
  for dotted, value in overrides.items():
    *path, leaf = dotted.split(".")
    node = cfg
    for part in path:
      if part not in node:
        raise ConfigError(f"{where}: unknown config field {dotted!r}. Fix: use a field of the base config.")
      node = node[part]
    if leaf not in node and not (path and path[-1].endswith("_options")):
      raise ConfigError(f"{where}: unknown config field {dotted!r}. Fix: use a field of the base config.")
    node[leaf] = value
  return cfg


@dataclasses.dataclass(frozen=True)
class Ablation:
  """A declarative ablation. Every variant is validated before anything trains."""

  name: str
  base: ml_collections.ConfigDict
  variants: Mapping[str, Mapping[str, Any]]  # variant name -> dotted overrides of `base`
  seeds: Sequence[int] = (0, 1, 2)
  baseline: str = ""  # variant the ratios are taken against; "" = the first variant
  results_dir: str = ""  # "" = ./results/<name>

  def configs(self) -> dict[tuple[str, int], Config]:
    if self.baseline and self.baseline not in self.variants:
      raise ConfigError(f"baseline={self.baseline!r} is not a variant. Fix: use one of {list(self.variants)}.")
    out = {}
    root = os.path.abspath(self.results_dir or os.path.join("results", self.name))
    for variant, overrides in self.variants.items():
      for seed in self.seeds:
        cfg = override(self.base, {**overrides, "seed": seed,
                                   "workdir": os.path.join(root, variant, f"seed{seed}")}, f"variant {variant!r}")
        out[(variant, seed)] = Config.from_dict(cfg)
    return out


def _flat(result: dict) -> dict[str, float]:
  flat = {"num_params": result["num_params"], **result["final"]}
  flat.update({f"perf/{k}": v for k, v in result["perf"].items() if isinstance(v, (int, float))})
  return flat


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
  """One row per variant: mean and std over seeds of every column, and mean ratios to the baseline."""
  rows = []
  variants = list(dict.fromkeys(v for v, _ in results))
  cols = columns([_flat(r) for r in results.values()])
  for variant in variants:
    flats = [_flat(r) for (v, _), r in results.items() if v == variant]
    row = {"variant": variant, "seeds": len(flats)}
    for key, *_ in cols:
      row[key], row[key + ":std"] = _mean_std([f.get(key) for f in flats])
    rows.append(row)
  base = next(r for r in rows if r["variant"] == (baseline or variants[0]))
  for row in rows:
    for key in RATIOS:
      row[key + ":ratio"] = row[key] / base[key] if base[key] else float("nan")
  return rows


def markdown_table(rows: list[dict], baseline: str) -> str:
  """The table, values as mean +- std over seeds, then ratios to the baseline variant."""
  cols = columns(rows)
  head = ["variant", "seeds"] + [title for _, title, *_ in cols] + [f"{k.split('/')[-1]} / {baseline}"
                                                                    for k in RATIOS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    cells = [row["variant"], str(row["seeds"])]
    for key, _, fmt, scale in cols:
      mean, std = row[key] * scale, row[key + ":std"] * scale
      cells.append("n/a" if math.isnan(mean) else fmt.format(mean) + (f" ± {fmt.format(std)}" if std else ""))
    cells += ["n/a" if math.isnan(row[k + ":ratio"]) else f"{row[k + ':ratio']:.3f}" for k in RATIOS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)  # atomic: a killed run never leaves a half-written result


def plot(results: dict[tuple[str, int], dict], rows: list[dict], out_dir: str) -> list[str]:
  """learning_curves.png (eval loss vs step, mean over seeds) and quality_vs_flops.png; returns the paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for row in rows:
    curves = [[(r["step"], r["eval/loss"]) for r in res["history"] if "eval/loss" in r]
              for (v, _), res in results.items() if v == row["variant"]]
    steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
    losses = np.array([[dict(c)[s] for s in steps] for c in curves])
    ax.plot(steps, losses.mean(0), marker="o", ms=3, label=row["variant"])
    if len(curves) > 1:
      ax.fill_between(steps, losses.min(0), losses.max(0), alpha=0.2)
  ax.set(xlabel="step", ylabel="eval loss", title="learning curves (band: min-max over seeds)")
  ax.legend()
  paths = [os.path.join(out_dir, "learning_curves.png"), os.path.join(out_dir, "quality_vs_flops.png")]
  fig.tight_layout()
  fig.savefig(paths[0], dpi=120)
  fig, ax = plt.subplots(figsize=(6, 4))
  for row in rows:
    ax.errorbar(row["perf/flops_per_token"], row["eval/loss"], yerr=row["eval/loss:std"], fmt="o", capsize=3)
    ax.annotate(row["variant"], (row["perf/flops_per_token"], row["eval/loss"]), fontsize=8)
  ax.set(xscale="log", xlabel="train FLOPs per token (compiled step)", ylabel="eval loss", title="quality vs cost")
  fig.tight_layout()
  fig.savefig(paths[1], dpi=120)
  plt.close("all")
  return paths


def run(ablation: Ablation, train_fn: Callable[[Config], dict] | None = None, log=print,
        workers: int = 1, launcher: Any = None) -> list[dict]:
  """Trains every (variant, seed) not already finished, then writes and prints the summary.

  Finished runs are those with a result.json of the same config (model, data, optim, seed and train.steps; a stale
  one raises ConfigError); an interrupted run resumes from its checkpoints. `launcher` (r1jax.sweep) says where
  runs train; the default is this process, or `workers` fresh one-thread processes at once (see LocalLauncher).
  The sweep's id and where each run was launched are kept in <results>/sweep.json.
  """
  launcher = launcher or sweep.LocalLauncher(workers, train_fn)
  configs = ablation.configs()  # validates every variant first
  out_dir = os.path.abspath(ablation.results_dir or os.path.join("results", ablation.name))
  labels = {f"{v}/seed{s}": (v, s) for v, s in configs}
  record = sweep.SweepRecord.open(out_dir, ablation.name, {label: configs[key] for label, key in labels.items()})
  os.makedirs(out_dir, exist_ok=True)
  results, todo = {}, []
  for label, key in labels.items():
    cfg = configs[key]
    path = os.path.join(cfg.workdir, "result.json")
    if os.path.exists(path):
      with open(path) as f:
        results[key] = json.load(f)
      saved, current = results[key]["config"], to_dict(cfg)
      if current["model"]["vocab_size"] == 0:  # filled from the data by the run (and the data must match)
        current["model"]["vocab_size"] = saved["model"]["vocab_size"]
      check_same_config(saved, current, f"{path!r}", sweep.RUN_KEYS)
      log(f"{label}: finished earlier, skipping")
    else:
      os.makedirs(cfg.workdir, exist_ok=True)
      todo.append((label, cfg))
  log(f"sweep {ablation.name} ({record.id}): {len(labels)} runs, {len(labels) - len(todo)} finished")
  record.save()

  def finish(label: str, result: dict) -> None:
    results[labels[label]] = result
    write_json(os.path.join(configs[labels[label]].workdir, "result.json"), result)

  if todo:
    launcher.launch(todo, finish, log, record)
  results = {key: results[key] for key in configs}  # in the ablation's order, however runs finished
  baseline = ablation.baseline or next(iter(ablation.variants))
  rows = summarise(results, baseline)
  table = markdown_table(rows, baseline)
  write_json(os.path.join(out_dir, "results.json"), {"name": ablation.name, "sweep_id": record.id,
                                                     "baseline": baseline, "rows": rows,
                                                     "runs": {f"{v}/seed{s}": _flat(r)
                                                              for (v, s), r in results.items()}})
  with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(f"# {ablation.name}\n\n{table}\n")
  plot(results, rows, out_dir)
  log(f"\n{ablation.name}: mean ± std over seeds; ratios to '{baseline}'\n{table}\nresults: {out_dir}")
  return rows


def task_plan(variants: Mapping[str, Any], asked: Sequence[str] | None, task: str,
              defaults: Mapping[str, Sequence[str]] | None = None,
              limits: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
  """The variants `task` runs: those asked for (all if empty), or the task's defaults when nothing was asked
  (asked=None), within limits[task] (default: no limit); in the order of `variants`."""
  wanted = (defaults or {}).get(task, variants) if asked is None else (asked or variants)
  allowed = (limits or {}).get(task, variants)
  return {k: v for k, v in variants.items() if k in wanted and k in allowed}


def cli(name: str, base: ml_collections.ConfigDict | Mapping[str, ml_collections.ConfigDict],
        variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int] = (0, 1, 2), baseline: str = "",
        quick: Mapping[str, Any] | None = None,
        default_variants: Sequence[str] | Mapping[str, Sequence[str]] = (),
        report: Callable[[dict[str, list[dict]], dict[str, "Ablation"]], str | tuple[str, dict]] | None = None,
        task_variants: Mapping[str, Sequence[str]] | None = None, workers: int | str = 1) -> None:
  """Command line of an experiment driver: `--config.a.b=v` overrides of the base, and

    --quick           apply the driver's smoke-test overrides first (command-line overrides still win)
    --seeds=0,1,2     seeds          --variants=a,b   a subset of the variants (default: default_variants or all)
    --results_dir=D   where runs and tables go (default ./results/<name>)
    --workers=N       runs trained at once, in processes of one CPU thread each (auto: 2 on a CPU machine with
                      >= 2 cores, else 1; see `run`); the driver's default is `workers`
    --launcher=slurm  submit the runs as a SLURM job array instead (r1jax.sweep), resources from --slurm.<field>
                      (partition, time_min, nodes, tasks_per_node, gpus_per_node, ...); rerunning waits on the
                      jobs still queued and submits only what is missing

  With several tasks (`base` a dict task -> config), every variant runs on every task, overrides are
  `--config.<task>.a.b=v`, `--tasks=a,b` picks tasks, and each task gets its table under <results_dir>/<task>.
  `task_variants[task]` limits a task to some variants (default: all); `default_variants` may also be a dict
  task -> the variants that task runs when --variants is not given. `report(rows per task, ablations per
  task)` returns extra text (e.g. the measured claims), printed and saved as report.md, or (text, a JSON-able dict
  of measurements the tables lack), the dict saved as report.json for the claims ledger (r1jax.claims).
  Compiled programs go to JAX's persistent compilation cache in <results_dir>/.xla_cache (unless
  JAX_COMPILATION_CACHE_DIR is set), so the seeds of a variant compile once.
  """
  import sys

  from absl import app, flags, logging
  from ml_collections import config_flags

  tasks = dict(base) if not isinstance(base, ml_collections.ConfigDict) else None
  if quick and any(a in ("--quick", "--quick=true", "--quick=True") for a in sys.argv[1:]):
    base = ({t: override(c, quick, f"quick ({t})") for t, c in tasks.items()} if tasks
            else override(base, quick, "quick"))
  config_flags.DEFINE_config_dict("config", ml_collections.ConfigDict(base) if tasks else base)
  flags.DEFINE_bool("quick", False, "shrink everything for a smoke run (see the driver's QUICK)")
  flags.DEFINE_list("seeds", [str(s) for s in seeds], "seeds to run")
  per_task = default_variants if isinstance(default_variants, Mapping) else {}
  defaults = list(dict.fromkeys(v for vs in per_task.values() for v in vs)) if per_task else list(default_variants)
  flags.DEFINE_list("variants", defaults, "variants to run (empty: all)")
  flags.DEFINE_list("tasks", list(tasks or ()), "tasks to run (several-task drivers)")
  flags.DEFINE_string("results_dir", "", "results folder (default ./results/<name>)")
  flags.DEFINE_string("workers", str(workers), "runs trained at once on a CPU (a count, or auto)")
  flags.DEFINE_enum("launcher", "local", sweep.LAUNCHERS, "where runs train: here, or SLURM jobs (r1jax.sweep)")
  config_flags.DEFINE_config_dict("slurm", ml_collections.ConfigDict(dataclasses.asdict(sweep.SlurmOptions())),
                                  "SLURM resources per run with --launcher=slurm (--slurm.partition=gpu, ...)")

  def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    f = flags.FLAGS
    for flag, names, known in (("--variants", f.variants, variants), ("--tasks", f.tasks, tasks or {})):
      if set(names) - set(known):
        raise ConfigError(f"{flag}: unknown {sorted(set(names) - set(known))}. Fix: choose from {list(known)}.")
    root = os.path.abspath(f.results_dir or os.path.join("results", name))
    plan = ({t: (f.config[t], os.path.join(root, t)) for t in f.tasks} if tasks else {"": (f.config, root)})
    asked = f.variants if f["variants"].present or not per_task else None
    planned = {t: task_plan(variants, asked, t, per_task, task_variants) for t in plan}
    ablations = {t: Ablation(f"{name}/{t}" if t else name, cfg, planned[t], tuple(int(s) for s in f.seeds),
                             baseline if baseline in planned[t] else "", out) for t, (cfg, out) in plan.items()}
    ablations = {t: a for t, a in ablations.items() if a.variants}
    for a in ablations.values():
      a.configs()  # every task's variants are validated before anything trains
    slurm = sweep.SlurmOptions(**f.slurm.to_dict())
    launcher = sweep.make_launcher(f.launcher, sweep.resolve_workers(f.workers) if f.launcher == "local" else 1,
                                   slurm)
    if not jax.config.jax_compilation_cache_dir:
      sweep.use_compile_cache(os.path.join(root, ".xla_cache"))
    rows = {t: run(a, launcher=launcher) for t, a in ablations.items()}
    if report is not None:
      text = report(rows, ablations)
      if isinstance(text, tuple):  # (text, measurements beyond the tables, for r1jax.claims)
        text, facts = text
        write_json(os.path.join(root, "report.json"), facts)
      with open(os.path.join(root, "report.md"), "w") as fh:
        fh.write(text + "\n")
      print(f"\n{text}")

  app.run(main)
