"""Train-step throughput: tokens/s, achieved FLOP/s (from the compiled step's cost analysis) and, on GPU/TPU, MFU.

  python benchmarks/train_step.py                                  # CPU defaults
  python benchmarks/train_step.py --sizes=4x128x4,8x512x8 --seq_len=1024 --batch=16 --dtype=bfloat16   # GPU

Each size is LAYERSxWIDTHxHEADS of the dense baseline; ratios are against the first size, measured in the same run.
"""

import time

import jax
from absl import flags

from r1jax import entry
from r1jax.config import ModelConfig
from r1jax.registry import ConfigError
from r1jax.scaling import lm_train_step
from r1jax.train import compiled_flops, peak_memory_bytes

flags.DEFINE_list("sizes", ["2x64x2", "4x128x4", "6x192x6"], "LAYERSxWIDTHxHEADS per row")
flags.DEFINE_integer("seq_len", 64, "tokens per sequence")
flags.DEFINE_integer("batch", 12, "global sequences per step")
flags.DEFINE_integer("vocab", 65, "vocabulary size")
flags.DEFINE_integer("steps", 20, "timed steps (after 3 warm-up steps)")
flags.DEFINE_string("dtype", "float32", "compute dtype: float32 | bfloat16")
FLAGS = flags.FLAGS

# Dense bf16 peak FLOP/s by device kind (vendor data sheets), for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5p": 459e12}


def peak_flops() -> float:
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), float("nan")) * jax.device_count()


def size_config(size: str) -> ModelConfig:
  """The dense model of a LAYERSxWIDTHxHEADS size (ConfigError if malformed or invalid)."""
  parts = size.split("x")
  if len(parts) != 3 or not all(p.isdigit() for p in parts):
    raise ConfigError(f"--sizes: {size!r} is not LAYERSxWIDTHxHEADS. Fix: e.g. --sizes=2x64x2,4x128x4.")
  layers, width, heads = (int(p) for p in parts)
  return ModelConfig(vocab_size=FLAGS.vocab, num_layers=layers, d_model=width, num_heads=heads, dtype=FLAGS.dtype)


def measure(cfg: ModelConfig) -> dict:
  layers, width, heads = cfg.num_layers, cfg.d_model, cfg.num_heads
  step, state, batch, mesh = lm_train_step(cfg, FLAGS.batch, FLAGS.seq_len)
  for _ in range(3):
    state, metrics = step(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  sec = (time.perf_counter() - t0) / FLAGS.steps
  flops = compiled_flops(step) * mesh.size
  return {"size": f"{layers}x{width}x{heads}", "params": sum(x.size for x in jax.tree.leaves(state.params)),
          "ms/step": sec * 1e3, "tokens/s": FLAGS.batch * FLAGS.seq_len / sec, "GFLOP/step": flops / 1e9,
          "TFLOP/s": flops / sec / 1e12, "MFU": flops / sec / peak_flops(), "memory MiB": peak_memory_bytes(step) / 2**20}


def main(argv):
  del argv
  configs = [size_config(size) for size in FLAGS.sizes]  # all checked before the first compile
  rows = [measure(cfg) for cfg in configs]
  print(f"backend={jax.default_backend()} devices={jax.device_count()} ({jax.devices()[0].device_kind}) "
        f"seq_len={FLAGS.seq_len} batch={FLAGS.batch} dtype={FLAGS.dtype}")
  cols = list(rows[0]) + ["tokens/s ratio", "FLOP ratio"]
  print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
  for r in rows:
    r["tokens/s ratio"], r["FLOP ratio"] = r["tokens/s"] / rows[0]["tokens/s"], r["GFLOP/step"] / rows[0]["GFLOP/step"]
    print("| " + " | ".join(f"{r[c]:,.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
  entry.run(main)
