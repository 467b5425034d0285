"""Sweep launchers: where an ablation's (variant, seed) runs train: here, or on SLURM through submitit.

  python experiments/moe_ablation.py                                   # local: in this process (or --workers=N)
  python experiments/moe_ablation.py --launcher=slurm --slurm.partition=gpu --slurm.gpus_per_node=1 \
      --slurm.time_min=120                                             # one SLURM job array, one task per run
  python experiments/dense_baseline.py --launcher=slurm --slurm.nodes=2 --slurm.tasks_per_node=4 \
      --config.mesh.data=-1                                           # each run a multi-process JAX job

A sweep is identified by a hash of its runs' configs (`sweep_id`); rerunning the same command finds the same sweep.
Runs with a result.json are skipped, SLURM jobs still queued or running (their ids are kept in
<results>/sweep.json) are waited on instead of being submitted again, the rest are submitted, and an interrupted
run resumes from its orbax checkpoints. Whatever the launcher, results land in the one results folder that the
table and plots are made from. Multi-process runs (tasks_per_node * nodes > 1) call `jax.distributed.initialize()`
with no arguments in every task: JAX reads the coordinator, process count and id from SLURM's environment.
"""

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from typing import Callable, Sequence

import jax

from r1jax import allocator, atomic
from r1jax.config import Config, run_identity, to_dict
from r1jax.errors import ConfigError, NonFiniteError
from r1jax.lab import reporting

LAUNCHERS = ("local", "slurm")


def config_hash(cfg: Config) -> str:
  """12 hex digits of the run's identity (config.run_identity): same config, same hash, on any machine."""
  text = json.dumps(run_identity(to_dict(cfg)), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def sweep_id(name: str, configs: dict[str, Config]) -> str:
  """12 hex digits of the sweep: its name and the hash of every run (label -> config)."""
  text = json.dumps([name, sorted((label, config_hash(c)) for label, c in configs.items())])
  return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------------- record


@dataclasses.dataclass
class SweepRecord:
  """<results>/sweep.json: the sweep id and, per run, its config hash and where it was last launched."""

  path: str
  name: str
  id: str
  runs: dict[str, dict]

  @classmethod
  def open(cls, out_dir: str, name: str, configs: dict[str, Config]) -> "SweepRecord":
    path = os.path.join(out_dir, "sweep.json")
    runs = {label: {"config_hash": config_hash(c), "workdir": c.workdir} for label, c in configs.items()}
    if os.path.exists(path):
      with open(path) as f:
        old = json.load(f).get("runs", {})
      for label, run in runs.items():  # keep where a run was launched if it is the same run
        if old.get(label, {}).get("config_hash") == run["config_hash"]:
          run.update({k: v for k, v in old[label].items() if k not in run})
    return cls(path, name, sweep_id(name, configs), runs)

  def save(self) -> None:
    if jax.process_index() == 0:
      atomic.write_json(self.path, {"name": self.name, "sweep_id": self.id, "runs": self.runs})


# Launchers: launch(todo, finish, log, record) trains every (label, cfg) of `todo` and calls finish(label, result).
Todo = Sequence[tuple[str, Config]]


# One XLA CPU thread per worker process: with W workers on W cores, runs do not fight over cores. Each worker is also
# pinned to a core of its own (os.sched_setaffinity: XLA sizes its CPU thread pool from the affinity mask; without
# the pin a worker ran 1.5 threads and two workers contended for both cores), and workers start with r1jax's malloc
# settings (r1jax/allocator.py: XLA's CPU runtime allocates every step's temporaries afresh; with fresh 4 KiB pages a
# 2-layer T=256 MQAR step took ~1.5 M page faults and a quarter of its CPU time in the kernel). Two NSA runs side by
# side (120 MQAR steps each): 94.5 s as before, 77.2 s pinned with huge pages.
_WORKER_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"


def use_compile_cache(cache_dir: str) -> None:
  """JAX's persistent compilation cache in `cache_dir`: the seeds of a variant compile the same programs once."""
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def worker_cores(workers: int) -> list[int] | None:
  """The core each of `workers` processes is pinned to, or None where pinning is unavailable or there are fewer
  usable cores than workers."""
  if not hasattr(os, "sched_getaffinity"):
    return None
  cores = sorted(os.sched_getaffinity(0))
  return cores[:workers] if len(cores) >= workers else None


def _worker_init(cache_dir: str | None, one_thread: bool, cores=None) -> None:
  """Runs in each fresh worker process before its first run (and before JAX picks its backend); `cores`, a queue of
  core ids, gives it the core it is pinned to."""
  _exit_with_parent(os.getppid())
  if one_thread:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_WORKER_XLA_FLAGS}".strip()
  if cores is not None:
    os.sched_setaffinity(0, {cores.get()})
  if cache_dir:
    use_compile_cache(cache_dir)


def _exit_with_parent(parent: int, poll_sec: float = 1.0) -> None:
  """A daemon thread that ends this worker once its parent is gone (a killed driver must not leave runs training
  into the results folder behind it)."""

  def watch():
    while os.getppid() == parent:
      time.sleep(poll_sec)
    os._exit(1)

  threading.Thread(target=watch, daemon=True).start()


def _spawn_environment(one_thread: bool) -> dict[str, str]:
  """The environment variables the spawned workers start with beyond os.environ: the allocator's setting (for
  workers with one XLA thread, one malloc arena: r1jax/allocator.py)."""
  env = allocator.environment(one_thread=one_thread)
  return {k: v for k, v in env.items() if os.environ.get(k) != v}


def train_or_fail(cfg: Config, train_fn: Callable[[Config], dict] | None = None) -> dict:
  """The run's result, or, when it stopped on a non-finite loss, reporting.failed_result (the sweep goes on)."""
  from r1jax.train import train

  try:
    return (train_fn or train)(cfg)
  except NonFiniteError as e:
    return reporting.failed_result(to_dict(cfg), str(e))


def _train_quietly(cfg_dict: dict) -> dict:
  cfg = Config.from_dict(cfg_dict)  # sent as a dict, as SLURM jobs get it
  return train_or_fail(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False)))


def resolve_workers(workers: int | str) -> int:
  """`auto`: 2 on a CPU backend with >= 2 cores in a single-process run, else 1 (runs would share the accelerator)."""
  if workers != "auto":
    if not str(workers).isdigit() or int(workers) < 1:
      raise ConfigError(f"--workers={workers} is invalid. Fix: use a positive count or 'auto'.")
    if int(workers) > 1 and (jax.default_backend() != "cpu" or jax.process_count() > 1):
      raise ConfigError(
        f"--workers={workers} needs a single-process CPU run (runs would share the "
        f"{jax.default_backend()} devices). Fix: --workers=1."
      )
    return int(workers)
  cpu_ok = jax.default_backend() == "cpu" and jax.process_count() == 1
  return 2 if cpu_ok and (os.cpu_count() or 1) >= 2 else 1


def waves(todo: list[tuple[str, Config]]) -> list[list[tuple[str, Config]]]:
  """`todo` in launch order: runs whose train.init_from is another unfinished run's workdir come in a later wave
  than that run (a cycle raises ConfigError)."""
  pending, out, done = list(todo), [], set()
  workdirs = {cfg.workdir for _, cfg in todo}
  while pending:
    wave = [(label, cfg) for label, cfg in pending if cfg.train.init_from not in workdirs - done]
    if not wave:
      raise ConfigError(
        f"train.init_from: the runs {[label for label, _ in pending]} start from each other in a "
        "cycle. Fix: make one of them start from scratch (train.init_from='')."
      )
    out.append(wave)
    done |= {cfg.workdir for _, cfg in wave}
    launched = {label for label, _ in wave}
    pending = [(label, cfg) for label, cfg in pending if label not in launched]
  return out


def _blocked(label: str, cfg: Config, source: dict[str, str | None], results: dict[str, dict]) -> dict | None:
  """The failed result of a run whose train.init_from run (source[label]) failed, else None."""
  src = source[label]
  if src is not None and "failed" in results[src]:
    return reporting.failed_result(to_dict(cfg), f"its train.init_from run {src} failed")
  return None


def sources(todo: Todo) -> dict[str, str | None]:
  """label -> the label of the run in `todo` whose workdir is its train.init_from (None: no such run)."""
  by_dir = {cfg.workdir: label for label, cfg in todo}
  return {label: by_dir.get(cfg.train.init_from) for label, cfg in todo}


def by_waves(
  todo: Todo, finish: Callable[[str, dict], None], launch_wave: Callable[[Todo, Callable[[str, dict], None]], None]
) -> None:
  """Launches `todo` a wave at a time (see waves): launch_wave(ready runs, finish); a run whose source failed is
  finished as failed without training."""
  results, source = {}, sources(todo)

  def done(label: str, result: dict) -> None:
    results[label] = result
    finish(label, result)

  for wave in waves(todo):
    ready = []
    for label, cfg in wave:
      blocked = _blocked(label, cfg, source, results)
      if blocked is not None:
        done(label, blocked)
      else:
        ready.append((label, cfg))
    if ready:
      launch_wave(ready, done)


@dataclasses.dataclass(frozen=True)
class LocalLauncher:
  """Runs here: one after another in this process (workers=1, with progress bars), or `workers` at a time in
  fresh processes with one XLA CPU thread each (tokens/s are then one-thread numbers, comparable within a table)."""

  workers: int = 1
  train_fn: Callable[[Config], dict] | None = None  # in-process only (tests, notebooks)

  def __post_init__(self):
    if self.workers > 1 and self.train_fn is not None:
      raise ValueError("a custom train_fn runs in this process. Fix: use workers=1.")

  def launch(
    self, todo: Todo, finish: Callable[[str, dict], None], log: Callable[[str], None], record: SweepRecord
  ) -> None:
    del record
    if not todo:  # every run finished earlier: nothing to start (a pool of no workers cannot be made)
      return
    if self.workers > 1:  # even for one run: its tokens/s must be one-thread numbers, as its table's others
      self._pool(todo, finish, log)
      return

    def one_by_one(ready: Todo, done: Callable[[str, dict], None]) -> None:
      for label, cfg in ready:
        log(f"{label} -> {cfg.workdir}")
        done(label, train_or_fail(cfg, self.train_fn))

    by_waves(todo, finish, one_by_one)

  def _pool(self, todo: Todo, finish: Callable[[str, dict], None], log: Callable[[str], None]) -> None:
    """`workers` processes; a run starts as soon as a worker is free and its train.init_from run has finished
    (no wave barrier: a chain such as dense -> warm-up -> sparse does not idle the other workers)."""
    waves(todo)  # a cycle raises before anything trains
    n = min(self.workers, len(todo))
    with worker_pool(n) as (pool, cores):
      pinned = f"pinned to cores {cores}" if cores is not None else "not pinned"
      log(f"training {len(todo)} runs in {n} worker processes (one XLA CPU thread each, {pinned})")
      when_ready(todo, finish, lambda cfg: pool.submit(_train_quietly, to_dict(cfg)), n)


def in_worker(fn: Callable, *args, **kwargs):
  """fn(*args, **kwargs) in one fresh worker process (worker_pool's environment, not pinned: every core), e.g. a
  timing that should not pay for this process's 4 KiB-page allocations; fn and its arguments must pickle."""
  return in_workers([(fn, args, kwargs)], 1)[0]


def in_workers(calls: Sequence[tuple[Callable, tuple, dict]], n: int) -> list:
  """[fn(*args, **kwargs) for each call], run by `n` fresh worker processes at once (worker_pool's environment, not
  pinned), in the order given; e.g. compile-only work that needs no quiet machine. Everything must pickle."""
  with worker_pool(n, pin=False) as (pool, _):
    futures = [pool.submit(fn, *args, **kwargs) for fn, args, kwargs in calls]
    return [f.result() for f in futures]


@contextlib.contextmanager
def worker_pool(n: int, pin: bool = True):
  """(executor, cores): `n` spawned worker processes started with r1jax's allocator setting; where `pin`, each with
  one XLA CPU thread (and one malloc arena), pinned to a core of its own (cores: their ids; None where not pinned).
  See _WORKER_XLA_FLAGS. On leaving, queued work is dropped (finished runs are saved; a rerun resumes the rest)."""
  import multiprocessing

  ctx, cores = multiprocessing.get_context("spawn"), worker_cores(n) if pin else None
  queue = None
  if cores is not None:
    queue = ctx.Queue()
    for core in cores:
      queue.put(core)
  env = _spawn_environment(pin)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # while the pool lives: its workers start as work is submitted
  pool = concurrent.futures.ProcessPoolExecutor(
    n, ctx, initializer=_worker_init, initargs=(jax.config.jax_compilation_cache_dir, pin, queue)
  )
  try:
    yield pool, cores
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def when_ready(
  todo: Todo, finish: Callable[[str, dict], None], submit: Callable[[Config], concurrent.futures.Future], slots: int
) -> None:
  """Submits the runs of `todo` in order, at most `slots` at a time (submit(cfg) -> a concurrent.futures.Future of its
  result), each once its train.init_from run in `todo` has finished, and finishes runs as their futures complete;
  a run whose source failed is finished as failed without being submitted. A free slot takes the first ready run,
  so a chain (dense -> warm-up -> sparse) moves on as soon as a link is done instead of queueing behind the rest."""
  source, results, pending, running = sources(todo), {}, list(todo), {}
  while pending or running:
    for label, cfg in [(lb, c) for lb, c in pending if source[lb] is None or source[lb] in results]:
      if len(running) == slots:
        break
      pending.remove((label, cfg))
      blocked = _blocked(label, cfg, source, results)
      if blocked is not None:
        results[label] = blocked
        finish(label, blocked)
      else:
        running[submit(cfg)] = label
    if not running:
      continue  # a blocked run may have made others ready (to be blocked in turn)
    finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
    for future in finished:
      label = running.pop(future)
      results[label] = future.result()
      finish(label, results[label])


# ---------------------------------------------------------------------------------------------------------- SLURM


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  """sbatch resources of each run's job (submitit's SlurmExecutor); a sweep is one job array."""

  partition: str = ""  # "" = the cluster's default partition
  time_min: int = 60  # wall-clock limit per run (minutes)
  nodes: int = 1  # nodes per run
  tasks_per_node: int = 1  # JAX processes per node; nodes * tasks_per_node > 1 = a multi-process run
  cpus_per_task: int = 1
  gpus_per_node: int = 0  # e.g. = tasks_per_node for one process per GPU
  mem_gb: int = 0  # 0 = the partition's default
  array_parallelism: int = 64  # at most this many runs of the array at once
  setup: str = ""  # shell commands run in each job before Python starts, e.g. "module load cuda; source venv/.."
  poll_sec: float = 2.0  # how often the launcher looks at the queue

  def __post_init__(self):
    for name in ("time_min", "nodes", "tasks_per_node", "cpus_per_task", "array_parallelism"):
      if getattr(self, name) < 1:
        raise ConfigError(f"slurm.{name}={getattr(self, name)} must be >= 1. Fix: pass --slurm.{name}=1 or more.")
    if self.gpus_per_node < 0 or self.mem_gb < 0 or self.poll_sec <= 0:
      raise ConfigError(
        "slurm.gpus_per_node and slurm.mem_gb must be >= 0 and slurm.poll_sec > 0. "
        "Fix: use 0 for the cluster's defaults."
      )

  @property
  def num_processes(self) -> int:
    return self.nodes * self.tasks_per_node

  def executor_parameters(self) -> dict:
    params = {
      "time": self.time_min,
      "nodes": self.nodes,
      "ntasks_per_node": self.tasks_per_node,
      "cpus_per_task": self.cpus_per_task,
      "array_parallelism": self.array_parallelism,
      "setup": [self.setup] if self.setup else [],
    }
    params.update(
      {
        k: v
        for k, v in (
          ("partition", self.partition),
          ("gpus_per_node", self.gpus_per_node),
          ("mem", f"{self.mem_gb}GB" if self.mem_gb else ""),
        )
        if v
      }
    )
    return params


def _slurm_task(cfg_dict: dict) -> dict | None:
  """One task of a run's job: trains (every task of a multi-process run) and returns the result from process 0; the
  run itself writes <workdir>/result.json, so a sweep whose launcher died still finds it."""
  result = train_or_fail(Config.from_dict(cfg_dict))
  return result if jax.process_index() == 0 else None


def _queued(job_id: str) -> bool:
  """Whether SLURM still lists the job (pending, running or completing); works without accounting (no sacct)."""
  out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
  return out.returncode == 0 and bool(out.stdout.strip())


@dataclasses.dataclass(frozen=True)
class SlurmLauncher:
  """Submits the runs as one job array through submitit and waits for them; each task's function trains one run
  (a multi-process run: every task, `jax.distributed.initialize()` auto-detecting SLURM)."""

  options: SlurmOptions = SlurmOptions()
  folder: str = ""  # submitit's logs and pickles; "" = <results>/.slurm

  def check(self) -> None:
    """Fails before anything is written when this machine cannot submit."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
      raise ConfigError(
        "--launcher=slurm needs SLURM's sbatch and squeue on PATH. Fix: run the driver on a SLURM "
        "login node, or use --launcher=local."
      )
    try:
      import submitit  # noqa: F401
    except ImportError as e:
      raise ConfigError("--launcher=slurm needs submitit. Fix: pip install submitit.") from e

  def _job_config(self, cfg: Config) -> dict:
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
    if self.options.num_processes > 1:
      cfg = dataclasses.replace(cfg, dist=dataclasses.replace(cfg.dist, auto=True))
    return to_dict(cfg)

  def launch(
    self, todo: Todo, finish: Callable[[str, dict], None], log: Callable[[str], None], record: SweepRecord
  ) -> None:
    self.check()
    by_waves(todo, finish, lambda ready, done: self._launch_wave(ready, done, log, record))

  def _launch_wave(
    self, todo: Todo, finish: Callable[[str, dict], None], log: Callable[[str], None], record: SweepRecord
  ) -> None:
    import submitit

    folder = os.path.join(self.folder or os.path.join(os.path.dirname(record.path), ".slurm"), "%j")
    tasks = range(self.options.num_processes)
    jobs = {}
    for label, _ in todo:  # runs still in the queue from an earlier launch: wait on them, do not submit again
      job_id = record.runs[label].get("slurm_job")
      if job_id and _queued(job_id):
        jobs[label] = submitit.SlurmJob(folder=folder, job_id=job_id, tasks=tasks)
        log(f"{label}: job {job_id} from an earlier launch is still queued; waiting on it")
    submit = [(label, cfg) for label, cfg in todo if label not in jobs]
    if submit:
      executor = submitit.SlurmExecutor(folder=folder)
      executor.update_parameters(
        job_name=f"r1jax-{record.name.replace('/', '-')}", **self.options.executor_parameters()
      )
      submitted = executor.map_array(_slurm_task, [self._job_config(cfg) for _, cfg in submit])
      for (label, _), job in zip(submit, submitted):
        jobs[label] = job
        record.runs[label].update(slurm_job=job.job_id, launched=time.strftime("%Y-%m-%d %H:%M:%S"))
      record.save()
      log(
        f"sweep {record.id}: submitted {len(submit)} runs as SLURM job array {submitted[0].job_id.split('_')[0]} "
        f"({self.options.num_processes} process(es) each); logs in {os.path.dirname(folder)}"
      )
    self._wait(jobs, finish, log)

  def _wait(self, jobs: dict, finish: Callable[[str, dict], None], log: Callable[[str], None]) -> None:
    """Collects results as jobs finish. A job that leaves the queue without a result (killed, out of time, node
    failure) raises with the tail of its log; the others' results are kept, and a rerun resumes it."""
    logging.getLogger("submitit").setLevel(logging.ERROR)  # its sacct calls fail where accounting is off
    left = dict(jobs)
    gone_since: dict[str, float] = {}
    while left:
      for label, job in list(left.items()):
        if job.done():
          result = job.results()[0]  # task 0 is JAX process 0
          left.pop(label)
          finish(label, result)
          log(f"{label}: done (job {job.job_id})")
        elif not _queued(job.job_id):
          gone_since.setdefault(label, time.time())
          if time.time() - gone_since[label] > 30:  # results reach shared filesystems late; then give up
            raise RuntimeError(
              f"{label}: SLURM job {job.job_id} left the queue without a result. Its log:\n"
              f"{(job.stderr() or '')[-3000:]}\nFix: see the log above, then rerun the same "
              "command (finished runs are kept; this one resumes from its checkpoints)."
            )
      if left:
        time.sleep(self.options.poll_sec)


def make_launcher(name: str, workers: int = 1, slurm: SlurmOptions | None = None):
  """The launcher called `name` (LAUNCHERS), checked before anything trains."""
  if name == "local":
    return LocalLauncher(workers)
  if name == "slurm":
    launcher = SlurmLauncher(slurm or SlurmOptions())
    launcher.check()
    return launcher
  raise ConfigError(f"--launcher={name} is unknown. Fix: use one of {LAUNCHERS}.")
