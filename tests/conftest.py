"""Test setup: 8 simulated CPU devices (for mesh tests), strict rank promotion, quiet orbax logs."""

import fcntl
import json
import os
import subprocess
import sys
from importlib import util

from r1jax import allocator


def xla_flags(devices: int, fast_compile: bool = True) -> str:
  """XLA_FLAGS for a test process with `devices` simulated CPU devices; `fast_compile`: LLVM's backend optimisation
  off and XLA:CPU's older fusion emitters, as the tests' tiny programs spend more CPU time compiling than running
  (neither changes semantics; results stay within every test's tolerance). Measured on 2 cores, cold cache: the
  contract and decoding tests took 143 s with the fusion emitters, 78 s without; a notebook that trains 300 steps
  50 s with them, 66 s without (so its kernel keeps them: fast_compile=False)."""
  fast = (
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false"
    if fast_compile
    else ""
  )
  return f"--xla_force_host_platform_device_count={devices}{fast}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests, drivers and notebooks (subprocesses inherit this) compile the same tiny programs: compile each once.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".pytest_cache", "xla")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The commands the tests start run with r1jax's allocator setting from their start (r1jax/allocator.py), so none
# re-executes itself; so do pytest-xdist's workers, started after this file is read.
os.environ.update(allocator.environment())

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import logging  # noqa: E402

from r1jax.config import TINY_SHAKESPEARE  # noqa: E402
from r1jax.data.core import resolve_path  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
logging.set_verbosity(logging.WARNING)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = resolve_path(TINY_SHAKESPEARE)  # shipped inside the package


@pytest.fixture
def shakespeare_path():
  return SHAKESPEARE


@pytest.fixture
def text_file(tmp_path):
  """A small synthetic text corpus for tests that need a file but not real data."""
  path = tmp_path / "corpus.txt"
  words = ["the king", "a horse", "my kingdom", "for", "to be", "or not", "that is", "the question"]
  path.write_text(" ".join(words[(i * 7) % len(words)] for i in range(4000)) + "\n")
  return str(path)


def pytest_collection_modifyitems(items):
  """The notebooks (the longest tests) first, then the other slow tests, so that short tests fill the end of a
  parallel run instead of one long test running alone on one core."""
  items.sort(key=lambda item: (not item.nodeid.startswith("tests/test_notebooks.py"), "slow" not in item.keywords))


def gpu_aot_python() -> str:
  """A Python with JAX's CUDA plugin, for compiling for a GPU without one (r1jax/lab/aot.py): R1JAX_GPU_AOT_PYTHON
  (.ci/run makes one beside the test environment: the plugin's start-up messages would reach every other command's
  stderr), else this one if it has the plugin, else ''."""
  if os.environ.get("R1JAX_GPU_AOT_PYTHON"):
    return os.environ["R1JAX_GPU_AOT_PYTHON"]
  return sys.executable if util.find_spec("jax_plugins") and util.find_spec("jax_plugins.xla_cuda12") else ""


@pytest.fixture(scope="session")
def gpu_aot(request, tmp_path_factory):
  """tests/gpu_aot.py's compiled-for-H100 reports of what this session's selected tests read (the contract cases
  they name; the presets' steps if a test without a case uses it), made once per session and shared by the xdist
  workers (their common temporary folder, under a lock); skips where no Python with the CUDA plugin is found."""
  python = gpu_aot_python()
  if not python:
    pytest.skip(
      "compiling for a GPU without one needs JAX's CUDA plugin: pip install -e .[gpu-aot], or set "
      "R1JAX_GPU_AOT_PYTHON to a Python that has it (.ci/run does)"
    )
  users = [it for it in request.session.items if "gpu_aot" in getattr(it, "fixturenames", ())]
  params = [getattr(getattr(it, "callspec", None), "params", {}) for it in users]
  cases = sorted({f"{p['kind']}={p['name']}" for p in params if "kind" in p and "name" in p})
  steps = any("kind" not in p for p in params)
  base = tmp_path_factory.getbasetemp()
  root = base.parent if hasattr(request.config, "workerinput") else base  # the session's own (xdist: shared) folder
  out = root / "gpu_aot.json"
  with open(root / "gpu_aot.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not out.exists():
      paths = [os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")]  # the tests' r1jax, if given
      env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "JAX_PLATFORMS": "cpu"}
      args = [str(out), ",".join(cases), "steps" if steps else "no_steps"]
      run = subprocess.run(
        [python, os.path.join(REPO, "tests", "gpu_aot.py"), *args], env=env, capture_output=True, text=True
      )
      if run.returncode:
        out.write_text(json.dumps({"failed": run.stderr[-3000:]}))
  result = json.loads(out.read_text())
  if "failed" in result:
    pytest.fail(f"tests/gpu_aot.py failed:\n{result['failed']}")
  return result
