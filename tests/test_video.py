"""The video classifier: which information each kind can use (frame order, per-frame CLS tokens), gradients to every
parameter, and video training sharded == unsharded."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from r1jax.model import VideoTransformer, layer_kinds

from helpers import VIDEO, one_run, tiny_config


def model(kind, layers=2):
  cfg = tiny_config(**VIDEO, model__num_layers=layers, model__mixer_options={"spacetime": {"kind": kind}}).model
  return VideoTransformer(dataclasses.replace(cfg, vocab_size=4))


def init(m, x):
  return nn.meta.unbox(m.init(jax.random.key(1), x))


@pytest.mark.slow
def test_factorised_runs_space_layers_then_time_layers_on_the_frame_cls_tokens():
  assert layer_kinds(model("factorised", 3).cfg) == ("space", "space", "time")
  assert layer_kinds(model("divided", 3).cfg) == ("divided",) * 3
  m, x = model("factorised"), jax.random.uniform(jax.random.key(0), (2, 3, 4, 16))
  params = init(m, x)
  _, state = m.apply(params, x, capture_intermediates=True, mutable=["intermediates"])
  inter = state["intermediates"]
  spatial_out = inter["layer0"]["__call__"][0][0]  # [B, T, 1 + S, D]: CLS first
  temporal_in = inter["layer1"]["mixer_norm"]["__call__"][0]  # RMSNorm of the temporal layer's input
  cls = np.asarray(spatial_out[:, :, :1], np.float64)
  scale = np.asarray(params["params"]["layer1"]["mixer_norm"]["scale"], np.float64)
  want = cls / np.sqrt((cls**2).mean(-1, keepdims=True) + m.cfg.norm_eps) * scale
  assert spatial_out.shape == (2, 3, 5, 32) and temporal_in.shape == (2, 3, 1, 32)
  np.testing.assert_allclose(temporal_in, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind, order_blind", [("space", True), ("divided", False), ("factorised", False)])
def test_only_space_only_is_blind_to_frame_order(kind, order_blind):
  """TimeSformer's space-only model has no time embedding: reversing the frames cannot change its logits."""
  x = jax.random.uniform(jax.random.key(0), (2, 3, 4, 16))
  m = model(kind)
  params = init(m, x)
  logits, _ = m.apply(params, x)
  reversed_logits, _ = m.apply(params, x[:, ::-1])
  assert logits.shape == (2, 1, m.cfg.padded_vocab) and np.all(np.asarray(logits[..., 4:]) < -1e8)
  assert np.allclose(logits[..., :4], reversed_logits[..., :4], atol=1e-5) == order_blind
  assert ("time_pos" in params["params"]) != order_blind


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["factorised", "dot_product"])
def test_gradient_reaches_every_parameter(kind):
  x = jax.random.uniform(jax.random.key(0), (2, 3, 4, 16))
  m = model(kind)
  params = init(m, x)
  grads = jax.grad(lambda p: m.apply(p, x)[0][..., :4].std())(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(np.asarray(g)).sum() > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"
  if kind == "factorised":
    assert "frame_cls" in params["params"]


@pytest.mark.slow
def test_video_training_sharded_equals_unsharded():
  overrides = {**VIDEO, "model__mixer_options": {"spacetime": {"kind": "divided"}}}
  _, (loss0, grads0, params0, _) = one_run("", {"data": 1, "devices": 1}, **overrides)
  _, (loss, grads, params, _) = one_run("", {"data": 2, "fsdp": 2, "tensor": 2}, **overrides)
  np.testing.assert_allclose(loss, loss0, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-5), (grads, params), (grads0, params0))
