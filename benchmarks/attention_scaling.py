"""Attention cost against sequence length: one layer's forward and forward+backward time (median of --repeats calls
after a warm-up, more until they add up to --min_timed_sec, with the min-max spread), peak memory, FLOPs from the
definition (r1jax/lab/flops.py) and XLA's count, each as a ratio to dense in the same run, and the crossover length
of each variant.

  python benchmarks/attention_scaling.py                                      # CPU: T = 4k, 16k, 64k, ~50 min
  python benchmarks/attention_scaling.py --lengths=4096,16384,65536,131072 --dtype=bfloat16   # GPU
  python benchmarks/attention_scaling.py --lengths=128,256 --d_model=64 --heads=2 --repeats=1  # smoke

Dense is the faster of XLA's [T, T] path and the blocked O(T)-memory one (r1jax/mixers/flash.py) at each length and
direction; the table says which. Sparse variants at their papers' sizes: NSA (l=32, d=16, l'=64, n=16, w=512),
DSA (V3.2's recipe, k=256 and k=2048), block top-k (MoBA/NSA selection: blocks of 64, top 16 + the own block), the
sliding window (w=512) and the fast-weight recurrence; legacy variants (topk, random, fusion, routed, fw_*) take the
key budget --budget. Each measurement runs in a child process pinned to --cores, so running out of memory costs one
cell; a cell whose XLA memory estimate exceeds the limit, or (except dense) whose forward+backward time projected
from the shorter lengths exceeds --max_cell_sec, prints as n/a. Results: --out (JSON, with provenance). Two runs
check each other: --compare=<the other run's report.json> prints (and saves) each cell's difference from it, in
seconds and as a ratio to dense.
"""

import json
import math
import os

import jax
from absl import flags

from r1jax import entry
from r1jax.atomic import write_record
from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.lab.configs import NSA_PAPER
from r1jax.lab.flops import mixer_flops
from r1jax.lab.scaling import fit_exponent, measure_in_child, memory_limit_bytes, timed
from r1jax.mixers.sparse import DSA_INDEXER

flags.DEFINE_list("lengths", ["4096", "16384", "65536"], "sequence lengths T")
flags.DEFINE_list(
  "variants",
  ["dense", "nsa", "dsa256", "dsa2048", "block", "window", "fast_weight"],
  "attention variants (also: topk, random, local, fusion, routed, fw_chunkwise, fw_parallel, fw_recurrent, fw_vector)",
)
flags.DEFINE_integer("budget", 128, "keys per query of the legacy sparse variants (topk, random, local, ...)")
flags.DEFINE_integer("d_model", 128, "model width")
flags.DEFINE_integer("heads", 2, "query heads (key/value heads = heads); head size d_model / heads")
flags.DEFINE_integer("batch", 1, "sequences per call")
flags.DEFINE_integer("repeats", 5, "timed calls per measurement (median, min, max), after one warm-up")
flags.DEFINE_float("min_timed_sec", 5.0, "more calls (up to 100) until a measurement's timed calls add up to this")
flags.DEFINE_float("max_cell_sec", 150.0, "skip a non-dense cell whose projected forward+backward call exceeds this")
flags.DEFINE_string("dtype", "float32", "compute dtype: float32 | bfloat16")
flags.DEFINE_list("cores", [], "CPU cores each measurement is pinned to (default: all this process may use)")
flags.DEFINE_float(
  "max_memory_gb",
  0.0,
  "skip (n/a) a measurement whose XLA memory estimate exceeds this; "
  "0 = 75% of the host's RAM on CPU, no limit on GPU/TPU (out of memory is an error there)",
)
flags.DEFINE_string("out", "results/attention_scaling/report.json", "where the measurements go (JSON); empty: nowhere")
flags.DEFINE_string("compare", "", "an earlier report.json of the same settings: print each cell's agreement with it")
flags.DEFINE_string("one", "", "internal: measure one VARIANT:T:BACKWARD in this process and print it as JSON")
FLAGS = flags.FLAGS

DENSE_PATHS = ("xla", "flash")  # the two dense implementations; "dense" is the faster per cell


def variant_config(name: str) -> ModelConfig:
  """The one-mixer model of variant `name` ("dense:xla" / "dense:flash" for one dense path) at the flags' width,
  heads and dtype (ConfigError if unknown)."""
  k = FLAGS.budget
  variants = {
    "dense:xla": ("attention", {"impl": "xla"}),
    "dense:flash": ("attention", {"impl": "flash"}),
    "nsa": ("nsa", NSA_PAPER),
    "dsa256": ("sparse", {"select": "indexer", "top_k": 256, **DSA_INDEXER}),
    "dsa2048": ("sparse", {"select": "indexer", "top_k": 2048, **DSA_INDEXER}),
    "block": ("block_sparse", {"block_size": NSA_PAPER["slc_block"], "top_blocks": NSA_PAPER["top_blocks"]}),
    "window": ("local", {"window": NSA_PAPER["window"]}),
    "fast_weight": ("fast_weight", {"gate": "scalar", "form": "chunkwise"}),
    "topk": ("sparse", {"select": "indexer", "top_k": k}),
    "random": ("sparse", {"select": "random", "top_k": k}),
    "local": ("local", {"window": k}),
    "fusion": ("fusion", {"beta": "token", "window": k}),  # local + global branches
    "routed": ("routed", {"capacity": 0.125, "window": k}),  # global attention for 1/8 of the queries
    "fw_chunkwise": ("fast_weight", {"gate": "scalar", "form": "chunkwise"}),
    "fw_parallel": ("fast_weight", {"gate": "scalar", "form": "parallel"}),
    "fw_recurrent": ("fast_weight", {"gate": "scalar", "form": "recurrent"}),
    "fw_vector": ("fast_weight", {"gate": "vector", "form": "chunkwise"}),
  }
  if name == "dense":
    name = "dense:xla"
  if name not in variants:
    raise ConfigError(f"--variants: unknown {name!r}. Fix: choose from {['dense'] + list(variants)[2:]}.")
  mixer, options = variants[name]
  return ModelConfig(
    vocab_size=64,
    d_model=FLAGS.d_model,
    num_heads=FLAGS.heads,
    dtype=FLAGS.dtype,
    mixer=mixer,
    mixer_options={mixer: options} if options else {},
  )


NAN = {"sec": float("nan"), "min_sec": float("nan"), "max_sec": float("nan"), "memory_bytes": float("nan")}


def measure(name: str, T: int, backward: bool) -> dict:
  """One measurement in a child process pinned to --cores: running out of host memory kills the child, not the
  sweep."""
  args = [os.path.abspath(__file__), f"--one={name}:{T}:{int(backward)}"] + [
    f"--{f}={FLAGS[f].value}"
    for f in ("budget", "d_model", "heads", "batch", "repeats", "min_timed_sec", "dtype", "max_memory_gb")
  ]
  if FLAGS.cores:
    args.append(f"--cores={','.join(FLAGS.cores)}")
  result, why = measure_in_child(args)
  if result is not None:
    return result
  print(f"  {name} T={T} {'fwd+bwd' if backward else 'fwd'}: n/a ({why})")
  return {"T": T, **NAN, "why": why}


def measure_here(spec: str) -> None:
  name, T, backward = spec.rsplit(":", 2)  # the name may hold a colon ("dense:flash")
  cores = {int(c) for c in FLAGS.cores} or os.sched_getaffinity(0)
  os.sched_setaffinity(0, cores)  # before XLA starts its thread pool: the measurement's cores, and no others
  cfg = variant_config(name)
  limit = memory_limit_bytes(FLAGS.max_memory_gb)
  out = timed(cfg, int(T), FLAGS.batch, bool(int(backward)), FLAGS.repeats, float("inf"), limit, FLAGS.min_timed_sec)
  print(json.dumps({**out, "cores": sorted(cores)}))


def projected_sec(measured: list[tuple[int, float]], T: int) -> float:
  """A forward+backward time at T extrapolated from the measured (length, seconds) by their log-log slope (2, the
  dense exponent, from a single length)."""
  ok = [(t, s) for t, s in measured if math.isfinite(s)]
  if not ok:
    return float("nan")
  slope = fit_exponent(*zip(*ok)) if len(ok) > 1 else 2.0
  return ok[-1][1] * (T / ok[-1][0]) ** max(slope, 1.0)


def run_cells(lengths: list[int]) -> dict:
  """(variant, T) -> {"fwd": ..., "fwd+bwd": ..., "path": ...}; dense the faster of its two paths per direction."""
  results, history = {}, {}
  for T in lengths:
    for name in FLAGS.variants:
      if name == "dense":
        cells = {}
        for what, bwd in (("fwd", False), ("fwd+bwd", True)):
          paths = {p: measure(f"dense:{p}", T, bwd) for p in DENSE_PATHS}
          best = min(paths, key=lambda p: paths[p]["sec"] if math.isfinite(paths[p]["sec"]) else float("inf"))
          cells[what] = {**paths[best], "path": best, "paths": {p: r["sec"] for p, r in paths.items()}}
        results[(name, T)] = cells
      else:
        guess = projected_sec(history.get(name, []), T)
        if guess > FLAGS.max_cell_sec:
          print(f"  {name} T={T}: n/a (forward+backward projected at {guess:.0f} s > --max_cell_sec)")
          skip = {"T": T, **NAN, "why": f"projected {guess:.0f} s"}
          results[(name, T)] = {"fwd": skip, "fwd+bwd": skip}
          continue
        results[(name, T)] = {"fwd": measure(name, T, False), "fwd+bwd": measure(name, T, True)}
      history.setdefault(name, []).append((T, results[(name, T)]["fwd+bwd"]["sec"]))
      f, b = results[(name, T)]["fwd"], results[(name, T)]["fwd+bwd"]
      steal = max(f.get("steal", 0.0), b.get("steal", 0.0))  # NaN (not reported) compares False
      print(
        f"  measured {name:11s} T={T:6d}: fwd {f['sec'] * 1e3:10.1f} ms  fwd+bwd {b['sec'] * 1e3:10.1f} ms"
        + (f"  (host steal {steal:.0%} of the CPU time)" if steal > 0.01 else ""),
        flush=True,
      )
  return results


def table(results: dict, lengths: list[int]) -> str:
  """The markdown table: times with their spread, memory, and the FLOP, time and memory ratios to dense."""
  head = (
    "| T | variant | dense path (fwd / fwd+bwd) | fwd ms [min-max] | fwd+bwd ms [min-max] | fwd+bwd peak MiB "
    "| FLOPs / dense | fwd / dense | fwd+bwd / dense | memory / dense | fwd GFLOP/s (/ dense's) |"
  )
  lines = [head, "|" + "---|" * 11]
  for T in lengths:
    dense = results.get(("dense", T))
    dense_flops = mixer_flops(variant_config("dense"), T)["total"]
    for name in FLAGS.variants:
      f, b = results[(name, T)]["fwd"], results[(name, T)]["fwd+bwd"]
      flops = mixer_flops(variant_config(name), T)["total"]
      rate = flops / f["sec"] / 1e9
      ratio = lambda a, d: f"{a / d:.3f}" if dense and math.isfinite(a / d) else "n/a"  # noqa: E731
      spread = lambda c: f"{c['sec'] * 1e3:.1f} [{c['min_sec'] * 1e3:.1f}-{c['max_sec'] * 1e3:.1f}]"  # noqa: E731
      path = f"{f['path']} / {b['path']}" if name == "dense" else ""
      dense_rate = dense_flops / dense["fwd"]["sec"] / 1e9 if dense else float("nan")
      lines.append(
        f"| {T} | {name} | {path} | {spread(f)} | {spread(b)} | {b['memory_bytes'] / 2**20:.1f} "
        f"| {flops / dense_flops:.3f} | {ratio(f['sec'], dense['fwd']['sec'] if dense else 1)} "
        f"| {ratio(b['sec'], dense['fwd+bwd']['sec'] if dense else 1)} "
        f"| {ratio(b['memory_bytes'], dense['fwd+bwd']['memory_bytes'] if dense else 1)} "
        f"| {rate:.1f} ({rate / dense_rate:.2f}) |"
      )
  return "\n".join(lines)


def crossovers(results: dict, lengths: list[int]) -> list[str]:
  """Per variant: its fitted time slope and the first length at which it beats dense, forward and fwd+bwd."""
  lines = []
  for name in FLAGS.variants:
    times = [results[(name, T)]["fwd+bwd"]["sec"] for T in lengths]
    line = f"{name}: fwd+bwd time slope over T {fit_exponent(lengths, times):.2f}"
    if name != "dense" and "dense" in FLAGS.variants:
      for what in ("fwd+bwd", "fwd"):
        sec = lambda v, T: results[(v, T)][what]["sec"]  # noqa: E731
        both = [T for T in lengths if math.isfinite(sec("dense", T) + sec(name, T))]
        faster = [T for T in both if sec(name, T) < sec("dense", T)]
        line += (
          f"; {what} faster than dense from T={faster[0]}"
          if faster
          else f"; {what} not faster than dense at T={both}"
          if both
          else f"; {what}: no length with both measured"
        )
    lines.append(line)
  return lines


def agreement(record: dict, other: dict, tolerance: float = 0.15) -> list[str]:
  """Each cell's time in `record` against `other` (an earlier report of the same settings): the difference as a
  share of the smaller, for the seconds and for the ratio to dense, and how many cells agree within `tolerance`."""
  diff = lambda x, y: abs(x - y) / min(x, y)  # noqa: E731
  mark = lambda d: f"{d:.0%}{' *' if d > tolerance else ''}"  # noqa: E731

  def cell(rec, name, what, T):
    return rec["variants"][name][what][rec["lengths"].index(T)]["sec"] if name in rec["variants"] else float("nan")

  rows, times, ratios = [], [], []
  for name in record["variants"]:
    for what in ("fwd", "fwd+bwd"):
      for T in (T for T in record["lengths"] if T in other["lengths"]):
        a, b = cell(record, name, what, T), cell(other, name, what, T)
        if not math.isfinite(a + b):
          continue
        times.append(diff(a, b))
        ra, rb = a / cell(record, "dense", what, T), b / cell(other, "dense", what, T)
        line = f"| {T} | {name} | {what} | {a * 1e3:.1f} ({b * 1e3:.1f}) | {mark(times[-1])} "
        if name != "dense" and math.isfinite(ra + rb):
          ratios.append(diff(ra, rb))
          line += f"| {ra:.3f} ({rb:.3f}) | {mark(ratios[-1])} |"
        rows.append(line + ("" if line.endswith("|") else "| | |"))
  ok = lambda ds: sum(d <= tolerance for d in ds)  # noqa: E731
  return [
    f"{ok(times)} of {len(times)} cells' times within {tolerance:.0%} of the other run's, {ok(ratios)} of "
    f"{len(ratios)} ratios to dense (* over)",
    "",
    "| T | variant | what | ms (other run) | difference | / dense (other run) | difference |",
    "|" + "---|" * 7,
    *rows,
  ]


def main(argv):
  del argv
  if FLAGS.one:
    return measure_here(FLAGS.one)
  if not all(t.isdigit() and int(t) > 0 for t in FLAGS.lengths):
    raise ConfigError(f"--lengths={','.join(FLAGS.lengths)}: not positive integers. Fix: e.g. --lengths=512,1024.")
  if FLAGS.repeats < 1:
    raise ConfigError(f"--repeats={FLAGS.repeats}: fewer than one call. Fix: use >= 5 for a median that holds still.")
  lengths = [int(t) for t in FLAGS.lengths]
  for name in FLAGS.variants:  # every variant's config is checked before the first measurement
    variant_config(name)
  other = None
  if FLAGS.compare:
    if not os.path.isfile(FLAGS.compare):
      raise ConfigError(f"--compare={FLAGS.compare}: no such file. Fix: pass an earlier run's report.json.")
    with open(FLAGS.compare) as f:
      other = json.load(f)
  print(
    f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), d_model {FLAGS.d_model}, "
    f"{FLAGS.heads} heads, batch {FLAGS.batch}, dtype {FLAGS.dtype}, median of {FLAGS.repeats} calls"
  )
  results = run_cells(lengths)
  text = table(results, lengths)
  lines = crossovers(results, lengths)
  print("\n" + text + "\n\n" + "\n".join(lines))
  flops = {name: [mixer_flops(variant_config(name), T) for T in lengths] for name in FLAGS.variants}
  record = {
    "backend": f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
    "model": {"d_model": FLAGS.d_model, "heads": FLAGS.heads, "batch": FLAGS.batch, "dtype": FLAGS.dtype},
    "repeats": FLAGS.repeats,
    "min_timed_sec": FLAGS.min_timed_sec,
    "lengths": lengths,
    "variants": {
      name: {what: [results[(name, T)][what] for T in lengths] for what in ("fwd", "fwd+bwd")} | {"flops": flops[name]}
      for name in FLAGS.variants
    },
    "table": text,
    "crossovers": lines,
  }
  if other is not None:
    record["agreement"] = agreement(record, other)
    print("\nAgainst " + FLAGS.compare + ": " + "\n".join(record["agreement"]))
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    write_record(os.path.abspath(FLAGS.out), record)


if __name__ == "__main__":
  entry.run(main)
