"""The module contract, parametrised from the registries so that a newly registered mixer or feed-forward is covered
without editing this file: output shape and dtype, no dependence across batch rows, causality (by gradients, and by
value for the mixers that decode), jit == eager, a bfloat16 forward that is finite and near float32, and
sharded == unsharded (outputs and gradients) on a (data 2, fsdp 2, tensor 2) mesh of 8 simulated devices.
Decoding (prefill + steps == full forward) is the same contract's other half, in test_decoding.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import registry, sharding
from r1jax.config import MeshConfig
from r1jax.inference import decoding

from helpers import SMALL_MIXER_OPTIONS, small_model_config

registry.load_builtins()
B, T, S = 4, 12, 3  # batch (divisible by data * fsdp), sequence length, video patches per frame
FFN_OPTIONS = {"moe": {"num_experts": 4, "top_k": 2, "num_shared": 1}}


def _decodes(name: str) -> bool:
  entry = registry.MIXERS[name]
  return not decoding.why_not_decodable(entry.module, entry.options())


CASES = [("mixer", n) for n in sorted(registry.MIXERS)] + [("ffn", n) for n in sorted(registry.FFNS)]
IDS = [f"{kind}={name}" for kind, name in CASES]


def _build(kind: str, name: str, dtype: str = "float32"):
  """The module, its input and its parameters (float32, fixed init)."""
  table = registry.MIXERS if kind == "mixer" else registry.FFNS
  entry = table[name]
  options = SMALL_MIXER_OPTIONS.get(name, {}) if kind == "mixer" else FFN_OPTIONS.get(name, {})
  cfg = small_model_config(kind, name, options, dtype=dtype)
  module = entry.module(cfg, cfg.options(kind, name))
  video = kind == "mixer" and registry.is_video(name)  # [B, T, S, D] clips (r1jax/model.py); others [B, T, D]
  shape = (B, T, S, cfg.d_model) if video else (B, T, cfg.d_model)
  x = jax.random.normal(jax.random.key(0), shape)
  boxed = module.init(jax.random.key(1), x, deterministic=True)
  return module, x, boxed, video


def _loss_fn(module):
  """A scalar that reads every output coordinate (a fixed random projection) and every auxiliary loss."""

  def loss(params, x):
    y, aux = module.apply(params, x, deterministic=False)
    r = jax.random.normal(jax.random.key(2), y.shape, jnp.float32)
    return jnp.sum(y.astype(jnp.float32) * r) + sum(jnp.sum(v) for v in jax.tree.leaves(aux)), y

  return loss


@pytest.mark.slow
@pytest.mark.parametrize("kind,name", CASES, ids=IDS)
def test_no_row_reads_another_and_causal_mixers_read_no_later_token(kind, name):
  """By gradients: d y[b, t] / d x[b', s] is zero for b' != b (every module), for s > t (causal mixers: all but
  video ones), for s != t (feed-forwards act per token); and a mixer does mix tokens (some s < t is read)."""
  module, x, boxed, video = _build(kind, name)
  params = nn.unbox(boxed)
  x = x.reshape(B, T, -1) if video else x  # flatten a video's patches into its frame's features
  r = jax.random.normal(jax.random.key(3), (B, T, x.shape[-1]))

  def per_position(x_BxTxF):
    y, _ = module.apply(params, x_BxTxF.reshape(B, T, S, -1) if video else x_BxTxF, deterministic=False)
    return jnp.einsum("BTF,BTF->BT", y.reshape(B, T, -1), r)

  # the Jacobian row by row (one backward pass per output position, sequential: ragged_dot has no batching rule)
  _, vjp = jax.vjp(per_position, x)
  rows_BTxBxT = jax.jit(lambda: jax.lax.map(lambda ct: vjp(ct)[0], jnp.eye(B * T).reshape(B * T, B, T)))()
  dep = np.abs(np.asarray(rows_BTxBxT)).sum(-1).reshape(B, T, B, T)  # [B, T, B', T']
  rows = dep.sum((1, 3))
  assert np.all(rows[~np.eye(B, dtype=bool)] == 0), f"{name}: an output reads another batch row"
  dep_TxT = np.einsum("btbs->ts", dep)
  if kind == "ffn":
    assert np.all(dep_TxT[~np.eye(T, dtype=bool)] == 0), f"{name}: a feed-forward mixes tokens"
  elif not video:
    assert np.all(dep_TxT[np.triu_indices(T, 1)] == 0), f"{name}: an output depends on a later input"
    assert dep_TxT[np.tril_indices(T, -1)].max() > 0, f"{name}: no output depends on an earlier input"
  else:
    assert dep_TxT[np.triu_indices(T, 1)].max() > 0, f"{name}: a video mixer reads no later frame"


@pytest.mark.parametrize("name", [n for n in sorted(registry.MIXERS) if _decodes(n)])
def test_changing_later_tokens_leaves_earlier_outputs_unchanged(name):
  """Causal by value (not only by gradients): a discrete choice such as a top-k over the whole sequence can read
  later tokens with zero gradient. Every mixer that decodes must pass this."""
  module, x, boxed, _ = _build("mixer", name)
  params = nn.unbox(boxed)
  apply = jax.jit(lambda x: module.apply(params, x, deterministic=True)[0])
  y = np.asarray(apply(x))
  for t in (0, T // 2, T - 2):
    later = jax.random.normal(jax.random.key(10 + t), x[:, t + 1 :].shape) * 3.0
    y2 = np.asarray(apply(x.at[:, t + 1 :].set(later)))
    np.testing.assert_allclose(y2[:, : t + 1], y[:, : t + 1], rtol=1e-5, atol=1e-5, err_msg=f"{name}, t={t}")


@pytest.mark.parametrize("kind,name", CASES, ids=IDS)
def test_shapes_and_jit_equals_eager(kind, name):
  """Output [B, T, (S,) D] in float32, auxiliaries a dict of scalars; jit gives the eager output and loss."""
  module, x, boxed, _ = _build(kind, name)
  params = nn.unbox(boxed)
  y, aux = module.apply(params, x, deterministic=False)
  assert y.shape == x.shape and y.dtype == jnp.float32 and np.isfinite(np.asarray(y)).all()
  assert isinstance(aux, dict) and all(jnp.ndim(v) == 0 for v in jax.tree.leaves(aux)), aux
  eager_loss, eager_y = _loss_fn(module)(params, x)
  jit_loss, jit_y = jax.jit(_loss_fn(module))(params, x)
  np.testing.assert_allclose(np.asarray(jit_y), np.asarray(eager_y), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(jit_loss), float(eager_loss), rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind,name", CASES, ids=IDS)
def test_bfloat16_compute_is_finite_and_near_float32(kind, name):
  """The same float32 parameters, computed in bfloat16: finite, and within a few bfloat16 roundings of float32
  (relative error of the whole output, which tolerates a rare flipped top-k choice, not a wrong formula)."""
  module, x, boxed, _ = _build(kind, name)
  params = nn.unbox(boxed)
  module16, _, _, _ = _build(kind, name, dtype="bfloat16")
  y32 = np.asarray(jax.jit(lambda p, x: module.apply(p, x, deterministic=True)[0])(params, x))
  y16, aux16 = jax.jit(lambda p, x: module16.apply(p, x, deterministic=False))(params, x)
  assert y16.dtype == jnp.bfloat16
  y16 = np.asarray(y16, np.float32)
  assert np.isfinite(y16).all() and all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(aux16))
  scale = max(np.linalg.norm(y32), 1e-6)
  assert np.linalg.norm(y16 - y32) / scale < 0.05, f"{name}: bfloat16 is {np.linalg.norm(y16 - y32) / scale:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("kind,name", CASES, ids=IDS)
def test_sharded_equals_unsharded(kind, name):
  """Parameters placed by their logical names on a (data 2, fsdp 2, tensor 2) mesh, the batch split over data and
  fsdp: the output, the loss and every gradient equal the single-device ones."""
  module, x, boxed, _ = _build(kind, name)
  params = nn.unbox(boxed)
  grad = jax.jit(jax.value_and_grad(_loss_fn(module), has_aux=True))
  (loss0, y0), g0 = grad(params, x)
  mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    shardings = sharding.logical_shardings(boxed, mesh)
    params_sh = jax.device_put(params, shardings)
    x_sh = jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
    (loss, y), g = grad(params_sh, x_sh)
  split = [p for p in jax.tree.leaves(params_sh) if p.addressable_shards[0].data.shape != p.shape]
  assert split or kind == "ffn" and name == "none", f"{name}: no parameter is sharded"
  np.testing.assert_allclose(np.asarray(y), np.asarray(y0), rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(float(loss), float(loss0), rtol=1e-5, atol=1e-4)
  # float32 sums split over devices add in another order: an error relative to each gradient's own scale
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max()))
    ),
    g,
    g0,
  )


def test_every_registered_module_is_in_the_contract():
  names = {name for _, name in CASES}
  assert names == set(registry.MIXERS) | set(registry.FFNS) and len(registry.MIXERS) >= 11  # builtins loaded


@pytest.mark.slow
@pytest.mark.parametrize("kind,name", CASES, ids=IDS)
def test_forward_and_backward_compile_for_an_h100_without_a_gpu(kind, name, gpu_aot):
  """bfloat16 forward and backward compiled for one H100 (r1jax/lab/aot.py; tests/gpu_aot.py compiles every case
  once per session): GPU-only lowering errors (Triton block shapes, shared memory, cuDNN's constraints) fail here."""
  report = gpu_aot["modules"][f"{kind}={name}"]
  assert "error" not in report, report.get("error")
  assert report["memory_bytes"] > 0 and (report["flops"] > 0 or name == "none")  # `none`: no feed-forward
