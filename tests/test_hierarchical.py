"""Local (sliding-window) attention, local/global fusion and MoD-style routing against naive references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.errors import ConfigError
from r1jax.mixers.dense import Attention, AttentionOptions
from r1jax.mixers.fusion import FusionAttention, FusionOptions
from r1jax.mixers.local import LocalAttention, LocalOptions, local_attention
from r1jax.mixers.routed import RoutedAttention, RoutedOptions, routed_attention, routed_tokens

from helpers import apply_mixer, assert_causal, mixer_config, project_out


def _qkv(rng, B, T, H, G, K=8):
  return [jnp.asarray(rng.normal(size=(B, T, h, K)), jnp.float32) for h in (H, G, G)]


@pytest.mark.slow
@pytest.mark.parametrize(
  "B,T,H,G,w", [(2, 37, 4, 2, 5), (1, 16, 2, 2, 16), (2, 33, 2, 1, 8), (1, 20, 3, 3, 1), (1, 9, 2, 1, 4)]
)
def test_blocked_local_equals_band_masked_reference(B, T, H, G, w):
  """T not a multiple of w, GQA, w = 1 (each token attends to itself only)."""
  q, k, v = _qkv(np.random.default_rng(T + w), B, T, H, G)
  out = local_attention(q, k, v, w, "blocked")
  ref = reference.attention(q, k, v, reference.window_mask(T, w))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_local_cost_is_linear_in_T():
  """The blocked path never forms a T x T matrix: compiled FLOPs double (not quadruple) when T doubles."""

  def flops(T):
    q, k, v = (jax.ShapeDtypeStruct((1, T, 2, 16), jnp.float32) for _ in range(3))
    lowered = jax.jit(lambda q, k, v: local_attention(q, k, v, 32, "blocked")).lower(q, k, v)
    return lowered.compile().cost_analysis()["flops"]

  ratio = flops(2048) / flops(1024)
  assert 1.8 < ratio < 2.2, ratio


@pytest.mark.slow
@pytest.mark.parametrize("window", [12, 100])
def test_window_at_least_T_equals_global(window):
  cfg = mixer_config(kv_heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 12, cfg.d_model))
  params, (out, _), _ = apply_mixer(LocalAttention(cfg, LocalOptions(window=window)), x)
  dense, _ = Attention(cfg, AttentionOptions(impl="naive")).apply(params, x, deterministic=True)
  np.testing.assert_allclose(out, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("beta,branch", [(1.0, "local"), (0.0, "global")])
def test_fusion_with_fixed_beta_equals_one_branch(beta, branch):
  cfg = mixer_config()
  x = jax.random.normal(jax.random.key(0), (2, 14, cfg.d_model))
  params, (out, aux), _ = apply_mixer(FusionAttention(cfg, FusionOptions(beta="fixed", beta_init=beta, window=4)), x)
  single = LocalAttention(cfg, LocalOptions(window=4)) if branch == "local" else Attention(cfg, AttentionOptions())
  expected, _ = single.apply(params, x, deterministic=True)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  assert float(aux["beta"]) == beta


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["head", "token"])
def test_learned_fusion_equals_definition_and_trains_beta(mode):
  """o = beta * local + (1 - beta) * global with the sown beta; the LM loss reaches the beta parameters."""
  cfg = mixer_config()
  T, w = 11, 3
  mixer = FusionAttention(cfg, FusionOptions(beta=mode, beta_init=0.3, window=w))
  x = jax.random.normal(jax.random.key(0), (2, T, cfg.d_model))
  params, (_, aux), _ = apply_mixer(mixer, x)
  np.testing.assert_allclose(aux["beta"], 0.3, rtol=1e-6)  # every token and head starts at beta_init
  rand = lambda a: jax.random.normal(jax.random.key(a.size), a.shape)  # noqa: E731
  params["params"]["beta_bias"] = rand(params["params"]["beta_bias"])
  if mode == "token":  # a gate that varies over tokens
    params["params"]["beta_gate"] = rand(params["params"]["beta_gate"])
  out, state = mixer.apply(params, x, deterministic=False, mutable=["intermediates"])
  out, beta_BxTxH = out[0], state["intermediates"]["beta"][0]
  q, k, v = (jnp.einsum("BTD,DHK->BTHK", x, params["params"][n]) for n in ("wq", "wk", "wv"))
  q, k = (reference.rope(a, cfg.rope_base).astype(np.float32) for a in (q, k))
  local = reference.attention(q, k, v, reference.window_mask(T, w))
  glob = reference.attention(q, k, v)
  b = np.asarray(beta_BxTxH)[..., None]
  np.testing.assert_allclose(out, project_out(params, b * local + (1 - b) * glob), rtol=1e-4, atol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(mixer.apply(p, x, deterministic=False)[0] ** 2))(params)["params"]
  names = ["beta_bias"] + (["beta_gate"] if mode == "token" else [])
  assert all(float(jnp.linalg.norm(grads[n])) > 0 for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("B,T,H,G,c,w", [(2, 13, 4, 2, 0.3, 3), (1, 16, 2, 1, 0.5, 4), (2, 9, 2, 2, 0.1, 2)])
def test_routed_equals_reference(B, T, H, G, c, w):
  """Routed tokens get global attention, all others the window only."""
  rng = np.random.default_rng(T)
  q, k, v = _qkv(rng, B, T, H, G)
  score = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)
  out, idx = routed_attention(q, k, v, score, c, w)
  C = routed_tokens(T, c)
  top = np.argsort(-np.asarray(score), axis=1)[:, :C]
  assert np.array_equal(np.sort(np.asarray(idx), 1), np.sort(top, 1))
  routed = np.zeros((B, T), bool)
  np.put_along_axis(routed, top, True, 1)
  mask_BxTxS = np.where(routed[:, :, None], reference.causal_mask(T), reference.window_mask(T, w))
  np.testing.assert_allclose(out, reference.attention(q, k, v, mask_BxTxS[:, None]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_routed_capacity_one_equals_global_and_router_gets_gradient():
  cfg = mixer_config()
  x = jax.random.normal(jax.random.key(0), (2, 12, cfg.d_model))
  params, (out, _), _ = apply_mixer(RoutedAttention(cfg, RoutedOptions(capacity=1.0, window=3)), x)
  dense, _ = Attention(cfg, AttentionOptions(impl="naive")).apply(params, x, deterministic=True)
  np.testing.assert_allclose(out, dense, rtol=1e-5, atol=1e-5)
  mixer = RoutedAttention(cfg, RoutedOptions(capacity=0.25, window=3))
  grads = jax.grad(lambda p: jnp.sum(mixer.apply(p, x, deterministic=False)[0] ** 2))(params)["params"]
  assert float(jnp.linalg.norm(grads["router"])) > 0


@pytest.mark.slow
@pytest.mark.parametrize(
  "mixer",
  [
    lambda cfg: LocalAttention(cfg, LocalOptions(window=3)),
    lambda cfg: FusionAttention(cfg, FusionOptions(beta="token", window=3)),
    lambda cfg: FusionAttention(cfg, FusionOptions(beta="head", window=4)),
    # Causal given the routing choice; the top-c choice itself looks at the whole sequence (see routed.py).
    lambda cfg: RoutedAttention(cfg, RoutedOptions(capacity=0.3, window=3)),
  ],
)
def test_causal_by_gradients(mixer):
  assert_causal(mixer(mixer_config()))


@pytest.mark.parametrize(
  "cls,kwargs,field",
  [
    (LocalOptions, {"window": 0}, "window"),
    (LocalOptions, {"impl": "splash"}, "impl"),
    (FusionOptions, {"beta": "learned"}, "beta"),
    (FusionOptions, {"beta": "head", "beta_init": 1.0}, "beta_init"),
    (FusionOptions, {"beta": "fixed", "beta_init": 1.5}, "beta_init"),
    (RoutedOptions, {"capacity": 0.0}, "capacity"),
    (RoutedOptions, {"capacity": 1.5}, "capacity"),
    (FusionOptions, {"window": 0}, "window"),
    (RoutedOptions, {"local_impl": "splash"}, "local_impl"),
  ],
)
def test_bad_options_name_the_field(cls, kwargs, field):
  with pytest.raises(ConfigError, match=field):
    cls(**kwargs)


@pytest.mark.slow
def test_routed_capacity_one_equals_global_in_every_layer_of_a_model():
  """A whole model with routed layers at capacity 1 gives the logits of the dense model with the same weights."""
  from r1jax.model import Transformer

  from helpers import tiny_config

  def model(**kw):
    cfg = tiny_config(text="x", model__vocab_size=40, model__init_std=0.3, model__num_layers=3, **kw).model
    return Transformer(cfg)

  routed = model(model__mixer="routed", model__mixer_options={"routed": {"capacity": 1.0, "window": 2}})
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 40)
  params = routed.init(jax.random.key(1), tokens)
  logits, _ = routed.apply(params, tokens)
  dense_logits, _ = model(model__mixer="attention").apply(params, tokens)  # the router weights go unused
  np.testing.assert_allclose(logits, dense_logits, rtol=1e-4, atol=1e-4)
  local_logits, _ = model(model__mixer="local", model__mixer_options={"local": {"window": 2}}).apply(params, tokens)
  assert not np.allclose(logits, local_logits, atol=1e-3)  # the window alone differs: the check has teeth
