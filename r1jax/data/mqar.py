"""MQAR, multi-query associative recall (Arora et al. 2023, Zoology): key-value pairs, then queries of the keys at
power-law distributed gaps; the model must recall each key's value. With a length curriculum (Zoology trains on a
mixture of lengths): short sequences first, as many tokens per step."""

import dataclasses
import functools

import numpy as np

from r1jax.config import require
from r1jax.data.core import ScoredData, check_curriculum, held_out_sizes
from r1jax.registry import register_dataset


@dataclasses.dataclass(frozen=True)
class MQAROptions:
  # keys from [1, V/2), values from [V/2, V). Zoology also asks V > seq_len; nothing here needs it (fillers are token
  # 0 or random), and a smaller vocabulary gives every key more training occurrences (the sparse driver: V=128, T=256).
  vocab_size: int = 8192
  num_kv_pairs: int = 16  # key-value pairs at the start of each sequence; 4 * pairs <= seq_len
  power_a: float = 0.01  # power-law parameter of the query gaps (Zoology default)
  # Queries far from their pairs: gaps drawn from the top (1 - min_gap) of the gap range (power law from there), so a
  # query at T=256 with min_gap=0.5 comes >= 120 tokens after its pair, out of a short window's reach. 0: Zoology.
  min_gap: float = 0.0
  random_non_queries: bool = False  # filler positions random tokens (True) or token 0 (False, Zoology's configs)
  # The first curriculum_steps train steps draw sequences of curriculum_seq_len tokens with curriculum_kv_pairs
  # pairs and Zoology's gaps (min_gap 0), batch_size * seq_len / curriculum_seq_len of them (the same tokens per
  # step); evaluation is always at seq_len / num_kv_pairs / min_gap. 0 steps = off.
  curriculum_steps: int = 0
  curriculum_seq_len: int = 64
  curriculum_kv_pairs: int = 8
  num_train_examples: int = 0  # 0: a fresh example every training row; else a fixed set, reshuffled every epoch
  num_test_examples: int = 3000  # held-out test examples

  def __post_init__(self):
    held_out_sizes(self)
    require(0.0 <= self.min_gap < 1.0, "min_gap", f"{self.min_gap} is not in [0, 1)", "use 0 (Zoology) or e.g. 0.5")
    require(
      self.num_kv_pairs >= 1 and self.num_kv_pairs < self.vocab_size // 2 - 1,
      "num_kv_pairs",
      f"{self.num_kv_pairs} pairs need 1 <= pairs < vocab_size / 2 - 1 distinct keys",
      "lower num_kv_pairs",
    )

  def check(self, cfg) -> None:
    """Constraints involving the run's length, batch and steps (cfg: the whole Config)."""
    d, field = cfg.data, "data.options.mqar"
    require(
      4 * self.num_kv_pairs <= d.seq_len,
      f"{field}.num_kv_pairs",
      f"{self.num_kv_pairs} pairs need data.seq_len >= {4 * self.num_kv_pairs}, got {d.seq_len}",
      "raise data.seq_len or lower num_kv_pairs",
    )
    space = (d.seq_len - 2 * self.num_kv_pairs) // 2
    require(
      space - int(self.min_gap * space) >= self.num_kv_pairs,
      f"{field}.min_gap",
      f"{self.min_gap} leaves fewer gaps than the {self.num_kv_pairs} queries",
      "lower min_gap",
    )
    require(
      self.curriculum_kv_pairs >= 1 or not self.curriculum_steps,
      f"{field}.curriculum_kv_pairs",
      f"must be >= 1, got {self.curriculum_kv_pairs}",
      "use e.g. 8",
    )
    check_curriculum(cfg, 4 * self.curriculum_kv_pairs, "64 with curriculum_kv_pairs=8")


@functools.lru_cache(maxsize=64)
def _gap_probs(n: int, power_a: float) -> np.ndarray:
  """The power law over gaps 1..n, normalised (read-only: shared by every example of a length)."""
  p = power_a * np.arange(1, n + 1) ** (power_a - 1)
  p = p / p.sum()
  p.flags.writeable = False
  return p


def mqar_example(
  rng: np.random.Generator,
  seq_len: int,
  vocab: int,
  num_pairs: int,
  power_a: float,
  random_non_queries: bool = False,
  min_gap: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One MQAR sequence as in Zoology (`multiquery_ar`).

  The sequence starts with `num_pairs` key-value pairs (keys from [1, V/2), values from [V/2, V), all distinct),
  then each key appears once more as a query at a power-law distributed gap; the model must predict the key's
  value right after the query. Remaining positions are token 0, or random tokens with `random_non_queries`. With
  `min_gap` > 0 the gaps come from the top (1 - min_gap) of their range (the power law starting there).

  Returns:
    inputs [T], target_pos [num_pairs] (query positions, sorted), targets [num_pairs] (the values).
  """
  # choice(n) + lo draws what choice(np.arange(lo, lo + n)) draws, without building the range
  keys = 1 + rng.choice(vocab // 2 - 1, size=num_pairs, replace=False)
  values = vocab // 2 + rng.choice(vocab - vocab // 2, size=num_pairs, replace=False)
  ctx = 2 * num_pairs
  space = (seq_len - ctx) // 2
  skip = int(min_gap * space)
  gaps = skip + rng.choice(space - skip, size=num_pairs, replace=False, p=_gap_probs(space - skip, power_a))
  inputs = rng.integers(0, vocab, size=seq_len) if random_non_queries else np.zeros(seq_len, np.int64)
  inputs[0:ctx:2], inputs[1:ctx:2] = keys, values
  pos = ctx + 2 * gaps
  inputs[pos] = keys
  order = np.argsort(pos)
  return inputs.astype(np.int32), pos[order].astype(np.int32), values[order].astype(np.int32)


@register_dataset("mqar", MQAROptions)
@dataclasses.dataclass(frozen=True)
class MQAR(ScoredData):
  """MQAR batches: inputs [B, T], the answers' positions and values [B, num_kv_pairs]."""

  @property
  def vocab_size(self) -> int:
    return self.cfg.opts.vocab_size

  def example(self, rng: np.random.Generator, split: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = self.cfg.opts
    return mqar_example(rng, self.cfg.seq_len, o.vocab_size, o.num_kv_pairs, o.power_a, o.random_non_queries, o.min_gap)

  def decode(self, ids) -> str:
    return " ".join(map(str, ids))

  def curriculum(self) -> "MQAR":
    """Zoology's gaps (min_gap 0) and curriculum_kv_pairs pairs, at curriculum_seq_len."""
    o = self.cfg.opts
    return MQAR(self.short_config(num_kv_pairs=o.curriculum_kv_pairs, min_gap=0.0), self.seed)
