"""The tree by role (STYLE.md 17): every library module imports on its own, the imports form no cycle, nothing outside
lab/ imports lab/ but the entry points, and a new mixer is one new file that the registry-parametrised contract and
decoding tests cover without any other file edited."""

import ast
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, gpu_aot_python, xla_flags

PACKAGE = os.path.join(REPO, "r1jax")
# Entry points may import lab/ (STYLE.md 17): what they run is an experiment's machinery.
ENTRY_POINTS = {
  "r1jax.main": "--preset=NAME[:MECHANISM] reads the named presets (r1jax/lab/configs.py)",
  "r1jax.claims": "`python -m r1jax.claims`: the ledger's code lives in r1jax/lab/claims.py",
}


def _modules() -> dict[str, str]:
  """Dotted name -> path of every module of the package (a package is its __init__)."""
  out = {}
  for root, dirs, files in os.walk(PACKAGE):
    dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
    for f in sorted(files):
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
        out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, f)
  return out


MODULES = _modules()


def _imports(path: str, top_level_only: bool) -> set[str]:
  """The r1jax modules a file imports (`from r1jax.lab import claims` is the module r1jax.lab.claims); with
  `top_level_only`, only the statements that run on import (not those inside functions)."""
  tree = ast.parse(open(path).read())
  nodes = []
  stack = list(tree.body)
  while stack:
    node = stack.pop()
    nodes.append(node)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and top_level_only:
      continue
    stack.extend(ast.iter_child_nodes(node))
  out = set()
  for node in nodes:
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.split(".")[0] == "r1jax"}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "r1jax":
      subs = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
      out |= subs or {node.module}
  return out


def test_the_layout_has_its_folders_and_every_module_is_in_one_place():
  top = {m for m in MODULES if m.count(".") == 1}
  assert {"r1jax.mixers", "r1jax.ffn", "r1jax.data", "r1jax.lab"} <= top
  assert len(top) <= 25, f"the core holds {len(top)} modules: put new ones in the folder of their role"
  assert not os.path.exists(os.path.join(PACKAGE, "attention")), "mixers live in r1jax/mixers/"


def test_nothing_outside_lab_imports_lab():
  offenders = {
    m: sorted(i for i in _imports(p, top_level_only=False) if i.startswith("r1jax.lab"))
    for m, p in MODULES.items()
    if not m.startswith("r1jax.lab") and m not in ENTRY_POINTS
  }
  assert not {m: i for m, i in offenders.items() if i}, "only entry points may import r1jax.lab"


def test_the_module_imports_form_no_cycle():
  """Over the imports that run at import time; a submodule import runs its parent packages' __init__ too."""
  graph = {}
  for m, p in MODULES.items():
    deps = set()
    for i in _imports(p, top_level_only=True):
      parts = i.split(".")
      deps |= {".".join(parts[:k]) for k in range(2, len(parts) + 1)} & set(MODULES)
    graph[m] = deps - {m}
  state, path = {}, []

  def visit(m):
    state[m] = "open"
    path.append(m)
    for d in sorted(graph[m]):
      if state.get(d) == "open":
        raise AssertionError("import cycle: " + " -> ".join(path[path.index(d) :] + [d]))
      if d not in state:
        visit(d)
    path.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


# Run in one fresh interpreter: the libraries r1jax imports (never r1jax itself) are imported once, then a forked
# child per module imports that module alone, so each import sees no r1jax module loaded before it (as in a fresh
# interpreter; a fresh interpreter per module spent ~4 s of CPU each on importing jax again, ~4 minutes in all).
FORK_EACH = r"""
import importlib, os, sys, traceback
for name in sys.argv[2].split(","):
  try:
    importlib.import_module(name)
  except ImportError:
    pass  # an optional library: the child that needs it reports it
assert not [m for m in sys.modules if m.split(".")[0] == "r1jax"], "a library imported r1jax"
failed = {}
for module in sys.argv[1].split(","):
  read, write = os.pipe()
  pid = os.fork()
  if pid == 0:
    os.close(read)
    try:
      importlib.import_module(module)
      code = 0
    except BaseException:
      os.write(write, traceback.format_exc()[-2000:].encode())
      code = 1
    os._exit(code)
  os.close(write)
  with os.fdopen(read) as f:
    text = f.read()
  if os.waitpid(pid, 0)[1]:
    failed[module] = text or "the child died"
for module, text in failed.items():
  print(f"=== import {module} failed:\n{text}")
sys.exit(1 if failed else 0)
"""


def _libraries() -> list[str]:
  """The modules outside r1jax that r1jax's files import (whole dotted names, as written)."""
  out = set()
  for path in MODULES.values():
    for node in ast.walk(ast.parse(open(path).read())):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
      if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [node.module]
      out |= {n for n in names if n.split(".")[0] != "r1jax"}
  return sorted(out)


@pytest.mark.slow
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
  out = subprocess.run(
    [sys.executable, "-c", FORK_EACH, ",".join(sorted(MODULES)), ",".join(_libraries())],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"},
  )
  assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]


THROWAWAY = '''"""A throw-away mixer (tests/test_layout.py): a token adds its predecessor, through its own gate."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import layers
from r1jax.inference import decoding
from r1jax.registry import register_mixer


@dataclasses.dataclass(frozen=True)
class ShiftOptions:
  gated: bool = True  # True: the predecessor passes a sigmoid gate of the token | False: it is added as is


@register_mixer("throwaway_shift", ShiftOptions)
class Shift(nn.Module):
  cfg: "ModelConfig"  # noqa: F821
  opts: ShiftOptions

  @nn.compact
  def __call__(self, x_BxTxD, *, deterministic, decode=None):
    cfg, D = self.cfg, self.cfg.d_model
    dt = layers.dtype(cfg.dtype)
    w_prev, w_gate = (layers.param(self, n, (D, D), ("embed", "mlp"), cfg.init_std, cfg.param_dtype).astype(dt)
                      for n in ("w_prev", "w_gate"))
    x = x_BxTxD.astype(dt)
    if decoding.stepping(decode):
      seen = decoding.cached(self, "x", x, decode)
      at = jnp.maximum(decode.positions - 1, 0)[:, None, None]
      prev = jnp.take_along_axis(seen, at, axis=1) * (decode.positions > 0)[:, None, None].astype(dt)
    else:
      prev = jnp.pad(x, ((0, 0), (1, 0), (0, 0)))[:, :-1]
      if decode is not None:
        decoding.cached(self, "x", x, decode)
    h = jnp.einsum("BTD,DE->BTE", prev, w_prev)
    if self.opts.gated:
      h = h * jax.nn.sigmoid(jnp.einsum("BTD,DE->BTE", x, w_gate))
    return h, {}
'''


@pytest.mark.slow
def test_a_new_mixer_is_one_file_that_the_contract_and_decoding_tests_cover(tmp_path):
  """A copy of the package and its tests with one file added under mixers/: the registry-parametrised tests run
  for the new mixer, and pass, with no other file edited."""
  for folder in ("r1jax", "tests"):
    shutil.copytree(os.path.join(REPO, folder), tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path)
  (tmp_path / "r1jax" / "mixers" / "throwaway.py").write_text(THROWAWAY)
  env = {**os.environ, "PYTHONPATH": str(tmp_path), "XLA_FLAGS": xla_flags(8), "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "-q",
      "-rA",
      "-p",
      "no:cacheprovider",
      "-k",
      "throwaway",
      "tests/test_contract.py",
      "tests/test_decoding.py",
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  passed = [line for line in out.stdout.splitlines() if line.startswith("PASSED") and "throwaway" in line]
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  covered = {line.split("::")[1].split("[")[0] for line in passed}
  assert covered == {
    "test_no_row_reads_another_and_causal_mixers_read_no_later_token",
    "test_changing_later_tokens_leaves_earlier_outputs_unchanged",
    "test_shapes_and_jit_equals_eager",
    "test_bfloat16_compute_is_finite_and_near_float32",
    "test_sharded_equals_unsharded",
    "test_prefill_then_steps_equal_the_full_forward",
  } | ({"test_forward_and_backward_compile_for_an_h100_without_a_gpu"} if gpu_aot_python() else set()), out.stdout[
    -3000:
  ]
