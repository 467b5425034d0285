"""Attention cost against sequence length: forward and forward+backward time and memory of each attention
variant at T = 512 .. 16k, ratios to dense measured in the same run, and the crossover length.

  python benchmarks/attention_scaling.py                                     # CPU, about 10 minutes
  python benchmarks/attention_scaling.py --lengths=1024,4096,16384 --dtype=bfloat16 --batch=4   # GPU
  python benchmarks/attention_scaling.py --lengths=128,256 --budget=16 --d_model=64 --heads=2   # smoke

All sparse variants get the same key budget k per query (block: k/2 keys in the own block + k/2 in one selected
block). Memory is the runtime peak on GPU/TPU and XLA's static estimate on CPU. A length whose dense run would
exceed --max_sec is still measured once; a failed measurement (e.g. out of memory) prints as n/a.
"""

import jax
from absl import app, flags

from r1jax.config import ModelConfig
from r1jax.scaling import fit_exponent, timed

flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096", "8192", "16384"], "sequence lengths T")
flags.DEFINE_list("variants", ["dense", "topk", "block", "window", "random"], "attention variants")
flags.DEFINE_integer("budget", 128, "keys per query of the sparse variants")
flags.DEFINE_integer("d_model", 256, "model width")
flags.DEFINE_integer("heads", 4, "query heads (key/value heads = heads)")
flags.DEFINE_integer("batch", 1, "sequences per call")
flags.DEFINE_integer("repeats", 3, "timed calls per measurement (median), after one warm-up")
flags.DEFINE_float("max_sec", 20.0, "stop repeating a measurement after this many seconds")
flags.DEFINE_string("dtype", "float32", "compute dtype: float32 | bfloat16")
FLAGS = flags.FLAGS


def variant_config(name: str) -> ModelConfig:
  k = FLAGS.budget
  mixer, options = {
      "dense": ("attention", {}),
      "topk": ("sparse", {"select": "indexer", "top_k": k}),
      "block": ("block_sparse", {"block_size": k // 2, "top_blocks": 1}),
      "window": ("sparse", {"select": "window", "top_k": k}),
      "random": ("sparse", {"select": "random", "top_k": k}),
  }[name]
  return ModelConfig(vocab_size=64, d_model=FLAGS.d_model, num_heads=FLAGS.heads, dtype=FLAGS.dtype, mixer=mixer,
                     mixer_options={mixer: options} if options else {})


def measure(name: str, T: int, backward: bool) -> dict:
  try:
    return timed(variant_config(name), T, FLAGS.batch, backward, FLAGS.repeats, FLAGS.max_sec)
  except Exception as e:  # noqa: BLE001 (out of memory or a backend limit: reported, the sweep goes on)
    print(f"  {name} T={T} {'fwd+bwd' if backward else 'fwd'}: failed ({type(e).__name__}: {str(e)[:120]})")
    return {"T": T, "sec": float("nan"), "memory_bytes": float("nan")}


def main(argv):
  del argv
  lengths = [int(t) for t in FLAGS.lengths]
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), d_model {FLAGS.d_model}, "
        f"{FLAGS.heads} heads, batch {FLAGS.batch}, budget k={FLAGS.budget}, dtype {FLAGS.dtype}")
  results = {}
  for T in lengths:
    for name in FLAGS.variants:
      fwd, bwd = measure(name, T, False), measure(name, T, True)
      results[(name, T)] = (fwd, bwd)
      print(f"  measured {name:6s} T={T:6d}: fwd {fwd['sec'] * 1e3:9.2f} ms  fwd+bwd {bwd['sec'] * 1e3:9.2f} ms",
            flush=True)
  head = "| T | variant | fwd ms | fwd+bwd ms | fwd+bwd memory MiB | fwd / dense | fwd+bwd / dense | memory / dense |"
  lines = [head, "|" + "---|" * 8]
  for T in lengths:
    dense = results.get(("dense", T))
    for name in FLAGS.variants:
      fwd, bwd = results[(name, T)]
      ratio = (lambda a, b: f"{a / b:.3f}") if dense else (lambda a, b: "n/a")
      cells = [str(T), name, f"{fwd['sec'] * 1e3:.2f}", f"{bwd['sec'] * 1e3:.2f}",
               f"{bwd['memory_bytes'] / 2**20:.1f}"]
      if dense:
        cells += [ratio(fwd["sec"], dense[0]["sec"]), ratio(bwd["sec"], dense[1]["sec"]),
                  ratio(bwd["memory_bytes"], dense[1]["memory_bytes"])]
      else:
        cells += ["n/a"] * 3
      lines.append("| " + " | ".join(cells) + " |")
  print("\n" + "\n".join(lines) + "\n")
  for name in FLAGS.variants:
    times = [results[(name, T)][1]["sec"] for T in lengths]
    line = f"{name}: fwd+bwd time slope over T {fit_exponent(lengths, times):.2f}"
    if name != "dense" and "dense" in FLAGS.variants:
      faster = [T for T in lengths if results[(name, T)][1]["sec"] < results[("dense", T)][1]["sec"]]
      line += f"; faster than dense (fwd+bwd) from T={faster[0]}" if faster else "; never faster than dense here"
      faster = [T for T in lengths if results[(name, T)][0]["sec"] < results[("dense", T)][0]["sec"]]
      line += f"; fwd from T={faster[0]}" if faster else "; fwd never faster"
    print(line)


if __name__ == "__main__":
  app.run(main)
