"""MoE dispatch cost: one top-k MoE feed-forward layer split into its phases (route, sort, gather, experts, combine),
forward and forward+backward, against the dense SwiGLU of equal active parameters, over tokens per step and number
of experts; then whole train steps of the MoE ablation's model (top-2 against the dense model of equal active
parameters) at the same tokens per step.

  python benchmarks/moe_dispatch.py                                          # CPU: blocks, 768 and 4096 tokens
  taskset -c 0 python benchmarks/moe_dispatch.py      # on one core, as the ablation drivers' one-thread workers train
  python benchmarks/moe_dispatch.py --tokens=4096,32768 --experts=8,64 --d_model=512 --d_expert=1024   # GPU

Each phase is its own compiled function of the previous phase's outputs, timed alone (median of --repeats calls
after a warm-up), so the phases add up to about the whole layer, which is timed too. Experts have width
--d_expert; the dense SwiGLU has width top_k * d_expert (the active parameters of a token). `capacity` is GShard's
dispatch (capacity factor 1.25 over sequences of --seq_len tokens), timed whole.
"""

import jax
import jax.numpy as jnp
from absl import flags

from r1jax import entry
from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.ffn.moe import (
  MATMULS,
  MoEOptions,
  capacity,
  dropless,
  grouped_layout,
  grouped_swiglu,
  permute_rows,
  route,
  sort_by_expert,
)
from r1jax.lab.scaling import lm_train_step, median_sec

flags.DEFINE_list("tokens", ["768", "4096"], "tokens per step (batch x sequence length)")
flags.DEFINE_list("experts", ["8", "32"], "routed experts E")
flags.DEFINE_integer("top_k", 2, "experts per token")
flags.DEFINE_integer("d_model", 64, "model width D")
flags.DEFINE_integer("d_expert", 128, "expert width F (the dense SwiGLU is top_k * F wide)")
flags.DEFINE_integer("block_size", 0, "rows per block of the blocks path; 0: auto (r1jax.ffn.moe.auto_block_size)")
flags.DEFINE_string(
  "matmul", "auto", "grouped matmul: blocks | ragged_dot | pallas | auto (r1jax.ffn.moe.MoEOptions.grouped_matmul)"
)
flags.DEFINE_integer("seq_len", 64, "tokens per sequence (capacity slots and the train step)")
flags.DEFINE_integer("layers", 2, "layers of the train-step model (0: skip the train steps)")
flags.DEFINE_integer("repeats", 20, "timed calls per measurement (median)")
FLAGS = flags.FLAGS


def median_ms(fn, *args) -> float:
  return median_sec(fn, *args, repeats=FLAGS.repeats) * 1e3


def fwd_and_bwd(fn, *args) -> tuple[float, float]:
  """(forward ms, forward+backward ms) of fn's float outputs with respect to its float inputs."""
  floats = [i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating)]

  def loss(*diff):
    full = list(args)
    for i, a in zip(floats, diff):
      full[i] = a
    return sum(jnp.sum(o * o) for o in jax.tree.leaves(fn(*full)) if jnp.issubdtype(o.dtype, jnp.floating))

  return median_ms(jax.jit(fn), *args), median_ms(
    jax.jit(jax.grad(loss, range(len(floats)))), *[args[i] for i in floats]
  )


def layer_rows(N: int, E: int) -> list[tuple[str, float, float]]:
  D, F, K = FLAGS.d_model, FLAGS.d_expert, FLAGS.top_k
  opts = MoEOptions(num_experts=E, top_k=K, grouped_matmul=FLAGS.matmul, block_size=FLAGS.block_size)
  matmul, block = grouped_layout(opts, N * K, E, FLAGS.d_model, FLAGS.d_expert)
  keys = jax.random.split(jax.random.key(0), 8)
  x = jax.random.normal(keys[0], (N, D))
  router = jax.random.normal(keys[1], (D, E)) * D**-0.5
  w1, w3 = (jax.random.normal(k, (E, D, F)) * D**-0.5 for k in keys[2:4])
  w2 = jax.random.normal(keys[4], (E, F, D)) * F**-0.5
  dense = [jax.random.normal(k, s) * s[0] ** -0.5 for k, s in zip(keys[5:], [(D, K * F)] * 2 + [(K * F, D)])]
  no_bias = jnp.zeros((E,))

  def routed(x, router):
    return route(x @ router, no_bias, opts)[:2]

  idx, gate = routed(x, router)
  row_M, copy_R, expert_B, sizes_E = sort_by_expert(idx.reshape(-1), E, block)
  copies = lambda x: jnp.broadcast_to(x[:, None], (N, K, D)).reshape(N * K, D)
  x_R = permute_rows(copies(x), copy_R, row_M)
  y_R = grouped_swiglu(x_R, sizes_E, expert_B, w1, w3, w2, matmul)

  def combine(y_R, gate):
    y_M = permute_rows(y_R, row_M, copy_R).reshape(N, K, D)
    return jnp.einsum("NKD,NK->ND", y_M, gate)

  def layer(x, router, w1, w3, w2):  # the library's dropless path, whole
    return dropless(x, *routed(x, router), (w1, w3, w2), opts)

  def capacity_layer(x, router, w1, w3, w2):
    idx, gate = routed(x, router)
    B, T = N // FLAGS.seq_len, FLAGS.seq_len
    return capacity(
      x.reshape(B, T, D),
      idx.reshape(B, T, K),
      gate.reshape(B, T, K),
      (w1, w3, w2),
      MoEOptions(num_experts=E, top_k=K, dispatch="capacity"),
    )[0]

  swiglu = lambda x, a, b, c: (jax.nn.silu(x @ a) * (x @ b)) @ c
  sort_ms = median_ms(jax.jit(lambda i: sort_by_expert(i, E, block)), idx.reshape(-1))
  return [
    ("route", *fwd_and_bwd(routed, x, router)),
    ("sort", sort_ms, sort_ms),  # integers: nothing to differentiate
    ("gather", *fwd_and_bwd(lambda x: permute_rows(copies(x), copy_R, row_M), x)),
    (
      "experts",
      *fwd_and_bwd(lambda x, a, b, c: grouped_swiglu(x, sizes_E, expert_B, a, b, c, matmul), x_R, w1, w3, w2),
    ),
    ("combine", *fwd_and_bwd(combine, y_R, gate)),
    ("moe layer", *fwd_and_bwd(layer, x, router, w1, w3, w2)),
    ("capacity layer", *fwd_and_bwd(capacity_layer, x, router, w1, w3, w2)),
    ("dense SwiGLU", *fwd_and_bwd(swiglu, x, *dense)),
  ]


def step_ms(cfg: ModelConfig, batch_size: int) -> float:
  step, state, batch, _ = lm_train_step(cfg, batch_size, FLAGS.seq_len)
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], batch, jax.random.key(1))
    return metrics

  for _ in range(3):
    jax.block_until_ready(run())
  return median_ms(run)


def main(argv):
  del argv
  tokens, experts = [int(n) for n in FLAGS.tokens], [int(e) for e in FLAGS.experts]
  if any(n % FLAGS.seq_len for n in tokens) or FLAGS.matmul not in MATMULS:
    raise ConfigError(
      f"--tokens: every value must be a multiple of --seq_len, and --matmul one of {MATMULS}. "
      "Fix: e.g. --tokens=768,4096 --seq_len=64."
    )
  print(
    f"backend={jax.default_backend()} D={FLAGS.d_model} F={FLAGS.d_expert} top_k={FLAGS.top_k} "
    f"matmul={FLAGS.matmul}; dense SwiGLU width {FLAGS.top_k * FLAGS.d_expert}; ms, median of {FLAGS.repeats}\n"
  )
  print(
    "| tokens | experts | phase | fwd ms | fwd+bwd ms | share of the layer's fwd+bwd | fwd+bwd / dense |\n"
    "|---|---|---|---|---|---|---|"
  )
  for N in tokens:
    for E in experts:
      rows = layer_rows(N, E)
      whole, dense = rows[-3][2], rows[-1][2]
      for name, fwd, both in rows:
        share = f"{both / whole:.0%}" if name not in ("capacity layer", "dense SwiGLU") else ""
        print(f"| {N} | {E} | {name} | {fwd:.2f} | {both:.2f} | {share} | {both / dense:.2f} |")
  if not FLAGS.layers:
    return
  print(
    f"\nWhole train steps, {FLAGS.layers} layers x {FLAGS.d_model}, 4 heads, T={FLAGS.seq_len} (the MoE "
    f"ablation's model), {experts[0]} experts:\n\n| tokens | dense ms (d_ff {FLAGS.top_k * FLAGS.d_expert}) | "
    f"top-{FLAGS.top_k} dropless ms | ratio | capacity ms | ratio |\n|---|---|---|---|---|---|"
  )
  base = dict(vocab_size=65, num_layers=FLAGS.layers, d_model=FLAGS.d_model, num_heads=4)
  for N in tokens:
    moe = dict(
      num_experts=experts[0],
      top_k=FLAGS.top_k,
      d_expert=FLAGS.d_expert,
      grouped_matmul=FLAGS.matmul,
      block_size=FLAGS.block_size,
    )
    dense = step_ms(ModelConfig(**base, d_ff=FLAGS.top_k * FLAGS.d_expert), N // FLAGS.seq_len)
    routed = [
      step_ms(ModelConfig(**base, ffn="moe", ffn_options={"moe": {**moe, "dispatch": d}}), N // FLAGS.seq_len)
      for d in ("dropless", "capacity")
    ]
    print(
      f"| {N} | {dense:.2f} | {routed[0]:.2f} | {routed[0] / dense:.2f} | {routed[1]:.2f} | {routed[1] / dense:.2f} |"
    )


if __name__ == "__main__":
  entry.run(main)
