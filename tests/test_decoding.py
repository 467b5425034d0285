"""The decoding contract (r1jax/inference/decoding.py), over every registered mixer and feed-forward: a prefill of
prompts of different lengths, then one token at a time, gives the full forward's logits at every position (float32)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import registry
from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.model import Transformer

from helpers import SMALL_MIXER_OPTIONS, decode_logits, small_model_config

registry.load_builtins()
# extra cases (name, options) for the other rules and branches of a mixer
EXTRA = [
  ("sparse", {"select": "window", "top_k": 4}),
  ("sparse", {"select": "random", "top_k": 4}),
  ("sparse", {"top_k": 4, "indexer_grad": "none", "indexer_loss": "kl", "detach_indexer_input": True}),
  ("nsa", {"cmp_block": 4, "cmp_stride": 4, "slc_block": 4, "top_blocks": 3, "window": 2, "compress": "mean"}),
  ("fast_weight", {"delta": True, "gate": "scalar"}),
  ("fast_weight", {"gate": "vector", "out_gate": True}),
  ("time_channel", {"time": False}),
  ("mla", {"sparse": True, "indexer": {"top_k": 4, "query_chunk": 8}}),
  ("mla", {"q_rank": 12, "kv_rank": 10, "absorb": False}),
  ("mla", {"sparse": True, "indexer": {"top_k": 4, "query_chunk": 8, "indexer_grad": "gate", "indexer_loss": "none"}}),
  ("mla", {"sparse": True, "q_rank": 12, "indexer": {"top_k": 3, "query_chunk": 8}}),  # V3.2: query from c_q
  ("csa", {"rate": 3, "overlap": False, "top_k": 8, "window": 2, "indexer_dim": 8, "indexer_grad": "gate"}),
  ("hca", {"rate": 2, "overlap": True, "window": 5, "sink": False, "query_chunk": 5}),
]


def _not_decodable(name: str, opts) -> str:
  return decoding.why_not_decodable(registry.MIXERS[name].module, opts)


CAUSAL = [n for n, e in sorted(registry.MIXERS.items()) if not _not_decodable(n, e.options())]
CASES = [(n, SMALL_MIXER_OPTIONS.get(n, {})) for n in CAUSAL] + EXTRA


def _config(mixer: str, options: dict, ffn: str = "swiglu", ffn_options: dict | None = None) -> ModelConfig:
  return small_model_config("mixer", mixer, options, ffn=ffn, ffn_options={ffn: ffn_options or {}})


def _check_decode_equals_forward(cfg, T=12, lengths=(5, 1, 9)):
  model = Transformer(cfg)
  tokens = jax.random.randint(jax.random.key(0), (len(lengths), T), 0, cfg.vocab_size)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(1), tokens))
  full, _ = jax.jit(model.apply)(params, tokens)
  got, _ = decode_logits(model, params, tokens, jnp.asarray(lengths), max_len=2 * T)
  V = cfg.vocab_size
  np.testing.assert_allclose(got[..., :V], np.asarray(full)[..., :V], rtol=2e-4, atol=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
  "mixer,options", CASES, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o in CASES]
)
def test_prefill_then_steps_equal_the_full_forward(mixer, options):
  _check_decode_equals_forward(_config(mixer, options))


@pytest.mark.slow
@pytest.mark.parametrize("ffn", sorted(registry.FFNS))
def test_every_feed_forward_decodes(ffn):
  """Feed-forwards act per token; MoE with capacity slots (a batch construct) decodes through its dropless path,
  so its forward is compared dropless."""
  opts = {"num_experts": 4, "top_k": 2, "num_shared": 1} if ffn == "moe" else {}
  _check_decode_equals_forward(_config("attention", {}, ffn, opts))


def test_every_registered_mixer_is_covered_or_says_why_it_cannot_decode():
  for name, entry in registry.MIXERS.items():
    assert name in CAUSAL or _not_decodable(name, entry.options()), name


@pytest.mark.parametrize(
  "mixer,options,why", [("routed", {}, "later tokens"), ("block_sparse", {"score_by": "block"}, "later queries")]
)
def test_a_mixer_that_cannot_decode_is_one_clear_error(mixer, options, why):
  cfg = dataclasses.replace(_config("attention", {}), mixer=mixer, mixer_options={mixer: options})
  model = Transformer(cfg)
  tokens = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ConfigError, match=f"model.mixer='{mixer}' cannot decode: .*{why}"):
    jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0), tokens, decode=decoding.Decode.prefill(jnp.ones(1), 8))
    )


def test_the_video_mixer_cannot_decode():
  entry = registry.MIXERS["spacetime"]
  with pytest.raises(ConfigError, match="model.mixer='spacetime' cannot decode: .*not autoregressive"):
    decoding.check_decodable(entry.module, entry.options(), "spacetime")
