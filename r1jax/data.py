"""Datasets: MQAR (Zoology's multi-query associative recall), ListOps, character-level text and moving-digit clips;
batches are pure functions of (seed, step)."""

import dataclasses
import functools
import importlib.resources
import os
from typing import Iterator

import numpy as np

from r1jax import listops, moving_digits
from r1jax.config import TINY_SHAKESPEARE, DataConfig
from r1jax.registry import ConfigError

# A batch is a dict of numpy arrays (global, over all devices):
#   inputs  [B, T] int32  token ids (moving digits: [B, T, S, P] float32 patch pixels)
#   targets [B, N] int32  next-token targets (N = T for text; N = num_kv_pairs answers for MQAR; N = 1 for ListOps
#                         and for the clip label of moving digits)
#   weights [B, N] float32  1 where a target counts (0 for padding rows of the last eval batch)
#   target_pos [B, N] int32  (MQAR, ListOps) positions of `inputs` whose next-token prediction is scored
Batch = dict[str, np.ndarray]

_TRAIN, _TEST, _PERM, _CURRICULUM = 0, 1, 2, 3  # independent RNG streams


def _pad_rows(batch: Batch, rows: int) -> Batch:
  """Pads every array to `rows` rows; padded rows get weight 0."""
  n = batch["inputs"].shape[0]
  if n == rows:
    return batch
  return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


PACKAGE_PREFIX = "package:"  # data.path=package:<file> names a file shipped in r1jax/assets


def resolve_path(path: str) -> str:
  """The file `data.path` names: package:<file> is looked up inside the installed r1jax package (any working
  directory), anything else is an ordinary path. Raises ConfigError when there is no such file."""
  if path.startswith(PACKAGE_PREFIX):
    assets = importlib.resources.files("r1jax") / "assets"
    found = assets / path[len(PACKAGE_PREFIX):]
    if not found.is_file():
      shipped = sorted(PACKAGE_PREFIX + f.name for f in assets.iterdir() if f.name.endswith(".txt"))
      raise ConfigError(f"data.path: {path!r} is not shipped with r1jax (shipped: {shipped}). Fix: use one of "
                        "those, or pass a file's path: --config.data.path=/path/to/file.txt.")
    return str(found)
  if not os.path.isfile(path):
    raise ConfigError(f"data.path: text file {path!r} does not exist (cwd {os.getcwd()!r}). Fix: pass "
                      f"--config.data.path=/path/to/file.txt, or {TINY_SHAKESPEARE} (the shipped default).")
  return path


@dataclasses.dataclass
class TextData:
  """Character-level text, 90/10 train/val split of the file (nanoGPT's shakespeare_char).

  Training windows are drawn uniformly at random per step from the train split; evaluation tiles the whole
  validation split with non-overlapping windows, so `eval/loss` is the exact mean over the split (nanoGPT
  estimates it from random windows instead).
  """

  cfg: DataConfig
  seed: int

  def __post_init__(self):
    path = self.cfg.path
    with open(resolve_path(path), encoding="utf-8") as f:
      text = f.read()
    self.chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(self.chars)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))
    split = int(len(ids) * (1.0 - self.cfg.val_fraction))
    self.train_ids, self.val_ids = ids[:split], ids[split:]
    need = self.cfg.seq_len + 1
    if len(self.train_ids) < need or len(self.val_ids) < need:
      raise ConfigError(f"data.path: {path!r} has {len(ids)} characters, too few for data.seq_len="
                        f"{self.cfg.seq_len} in both splits. Fix: lower data.seq_len or use a longer file.")
    self.vocab_size = len(self.chars)

  @property
  def tokens_per_example(self) -> int:
    return self.cfg.seq_len

  def decode(self, ids) -> str:
    return "".join(self.chars[i] for i in ids)

  def train_batch(self, step: int) -> Batch:
    rng = np.random.default_rng([self.seed, _TRAIN, step])
    T = self.cfg.seq_len
    starts = rng.integers(0, len(self.train_ids) - T, size=self.cfg.batch_size)
    windows = np.stack([self.train_ids[s:s + T + 1] for s in starts])
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:], "weights": np.ones((len(starts), T), np.float32)}

  def eval_batches(self) -> Iterator[Batch]:
    T = self.cfg.seq_len
    rows = self.cfg.eval_batch_size or self.cfg.batch_size
    n_windows = (len(self.val_ids) - 1) // T
    starts = np.arange(n_windows) * T
    if self.cfg.eval_max_batches:
      starts = starts[: self.cfg.eval_max_batches * rows]
    for i in range(0, len(starts), rows):
      windows = np.stack([self.val_ids[s:s + T + 1] for s in starts[i:i + rows]])
      yield _pad_rows({"inputs": windows[:, :-1], "targets": windows[:, 1:],
                       "weights": np.ones((len(windows), T), np.float32)}, rows)


def mqar_example(rng: np.random.Generator, seq_len: int, vocab: int, num_pairs: int, power_a: float,
                 random_non_queries: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One MQAR sequence as in Zoology (Arora et al. 2023, `multiquery_ar`).

  The sequence starts with `num_pairs` key-value pairs (keys from [1, V/2), values from [V/2, V), all distinct),
  then each key appears once more as a query at a power-law distributed gap; the model must predict the key's
  value right after the query. Remaining positions are token 0, or random tokens with `random_non_queries`.

  Returns:
    inputs [T], target_pos [num_pairs] (query positions, sorted), targets [num_pairs] (the values).
  """
  keys = rng.choice(np.arange(1, vocab // 2), size=num_pairs, replace=False)
  values = rng.choice(np.arange(vocab // 2, vocab), size=num_pairs, replace=False)
  ctx = 2 * num_pairs
  space = (seq_len - ctx) // 2
  p = power_a * np.arange(1, space + 1) ** (power_a - 1)
  gaps = rng.choice(space, size=num_pairs, replace=False, p=p / p.sum())
  inputs = rng.integers(0, vocab, size=seq_len) if random_non_queries else np.zeros(seq_len, np.int64)
  inputs[0:ctx:2], inputs[1:ctx:2] = keys, values
  pos = ctx + 2 * gaps
  inputs[pos] = keys
  order = np.argsort(pos)
  return inputs.astype(np.int32), pos[order].astype(np.int32), values[order].astype(np.int32)


@dataclasses.dataclass(frozen=True)
class HeldOutData:
  """Examples that are pure functions of (seed, split, index): fresh (or a fixed set of num_train_examples)
  training examples and a held-out test set of num_test_examples. Subclasses build rows in `_examples`."""

  cfg: DataConfig
  seed: int

  @property
  def tokens_per_example(self) -> int:
    return self.cfg.seq_len

  def _examples(self, split: int, indices) -> Batch:
    raise NotImplementedError

  def train_batch(self, step: int) -> Batch:
    B, N = self.cfg.batch_size, self.cfg.num_train_examples
    rows = np.arange(step * B, (step + 1) * B)
    if N:  # a fixed training set of N examples, reshuffled every epoch
      epochs = rows // N
      perms = {int(e): np.random.default_rng([self.seed, _PERM, int(e)]).permutation(N) for e in np.unique(epochs)}
      rows = np.array([perms[int(e)][r % N] for e, r in zip(epochs, rows)])
    return self._examples(_TRAIN, rows)

  def eval_batches(self) -> Iterator[Batch]:
    rows = self.cfg.eval_batch_size or self.cfg.batch_size
    n = self.cfg.num_test_examples
    if self.cfg.eval_max_batches:
      n = min(n, self.cfg.eval_max_batches * rows)
    yield from _test_batches(self, rows, n)


@dataclasses.dataclass(frozen=True)
class ScoredData(HeldOutData):
  """Sequences scored at given positions (MQAR answers, the ListOps '='), deterministic per seed."""

  @property
  def vocab_size(self) -> int:
    return self.cfg.mqar_vocab_size if self.cfg.kind == "mqar" else listops.VOCAB_SIZE

  def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = self.cfg
    if c.kind == "mqar":
      return mqar_example(rng, c.seq_len, c.mqar_vocab_size, c.num_kv_pairs, c.power_a, c.random_non_queries)
    return listops.listops_example(rng, c.seq_len, c.listops_min_len, c.listops_max_depth, c.listops_max_args)

  def decode(self, ids) -> str:
    return listops.decode(ids) if self.cfg.kind == "listops" else " ".join(map(str, ids))

  def train_batch(self, step: int) -> Batch:
    c = self.cfg
    if step < c.curriculum_steps:  # MQAR length curriculum: shorter sequences, as many tokens per step
      short = dataclasses.replace(c, seq_len=c.curriculum_seq_len, num_kv_pairs=c.curriculum_kv_pairs,
                                  batch_size=c.batch_size * c.seq_len // c.curriculum_seq_len, curriculum_steps=0)
      return ScoredData(short, self.seed)._examples(_CURRICULUM, range(step * short.batch_size,
                                                                       (step + 1) * short.batch_size))
    return super().train_batch(step)

  def _examples(self, split: int, indices) -> Batch:
    rows = [self.example(np.random.default_rng([self.seed, split, int(i)])) for i in indices]
    inputs, pos, targets = (np.stack(a) for a in zip(*rows))
    return {"inputs": inputs, "targets": targets, "target_pos": pos, "weights": np.ones(pos.shape, np.float32)}


@functools.lru_cache(maxsize=8)
def _test_batches(data: HeldOutData, rows: int, n: int) -> tuple[Batch, ...]:
  """The held-out batches, drawn once per (config, seed) in a process: a ListOps example costs ~1 ms to draw, and an
  ablation evaluates every variant of a seed on the same test set."""
  return tuple(_pad_rows(data._examples(_TEST, range(i, min(i + rows, n))), rows) for i in range(0, n, rows))


@dataclasses.dataclass(frozen=True)
class MovingDigits(HeldOutData):
  """Clip classification (see r1jax/moving_digits.py): inputs float32 [B, T, S, P], targets [B, 1] (the
  `video_label` class), weights [B, 1]; fresh clips per training row (or a fixed set of num_train_examples) and a
  held-out test set of num_test_examples on held-out digit images, pure functions of (seed, split, index)."""

  @property
  def vocab_size(self) -> int:
    return len(moving_digits.DIRECTIONS) if self.cfg.video_label == "direction" else 10

  @property
  def tokens_per_example(self) -> int:
    return self.cfg.video_frames * (self.cfg.video_canvas // self.cfg.video_patch) ** 2

  def clip(self, split: int, index: int) -> dict:
    """One clip with both labels (see moving_digits.clip_example)."""
    c = self.cfg
    return moving_digits.clip_example(np.random.default_rng([self.seed, split, index]), split == _TEST,
                                      c.video_frames, c.video_canvas, c.video_patch, c.video_max_speed)

  def _examples(self, split: int, indices) -> Batch:
    clips = [self.clip(split, int(i)) for i in indices]
    targets = np.array([[c[self.cfg.video_label]] for c in clips], np.int32)
    return {"inputs": np.stack([c["patches"] for c in clips]), "targets": targets,
            "weights": np.ones(targets.shape, np.float32)}


def make_dataset(cfg: DataConfig, seed: int) -> TextData | HeldOutData:
  """Builds the dataset named by `cfg.kind`; raises ConfigError (before any compilation) on bad input."""
  if cfg.kind == "moving_digits":
    return MovingDigits(cfg, seed)
  return TextData(cfg, seed) if cfg.kind == "text" else ScoredData(cfg, seed)
