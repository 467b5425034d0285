"""ListOps (Nangia & Bowman 2018) as in the Long Range Arena (Tay et al. 2021), generated here: nested MIN, MAX,
MED (median, rounded down) and SM (sum mod 10) over digits 0-9, brackets kept as tokens; 10-way classification of
the expression's value, read at a final '=' token.

LRA's generator: a node below the maximum depth is an operator with probability 0.25 (2 to max_args arguments),
else a digit; expressions are redrawn until their length is in range. Here the root is always an operator.
LRA lengths are 500-2000 tokens; published accuracy at 2000: Transformer 36.37, Longformer 35.63, BigBird 36.05,
Local Attention 15.82, S4 59.60.
"""

import dataclasses
import random

import numpy as np

from r1jax.config import require
from r1jax.data.core import ScoredData, held_out_sizes
from r1jax.registry import register_dataset

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
TOKENS = ("<pad>",) + tuple("0123456789") + OPERATORS + ("]", "=")
PAD, DIGIT0, OP0, CLOSE, QUERY = 0, 1, 11, 15, 16
VOCAB_SIZE = len(TOKENS)
OPERATOR_P = 0.25  # LRA's VALUE_P: probability that a node below max depth is an operator


def apply(op: int, values: list[int]) -> int:
  """Value of operator `op` (index into OPERATORS) over digit values."""
  if op == 0:
    return min(values)
  if op == 1:
    return max(values)
  if op == 2:
    return int(np.floor(np.median(values)))  # LRA: int(np.median(...)), which rounds x.5 down for digits
  return sum(values) % 10


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int, budget: int, root: bool = False):
  """(tokens, value) of a random subtree, or None when it would exceed `budget` tokens."""
  if budget < 1:
    return None
  if not root and (depth >= max_depth or rng.random() >= OPERATOR_P):
    d = rng.randrange(10)
    return [DIGIT0 + d], d
  op = rng.randrange(len(OPERATORS))
  tokens, values = [OP0 + op], []
  for _ in range(rng.randint(2, max_args)):
    sub = _tree(rng, depth + 1, max_depth, max_args, budget - len(tokens) - 1)
    if sub is None:
      return None
    tokens += sub[0]
    values.append(sub[1])
  tokens.append(CLOSE)
  return (tokens, apply(op, values)) if len(tokens) <= budget else None


def listops_example(
  rng: np.random.Generator, seq_len: int, min_len: int, max_depth: int, max_args: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One ListOps sequence of min_len..seq_len-1 expression tokens, '=', then padding.

  Returns:
    inputs [T], target_pos [1] (the position of '='), targets [1] (the token of the value's digit).
  """
  fast = random.Random(int(rng.integers(2**63)))  # scalar draws from `random` are ~10x cheaper than numpy's
  while True:
    tree = _tree(fast, 1, max_depth, max_args, seq_len - 1, root=True)
    if tree is not None and len(tree[0]) >= min_len:
      break
  tokens, value = tree
  inputs = np.full(seq_len, PAD, np.int32)
  inputs[: len(tokens)] = tokens
  inputs[len(tokens)] = QUERY
  return inputs, np.array([len(tokens)], np.int32), np.array([DIGIT0 + value], np.int32)


def evaluate(tokens) -> int:
  """Value of a token sequence (up to '=' or padding) by a stack machine: the naive reference for tests."""
  stack = [[]]
  for t in tokens:
    if t in (QUERY, PAD):
      break
    if t >= OP0 and t < CLOSE:
      stack.append([t - OP0])
    elif t == CLOSE:
      op, *values = stack.pop()
      stack[-1].append(apply(op, values))
    else:
      stack[-1].append(t - DIGIT0)
  (value,) = stack[0]
  return value


def decode(ids) -> str:
  return " ".join(TOKENS[i] for i in ids if i != PAD)


@dataclasses.dataclass(frozen=True)
class ListOpsOptions:
  min_len: int = 32  # fewest expression tokens (>= 4); the most is data.seq_len - 1 (then '=')
  max_depth: int = 10  # deepest operator nesting (LRA: 10)
  max_args: int = 10  # most arguments per operator (LRA: 10), >= 2
  num_train_examples: int = 0  # 0: a fresh example every training row; else a fixed set, reshuffled every epoch
  num_test_examples: int = 2000  # held-out test examples

  def __post_init__(self):
    held_out_sizes(self)
    require(
      self.max_depth >= 1 and self.max_args >= 2,
      "max_depth/max_args",
      "need depth >= 1 and >= 2 arguments",
      "use LRA's 10 and 10",
    )

  def check(self, cfg) -> None:
    require(
      4 <= self.min_len <= cfg.data.seq_len - 1,
      "data.options.listops.min_len",
      f"{self.min_len} must be in [4, seq_len - 1 = {cfg.data.seq_len - 1}] (the shortest expression "
      "'[MAX d d ]' has 4 tokens; '=' follows)",
      "lower min_len or raise data.seq_len",
    )


@register_dataset("listops", ListOpsOptions)
@dataclasses.dataclass(frozen=True)
class ListOps(ScoredData):
  """ListOps batches: inputs [B, T] (expression, '=', padding), the '=' position and the value's token [B, 1]."""

  vocab_size = VOCAB_SIZE

  def example(self, rng: np.random.Generator, split: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = self.cfg.opts
    return listops_example(rng, self.cfg.seq_len, o.min_len, o.max_depth, o.max_args)

  def decode(self, ids) -> str:
    return decode(ids)
