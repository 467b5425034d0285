"""Train-step throughput: tokens/s, achieved FLOP/s (from the compiled step's cost analysis) and, on GPU/TPU, MFU.

  python benchmarks/train_step.py                                  # CPU defaults
  python benchmarks/train_step.py --sizes=4x128x4,8x512x8 --seq_len=1024 --batch=16 --dtype=bfloat16   # GPU
  python benchmarks/train_step.py --presets=gpt2_small,gpt2_small:moe,gpt2_medium --seq_len=1024 --batch=16  # GPU
  python benchmarks/train_step.py --presets=gpt2_small,gpt2_medium --seq_len=1024 --batch=16 --compile_only  # CPU

Each size is LAYERSxWIDTHxHEADS of the dense baseline; each preset NAME[:MECHANISM] is a model of r1jax.lab.configs
(PRESETS, MECHANISMS: bfloat16, its own remat setting; :remat appended turns remat on). Ratios are against the first
row, measured in the same run. --compile_only compiles without running (on a CPU: the FLOPs and the memory a device
would need, and the tokens/s a device would reach at --assumed_mfu of --peak_tflops).
"""

import dataclasses
import time

import jax
from absl import flags

from r1jax import entry
from r1jax.config import Config, ModelConfig
from r1jax.errors import ConfigError
from r1jax.lab import configs
from r1jax.lab.scaling import lm_train_step
from r1jax.train import compiled_flops, peak_memory_bytes

flags.DEFINE_list("sizes", ["2x64x2", "4x128x4", "6x192x6"], "LAYERSxWIDTHxHEADS per row")
flags.DEFINE_integer("seq_len", 64, "tokens per sequence")
flags.DEFINE_integer("batch", 12, "global sequences per step")
flags.DEFINE_integer("vocab", 65, "vocabulary size")
flags.DEFINE_integer("steps", 20, "timed steps (after 3 warm-up steps)")
flags.DEFINE_string("dtype", "float32", "compute dtype: float32 | bfloat16")
flags.DEFINE_list("presets", [], "NAME[:MECHANISM][:remat] rows of r1jax.lab.configs presets (instead of --sizes)")
flags.DEFINE_integer("preset_vocab", 50304, "vocabulary of preset rows (GPT-2's 50257, padded to 64)")
flags.DEFINE_bool("compile_only", False, "compile and report FLOPs and memory without timing")
flags.DEFINE_float("assumed_mfu", 0.4, "--compile_only: MFU for the stated tokens/s")
flags.DEFINE_float("peak_tflops", 989.0, "--compile_only: a device's dense bf16 peak (H100/H200: 989)")
FLAGS = flags.FLAGS

# Dense bf16 peak FLOP/s by device kind (vendor data sheets), for MFU.
PEAK_FLOPS = {
  "H100": 989e12,
  "H200": 989e12,
  "A100": 312e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5p": 459e12,
}


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


def preset_config(row: str) -> tuple[str, ModelConfig]:
  """(label, model) of a NAME[:MECHANISM][:remat] preset row (ConfigError if unknown)."""
  cfg = Config.from_dict(configs.preset_spec(row)).model
  return row, dataclasses.replace(cfg, vocab_size=FLAGS.preset_vocab)


def measure(label: str, cfg: ModelConfig) -> dict:
  step, state, batch, mesh = lm_train_step(cfg, FLAGS.batch, FLAGS.seq_len)
  flops = compiled_flops(step) * mesh.size
  tokens = FLAGS.batch * FLAGS.seq_len
  row = {
    "model": label,
    "params": sum(x.size for x in jax.tree.leaves(state.params)),
    "GFLOP/step": flops / 1e9,
    "FLOPs/token": flops / tokens,
    "memory MiB": peak_memory_bytes(step) / 2**20,
  }
  if FLAGS.compile_only:  # per device: FLOPs and memory of its shard of the step
    return {
      **row,
      f"tokens/s/device at {FLAGS.assumed_mfu:.0%} MFU": FLAGS.assumed_mfu
      * FLAGS.peak_tflops
      * 1e12
      / (flops / tokens),
    }
  for _ in range(3):
    state, metrics = step(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  sec = (time.perf_counter() - t0) / FLAGS.steps
  return {
    **row,
    "ms/step": sec * 1e3,
    "tokens/s": tokens / sec,
    "TFLOP/s": flops / sec / 1e12,
    "MFU": flops / sec / peak_flops(),
  }


def main(argv):
  del argv
  models = (
    [preset_config(row) for row in FLAGS.presets]
    if FLAGS.presets
    else [(size, size_config(size)) for size in FLAGS.sizes]
  )  # all checked before the first compile
  rows = [measure(label, cfg) for label, cfg in models]
  print(
    f"backend={jax.default_backend()} devices={jax.device_count()} ({jax.devices()[0].device_kind}) "
    f"seq_len={FLAGS.seq_len} batch={FLAGS.batch} dtype={models[0][1].dtype}"
  )
  speed = "tokens/s" if "tokens/s" in rows[0] else list(rows[0])[-1]
  cols = list(rows[0]) + [f"{speed} ratio", "FLOP ratio"]
  print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
  for r in rows:
    r[f"{speed} ratio"], r["FLOP ratio"] = r[speed] / rows[0][speed], r["GFLOP/step"] / rows[0]["GFLOP/step"]
    print("| " + " | ".join(f"{r[c]:,.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
  entry.run(main)
