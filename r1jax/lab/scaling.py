"""Cost of one sequence mixer as a function of sequence length: compiled FLOPs, time and memory, and the fitted
log-log slope (the empirical complexity exponent). Used by benchmarks/ and by drivers that check O(.) claims."""

import json
import os
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import registry, sharding
from r1jax.config import MeshConfig, ModelConfig, OptimConfig
from r1jax.inference import decoding
from r1jax.model import Transformer
from r1jax.train import (
  compile_train_step,
  compiled_flops,
  init_train_state,
  make_optimizer,
  peak_memory_bytes,
  static_memory_bytes,
)


def memory_limit_bytes(max_memory_gb: float = 0.0, fraction: float = 0.75) -> float:
  """The memory a measurement may take: max_memory_gb when set; else `fraction` of the host's RAM on a CPU (where
  running out kills the process instead of raising) and no limit on a GPU/TPU (out of memory is an error there)."""
  if max_memory_gb:
    return max_memory_gb * 2**30
  if jax.default_backend() != "cpu":
    return float("inf")
  return fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measure_in_child(args: list[str]) -> tuple[dict | None, str]:
  """Runs `python <args>` (a benchmark measuring one cell and printing it as JSON on its last line) in a child
  process, so that running out of memory costs that cell, not the sweep: (the JSON, "") or (None, why it failed)."""
  out = subprocess.run([sys.executable] + args, capture_output=True, text=True)
  if out.returncode == 0:
    return json.loads(out.stdout.strip().splitlines()[-1]), ""
  if out.returncode < 0:  # the host's OOM killer sends SIGKILL; the child's stderr then ends with unrelated logs
    return None, f"killed by signal {-out.returncode}, likely out of host memory"
  return None, (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1][:150]


def compile_mixer(cfg: ModelConfig, T: int, batch: int, backward: bool):
  """(compiled fn, params, x) for layer 0's mixer of `cfg` on a random [batch, T, d_model] input; fn returns the
  output (forward) or the parameter and input gradients of sum(output^2) (forward + backward)."""
  name = cfg.layer_names("mixer")[0]
  module = registry.lookup(registry.MIXERS, name, "model.mixer").module(cfg, cfg.options("mixer", name))
  x = jax.random.normal(jax.random.key(0), (batch, T, cfg.d_model), jax.numpy.dtype(cfg.dtype))
  params = jax.jit(lambda x: module.init(jax.random.key(1), x, deterministic=True))(x)

  def forward(p, x):
    # deterministic=False: no eval-only diagnostics; the key feeds training-time sampling (sparse exploration)
    return module.apply(p, x, deterministic=False, rngs={"dropout": jax.random.key(2)})[0]

  if backward:
    fn = jax.jit(jax.grad(lambda p, x: jax.numpy.sum(forward(p, x).astype(np.float32) ** 2), argnums=(0, 1)))
  else:
    fn = jax.jit(forward)
  return fn.lower(params, x).compile(), params, x


def compiled_cost(cfg: ModelConfig, T: int, batch: int = 1, backward: bool = False) -> dict:
  """XLA's FLOPs and memory estimate of the mixer at length T, compiled but not run."""
  compiled, _, _ = compile_mixer(cfg, T, batch, backward)
  return {"T": T, "flops": compiled_flops(compiled), "memory_bytes": static_memory_bytes(compiled)}


def lm_train_step(cfg: ModelConfig, batch_size: int, seq_len: int):
  """(compiled train step, initial state, batch on the mesh, mesh) of cfg's LM on random tokens, with the default
  optimizer and a mesh over every device: what the train-step benchmarks time."""
  model, mesh = Transformer(cfg), sharding.make_mesh(MeshConfig())
  schedule, tx = make_optimizer(OptimConfig(), 1000)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((batch_size, seq_len), np.float32)}
  state, state_sh = init_train_state(model, tx, batch, 0, mesh)
  batch = sharding.put_batch(batch, mesh)
  return compile_train_step(model, tx, schedule, state, state_sh, batch, jax.random.key(1), mesh), state, batch, mesh


def call_times(fn, *args, repeats: int = 3) -> list[float]:
  """Wall seconds of each of `repeats` calls of fn(*args), results awaited, after one warm-up call (compile,
  caches)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return times


def median_sec(fn, *args, repeats: int = 3) -> float:
  """Median wall time of fn(*args) over `repeats` calls after one warm-up call (compile, caches)."""
  return float(np.median(call_times(fn, *args, repeats=repeats)))


def host_steal_ticks() -> int | None:
  """The CPU time the hypervisor gave to other guests so far (/proc/stat's steal column, all CPUs, in clock ticks),
  or None where the host does not report it: a timing taken while it grows ran on a shared core."""
  try:
    with open("/proc/stat") as f:
      fields = f.readline().split()
    return int(fields[8]) if fields[0] == "cpu" and len(fields) > 8 else None
  except (OSError, ValueError):
    return None


def timed(
  cfg: ModelConfig,
  T: int,
  batch: int = 1,
  backward: bool = False,
  repeats: int = 3,
  budget_sec: float = 30.0,
  max_bytes: float = float("inf"),
  min_total_sec: float = 0.0,
) -> dict:
  """Median, min and max wall time of the compiled mixer at length T over `repeats` calls after one warm-up call
  (fewer where they pass budget_sec; more, up to 100, until they add up to min_total_sec: a short call's median over a
  few calls moved with the host's load), its peak memory, XLA's FLOP count (a loop body counted once) and the share
  of the timed interval the hypervisor gave to other guests ("steal", NaN where the host does not report it).

  Raises MemoryError before running when XLA's memory estimate exceeds max_bytes (the host's RAM on CPU, where
  running out means the process is killed rather than an error raised).
  """
  compiled, params, x = compile_mixer(cfg, T, batch, backward)
  estimate = static_memory_bytes(compiled)
  if estimate > max_bytes:
    raise MemoryError(f"needs ~{estimate / 2**30:.1f} GiB, over the {max_bytes / 2**30:.1f} GiB limit")
  jax.block_until_ready(compiled(params, x))
  times, steal0, start = [], host_steal_ticks(), time.perf_counter()
  while len(times) < max(repeats, 100 if sum(times) < min_total_sec else 0):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - t0)
    if time.perf_counter() - start > budget_sec:
      break
  wall, steal1 = time.perf_counter() - start, host_steal_ticks()
  cpu_ticks = os.sysconf("SC_CLK_TCK") * wall * os.cpu_count()
  return {
    "T": T,
    "sec": float(np.median(times)),
    "min_sec": float(np.min(times)),
    "max_sec": float(np.max(times)),
    "calls": len(times),
    "steal": (steal1 - steal0) / cpu_ticks if steal0 is not None and steal1 is not None else float("nan"),
    "memory_bytes": peak_memory_bytes(compiled),
    "xla_flops": compiled_flops(compiled),
  }


def fit_exponent(lengths, values) -> float:
  """Least-squares slope of log(value) against log(T): ~1 for O(T), ~2 for O(T^2), ~1.1 for O(T log T) here."""
  lengths, values = np.asarray(lengths, np.float64), np.asarray(values, np.float64)
  ok = np.isfinite(values) & (values > 0)
  if ok.sum() < 2:
    return float("nan")
  return float(np.polyfit(np.log(lengths[ok]), np.log(values[ok]), 1)[0])


def precompile(cfg: ModelConfig, T: int, backward: bool = False, batch: int = 1) -> None:
  """Compiles what `timed(cfg, T, batch, backward)` runs, without running it: where JAX's persistent compilation
  cache is set (sweep.use_compile_cache), a later process's `timed` loads the executable instead of compiling it."""
  compile_mixer(cfg, T, batch, backward)


def layer_times(
  layers: dict[str, tuple[ModelConfig, ModelConfig]],
  lengths,
  repeats: int = 2,
  budget_sec: float = 20.0,
  max_bytes: float = float("inf"),
) -> dict[str, dict[str, list[float]]]:
  """name -> {"fwd": [sec per T], "fwd+bwd": [...]}: `timed` for each (forward model, forward+backward model) of
  `layers` at each length, in this process; NaN where XLA's memory estimate exceeds max_bytes."""
  out = {}
  for name, (fwd_cfg, bwd_cfg) in layers.items():
    for T in lengths:
      for what, cfg in (("fwd", fwd_cfg), ("fwd+bwd", bwd_cfg)):
        try:
          sec = timed(cfg, T, backward=what == "fwd+bwd", repeats=repeats, budget_sec=budget_sec, max_bytes=max_bytes)[
            "sec"
          ]
        except MemoryError:
          sec = float("nan")
        out.setdefault(name, {}).setdefault(what, []).append(sec)
  return out


def decode_step(
  cfg: ModelConfig, C: int, batch: int = 1, steps: int = 16, repeats: int = 3, params=None
) -> dict[str, float]:
  """A decoding step of the LM `cfg` at context C (r1jax/inference/decoding.py): seconds per token at `batch` (median of
  `repeats` timed calls of one compiled scan of `steps` tokens at the cache's last positions, after a warm-up call)
  and the cache's bytes per sequence. A step attends a cache of C positions; its content does not change the work,
  so the cache is an empty one (no prefill)."""
  model = Transformer(cfg)
  if params is None:
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  start = jax.jit(
    lambda p, t: model.apply(
      p, t, decode=decoding.Decode.prefill(jnp.ones((batch,), jnp.int32), C), mutable=[decoding.CACHE]
    )[1][decoding.CACHE]
  )

  def scan(p, cache, pos_B):
    def one(c, i):
      (logits, _), new = model.apply(
        {**p, decoding.CACHE: c},
        jnp.zeros((batch, 1), jnp.int32),
        decode=decoding.Decode.step(pos_B + i, C),
        mutable=[decoding.CACHE],
      )
      return new[decoding.CACHE], logits[:, 0, 0]

    return jax.lax.scan(one, cache, jnp.arange(steps))

  cache = start(params, jnp.zeros((batch, 1), jnp.int32))  # an empty cache of C positions
  cache_bytes = float(sum(a.nbytes for a in jax.tree.leaves(cache))) / batch
  pos_B = jnp.full((batch,), C - steps, jnp.int32)
  compiled = jax.jit(scan, donate_argnums=1).lower(params, cache, pos_B).compile()
  times = []
  for _ in range(repeats + 1):  # the first call warms up
    t0 = time.perf_counter()
    cache = jax.block_until_ready(compiled(params, cache, pos_B)[0])  # the donated cache comes back each call
    times.append(time.perf_counter() - t0)
  per = np.asarray(times[1:]) / steps
  return {
    "step_sec": float(np.median(per)),
    "step_min_sec": float(per.min()),
    "step_max_sec": float(per.max()),
    "cache_bytes": cache_bytes,
  }


def decode_steps(
  models: dict[str, ModelConfig], contexts, batch: int = 1, steps: int = 16, repeats: int = 3
) -> dict[str, dict[str, list[float]]]:
  """name -> {"step_sec": [per context], "cache_bytes": [...]}: `decode_step` of each model at each context."""
  out = {}
  for name, cfg in models.items():
    for C in contexts:
      r = decode_step(cfg, C, batch, steps, repeats)
      for k, v in r.items():
        out.setdefault(name, {}).setdefault(k, []).append(v)
  return out


def ratio_table(times: dict[str, dict[str, list[float]]], lengths, labels: dict[str, str], base: str = "dense") -> str:
  """A markdown table of `layer_times`: milliseconds and, in brackets, the ratio to `base` at the same length."""
  lines = [
    "| variant | " + " | ".join(f"T={T} fwd ms (/{base}) | fwd+bwd ms (/{base})" for T in lengths) + " |",
    "|---|" + "---|---|" * len(lengths),
  ]
  for name, t in times.items():
    cells = []
    for i in range(len(lengths)):
      for what in ("fwd", "fwd+bwd"):
        sec, ref = t[what][i], times.get(base, {}).get(what, [float("nan")] * len(lengths))[i]
        cells.append("n/a" if np.isnan(sec) else f"{1e3 * sec:.1f}" + ("" if np.isnan(ref) else f" ({sec / ref:.2f})"))
    lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
