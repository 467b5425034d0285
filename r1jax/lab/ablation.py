"""Ablation runner: a base config + named variants (config overrides) x seeds, trained where the launcher says;
the tables, files and plots come from r1jax.lab.reporting."""

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections

from r1jax import atomic, entry
from r1jax.checkpoint import check_same_config
from r1jax.config import RUN_KEYS, Config, to_dict
from r1jax.errors import ConfigError
from r1jax.lab import claims, reporting, sweep

# The smoke-run settings every driver applies with --quick (a driver's `cli(quick=...)` adds its own on top, e.g. a
# curriculum shorter than these steps): a few steps, one evaluation in the middle and one at the end, one eval batch.
QUICK = {"train.steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3, "data.eval_max_batches": 1}
QUICK_ENV = "R1JAX_QUICK"  # "1" in a quick process: set by a driver's --quick (its workers inherit it), or by hand


def quick_mode() -> bool:
  """Whether this process runs the smoke settings: a driver given --quick, its worker processes, or a notebook run
  with R1JAX_QUICK=1 (as CI and notebooks/execute.py run them). The one way anything reads the quick switch."""
  return os.environ.get(QUICK_ENV, "") == "1"


def quick_settings(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """QUICK with a driver's own additions (which win)."""
  return {**QUICK, **(extra or {})}


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

  @property
  def out_dir(self) -> str:
    """Where the runs and tables go (absolute)."""
    return os.path.abspath(self.results_dir or os.path.join("results", self.name))

  def configs(self) -> dict[tuple[str, int], Config]:
    if self.baseline and self.baseline not in self.variants:
      raise ConfigError(f"baseline={self.baseline!r} is not a variant. Fix: use one of {list(self.variants)}.")
    out = {}
    root = self.out_dir
    # train.init_from='@<variant>': that variant's run of the same seed
    chain = {
      v: o["train.init_from"][1:] for v, o in self.variants.items() if str(o.get("train.init_from", "")).startswith("@")
    }
    for variant, source in chain.items():
      if source not in self.variants or source == variant:
        raise ConfigError(
          f"variant {variant!r}: train.init_from='@{source}' names no other variant. Fix: use "
          f"'@<variant>' with one of {[v for v in self.variants if v != variant]}."
        )
      seen, at = [variant], source  # follow the sources: a cycle could never start
      while at in chain and at not in seen:
        seen, at = seen + [at], chain[at]
      if at in seen:
        raise ConfigError(
          f"train.init_from: variants {seen} start from each other in a cycle. Fix: make one of "
          "them start from scratch (train.init_from='')."
        )
    for variant, overrides in self.variants.items():
      for seed in self.seeds:
        seeded = {
          **overrides,
          **({"train.init_from": os.path.join(root, chain[variant], f"seed{seed}")} if variant in chain else {}),
        }
        cfg = override(
          self.base,
          {**seeded, "seed": seed, "workdir": os.path.join(root, variant, f"seed{seed}")},
          f"variant {variant!r}",
        )
        out[(variant, seed)] = Config.from_dict(cfg)
    return out


def run(
  ablation: Ablation,
  train_fn: Callable[[Config], dict] | None = None,
  log=print,
  workers: int = 1,
  launcher: Any = None,
) -> list[dict]:
  """Trains every (variant, seed) not already finished, then writes and prints the summary (r1jax.lab.reporting).

  Finished runs are those with a result.json of the same run identity (config.run_identity; a stale one raises
  ConfigError naming the field); an interrupted run resumes from its checkpoints. A run that stops on a non-finite
  loss is a failed row of the table (with its reason) while the others go on; a rerun retries it from its last good
  checkpoint. `launcher` (r1jax.lab.sweep) says where runs train; the default is this process, or `workers` fresh
  one-thread processes at once (see LocalLauncher). The sweep's id and where each run was launched are kept in
  <results>/sweep.json.
  """
  return run_all({"": ablation}, launcher or sweep.LocalLauncher(workers, train_fn), log)[""]


class _Plan:
  """One ablation's runs: those to train (`todo`), their results as they finish, and its summary once done."""

  def __init__(self, ablation: Ablation, log):
    self.ablation, self.log = ablation, log
    self.configs = configs = ablation.configs()  # validates every variant first
    self.labels = labels = {f"{v}/seed{s}": (v, s) for v, s in configs}
    self.record = sweep.SweepRecord.open(
      ablation.out_dir, ablation.name, {label: configs[key] for label, key in labels.items()}
    )
    os.makedirs(ablation.out_dir, exist_ok=True)
    self.results, self.todo = {}, []
    for label, key in labels.items():
      cfg = configs[key]
      path = os.path.join(cfg.workdir, atomic.RESULT_FILE)
      if os.path.exists(path):
        with open(path) as f:
          self.results[key] = json.load(f)
        saved, current = self.results[key]["config"], to_dict(cfg)
        if current["model"]["vocab_size"] == 0:  # filled from the data by the run (and the data must match)
          current["model"]["vocab_size"] = saved["model"]["vocab_size"]
        check_same_config(saved, current, f"{path!r}", RUN_KEYS)
        log(f"{label}: finished earlier, skipping")
      else:
        os.makedirs(cfg.workdir, exist_ok=True)
        self.todo.append((label, cfg))
    log(f"sweep {ablation.name} ({self.record.id}): {len(labels)} runs, {len(labels) - len(self.todo)} finished")
    self.record.save()

  def finish(self, label: str, result: dict) -> None:
    self.results[self.labels[label]] = result
    if "failed" in result:
      self.log(f"{label}: FAILED: {result['failed']}")

  def summary(self) -> list[dict]:
    a = self.ablation
    results = {key: self.results[key] for key in self.configs}  # in the ablation's order, however runs finished
    baseline = a.baseline or next(iter(a.variants))
    rows, table = reporting.write_summary(a.out_dir, a.name, self.record.id, baseline, results)
    self.log(f"\n{a.name}: mean ± std over seeds; ratios to '{baseline}'\n{table}\nresults: {a.out_dir}")
    return rows


def run_all(ablations: Mapping[str, Ablation], launcher: Any, log=print) -> dict[str, list[dict]]:
  """`run` for several ablations (a driver's tasks): every one validated first, then their runs trained, in one
  launch for a local pool of workers (a task's last runs do not leave a worker idle while the next task waits; a run
  that starts from another's checkpoint waits for it), one launch per ablation elsewhere (SLURM: its own record)."""
  plans = {name: _Plan(a, log) for name, a in ablations.items()}
  if isinstance(launcher, sweep.LocalLauncher) and launcher.workers > 1:
    todo = [(f"{name}:{label}", cfg) for name, plan in plans.items() for label, cfg in plan.todo]
    launcher.launch(
      todo, lambda label, result: plans[label.split(":", 1)[0]].finish(label.split(":", 1)[1], result), log, None
    )
  else:
    for plan in plans.values():
      launcher.launch(plan.todo, plan.finish, log, plan.record)
  return {name: plan.summary() for name, plan in plans.items()}


def task_plan(
  variants: Mapping[str, Any],
  asked: Sequence[str] | None,
  task: str,
  defaults: Mapping[str, Sequence[str]] | None = None,
  limits: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
  """The variants `task` runs: those asked for (all if empty), or the task's defaults when nothing was asked
  (asked=None), within limits[task] (default: no limit); in the order of `variants`."""
  wanted = (defaults or {}).get(task, variants) if asked is None else (asked or variants)
  allowed = (limits or {}).get(task, variants)
  return {k: v for k, v in variants.items() if k in wanted and k in allowed}


def cli(
  name: str,
  base: ml_collections.ConfigDict | Mapping[str, ml_collections.ConfigDict],
  variants: Mapping[str, Mapping[str, Any]],
  seeds: Sequence[int] = (0, 1, 2),
  baseline: str = "",
  quick: Mapping[str, Any] | None = None,
  default_variants: Sequence[str] | Mapping[str, Sequence[str]] = (),
  report: Callable[[dict[str, list[dict]], dict[str, "Ablation"]], str | tuple[str, dict]] | None = None,
  task_variants: Mapping[str, Sequence[str]] | None = None,
  workers: int | str = 1,
) -> None:
  """Command line of an experiment driver: `--config.a.b=v` overrides of the base, and

    --quick           the smoke settings (QUICK, plus the driver's `quick` additions) over the base config and
                      over every variant's own values of those fields (command-line overrides still win)
    --seeds=0,1,2     seeds          --variants=a,b   a subset of the variants (default: default_variants or all)
    --results_dir=D   where runs and tables go (default ./results/<name>)
    --workers=N       runs trained at once, in processes of one CPU thread each (auto: 2 on a CPU machine with
                      >= 2 cores, else 1; see `run`); the driver's default is `workers`
    --launcher=slurm  submit the runs as a SLURM job array instead (r1jax.lab.sweep), resources from --slurm.<field>
                      (partition, time_min, nodes, tasks_per_node, gpus_per_node, ...); rerunning waits on the
                      jobs still queued and submits only what is missing

  With several tasks (`base` a dict task -> config), every variant runs on every task, overrides are
  `--config.<task>.a.b=v`, `--tasks=a,b` picks tasks, and each task gets its table under <results_dir>/<task>.
  `task_variants[task]` limits a task to some variants (default: all); `default_variants` may also be a dict
  task -> the variants that task runs when --variants is not given. `report(rows per task, ablations per
  task)` returns extra text (anchors, diagnostics), printed and saved as report.md, or (text, a JSON-able dict of
  measurements the tables lack), the dict saved as report.json for the claims ledger (r1jax.claims). The seed
  claims declared for this driver in r1jax.claims are judged from the results folder and appended to the report.
  Compiled programs go to JAX's persistent compilation cache in <results_dir>/.xla_cache (unless
  JAX_COMPILATION_CACHE_DIR is set), so the seeds of a variant compile once.
  """
  import sys

  from absl import flags, logging

  tasks = dict(base) if not isinstance(base, ml_collections.ConfigDict) else None
  # --quick is read here, before absl parses the flags, because the base config it shrinks defines the --config flag
  if any(a in ("--quick", "--quick=true", "--quick=True") for a in sys.argv[1:]):
    os.environ[QUICK_ENV] = "1"
  if quick_mode():
    smoke = quick_settings(quick)
    base = (
      {t: override(c, smoke, f"quick ({t})") for t, c in tasks.items()} if tasks else override(base, smoke, "quick")
    )
    # a variant's own step counts (a DSA stage's) would override the smoke settings: they give way to the base's
    variants = {v: {k: x for k, x in o.items() if k not in smoke} for v, o in variants.items()}
  config = ml_collections.ConfigDict(base) if tasks else base  # --config.a.b=v (--config.<task>.a.b=v)
  flags.DEFINE_bool("quick", False, "shrink everything for a smoke run (ablation.QUICK and the driver's additions)")
  flags.DEFINE_list("seeds", [str(s) for s in seeds], "seeds to run")
  per_task = default_variants if isinstance(default_variants, Mapping) else {}
  defaults = list(dict.fromkeys(v for vs in per_task.values() for v in vs)) if per_task else list(default_variants)
  flags.DEFINE_list("variants", defaults, "variants to run (empty: all)")
  flags.DEFINE_list("tasks", list(tasks or ()), "tasks to run (several-task drivers)")
  flags.DEFINE_string("results_dir", "", "results folder (default ./results/<name>)")
  flags.DEFINE_string("workers", str(workers), "runs trained at once on a CPU (a count, or auto)")
  flags.DEFINE_enum("launcher", "local", sweep.LAUNCHERS, "where runs train: here, or SLURM jobs (r1jax.lab.sweep)")
  # --slurm.<field>: SLURM resources per run with --launcher=slurm (--slurm.partition=gpu, ...)
  slurm_config = ml_collections.ConfigDict(dataclasses.asdict(sweep.SlurmOptions()))

  def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    f = flags.FLAGS
    for flag, names, known in (("--variants", f.variants, variants), ("--tasks", f.tasks, tasks or {})):
      if set(names) - set(known):
        raise ConfigError(f"{flag}: unknown {sorted(set(names) - set(known))}. Fix: choose from {list(known)}.")
    root = os.path.abspath(f.results_dir or os.path.join("results", name))
    plan = {t: (f.config[t], os.path.join(root, t)) for t in f.tasks} if tasks else {"": (f.config, root)}
    asked = f.variants if f["variants"].present or not per_task else None
    planned = {t: task_plan(variants, asked, t, per_task, task_variants) for t in plan}
    ablations = {
      t: Ablation(
        f"{name}/{t}" if t else name,
        cfg,
        planned[t],
        tuple(int(s) for s in f.seeds),
        baseline if baseline in planned[t] else "",
        out,
      )
      for t, (cfg, out) in plan.items()
    }
    ablations = {t: a for t, a in ablations.items() if a.variants}
    for a in ablations.values():
      a.configs()  # every task's variants are validated before anything trains
    slurm = sweep.SlurmOptions(**f.slurm.to_dict())
    launcher = sweep.make_launcher(f.launcher, sweep.resolve_workers(f.workers) if f.launcher == "local" else 1, slurm)
    if not jax.config.jax_compilation_cache_dir:
      sweep.use_compile_cache(os.path.join(root, ".xla_cache"))
    rows = run_all(ablations, launcher)
    text = ""
    if report is not None:
      text = report(rows, ablations)
      if isinstance(text, tuple):  # (text, measurements beyond the tables, for r1jax.claims)
        text, facts = text
        atomic.write_record(os.path.join(root, "report.json"), facts)
    # The seed claims this driver tests, judged from its results folder by their one declaration (r1jax.claims).
    text = "\n\n".join(t for t in (text, claims.section(name, root)) if t)
    if text:
      atomic.write_text(os.path.join(root, "report.md"), text + "\n")
      print(f"\n{text}")

  entry.run(main, {"config": config, "slurm": slurm_config})
