"""Where a result came from: the code's commit, the package versions, XLA flags, the hardware and the time, recorded
in every result r1jax writes (r1jax/atomic.py's write_record) so that a changed number can be traced to the code or
to the environment (MLPerf's and lm-evaluation-harness's practice)."""

import datetime
import functools
import importlib.metadata
import os
import platform
import subprocess

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")  # the versions recorded
CODE = ("r1jax", "experiments", "benchmarks", "pyproject.toml", "requirements.txt")  # what "dirty" looks at
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def code() -> dict:
  """The git commit of the code this process runs and whether its code differs from it (the package's checkout;
  {"commit": None} for an installed copy without one). Results and notebooks do not count as dirty code."""

  def git(*args):
    return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=30)

  head = git("rev-parse", "HEAD") if os.path.exists(os.path.join(REPO, ".git")) else None  # a dir, or a worktree's file
  if head is None or head.returncode:
    return {"commit": None, "dirty": None}
  changed = git("status", "--porcelain", "--untracked-files=no", "--", *CODE)
  return {"commit": head.stdout.strip(), "dirty": bool(changed.stdout.strip())}


def versions() -> dict:
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def hardware() -> dict:
  import jax  # only here: recording provenance needs JAX's backend, reading it does not

  devices = jax.devices()
  out = {
    "backend": jax.default_backend(),
    "device_kind": devices[0].device_kind,
    "devices": len(devices),
    "processes": jax.process_count(),
  }
  if out["backend"] == "cpu":
    # the machine's cores, and those this process may run on (a sweep pins each worker to one)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out.update(cpu=cpu_model(), cores=os.cpu_count(), cores_usable=usable)
  return out


def provenance() -> dict:
  """Everything above, and the UTC time: what a result records."""
  return {
    **code(),
    "versions": versions(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    **hardware(),
    "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
  }


def hardware_name(p: dict) -> str:
  """'cpu: AMD EPYC, 2 cores' / '8 x NVIDIA H100 80GB HBM3 (gpu)'."""
  if p.get("backend") == "cpu":
    return f"cpu: {p.get('cpu', '?')}, {p.get('cores', '?')} cores"
  return f"{p.get('devices', '?')} x {p.get('device_kind', '?')} ({p.get('backend', '?')})"


def describe(records: list[dict | None]) -> str:
  """What produced a set of results, in one line: their commit, jax version and hardware, or each distinct one with
  its count when they differ (a mixture); 'not recorded' for results written before r1jax recorded provenance."""
  groups: dict[str, int] = {}
  for p in records:
    if not p:
      key = "not recorded (written before r1jax recorded provenance; rerun to record it)"
    else:
      commit = (p.get("commit") or "no git checkout")[:7] + (" with local changes" if p.get("dirty") else "")
      key = f"commit {commit}, jax {p['versions'].get('jax')}, {hardware_name(p)}"
    groups[key] = groups.get(key, 0) + 1
  if len(groups) == 1:
    return next(iter(groups))
  return "mixture: " + "; ".join(f"{n} x {key}" for key, n in groups.items())


def drift(record: dict | None, installed: dict | None = None) -> dict[str, tuple[str | None, str | None]]:
  """{package: (recorded, installed)} for each version a result recorded that differs from this environment's;
  {"provenance": (None, ...)} for a result that recorded none."""
  installed = installed or versions()
  if not record:
    return {"provenance": (None, "not recorded")}
  return {k: (v, installed.get(k)) for k, v in record["versions"].items() if installed.get(k) != v}
