"""Sampling text from a trained run: a jitted prefill of the prompts, then a decode loop inside one compiled function.

  python -m r1jax.generate --workdir=results/dense_baseline/base/seed0 --prompt="ROMEO:" --max_new_tokens=300
  python -m r1jax.generate --workdir=<run> --prompt="ROMEO:" --prompt="JULIET:" --temperature=0.8 --top_k=20

Prompts of different lengths share one batch (right-padded; each row decodes from its own position, see
r1jax/decoding.py). Sampling: temperature (0: greedy), top-k (0: off), top-p / nucleus (1: off), a seed.
"""

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from r1jax import decoding, entry
from r1jax.checkpoint import Checkpointer, latest_step
from r1jax.config import Config
from r1jax.data.core import make_dataset
from r1jax.errors import ConfigError
from r1jax.train import make_model, resolve_model_config


@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 1.0  # softmax temperature; 0: greedy
  top_k: int = 0  # keep the k most likely tokens; 0: all
  top_p: float = 1.0  # nucleus: keep the most likely tokens whose probabilities sum to >= p; 1: all
  seed: int = 0

  def __post_init__(self):
    for ok, field, fix in (
      (self.temperature >= 0, "temperature", "use 0 (greedy) or more"),
      (self.top_k >= 0, "top_k", "use 0 (off) or a positive count"),
      (0 < self.top_p <= 1, "top_p", "use a probability in (0, 1]"),
    ):
      if not ok:
        raise ConfigError(f"--{field}={getattr(self, field)} is invalid. Fix: {fix}.")


def sample(logits_BxV: jax.Array, key: jax.Array, s: Sampling) -> jax.Array:
  """Token ids [B] drawn from the logits under temperature, top-k and top-p (greedy at temperature 0)."""
  logits = logits_BxV.astype(jnp.float32)
  if s.temperature == 0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  logits = logits / s.temperature
  if s.top_k:
    kth_Bx1 = jax.lax.top_k(logits, min(s.top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth_Bx1, -jnp.inf, logits)
  if s.top_p < 1:  # the smallest set of the most likely tokens with probability >= p (the top token always kept)
    sorted_BxV = jnp.sort(logits, -1)[:, ::-1]
    cum_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, -1), -1)
    cutoff_Bx1 = jnp.take_along_axis(sorted_BxV, jnp.sum(cum_BxV < s.top_p, -1, keepdims=True), -1)
    logits = jnp.where(logits < cutoff_Bx1, -jnp.inf, logits)
  return jax.random.categorical(key, logits, -1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "max_len", "sampling"))
def generate_ids(
  model, params, prompts_BxT: jax.Array, lengths_B: jax.Array, *, max_new_tokens: int, max_len: int, sampling: Sampling
) -> jax.Array:
  """[B, max_new_tokens] sampled ids after each row's prompt (its first lengths[b] tokens): one prefill, then a
  scan of decoding steps, all in one compiled function."""
  (logits_BxTxV, _), state = model.apply(
    params, prompts_BxT, decode=decoding.Decode.prefill(lengths_B, max_len), mutable=[decoding.CACHE]
  )
  last_BxV = jnp.take_along_axis(logits_BxTxV, (lengths_B - 1)[:, None, None], 1)[:, 0]
  key = jax.random.key(sampling.seed)
  first_B = sample(last_BxV, jax.random.fold_in(key, 0), sampling)

  def step(carry, i):
    cache, token_B = carry
    (logits_Bx1xV, _), new = model.apply(
      {**params, decoding.CACHE: cache},
      token_B[:, None],
      decode=decoding.Decode.step(lengths_B + i - 1, max_len),
      mutable=[decoding.CACHE],
    )
    token_B = sample(logits_Bx1xV[:, 0], jax.random.fold_in(key, i), sampling)
    return (new[decoding.CACHE], token_B), token_B

  _, rest_NxB = jax.lax.scan(step, (state[decoding.CACHE], first_B), jnp.arange(1, max_new_tokens))
  return jnp.concatenate([first_B[:, None], rest_NxB.T], 1)


def load(workdir: str):
  """(model, variables, dataset) of the newest checkpoint in `workdir`; ConfigError when it has none or its model
  cannot generate text."""
  if latest_step(workdir) is None:
    raise ConfigError(
      f"--workdir={workdir!r} holds no checkpoint (no {os.path.join(workdir, 'checkpoints')}). Fix: "
      "pass the workdir of a trained run, e.g. results/dense_baseline/base/seed0."
    )
  ckpt = Checkpointer(workdir, 1, create=False)
  try:
    saved, meta = ckpt.restore_raw()
  finally:
    ckpt.close()
  cfg = Config.from_dict(meta["config"])
  if cfg.model.arch != "lm":
    raise ConfigError(
      f"--workdir={workdir!r} holds a {cfg.model.arch} model (model.arch={cfg.model.arch!r}); it "
      "classifies clips and cannot generate. Fix: pass the workdir of a language model run."
    )
  data = make_dataset(cfg.data, cfg.seed)
  if not hasattr(data, "encode"):
    raise ConfigError(
      f"--workdir={workdir!r} was trained on data.kind={cfg.data.kind!r}, which has no text "
      "vocabulary. Fix: pass a run trained on text (data.kind=text or tokens)."
    )
  model = make_model(resolve_model_config(cfg.model, data.vocab_size))
  return model, {"params": saved["params"], **saved.get("model_state", {})}, data


def encode(prompts: list[str], data) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded ids [B, T] and lengths [B] of the prompts in `data`'s vocabulary (its `encode`); ConfigError
  naming a character a character-level vocabulary lacks."""
  if not all(prompts):
    raise ConfigError("--prompt is empty. Fix: give at least one character, e.g. --prompt='ROMEO:'.")
  rows = []
  for p in prompts:
    missing = sorted({c for c in p if c not in data.chars}) if hasattr(data, "chars") else []
    if missing:
      raise ConfigError(
        f"--prompt={p!r} has characters the vocabulary lacks: {missing}. Fix: use only characters of the training text."
      )
    rows.append(data.encode(p))
  T = max(len(r) for r in rows)
  ids = np.zeros((len(prompts), T), np.int32)
  for b, r in enumerate(rows):
    ids[b, : len(r)] = r
  return ids, np.array([len(r) for r in rows], np.int32)


def generate_text(
  workdir: str, prompts: list[str], max_new_tokens: int, sampling: Sampling = Sampling(), max_len: int = 0
) -> list[str]:
  """Each prompt followed by `max_new_tokens` sampled tokens, decoded to text. max_len: the cache's positions (0: just
  enough); ConfigError when a prompt plus max_new_tokens does not fit."""
  if max_new_tokens < 1:
    raise ConfigError(f"--max_new_tokens={max_new_tokens} is invalid. Fix: ask for 1 or more.")
  model, variables, data = load(workdir)
  ids, lengths = encode(prompts, data)
  need = int(lengths.max()) + max_new_tokens
  if max_len and need > max_len:
    raise ConfigError(
      f"--prompt plus --max_new_tokens need {need} positions but --max_len={max_len}. Fix: raise "
      f"--max_len to >= {need} or ask for fewer tokens."
    )
  out = generate_ids(
    model,
    nn.unbox(variables),
    jnp.asarray(ids),
    jnp.asarray(lengths),
    max_new_tokens=max_new_tokens,
    max_len=max_len or need,
    sampling=sampling,
  )
  return [p + data.decode(np.asarray(row).tolist()) for p, row in zip(prompts, out)]


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "a trained run's workdir (its checkpoints/)")
flags.DEFINE_multi_string("prompt", ["\n"], "prompt(s); several make one batch")
flags.DEFINE_integer("max_new_tokens", 300, "tokens sampled after each prompt")
flags.DEFINE_integer("max_len", 0, "cache positions (0: prompt + max_new_tokens)")
flags.DEFINE_float("temperature", 0.8, "0: greedy")
flags.DEFINE_integer("top_k", 0, "0: off")
flags.DEFINE_float("top_p", 1.0, "1: off")
flags.DEFINE_integer("seed", 0, "sampling seed")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint it opens at INFO
  if not FLAGS.workdir:
    raise ConfigError(
      "--workdir is required. Fix: pass a trained run's workdir, e.g. --workdir=results/dense_baseline/base/seed0."
    )
  sampling = Sampling(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p, FLAGS.seed)
  for text in generate_text(FLAGS.workdir, FLAGS.prompt, FLAGS.max_new_tokens, sampling, FLAGS.max_len):
    print(text)
    print("-" * 40)


if __name__ == "__main__":
  entry.run(main)
