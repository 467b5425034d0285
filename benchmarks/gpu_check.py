"""The device check for a lent GPU (one H100, at most 10 minutes): what the CPU cannot measure, timed with medians
and spreads, written to one JSON that the README's GPU table and the claims ledger read (marked as GPU numbers).

  python benchmarks/gpu_check.py                    # on the GPU: results/gpu_check/report.json
  python benchmarks/gpu_check.py --compile_only     # no GPU: compiles every program it would time for --target

Programs, all bfloat16:
- train: the presets' train steps (gpt2_small: dense, MoE, NSA, DSA; 16 x 1024 tokens): tokens/s and MFU (FLOPs
  from r1jax/lab/aot.py's count of the compiled step: XLA's ops plus cuDNN's and the Pallas kernels' work);
- attention: one causal attention layer (12 heads of 64, 16k tokens per call), forward and backward, cuDNN's
  fused kernel against XLA's, at T = 1k-16k;
- moe_layer: the MoE feed-forward of gpt2_small:moe (8 experts, top-2, Pallas grouped matmul) against the dense
  SwiGLU of equal active parameters (twice as wide), forward and backward over 16k tokens;
- decode: the decode step of gpt2_small with dense attention, DSA, NSA and MLA at contexts 16k and 64k, batch 1;
- sparse_kernel: attention over n = 16 picked blocks of l' = 64 keys per query (NSA's selected branch at the
  paper's sizes), through the Pallas block-sparse kernels (r1jax/mixers/selected_kernel.py) and through XLA's
  whole-block matmuls (selected.py), against cuDNN's dense causal attention, forward and forward+backward, one
  sequence of 8k-64k tokens, for 16 query heads per key/value head (GQA, the kernels' tensor-core dots) and 12
  heads of their own (gpt2_small: broadcast products).
Each program is timed over --repeats calls after a warm-up call: median, min and max. With --compile_only each is
compiled for --target from abstract values (no GPU; `pip install -e .[gpu-aot]`) and reported with its memory and
FLOPs; nothing is timed.
"""

import dataclasses
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from r1jax import entry, registry, sharding
from r1jax.atomic import write_record
from r1jax.config import MeshConfig
from r1jax.errors import ConfigError
from r1jax.lab import aot, configs
from r1jax.lab.scaling import call_times, decode_step, lm_train_step
from r1jax.mixers import selected, selected_kernel

flags.DEFINE_bool("compile_only", False, "compile every program for --target without a GPU; time nothing")
flags.DEFINE_string("target", "h100", "--compile_only: the GPU compiled for (r1jax/lab/aot.py TARGETS)")
flags.DEFINE_integer("repeats", 10, "timed calls per program (median, min, max), after one warm-up call")
flags.DEFINE_list("groups", ["train", "attention", "moe_layer", "decode", "sparse_kernel"], "which programs")
flags.DEFINE_string(
  "out", "", "JSON report; empty: results/gpu_check/report.json (compile_only.json with --compile_only)"
)
flags.DEFINE_float("peak_tflops", 989.0, "the device's dense bf16 peak, for MFU (H100/H200 SXM: 989)")
FLAGS = flags.FLAGS

TRAIN = ("gpt2_small", "gpt2_small:moe", "gpt2_small:nsa", "gpt2_small:dsa")
BATCH, SEQ = 16, 1024
ATTENTION_LENGTHS = (1024, 2048, 4096, 8192, 16384)
DECODE = ("gpt2_small", "gpt2_small:dsa", "gpt2_small:nsa", "gpt2_small:mla")
CONTEXTS = (16384, 65536)
SPARSE_LENGTHS = (8192, 16384, 32768, 65536)
SPARSE_HEADS = {"GQA 16:1": (16, 1, 64), "MHA 12": (12, 12, 64)}  # label -> (query heads, key/value heads, head dim)
PICKS, PICK_BLOCK = 16, 64


def spread(fn, *args) -> dict:
  """Median, min and max seconds of fn(*args) over --repeats calls after a warm-up call."""
  times = call_times(fn, *args, repeats=FLAGS.repeats)
  return {"sec": float(np.median(times)), "min_sec": float(np.min(times)), "max_sec": float(np.max(times))}


def compile_or_time(fn, shapes: list, device) -> dict:
  """fn's report (memory, FLOPs, kernels), compiled for `device` from `shapes`, and, on a real device, its time on
  random inputs of those shapes."""
  one = aot.replicated_on(device)
  placed = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one) for s in shapes]
  with jax.set_mesh(one.mesh):
    compiled = jax.jit(fn).lower(*placed).compile()
  row = aot.report(compiled)
  if not FLAGS.compile_only:
    keys = jax.random.split(jax.random.key(0), len(shapes))
    args = [
      jax.device_put(jax.random.normal(k, s.shape, jnp.float32).astype(s.dtype), one) for k, s in zip(keys, shapes)
    ]
    row.update(spread(compiled, *args))
  return row


def train_rows(device) -> list[dict]:
  rows = []
  for spec in TRAIN:
    cfg = configs.preset_model(spec)
    if FLAGS.compile_only:
      mesh = sharding.make_mesh(MeshConfig(), devices=[device])
      row = aot.report(aot.train_step(cfg, BATCH, SEQ, mesh))
    else:
      step, state, batch, _ = lm_train_step(cfg, BATCH, SEQ)
      row = aot.report(step)
      box = [state]  # the state is donated: each call takes the previous call's

      def call():
        box[0], metrics = step(box[0], batch, jax.random.key(1))
        return metrics

      row.update(spread(call))
    row.update(program=spec, tokens=BATCH * SEQ)
    if "sec" in row:
      row.update(tokens_per_sec=BATCH * SEQ / row["sec"], mfu=row["flops"] / row["sec"] / (FLAGS.peak_tflops * 1e12))
    rows.append(row)
  return rows


def attention_rows(device) -> list[dict]:
  rows = []
  for T in ATTENTION_LENGTHS:
    shape = jax.ShapeDtypeStruct((max(1, 16384 // T), T, 12, 64), jnp.bfloat16)
    for impl in ("cudnn", "xla"):

      def fwd_bwd(q, k, v, impl=impl):
        out = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
        return jax.grad(lambda *a: jnp.sum(out(*a).astype(jnp.float32) ** 2), argnums=(0, 1, 2))(q, k, v)

      rows.append(
        {"program": f"attention {impl} T={T}", **guarded(lambda: compile_or_time(fwd_bwd, [shape] * 3, device))}
      )
  return rows


def moe_layer_rows(device) -> list[dict]:
  """The MoE feed-forward of gpt2_small:moe against the dense SwiGLU of its active parameters (top_k x wider)."""
  moe_cfg = configs.preset_model("gpt2_small:moe")
  k = moe_cfg.options("ffn", "moe").top_k
  dense_cfg = dataclasses.replace(moe_cfg, ffn="swiglu", d_ff=k * moe_cfg.hidden_ff)
  rows = []
  for label, cfg in (("moe_layer top-2 of 8", moe_cfg), (f"swiglu {k}x wide (equal active)", dense_cfg)):
    module = registry.FFNS[cfg.ffn].module(cfg, cfg.options("ffn", cfg.ffn))
    x = jax.ShapeDtypeStruct((BATCH, SEQ, cfg.d_model), jnp.bfloat16)
    params = nn.unbox(jax.eval_shape(lambda x: module.init(jax.random.key(1), x, deterministic=True), x))
    leaves, tree = jax.tree.flatten(params)

    def fwd_bwd(x, *flat, module=module, tree=tree):
      loss = lambda p, x: jnp.sum(module.apply(p, x, deterministic=True)[0].astype(jnp.float32) ** 2)
      return jax.grad(loss, argnums=(0, 1))(jax.tree.unflatten(tree, flat), x)

    rows.append({"program": label, **guarded(lambda: compile_or_time(fwd_bwd, [x, *leaves], device))})
  return rows


def decode_rows(device) -> list[dict]:
  rows = []
  for spec in DECODE:
    for C in CONTEXTS:
      cfg = configs.preset_model(spec)

      def one(cfg=cfg, C=C):
        row = aot.report(aot.decode_step(cfg, C, 1, device))
        if not FLAGS.compile_only:
          r = decode_step(cfg, C, 1, steps=16, repeats=FLAGS.repeats)
          row.update(
            sec=r["step_sec"], min_sec=r["step_min_sec"], max_sec=r["step_max_sec"], cache_bytes=r["cache_bytes"]
          )
        return row

      rows.append({"program": f"decode {spec} C={C}", **guarded(one)})
  return rows


def sparse_kernel_rows(device) -> list[dict]:
  """Picked-block attention (the kernels, XLA's path) against cuDNN's dense attention: forward and forward+backward."""

  def picks(T: int, G: int):  # the own block and the 15 before it (n * l' = 1024 keys, as NSA's n = 16, l' = 64)
    own = jnp.arange(T, dtype=jnp.int32) // PICK_BLOCK
    ids = own[:, None] - jnp.arange(PICKS, dtype=jnp.int32)[None, :]
    return jnp.broadcast_to(jnp.maximum(ids, 0)[None, :, None], (1, T, G, PICKS)), jnp.broadcast_to(
      (ids >= 0)[None, :, None], (1, T, G, PICKS)
    )

  attends = {
    "cudnn dense": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"),
    "kernel": lambda q, k, v: selected_kernel.selected_attention_kernel(
      q, k, v, *picks(q.shape[1], k.shape[2]), PICK_BLOCK
    ),
    "xla": lambda q, k, v: selected.selected_block_attention(q, k, v, *picks(q.shape[1], k.shape[2]), PICK_BLOCK),
  }
  rows = []
  for heads, (H, G, K) in SPARSE_HEADS.items():
    for T in SPARSE_LENGTHS:
      q = jax.ShapeDtypeStruct((1, T, H, K), jnp.bfloat16)
      kv = jax.ShapeDtypeStruct((1, T, G, K), jnp.bfloat16)
      for name, attend in attends.items():
        fwd = lambda q, k, v, attend=attend: attend(q, k, v)  # noqa: E731
        fwd_bwd = lambda q, k, v, attend=attend: jax.grad(  # noqa: E731
          lambda *a: jnp.sum(attend(*a).astype(jnp.float32) ** 2), argnums=(0, 1, 2)
        )(q, k, v)
        for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
          row = guarded(lambda fn=fn: compile_or_time(fn, [q, kv, kv], device))
          rows.append({"program": f"{name} {heads} T={T} {mode}", **row})
  return rows


def guarded(fn) -> dict:
  """fn's row, or the first line of its error (one program failing, e.g. out of memory, costs only its row)."""
  try:
    return fn()
  except Exception as e:  # noqa: BLE001
    return {"error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"}


GROUPS = {
  "train": train_rows,
  "attention": attention_rows,
  "moe_layer": moe_layer_rows,
  "decode": decode_rows,
  "sparse_kernel": sparse_kernel_rows,
}


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.groups) - set(GROUPS))
  if unknown:
    raise ConfigError(f"--groups: unknown {unknown}. Fix: choose from {sorted(GROUPS)}.")
  if FLAGS.compile_only:
    aot.use_cpu_runtime()
    device = aot.devices(FLAGS.target, 1)[0]
  else:
    device = jax.devices()[0]
    if device.platform != "gpu":
      raise ConfigError(f"no GPU here ({device.platform}). Fix: run on a GPU, or add --compile_only.")
  report = {"device": device.device_kind, "compile_only": FLAGS.compile_only, "gpu_numbers": not FLAGS.compile_only}
  out = FLAGS.out or os.path.join("results", "gpu_check", "compile_only.json" if FLAGS.compile_only else "report.json")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  for group in FLAGS.groups:
    t0 = time.perf_counter()
    report[group] = GROUPS[group](device)
    print(f"## {group} ({time.perf_counter() - t0:.0f} s)")
    for row in report[group]:
      print(f"  {row['program']:40s} " + describe(row))
    write_record(out, report)  # after every group: a lease that ends early keeps the groups done
  print(f"wrote {out}")


def describe(row: dict) -> str:
  if "error" in row:
    return "FAILED " + row["error"]
  text = f"{row['memory_bytes'] / 2**30:7.2f} GiB  {row['flops'] / 1e9:10.1f} GFLOP"
  if "sec" in row:
    text += f"  {row['sec'] * 1e3:9.3f} ms [{row['min_sec'] * 1e3:.3f}, {row['max_sec'] * 1e3:.3f}]"
  if "mfu" in row:
    text += f"  {row['tokens_per_sec']:,.0f} tokens/s  MFU {row['mfu']:.1%}"
  return text


if __name__ == "__main__":
  entry.run(main)
