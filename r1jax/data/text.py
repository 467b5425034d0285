"""Character-level text (nanoGPT's shakespeare_char): a UTF-8 file split 90/10 into training and validation."""

import dataclasses
from typing import Iterator

import numpy as np

from r1jax.config import TINY_SHAKESPEARE, DataConfig, require
from r1jax.data.core import TRAIN, Batch, resolve_path, tiled_batches
from r1jax.errors import ConfigError
from r1jax.registry import register_dataset


@dataclasses.dataclass(frozen=True)
class TextOptions:
  path: str = TINY_SHAKESPEARE  # a UTF-8 text file, or package:<name> for one shipped in r1jax/assets
  val_fraction: float = 0.1  # last fraction of the file held out for validation (nanoGPT: 0.1)

  def __post_init__(self):
    require(bool(self.path), "path", "no text file given", f"pass a file's path, or {TINY_SHAKESPEARE} (shipped)")
    require(0.0 < self.val_fraction < 1.0, "val_fraction", f"{self.val_fraction} not in (0, 1)", "use 0.1")


def read_text(path: str, val_fraction: float, field: str = "data.options.text.path"):
  """(characters, train ids, validation ids) of a text file (package:<name> or a path), split by val_fraction."""
  with open(resolve_path(path, field), encoding="utf-8") as f:
    text = f.read()
  chars = sorted(set(text))
  lookup = {c: i for i, c in enumerate(chars)}
  ids = np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))
  split = int(len(ids) * (1.0 - val_fraction))
  return chars, ids[:split], ids[split:]


@register_dataset("text", TextOptions)
@dataclasses.dataclass
class TextData:
  """Character-level text, 90/10 train/val split of the file (nanoGPT's shakespeare_char).

  Training windows are drawn uniformly at random per step from the train split; evaluation tiles the whole
  validation split with non-overlapping windows, so `eval/loss` is the exact mean over the split (nanoGPT
  estimates it from random windows instead).
  """

  cfg: DataConfig
  seed: int
  arch = "lm"
  phases = (0,)
  group_names = ()

  def __post_init__(self):
    path = self.cfg.opts.path
    self.chars, self.train_ids, self.val_ids = read_text(path, self.cfg.opts.val_fraction)
    ids = self.train_ids
    need = self.cfg.seq_len + 1
    if len(self.train_ids) < need or len(self.val_ids) < need:
      raise ConfigError(
        f"data.options.text.path: {path!r} has {len(ids) + len(self.val_ids)} characters, too few "
        f"for data.seq_len={self.cfg.seq_len} in both splits. Fix: lower data.seq_len or use a longer "
        "file."
      )
    self.vocab_size = len(self.chars)

  @property
  def tokens_per_example(self) -> int:
    return self.cfg.seq_len

  def decode(self, ids) -> str:
    return "".join(self.chars[i] for i in ids)

  def encode(self, text: str) -> list[int]:
    lookup = {c: i for i, c in enumerate(self.chars)}
    return [lookup[c] for c in text]

  def train_batch(self, step: int) -> Batch:
    rng = np.random.default_rng([self.seed, TRAIN, step])
    T = self.cfg.seq_len
    starts = rng.integers(0, len(self.train_ids) - T, size=self.cfg.batch_size)
    windows = np.stack([self.train_ids[s : s + T + 1] for s in starts])
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:], "weights": np.ones((len(starts), T), np.float32)}

  def eval_batches(self) -> Iterator[Batch]:
    return tiled_batches(lambda start, stop: self.val_ids[start:stop], len(self.val_ids), self.cfg)
