"""Sharded == unsharded: loss, gradients and updated parameters on 8 simulated CPU devices (a dense model's whole
training step; every registered mixer and feed-forward on its own: tests/test_contract.py)."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from r1jax import layers, sharding
from r1jax.train import Run

from helpers import one_run, tiny_config


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "corpus.txt"
  path.write_text("".join(chr(97 + (i * i + 3 * i) % 26) + (" " if i % 7 == 0 else "") for i in range(6000)))
  return str(path), one_run(str(path), {"data": 1, "devices": 1})[1]


@pytest.mark.slow
@pytest.mark.parametrize(
  "mesh",
  [
    {"data": 8, "fsdp": 1, "tensor": 1},
    {"data": 2, "fsdp": 2, "tensor": 2},
    {"data": 1, "fsdp": 2, "tensor": 4},
    {"data": 1, "fsdp": 1, "expert": 2, "tensor": 4},
  ],
)
def test_sharded_equals_unsharded(unsharded, mesh):
  path, (loss0, grads0, params0, metrics0) = unsharded
  state, (loss, grads, params, metrics) = one_run(path, mesh)
  np.testing.assert_allclose(loss, loss0, rtol=1e-5)
  np.testing.assert_allclose(metrics["train/loss"], metrics0["train/loss"], rtol=1e-5)
  tree_close = lambda a, b, tol: jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)
  tree_close(grads, grads0, 2e-5)
  tree_close(params, params0, 2e-5)
  w1 = state.params["layer0"]["ffn"]["w1"]  # really sharded: (embed, mlp) -> (fsdp, tensor)
  assert w1.sharding.spec == P("fsdp", "tensor")
  assert w1.addressable_shards[0].data.shape == (w1.shape[0] // mesh["fsdp"], w1.shape[1] // mesh["tensor"])


def test_batch_is_split_over_data_fsdp_expert():
  mesh = sharding.make_mesh(tiny_config(text="x", mesh__data=2, mesh__fsdp=2, mesh__expert=2).mesh)
  batch = sharding.put_batch({"inputs": np.arange(8 * 3).reshape(8, 3)}, mesh)["inputs"]
  assert batch.sharding.spec == P(("data", "fsdp", "expert"), None)
  assert {s.data.shape for s in batch.addressable_shards} == {(1, 3)}
  np.testing.assert_array_equal(np.asarray(batch), np.arange(24).reshape(8, 3))


def test_rules_table_has_no_duplicate_logical_names():
  names = [name for name, _ in sharding.RULES]
  assert len(names) == len(set(names))


# Megatron-style placement on a mesh where fsdp, expert and tensor are all > 1 (MaxText keeps such golden tables):
# heads and the MLP width over `tensor`, the model width over `fsdp`, experts over `expert`, norms replicated.
GOLDEN_PARAM_SPECS = {
  "embed": ("tensor", "fsdp"),
  "final_norm/scale": (None,),
  "layer0/mixer/wq": ("fsdp", "tensor", None),
  "layer0/mixer/wk": ("fsdp", "tensor", None),
  "layer0/mixer/wv": ("fsdp", "tensor", None),
  "layer0/mixer/wo": ("tensor", None, "fsdp"),
  "layer0/mixer_norm/scale": (None,),
  "layer0/ffn_norm/scale": (None,),
  "layer0/ffn/w1": ("fsdp", "tensor"),
  "layer0/ffn/w3": ("fsdp", "tensor"),
  "layer0/ffn/w2": ("tensor", "fsdp"),
  "layer1/mixer/wq": ("fsdp", "tensor", None),
  "layer1/mixer/wk": ("fsdp", "tensor", None),
  "layer1/mixer/wv": ("fsdp", "tensor", None),
  "layer1/mixer/wo": ("tensor", None, "fsdp"),
  "layer1/mixer_norm/scale": (None,),
  "layer1/ffn_norm/scale": (None,),
  "layer1/ffn/router": ("fsdp", None),
  "layer1/ffn/w1": ("expert", "fsdp", "tensor"),
  "layer1/ffn/w3": ("expert", "fsdp", "tensor"),
  "layer1/ffn/w2": ("expert", "tensor", "fsdp"),
  "layer1/ffn/shared/w1": ("fsdp", "tensor"),
  "layer1/ffn/shared/w3": ("fsdp", "tensor"),
  "layer1/ffn/shared/w2": ("tensor", "fsdp"),
}


# A model with a MoE layer on a mesh of 2 x 2 x 2 devices: every mesh axis holds something.
MOE_ON_EVERY_AXIS = dict(
  mesh__data=1,
  mesh__fsdp=2,
  mesh__expert=2,
  mesh__tensor=2,
  model__ffn_pattern=("swiglu", "moe"),
  model__ffn_options__moe__num_experts=4,
)


def test_every_parameter_and_its_optimizer_state_is_placed_as_the_golden_table_says(text_file):
  cfg = tiny_config(
    text=text_file,
    **MOE_ON_EVERY_AXIS,
    model__ffn_options__moe__num_shared=1,
    model__num_kv_heads=2,
  )
  run = Run(cfg)
  _, state_sh = run.init_state()
  specs = lambda tree: {
    "/".join(p.key for p in path): tuple(s.spec) for path, s in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  assert specs(state_sh.params) == GOLDEN_PARAM_SPECS
  adam = next(s for s in jax.tree.leaves(state_sh.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu"))
  assert specs(adam.mu) == GOLDEN_PARAM_SPECS and specs(adam.nu) == GOLDEN_PARAM_SPECS


BATCH = ("data", "fsdp", "expert")
GOLDEN_ACTIVATION_SPECS = {  # logical axes of each constrained activation -> its mesh placement
  ("act_batch", "act_length", "act_embed"): (BATCH, None, None),  # the residual stream, every block's output
  ("act_batch", "act_length", "act_heads", "act_kv"): (BATCH, None, "tensor", None),  # q, k, v
  ("act_batch", "act_length", "act_mlp"): (BATCH, None, "tensor"),  # the SwiGLU hidden layer
  ("act_batch", "act_length", "act_vocab"): (BATCH, None, "tensor"),  # logits
  ("act_expert_batch", "act_expert", None, "act_embed"): (("data", "fsdp"), "expert", None, None),  # expert buffers
  ("act_batch", None, None, "act_embed"): (BATCH, None, None, None),  # expert outputs back to the batch
}


def test_main_activations_are_placed_as_the_golden_table_says(text_file, monkeypatch):
  cfg = tiny_config(
    text=text_file,
    **MOE_ON_EVERY_AXIS,
    model__ffn_options__moe__dispatch="capacity",
  )
  run = Run(cfg)
  state, _ = run.init_state()
  seen = {}
  original = layers.constrain

  def recording(x, axes):
    seen[tuple(axes)] = tuple(nn.logical_to_mesh_axes(tuple(axes)))
    return original(x, axes)

  monkeypatch.setattr(layers, "constrain", recording)
  batch = run.data.train_batch(0)
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.RULES):
    jax.eval_shape(lambda p: run.model.apply({"params": p}, batch["inputs"], deterministic=True), state.params)
  assert seen == GOLDEN_ACTIVATION_SPECS
