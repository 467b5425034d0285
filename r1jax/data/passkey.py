"""Passkey retrieval in real text (Mohtashami & Jaggi 2023, "Landmark Attention"; the long-context probe of NSA's and
DeepSeek's reports): a random number hidden at a random depth of Tiny Shakespeare, asked for at the end.

Each sequence, character level: newline padding, then a window of the text with the needle inserted at depth u
(a fraction of the window), then the question, then the answer:

  \n...\n <text> The pass key is 71432. Remember it. 71432 is the pass key. <text> What is the pass key? The pass
  key is 71432

The digits of the answer are scored (next-token prediction after the question, each digit given the earlier ones).
A context length is drawn per sequence from `length_fractions` of seq_len (shorter ones padded on the left), u
uniformly from [0, 1); evaluation also reports accuracy per (length, depth bin) group. Training windows come from
the text's train split, test windows from its validation split; the digits are uniform random.
"""

import dataclasses

import numpy as np

from r1jax.config import TINY_SHAKESPEARE, require
from r1jax.data.core import TEST, ScoredData, check_curriculum, held_out_sizes
from r1jax.data.text import read_text
from r1jax.registry import register_dataset

NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = " What is the pass key? The pass key is "
PAD = "\n"


@dataclasses.dataclass(frozen=True)
class PasskeyOptions:
  path: str = TINY_SHAKESPEARE  # the haystack: a UTF-8 text file, or package:<name> for one shipped in r1jax/assets
  val_fraction: float = 0.1  # last fraction of the file held out: test haystacks come from it
  digits: int = 5  # digits of the pass key (each uniform in 0-9), >= 1
  length_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)  # context lengths, as fractions of data.seq_len, in (0, 1]
  depth_bins: int = 5  # depth bins in the per-group evaluation, >= 1
  # The first curriculum_steps train steps draw contexts of curriculum_seq_len tokens (one length, no padding),
  # batch_size * seq_len / curriculum_seq_len of them (the same tokens per step, more needles); evaluation is always
  # at seq_len and length_fractions. Dense attention learns the copy sooner on short rows (issue 41's note). 0 = off.
  curriculum_steps: int = 0
  curriculum_seq_len: int = 128
  num_train_examples: int = 0  # 0: a fresh example every training row; else a fixed set, reshuffled every epoch
  num_test_examples: int = 600  # held-out test examples

  def __post_init__(self):
    held_out_sizes(self)
    object.__setattr__(self, "length_fractions", tuple(float(f) for f in self.length_fractions))
    require(bool(self.path), "path", "no haystack text given", f"pass a file's path, or {TINY_SHAKESPEARE}")
    require(0.0 < self.val_fraction < 1.0, "val_fraction", f"{self.val_fraction} not in (0, 1)", "use 0.1")
    require(self.digits >= 1 and self.depth_bins >= 1, "digits/depth_bins", "must be >= 1", "use 5 and 5")
    require(
      bool(self.length_fractions) and all(0.0 < f <= 1.0 for f in self.length_fractions),
      "length_fractions",
      f"{self.length_fractions} must be fractions in (0, 1]",
      "use e.g. (0.25, 0.5, 1.0)",
    )

  def lengths(self, seq_len: int) -> tuple[int, ...]:
    return tuple(int(round(f * seq_len)) for f in self.length_fractions)

  def check(self, cfg) -> None:
    fixed = len(NEEDLE.format(key="0" * self.digits)) + len(QUESTION) + self.digits
    shortest = min(self.lengths(cfg.data.seq_len))
    require(
      shortest >= fixed + 16,
      "data.options.passkey.length_fractions",
      f"the shortest context, {shortest} tokens, leaves under 16 characters of text beside the needle and the "
      f"question ({fixed} characters)",
      f"raise data.seq_len or the smallest fraction to >= {fixed + 16} tokens",
    )
    check_curriculum(cfg, fixed + 16, str(max(128, fixed + 16)))


@register_dataset("passkey", PasskeyOptions)
@dataclasses.dataclass(frozen=True)
class Passkey(ScoredData):
  """Passkey batches: inputs [B, T] characters, the digits' positions and values [B, digits], groups [B, G]."""

  def __post_init__(self):
    o = self.cfg.opts
    text_chars, train_ids, val_ids = read_text(o.path, o.val_fraction, "data.options.passkey.path")
    chars = sorted(set(text_chars) | set("0123456789") | set(NEEDLE + QUESTION + PAD))
    remap = np.array([chars.index(c) for c in text_chars], np.int32)  # the text's ids in the extended vocabulary
    names = tuple(
      f"len{n}/depth{b / o.depth_bins:.1f}-{(b + 1) / o.depth_bins:.1f}"
      for n in o.lengths(self.cfg.seq_len)
      for b in range(o.depth_bins)
    )
    for k, v in dict(
      chars=chars,
      train_ids=remap[train_ids],
      val_ids=remap[val_ids],
      vocab_size=len(chars),
      lookup={c: i for i, c in enumerate(chars)},
      group_names=names,
    ).items():
      object.__setattr__(self, k, v)  # frozen: hashed by (cfg, seed), as the cached test batches need

  def curriculum(self) -> "Passkey":
    """Contexts of curriculum_seq_len tokens, needles at every depth."""
    return Passkey(self.short_config(length_fractions=(1.0,)), self.seed)

  def encode(self, text: str) -> np.ndarray:
    return np.array([self.lookup[c] for c in text], np.int32)

  def decode(self, ids) -> str:
    return "".join(self.chars[i] for i in ids)

  def example(self, rng: np.random.Generator, split: int = 0) -> tuple[np.ndarray, ...]:
    o, T = self.cfg.opts, self.cfg.seq_len
    ids = self.val_ids if split == TEST else self.train_ids
    which = int(rng.integers(len(o.length_fractions)))
    length, depth = o.lengths(T)[which], float(rng.random())
    key = "".join(str(d) for d in rng.integers(0, 10, size=o.digits))
    needle, tail = self.encode(NEEDLE.format(key=key)), self.encode(QUESTION + key)
    hay = length + 1 - len(needle) - len(tail)  # the content is length + 1 tokens: inputs, then the last target
    start = int(rng.integers(0, len(ids) - hay))
    cut = int(depth * hay)
    content = np.concatenate([ids[start : start + cut], needle, ids[start + cut : start + hay], tail])
    full = np.concatenate([np.full(T - length, self.lookup[PAD], np.int32), content])
    pos = np.arange(T - o.digits, T, dtype=np.int32)  # each digit is predicted from the token before it
    group = which * o.depth_bins + min(int(depth * o.depth_bins), o.depth_bins - 1)
    return full[:-1], pos, full[pos + 1], group
