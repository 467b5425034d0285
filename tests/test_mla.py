"""Multi-head latent attention (r1jax/mixers/mla.py): the expanded forward against the equations, the absorbed
decoding step against the expanded one, the latent cache's size, sparse MLA, and option errors. Causality by
gradients, jit, bfloat16 and sharding are the module contract's (test_contract.py); decode == forward at every
position is test_decoding.py's, which covers mla by registration."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.mixers.mla import MultiHeadLatentAttention
from r1jax.model import Transformer

from helpers import decode_logits

SHAPES = [dict(), dict(q_rank=12, kv_rank=10, rope_dim=6, head_dim=6, v_dim=10)]


def _cfg(heads=4, **opts) -> ModelConfig:
  return ModelConfig(
    vocab_size=40,
    num_layers=1,
    d_model=32,
    num_heads=heads,
    d_ff=48,
    mixer="mla",
    mixer_options={"mla": opts},
    init_std=0.3,
  )


def _mixer(**opts):
  cfg = _cfg(**opts)
  return MultiHeadLatentAttention(cfg, cfg.options("mixer", "mla")), cfg


@pytest.mark.slow
@pytest.mark.parametrize("opts", SHAPES, ids=["defaults", "query_latent-narrow"])
def test_expanded_forward_equals_the_equations(opts):
  mla, cfg = _mixer(**opts)
  x = jax.random.normal(jax.random.key(0), (2, 9, 32))
  params = nn.unbox(mla.init(jax.random.key(1), x, deterministic=True))
  y, _ = mla.apply(params, x, deterministic=True)
  ref = reference.mla(x, params["params"], mla.opts.dims(cfg), cfg.norm_eps, cfg.rope_base)
  np.testing.assert_allclose(np.asarray(y), ref, rtol=2e-5, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
  "opts", SHAPES + [dict(sparse=True, indexer=dict(top_k=3))], ids=["defaults", "query_latent-narrow", "sparse"]
)
def test_absorbed_steps_equal_expanded_steps_and_the_cache_holds_only_latents(opts):
  """W_UK folded into the query and W_UV into the output give the expanded attention's logits (float32, tight);
  the cache holds c_kv [B, S, d_c] and k_R [B, S, d_r] per layer, and nothing per head."""
  T, max_len = 10, 16
  tokens = jax.random.randint(jax.random.key(0), (3, T), 0, 40)
  lengths = np.array([4, 1, 7])
  outs = {}
  for absorb in (True, False):
    cfg = _cfg(**opts, absorb=absorb)
    model = Transformer(cfg)
    params = nn.unbox(model.init(jax.random.key(1), tokens))
    outs[absorb], cache = decode_logits(model, params, tokens, jnp.asarray(lengths), max_len)
  mask = np.arange(T)[None, :] >= lengths[:, None]
  np.testing.assert_allclose(outs[True][mask], outs[False][mask], rtol=1e-5, atol=1e-5)
  d = cfg.options("mixer", "mla").dims(cfg)
  layer = cache["layer0"]["mixer"]
  shapes = {k: v.shape for k, v in layer.items() if k != "ik"}
  assert shapes == {"c_kv": (3, max_len, d["d_c"]), "k_rope": (3, max_len, d["d_r"])}
  assert cfg.options("mixer", "mla").cache_per_token(cfg) == d["d_c"] + d["d_r"]


@pytest.mark.slow
def test_sparse_mla_with_k_at_least_the_context_is_dense_mla():
  x = jax.random.normal(jax.random.key(0), (2, 9, 32))
  dense, _ = _mixer()
  sparse, _ = _mixer(sparse=True, indexer=dict(top_k=9, query_chunk=4))
  params = nn.unbox(sparse.init(jax.random.key(1), x, deterministic=True))
  y_sparse, aux = sparse.apply(params, x, deterministic=False)
  dense_params = {"params": {k: v for k, v in params["params"].items() if not k.startswith("idx_")}}
  y_dense, _ = dense.apply(dense_params, x, deterministic=False)
  np.testing.assert_allclose(np.asarray(y_sparse), np.asarray(y_dense), rtol=1e-5, atol=1e-5)
  assert float(aux["indexer_kl"]) >= 0 and "loss_indexer" in aux


def test_sparse_mla_attends_to_the_indexer_top_k_only():
  """With k < T, each query reads exactly its k top-scored earlier tokens: the reference on that mask."""
  mla, cfg = _mixer(sparse=True, indexer=dict(top_k=3, query_chunk=4))
  x = jax.random.normal(jax.random.key(0), (2, 9, 32))
  params = nn.unbox(mla.init(jax.random.key(1), x, deterministic=True))
  (y, _), state = mla.apply(params, x, deterministic=True, mutable=["intermediates"])
  idx, valid = state["intermediates"]["selected"][0]
  mask = np.zeros((2, 9, 9), bool)
  for b in range(2):
    for t in range(9):
      mask[b, t, np.asarray(idx)[b, t][np.asarray(valid)[b, t]]] = True
  assert mask.sum(-1).max() == 3 and np.all(mask <= reference.causal_mask(9)[None])
  p = {k: v for k, v in params["params"].items() if not k.startswith("idx_")}
  ref = reference.mla(x, p, mla.opts.dims(cfg), cfg.norm_eps, cfg.rope_base, mask)
  np.testing.assert_allclose(np.asarray(y), ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
  "opts,field",
  [
    (dict(rope_dim=3), "rope_dim=3 is odd"),
    (dict(kv_rank=-1), "kv_rank=-1"),
    (dict(sparse=True, indexer=dict(top_k=2, indexer_loss="x")), "mla.indexer: indexer_loss"),
    (dict(indexer=dict(select="window")), "sparse MLA picks its keys"),
  ],
)
def test_bad_options_name_the_field(opts, field):
  with pytest.raises(ConfigError, match=field):
    _cfg(**opts)


def test_grouped_heads_are_refused_before_anything_is_built():
  with pytest.raises(ConfigError, match="model.num_kv_heads=2 with mixer mla.*Fix: leave model.num_kv_heads at 0"):
    ModelConfig(vocab_size=40, num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, mixer="mla")


def test_the_indexer_options_nest_and_a_partial_one_keeps_the_dsa_recipe():
  """MLAOptions holds the sparse mixer's SparseOptions (one declaration of the indexer's fields): a mapping that
  names some of them keeps V3.2's recipe (sparse.DSA_INDEXER) for the others, from Python and from the command
  line's dotted overrides alike."""
  from r1jax.config import Config, default_config, field_default, run_identity, to_dict
  from r1jax.lab.ablation import override

  indexer = _cfg(sparse=True, indexer=dict(top_k=3)).options("mixer", "mla").indexer
  assert (indexer.top_k, indexer.indexer_grad, indexer.indexer_loss, indexer.detach_indexer_input) == (
    3,
    "none",
    "kl",
    True,
  )
  cfg = Config.from_dict(
    override(
      default_config(),
      {"model.mixer": "mla", "model.mixer_options.mla.sparse": True, "model.mixer_options.mla.indexer.top_k": 7},
      "test",
    )
  )
  assert cfg.model.options("mixer", "mla").indexer.top_k == 7
  assert run_identity(to_dict(cfg))["model.mixer_options.mla.indexer.top_k"] == 7
  assert field_default("model.mixer_options.mla.indexer.indexer_grad") == "none"
  with pytest.raises(ConfigError, match="unknown config field 'model.mixer_options.mla.indexer.top_c'"):
    _cfg(sparse=True, indexer=dict(top_c=3))
