"""The Transformer LM: causality, the scored-positions path, vocab padding, remat, gradients, dtypes."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.config import ModelConfig
from r1jax.model import Transformer

from helpers import assert_grad_matches_finite_differences

CFG = ModelConfig(vocab_size=50, num_layers=2, d_model=32, num_heads=4, d_ff=64)


def _init(cfg, T=16, B=2, seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size)
  return nn.unbox(Transformer(cfg).init(jax.random.key(1), tokens)["params"]), tokens


def test_logits_shape_and_padded_vocab_is_masked():
  params, tokens = _init(CFG)
  logits, aux = Transformer(CFG).apply({"params": params}, tokens)
  assert logits.shape == (2, 16, 64) and logits.dtype == jnp.float32  # 50 rounded up to pad_vocab_to=64
  assert params["embed"].shape == (64, 32)
  assert np.all(np.argmax(logits, -1) < 50) and np.all(logits[..., 50:] <= -1e8)
  assert float(aux["aux_loss"]) == 0.0
  assert np.isfinite(logits[..., :50]).all()


@pytest.mark.slow
@pytest.mark.parametrize("t", [0, 7, 14])
def test_model_is_causal_by_gradients(t):
  params, tokens = _init(CFG)
  model = Transformer(CFG)
  emb = jnp.take(params["embed"], tokens, axis=0)
  logits_at_t = lambda e: model.apply({"params": params}, tokens, embeddings_BxTxD=e)[0][0, t, :50].sum()
  g = jax.grad(logits_at_t)(emb)
  assert np.abs(g[0, t + 1 :]).max() == 0.0  # nothing after t reaches position t
  assert np.abs(g[0, : t + 1]).max(axis=-1).min() > 0.0  # every position up to t does
  assert np.abs(g[1]).max() == 0.0  # nor does another row of the batch


def test_future_tokens_do_not_change_past_logits():
  params, tokens = _init(CFG, T=20)
  model = Transformer(CFG)
  changed = tokens.at[:, 12:].set((tokens[:, 12:] + 7) % CFG.vocab_size)
  a, _ = model.apply({"params": params}, tokens)
  b, _ = model.apply({"params": params}, changed)
  np.testing.assert_allclose(a[:, :12], b[:, :12], rtol=1e-6, atol=1e-6)
  assert np.abs(a[:, 12:] - b[:, 12:]).max() > 1e-4


def test_target_pos_equals_gathered_full_logits():
  params, tokens = _init(CFG)
  model = Transformer(CFG)
  pos = jnp.array([[0, 5, 15], [3, 3, 9]])
  full, _ = model.apply({"params": params}, tokens)
  part, _ = model.apply({"params": params}, tokens, target_pos_BxN=pos)
  np.testing.assert_allclose(part, jnp.take_along_axis(full, pos[..., None], 1), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_remat_matches_plain_in_outputs_and_gradients():
  params, tokens = _init(CFG)
  loss = lambda cfg: (
    lambda p: reference.cross_entropy(
      Transformer(cfg).apply({"params": p}, tokens)[0].reshape(-1, 64), tokens.reshape(-1)
    )
  )
  g_plain = jax.grad(loss(CFG))(params)
  g_remat = jax.grad(loss(dataclasses.replace(CFG, remat=True)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_plain, g_remat)


@pytest.mark.slow
def test_gradients_reach_every_parameter_and_match_finite_differences():
  params, tokens = _init(CFG)
  g = assert_grad_matches_finite_differences(
    lambda p: Transformer(CFG).apply({"params": p}, tokens)[0][..., :50].std(), params
  )
  for path, leaf in jax.tree_util.tree_leaves_with_path(g):
    assert np.isfinite(leaf).all() and np.abs(leaf).max() > 0, jax.tree_util.keystr(path)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_compute_close_to_float32(dtype):
  params, tokens = _init(CFG)
  f32, _ = Transformer(CFG).apply({"params": params}, tokens)
  low, _ = Transformer(dataclasses.replace(CFG, dtype=dtype)).apply({"params": params}, tokens)
  assert params["embed"].dtype == jnp.float32 and low.dtype == jnp.float32
  # measured max |error| (logits up to 0.84): bfloat16 3.0e-3, float16 3.2e-4; tolerance ~3x that
  np.testing.assert_allclose(low[..., :50], f32[..., :50], atol={"bfloat16": 1e-2, "float16": 1e-3}[dtype])


def test_untied_head_and_gqa():
  cfg = dataclasses.replace(CFG, tie_embeddings=False, num_kv_heads=2)
  params, tokens = _init(cfg)
  assert params["head"].shape == (32, 64) and params["layer0"]["mixer"]["wk"].shape == (32, 2, 8)
  logits, _ = Transformer(cfg).apply({"params": params}, tokens)
  assert np.isfinite(logits[..., :50]).all()


def test_no_ffn_layers_are_attention_only():
  cfg = dataclasses.replace(CFG, ffn="none")
  params, tokens = _init(cfg)
  assert set(params["layer0"]) == {"mixer", "mixer_norm", "ffn_norm"}
  logits, _ = Transformer(cfg).apply({"params": params}, tokens)
  assert np.isfinite(logits[..., :50]).all()
