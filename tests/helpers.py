"""Small configs shared by the tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import registry, sharding
from r1jax.config import Config, ModelConfig, default_config, to_dict
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.lab.ablation import override
from r1jax.objective import forward
from r1jax.train import Run, compile_train_step

# Mixer options small enough that every selection rule chooses at T = 12 (a key budget below the context), by
# mixer name: the decoding and module-contract tests (test_decoding.py, test_contract.py) build mixers with them.
SMALL_MIXER_OPTIONS = {
  "local": {"window": 3},
  "fusion": {"window": 3, "beta": "token"},
  "routed": {"capacity": 0.5, "window": 4},
  "sparse": {"top_k": 4, "query_chunk": 8},
  "block_sparse": {"block_size": 2, "top_blocks": 2},
  "nsa": {"cmp_block": 4, "cmp_stride": 2, "slc_block": 2, "top_blocks": 4, "window": 3, "query_chunk": 8},
  "fast_weight": {"short_conv": 3},
  "csa": {"rate": 2, "top_k": 2, "window": 3, "indexer_heads": 2, "indexer_dim": 8, "query_chunk": 8},
  "hca": {"rate": 3, "window": 3, "query_chunk": 8},
}


def small_model_config(kind: str, name: str, options: dict, **kw) -> ModelConfig:
  """A one-layer model (32 wide, 4 heads; `kw` overrides any field) with mixer or ffn (`kind`) `name` and its
  options, with 2 key/value groups where the mixer takes them (GQA coverage), else none (MLA's heads share one
  latent)."""
  base = dict(
    vocab_size=40,
    num_layers=1,
    d_model=32,
    num_heads=4,
    d_ff=48,
    init_std=0.3,
    arch="video" if kind == "mixer" and registry.is_video(name) else "lm",
    **{kind: name, f"{kind}_options": {name: options}},
  )
  base.update(kw)
  try:
    return ModelConfig(num_kv_heads=2, **base)
  except ConfigError as e:
    if "num_kv_heads" not in str(e):
      raise
    return ModelConfig(**base)


# tiny_config overrides for a video classifier on moving digits (3 frames of 8 x 8, 4 x 4 patches)
VIDEO = dict(
  model__arch="video",
  model__mixer="spacetime",
  data__kind="moving_digits",
  **{
    f"data__options__moving_digits__{k}": v for k, v in dict(frames=3, canvas=8, patch=4, num_test_examples=16).items()
  },
)


def tiny_config(text: str = "", **overrides) -> Config:
  """A model and run small enough to compile and train in seconds; overrides are dotted keys written with '__';
  `text`: the text dataset's file (data.options.text.path)."""
  base = {
    "model.num_layers": 2,
    "model.d_model": 32,
    "model.num_heads": 4,
    "model.d_ff": 64,
    "data.seq_len": 16,
    "data.batch_size": 8,
    "data.eval_batch_size": 8,
    "data.eval_max_batches": 2,
    "train.steps": 4,
    "train.eval_every": 0,
    "train.log_every": 2,
    "train.checkpoint_every": 0,
    "train.progress": False,
    "optim.warmup_steps": 2,
  }
  base.update({"data.options.text.path": text} if text else {})
  base.update({k.replace("__", "."): v for k, v in overrides.items()})
  return Config.from_dict(override(default_config(), base, "test"))


def ablation_base(text_file: str, extra: dict | None = None, **train_overrides):
  """An ablation's base config (a ConfigDict with dotted-key overrides, as drivers declare it): tiny_config's data,
  train and mesh settings with `train_overrides` (6 steps, one device), a 1-layer 32-wide model, then `extra`."""
  tiny = tiny_config(text=text_file, train__steps=6, mesh__devices=1, mesh__data=1, **train_overrides)
  model = {"model.num_layers": 1, "model.d_model": 32, "model.num_heads": 4, "model.d_ff": 64}
  return override(
    default_config(), {k: v for k, v in to_dict(tiny).items() if k != "model"} | model | (extra or {}), "test"
  )


def mixer_config(d_model=32, heads=4, kv_heads=0, init_std=0.3):
  """A ModelConfig for mixer-level tests (a larger init std so that attention is far from uniform)."""
  return tiny_config(
    text="x", model__d_model=d_model, model__num_heads=heads, model__num_kv_heads=kv_heads, model__init_std=init_std
  ).model


def apply_mixer(module, x, deterministic=False):
  """(params, (output, aux), intermediates) of a mixer at a fixed init."""
  params = nn.meta.unbox(module.init(jax.random.key(1), x, deterministic=True))
  out, state = module.apply(params, x, deterministic=deterministic, mutable=["intermediates"])
  return params, out, state.get("intermediates", {})


def project_out(params, o_BxTxHxK):
  """A mixer's output projection applied to per-head outputs."""
  return jnp.einsum("BTHK,HKD->BTD", o_BxTxHxK, params["params"]["wo"])


def assert_causal(mixer, T=10, forward_mode=False):
  """Output t of a mixer depends on inputs <= t only (and on input t itself), by the Jacobian (jacrev; jacfwd with
  `forward_mode`)."""
  x = jax.random.normal(jax.random.key(0), (1, T, mixer.cfg.d_model))
  params = mixer.init(jax.random.key(1), x, deterministic=True)
  jacobian = jax.jacfwd if forward_mode else jax.jacrev
  jac = jax.jit(jacobian(lambda x: mixer.apply(params, x, deterministic=False)[0]))(x)  # [1,T,D,1,T,D]
  dep_TxT = np.abs(np.asarray(jac)).sum((0, 2, 3, 5))
  assert np.all(dep_TxT[np.triu_indices(T, 1)] == 0), "output depends on later inputs"
  assert np.all(np.diag(dep_TxT) > 0), "output does not depend on its own input"


def one_run(text_file, mesh: dict, steps: int = 2, **overrides):
  """Loss and gradients at the initial params, then params after `steps` train steps, on the given mesh."""
  cfg = tiny_config(text=text_file, **{f"mesh__{k}": v for k, v in mesh.items()}, **overrides)
  run = Run(cfg)
  state, state_sh = run.init_state()
  batches = [sharding.put_batch(run.data.train_batch(s), run.mesh) for s in range(steps)]
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.RULES):
    loss_grad = jax.jit(jax.value_and_grad(lambda p, b: forward(run.model, p, state.model_state, b, None, True)[0]))
    loss, grads = loss_grad(state.params, batches[0])
    step = compile_train_step(run.model, run.tx, run.schedule, state, state_sh, batches[0], jax.random.key(0), run.mesh)
    for b in batches:
      state, metrics = step(state, b, jax.random.key(0))
  return state, jax.device_get((loss, grads, state.params, metrics))


def assert_grad_matches_finite_differences(f, params, eps=1e-3, rtol=2e-2, seed=7):
  """jax.grad(f) is right, not only nonzero: along a random direction d, the central difference
  (f(p + eps d) - f(p - eps d)) / 2 eps equals <grad f(p), d> (float32: a few parts in a thousand)."""
  f = jax.jit(f)
  g = jax.grad(f)(params)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  d = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
  shift = lambda s: jax.tree.map(lambda p, v: p + s * eps * v, params, d)
  numeric = (float(f(shift(1.0))) - float(f(shift(-1.0)))) / (2 * eps)
  analytic = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(d)))
  np.testing.assert_allclose(numeric, analytic, rtol=rtol)
  return g


def decode_logits(model, params, tokens_BxT, lengths_B, max_len):
  """Prefill the first lengths[b] tokens of each row (the rest of the row is junk the prefill must not read), then
  feed row b's tokens from lengths[b] on, one step at a time: logits [B, T, V] at every position < T, position t
  from the call that consumed token t; and the cache after the last step."""
  B, T = tokens_BxT.shape
  junk = jnp.where(jnp.arange(T)[None] < lengths_B[:, None], tokens_BxT, (tokens_BxT * 7 + 3) % 40)
  prefill = jax.jit(lambda p, t, L: model.apply(p, t, decode=decoding.Decode.prefill(L, max_len), mutable=["cache"]))
  step = jax.jit(
    lambda p, c, t, pos: model.apply({**p, "cache": c}, t, decode=decoding.Decode.step(pos, max_len), mutable=["cache"])
  )
  (logits, _), state = prefill(params, junk, lengths_B)
  out = np.array(logits)
  cache, lengths = state["cache"], np.asarray(lengths_B)
  for j in range(T - lengths.min()):
    pos = lengths + j
    tok = np.asarray(tokens_BxT)[np.arange(B), np.minimum(pos, T - 1)][:, None]
    (logits, _), state = step(params, cache, jnp.asarray(tok), jnp.asarray(pos))
    cache = state["cache"]
    for b in np.nonzero(pos < T)[0]:
      out[b, pos[b]] = logits[b, 0]
  return out, cache
