"""Multi-token prediction (DeepSeek-V3 2.2; r1jax/model.py, r1jax/objective.py): the modules equal their definition
written out by hand, depth k at position i reads tokens up to i+k and predicts token i+k+1, the losses are named
auxiliary metrics, and with weight 0 training is the plain model's bitwise."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import objective
from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.model import Block, Transformer
from r1jax.train import Run, make_train_step

from conftest import SHAKESPEARE
from helpers import tiny_config

CFG = ModelConfig(vocab_size=40, num_layers=2, d_model=32, num_heads=4, d_ff=48, init_std=0.3, mtp_depth=2)


def _init(cfg, T=12, B=2):
  model = Transformer(cfg)
  tokens = jax.random.randint(jax.random.key(0), (B, T), 0, cfg.vocab_size)
  return model, nn.unbox(model.init(jax.random.key(1), tokens)), tokens


def _rms(a, scale, eps):
  a = np.asarray(a, np.float64)
  return a / np.sqrt(np.mean(a * a, -1, keepdims=True) + eps) * np.asarray(scale, np.float64)


def test_each_module_equals_its_definition():
  """h^k = Block_k(M_k [RMSNorm(h^{k-1}); RMSNorm(Emb(t_{i+k}))]), logits = head(RMSNorm_k(h^k)), from h^0 the
  last layer's output; written with numpy and each module's own block applied alone."""
  model, variables, tokens = _init(CFG)
  p = variables["params"]
  (logits, aux), state = model.apply(variables, tokens, mutable=["intermediates"], capture_intermediates=True)
  h = np.asarray(state["intermediates"]["layer1"]["__call__"][0][0], np.float64)  # h^0: [B, T, D]
  emb = np.asarray(p["embed"], np.float64)[np.asarray(tokens)]
  T, eps = tokens.shape[1], CFG.norm_eps
  for k in (1, 2):
    ahead = np.concatenate([emb[:, k:], np.zeros_like(emb[:, :k])], 1)
    merged = np.concatenate(
      [_rms(h, p[f"mtp{k}_norm_h"]["scale"], eps), _rms(ahead, p[f"mtp{k}_norm_e"]["scale"], eps)], -1
    )
    x = merged @ np.asarray(p[f"mtp{k}_proj"], np.float64)
    h = np.asarray(Block(CFG, CFG.num_layers - 1).apply({"params": p[f"mtp{k}"]}, jnp.asarray(x, jnp.float32), True)[0])
    want = _rms(h, p[f"mtp{k}_norm"]["scale"], eps) @ np.asarray(p["embed"], np.float64).T
    np.testing.assert_allclose(aux["mtp_logits"][k - 1][..., :40], want[..., :40], rtol=2e-4, atol=2e-4)
  assert aux["mtp_logits"].shape == (2, *logits.shape) and T == 12


@pytest.mark.parametrize("k,i", [(1, 3), (2, 3), (2, 8)])
def test_depth_k_at_position_i_reads_tokens_up_to_i_plus_k_only(k, i):
  """Causality by gradients: depth k's logits at i depend on the inputs up to i+k (the token i+k included: it is
  the one merged in) and on none after it."""
  model, variables, tokens = _init(CFG)
  emb = jnp.take(variables["params"]["embed"], tokens, axis=0)
  f = lambda e: jnp.sum(model.apply(variables, tokens, embeddings_BxTxD=e)[1]["mtp_logits"][k - 1][0, i] ** 2)  # noqa: E731
  g = np.abs(np.asarray(jax.grad(f)(emb))).sum(-1)[0]  # [T]
  assert (g[i + k + 1 :] == 0).all() and g[i + k] > 0 and g[: i + 1].min() > 0, g


def test_losses_are_named_metrics_on_the_shifted_targets():
  model, variables, tokens = _init(CFG, T=10)
  targets = jnp.roll(tokens, -1, 1)
  w = jnp.ones(tokens.shape).at[0, 7].set(0.0)
  batch = {"inputs": tokens, "targets": targets, "weights": w}
  obj, metrics, _, _ = objective.forward(model, variables["params"], {}, batch, None, True)
  logits, aux = model.apply(variables, tokens)
  for k in (1, 2):  # position i: token i+k+1 = targets[i+k]; weight of i+k; the last k positions have none
    lk = np.asarray(aux["mtp_logits"][k - 1])[:, : 10 - k]
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(lk, targets[:, k:]))
    wk = np.asarray(w)[:, k:]
    np.testing.assert_allclose(metrics[f"mtp/loss{k}"], (ce * wk).sum() / wk.sum(), rtol=1e-5)
    accept = (lk.argmax(-1) == np.asarray(logits)[:, k:].argmax(-1)) * wk
    np.testing.assert_allclose(metrics[f"mtp/accept{k}"], accept.sum() / wk.sum(), rtol=1e-6)
  want = metrics["loss"] + CFG.mtp_weight / 2 * (metrics["mtp/loss1"] + metrics["mtp/loss2"])
  np.testing.assert_allclose(obj, want, rtol=1e-6)
  assert "mtp_logits" not in metrics


@pytest.mark.slow
def test_weight_zero_trains_the_plain_model_bitwise(tmp_path):
  """The modules exist, but with lambda = 0 every shared parameter and the main loss follow the plain model's run."""
  runs = {}
  for depth, weight in ((0, 0.3), (2, 0.0)):
    cfg = tiny_config(text=SHAKESPEARE, workdir=str(tmp_path / f"d{depth}"), train__steps=3, model__mtp_depth=depth)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, mtp_weight=weight))
    run = Run(cfg)
    state = run.init_state()[0]
    step = jax.jit(objective_step(run))
    losses = []
    for s in range(3):
      state, loss = step(state, run.data.train_batch(s))
      losses.append(float(loss))
    runs[depth] = (state.params, losses)
  plain, mtp = runs[0], runs[2]
  assert plain[1] == mtp[1]
  for path, a in jax.tree_util.tree_leaves_with_path(plain[0]):
    b = mtp[0]
    for key in path:
      b = b[key.key]
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  assert any("mtp1" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(mtp[0]))


def objective_step(run):
  train_step = make_train_step(run.model, run.tx, run.schedule, run.cfg.optim.trainable)

  def step(state, batch):
    state, metrics = train_step(state, batch, jax.random.key(0))
    return state, metrics["train/loss"]

  return step


def test_a_depth_that_cannot_work_is_one_clear_error():
  with pytest.raises(ConfigError, match=r"model.mtp_depth: -1 modules .* Fix: use 0 or more modules"):
    ModelConfig(mtp_depth=-1)
  with pytest.raises(ConfigError, match="on a language model"):
    ModelConfig(arch="video", mixer="spacetime", mtp_depth=1)
