"""The dataset contract: a batch's arrays, held-out example sets, evaluation tiling, data files found by path or
shipped in the package, and `make_dataset`. Every dataset is registered by name (registry.register_dataset) with a
frozen options dataclass beside its code, one module each in this folder. Batches are pure functions of
(seed, step)."""

import dataclasses
import functools
import importlib.resources
import os
from typing import Callable, Iterator

import numpy as np

from r1jax import registry
from r1jax.config import TINY_SHAKESPEARE, DataConfig, require
from r1jax.errors import ConfigError

# A batch is a dict of numpy arrays (global, over all devices):
#   inputs  [B, T] int32  token ids (moving digits: [B, T, S, P] float32 patch pixels)
#   targets [B, N] int32  next-token targets (N = T for text; N = num_kv_pairs answers for MQAR; N = 1 for ListOps
#                         and for the clip label of moving digits)
#   weights [B, N] float32  1 where a target counts (0 for padding rows of the last eval batch)
#   target_pos [B, N] int32  (MQAR, ListOps, passkey) positions of `inputs` whose next-token prediction is scored
#   groups  [B, G] float32  (optional) one-hot group of each row (passkey: length x depth bin); evaluation then also
#                           reports accuracy per group, named by the dataset's `group_names`
# A dataset class is built as cls(cfg: DataConfig, seed) and has: arch ("lm" | "video", the model that reads it),
# vocab_size, tokens_per_example, train_batch(step), eval_batches(), phases (train steps where the batch shape
# changes, from 0), group_names, decode(ids).
Batch = dict[str, np.ndarray]

TRAIN, TEST, PERM, CURRICULUM = 0, 1, 2, 3  # independent RNG streams


def pad_rows(batch: Batch, rows: int) -> Batch:
  """Pads every array to `rows` rows; padded rows get weight 0."""
  n = batch["inputs"].shape[0]
  if n == rows:
    return batch
  return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


PACKAGE_PREFIX = "package:"  # a path package:<file> names a file shipped in r1jax/assets


def resolve_path(path: str, field: str = "data.options.text.path") -> str:
  """The file a `path` option names: package:<file> is looked up inside the installed r1jax package (any working
  directory), anything else is an ordinary path. Raises ConfigError naming `field` when there is no such file."""
  flag = field if field.startswith("--") else f"--config.{field}"
  if path.startswith(PACKAGE_PREFIX):
    assets = importlib.resources.files("r1jax") / "assets"
    found = assets / path[len(PACKAGE_PREFIX) :]
    if not found.is_file():
      shipped = sorted(PACKAGE_PREFIX + f.name for f in assets.iterdir() if f.name.endswith(".txt"))
      raise ConfigError(
        f"{field}: {path!r} is not shipped with r1jax (shipped: {shipped}). Fix: use one of "
        f"those, or pass a file's path: {flag}=/path/to/file.txt."
      )
    return str(found)
  if not os.path.isfile(path):
    raise ConfigError(
      f"{field}: text file {path!r} does not exist (cwd {os.getcwd()!r}). Fix: pass "
      f"{flag}=/path/to/file.txt, or {TINY_SHAKESPEARE} (the shipped default)."
    )
  return path


def tiled_batches(read: Callable[[int, int], np.ndarray], length: int, cfg: DataConfig) -> Iterator[Batch]:
  """Evaluation batches tiling `length` tokens (`read(start, stop)`) with non-overlapping windows of seq_len + 1
  (all of them, or the first cfg.eval_max_batches batches), the last batch padded with zero-weight rows."""
  T = cfg.seq_len
  rows = cfg.eval_batch_size or cfg.batch_size
  starts = np.arange((length - 1) // T) * T
  if cfg.eval_max_batches:
    starts = starts[: cfg.eval_max_batches * rows]
  for i in range(0, len(starts), rows):
    windows = np.stack([read(s, s + T + 1) for s in starts[i : i + rows]])
    yield pad_rows(
      {"inputs": windows[:, :-1], "targets": windows[:, 1:], "weights": np.ones((len(windows), T), np.float32)}, rows
    )


@dataclasses.dataclass(frozen=True)
class HeldOutData:
  """Examples that are pure functions of (seed, split, index): fresh (or a fixed set of num_train_examples)
  training examples and a held-out test set of num_test_examples. Subclasses build rows in `_examples`."""

  cfg: DataConfig
  seed: int
  arch = "lm"
  phases = (0,)
  group_names = ()

  @property
  def tokens_per_example(self) -> int:
    return self.cfg.seq_len

  def _examples(self, split: int, indices) -> Batch:
    raise NotImplementedError

  def train_batch(self, step: int) -> Batch:
    B, N = self.cfg.batch_size, self.cfg.opts.num_train_examples
    rows = np.arange(step * B, (step + 1) * B)
    if N:  # a fixed training set of N examples, reshuffled every epoch
      epochs = rows // N
      perms = {int(e): np.random.default_rng([self.seed, PERM, int(e)]).permutation(N) for e in np.unique(epochs)}
      rows = np.array([perms[int(e)][r % N] for e, r in zip(epochs, rows)])
    return self._examples(TRAIN, rows)

  def eval_batches(self) -> Iterator[Batch]:
    rows = self.cfg.eval_batch_size or self.cfg.batch_size
    n = self.cfg.opts.num_test_examples
    if self.cfg.eval_max_batches:
      n = min(n, self.cfg.eval_max_batches * rows)
    yield from _test_batches(self, rows, n)


@dataclasses.dataclass(frozen=True)
class ScoredData(HeldOutData):
  """Token sequences scored at given positions (MQAR answers, the ListOps '=', the passkey's digits): subclasses
  draw one example from an RNG in `example`, returning (inputs [T], target_pos [N], targets [N])."""

  def example(self, rng: np.random.Generator, split: int = TRAIN) -> tuple[np.ndarray, ...]:
    """(inputs [T], target_pos [N], targets [N]), and the row's group index where the dataset has group_names."""
    raise NotImplementedError

  # A length curriculum (MQAR's, passkey's): the first `curriculum_steps` train steps draw rows of
  # `curriculum_seq_len` tokens from `curriculum()`, batch_size * seq_len / curriculum_seq_len of them (the same
  # tokens per step); evaluation is always at the run's own length. Datasets without those options have none.
  @property
  def curriculum_steps(self) -> int:
    return getattr(self.cfg.opts, "curriculum_steps", 0)

  @property
  def phases(self) -> tuple[int, ...]:
    return (0, self.curriculum_steps) if self.curriculum_steps else (0,)

  def curriculum(self) -> "ScoredData":
    """The dataset the curriculum's rows come from: this one at curriculum_seq_len (subclasses also ease the task)."""
    raise NotImplementedError

  @functools.cached_property
  def _short(self) -> "ScoredData":  # built once: a dataset may read its files when built (passkey's haystack)
    return self.curriculum()

  def short_config(self, **options) -> DataConfig:
    """This run's DataConfig at curriculum_seq_len, with as many tokens per step, the dataset's options replaced by
    `options` (the curriculum itself turned off)."""
    o, L = self.cfg.opts, self.cfg.opts.curriculum_seq_len
    opts = dataclasses.replace(o, curriculum_steps=0, **options)
    rows = self.cfg.batch_size * self.cfg.seq_len // L
    return dataclasses.replace(self.cfg, seq_len=L, batch_size=rows, options={self.cfg.kind: opts})

  def train_batch(self, step: int) -> Batch:
    if step < self.curriculum_steps:
      rows = self._short.cfg.batch_size  # short_config's rows: as many tokens per step
      return self._short._examples(CURRICULUM, range(step * rows, (step + 1) * rows))
    return super().train_batch(step)

  def _examples(self, split: int, indices) -> Batch:
    rows = [self.example(np.random.default_rng([self.seed, split, int(i)]), split) for i in indices]
    inputs, pos, targets, *group = (np.stack(a) for a in zip(*rows))
    batch = {"inputs": inputs, "targets": targets, "target_pos": pos, "weights": np.ones(pos.shape, np.float32)}
    if group:
      batch["groups"] = np.eye(len(self.group_names), dtype=np.float32)[group[0]]
    return batch


@functools.lru_cache(maxsize=8)
def _test_batches(data: HeldOutData, rows: int, n: int) -> tuple[Batch, ...]:
  """The held-out batches, drawn once per (config, seed) in a process: a ListOps example costs ~1 ms to draw, and an
  ablation evaluates every variant of a seed on the same test set."""
  return tuple(pad_rows(data._examples(TEST, range(i, min(i + rows, n))), rows) for i in range(0, n, rows))


def check_curriculum(cfg, shortest: int, hint: str) -> None:
  """The length curriculum's constraints (cfg: the whole Config; `shortest`: the dataset's least curriculum_seq_len,
  `hint` a value to suggest): shorter than seq_len, splitting a step's tokens into whole rows, ending before the
  run ends, fresh rows."""
  d = cfg.data
  o, field = d.opts, f"data.options.{d.kind}"
  if not o.curriculum_steps:
    return
  L = o.curriculum_seq_len
  require(o.curriculum_steps > 0, f"{field}.curriculum_steps", "must be >= 0", "use 0 (off) or a step count")
  require(
    o.num_train_examples == 0,
    f"{field}.curriculum_steps",
    "a curriculum draws fresh short sequences; it cannot use a fixed training set",
    "set num_train_examples=0 or curriculum_steps=0",
  )
  require(
    shortest <= L < d.seq_len,
    f"{field}.curriculum_seq_len",
    f"the curriculum needs {shortest} <= curriculum_seq_len < seq_len={d.seq_len}, got {L}",
    f"e.g. curriculum_seq_len={hint}",
  )
  require(
    (d.batch_size * d.seq_len) % L == 0,
    f"{field}.curriculum_seq_len",
    f"batch_size * seq_len = {d.batch_size * d.seq_len} tokens do not split into rows of {L}",
    "use a curriculum_seq_len dividing data.batch_size * data.seq_len",
  )
  require(
    o.curriculum_steps < cfg.train.steps,
    f"{field}.curriculum_steps",
    f"{o.curriculum_steps} must be fewer than train.steps={cfg.train.steps} (the run must end at the evaluated length)",
    "lower curriculum_steps or raise train.steps",
  )


def held_out_sizes(opts) -> None:
  """Checks the num_train_examples / num_test_examples options every held-out dataset has."""
  require(
    opts.num_test_examples >= 1 and opts.num_train_examples >= 0,
    "num_test_examples",
    f"must be >= 1 (num_train_examples >= 0), got {opts.num_test_examples}",
    "use e.g. 1000",
  )


def make_dataset(cfg: DataConfig, seed: int):
  """Builds the dataset named by `cfg.kind` (registry.DATASETS); raises ConfigError (before any compilation) on bad
  input, such as a missing file."""
  return registry.lookup(registry.DATASETS, cfg.kind, "data.kind").module(cfg, seed)
