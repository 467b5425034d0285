"""Train-step throughput: tokens/s, achieved FLOP/s (from the compiled step's cost analysis) and, on GPU/TPU, MFU.

  python benchmarks/train_step.py                                  # CPU defaults
  python benchmarks/train_step.py --sizes=4x128x4,8x512x8 --seq_len=1024 --batch=16 --dtype=bfloat16   # GPU
  python benchmarks/train_step.py --presets=gpt2_small,gpt2_small:moe,gpt2_medium --seq_len=1024 --batch=16  # GPU
  python benchmarks/train_step.py --presets=gpt2_small,gpt2_small:moe,gpt2_small:nsa,gpt2_medium --target=h100
  python benchmarks/train_step.py --presets=gpt2_small,gpt2_small:moe --target=h100 --devices=8 --fsdp=2 --tensor=2

Each size is LAYERSxWIDTHxHEADS of the dense baseline; each preset NAME[:MECHANISM] is a model of r1jax.lab.configs
(PRESETS, MECHANISMS: bfloat16, its own remat setting; :remat appended turns remat on). Ratios are against the first
row, measured in the same run. --compile_only compiles without running (on a CPU: the FLOPs and the memory a device
would need, and the tokens/s a device would reach at --assumed_mfu of --peak_tflops).

--target=h100 compiles for that GPU on a machine without one (r1jax/lab/aot.py; `pip install -e .[gpu-aot]`): per
device, the memory of the train step (arguments, temporaries, total; whether it fits the device), its FLOPs per
token (XLA's count plus cuDNN's and r1jax's Pallas kernels' work) against the definition's (6 per active matrix
parameter plus the mixer's products: r1jax/lab/flops.py), the kernels chosen and the collectives of the mesh
(--devices GPUs, --fsdp and --tensor axes, data the rest); with --decode_context, the decode step at that context
too. Nothing compiled this way is timed (GEMM tiles are not autotuned, cuDNN's graphs not built).
"""

import time

import jax
from absl import flags

from r1jax import entry, sharding
from r1jax.config import MeshConfig, ModelConfig
from r1jax.errors import ConfigError
from r1jax.lab import aot, configs, flops
from r1jax.lab.scaling import lm_train_step
from r1jax.train import compiled_flops, peak_memory_bytes

flags.DEFINE_list("sizes", ["2x64x2", "4x128x4", "6x192x6"], "LAYERSxWIDTHxHEADS per row")
flags.DEFINE_integer("seq_len", 0, "tokens per sequence; 0: 1024 with --presets or --target, else 64")
flags.DEFINE_integer("batch", 0, "global sequences per step; 0: 16 per device with --presets or --target, else 12")
flags.DEFINE_integer("vocab", 65, "vocabulary size")
flags.DEFINE_integer("steps", 20, "timed steps (after 3 warm-up steps)")
flags.DEFINE_string("dtype", "float32", "compute dtype: float32 | bfloat16")
flags.DEFINE_list("presets", [], "NAME[:MECHANISM][:remat] rows of r1jax.lab.configs presets (instead of --sizes)")
flags.DEFINE_integer("preset_vocab", 50304, "vocabulary of preset rows (GPT-2's 50257, padded to 64)")
flags.DEFINE_bool("compile_only", False, "compile and report FLOPs and memory without timing")
flags.DEFINE_float("assumed_mfu", 0.4, "--compile_only: MFU for the stated tokens/s")
flags.DEFINE_float("peak_tflops", 989.0, "--compile_only: a device's dense bf16 peak (H100/H200: 989)")
flags.DEFINE_string("target", "", "compile for this GPU without one (r1jax/lab/aot.py TARGETS: h100); nothing timed")
flags.DEFINE_integer("devices", 1, "--target: GPUs in the mesh (1-8, or hosts of 8)")
flags.DEFINE_integer("fsdp", 1, "--target: the mesh's fsdp axis (data takes the rest)")
flags.DEFINE_integer("tensor", 1, "--target: the mesh's tensor axis")
flags.DEFINE_integer("decode_context", 0, "--target: also compile the decode step at this context (0: not)")
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
  return row, configs.preset_model(row, FLAGS.preset_vocab)


def sizes() -> tuple[int, int]:
  """(global batch, sequence length): the flags', or their defaults for GPU-sized rows."""
  gpu = bool(FLAGS.presets or FLAGS.target)
  return FLAGS.batch or (16 * FLAGS.devices if gpu else 12), FLAGS.seq_len or (1024 if gpu else 64)


def measure_target(label: str, cfg: ModelConfig, mesh) -> dict:
  """One row compiled for --target: memory per device, FLOPs per token against the definition, kernels."""
  batch, seq_len = sizes()
  r = aot.report(aot.train_step(cfg, batch, seq_len, mesh))
  params = aot.abstract_params(cfg)
  tokens = batch * seq_len / mesh.size  # per device
  defined = flops.train_flops_per_token(cfg, seq_len, params)
  row = {
    "model": label,
    "params": sum(x.size for x in jax.tree.leaves(params)),
    "GFLOP/token": r["flops"] / tokens / 1e9,
    "defined GFLOP/token": defined / 1e9,
    "compiled/defined": r["flops"] / tokens / defined,
    "GiB/device": r["memory_bytes"] / 2**30,
    "temp GiB": r["temp_bytes"] / 2**30,
    "fits": "yes" if r["memory_bytes"] <= aot.TARGETS[FLAGS.target][1] else "NO",
    "kernels": " ".join(f"{k}x{n}" for k, n in sorted(r["kernels"].items()) if k.startswith(("cudnn", "r1jax"))),
    "collectives": " ".join(f"{k}x{n}" for k, n in sorted(r["collectives"].items())) or "-",
  }
  if FLAGS.decode_context:
    d = aot.report(aot.decode_step(cfg, FLAGS.decode_context, batch // mesh.size or 1, mesh.devices.flat[0]))
    row[f"decode GiB @{FLAGS.decode_context}"] = d["memory_bytes"] / 2**30
    row["decode GFLOP/token"] = d["flops"] / (batch // mesh.size or 1) / 1e9
  return row


def measure(label: str, cfg: ModelConfig) -> dict:
  batch_size, seq_len = sizes()
  step, state, batch, mesh = lm_train_step(cfg, batch_size, seq_len)
  flops = compiled_flops(step) * mesh.size
  tokens = batch_size * seq_len
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
  batch, seq_len = sizes()
  if FLAGS.target:
    aot.use_cpu_runtime()  # before JAX starts its runtime: the target is compiled for from the CPU's
    mesh_cfg = MeshConfig(data=-1, fsdp=FLAGS.fsdp, tensor=FLAGS.tensor)
    mesh = sharding.make_mesh(mesh_cfg, devices=aot.devices(FLAGS.target, FLAGS.devices))
    for _, cfg in models:  # every row's shapes checked before the first compile
      sharding.check_divisibility(cfg, batch, batch, mesh)
    rows = [measure_target(label, cfg, mesh) for label, cfg in models]
    where = f"compiled for {FLAGS.target} without one: {FLAGS.devices} device(s), mesh {dict(mesh.shape)}, per device"
  else:
    rows = [measure(label, cfg) for label, cfg in models]
    where = f"backend={jax.default_backend()} devices={jax.device_count()} ({jax.devices()[0].device_kind})"
  print(f"{where} seq_len={seq_len} batch={batch} dtype={models[0][1].dtype}")
  if FLAGS.target:
    table(rows, list(rows[0]))
    return
  speed = "tokens/s" if "tokens/s" in rows[0] else list(rows[0])[-1]
  for r in rows:
    r[f"{speed} ratio"], r["FLOP ratio"] = r[speed] / rows[0][speed], r["GFLOP/step"] / rows[0]["GFLOP/step"]
  table(rows, list(rows[0]))


def table(rows: list[dict], cols: list[str]) -> None:
  print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
  for r in rows:
    print("| " + " | ".join(f"{r[c]:,.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
  entry.run(main)
