"""Decoding cost per mixer (r1jax/decoding.py): prefill time, per-token decode latency at batch 1, decode tokens/s at
a larger batch and cache bytes per sequence, at several contexts, as ratios to dense attention measured in the same
run; and each mixer's crossover context (the first from which its step is faster than dense's at every longer one).

  python benchmarks/decode.py                                                # CPU, contexts 1k-16k
  python benchmarks/decode.py --contexts=1024,4096,16384,65536 --batch=16    # GPU
  python benchmarks/decode.py --contexts=256,512 --variants=dense,local,moe --d_model=64 --out=   # smoke

The measurements go to --out (results/decode/report.json), where `python -m r1jax.claims` judges the seed articles'
inference-speed claims on the decoding step at the longest context measured.

The model: --layers layers of width --d_model, --heads heads; the sparse mixers at one key budget --budget (top-k
keys; block: budget/64 blocks of 64; local: a window of budget); NSA at its paper's sizes (l=32, d=16, l'=64,
n=16, w=512); `moe` is the dense-attention model with an 8-expert top-2 feed-forward, each expert as wide as
`dense`'s SwiGLU (twice its active FFN parameters); `gqa` (2 key/value groups), `mqa` (1), `mla` and `mla_sparse`
(latent caches; r1jax/mixers/mla.py) are on request. A decode step at context C attends a cache of C positions
(its content does not change the work); the step is timed inside one compiled scan of --steps tokens. Prefill is
the forward over C prompt tokens that fills the cache; dense prefill takes the faster of its two paths without
cuDNN: XLA's [T, T] scores below dense.FLASH_FROM tokens, the blocked O(T)-memory one from there (r1jax/mixers/
flash.py; 2-4x faster on the 2-core CPU from 1k, and at 64k the only one that fits). n/a where XLA's memory
estimate exceeds --max_memory_gb. Each measurement runs in a child process, so running out of memory
costs one cell.
"""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import flags

from r1jax import decoding, entry
from r1jax.atomic import write_record
from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.lab import configs
from r1jax.lab.scaling import decode_step, measure_in_child, median_sec, memory_limit_bytes
from r1jax.mixers.dense import FLASH_FROM
from r1jax.mixers.sparse import DSA_INDEXER
from r1jax.model import Transformer
from r1jax.train import static_memory_bytes

flags.DEFINE_list("contexts", ["1024", "4096", "16384"], "context lengths C (cache positions)")
flags.DEFINE_list(
  "variants",
  ["dense", "local", "sparse", "block_sparse", "nsa", "fast_weight", "moe"],
  "mixers (and moe: dense attention with an MoE feed-forward)",
)
flags.DEFINE_integer("budget", 128, "keys per query of the sparse mixers (local: window)")
flags.DEFINE_integer("d_model", 256, "model width")
flags.DEFINE_integer("heads", 4, "attention heads")
flags.DEFINE_integer("layers", 2, "layers")
flags.DEFINE_integer("batch", 8, "sequences per step for decode tokens/s (latency is at batch 1)")
flags.DEFINE_integer("steps", 16, "decode steps per timed call")
flags.DEFINE_integer("repeats", 3, "timed calls per measurement (median), after one warm-up")
flags.DEFINE_string("dtype", "float32", "compute dtype: float32 | bfloat16")
flags.DEFINE_float(
  "max_memory_gb",
  0.0,
  "n/a where XLA's memory estimate exceeds this; 0 = 75% of the host's RAM on CPU, no limit on GPU/TPU",
)
flags.DEFINE_string(
  "out",
  "results/decode/report.json",
  "where the measurements go as JSON (r1jax.claims judges the inference-speed claims from them); empty: nowhere",
)
flags.DEFINE_string("one", "", "internal: measure one VARIANT:CONTEXT in this process and print it as JSON")
FLAGS = flags.FLAGS


def variant_config(name: str) -> ModelConfig:
  """The LM of variant `name` at the flags' sizes (ConfigError for an unknown name)."""
  k = FLAGS.budget
  variants = {
    "dense": ("attention", {}),
    "local": ("local", {"window": k}),
    "sparse": ("sparse", {"top_k": k, **DSA_INDEXER}),
    "block_sparse": ("block_sparse", {"block_size": 64, "top_blocks": max(k // 64 - 1, 0)}),
    "nsa": ("nsa", configs.NSA_PAPER),
    "fast_weight": ("fast_weight", {"gate": "scalar"}),
    "fusion": ("fusion", {"window": k}),
    "time_channel": ("time_channel", {}),
    "moe": ("attention", {}),
    # the KV cache's size: grouped-query (2 groups), multi-query, latent (DeepSeek-V2's d_c = 4 d_h, d_r = d_h / 2)
    # and sparse latent attention (DeepSeek-V3.2: the indexer's top-k latents)
    "gqa": ("attention", {}),
    "mqa": ("attention", {}),
    "mla": ("mla", {}),
    "mla_sparse": ("mla", {"sparse": True, "indexer": {"top_k": k}}),
  }
  kv_heads = {"gqa": 2, "mqa": 1}.get(name, 0)
  if name not in variants:
    raise ConfigError(f"--variants: unknown {name!r}. Fix: choose from {list(variants)}.")
  mixer, options = variants[name]
  ffn = {"ffn": "moe", "ffn_options": {"moe": {"num_experts": 8, "top_k": 2, "d_expert": 0}}} if name == "moe" else {}
  return ModelConfig(
    vocab_size=256,
    num_layers=FLAGS.layers,
    d_model=FLAGS.d_model,
    num_heads=FLAGS.heads,
    num_kv_heads=kv_heads,
    dtype=FLAGS.dtype,
    mixer=mixer,
    mixer_options={mixer: options},
    **ffn,
  )


def measure_here(name: str, C: int) -> dict:
  """Prefill seconds, seconds per decode step at batch 1 and at --batch, and cache bytes per sequence."""
  model = Transformer(variant_config(name))
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  out = {}

  prefill = jax.jit(
    lambda p, t: model.apply(p, t, decode=decoding.Decode.prefill(jnp.full((1,), C), C), mutable=[decoding.CACHE])[1][
      decoding.CACHE
    ]
  )
  tokens = jax.random.randint(jax.random.key(1), (1, C), 0, 256)
  compiled = prefill.lower(params, tokens).compile()
  fits = static_memory_bytes(compiled) <= memory_limit_bytes(FLAGS.max_memory_gb)
  out["prefill_sec"] = median_sec(compiled, params, tokens, repeats=FLAGS.repeats) if fits else float("nan")

  for B, key in ((1, "step_sec_b1"), (FLAGS.batch, "step_sec_batch")):
    r = decode_step(model.cfg, C, B, FLAGS.steps, FLAGS.repeats, params)
    out[key] = r["step_sec"]
    if B == 1:
      out["cache_bytes"] = r["cache_bytes"]
  return out


def measure(name: str, C: int) -> dict:
  """One measurement in a child process (running out of memory kills the child, not the sweep)."""
  args = [os.path.abspath(__file__), f"--one={name}:{C}"] + [
    f"--{f}={FLAGS[f].value}"
    for f in ("budget", "d_model", "heads", "layers", "batch", "steps", "repeats", "dtype", "max_memory_gb")
  ]
  result, why = measure_in_child(args)
  if result is not None:
    return result
  print(f"  {name} C={C}: n/a ({why})")
  return {k: float("nan") for k in ("prefill_sec", "step_sec_b1", "step_sec_batch", "cache_bytes")}


def main(argv):
  del argv
  if FLAGS.one:
    name, C = FLAGS.one.split(":")
    print(json.dumps(measure_here(name, int(C))))
    return
  if not all(c.isdigit() and int(c) > FLAGS.steps for c in FLAGS.contexts):
    raise ConfigError(
      f"--contexts={','.join(FLAGS.contexts)}: need integers above --steps={FLAGS.steps}. Fix: e.g. "
      "--contexts=1024,4096."
    )
  contexts = [int(c) for c in FLAGS.contexts]
  for name in FLAGS.variants:  # every variant's config is checked before the first measurement
    variant_config(name)
  print(
    f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), {FLAGS.layers} layers x {FLAGS.d_model}, "
    f"{FLAGS.heads} heads, budget {FLAGS.budget}, dtype {FLAGS.dtype}, decode batch {FLAGS.batch}; dense prefill "
    f"through XLA's [T, T] path below T={FLASH_FROM}, the blocked one from it"
  )
  res = {}
  for C in contexts:
    for name in FLAGS.variants:
      res[(name, C)] = r = measure(name, C)
      print(
        f"  measured {name:12s} C={C:6d}: prefill {r['prefill_sec'] * 1e3:9.1f} ms, step "
        f"{r['step_sec_b1'] * 1e3:7.2f} ms, cache {r['cache_bytes'] / 2**20:8.2f} MiB",
        flush=True,
      )
  cols = ("prefill ms", "step ms (batch 1)", f"tokens/s (batch {FLAGS.batch})", "cache MiB / seq")
  lines = ["| C | variant | " + " | ".join(f"{c} (/dense)" for c in cols) + " |", "|" + "---|" * (2 + len(cols))]
  for C in contexts:
    d = res.get(("dense", C))
    for name in FLAGS.variants:
      r = res[(name, C)]
      vals = (
        r["prefill_sec"] * 1e3,
        r["step_sec_b1"] * 1e3,
        FLAGS.batch / r["step_sec_batch"],
        r["cache_bytes"] / 2**20,
      )
      refs = (
        (d["prefill_sec"] * 1e3, d["step_sec_b1"] * 1e3, FLAGS.batch / d["step_sec_batch"], d["cache_bytes"] / 2**20)
        if d
        else (float("nan"),) * 4
      )
      cells = [
        "n/a" if math.isnan(v) else f"{v:,.2f}" + ("" if math.isnan(ref) else f" ({v / ref:.2f})")
        for v, ref in zip(vals, refs)
      ]
      lines.append(f"| {C} | {name} | " + " | ".join(cells) + " |")
  print("\n" + "\n".join(lines) + "\n")
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    keys = ("prefill_sec", "step_sec_b1", "step_sec_batch", "cache_bytes")
    write_record(
      os.path.abspath(FLAGS.out),
      {
        "backend": f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
        "contexts": contexts,
        "model": {
          "layers": FLAGS.layers,
          "d_model": FLAGS.d_model,
          "heads": FLAGS.heads,
          "budget": FLAGS.budget,
          "dtype": FLAGS.dtype,
          "batch": FLAGS.batch,
        },
        "variants": {n: {k: [res[(n, C)][k] for C in contexts] for k in keys} for n in FLAGS.variants},
      },
    )
    print(f"measurements: {os.path.abspath(FLAGS.out)}")
  if "dense" in FLAGS.variants:
    for name in FLAGS.variants:
      if name == "dense":
        continue
      # the crossover: the first context from which every longer one measured is faster (one noisy short
      # context does not make a crossover)
      slower = [C for C in contexts if not res[(name, C)]["step_sec_b1"] < res[("dense", C)]["step_sec_b1"]]
      after = [C for C in contexts if not slower or C > slower[-1]]
      print(
        f"{name}: decode step faster than dense from C={after[0]}"
        if after
        else f"{name}: decode step not faster than dense at C={contexts[-1]}"
      )


if __name__ == "__main__":
  entry.run(main)
