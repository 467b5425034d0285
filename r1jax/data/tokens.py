"""Token shards written by `python -m r1jax.prepare`, read through Grain (`data.kind=tokens`).

Training reads windows of seq_len + 1 tokens at a stride of seq_len from the memory-mapped train shards (windows
may cross documents and shards; the end-of-document token marks the seams, as nanoGPT's and MaxText's packed
streams). The window order is a Grain `MapDataset` shuffled per epoch from the run's seed, so step s's batch is
elements [s * B, (s + 1) * B) of it: a pure function of (seed, step), and each process reads only the rows of the
global batch its devices hold (`train_batch(step, rows)`, sharding.put_train_batch). The loader's state is
therefore the next step, which orbax saves with the model in every checkpoint (`data.next_batch` of its metadata):
a resumed run reads the batches an uninterrupted one would. Evaluation tiles the validation split with
non-overlapping windows (all of them, or the first data.eval_max_batches batches), and reports bits per character
(`eval/bpc`: the loss in bits times the split's tokens per character), which compares across tokenizers.
"""

import dataclasses
import functools
import hashlib
import json
import os
from typing import Iterator

import numpy as np

from r1jax.config import DataConfig, require
from r1jax.data.core import Batch, tiled_batches
from r1jax.errors import ConfigError
from r1jax.registry import register_dataset

FORMAT = 1  # of a prepared folder (meta.json's "format"), written by r1jax.prepare


def sha256(path: str) -> str:
  """The file's sha256, read in 4 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class TokenOptions:
  path: str = ""  # a folder written by `python -m r1jax.prepare` (its meta.json, tokenizer.json and shards)
  verify: bool = False  # check every shard's sha256 against meta.json before training (reads the whole corpus)


def read_meta(folder: str, field: str = "data.options.tokens.path") -> dict:
  """meta.json of a finished preparation; ConfigError naming `field` when there is none."""
  path = os.path.join(folder, "meta.json")
  if not os.path.isfile(path):
    state = "an unfinished preparation" if os.path.isfile(os.path.join(folder, "progress.json")) else "no corpus"
    raise ConfigError(
      f"{field}: {folder!r} holds no meta.json ({state}; cwd {os.getcwd()!r}). Fix: run (or rerun, "
      f"to finish) python -m r1jax.prepare --input=<files> --out={folder}."
    )
  with open(path) as f:
    meta = json.load(f)
  require(
    meta.get("format") == FORMAT,
    field,
    f"{folder!r} was prepared in format {meta.get('format')}, this r1jax reads {FORMAT}",
    "prepare the corpus again with this version",
  )
  return meta


class TokenStream:
  """The tokens of one split as one array: its shards memory-mapped, read by [start, stop) across shard seams."""

  def __init__(self, folder: str, split: dict, dtype: str, verify: bool):
    self.shards = []
    for s in split["shards"]:
      path = os.path.join(folder, s["file"])
      size = os.path.getsize(path) if os.path.isfile(path) else -1
      if size != s["tokens"] * np.dtype(dtype).itemsize:
        raise ConfigError(
          f"data.options.tokens.path: shard {path!r} is missing or has {size} bytes, not "
          f"{s['tokens']} {dtype} tokens. Fix: prepare the corpus again into a new folder."
        )
      if verify and sha256(path) != s["sha256"]:
        raise ConfigError(
          f"data.options.tokens.path: shard {path!r} does not match its checksum in meta.json. "
          "Fix: prepare the corpus again into a new folder."
        )
      self.shards.append(np.memmap(path, dtype=dtype, mode="r"))
    self.starts = np.cumsum([0] + [len(s) for s in self.shards])

  def __len__(self) -> int:
    return int(self.starts[-1])

  def read(self, start: int, stop: int) -> np.ndarray:
    out, at = [], start
    while at < stop:
      i = int(np.searchsorted(self.starts, at, side="right")) - 1
      end = min(stop, int(self.starts[i + 1]))
      out.append(self.shards[i][at - self.starts[i] : end - self.starts[i]])
      at = end
    return np.concatenate(out).astype(np.int32)


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
  from tokenizers import Tokenizer

  return Tokenizer.from_file(path)


@register_dataset("tokens", TokenOptions)
@dataclasses.dataclass
class TokenData:
  """A prepared corpus (see the module docstring)."""

  cfg: DataConfig
  seed: int
  arch = "lm"
  phases = (0,)
  group_names = ()
  reads_rows = True  # train_batch(step, rows) reads only `rows` of the global batch

  def __post_init__(self):
    import grain

    o = self.cfg.opts
    require(
      bool(o.path),
      "data.options.tokens.path",
      "no prepared folder given",
      "run python -m r1jax.prepare --input=<files> --out=<dir>, then pass --config.data.options.tokens.path=<dir>",
    )
    self.folder = os.path.abspath(o.path)
    self.meta = read_meta(self.folder)
    self.vocab_size = int(self.meta["vocab_size"])
    dtype = self.meta["dtype"]
    self.train, self.val = (TokenStream(self.folder, self.meta["splits"][s], dtype, o.verify) for s in ("train", "val"))
    T = self.cfg.seq_len
    for name, stream in (("train", self.train), ("val", self.val)):
      if len(stream) < T + 1:
        raise ConfigError(
          f"data.seq_len: {T} + 1 tokens do not fit the {name} split of {self.folder!r} "
          f"({len(stream)} tokens). Fix: lower data.seq_len or prepare a larger corpus."
        )
    val = self.meta["splits"]["val"]
    self.chars_per_token = val["characters"] / val["tokens"]
    # Window i is tokens [i T, i T + T + 1); Grain shuffles the window order afresh every epoch.
    self.windows = (
      grain.MapDataset.range((len(self.train) - 1) // T)
      .shuffle(seed=self.seed)
      .map(lambda i: self.train.read(i * T, i * T + T + 1))
    )

  @property
  def tokens_per_example(self) -> int:
    return self.cfg.seq_len

  def decode(self, ids) -> str:
    return _tokenizer(os.path.join(self.folder, self.meta["tokenizer"])).decode(list(ids), skip_special_tokens=False)

  def encode(self, text: str) -> list[int]:
    return _tokenizer(os.path.join(self.folder, self.meta["tokenizer"])).encode(text, add_special_tokens=False).ids

  def train_batch(self, step: int, rows=None) -> Batch:
    """Rows `rows` (default: all) of step `step`'s global batch."""
    B = self.cfg.batch_size
    rows = np.arange(B) if rows is None else np.asarray(rows)
    windows = np.stack([self.windows[step * B + int(r)] for r in rows])
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:], "weights": np.ones(windows[:, 1:].shape, np.float32)}

  def eval_batches(self) -> Iterator[Batch]:
    return tiled_batches(self.val.read, len(self.val), self.cfg)
