"""INT8 weights (r1jax/inference/quantize.py): post-training quantization equals a plain-jnp reference (per output
channel, absmax, round to nearest), quantization-aware training runs the same forward with straight-through gradients,
the sizes add up, and a run's `int8` evaluator scores its weights rounded."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import generate
from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.inference import quantize
from r1jax.model import Transformer
from r1jax.train import Run

from conftest import SHAKESPEARE
from helpers import small_model_config, tiny_config

# each weight's contracting axes in the dense model's einsums (the output projection contracts heads and head dim)
CONTRACTS = {"wo": (0, 1)}


def _model(**kw):
  cfg = small_model_config("mixer", "attention", {}, num_layers=2, mtp_depth=1, **kw)
  model = Transformer(cfg)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, cfg.vocab_size)
  return model, nn.unbox(model.init(jax.random.key(1), tokens))["params"], tokens


def _blocks(tree):
  """{path: leaf} of the block's and MTP modules' weight matrices (the top level's embed, mtp1_proj stay float)."""
  out = {}
  for path, w in jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "array")):
    names = [str(getattr(k, "key", k)) for k in path]
    if re.fullmatch(r"(layer|mtp)\d+", names[0]) and (hasattr(w, "array") or w.ndim >= 2):
      out["/".join(names)] = w
  return out


def _reference(w, name: str):
  """A weight matrix as int8 values and a scale per output channel, float64: absmax over the contracting axes / 127.5
  (qwix's grid: the largest magnitude on the edge of the last bucket), w / scale rounded to nearest, clipped to
  [-128, 127]."""
  w64 = np.asarray(w, np.float64)
  scale = np.abs(w64).max(axis=CONTRACTS.get(name, (0,)), keepdims=True) / 127.5
  return np.clip(np.round(w64 / scale), -128, 127), scale, w64 / scale


def _dequantized(params, int8_params):
  """`params` with each block's weight matrix replaced by its int8 values times their scales."""
  new = _blocks(int8_params)
  return jax.tree_util.tree_map_with_path(
    lambda path, w: (
      (lambda a: a.qvalue.astype(jnp.float32) * a.scale)(new[k].array)
      if (k := "/".join(str(getattr(p, "key", p)) for p in path)) in new
      else w
    ),
    params,
  )


def test_post_training_int8_equals_the_reference_and_keeps_the_embedding_float():
  model, params, tokens = _model()
  int8_model, int8_params = quantize.ptq(model, params, tokens)
  weights, quantized = _blocks(params), _blocks(int8_params)
  assert quantized.keys() == weights.keys() and any(k.startswith("mtp1/") for k in quantized)  # every matrix
  assert len([k for k in quantized if k.startswith("layer1/")]) == 7  # q, k, v, o and the three FFN matrices
  for name, w in weights.items():
    q_ref, scale_ref, exact = _reference(w, name.split("/")[-1])
    a = quantized[name].array
    assert a.qvalue.dtype == jnp.int8 and a.scale.shape == scale_ref.shape, name
    np.testing.assert_allclose(a.scale, scale_ref, rtol=1e-6)
    tie = np.abs(np.abs(exact) - 127.5) < 1e-3  # the largest magnitude: float32 rounding decides the tie
    assert np.all(np.where(tie, np.abs(a.qvalue - q_ref) <= 1, a.qvalue == q_ref)), name
  leaves = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(int8_params)}
  assert leaves["['embed']"].dtype == leaves["['mtp1_proj']"].dtype == jnp.float32
  V = model.cfg.vocab_size
  got, got_aux = int8_model.apply({"params": int8_params}, tokens)
  want, want_aux = model.apply({"params": _dequantized(params, int8_params)}, tokens)
  np.testing.assert_allclose(got[..., :V], want[..., :V], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_aux["mtp_logits"][..., :V], want_aux["mtp_logits"][..., :V], rtol=1e-5, atol=1e-5)
  float_out = model.apply({"params": params}, tokens)[0][..., :V]
  assert 0 < float(jnp.abs(got[..., :V] - float_out).max()) < 0.2  # rounded, and not by much


def test_quantization_aware_training_runs_the_int8_forward_and_its_gradients_pass_through_the_rounding():
  """The QAT forward is the INT8 model's; rounding has a zero derivative almost everywhere, so a weight's gradient
  exists only straight through it: every block matrix gets one, in the direction of the float model's gradient at
  the rounded weights (qwix's backward matmuls read quantized operands of their own, so not equal to it)."""
  model, params, tokens = _model()
  qat, reference = quantize.qat(model), _dequantized(params, quantize.ptq(model, params, tokens)[1])
  V = model.cfg.vocab_size

  def loss(m, p):  # the main head's and the MTP module's
    logits, aux = m.apply({"params": p}, tokens)
    return sum(jnp.mean(jax.nn.log_softmax(a[..., :V])[..., 0]) for a in (logits, aux["mtp_logits"]))

  np.testing.assert_allclose(loss(qat, params), loss(model, reference), rtol=1e-5)
  got, want = _blocks(jax.grad(lambda p: loss(qat, p))(params)), _blocks(jax.grad(lambda p: loss(model, p))(reference))
  for name, g in got.items():
    g, w = np.ravel(g), np.ravel(want[name])
    assert np.all(np.isfinite(g)) and np.linalg.norm(g) > 0, name
    assert g @ w / (np.linalg.norm(g) * np.linalg.norm(w)) > 0.9, name


def test_sizes_count_int8_matrices_their_scales_and_the_float_rest():
  model, params, tokens = _model()
  _, int8_params = quantize.ptq(model, params, tokens)
  want = 0
  blocks = _blocks(params)
  for name, w in blocks.items():
    contracted = CONTRACTS.get(name.split("/")[-1], (0,))
    want += w.size + 4 * w.size // int(np.prod([w.shape[a] for a in contracted]))  # int8 values, float32 scales
  want += 4 * (sum(w.size for w in jax.tree.leaves(params)) - sum(w.size for w in blocks.values()))
  sizes = quantize.param_bytes(int8_params)
  assert sizes["memory"] == want and sizes["disk"] >= want
  assert quantize.param_bytes(params)["memory"] == 4 * sum(w.size for w in jax.tree.leaves(params))


def test_a_quantization_that_cannot_work_is_one_clear_error():
  with pytest.raises(ConfigError, match=r"model.quant.*'int4'.*Fix: use '' \(float weights\) or 'int8'"):
    ModelConfig(quant="int4")


@pytest.mark.slow
def test_the_int8_evaluator_scores_the_rounded_weights_and_decoding_runs_on_them(tmp_path):
  """A QAT run's forward is already the INT8 model's, so its INT8 loss equals its loss; a float run's differs a
  little; decoding with the INT8 weights gives the QAT model's greedy text."""
  losses = {}
  for quant in ("", "int8"):
    workdir = str(tmp_path / (quant or "float"))
    overrides = dict(model__quant=quant, train__steps=6, train__checkpoint_every=6, train__evaluators=("timed", "int8"))
    m = Run(tiny_config(text=SHAKESPEARE, workdir=workdir, **overrides)).train()["final"]
    losses[quant] = m
    assert m["eval/int8/memory_bytes"] < 0.5 * m["eval/float/memory_bytes"]
  np.testing.assert_allclose(losses["int8"]["eval/int8/loss"], losses["int8"]["eval/loss"], rtol=1e-5)
  assert losses[""]["eval/int8/loss"] != losses[""]["eval/loss"]  # rounding a float-trained run changes its loss
  assert losses["int8"]["eval/loss"] != losses[""]["eval/loss"]  # the same run trained on rounded weights differs
  model, variables, data, _ = generate.load(str(tmp_path / "int8"))
  float_model = Transformer(dataclasses.replace(model.cfg, quant=""))
  int8_model, int8_params = quantize.ptq(float_model, nn.unbox(variables)["params"], jnp.zeros((1, 4), jnp.int32))
  ids, lengths = generate.encode(["ROMEO:"], data)
  kw = dict(max_new_tokens=12, max_len=20, sampling=generate.Sampling(temperature=0.0))
  qat_text = generate.generate_ids(model, nn.unbox(variables), jnp.asarray(ids), jnp.asarray(lengths), **kw)
  int8_text = generate.generate_ids(int8_model, {"params": int8_params}, jnp.asarray(ids), jnp.asarray(lengths), **kw)
  np.testing.assert_array_equal(int8_text, qat_text)
