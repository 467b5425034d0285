"""Decoding cost per mixer (r1jax/inference/decoding.py): prefill time, per-token decode latency at batch 1, decode
tokens/s at a larger batch and cache bytes per sequence, at several contexts, as ratios to dense attention measured in
the same run; and each mixer's crossover context (the first from which its step is faster than dense's at every longer
one).

  python benchmarks/decode.py                                                # CPU, contexts 1k-16k
  python benchmarks/decode.py --contexts=1024,4096,16384,65536 --batch=16    # GPU
  python benchmarks/decode.py --contexts=256,512 --variants=dense,local,moe --d_model=64 --out=   # smoke

The measurements go to --out (results/decode/report.json), where `python -m r1jax.claims` judges the seed articles'
inference-speed claims on the decoding step at the longest context measured.

Self-speculative decoding (r1jax/inference/speculative.py) needs a model whose drafts are worth something: with
--speculative_workdir=<a run trained with model.mtp_depth >= 1> (experiments/mtp_ablation.py's d1 or d2; the
README's command), rows at each of --speculative_contexts compare greedy decoding of that model's own text with and
without its MTP drafts: tokens committed per pass of the main model, and tokens/s at batch 1 and --batch as a ratio
to plain decoding. The prompts are validation text (the rows' windows spread over the split). At each context the
cache keeps every position (a step reads all C; the model reads past its trained length, where its text drifts:
r1jax/generate.py); one more row decodes in a window of the trained length (a prompt of that length, then
--speculative_tokens past it; r1jax/generate.py's default), where the text stays text. A row's time per token is
that of decoding --speculative_tokens tokens from a prefilled cache (`prefill_ids` / `speculative_prefill`, untimed),
the median of at least 5 calls. --int8_workdir=<a trained run> adds the row of its decoding (in the trained window)
with float weights and with them rounded to INT8 (r1jax/inference/quantize.py): bytes and tokens/s.

The model: --layers layers of width --d_model, --heads heads; the sparse mixers at one key budget --budget (top-k
keys; block: budget/64 blocks of 64; local: a window of budget); NSA at its paper's sizes (l=32, d=16, l'=64,
n=16, w=512); `csa`, `hca` and `v4` (both, alternating by layer) at DeepSeek-V4's sizes (CSA: entries of m = 4
overlapping blocks, top 512, a window of 128; HCA: m = 128, window 128); `moe` is the dense-attention model with an
8-expert top-2 feed-forward, each expert as wide as `dense`'s SwiGLU (twice its active FFN parameters); `gqa` (2
key/value groups), `mqa` (1), `mla` and `mla_sparse` (latent caches; r1jax/mixers/mla.py), `csa`, `hca` and `v4`
are on request. A decode step at context C attends a cache of C positions
(its content does not change the work); the step is timed inside one compiled scan of --steps tokens. Prefill is
the forward over C prompt tokens that fills the cache; dense prefill takes the faster of its two paths without
cuDNN: XLA's [T, T] scores below dense.FLASH_FROM tokens, the blocked O(T)-memory one from there (r1jax/mixers/
flash.py; 2-4x faster on the 2-core CPU from 1k, and at 64k the only one that fits). n/a where XLA's memory
estimate exceeds --max_memory_gb. Each measurement runs in a child process, so running out of memory
costs one cell.
"""

import dataclasses
import functools
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from r1jax import entry, generate
from r1jax.atomic import write_record
from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.inference import decoding, speculative
from r1jax.inference.sampling import Sampling
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
flags.DEFINE_string("speculative_workdir", "", "a run trained with model.mtp_depth >= 1: its speculative rows")
flags.DEFINE_list("speculative_contexts", ["64", "1024", "16384"], "contexts C of the speculative rows (prompt + new)")
flags.DEFINE_integer("speculative_tokens", 64, "tokens decoded per timed call of a speculative row")
flags.DEFINE_string("int8_workdir", "", "a trained run: rows of its decoding with float and with INT8 weights")
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
    # DeepSeek-V4's compressed attentions at V4's sizes (r1jax/mixers/compressed.py): CSA m = 4 with overlap, the
    # top 512 entries and a window of 128; HCA m = 128, window 128; v4 interleaves them by layer
    "csa": ("csa", {}),
    "hca": ("hca", {}),
    "v4": ("csa", {}),
  }
  kv_heads = {"gqa": 2, "mqa": 1}.get(name, 0)
  if name not in variants:
    raise ConfigError(f"--variants: unknown {name!r}. Fix: choose from {list(variants)}.")
  mixer, options = variants[name]
  if name == "v4":  # window-only first layers need more than the benchmark's 2; CSA and HCA alternate
    pattern = {"mixer_pattern": configs.v4(FLAGS.layers, window_layers=0)["model.mixer_pattern"]}
    options = {"csa": {}, "hca": {}}
  else:
    pattern, options = {}, {mixer: options}
  ffn = {"ffn": "moe", "ffn_options": {"moe": {"num_experts": 8, "top_k": 2, "d_expert": 0}}} if name == "moe" else {}
  return ModelConfig(
    vocab_size=256,
    num_layers=FLAGS.layers,
    d_model=FLAGS.d_model,
    num_heads=FLAGS.heads,
    num_kv_heads=kv_heads,
    dtype=FLAGS.dtype,
    mixer=mixer,
    mixer_options=options,
    **pattern,
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


def validation_prompts(val, P: int, B: int) -> tuple[jax.Array, jax.Array]:
  """B rows of P validation tokens, their windows spread evenly over the split, and their lengths."""
  starts = np.linspace(0, len(val) - P, B).astype(int)
  return jnp.asarray(np.stack([val[s : s + P] for s in starts]).astype(np.int32)), jnp.full((B,), P, jnp.int32)


def decode_seconds(prefill, decode, model, params, prompts, lengths, N: int, repeats: int, **kw):
  """Seconds per token of decoding N tokens from a prefilled cache (the prefill untimed; the median of `repeats`
  calls), and a call that returns that decoding's output (untimed)."""
  state = jax.block_until_ready(prefill(model, params, prompts, lengths, **kw))
  run = functools.partial(decode, model, params, max_new_tokens=N, **kw)
  return median_sec(run, state, prompts, lengths, repeats=repeats) / N, functools.partial(run, state, prompts, lengths)


def measure_speculative_here(C: int) -> dict:
  """Greedy decoding of --speculative_workdir's model, plain and speculative, at batch 1 and --batch: seconds per
  token from a prefilled cache (the median of at least 5 calls) and tokens per pass of the main model; after C -
  --speculative_tokens tokens of validation text with every position cached, or (C = 0) after the trained length's
  worth in a window of it."""
  model, variables, data, cfg = generate.load(FLAGS.speculative_workdir)
  params, N, repeats = nn.unbox(variables), FLAGS.speculative_tokens, max(FLAGS.repeats, 5)
  window = 0 if C else cfg.data.seq_len
  P, val = C - N if C else window, np.asarray(data.val_ids)
  C = C or P + N
  out = {}
  for B, suffix in ((1, "b1"), (FLAGS.batch, "batch")):
    prompts, lengths = validation_prompts(val, P, B)
    kw = dict(max_len=C, sampling=Sampling(temperature=0.0), context=window)
    for name, prefill, decode in (
      ("plain", generate.prefill_ids, generate.decode_ids),
      ("spec", speculative.speculative_prefill, speculative.speculative_decode),
    ):
      sec, output = decode_seconds(prefill, decode, model, params, prompts, lengths, N, repeats, **kw)
      out[f"{name}_sec_per_token_{suffix}"] = sec
      if name == "spec":
        counts = output()[1]
        out[f"tokens_per_pass_{suffix}"] = float(counts["tokens"].sum() / counts["rounds"].sum())
        out[f"accepted_{suffix}"] = (np.asarray(counts["accepted"]).sum(0) / float(counts["rounds"].sum())).tolist()
  return out


def measure_int8_here() -> dict:
  """Greedy decoding of --int8_workdir's model with its float weights and with them rounded to INT8 (r1jax/
  quantize.py), at batch 1 and --batch, after the trained length's worth of validation text in a window of it:
  seconds per token from a prefilled cache (the median of at least 5 calls) and the parameters' bytes."""
  from r1jax.inference import quantize  # qwix only where asked for

  model, variables, data, cfg = generate.load(FLAGS.int8_workdir)
  float_model = Transformer(dataclasses.replace(model.cfg, quant=""))  # a QAT run's weights, unrounded
  variables, N, repeats = nn.unbox(variables), FLAGS.speculative_tokens, max(FLAGS.repeats, 5)
  P, val = cfg.data.seq_len, np.asarray(data.val_ids)
  int8_model, int8_params = quantize.ptq(float_model, variables["params"], jnp.zeros((1, 8), jnp.int32))
  models = {"float": (float_model, variables), "int8": (int8_model, {**variables, "params": int8_params})}
  out = {f"{k}_bytes": quantize.param_bytes(v[1]["params"]) for k, v in models.items()}
  for B, suffix in ((1, "b1"), (FLAGS.batch, "batch")):
    prompts, lengths = validation_prompts(val, P, B)
    kw = dict(max_len=P + N, sampling=Sampling(temperature=0.0), context=P)
    for name, (m, params) in models.items():
      out[f"{name}_sec_per_token_{suffix}"], _ = decode_seconds(
        generate.prefill_ids, generate.decode_ids, m, params, prompts, lengths, N, repeats, **kw
      )
  return out


def int8_row() -> dict:
  """The INT8 row (in a child process), printed as a table."""
  args = [os.path.abspath(__file__), "--one=int8:0"] + [
    f"--{f}={FLAGS[f].value}" for f in ("int8_workdir", "speculative_tokens", "batch", "repeats")
  ]
  r, why = measure_in_child(args)
  if r is None:
    print(f"  int8: n/a ({why})")
    return {}
  cells = []
  for suffix, B in (("b1", 1), ("batch", FLAGS.batch)):
    f, q = B / r[f"float_sec_per_token_{suffix}"], B / r[f"int8_sec_per_token_{suffix}"]
    cells.append(f"{f:,.0f}, {q:,.0f} ({q / f:.2f})")
  fb, qb = r["float_bytes"], r["int8_bytes"]
  print(
    "\n| weights | bytes in memory: float, INT8 (ratio) | on disk (ratio) | tokens/s batch 1: float, INT8 (ratio) | "
    f"tokens/s batch {FLAGS.batch}: float, INT8 (ratio) |\n|---|---|---|---|---|\n"
    f"| {FLAGS.int8_workdir} | {fb['memory']:,}, {qb['memory']:,} ({qb['memory'] / fb['memory']:.3f}) | "
    f"{qb['disk'] / fb['disk']:.3f} | {cells[0]} | {cells[1]} |\n"
  )
  return r


def speculative_rows() -> dict:
  """The speculative rows (a child process per context), printed as a table; {C: measurements}."""
  res = {}
  for C in [int(c) for c in FLAGS.speculative_contexts] + [0]:  # 0: the window row
    args = [os.path.abspath(__file__), f"--one=speculative:{C}"] + [
      f"--{f}={FLAGS[f].value}" for f in ("speculative_workdir", "speculative_tokens", "batch", "repeats")
    ]
    r, why = measure_in_child(args)
    if r is None:
      print(f"  speculative C={C}: n/a ({why})")
      continue
    res[C] = r
    print(f"  measured speculative C={C:6d}: {r['tokens_per_pass_b1']:.2f} tokens per pass", flush=True)
  lines = [
    f"| C | window | tokens per pass (batch 1 / {FLAGS.batch}) | drafts 1..k accepted | tokens/s batch 1: plain, "
    f"speculative (ratio) | tokens/s batch {FLAGS.batch}: plain, speculative (ratio) |",
    "|---|---|---|---|---|---|",
  ]
  for C, r in res.items():
    cells = []
    for suffix, B in (("b1", 1), ("batch", FLAGS.batch)):
      plain, spec = B / r[f"plain_sec_per_token_{suffix}"], B / r[f"spec_sec_per_token_{suffix}"]
      cells.append(f"{plain:,.0f}, {spec:,.0f} ({spec / plain:.2f})")
    accepted = ", ".join(f"{a:.1%}" for a in r["accepted_b1"])
    passes = f"{r['tokens_per_pass_b1']:.2f} / {r['tokens_per_pass_batch']:.2f}"
    lines.append(
      f"| {C or 'trained + new'} | {'all C' if C else 'trained'} | {passes} | {accepted} | {cells[0]} | {cells[1]} |"
    )
  print("\n" + "\n".join(lines) + "\n")
  return res


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
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint it opens at INFO
  if FLAGS.one:
    name, C = FLAGS.one.split(":")
    if name in ("speculative", "int8"):
      print(json.dumps(measure_speculative_here(int(C)) if name == "speculative" else measure_int8_here()))
    else:
      print(json.dumps(measure_here(name, int(C))))
    return
  if FLAGS.int8_workdir:
    generate.load(FLAGS.int8_workdir)  # a clear error now for a workdir that holds no trained text model
  if FLAGS.speculative_workdir:  # its checks before the first measurement
    model = generate.load(FLAGS.speculative_workdir)[0]
    speculative.check_speculative(model.cfg)
    short = [c for c in FLAGS.speculative_contexts if not c.isdigit() or int(c) < 8 + FLAGS.speculative_tokens]
    if short:
      raise ConfigError(
        f"--speculative_contexts={','.join(short)}: each needs room for a prompt and "
        f"--speculative_tokens={FLAGS.speculative_tokens}. Fix: use contexts of at least "
        f"{8 + FLAGS.speculative_tokens} or fewer --speculative_tokens."
      )
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
  spec = speculative_rows() if FLAGS.speculative_workdir else {}
  int8 = int8_row() if FLAGS.int8_workdir else {}
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
        "speculative": {"workdir": FLAGS.speculative_workdir, "tokens": FLAGS.speculative_tokens, "rows": spec},
        "int8": {"workdir": FLAGS.int8_workdir, "tokens": FLAGS.speculative_tokens, "row": int8},
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
