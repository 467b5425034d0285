"""Cost of one sequence mixer as a function of sequence length: compiled FLOPs, time and memory, and the fitted
log-log slope (the empirical complexity exponent). Used by benchmarks/ and by drivers that check O(.) claims."""

import time

import jax
import numpy as np

from r1jax import registry
from r1jax.config import ModelConfig


def mixer_program(cfg: ModelConfig, T: int, batch: int, backward: bool):
  """(jitted fn, params, x) for layer 0's mixer of `cfg` on a random [batch, T, d_model] input; fn returns the
  output (forward) or the input and parameter gradients of sum(output^2) (forward + backward)."""
  name = cfg.layer_names("mixer")[0]
  module = registry.lookup(registry.MIXERS, name, "model.mixer").module(cfg, cfg.options("mixer", name))
  x = jax.random.normal(jax.random.key(0), (batch, T, cfg.d_model), jax.numpy.dtype(cfg.dtype))
  params = jax.jit(lambda x: module.init(jax.random.key(1), x, deterministic=True))(x)

  def forward(p, x):
    return module.apply(p, x, deterministic=False)[0]  # deterministic=False: no eval-only diagnostics

  if backward:
    fn = jax.jit(jax.grad(lambda p, x: jax.numpy.sum(forward(p, x).astype(np.float32) ** 2), argnums=(0, 1)))
  else:
    fn = jax.jit(forward)
  return fn, params, x


def compiled_cost(cfg: ModelConfig, T: int, batch: int = 1, backward: bool = False) -> dict:
  """XLA's FLOPs and peak-memory estimate of the mixer at length T, compiled but not run."""
  fn, params, x = mixer_program(cfg, T, batch, backward)
  compiled = fn.lower(params, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  temp = float(mem.temp_size_in_bytes + mem.output_size_in_bytes) if mem is not None else float("nan")
  return {"T": T, "flops": float(cost.get("flops", float("nan"))), "memory_bytes": temp}


def timed(cfg: ModelConfig, T: int, batch: int = 1, backward: bool = False, repeats: int = 3,
          budget_sec: float = 30.0, max_bytes: float = float("inf")) -> dict:
  """Median wall time of the compiled mixer at length T (after one warm-up call), and its peak memory.

  Raises MemoryError before running when XLA's memory estimate exceeds max_bytes (the host's RAM on CPU, where
  running out means the process is killed rather than an error raised).
  """
  fn, params, x = mixer_program(cfg, T, batch, backward)
  compiled = fn.lower(params, x).compile()
  mem = compiled.memory_analysis()
  estimate = float(mem.temp_size_in_bytes + mem.output_size_in_bytes + mem.argument_size_in_bytes) if mem else 0.0
  if estimate > max_bytes:
    raise MemoryError(f"needs ~{estimate / 2**30:.1f} GiB, over the {max_bytes / 2**30:.1f} GiB limit")
  jax.block_until_ready(compiled(params, x))
  times, start = [], time.perf_counter()
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - t0)
    if time.perf_counter() - start > budget_sec:
      break
  stats = jax.local_devices()[0].memory_stats() or {}
  memory = stats.get("peak_bytes_in_use", estimate or float("nan"))
  return {"T": T, "sec": float(np.median(times)), "memory_bytes": float(memory)}


def fit_exponent(lengths, values) -> float:
  """Least-squares slope of log(value) against log(T): ~1 for O(T), ~2 for O(T^2), ~1.1 for O(T log T) here."""
  lengths, values = np.asarray(lengths, np.float64), np.asarray(values, np.float64)
  ok = np.isfinite(values) & (values > 0)
  if ok.sum() < 2:
    return float("nan")
  return float(np.polyfit(np.log(lengths[ok]), np.log(values[ok]), 1)[0])
