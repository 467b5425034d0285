"""Attention cost against sequence length: forward and forward+backward time and memory of each attention
variant at T = 512 .. 16k, ratios to dense measured in the same run, and the crossover length.

  python benchmarks/attention_scaling.py                                     # CPU, about 10 minutes
  python benchmarks/attention_scaling.py --lengths=1024,4096,16384 --dtype=bfloat16 --batch=4   # GPU
  python benchmarks/attention_scaling.py --lengths=128,256 --budget=16 --d_model=64 --heads=2   # smoke

All sparse variants get the same key budget k per query (block: k/2 keys in the own block + k/2 in one selected
block; local: the last k keys, computed in blocks rather than gathered). Memory is the runtime peak on GPU/TPU and
XLA's static estimate on CPU. A length whose dense run would exceed --max_sec is still measured once; a measurement
that would not fit in memory, or fails, prints as n/a.
"""

import json
import math
import os

import jax
from absl import flags

from r1jax import entry
from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.lab.scaling import fit_exponent, measure_in_child, memory_limit_bytes, timed

flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096", "8192", "16384"], "sequence lengths T")
flags.DEFINE_list(
  "variants",
  ["dense", "topk", "block", "window", "random", "local"],
  "attention variants (also: fusion, routed, fw_chunkwise, fw_parallel, fw_recurrent, fw_vector)",
)
flags.DEFINE_integer("budget", 128, "keys per query of the sparse variants")
flags.DEFINE_integer("d_model", 256, "model width")
flags.DEFINE_integer("heads", 4, "query heads (key/value heads = heads)")
flags.DEFINE_integer("batch", 1, "sequences per call")
flags.DEFINE_integer("repeats", 3, "timed calls per measurement (median), after one warm-up")
flags.DEFINE_float("max_sec", 20.0, "stop repeating a measurement after this many seconds")
flags.DEFINE_string("dtype", "float32", "compute dtype: float32 | bfloat16")
flags.DEFINE_float(
  "max_memory_gb",
  0.0,
  "skip (n/a) a measurement whose XLA memory estimate exceeds this; "
  "0 = 75% of the host's RAM on CPU, no limit on GPU/TPU (out of memory is an error there)",
)
flags.DEFINE_string("one", "", "internal: measure one VARIANT:T:BACKWARD in this process and print it as JSON")
FLAGS = flags.FLAGS


def variant_config(name: str) -> ModelConfig:
  """The one-mixer model of variant `name` at the flags' width, heads, dtype and key budget (ConfigError if bad)."""
  k = FLAGS.budget
  variants = {
    "dense": ("attention", {}),
    "topk": ("sparse", {"select": "indexer", "top_k": k}),
    "block": ("block_sparse", {"block_size": k // 2, "top_blocks": 1}),
    "window": ("sparse", {"select": "window", "top_k": k}),
    "random": ("sparse", {"select": "random", "top_k": k}),
    "local": ("local", {"window": k}),  # the same window as 'window', blocked instead of gathered: O(T*k)
    "fusion": ("fusion", {"beta": "token", "window": k}),  # local + global branches
    "routed": ("routed", {"capacity": 0.125, "window": k}),  # global attention for 1/8 of the queries
    # The fast-weight recurrence (r1jax/mixers/recurrent.py) with a data-dependent decay per head, in each form; and the
    # per-key-dimension (GLA) gate in its chunkwise form.
    "fw_chunkwise": ("fast_weight", {"gate": "scalar", "form": "chunkwise"}),
    "fw_parallel": ("fast_weight", {"gate": "scalar", "form": "parallel"}),
    "fw_recurrent": ("fast_weight", {"gate": "scalar", "form": "recurrent"}),
    "fw_vector": ("fast_weight", {"gate": "vector", "form": "chunkwise"}),
  }
  if name not in variants:
    raise ConfigError(f"--variants: unknown {name!r}. Fix: choose from {list(variants)}.")
  mixer, options = variants[name]
  return ModelConfig(
    vocab_size=64,
    d_model=FLAGS.d_model,
    num_heads=FLAGS.heads,
    dtype=FLAGS.dtype,
    mixer=mixer,
    mixer_options={mixer: options} if options else {},
  )


def max_bytes() -> float:
  return memory_limit_bytes(FLAGS.max_memory_gb)


def measure(name: str, T: int, backward: bool) -> dict:
  """One measurement in a child process: running out of host memory kills the child, not the sweep."""
  args = [os.path.abspath(__file__), f"--one={name}:{T}:{int(backward)}"] + [
    f"--{f}={FLAGS[f].value}"
    for f in ("budget", "d_model", "heads", "batch", "repeats", "max_sec", "dtype", "max_memory_gb")
  ]
  result, why = measure_in_child(args)
  if result is not None:
    return result
  print(f"  {name} T={T} {'fwd+bwd' if backward else 'fwd'}: n/a ({why})")
  return {"T": T, "sec": float("nan"), "memory_bytes": float("nan")}


def measure_here(spec: str) -> None:
  name, T, backward = spec.split(":")
  print(
    json.dumps(
      timed(variant_config(name), int(T), FLAGS.batch, bool(int(backward)), FLAGS.repeats, FLAGS.max_sec, max_bytes())
    )
  )


def main(argv):
  del argv
  if FLAGS.one:
    return measure_here(FLAGS.one)
  if not all(t.isdigit() and int(t) > 0 for t in FLAGS.lengths):
    raise ConfigError(f"--lengths={','.join(FLAGS.lengths)}: not positive integers. Fix: e.g. --lengths=512,1024.")
  lengths = [int(t) for t in FLAGS.lengths]
  for name in FLAGS.variants:  # every variant's config is checked before the first measurement
    variant_config(name)
  print(
    f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), d_model {FLAGS.d_model}, "
    f"{FLAGS.heads} heads, batch {FLAGS.batch}, budget k={FLAGS.budget}, dtype {FLAGS.dtype}"
  )
  results = {}
  for T in lengths:
    for name in FLAGS.variants:
      fwd, bwd = measure(name, T, False), measure(name, T, True)
      results[(name, T)] = (fwd, bwd)
      print(
        f"  measured {name:6s} T={T:6d}: fwd {fwd['sec'] * 1e3:9.2f} ms  fwd+bwd {bwd['sec'] * 1e3:9.2f} ms", flush=True
      )
  head = "| T | variant | fwd ms | fwd+bwd ms | fwd+bwd memory MiB | fwd / dense | fwd+bwd / dense | memory / dense |"
  lines = [head, "|" + "---|" * 8]
  for T in lengths:
    dense = results.get(("dense", T))
    for name in FLAGS.variants:
      fwd, bwd = results[(name, T)]
      ratio = (lambda a, b: f"{a / b:.3f}") if dense else (lambda a, b: "n/a")
      cells = [str(T), name, f"{fwd['sec'] * 1e3:.2f}", f"{bwd['sec'] * 1e3:.2f}", f"{bwd['memory_bytes'] / 2**20:.1f}"]
      if dense:
        cells += [
          ratio(fwd["sec"], dense[0]["sec"]),
          ratio(bwd["sec"], dense[1]["sec"]),
          ratio(bwd["memory_bytes"], dense[1]["memory_bytes"]),
        ]
      else:
        cells += ["n/a"] * 3
      lines.append("| " + " | ".join(cells) + " |")
  print("\n" + "\n".join(lines) + "\n")
  for name in FLAGS.variants:
    times = [results[(name, T)][1]["sec"] for T in lengths]
    line = f"{name}: fwd+bwd time slope over T {fit_exponent(lengths, times):.2f}"
    if name != "dense" and "dense" in FLAGS.variants:
      for i, what in ((1, "fwd+bwd"), (0, "fwd")):
        both = [T for T in lengths if math.isfinite(results[("dense", T)][i]["sec"] + results[(name, T)][i]["sec"])]
        faster = [T for T in both if results[(name, T)][i]["sec"] < results[("dense", T)][i]["sec"]]
        line += (
          f"; {what} faster than dense from T={faster[0]}"
          if faster
          else f"; {what} not faster than dense at T={both}"
          if both
          else f"; {what}: no length with both measured"
        )
    print(line)


if __name__ == "__main__":
  entry.run(main)
