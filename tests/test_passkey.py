"""Passkey retrieval (r1jax/data/passkey.py) and the dataset registry's contract, parametrised over every dataset."""

import dataclasses

import numpy as np
import pytest

from r1jax import registry
from r1jax.config import DataConfig
from r1jax.data.core import make_dataset
from r1jax.data.passkey import NEEDLE, QUESTION, Passkey
from r1jax.errors import ConfigError
from tests.helpers import tiny_config

from conftest import SHAKESPEARE

PASSKEY = DataConfig(
  kind="passkey",
  seq_len=256,
  batch_size=6,
  eval_batch_size=7,
  options={"passkey": dict(length_fractions=(0.5, 1.0), depth_bins=4, num_test_examples=20)},
)


def test_passkey_hides_the_key_at_its_depth_and_asks_for_it_at_the_end():
  data = Passkey(PASSKEY, 0)
  batch = data.train_batch(3)
  assert batch["inputs"].shape == (6, 256) and batch["targets"].shape == batch["target_pos"].shape == (6, 5)
  assert batch["groups"].shape == (6, len(data.group_names)) == (6, 8)
  np.testing.assert_array_equal(batch["groups"].sum(1), 1)
  for inputs, pos, targets, group in zip(batch["inputs"], batch["target_pos"], batch["targets"], batch["groups"]):
    text = data.decode(inputs)
    key = data.decode(targets)
    assert key.isdigit() and len(key) == 5
    np.testing.assert_array_equal(pos, np.arange(251, 256))  # each digit predicted from the token before it
    assert text.endswith(QUESTION + key[:4])  # the question, then the first 4 digits as inputs
    needle = NEEDLE.format(key=key)
    assert text.count(needle) == 1
    length = 128 if np.argmax(group) < 4 else 256
    content = text[256 - length :]
    assert set(text[: 256 - length]) <= {"\n"}  # padded on the left to the drawn length
    hay = length + 1 - len(needle) - len(QUESTION) - 5
    depth = content.index(needle) / hay
    assert int(depth * 4) == np.argmax(group) % 4 or (depth * 4 >= 3.999 and np.argmax(group) % 4 == 3)


def test_passkey_is_deterministic_and_tests_on_the_validation_text():
  a, b = Passkey(PASSKEY, 0), Passkey(PASSKEY, 1)
  np.testing.assert_array_equal(a.train_batch(2)["inputs"], Passkey(PASSKEY, 0).train_batch(2)["inputs"])
  assert not np.array_equal(a.train_batch(2)["inputs"], b.train_batch(2)["inputs"])
  test = np.concatenate([x["inputs"] for x in a.eval_batches()])
  val = a.decode(a.val_ids)
  for row in test[:5]:
    words = a.decode(row).lstrip("\n")[:30]
    assert words in val or NEEDLE[:10] in words  # haystack from the held-out split (or the needle right away)
  assert sum(x["weights"].sum() for x in a.eval_batches()) == 20 * 5


def test_passkey_curriculum_draws_whole_short_contexts_first_with_as_many_tokens():
  opts = dataclasses.replace(PASSKEY.opts, curriculum_steps=2, curriculum_seq_len=128)
  data = Passkey(dataclasses.replace(PASSKEY, options={"passkey": opts}), 0)
  assert data.phases == (0, 2) and Passkey(PASSKEY, 0).phases == (0,)
  for step in (0, 1):
    short = data.train_batch(step)
    assert short["inputs"].shape == (12, 128) and short["target_pos"].shape == (12, 5)  # 6 x 256 = 12 x 128 tokens
    for inputs, pos, targets in zip(short["inputs"], short["target_pos"], short["targets"]):
      text, key = data.decode(inputs), data.decode(targets)
      np.testing.assert_array_equal(pos, np.arange(123, 128))
      assert text.endswith(QUESTION + key[:4]) and NEEDLE.format(key=key) in text and text[0] != "\n"  # no padding
  assert not np.array_equal(data.train_batch(0)["inputs"], data.train_batch(1)["inputs"])
  np.testing.assert_array_equal(data.train_batch(2)["inputs"], Passkey(PASSKEY, 0).train_batch(2)["inputs"])
  assert next(iter(data.eval_batches()))["inputs"].shape == (7, 256)  # the test set is at the run's own length
  with pytest.raises(ConfigError, match=r"data\.options\.passkey\.curriculum_seq_len: the curriculum needs 119 <="):
    tiny_config(
      data__kind="passkey",
      data__seq_len=256,
      data__options__passkey__length_fractions=(0.5, 1.0),
      data__options__passkey__curriculum_steps=2,
      data__options__passkey__curriculum_seq_len=64,
    )


def test_passkey_shortest_context_must_hold_needle_and_question():
  with pytest.raises(ConfigError, match=r"data\.options\.passkey\.length_fractions: the shortest context, 64"):
    tiny_config(data__kind="passkey", data__seq_len=256)


def small_data_config(name: str, folder: str) -> DataConfig:
  """A dataset's defaults at a length every registered dataset accepts, with a small test set; a dataset that reads
  a prepared corpus (options.path, no default) gets Tiny Shakespeare prepared into `folder` (byte level)."""
  options = registry.DATASETS[name].options()
  sizes = {"num_test_examples": 6} if hasattr(options, "num_test_examples") else {}
  if hasattr(options, "path") and not options.path:
    from r1jax.data import prepare

    prepare.prepare(prepare.PrepareOptions(inputs=(SHAKESPEARE,), tokenizer="byte", out=folder, docs="paragraph"))
    sizes = {"path": folder}
  return DataConfig(
    kind=name, seq_len=512, batch_size=3, eval_batch_size=4, options={name: dataclasses.replace(options, **sizes)}
  )


@pytest.mark.parametrize("name", sorted(registry.DATASETS) or ["text"])
def test_every_registered_dataset_keeps_the_batch_contract(name, tmp_path):
  registry.load_builtins()
  cfg = small_data_config(name, str(tmp_path / "prepared"))
  data = make_dataset(cfg, 0)
  assert data.arch in ("lm", "video") and data.phases[0] == 0
  batch, again = data.train_batch(1), make_dataset(cfg, 0).train_batch(1)
  for k in batch:
    np.testing.assert_array_equal(batch[k], again[k])  # a pure function of (seed, step)
  n = batch["targets"].shape[1]
  assert batch["inputs"].shape[0] == batch["targets"].shape[0] == 3 and batch["weights"].shape == (3, n)
  assert batch["targets"].dtype == np.int32 and 0 <= batch["targets"].min() and batch["targets"].max() < data.vocab_size
  if data.arch == "lm":
    assert batch["inputs"].dtype == np.int32 and batch["inputs"].shape[1] == data.tokens_per_example
    assert 0 <= batch["inputs"].min() and batch["inputs"].max() < data.vocab_size
  if "target_pos" in batch:
    assert batch["target_pos"].shape == (3, n) and batch["target_pos"].max() < batch["inputs"].shape[1]
  assert ("groups" in batch) == bool(data.group_names)
  evals = list(data.eval_batches())
  assert evals and all(e["inputs"].shape[0] == 4 for e in evals)
  assert len(registry.DATASETS) >= 5


def test_group_accuracy_is_reported_per_group_and_averages_to_the_total():
  from r1jax.train import Run

  cfg = tiny_config(
    data__kind="passkey",
    data__seq_len=256,
    data__eval_batch_size=8,
    data__eval_max_batches=0,
    data__options__passkey__length_fractions=(0.5, 1.0),
    data__options__passkey__num_test_examples=24,
  )
  run = Run(cfg)
  state, _ = run.init_state()
  metrics = run.evaluate(state)
  groups = {k: v for k, v in metrics.items() if k.startswith("eval/accuracy/")}
  assert list(groups) == [f"eval/accuracy/{g}" for g in run.data.group_names] and len(groups) == 10
  counts = np.zeros(10)
  for batch in run.data.eval_batches():
    counts += batch["groups"].T @ batch["weights"].sum(1)
  total = sum(counts[i] * v for i, v in enumerate(groups.values())) / counts.sum()
  assert abs(total - metrics["eval/accuracy"]) < 1e-6


def test_group_accuracy_averages_seeds_per_variant_and_the_depth_figure_has_a_panel_per_length():
  from r1jax.lab import reporting

  runs = {
    "dense/seed0": {
      "eval/accuracy": 0.9,
      "eval/accuracy/len128/depth0.0-0.5": 1.0,
      "eval/accuracy/len128/depth0.5-1.0": 0.8,
      "eval/accuracy/len256/depth0.0-0.5": 0.6,
      "eval/accuracy/len256/depth0.5-1.0": 0.4,
    },
    "dense/seed1": {
      "eval/accuracy/len128/depth0.0-0.5": 0.5,
      "eval/accuracy/len128/depth0.5-1.0": 0.6,
      "eval/accuracy/len256/depth0.0-0.5": 0.2,
      "eval/accuracy/len256/depth0.5-1.0": 0.0,
    },
    "window/seed0": {"failed": "stopped"},
  }
  acc = reporting.group_accuracy({"runs": runs})
  assert acc == {
    "dense": {
      "len128/depth0.0-0.5": 0.75,
      "len128/depth0.5-1.0": 0.7,
      "len256/depth0.0-0.5": 0.4,
      "len256/depth0.5-1.0": 0.2,
    }
  }
  fig = reporting.depth_figure(acc)
  assert [ax.get_title() for ax in fig.axes] == [
    "passkey, context of 128 characters",
    "passkey, context of 256 characters",
  ]
  np.testing.assert_allclose(fig.axes[1].lines[0].get_data(), [[0.25, 0.75], [0.4, 0.2]])
