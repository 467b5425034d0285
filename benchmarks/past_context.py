"""Text past the trained context: validation text scored through the decoding path (r1jax.generate.score_ids: a
prefill of the trained length, then one step per character, teacher-forced) at positions up to --length, with the
cache's window (r1jax/inference/decoding.py: the trained length, --sinks of it the first tokens) and without one,
against the same model's loss inside its trained length.

  python benchmarks/past_context.py --workdir=results/dense_baseline/base/seed0          # the main job's run
  python benchmarks/past_context.py --workdir=<run> --length=2048 --rows=32 --sinks=0,4,8

A table per setting (loss by position range, ratio to the loss inside the trained length) and, where the run has its
result.json, the loss past the trained length over the run's own eval loss; all written to --out as JSON. The rows
are --rows windows of --length + 1 characters spread evenly over the validation split.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from r1jax import entry, generate
from r1jax.atomic import write_record
from r1jax.errors import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "results/dense_baseline/base/seed0", "a trained character or token run's workdir")
flags.DEFINE_integer("length", 1024, "positions scored per row")
flags.DEFINE_integer("rows", 64, "validation windows")
flags.DEFINE_list("sinks", ["0", "4"], "sink tokens of the windowed settings")
flags.DEFINE_string("out", "results/past_context/report.json", "where the measurements go ('' for nowhere)")


def ranges(trained: int, length: int) -> list[tuple[int, int]]:
  """[0, trained), then doubling ranges from the trained length to `length`."""
  edges = [0, trained]
  while edges[-1] < length:
    edges.append(min(2 * edges[-1], length))
  return list(zip(edges[:-1], edges[1:]))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint it opens at INFO
  model, variables, data, cfg = generate.load(FLAGS.workdir)
  T, L = cfg.data.seq_len, FLAGS.length
  if L <= T:
    raise ConfigError(f"--length={L} is within the trained context {T}. Fix: ask for more positions than {T}.")
  if not hasattr(data, "val_ids"):
    raise ConfigError(f"--workdir={FLAGS.workdir!r} trained on data.kind={cfg.data.kind!r}. Fix: pass a text run.")
  val = np.asarray(data.val_ids)
  if len(val) < L + 1 + FLAGS.rows:
    raise ConfigError(f"--length={L}: the validation split holds {len(val)} tokens. Fix: ask for fewer positions.")
  starts = np.linspace(0, len(val) - L - 1, FLAGS.rows).astype(int)
  ids = jnp.asarray(np.stack([val[s : s + L + 1] for s in starts]))
  settings = {"no window": (0, 0)} | {f"window {T}, {n} sinks": (T, int(n)) for n in FLAGS.sinks}
  spans = ranges(T, L)
  out = {"workdir": FLAGS.workdir, "trained_context": T, "length": L, "rows": FLAGS.rows, "ranges": spans}
  rows = f"{FLAGS.rows} validation rows of {L} positions"
  print(f"Loss per token (nats) through the decoding path, {rows}, model trained at {T}:\n")
  print("| setting | " + " | ".join(f"{a}-{b}" for a, b in spans) + f" | {T}-{L} / 0-{T} |")
  print("|---" * (len(spans) + 2) + "|")
  for name, (context, sinks) in settings.items():
    nll = np.asarray(generate.score_ids(model, variables, ids, prefill=T, context=context, sinks=sinks))
    by_range = [float(nll[:, a:b].mean()) for a, b in spans]
    past = float(nll[:, T:].mean()) / by_range[0]
    out[name] = {"context": context, "sinks": sinks, "loss_by_range": by_range, "past_over_trained": past}
    out[name]["past_loss"] = float(nll[:, T:].mean())
    print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in by_range) + f" | {past:.3f} |")
  result = os.path.join(FLAGS.workdir, "result.json")  # the run's own evaluation at its trained length
  if os.path.exists(result):
    eval_loss = json.load(open(result))["final"]["eval/loss"]
    out["eval_loss"] = eval_loss
    print(f"\nThe run's eval loss at its trained length {T}: {eval_loss:.4f}; positions {T}-{L} over it:")
    for name in settings:
      out[name]["past_over_eval"] = out[name]["past_loss"] / eval_loss
      print(f"- {name}: {out[name]['past_over_eval']:.3f}")
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    write_record(FLAGS.out, out)


if __name__ == "__main__":
  entry.run(main)
