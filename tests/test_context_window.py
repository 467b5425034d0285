"""Decoding past the trained context (r1jax/inference/decoding.py's cache window): a cache of `context` slots, the first
`sinks` positions and a ring of the rest. With one layer, a windowed step equals the training forward over [the sinks,
the ring] (StreamingLLM's positions within the cache); with several, a dense model's windowed decoding equals the same
weights as a sliding-window model; r1jax.generate feeds a prompt longer than the window through steps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import generate, registry
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.model import Transformer

from helpers import SMALL_MIXER_OPTIONS, small_model_config

registry.load_builtins()


def _keeps_window(name: str, opts) -> bool:
  module = registry.MIXERS[name].module
  return not decoding.why_not_decodable(module, opts) and not decoding.why_no_window(module, opts)


# every mixer whose cache keeps the window, and the other selection rules of DSA and MLA (random picks are seeded by
# absolute positions: a window changes them, by design, so no forward equals it)
CASES = [
  (n, SMALL_MIXER_OPTIONS.get(n, {}))
  for n, e in sorted(registry.MIXERS.items())
  if _keeps_window(n, e.options(**SMALL_MIXER_OPTIONS.get(n, {})))
] + [
  ("sparse", {"select": "window", "top_k": 4}),
  ("mla", {"sparse": True, "indexer": {"top_k": 4, "query_chunk": 8}}),
]


def _model(name: str, options: dict, **kw):
  cfg = small_model_config("mixer", name, options, **kw)
  model = Transformer(cfg)
  tokens = jax.random.randint(jax.random.key(0), (2, 20), 0, cfg.vocab_size)
  return cfg, model, nn.unbox(jax.jit(model.init)(jax.random.key(1), tokens)), np.asarray(tokens)


def _windowed_logits(model, params, tokens, prefill: int, context: int, sinks: int) -> dict[int, np.ndarray]:
  """Position -> logits [B, V] predicting the next token: a prefill of `prefill` tokens, then one step per token."""
  B, L = tokens.shape
  fill = jax.jit(
    lambda p, t: model.apply(
      p, t, decode=decoding.Decode.prefill(jnp.full((B,), prefill), L, context, sinks), mutable=["cache"]
    )
  )
  step = jax.jit(
    lambda p, c, t, pos: model.apply(
      {**p, "cache": c}, t, decode=decoding.Decode.step(pos, L, context, sinks), mutable=["cache"]
    )
  )
  (logits, _), state = fill(params, jnp.asarray(tokens[:, :prefill]))
  out = {prefill - 1: np.asarray(logits[:, -1])}
  for p in range(prefill, L):
    (logits, _), state = step(params, state["cache"], jnp.asarray(tokens[:, p : p + 1]), jnp.full((B,), p))
    out[p] = np.asarray(logits[:, 0])
  return out


def _in_window(row: np.ndarray, p: int, context: int, sinks: int) -> np.ndarray:
  """The tokens a windowed cache holds at position p: every one up to p, or the sinks and the last context - sinks."""
  return row[: p + 1] if p < context else np.concatenate([row[:sinks], row[p - (context - sinks) + 1 : p + 1]])


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,options", CASES, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o in CASES]
)
def test_a_windowed_step_equals_the_forward_over_the_sinks_and_the_ring(name, options):
  cfg, model, params, tokens = _model(name, options)
  forward = jax.jit(lambda p, t: model.apply(p, t)[0][:, -1])
  V = cfg.vocab_size
  for sinks in (0, 2):
    got = _windowed_logits(model, params, tokens, prefill=5, context=8, sinks=sinks)
    for p, logits_BxV in got.items():
      for b, row in enumerate(tokens):
        want = forward(params, jnp.asarray(_in_window(row, p, 8, sinks))[None])[0]
        np.testing.assert_allclose(logits_BxV[b, :V], want[:V], rtol=1e-4, atol=1e-4, err_msg=f"sinks {sinks}, p {p}")


@pytest.mark.slow
def test_a_dense_model_decoding_in_a_window_is_the_sliding_window_model():
  """Several layers: each layer's keys come from its own windowed past, which is what a sliding-window model of the
  same weights computes at every position (sinks 0)."""
  cfg, model, params, tokens = _model("attention", {}, num_layers=2)
  local = Transformer(small_model_config("mixer", "local", {"window": 6}, num_layers=2))
  want = np.asarray(jax.jit(local.apply)(params, jnp.asarray(tokens))[0])
  got = _windowed_logits(model, params, tokens, prefill=4, context=6, sinks=0)
  V = cfg.vocab_size
  for p, logits_BxV in got.items():
    np.testing.assert_allclose(logits_BxV[:, :V], want[:, p, :V], rtol=1e-4, atol=1e-4, err_msg=f"p {p}")


@pytest.mark.slow
def test_generate_feeds_a_prompt_longer_than_the_window_and_scores_through_the_decoding_path():
  cfg, model, params, tokens = _model("attention", {})
  forward = jax.jit(lambda p, t: model.apply(p, t)[0])
  # greedy generation past the window: each token the argmax of the forward over the window before it
  lengths = np.array([11, 4])
  got = np.asarray(
    generate.generate_ids(
      model,
      params,
      jnp.asarray(tokens[:, :11]),
      jnp.asarray(lengths),
      max_new_tokens=7,
      max_len=18,
      sampling=generate.Sampling(temperature=0.0),
      context=8,
      sinks=2,
    )
  )
  V = cfg.vocab_size
  for b, L in enumerate(lengths):
    seq = list(tokens[b, :L])
    for _ in range(7):
      seq.append(
        int(np.argmax(forward(params, jnp.asarray(_in_window(np.array(seq), len(seq) - 1, 8, 2))[None])[0, -1, :V]))
      )
    assert got[b].tolist() == seq[L:], b
  # teacher-forced scoring: the forward's per-token loss without a window; the window's from its own forward
  logp = jax.nn.log_softmax(forward(params, jnp.asarray(tokens))[..., :V], -1)
  want = -np.take_along_axis(np.asarray(logp)[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(generate.score_ids(model, params, jnp.asarray(tokens), prefill=3), want, atol=1e-4)
  windowed = generate.score_ids(model, params, jnp.asarray(tokens), prefill=3, context=8, sinks=2)
  p = 15
  logp_p = jax.nn.log_softmax(forward(params, jnp.asarray(_in_window(tokens[0], p, 8, 2))[None])[0, -1, :V])
  np.testing.assert_allclose(windowed[0, p], -logp_p[tokens[0, p + 1]], atol=1e-4)


def test_a_window_that_cannot_work_is_one_clear_error():
  with pytest.raises(ConfigError, match="sink_tokens=8 with a context window of 8"):
    decoding.Decode.step(jnp.zeros(1, jnp.int32), 32, context=8, sinks=8)
  assert generate.resolve_context(-1, 4, 64) == 64 and generate.resolve_context(0, 0, 64) == 0
  for context, sinks in ((-2, 0), (0, 4), (16, 16)):
    with pytest.raises(ConfigError, match=f"--context={context} with --sink_tokens={sinks} is invalid. Fix:"):
      generate.resolve_context(context, sinks, 64)


def test_mixers_that_keep_no_window_say_what_they_do_instead():
  cfg = small_model_config("mixer", "nsa", SMALL_MIXER_OPTIONS["nsa"])
  assert generate.window_notes(cfg) == [
    f"model.mixer='nsa' {registry.MIXERS['nsa'].module.decode_window(cfg.options('mixer', 'nsa'))}"
  ]
  assert generate.window_notes(small_model_config("mixer", "attention", {})) == []
  for name in ("fast_weight", "time_channel", "block_sparse", "nsa"):
    assert "window" in registry.MIXERS[name].module.decode_window(registry.MIXERS[name].options()), name
