"""Sampling text from a trained run: a jitted prefill of the prompts, then a decode loop inside one compiled function.

  python -m r1jax.generate --workdir=results/dense_baseline/base/seed0 --prompt="ROMEO:" --max_new_tokens=300
  python -m r1jax.generate --workdir=<run> --prompt="ROMEO:" --prompt="JULIET:" --temperature=0.8 --top_k=20
  python -m r1jax.generate --workdir=<run with model.mtp_depth >= 1> --prompt="ROMEO:" --speculative=mtp

Prompts of different lengths share one batch (right-padded; each row decodes from its own position, see
r1jax/inference/decoding.py). Sampling: temperature (0: greedy), top-k (0: off), top-p / nucleus (1: off), a seed.

Past the length the model was trained at, each layer's cache keeps a window of that length by default (--context=-1;
--context=N another window, 0 every position), --sink_tokens=N of it the first tokens (attention sinks,
StreamingLLM): no layer then reads farther back than training did. A mixer whose state is not a window of tokens says
on stderr what it does instead. `score_ids` scores text through the same decoding path (benchmarks/past_context.py).

--speculative=mtp decodes a model trained with multi-token prediction self-speculatively
(r1jax/inference/speculative.py): the same tokens as plain decoding at temperature 0, the same distribution when
sampling, in fewer passes of the model; it prints on stderr how many tokens each pass committed.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from r1jax import entry, registry
from r1jax.checkpoint import Checkpointer, latest_step
from r1jax.config import Config
from r1jax.data.core import make_dataset
from r1jax.errors import ConfigError
from r1jax.inference import decoding, speculative
from r1jax.inference.sampling import Sampling, at_rows, prompt_or, sample  # noqa: F401 (generate.Sampling, generate.sample: the public names)
from r1jax.train import make_model, resolve_model_config


def _prefill(model, params, ids_BxT, lengths_B, max_len: int, context: int, sinks: int):
  """(logits [B, T, V], cache) of a prefill of `ids` (each row's first lengths[b] tokens)."""
  decode = decoding.Decode.prefill(lengths_B, max_len, context, sinks)
  (logits_BxTxV, _), state = model.apply(params, ids_BxT, decode=decode, mutable=[decoding.CACHE])
  return logits_BxTxV, state[decoding.CACHE]


def _step(model, params, cache, token_B, position_B, max_len: int, context: int, sinks: int):
  """(logits [B, V], cache) of one decoding step: token[b] at position[b]."""
  decode = decoding.Decode.step(position_B, max_len, context, sinks)
  (logits_Bx1xV, _), new = model.apply(
    {**params, decoding.CACHE: cache}, token_B[:, None], decode=decode, mutable=[decoding.CACHE]
  )
  return logits_Bx1xV[:, 0], new[decoding.CACHE]


STATIC = ("model", "max_len", "sampling", "context", "sinks")


@functools.partial(jax.jit, static_argnames=STATIC)
def prefill_ids(
  model, params, prompts_BxP: jax.Array, lengths_B: jax.Array, *, max_len: int, sampling: Sampling, context=0, sinks=0
) -> dict[str, jax.Array]:
  """The state plain decoding starts from (`decode_ids`): the cache after a prefill of each row's prompt (its first
  lengths[b] tokens, at most the cache window), the prefilled length and the next token."""
  P = prompts_BxP.shape[1]
  F = min(P, decoding.Decode.prefill(lengths_B, max_len, context, sinks).longest_prefill)  # tokens prefilled
  pre_B = jnp.minimum(lengths_B, F)
  logits_BxFxV, cache = _prefill(model, params, prompts_BxP[:, :F], pre_B, max_len, context, sinks)
  drawn_B = sample(at_rows(logits_BxFxV, pre_B - 1), jax.random.fold_in(jax.random.key(sampling.seed), 0), sampling)
  return {"cache": cache, "pre": pre_B, "token": prompt_or(prompts_BxP, lengths_B, pre_B, drawn_B)}


@functools.partial(jax.jit, static_argnames=("max_new_tokens", *STATIC))
def decode_ids(
  model, params, state: dict, prompts_BxP, lengths_B, *, max_new_tokens: int, max_len: int, sampling, context=0, sinks=0
) -> jax.Array:
  """[B, max_new_tokens] ids after each row's prompt from `prefill_ids`'s state: a scan of decoding steps; the rest of
  a prompt longer than the window is fed through them (the prompt's tokens instead of samples)."""
  P = prompts_BxP.shape[1]
  F = min(P, decoding.Decode.prefill(lengths_B, max_len, context, sinks).longest_prefill)
  pre_B, key = state["pre"], jax.random.key(sampling.seed)

  def step(carry, i):
    cache, token_B = carry
    position_B = pre_B + i - 1  # the position of token_B
    logits_BxV, cache = _step(model, params, cache, token_B, position_B, max_len, context, sinks)
    token_B = prompt_or(
      prompts_BxP, lengths_B, position_B + 1, sample(logits_BxV, jax.random.fold_in(key, i), sampling)
    )
    return (cache, token_B), token_B

  _, rest_NxB = jax.lax.scan(step, (state["cache"], state["token"]), jnp.arange(1, max_new_tokens + P - F))
  tokens_BxN = jnp.concatenate([state["token"][:, None], rest_NxB.T], 1)  # the tokens at positions pre_B, pre_B + 1..
  return jnp.take_along_axis(tokens_BxN, (lengths_B - pre_B)[:, None] + jnp.arange(max_new_tokens)[None], 1)


generate_ids = decoding.prefill_then_decode(
  prefill_ids,
  decode_ids,
  """[B, max_new_tokens] sampled ids after each row's prompt (its first lengths[b] tokens), in one compiled
  function: a prefill (`prefill_ids`), then a scan of decoding steps (`decode_ids`). With a cache window (`context`
  slots, of which `sinks` keep the first tokens; r1jax/inference/decoding.py), a prompt longer than the window is
  prefilled up to it and its rest fed through steps (the prompt's tokens instead of samples), so no layer ever reads
  more than the window.""",
)


@functools.partial(jax.jit, static_argnames=("model", "prefill", "context", "sinks"))
def score_ids(model, params, ids_BxL: jax.Array, *, prefill: int, context: int = 0, sinks: int = 0) -> jax.Array:
  """[B, L - 1] float32: -log p(ids[:, t + 1] | ids[:, :t + 1]) through the decoding path (teacher forcing): a
  prefill of the first `prefill` tokens, then one step per token, the cache keeping a window of `context` slots
  (`sinks` of them the first tokens; 0: every position)."""
  B, L = ids_BxL.shape
  if not 1 <= prefill < L:
    raise ValueError(f"prefill={prefill} must be in [1, {L - 1}] for {L} tokens")

  def nll(logits_xV, next_x):
    logp = jax.nn.log_softmax(logits_xV.astype(jnp.float32), -1)
    return -jnp.take_along_axis(logp, next_x[..., None], -1)[..., 0]

  full_B = jnp.full((B,), prefill, jnp.int32)
  logits_BxFxV, cache = _prefill(model, params, ids_BxL[:, :prefill], full_B, L, context, sinks)
  first_BxF = nll(logits_BxFxV, ids_BxL[:, 1 : prefill + 1])

  def step(cache, xs):
    position, token_B, next_B = xs
    logits_BxV, cache = _step(model, params, cache, token_B, jnp.full((B,), position), L, context, sinks)
    return cache, nll(logits_BxV, next_B)

  xs = (jnp.arange(prefill, L - 1), ids_BxL[:, prefill:-1].T, ids_BxL[:, prefill + 1 :].T)
  _, rest_NxB = jax.lax.scan(step, cache, xs)
  return jnp.concatenate([first_BxF, rest_NxB.T], 1)


def load(workdir: str):
  """(model, variables, dataset, config) of the newest checkpoint in `workdir`; ConfigError when it has none or its
  model cannot generate text."""
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
  return model, {"params": saved["params"], **saved.get("model_state", {})}, data, cfg


def window_notes(cfg) -> list[str]:
  """What each mixer of model config `cfg` that keeps no window over its cache does instead (its
  `decode_window(opts)`, r1jax/inference/decoding.py), one line per mixer name; [] when every layer keeps the window."""
  notes = []
  for name in dict.fromkeys(cfg.layer_names("mixer")):
    module = registry.lookup(registry.MIXERS, name, "model.mixer").module
    note = decoding.why_no_window(module, cfg.options("mixer", name))
    if note:
      notes.append(f"model.mixer={name!r} {note}")
  return notes


def resolve_context(context: int, sinks: int, trained: int) -> int:
  """The cache window: `context` (-1: the trained length `trained`; 0: every position); ConfigError for a window
  that cannot work."""
  context = trained if context == -1 else context
  if context < 0 or (context and not 0 <= sinks < context) or (not context and sinks):
    raise ConfigError(
      f"--context={context} with --sink_tokens={sinks} is invalid. Fix: --context=-1 (the trained {trained}), 0 "
      "(every position, no sinks) or a positive window, with fewer sink tokens than the window."
    )
  return context


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
  workdir: str,
  prompts: list[str],
  max_new_tokens: int,
  sampling: Sampling = Sampling(),
  max_len: int = 0,
  context: int = -1,
  sinks: int = 0,
  speculative_by: str = "",
) -> list[str]:
  """Each prompt followed by `max_new_tokens` sampled tokens, decoded to text. max_len: the positions a row may
  reach (0: just enough); context: the cache's window (-1: the length the model was trained at; 0: every position),
  `sinks` of it the first tokens (r1jax/inference/decoding.py); speculative_by: "" (plain decoding) or "mtp" (drafts
  from the model's MTP modules, r1jax/inference/speculative.py); ConfigError when a prompt plus max_new_tokens does not
  fit."""
  if max_new_tokens < 1:
    raise ConfigError(f"--max_new_tokens={max_new_tokens} is invalid. Fix: ask for 1 or more.")
  if speculative_by not in ("", "mtp"):
    raise ConfigError(f"--speculative={speculative_by!r} is invalid. Fix: leave it empty (plain decoding) or use mtp.")
  model, variables, data, cfg = load(workdir)
  if speculative_by:
    speculative.check_speculative(model.cfg)
  context = resolve_context(context, sinks, cfg.data.seq_len)
  if context:
    for note in window_notes(model.cfg):
      logging.warning("cache window of %d: %s", context, note)
  ids, lengths = encode(prompts, data)
  need = int(lengths.max()) + max_new_tokens
  if max_len and need > max_len:
    raise ConfigError(
      f"--prompt plus --max_new_tokens need {need} positions but --max_len={max_len}. Fix: raise "
      f"--max_len to >= {need} or ask for fewer tokens."
    )
  kw = dict(max_new_tokens=max_new_tokens, max_len=max_len or need, sampling=sampling, context=context, sinks=sinks)
  args = (model, nn.unbox(variables), jnp.asarray(ids), jnp.asarray(lengths))
  if speculative_by:
    out, counts = speculative.speculative_ids(*args, **kw)
    rounds = max(int(counts["rounds"].sum()), 1)
    accepted = ", ".join(f"{float(a) / rounds:.1%}" for a in counts["accepted"].sum(0))
    logging.warning(
      "speculative decoding: %.2f tokens per pass of the model; drafts 1..k accepted: %s",
      float(counts["tokens"].sum()) / rounds,
      accepted,
    )
  else:
    out = generate_ids(*args, **kw)
  return [p + data.decode(np.asarray(row).tolist()) for p, row in zip(prompts, out)]


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined when run, so that a script importing this module may define its own)."""
  flags.DEFINE_string("workdir", None, "a trained run's workdir (its checkpoints/)")
  flags.DEFINE_multi_string("prompt", ["\n"], "prompt(s); several make one batch")
  flags.DEFINE_integer("max_new_tokens", 300, "tokens sampled after each prompt")
  flags.DEFINE_integer("max_len", 0, "positions a row may reach (0: prompt + max_new_tokens)")
  flags.DEFINE_integer("context", -1, "cache window in tokens (-1: the trained context; 0: every position)")
  flags.DEFINE_integer("sink_tokens", 0, "first tokens the window keeps (attention sinks, StreamingLLM)")
  flags.DEFINE_float("temperature", 0.8, "0: greedy")
  flags.DEFINE_integer("top_k", 0, "0: off")
  flags.DEFINE_float("top_p", 1.0, "1: off")
  flags.DEFINE_integer("seed", 0, "sampling seed")
  flags.DEFINE_enum("speculative", "", ["", "mtp"], "mtp: self-speculative decoding with the model's MTP modules")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint it opens at INFO
  if not FLAGS.workdir:
    raise ConfigError(
      "--workdir is required. Fix: pass a trained run's workdir, e.g. --workdir=results/dense_baseline/base/seed0."
    )
  sampling = Sampling(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p, FLAGS.seed)
  texts = generate_text(
    FLAGS.workdir,
    FLAGS.prompt,
    FLAGS.max_new_tokens,
    sampling,
    FLAGS.max_len,
    FLAGS.context,
    FLAGS.sink_tokens,
    FLAGS.speculative,
  )
  for text in texts:
    print(text)
    print("-" * 40)


if __name__ == "__main__":
  define_flags()
  entry.run(main)
