"""Evaluators (big_vision's pattern): what a run measures on its eval set, each named in `train.evaluators`.

`timed` runs every eval batch through the model's forward pass and nothing else, timed (forward tokens/s): loss,
accuracy and the mixers' cheap diagnostics. The others run after it, untimed: `groups` (accuracy per group of rows,
e.g. passkey's context length x needle depth) and `bpc` (bits per character of text) derive from what the timed
pass saw, on the host; `diagnostics` makes a pass of its own over the first train.diag_batches eval batches for the
costly diagnostics (registry.DIAGNOSTICS: a sparse mixer's recall of the dense top-k runs dense attention); `int8`
(not listed by default) one with the weights rounded to INT8 (r1jax/inference/quantize.py) and the parameters' sizes.
The timed step is built from the forward alone, before and apart from the others, so nothing untimed can enter it
(tests/test_train.py compares its compiled program with and without the other evaluators listed).
"""

import dataclasses
import itertools
import math
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from r1jax import sharding
from r1jax.errors import ConfigError
from r1jax.objective import forward

# The evaluators by name, the timed one first: a run lists "timed" and any of the others (train.evaluators).
NAMES = ("timed", "groups", "bpc", "diagnostics", "int8")


def eval_step(model, diagnostics: bool = False) -> Callable:
  """The pure step `(state, batch) -> (sums {loss_sum, correct_B, count_B}, mixer/ffn/mtp metrics)`; `diagnostics` adds
  the costly diagnostics (registry.DIAGNOSTICS), for an untimed pass only."""

  def step(state, batch: dict) -> tuple[dict, dict]:
    _, metrics, sums, _ = forward(model, state.params, state.model_state, batch, None, True, diagnostics)
    return (
      {k: sums[k] for k in ("loss_sum", "correct_B", "count_B")},
      {k: v for k, v in metrics.items() if k.startswith(("mixer/", "ffn/", "mtp/"))},
    )

  return step


@dataclasses.dataclass
class Seen:
  """What the timed pass saw: eval loss and accuracy, the mixers' cheap diagnostics (means over batches), and per
  eval batch its rows' correct counts and weights with the batch itself (host arrays)."""

  metrics: dict[str, float]
  diagnostics: dict[str, float]
  rows: list[tuple[np.ndarray, np.ndarray, dict]]


class Timed:
  """Loss, accuracy and cheap diagnostics over every eval batch; forward tokens/s from every call after the first
  (which compiles)."""

  def __init__(self, run, step: Callable | None = None):
    self.run = run
    self.step = step or jax.jit(eval_step(run.model), out_shardings=run.replicated)
    self.tokens, self.sec, self.warm = 0, 0.0, False

  @property
  def tokens_per_sec(self) -> float:
    return self.tokens / self.sec if self.sec else float("nan")

  def __call__(self, state) -> Seen:
    loss_sum, diags, rows = 0.0, {}, []
    for batch in self.run.data.eval_batches():
      t0 = time.perf_counter()
      sums, diag = jax.device_get(self.step(state, sharding.put_batch(batch, self.run.mesh)))
      if self.warm:  # forward-only throughput; the very first call compiles
        self.tokens += batch["inputs"].shape[0] * self.run.data.tokens_per_example
        self.sec += time.perf_counter() - t0
      self.warm = True
      loss_sum += np.asarray(sums["loss_sum"], np.float64)
      rows.append((np.asarray(sums["correct_B"], np.float64), np.asarray(sums["count_B"], np.float64), batch))
      diags = {k: diags.get(k, 0.0) + float(v) for k, v in diag.items()}
    count = max(float(sum(n.sum() for _, n, _ in rows)), 1.0)
    correct = float(sum(c.sum() for c, _, _ in rows))
    return Seen(
      {"eval/loss": float(loss_sum) / count, "eval/accuracy": correct / count},
      {f"eval/{k}": v / max(len(rows), 1) for k, v in diags.items()},
      rows,
    )


class Groups:
  """Accuracy per group of rows (the dataset's `group_names`; a batch's one-hot `groups` [B, G]), from the timed
  pass's per-row counts."""

  def __init__(self, run):
    self.names = run.data.group_names

  def __call__(self, state, seen: Seen) -> dict[str, float]:
    del state
    correct, count = np.zeros(len(self.names)), np.zeros(len(self.names))
    for c_B, n_B, batch in seen.rows:
      if "groups" in batch:
        correct += c_B @ batch["groups"]
        count += n_B @ batch["groups"]
    return {f"eval/accuracy/{name}": float(c / max(m, 1.0)) for name, c, m in zip(self.names, correct, count)}


class BitsPerChar:
  """Bits per character of a text dataset (its validation split's characters per token), comparable across
  tokenizers; nothing for other datasets."""

  def __init__(self, run):
    self.chars_per_token = getattr(run.data, "chars_per_token", None)

  def __call__(self, state, seen: Seen) -> dict[str, float]:
    del state
    if self.chars_per_token is None:
      return {}
    return {"eval/bpc": seen.metrics["eval/loss"] / math.log(2) / self.chars_per_token}


class Diagnostics:
  """The mixers' diagnostics from an untimed pass of their own over the first train.diag_batches eval batches (0:
  all), where a layer has costly ones (registry.DIAGNOSTICS); otherwise the timed pass's."""

  def __init__(self, run, step: Callable | None = None):
    self.run, self.step, self.costly = run, step, step is not None

  def _build(self, state) -> None:
    """Compiles the diagnostics step only if some layer reports more in a diagnostics pass than in the timed one."""
    if self.step is not None:
      return
    step = eval_step(self.run.model, diagnostics=True)
    first = sharding.put_batch(next(iter(self.run.data.eval_batches())), self.run.mesh)
    timed_keys = set(jax.eval_shape(eval_step(self.run.model), state, first)[1])
    self.costly = bool(set(jax.eval_shape(step, state, first)[1]) - timed_keys)
    self.step = jax.jit(step, out_shardings=self.run.replicated)

  def __call__(self, state, seen: Seen) -> dict[str, float]:
    self._build(state)
    if not self.costly:
      return dict(seen.diagnostics)
    diags, batches = {}, 0
    for batch in itertools.islice(self.run.data.eval_batches(), self.run.cfg.train.diag_batches or None):
      _, diag = jax.device_get(self.step(state, sharding.put_batch(batch, self.run.mesh)))
      diags = {k: diags.get(k, 0.0) + float(v) for k, v in diag.items()}
      batches += 1
    return {f"eval/{k}": v / max(batches, 1) for k, v in diags.items()}


class Int8:
  """The model after post-training INT8 quantization of its weights (r1jax/inference/quantize.py: a float-trained run's
  weights rounded, or a QAT run's, as deployed): eval loss and accuracy from an untimed pass of its own over the eval
  set, and the parameters' bytes in memory and on disk, INT8 and float."""

  def __init__(self, run):
    from r1jax.inference import quantize  # qwix only where asked for (its import costs ~1 s)
    from r1jax.model import Transformer

    self.run, self.quantize = run, quantize
    self.float_model = Transformer(dataclasses.replace(run.model.cfg, quant=""))
    self.abstract, self.timed = None, None

  def __call__(self, state, seen: Seen) -> dict[str, float]:
    del seen
    if self.timed is None:  # the INT8 model, which weights it rounds and its eval pass: traced once
      first = next(iter(self.run.data.eval_batches()))["inputs"][:1]
      model, self.abstract = self.quantize.ptq_model(self.float_model, first)
      self.timed = Timed(self.run, jax.jit(eval_step(model), out_shardings=self.run.replicated))
    params = self.quantize.rounded(nn.unbox(state.params), self.abstract)
    metrics = self.timed(state.replace(params=params)).metrics  # its timing unused: the pass is not timed
    out = {"eval/int8/loss": metrics["eval/loss"], "eval/int8/accuracy": metrics["eval/accuracy"]}
    sizes = {"int8": self.quantize.param_bytes(params), "float": self.quantize.param_bytes(state.params)}
    out.update({f"eval/{kind}/{where}_bytes": float(n) for kind, b in sizes.items() for where, n in b.items()})
    return out


UNTIMED = {"groups": Groups, "bpc": BitsPerChar, "diagnostics": Diagnostics, "int8": Int8}


def check_names(names: tuple[str, ...]) -> None:
  """ConfigError unless `names` (train.evaluators) is "timed" first, then distinct known names."""
  if not names or names[0] != "timed" or len(set(names)) != len(names) or set(names) - set(NAMES):
    raise ConfigError(
      f"train.evaluators={tuple(names)!r} is invalid. Fix: list 'timed' first, then any of {NAMES[1:]} once each."
    )


class Evaluation:
  """A run's evaluators, in the order `train.evaluators` lists them: the timed one, then the untimed ones."""

  def __init__(self, run, names: tuple[str, ...], steps: dict[str, Callable] | None = None):
    check_names(names)
    steps = steps or {}
    self.timed = Timed(run, steps.get("timed"))
    self.untimed: dict[str, Any] = {}
    for name in names[1:]:
      cls = UNTIMED[name]
      self.untimed[name] = cls(run, steps.get(name)) if name in steps else cls(run)

  def __call__(self, state) -> dict[str, float]:
    """Every evaluator's metrics: eval/loss, eval/accuracy, then each untimed evaluator's; the timed pass's cheap
    diagnostics where no diagnostics evaluator is listed."""
    seen = self.timed(state)
    out = dict(seen.metrics)
    for evaluator in self.untimed.values():
      out.update(evaluator(state, seen))
    if "diagnostics" not in self.untimed:
      out.update(seen.diagnostics)
    return out
