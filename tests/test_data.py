"""MQAR (Zoology's definition), ListOps (LRA) and character-level text: determinism, structure, splits."""

import hashlib
import os

import numpy as np
import pytest

from r1jax.config import DataConfig
from r1jax.data import listops
from r1jax.data.core import resolve_path
from r1jax.data.listops import ListOps
from r1jax.data.mqar import MQAR as MQARData
from r1jax.data.mqar import mqar_example
from r1jax.data.text import TextData
from r1jax.errors import ConfigError


def mqar_config(**options) -> DataConfig:
  return DataConfig(
    kind="mqar",
    seq_len=64,
    batch_size=4,
    eval_batch_size=5,
    options={"mqar": dict(num_kv_pairs=8, vocab_size=512, num_test_examples=12, **options)},
  )


MQAR = mqar_config()


def test_mqar_example_structure():
  rng = np.random.default_rng(0)
  V, T, N = 512, 64, 8
  inputs, pos, targets = mqar_example(rng, T, V, N, 0.01)
  keys, values = inputs[0 : 2 * N : 2], inputs[1 : 2 * N : 2]
  assert inputs.shape == (T,) and pos.shape == targets.shape == (N,)
  assert np.all((keys >= 1) & (keys < V // 2)) and np.all((values >= V // 2) & (values < V))
  assert len(set(keys)) == N and len(set(values)) == N
  assert np.all(np.diff(pos) > 0) and pos.min() >= 2 * N and pos.max() < T
  answer = dict(zip(keys, values))
  for p, t in zip(pos, targets):  # the query at p is a key; its target is that key's value
    assert t == answer[inputs[p]]


def test_mqar_draws_what_the_plain_definition_draws():
  """The same sequences (and generator state after) as the definition written plainly: keys and values chosen from
  their ranges, gaps by the normalised power law (committed results depend on every draw)."""

  def plain(rng, T, V, N, a, random_non_queries, min_gap):
    keys = rng.choice(np.arange(1, V // 2), size=N, replace=False)
    values = rng.choice(np.arange(V // 2, V), size=N, replace=False)
    space = (T - 2 * N) // 2
    skip = int(min_gap * space)
    p = a * np.arange(1, space - skip + 1) ** (a - 1)
    gaps = skip + rng.choice(space - skip, size=N, replace=False, p=p / p.sum())
    inputs = rng.integers(0, V, size=T) if random_non_queries else np.zeros(T, np.int64)
    inputs[0 : 2 * N : 2], inputs[1 : 2 * N : 2] = keys, values
    pos = 2 * N + 2 * gaps
    inputs[pos] = keys
    return inputs, np.sort(pos), values[np.argsort(pos)]

  for i, args in enumerate(
    [(256, 128, 8, 0.01, False, 0.5), (64, 513, 8, 0.01, True, 0.0), (128, 64, 4, 0.1, False, 0.3)] * 5
  ):
    ours, ref = np.random.default_rng([i, 0]), np.random.default_rng([i, 0])
    for a, b in zip(mqar_example(ours, *args), plain(ref, *args)):
      np.testing.assert_array_equal(a, b)
    assert ours.integers(1 << 30) == ref.integers(1 << 30)


def test_mqar_min_gap_puts_every_query_far_from_the_pairs_and_the_curriculum_keeps_zoology_gaps():
  T, N = 256, 8
  space = (T - 2 * N) // 2
  for seed in range(20):
    inputs, pos, targets = mqar_example(np.random.default_rng(seed), T, 512, N, 0.01, min_gap=0.5)
    assert pos.min() >= 2 * N + 2 * (space // 2) and pos.max() < T
    answer = dict(zip(inputs[0 : 2 * N : 2], inputs[1 : 2 * N : 2]))
    assert [answer[inputs[p]] for p in pos] == list(targets)
  near = [mqar_example(np.random.default_rng(s), T, 512, N, 0.01)[1].min() for s in range(20)]
  assert min(near) < 2 * N + space  # Zoology's power law puts most queries right after the pairs
  data = MQARData(mqar_config(min_gap=0.5, curriculum_steps=1, curriculum_seq_len=16, curriculum_kv_pairs=2), 0)
  short = data.train_batch(0)  # 16 tokens, 2 pairs: gaps from the whole (tiny) range, min_gap not applied
  assert short["inputs"].shape[1] == 16 and data.train_batch(1)["target_pos"].min() >= 16 + 2 * 12


def test_mqar_is_deterministic_per_seed_and_splits_are_disjoint():
  a, b, c = MQARData(MQAR, 0), MQARData(MQAR, 0), MQARData(MQAR, 1)
  for k in a.train_batch(3):
    np.testing.assert_array_equal(a.train_batch(3)[k], b.train_batch(3)[k])
  assert not np.array_equal(a.train_batch(3)["inputs"], c.train_batch(3)["inputs"])
  assert not np.array_equal(a.train_batch(3)["inputs"], a.train_batch(4)["inputs"])
  train = {tuple(r) for s in range(5) for r in a.train_batch(s)["inputs"]}
  test = [r for batch in a.eval_batches() for r in batch["inputs"]]
  assert not train & {tuple(r) for r in test}


def test_mqar_curriculum_draws_short_sequences_first_with_as_many_tokens():
  cfg = mqar_config(curriculum_steps=2, curriculum_seq_len=16, curriculum_kv_pairs=2)
  data = MQARData(cfg, 0)
  assert data.phases == (0, 2) and MQARData(MQAR, 0).phases == (0,)
  for step in (0, 1):
    short = data.train_batch(step)
    assert short["inputs"].shape == (16, 16) and short["target_pos"].shape == (16, 2)  # 4 x 64 = 16 x 16 tokens
    for inputs, pos, targets in zip(short["inputs"], short["target_pos"], short["targets"]):
      answer = dict(zip(inputs[0:4:2], inputs[1:4:2]))  # each query's target is its key's value
      assert [answer[inputs[p]] for p in pos] == list(targets)
  assert not np.array_equal(data.train_batch(0)["inputs"], data.train_batch(1)["inputs"])
  np.testing.assert_array_equal(data.train_batch(1)["inputs"], MQARData(cfg, 0).train_batch(1)["inputs"])
  np.testing.assert_array_equal(data.train_batch(2)["inputs"], MQARData(MQAR, 0).train_batch(2)["inputs"])
  assert next(iter(data.eval_batches()))["inputs"].shape == (5, 64)  # the test set is at the run's own length


def test_mqar_eval_pads_last_batch_with_zero_weight():
  batches = list(MQARData(MQAR, 0).eval_batches())
  assert [b["inputs"].shape[0] for b in batches] == [5, 5, 5]
  assert sum(b["weights"].sum() for b in batches) == 12 * 8
  assert batches[-1]["weights"][2:].sum() == 0


def test_mqar_fixed_train_set_cycles_in_epochs():
  data = MQARData(mqar_config(num_train_examples=8), 0)
  epoch0 = {tuple(r) for s in (0, 1) for r in data.train_batch(s)["inputs"]}
  epoch1 = {tuple(r) for s in (2, 3) for r in data.train_batch(s)["inputs"]}
  assert len(epoch0) == 8 and epoch0 == epoch1
  assert not np.array_equal(data.train_batch(0)["inputs"], data.train_batch(2)["inputs"])  # reshuffled


LISTOPS = DataConfig(
  kind="listops",
  seq_len=64,
  batch_size=16,
  eval_batch_size=16,
  options={"listops": {"min_len": 16, "num_test_examples": 32}},
)


def test_listops_labels_equal_a_stack_machine_and_lengths_are_in_range():
  """The recursive generator's value against an independent stack evaluation of the emitted tokens."""
  data = ListOps(LISTOPS, 0)
  batch = data.train_batch(0)
  assert data.vocab_size == listops.VOCAB_SIZE == 17
  for inputs, pos, target in zip(batch["inputs"], batch["target_pos"][:, 0], batch["targets"][:, 0]):
    assert 16 <= pos <= 63 and inputs[pos] == listops.QUERY and np.all(inputs[pos + 1 :] == listops.PAD)
    ops = (inputs[:pos] >= listops.OP0) & (inputs[:pos] < listops.CLOSE)
    assert np.all(inputs[:pos] != listops.PAD) and ops[0] and ops.sum() == (inputs[:pos] == listops.CLOSE).sum()
    assert target == listops.DIGIT0 + listops.evaluate(inputs)
  assert data.decode([11, 1, 10, 15, 16]) == "[MIN 0 9 ] ="


@pytest.mark.parametrize(
  "op,values,expected",
  [(0, [3, 1, 2], 1), (1, [3, 1, 2], 3), (2, [4, 1, 2, 9], 3), (2, [5, 1, 9], 5), (3, [9, 8, 7], 4)],
)
def test_listops_operators(op, values, expected):
  assert listops.apply(op, values) == expected


def test_listops_is_deterministic_per_seed_and_splits_are_disjoint():
  a, b, c = ListOps(LISTOPS, 0), ListOps(LISTOPS, 0), ListOps(LISTOPS, 1)
  np.testing.assert_array_equal(a.train_batch(2)["inputs"], b.train_batch(2)["inputs"])
  assert not np.array_equal(a.train_batch(2)["inputs"], c.train_batch(2)["inputs"])
  train = {tuple(r) for s in range(4) for r in a.train_batch(s)["inputs"]}
  assert not train & {tuple(r) for batch in a.eval_batches() for r in batch["inputs"]}


def test_text_split_batches_and_eval_tiling(text_file):
  cfg = DataConfig(kind="text", options={"text": {"path": text_file}}, seq_len=16, batch_size=3, eval_batch_size=4)
  data = TextData(cfg, 0)
  text = open(text_file).read()
  assert data.vocab_size == len(set(text))
  assert (
    len(data.train_ids) == int(len(text) * 0.9) and data.decode(data.val_ids[:20]) == text[len(data.train_ids) :][:20]
  )
  batch = data.train_batch(5)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  np.testing.assert_array_equal(batch["inputs"], TextData(cfg, 0).train_batch(5)["inputs"])
  scored = sum(b["weights"].sum() for b in data.eval_batches())
  assert scored == (len(data.val_ids) - 1) // 16 * 16  # every window of the val split, once


def test_tiny_shakespeare_ships_in_the_package_and_is_the_default_from_any_directory(tmp_path, monkeypatch):
  path = resolve_path(DataConfig().opts.path)
  assert DataConfig().opts.path == "package:tinyshakespeare.txt" and os.path.isfile(path)
  assert hashlib.md5(open(path, "rb").read()).hexdigest() == "6fb458f1232090904fb40fe944165e91"  # char-rnn's file
  monkeypatch.chdir(tmp_path)  # no checkout, no ../shared here
  data = TextData(DataConfig(), 0)
  assert data.vocab_size == 65
  assert len(data.train_ids) == 1003854 and len(data.val_ids) == 111540  # nanoGPT's split of the same file
  with pytest.raises(ConfigError, match=r"data.options.text.path: 'package:nope.txt' is not shipped.*package:tiny"):
    resolve_path("package:nope.txt")


def test_missing_or_short_text_file(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    TextData(DataConfig(kind="text", options={"text": {"path": str(tmp_path / "x.txt")}}), 0)
  short = tmp_path / "short.txt"
  short.write_text("abc")
  with pytest.raises(ConfigError, match="too few"):
    TextData(DataConfig(kind="text", options={"text": {"path": str(short)}}), 0)


@pytest.mark.parametrize("random_fill", [False, True])
def test_mqar_filler_tokens(random_fill):
  inputs, pos, _ = mqar_example(np.random.default_rng(3), 128, 512, 8, 0.01, random_non_queries=random_fill)
  filler = np.ones(128, bool)
  filler[:16] = False
  filler[pos] = False
  assert (inputs[filler] == 0).all() != random_fill


def test_no_training_window_reads_validation_text(tmp_path):
  path = tmp_path / "split.txt"
  path.write_text("ab" * 4500 + "xy" * 500)  # the last 10% (the validation split) uses letters of its own
  data = TextData(DataConfig(kind="text", options={"text": {"path": str(path)}}, seq_len=16, batch_size=8), 0)
  val_ids = {data.chars.index("x"), data.chars.index("y")}
  assert set(np.unique(data.val_ids)) == val_ids
  for step in range(200):
    batch = data.train_batch(step)
    assert not val_ids & set(np.unique(batch["inputs"])) and not val_ids & set(np.unique(batch["targets"]))
