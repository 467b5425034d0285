"""The fast-weight recurrence: recurrent == parallel == chunkwise == the step-by-step reference, decoding, causality."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.errors import ConfigError
from r1jax.mixers.recurrent import FastWeight, FastWeightOptions, fast_weights, unit_lower_inverse

from helpers import apply_mixer, assert_causal, assert_grad_matches_finite_differences, mixer_config

FORMS = ("recurrent", "parallel", "chunkwise")


def _inputs(seed, B, T, H, K, P, A, delta=False, state=False):
  rng = np.random.default_rng(seed)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  q, k = (f32(rng.normal(size=(B, T, H, K))) for _ in range(2))
  if delta:  # the delta rule runs on unit keys
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  v = f32(rng.normal(size=(B, T, H, P)))
  log_a = f32(np.log(rng.uniform(0.3, 1.0, size=(B, T, H, A))))
  beta = f32(rng.uniform(0.0, 1.0, size=(B, T, H))) if delta else None
  s0 = f32(rng.normal(size=(B, H, K, P))) if state else None
  return q, k, v, log_a, beta, s0


CASES = [  # (B, T, H, K, P, A, delta, chunk, initial state): T not a multiple of C, C > T, C = 1
  (2, 13, 2, 4, 3, 1, False, 4, False),
  (1, 20, 3, 5, 2, 5, False, 6, True),
  (2, 7, 1, 3, 4, 1, True, 3, True),
  (1, 16, 2, 4, 4, 1, True, 16, False),
  (1, 9, 2, 2, 2, 2, False, 32, False),
  (1, 6, 1, 3, 3, 3, False, 1, False),
]


@pytest.mark.slow
@pytest.mark.parametrize("B,T,H,K,P,A,delta,chunk,state", CASES)
def test_every_form_equals_the_step_by_step_reference(B, T, H, K, P, A, delta, chunk, state):
  q, k, v, log_a, beta, s0 = _inputs(T * K + A, B, T, H, K, P, A, delta, state)
  ref_o, ref_s = reference.fast_weight_recurrence(q, k, v, np.exp(np.asarray(log_a, np.float64)), beta, s0)
  for form in FORMS:
    o, s = fast_weights(q, k, v, log_a, beta, form=form, chunk=chunk, state_BxHxKxP=s0)
    np.testing.assert_allclose(o, ref_o, rtol=1e-4, atol=1e-5, err_msg=form)
    np.testing.assert_allclose(s, ref_s, rtol=1e-4, atol=1e-5, err_msg=form)


@pytest.mark.slow
@pytest.mark.parametrize("A,delta", [(1, False), (4, False), (1, True)])
def test_forms_have_equal_gradients(A, delta):
  """Gradients of outputs and final state w.r.t. q, k, v, log a (and b) agree across the three forms."""
  q, k, v, log_a, beta, s0 = _inputs(A, 2, 11, 2, 4, 3, A, delta, state=True)
  rng = np.random.default_rng(1)
  w_o, w_s = (
    jnp.asarray(rng.normal(size=(2, 11, 2, 3)), jnp.float32),
    jnp.asarray(rng.normal(size=s0.shape), jnp.float32),
  )

  def loss(args, form):
    o, s = fast_weights(*args, form=form, chunk=4, state_BxHxKxP=s0)
    return jnp.sum(o * w_o) + jnp.sum(s * w_s)

  args = (q, k, v, log_a, beta)
  grads = {f: jax.jit(jax.grad(loss), static_argnums=1)(args, f) for f in FORMS}
  for form in ("parallel", "chunkwise"):
    for g, g_ref in zip(jax.tree.leaves(grads[form]), jax.tree.leaves(grads["recurrent"])):
      np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4, err_msg=form)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["chunkwise"]))


@pytest.mark.parametrize("C", [1, 3, 8, 13])
def test_unit_lower_inverse_equals_numpy_inverse(C):
  """The blocked inverse used by the delta rule, C not a power of two included (padded with an identity block)."""
  L = np.tril(np.random.default_rng(C).uniform(-1, 1, size=(2, 3, C, C)), -1) + np.eye(C)
  np.testing.assert_allclose(unit_lower_inverse(jnp.asarray(L, jnp.float32)), np.linalg.inv(L), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_equal_zero_is_a_per_step_outer_product():
  """a = 0 forgets everything: S_t = k_t v_t^T, so o_t = v_t (k_t . q_t), in every form."""
  q, k, v, _, _, _ = _inputs(0, 2, 10, 2, 3, 4, 1)
  log_a = jnp.full((2, 10, 2, 1), -jnp.inf)
  expected = v * jnp.sum(q * k, -1, keepdims=True)
  for form in FORMS:
    o, s = fast_weights(q, k, v, log_a, form=form, chunk=4)
    np.testing.assert_allclose(o, expected, rtol=1e-5, atol=1e-6, err_msg=form)
    np.testing.assert_allclose(s, k[:, -1, :, :, None] * v[:, -1, :, None, :], rtol=1e-5, atol=1e-6)


def test_chunkwise_cost_is_linear_in_T():
  """Compiled FLOPs of the chunkwise form double when T doubles; the parallel form's quadruple."""

  def flops(T, form):
    q, k, v = (jax.ShapeDtypeStruct((1, T, 2, 16), jnp.float32) for _ in range(3))
    log_a = jax.ShapeDtypeStruct((1, T, 2, 1), jnp.float32)
    f = jax.jit(lambda q, k, v, a: fast_weights(q, k, v, a, form=form, chunk=32))
    return f.lower(q, k, v, log_a).compile().cost_analysis()["flops"]

  assert 1.8 < flops(2048, "chunkwise") / flops(1024, "chunkwise") < 2.2
  assert flops(2048, "parallel") / flops(1024, "parallel") > 3.5


MIXER_OPTIONS = [
  FastWeightOptions(gate="vector"),
  FastWeightOptions(gate="scalar", delta=True, feature_map="elu1"),
  FastWeightOptions(
    gate="fixed", alpha=0.5, key_dim=4, out_norm=False, out_gate=False, feature_map="relu", short_conv=0
  ),
  FastWeightOptions(gate="head", input_scale="1", short_conv=2),
]


@pytest.mark.slow
@pytest.mark.parametrize("opts", MIXER_OPTIONS, ids=lambda o: f"{o.gate}{'-delta' if o.delta else ''}")
def test_mixer_forms_agree_and_decoding_equals_the_parallel_form(opts):
  cfg = mixer_config()
  x = jax.random.normal(jax.random.key(0), (2, 11, cfg.d_model))
  outs = {}
  for form in FORMS:
    mixer = FastWeight(cfg, dataclasses.replace(opts, form=form, chunk=4))
    params, (outs[form], aux), inter = apply_mixer(mixer, x)
    np.testing.assert_allclose(outs[form], outs["recurrent"], rtol=1e-4, atol=1e-5, err_msg=form)
  state = mixer.apply(params, 2, method="init_state")
  step = jax.jit(lambda x_t, state: mixer.apply(params, x_t, state, method="step"))
  steps = []
  for t in range(x.shape[1]):  # O(1) per token: the state is all that is carried
    y_t, state = step(x[:, t], state)
    steps.append(y_t)
  np.testing.assert_allclose(jnp.stack(steps, 1), outs["parallel"], rtol=1e-4, atol=1e-5)
  H, P = cfg.num_heads, cfg.d_model // cfg.num_heads
  assert float(aux["state_size"]) == H * (opts.key_dim or P) * P and state["S"].shape == (2, H, opts.key_dim or P, P)
  assert inter["log_a"][0].shape[-1] == (P if opts.gate == "vector" else 1)
  if opts.gate == "fixed":
    np.testing.assert_allclose(float(aux["decay"]), opts.alpha, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("opts", MIXER_OPTIONS[:2], ids=["vector", "scalar-delta"])
def test_mixer_is_causal_and_every_parameter_gets_gradient(opts):
  mixer = FastWeight(mixer_config(), dataclasses.replace(opts, chunk=4))
  # forward mode: XLA:CPU (jax 0.10.2) segfaults running jacrev's batched backward of the chunkwise vector-gate
  # recurrence over 2+ chunks on this project's AMD EPYC machines (tests/test_recurrent.py alone reproduces it)
  assert_causal(mixer, forward_mode=True)
  x = jax.random.normal(jax.random.key(0), (2, 9, mixer.cfg.d_model))
  params = mixer.init(jax.random.key(1), x, deterministic=True)
  params = nn.meta.unbox(params)
  grads = assert_grad_matches_finite_differences(
    lambda p: jnp.mean(mixer.apply(p, x, deterministic=True)[0] ** 2), params
  )
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.abs(g.value if hasattr(g, "value") else g).max()) > 0, jax.tree_util.keystr(path)


@pytest.mark.parametrize(
  "kwargs,field",
  [
    ({"gate": "vector", "delta": True}, "delta=True"),
    ({"gate": "decay"}, "gate="),
    ({"alpha": 1.0}, "alpha="),
    ({"form": "scan"}, "form="),
    ({"chunk": -1}, "chunk="),
    ({"input_scale": "a"}, "input_scale="),
  ],
)
def test_bad_options_name_the_field(kwargs, field):
  with pytest.raises(ConfigError, match=field):
    FastWeightOptions(**kwargs)
