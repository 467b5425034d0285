"""Sweep launchers: identity by config hash, the sweep record, and (where a SLURM cluster answers) real SLURM jobs.

CI starts a one-node SLURM cluster (.ci/local_slurm.sh) and sets R1JAX_REQUIRE_SLURM=1, so there the SLURM tests
run for real and fail rather than skip. Locally: `source .ci/local_slurm.sh start /tmp/r1jax-slurm` first.
"""

import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from r1jax.errors import ConfigError
from r1jax.lab import ablation, sweep

from conftest import xla_flags
from helpers import ablation_base, tiny_config

pytestmark = pytest.mark.slow  # end-to-end: subprocesses and whole runs (the whole suite only)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_hash_is_the_run_identity():
  a = tiny_config(text="x.txt", workdir="/tmp/a")
  assert sweep.config_hash(a) == sweep.config_hash(
    tiny_config(text="x.txt", workdir="/elsewhere", train__progress=True, train__eval_every=2)
  )
  for changed in (
    {"model__d_ff": 32},
    {"seed": 1},
    {"train__steps": 5},
    {"optim__lr": 1e-4},
    {"data__options__text__path": "y"},
  ):
    assert sweep.config_hash(tiny_config(**{"data__options__text__path": "x.txt", **changed})) != sweep.config_hash(
      a
    ), changed
  runs = {"v/seed0": a, "w/seed0": tiny_config(text="x.txt", model__d_ff=32)}
  assert sweep.sweep_id("s", runs) == sweep.sweep_id("s", dict(reversed(list(runs.items()))))
  assert sweep.sweep_id("s", runs) != sweep.sweep_id("t", runs)


def test_resolve_workers():
  assert sweep.resolve_workers("auto") == (2 if (os.cpu_count() or 1) >= 2 else 1)  # the tests run on a CPU
  assert sweep.resolve_workers("3") == 3
  for bad in ("0", "two"):
    with pytest.raises(ConfigError, match=f"--workers={bad} is invalid"):
      sweep.resolve_workers(bad)


def _worker_setup() -> tuple[list[int], str, str]:
  time.sleep(1.0)  # both workers busy at once: the pool starts the second one
  return sorted(os.sched_getaffinity(0)), os.environ.get("GLIBC_TUNABLES", ""), os.environ.get("XLA_FLAGS", "")


@pytest.mark.skipif(
  not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="pinning needs 2 usable cores"
)
def test_worker_pool_pins_each_worker_to_its_own_core_with_huge_pages():
  """Each of 2 workers runs on one core of its own, started with glibc's huge-page tunable and one XLA thread; the
  parent's environment is as before once the pool is gone."""
  before = os.environ.get("GLIBC_TUNABLES")
  with sweep.worker_pool(2) as (pool, cores):
    seen = [f.result() for f in [pool.submit(_worker_setup) for _ in range(2)]]
  assert cores == sorted(os.sched_getaffinity(0))[:2]
  assert sorted(aff[0] for aff, _, _ in seen) == cores and all(len(aff) == 1 for aff, _, _ in seen), seen
  assert all("glibc.malloc.hugetlb=1" in tun and "--xla_cpu_multi_thread_eigen=false" in xla for _, tun, xla in seen)
  assert all("glibc.malloc.arena_max=1" in tun for _, tun, _ in seen)  # one XLA thread: one malloc arena
  assert os.environ.get("GLIBC_TUNABLES") == before
  with sweep.worker_pool(1, pin=False) as (pool, _):  # XLA's threads on every core: glibc's arenas
    _, tun, xla = pool.submit(_worker_setup).result()
  assert "glibc.malloc.hugetlb=1" in tun and "arena_max" not in tun and "multi_thread_eigen" not in xla


def _call_info(i: int, scale: int = 1) -> tuple[int, int, list[int], str]:
  time.sleep(0.5)  # both workers busy at once
  return i * scale, os.getpid(), sorted(os.sched_getaffinity(0)), os.environ.get("XLA_FLAGS", "")


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs sched_getaffinity")
def test_in_workers_runs_the_calls_in_n_unpinned_processes_and_returns_in_order():
  """sweep.in_workers: each call's (args, kwargs), results in the order given, n processes at once, none pinned to a
  core or limited to one XLA thread (compile-only work of a report; see scaling.precompile)."""
  out = sweep.in_workers([(_call_info, (i,), {"scale": 10}) for i in range(4)], 2)
  assert [r[0] for r in out] == [0, 10, 20, 30]
  assert len({r[1] for r in out}) == 2 and os.getpid() not in {r[1] for r in out}
  assert all(r[2] == sorted(os.sched_getaffinity(0)) and "eigen=false" not in r[3] for r in out)


def test_a_pool_launcher_with_nothing_left_to_train_returns():
  """A rerun after every run finished (the driver then only reports) starts no pool: one of no workers raised."""
  finished = []
  sweep.LocalLauncher(workers=2).launch([], lambda label, result: finished.append(label), print, None)
  assert finished == []


def test_workers_exit_when_their_driver_is_killed():
  """A driver killed mid-sweep leaves no worker training into its results folder."""
  script = (
    "import os, sys, time\nfrom r1jax.lab import sweep\nwith sweep.worker_pool(1) as (pool, _):\n"
    "  print(pool.submit(os.getpid).result(), flush=True)\n  time.sleep(600)\n"
  )
  driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
  worker = int(driver.stdout.readline())
  driver.kill()
  driver.wait()
  for _ in range(100):
    try:
      os.kill(worker, 0)
    except ProcessLookupError:
      return
    time.sleep(0.1)
  os.kill(worker, 9)
  pytest.fail("the worker outlived its killed driver by 10 s")


def test_slurm_options_are_checked_and_mapped_to_submitit():
  for bad in ({"nodes": 0}, {"tasks_per_node": 0}, {"time_min": 0}, {"gpus_per_node": -1}):
    with pytest.raises(ConfigError, match="slurm"):
      sweep.SlurmOptions(**bad)
  opts = sweep.SlurmOptions(partition="gpu", nodes=2, tasks_per_node=4, gpus_per_node=4, mem_gb=64)
  assert opts.num_processes == 8
  params = opts.executor_parameters()
  assert params["partition"] == "gpu" and params["ntasks_per_node"] == 4 and params["mem"] == "64GB"
  assert "partition" not in sweep.SlurmOptions().executor_parameters()  # "" = the cluster's default


def test_slurm_launcher_without_slurm_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
  with pytest.raises(ConfigError, match="sbatch and squeue on PATH"):
    sweep.make_launcher("slurm")
  with pytest.raises(ConfigError, match="--launcher=pbs is unknown"):
    sweep.make_launcher("pbs")


def _base(text_file, **extra):
  return ablation_base(text_file, extra, train__checkpoint_every=3)


def test_local_sweep_records_its_id_and_runs(text_file, tmp_path):
  abl = ablation.Ablation(
    "toy", _base(text_file), {"a": {}, "b": {"model.d_ff": 32}}, seeds=(0,), results_dir=str(tmp_path / "res")
  )
  ablation.run(abl, log=lambda line: None)
  record = json.load(open(tmp_path / "res" / "sweep.json"))
  configs = {f"{v}/seed{s}": c for (v, s), c in abl.configs().items()}
  assert record["sweep_id"] == sweep.sweep_id("toy", configs)
  assert json.load(open(tmp_path / "res" / "results.json"))["sweep_id"] == record["sweep_id"]
  assert {k: r["config_hash"] for k, r in record["runs"].items()} == {
    k: sweep.config_hash(c) for k, c in configs.items()
  }


# ------------------------------------------------------------------------------------------------ real SLURM


def test_runs_start_when_their_source_finishes_not_after_a_wave(text_file):
  """when_ready (the worker pool's scheduler), 2 slots: 'b' starts from 'a' once 'a' is done, while the independent,
  slower 'c' still runs (no wave barrier), and before 'g', listed later (a free slot takes the first ready run); a
  run whose source failed is finished as failed and never submitted; never more than 2 at once."""
  import threading
  import time

  cfg = lambda name, src="": dataclasses.replace(  # noqa: E731
    tiny_config(text=text_file),
    workdir=f"/w/{name}",
    train=dataclasses.replace(tiny_config(text=text_file).train, init_from=f"/w/{src}" if src else ""),
  )
  todo = [
    ("b", cfg("b", "a")),
    ("a", cfg("a")),
    ("c", cfg("c")),
    ("e", cfg("e", "d")),
    ("d", cfg("d")),
    ("f", cfg("f", "e")),
    ("g", cfg("g")),
  ]
  sleep = {"a": 0.2, "b": 0.05, "c": 0.6, "d": 0.01, "g": 0.01}
  events, lock, busy = [], threading.Lock(), [0, 0]

  def train(c):
    name = c.workdir.rsplit("/", 1)[1]
    with lock:
      events.append(("start", name))
      busy[0] += 1
      busy[1] = max(busy)
    time.sleep(sleep[name])
    with lock:
      events.append(("end", name))
      busy[0] -= 1
    return {"failed": "nan"} if name == "d" else {"ok": name}

  finished = {}
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    sweep.when_ready(todo, finished.__setitem__, lambda c: pool.submit(train, c), slots=2)
  assert events.index(("end", "a")) < events.index(("start", "b")) < events.index(("end", "c"))
  assert events.index(("start", "b")) < events.index(("start", "g")) and busy[1] == 2
  assert ("start", "e") not in events and ("start", "f") not in events
  assert "its train.init_from run d failed" in finished["e"]["failed"]
  assert "its train.init_from run e failed" in finished["f"]["failed"]
  assert set(finished) == {"a", "b", "c", "d", "e", "f", "g"}


def _slurm_answers() -> bool:
  if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
    return False
  out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
  return out.returncode == 0 and any(s.rstrip("*") in ("idle", "mix", "alloc") for s in out.stdout.split())


@pytest.fixture(scope="module")
def slurm():
  if not _slurm_answers():
    if os.environ.get("R1JAX_REQUIRE_SLURM") == "1":
      pytest.fail("R1JAX_REQUIRE_SLURM=1 but no SLURM cluster answers sinfo (see .ci/local_slurm.sh)")
    pytest.skip("no SLURM cluster here; start one with `source .ci/local_slurm.sh start /tmp/r1jax-slurm`")


def _driver(results_dir, text_file):
  return [
    sys.executable,
    "experiments/dense_baseline.py",
    "--quick",
    "--launcher=slurm",
    "--slurm.time_min=10",
    "--slurm.poll_sec=0.5",
    "--variants=small,base",
    "--seeds=0",
    f"--results_dir={results_dir}",
    f"--config.data.options.text.path={text_file}",
    "--config.train.steps=6",
    "--config.train.eval_every=3",
    "--config.train.checkpoint_every=3",
    "--config.mesh.devices=1",
    "--config.mesh.data=1",
    "--config.model.num_layers=1",
    "--config.model.d_model=32",
    "--config.data.batch_size=4",
  ]


@pytest.mark.slow
def test_driver_sweep_on_slurm_is_one_job_array_and_resumable(slurm, text_file, tmp_path):
  res = tmp_path / "res"
  first = subprocess.run(_driver(res, text_file), cwd=REPO, capture_output=True, text=True, timeout=420)
  assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
  assert "submitted 2 runs as SLURM job array" in first.stdout
  record = json.load(open(res / "sweep.json"))
  jobs = [record["runs"][label]["slurm_job"] for label in ("small/seed0", "base/seed0")]
  assert len({j.split("_")[0] for j in jobs}) == 1 and sorted(j.split("_")[1] for j in jobs) == ["0", "1"]
  rows = {r["variant"]: r for r in json.load(open(res / "results.json"))["rows"]}
  assert set(rows) == {"small", "base"}
  for label in ("small/seed0", "base/seed0"):  # each job wrote its run; the table is made from them
    result = json.load(open(res / label / "result.json"))
    assert result["perf"]["processes"] == 1 and np.isfinite(result["final"]["eval/loss"])
    assert sorted(os.listdir(res / label / "checkpoints"))[-1] == "6"
    assert rows[label.split("/")[0]]["eval/loss"] == result["final"]["eval/loss"]
  assert rows["small"]["num_params"] != rows["base"]["num_params"]  # the variant's overrides reached its job
  assert (res / "learning_curves.png").stat().st_size > 0

  again = subprocess.run(_driver(res, text_file), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("finished earlier, skipping") == 2 and "submitted" not in again.stdout
  assert f"({record['sweep_id']})" in again.stdout


class _LauncherKilledAfterSubmitting(sweep.SlurmLauncher):
  def _wait(self, jobs, finish, log):
    raise KeyboardInterrupt  # the launcher dies; the jobs it submitted go on


@pytest.mark.slow
def test_two_process_run_on_slurm_and_a_relaunch_waits_on_the_queued_job(slurm, text_file, tmp_path):
  # Each task: 2 CPU devices; the run's global mesh is data 2 x fsdp 2 over both processes.
  opts = sweep.SlurmOptions(tasks_per_node=2, time_min=10, poll_sec=0.5, setup=f"export XLA_FLAGS='{xla_flags(2)}'")
  base = _base(text_file, **{"mesh.devices": 0, "mesh.data": 2, "mesh.fsdp": 2})
  abl = ablation.Ablation("mp", base, {"two_procs": {}}, seeds=(0,), results_dir=str(tmp_path / "res"))
  with pytest.raises(KeyboardInterrupt):
    ablation.run(abl, log=lambda line: None, launcher=_LauncherKilledAfterSubmitting(opts))
  job = json.load(open(tmp_path / "res" / "sweep.json"))["runs"]["two_procs/seed0"]["slurm_job"]

  lines = []
  rows = ablation.run(abl, log=lines.append, launcher=sweep.SlurmLauncher(opts))
  assert json.load(open(tmp_path / "res" / "sweep.json"))["runs"]["two_procs/seed0"]["slurm_job"] == job
  assert not any("submitted" in line for line in lines)  # waited on the queued job (or found its result)
  result = json.load(open(tmp_path / "res" / "two_procs" / "seed0" / "result.json"))
  assert result["perf"]["processes"] == 2 and result["perf"]["devices"] == 4
  assert np.isfinite(rows[0]["eval/loss"])
