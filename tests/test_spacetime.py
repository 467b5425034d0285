"""Space-time attention over [B, T, S, D]: every kind against masked attention on flattened tokens, joint == dense
attention, and which tokens each kind can mix (by gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.errors import ConfigError
from r1jax.mixers.spacetime import SpaceTimeAttention, SpaceTimeOptions

from helpers import mixer_config


def init(kind, x, heads=4):
  module = SpaceTimeAttention(mixer_config(d_model=x.shape[-1], heads=heads), SpaceTimeOptions(kind))
  return module, nn.meta.unbox(module.init(jax.random.key(1), x, deterministic=True))


def branch(p, x, axis):
  return reference.spacetime_branch(x, p["wq"], p["wk"], p["wv"], p["wo"], axis)


def rmsnorm(x, scale, eps):
  x = np.asarray(x, np.float64)
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * np.asarray(scale, np.float64)


@pytest.mark.parametrize("shape", [(2, 3, 5, 16), (1, 4, 4, 32)])
@pytest.mark.parametrize("kind", ["joint", "space", "time", "dot_product", "parallel", "divided"])
def test_each_kind_equals_the_masked_reference(kind, shape):
  x = jax.random.normal(jax.random.key(sum(shape)), shape)
  module, variables = init(kind, x)
  y, aux = module.apply(variables, x, deterministic=True)
  p = variables["params"]
  if kind in ("joint", "space", "time", "dot_product"):
    want = branch(p[kind], x, kind)
  elif kind == "parallel":
    want = branch(p["time"], x, "time") + branch(p["space"], x, "space")
  else:
    t = branch(p["time"], x, "time")
    h = rmsnorm(np.asarray(x, np.float64) + np.asarray(t, np.float64), p["space_norm"]["scale"], module.cfg.norm_eps)
    want = t + branch(p["space"], h, "space")
  np.testing.assert_allclose(y, want, rtol=2e-4, atol=2e-5)
  assert aux == {}


def test_joint_equals_dense_attention_on_flattened_tokens():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 16))
  module, variables = init("joint", x)
  p = variables["params"]["joint"]
  flat = x.reshape(2, 12, 16)
  q, k, v = (jnp.einsum("BND,DHK->BNHK", flat, p[n]) for n in ("wq", "wk", "wv"))
  o = reference.attention(q, k, v, mask_TxS=np.ones((12, 12), bool))
  want = jnp.einsum("BNHK,HKD->BND", o, p["wo"]).reshape(x.shape)
  np.testing.assert_allclose(module.apply(variables, x, deterministic=True)[0], want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize(
  "kind, same",
  [
    ("space", "frame"),
    ("time", "position"),
    ("joint", None),
    ("divided", None),
    ("parallel", None),
    ("dot_product", None),
  ],
)
def test_which_tokens_each_kind_mixes_by_gradients(kind, same):
  T, S = 3, 4
  x = jax.random.normal(jax.random.key(2), (1, T, S, 16))
  module, variables = init(kind, x)
  jac = jax.jit(jax.jacrev(lambda x: module.apply(variables, x, deterministic=True)[0]))(x)
  dep = np.abs(np.asarray(jac)).sum((0, 3, 4, 7))  # [T, S, T', S']: does output (t, s) depend on input (t', s')
  t, s = np.meshgrid(np.arange(T), np.arange(S), indexing="ij")
  same_frame = t[:, :, None, None] == t[None, None]
  same_position = s[:, :, None, None] == s[None, None]
  if same == "frame":
    assert np.all(dep[~same_frame] == 0) and np.all(dep[same_frame] > 0)
  elif same == "position":
    assert np.all(dep[~same_position] == 0) and np.all(dep[same_position] > 0)
  elif kind == "parallel" or kind == "dot_product":  # one hop: a frame's patches or a position's track, not both
    assert np.all(dep[~(same_frame | same_position)] == 0)
  else:  # joint, and divided (time then space: two hops reach every token)
    assert np.all(dep > 0)


@pytest.mark.slow
def test_gradient_reaches_every_parameter_and_bad_options_name_the_field():
  x = jax.random.normal(jax.random.key(3), (2, 2, 3, 16))
  module, variables = init("divided", x)
  grads = jax.grad(lambda v: jnp.sum(module.apply(v, x, deterministic=True)[0] ** 2))(variables)
  assert all(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))
  with pytest.raises(ConfigError, match="kind"):
    SpaceTimeOptions("diagonal")
  with pytest.raises(ConfigError, match="num_heads"):
    module = SpaceTimeAttention(mixer_config(d_model=18, heads=3), SpaceTimeOptions("dot_product"))
    module.init(jax.random.key(0), jnp.zeros((1, 2, 2, 18)), deterministic=True)
