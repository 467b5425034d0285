"""Sharded == unsharded: loss, gradients and updated parameters on 8 simulated CPU devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from helpers import one_run, tiny_config
from r1jax import sharding


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "corpus.txt"
  path.write_text("".join(chr(97 + (i * i + 3 * i) % 26) + (" " if i % 7 == 0 else "") for i in range(6000)))
  return str(path), one_run(str(path), {"data": 1, "devices": 1})[1]


@pytest.mark.parametrize("mesh", [
    {"data": 8, "fsdp": 1, "tensor": 1},
    {"data": 2, "fsdp": 2, "tensor": 2},
    {"data": 1, "fsdp": 2, "tensor": 4},
    {"data": 1, "fsdp": 1, "expert": 2, "tensor": 4},
])
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


@pytest.mark.parametrize("overrides", [
    # two mixers per model (one per layer), so that each compile covers two mechanisms
    {"model__mixer_pattern": ("sparse", "block_sparse"),
     "model__mixer_options": {"sparse": {"top_k": 5, "query_chunk": 8}, "block_sparse": {"block_size": 4,
                                                                                         "top_blocks": 1}}},
    {"model__mixer_pattern": ("sparse", "routed"),
     "model__mixer_options": {"sparse": {"select": "random", "top_k": 5}, "routed": {"capacity": 0.25, "window": 4}}},
    {"model__mixer_pattern": ("local", "fusion"), "model__mixer_options": {"local": {"window": 3},
                                                                           "fusion": {"beta": "token", "window": 5}}},
    {"model__mixer_pattern": ("fast_weight", "time_channel"),  # a delta-rule layer; the seed's time + channel form
     "model__mixer_options": {"fast_weight": {"gate": "scalar", "delta": True, "chunk": 4}}},
])
def test_other_mixers_sharded_equal_unsharded(unsharded, overrides):
  path = unsharded[0]
  _, (loss0, grads0, params0, _) = one_run(path, {"data": 1, "devices": 1}, **overrides)
  _, (loss, grads, params, _) = one_run(path, {"data": 2, "fsdp": 2, "tensor": 2}, **overrides)
  np.testing.assert_allclose(loss, loss0, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-5), (grads, params), (grads0, params0))


def test_batch_is_split_over_data_fsdp_expert():
  mesh = sharding.make_mesh(tiny_config(data__path="x", mesh__data=2, mesh__fsdp=2, mesh__expert=2).mesh)
  batch = sharding.put_batch({"inputs": np.arange(8 * 3).reshape(8, 3)}, mesh)["inputs"]
  assert batch.sharding.spec == P(("data", "fsdp", "expert"), None)
  assert {s.data.shape for s in batch.addressable_shards} == {(1, 3)}
  np.testing.assert_array_equal(np.asarray(batch), np.arange(24).reshape(8, 3))


def test_rules_table_has_no_duplicate_logical_names():
  names = [name for name, _ in sharding.RULES]
  assert len(names) == len(set(names))
