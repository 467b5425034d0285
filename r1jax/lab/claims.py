"""Claims ledger: each numeric claim of the seed articles that r1jax tests, next to what the experiments measured.

  python -m r1jax.claims                                  # reads ./results/<experiment>/..., writes CLAIMS.md
  python -m r1jax.claims --results=/scratch/results --out=CLAIMS.md

Every number comes from a results folder an experiment driver wrote (results.json: per-seed runs and their scale;
report.json: what a driver measured beyond its tables); the repository commits these summaries under results/, and
CLAIMS.md is this module's output from them (tests/test_committed_results.py regenerates and compares it). Spreads are
over seeds: each seed's ratio to the baseline's run of the same seed, then mean ± std. A claim whose results are
missing is listed as "not tested" with the command to run.
Verdicts: "supported" when the measured value meets the claim, "not supported at this scale" otherwise (the scale
is printed: small models, CPU steps; the claims are about production models).
"""

import dataclasses
import json
import math
import os
import sys
from typing import Callable

import numpy as np
from absl import flags

from r1jax import entry
from r1jax.atomic import write_text
from r1jax.lab.reporting import load_summary
from r1jax.provenance import describe, drift, versions

SUPPORTED, NOT_AT_SCALE, NOT_TESTED = "supported", "not supported at this scale", "not tested"


@dataclasses.dataclass(frozen=True)
class Results:
  """One experiment task's results folder: summary rows, per-seed runs, and the runs' configs."""

  folder: str
  rows: dict[str, dict]  # variant -> summary row (ratios to the folder's baseline)
  runs: dict[str, dict]  # "variant/seedN" -> flat final metrics and perf
  baseline: str
  scales: dict[str, dict]  # "variant/seedN" -> the finished run's size, data, steps, backend (reporting.scale)

  @classmethod
  def load(cls, folder: str) -> "Results | None":
    if not os.path.exists(os.path.join(folder, "results.json")):
      return None
    saved = load_summary(folder)
    return cls(folder, {r["variant"]: r for r in saved["rows"]}, saved["runs"], saved["baseline"], saved["scale"])

  def seeds(self, variant: str) -> list[str]:
    """The variant's finished seeds (runs that stopped on a non-finite loss are left out)."""
    return sorted(k.split("/")[1] for k, run in self.runs.items() if k.split("/")[0] == variant and "failed" not in run)

  def ratio(self, variant: str, key: str, invert: bool = False) -> tuple[float, float]:
    """Mean ± std over seeds of run[variant, seed][key] / run[baseline, seed][key] (its inverse with invert)."""
    return self.per_seed((variant, key), (self.baseline, key), invert)

  def per_seed(self, a: tuple[str, str], b: tuple[str, str], invert: bool = False) -> tuple[float, float]:
    """Mean ± std over variant a's seeds of run[a's variant, seed][a's key] / run[b's variant, seed][b's key]
    ((variant, key) pairs; the inverse with invert), over the seeds where both are recorded."""
    vals = []
    for seed in self.seeds(a[0]):
      x, y = self.runs[f"{a[0]}/{seed}"].get(a[1]), self.runs.get(f"{b[0]}/{seed}", {}).get(b[1])
      if x and y:
        vals.append(y / x if invert else x / y)
    arr = np.asarray(vals, np.float64)
    return (float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0) if len(arr) else (math.nan, 0.0)

  def scale(self, variant: str) -> str:
    """Model size, data and steps of the variant's first finished run (results.json keeps them)."""
    if not self.seeds(variant):
      return "no finished run"
    sc = self.scales[f"{variant}/{self.seeds(variant)[0]}"]
    return (
      f"{sc['num_layers']} layers x {sc['d_model']} wide, {sc['data']} T={sc['seq_len']}, {sc['steps']} steps, "
      f"{len(self.seeds(variant))} seeds, {sc['backend']}"
    )


@dataclasses.dataclass(frozen=True)
class Measured:
  value: str
  scale: str
  verdict: str


def _pm(mean: float, std: float, fmt: str = "{:.2f}") -> str:
  return fmt.format(mean) + (f" ± {fmt.format(std)}" if std else "")


def _verdict(ok: bool) -> str:
  return SUPPORTED if ok else NOT_AT_SCALE


# Measures: each holds a claim's metric, statistic and threshold (one place), says them in words (`judged_on`), and
# turns a task's results folder into measurements with verdicts (`__call__`; none where the results are missing).


def _each_variant(
  folder: str, variants: tuple[str, ...], measure_one: Callable[["Results", str], Measured], baseline: str = ""
) -> list[Measured]:
  """measure_one(results, variant) for each of `variants` the folder's results hold, with ratios to `baseline` ("":
  the folder's own); [] where there are no results or no such baseline."""
  r = Results.load(folder)
  if r is None or (baseline and baseline not in r.rows):
    return []
  r = dataclasses.replace(r, baseline=baseline) if baseline else r
  return [measure_one(r, v) for v in variants if v in r.rows]


@dataclasses.dataclass(frozen=True)
class SpeedQuality:
  """A speed ratio (`speed_key`) of at least `min_speed` at a quality ratio of at least `min_quality` to the
  folder's baseline: accuracy ratio (quality="accuracy") or baseline loss / loss (quality="loss")."""

  variants: tuple[str, ...]
  min_speed: float
  min_quality: float
  quality: str  # accuracy | loss
  speed_key: str = "perf/eval_tokens_per_sec"  # forward-only throughput: the claims are about inference

  def judged_on(self) -> str:
    q = "accuracy ratio" if self.quality == "accuracy" else "baseline loss / loss"
    return (
      f"{self.speed_key.split('/')[-1]} ratio >= {self.min_speed:g} and {q} >= {self.min_quality:g}; per-seed "
      "ratios to the baseline, mean ± std"
    )

  def __call__(self, folder: str) -> list[Measured]:
    return _each_variant(folder, self.variants, self._one)

  def _one(self, r: "Results", v: str) -> Measured:
    s = r.ratio(v, self.speed_key)
    acc = self.quality == "accuracy"
    q = r.ratio(v, "eval/accuracy") if acc else r.ratio(v, "eval/loss", invert=True)
    value = (
      f"{v}: {_pm(*s)}x {self.speed_key.split('/')[-1]}, quality {_pm(*q, '{:.3f}')} "
      f"({'accuracy' if acc else 'dense loss / loss'})"
    )
    return Measured(value, r.scale(v), _verdict(s[0] >= self.min_speed and q[0] >= self.min_quality))


def _saved_report(folder: str, key: str) -> dict:
  """Measurements `key` a driver saved in report.json beside its task folders ({} if none): the sparse driver's
  FLOPs against T from the definition ("complexity"), the KV-cache driver's decoding costs ("decode")."""
  path = os.path.join(os.path.dirname(folder), "report.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f).get(key, {})


@dataclasses.dataclass(frozen=True)
class Complexity:
  """The log-log slope of a mixer's forward FLOPs against T (from its definition, r1jax/lab/flops.py), at most
  n log n's slope + `slack`."""

  variants: tuple[str, ...]
  slack: float = 0.1

  def judged_on(self) -> str:
    return f"log-log slope of FLOPs (from the definition) over T <= n log n's slope + {self.slack:g} (report.json)"

  def __call__(self, folder: str) -> list[Measured]:
    from r1jax.lab.scaling import fit_exponent  # the driver's own slope fit (imports JAX: only when there is a slope)

    cx = _saved_report(folder, "complexity")
    out = []
    for v in (v for v in ("dense",) + self.variants if v in cx):
      T = cx[v]["lengths"]
      # n log n over T = 512..8192 fits a log-log slope of about 1.1; quadratic 2.
      nlogn = fit_exponent(T, np.asarray(T) * np.log(T))
      out.append(
        Measured(
          f"{v}: FLOPs ~ T^{cx[v]['slope']:.2f} (n log n: T^{nlogn:.2f})",
          f"one mixer, d=64, 2 heads, forward FLOPs from the definition, T={T[0]}..{T[-1]}",
          "-" if v == "dense" else _verdict(cx[v]["slope"] <= nlogn + self.slack),
        )
      )
    return out


@dataclasses.dataclass(frozen=True)
class ComputeCut:
  """At least `min_cut` fewer attention FLOPs (from the definition) than dense at the longest measured T."""

  variants: tuple[str, ...]
  min_cut: float

  def judged_on(self) -> str:
    return f"1 - FLOPs / dense FLOPs >= {self.min_cut:.0%} at the longest T (report.json)"

  def __call__(self, folder: str) -> list[Measured]:
    cx = _saved_report(folder, "complexity")
    out = []
    for v in (v for v in self.variants if v in cx and "dense" in cx):
      cut = 1 - cx[v]["flops"][-1] / cx["dense"]["flops"][-1]
      out.append(
        Measured(
          f"{v}: {cut:.0%} fewer attention FLOPs than dense",
          f"one mixer at T={cx[v]['lengths'][-1]}",
          _verdict(cut >= self.min_cut),
        )
      )
    return out


@dataclasses.dataclass(frozen=True)
class CacheCut:
  """At least `min_cut` fewer decoding-cache bytes per token than the folder's baseline (report.json, measured from
  the models' caches) at a quality ratio of at least `min_quality` (baseline loss / loss)."""

  variants: tuple[str, ...]
  min_cut: float
  min_quality: float

  def judged_on(self) -> str:
    return (
      f"1 - cache bytes per token / the baseline's >= {self.min_cut:.0%} (the KV cache only, not the weights; "
      f"report.json) and baseline loss / loss >= {self.min_quality:g}; per-seed ratios, mean ± std"
    )

  def __call__(self, folder: str) -> list[Measured]:
    cache = _saved_report(folder, "decode").get("variants", {})
    r = Results.load(folder)
    if r is None or r.baseline not in cache:
      return []
    out = []
    for v in (v for v in self.variants if v in r.rows and v in cache):
      cut = 1 - cache[v]["cache_bytes_per_token"] / cache[r.baseline]["cache_bytes_per_token"]
      q = r.ratio(v, "eval/loss", invert=True)
      out.append(
        Measured(
          f"{v}: {cut:.0%} smaller cache than {r.baseline}, quality {_pm(*q, '{:.3f}')} ({r.baseline} loss / loss)",
          r.scale(v),
          _verdict(cut >= self.min_cut and q[0] >= self.min_quality),
        )
      )
    return out


def _benchmark_report(folder: str) -> dict | None:
  """A benchmark's own report.json in `folder` (benchmarks/decode.py, attention_scaling.py), or None if none."""
  path = os.path.join(folder, "report.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


@dataclasses.dataclass(frozen=True)
class DecodeSpeed:
  """A decoding step at batch 1 at least `min_speed` x faster than `baseline`'s at the longest context measured
  (benchmarks/decode.py's report.json in the folder: random weights, so speed only; quality is judged on the
  trained models' rows of the same claim)."""

  variants: tuple[str, ...]
  min_speed: float
  baseline: str = "dense"

  def judged_on(self) -> str:
    return (
      f"{self.baseline} decode step time / the variant's >= {self.min_speed:g} at batch 1, the longest context "
      "measured (benchmarks/decode.py; speed only)"
    )

  def __call__(self, folder: str) -> list[Measured]:
    d = _benchmark_report(folder)
    if d is None:
      return []
    steps, C, m = d["variants"], d["contexts"][-1], d["model"]
    if self.baseline not in steps:
      return []
    scale = (
      f"{m['layers']} layers x {m['d_model']} wide, {m['heads']} heads, {C:,} cached tokens, batch 1, "
      f"{m['dtype']}, {d['backend']}"
    )
    out = []
    for v in (v for v in self.variants if v in steps):
      speed = steps[self.baseline]["step_sec_b1"][-1] / steps[v]["step_sec_b1"][-1]
      out.append(
        Measured(f"{v}: decode step {speed:.2f}x {self.baseline}'s speed", scale, _verdict(speed >= self.min_speed))
      )
    return out


@dataclasses.dataclass(frozen=True)
class GpuDecode:
  """On a GPU: each variant preset's decode step (batch 1) at least `min_speed` x faster than `baseline`'s at the
  longest context timed, from benchmarks/gpu_check.py's report.json in the folder, read only when it holds GPU
  numbers (its --compile_only run writes compile_only.json, which times nothing)."""

  variants: tuple[str, ...]
  min_speed: float
  baseline: str = "gpt2_small"

  def judged_on(self) -> str:
    return (
      f"{self.baseline} decode step time / the variant's >= {self.min_speed:g} on a GPU at batch 1, the longest "
      "context timed (benchmarks/gpu_check.py; GPU numbers; speed only)"
    )

  def __call__(self, folder: str) -> list[Measured]:
    d = _benchmark_report(folder)
    if d is None or not d.get("gpu_numbers"):
      return []
    timed = {r["program"]: r for r in d.get("decode", []) if "sec" in r}
    contexts = [C for C in sorted({int(p.rsplit("C=", 1)[1]) for p in timed}, reverse=True)]
    out = []
    for C in contexts[:1]:
      base = timed.get(f"decode {self.baseline} C={C}")
      for v in self.variants:
        mine = timed.get(f"decode {v} C={C}")
        if base and mine:
          speed = base["sec"] / mine["sec"]
          scale = f"{v}, {C:,} cached tokens, batch 1, bfloat16, {d['device']} (GPU numbers)"
          out.append(
            Measured(f"{v}: decode step {speed:.2f}x {self.baseline}'s speed", scale, _verdict(speed >= self.min_speed))
          )
    return out


@dataclasses.dataclass(frozen=True)
class LongContext:
  """One layer at the longest length benchmarks/attention_scaling.py measured (random weights: cost only; quality
  is judged on the trained rows of the same claim). `what`: "speed", dense's forward time / the variant's >=
  `threshold` (forward+backward shown beside it); "cut", 1 - the variant's FLOPs (from the definition,
  r1jax/lab/flops.py) / dense's >= `threshold`; "slope", the log-log slope of those FLOPs over the measured
  lengths <= n log n's + `threshold`."""

  variants: tuple[str, ...]
  what: str
  threshold: float

  def judged_on(self) -> str:
    return {
      "speed": f"dense forward time / the variant's >= {self.threshold:g} at the longest T measured (one layer; "
      "dense the faster of its XLA and blocked paths; median of at least 5 calls)",
      "cut": f"1 - FLOPs / dense FLOPs >= {self.threshold:.0%} at the longest T measured (FLOPs from each "
      "mechanism's definition, selection included)",
      "slope": f"log-log slope of FLOPs (from the definition) over the measured T <= n log n's + {self.threshold:g}",
    }[self.what]

  def __call__(self, folder: str) -> list[Measured]:
    from r1jax.lab.scaling import fit_exponent  # imports JAX: only when there is a report

    d = _benchmark_report(folder)
    if d is None:
      return []
    lengths, m, runs = d["lengths"], d["model"], d["variants"]
    if "dense" not in runs:
      return []
    flops = {v: [c["total"] for c in r["flops"]] for v, r in runs.items()}
    out = []
    for v in (v for v in self.variants if v in runs):
      sec = {w: [a["sec"] / b["sec"] for a, b in zip(runs["dense"][w], runs[v][w])] for w in ("fwd", "fwd+bwd")}
      at = max((i for i, r in enumerate(sec["fwd"]) if np.isfinite(r)), default=None)
      if self.what == "speed" and at is None:
        continue
      i = len(lengths) - 1 if at is None or self.what != "speed" else at
      scale = (
        f"one layer, d={m['d_model']}, {m['heads']} heads, batch {m['batch']}, T={lengths[i]:,}, {m['dtype']}, "
        f"{d['backend']}"
      )
      if self.what == "speed":
        value, ok = f"{v}: {sec['fwd'][i]:.2f}x dense's speed forward, {sec['fwd+bwd'][i]:.2f}x fwd+bwd", sec["fwd"][i]
        verdict = _verdict(ok >= self.threshold)
      elif self.what == "cut":
        cut = 1 - flops[v][i] / flops["dense"][i]
        value, verdict = f"{v}: {cut:.0%} fewer attention FLOPs than dense", _verdict(cut >= self.threshold)
      else:
        slope, nlogn = fit_exponent(lengths, flops[v]), fit_exponent(lengths, np.asarray(lengths) * np.log(lengths))
        scale = scale.replace(f"T={lengths[i]:,}", f"T={lengths[0]:,}..{lengths[-1]:,}")
        value, verdict = f"{v}: FLOPs ~ T^{slope:.2f} (n log n: T^{nlogn:.2f})", _verdict(slope <= nlogn + 0.1)
      out.append(Measured(value, scale, verdict))
    return out


@dataclasses.dataclass(frozen=True)
class SpeedAtLoss:
  """At least `min_speed` x the `baseline` variant's speed with a loss at most `max_loss_increase` above it."""

  variants: tuple[str, ...]
  baseline: str
  min_speed: float
  max_loss_increase: float
  speed_key: str = "perf/eval_tokens_per_sec"

  def judged_on(self) -> str:
    return (
      f"{self.speed_key.split('/')[-1]} ratio to {self.baseline} >= {self.min_speed:g} and loss ratio - 1 < "
      f"{self.max_loss_increase:.0%}; per-seed ratios, mean ± std"
    )

  def __call__(self, folder: str) -> list[Measured]:
    return _each_variant(folder, self.variants, self._one, self.baseline)

  def _one(self, r: "Results", v: str) -> Measured:
    s, loss = r.ratio(v, self.speed_key), r.ratio(v, "eval/loss")
    ok = s[0] >= self.min_speed and loss[0] - 1 < self.max_loss_increase
    return Measured(
      f"{v} vs {self.baseline}: {_pm(*s)}x inference tok/s, loss {100 * (loss[0] - 1):+.2f}% (± {100 * loss[1]:.2f})",
      r.scale(v),
      _verdict(ok),
    )


@dataclasses.dataclass(frozen=True)
class FewerParams:
  """At least `min_cut` fewer parameters than the baseline at an accuracy ratio of at least `min_quality`."""

  variant: str
  min_cut: float
  min_quality: float
  label: str = ""  # how the variant reads in the ledger

  def judged_on(self) -> str:
    return (
      f"1 - params / baseline params >= {self.min_cut:.0%} and accuracy ratio >= {self.min_quality:g}; "
      "per-seed ratios, mean ± std"
    )

  def __call__(self, folder: str) -> list[Measured]:
    return _each_variant(folder, (self.variant,), self._one)

  def _one(self, r: "Results", v: str) -> Measured:
    params = r.rows[v]["num_params"] / r.rows[r.baseline]["num_params"]
    q = r.ratio(v, "eval/accuracy")
    ok = 1 - params >= self.min_cut and q[0] >= self.min_quality
    return Measured(f"{self.label or v}: params x{params:.3f}, accuracy x{_pm(*q, '{:.3f}')}", r.scale(v), _verdict(ok))


@dataclasses.dataclass(frozen=True)
class AccuracyGain:
  """An accuracy at least `min_gain` (relative) above the baseline's."""

  variants: tuple[str, ...]
  min_gain: float

  def judged_on(self) -> str:
    return f"accuracy ratio - 1 >= {self.min_gain:.0%}; per-seed ratios, mean ± std"

  def __call__(self, folder: str) -> list[Measured]:
    return _each_variant(folder, self.variants, self._one)

  def _one(self, r: "Results", v: str) -> Measured:
    q = r.ratio(v, "eval/accuracy")
    return Measured(
      f"{v}: accuracy {100 * (q[0] - 1):+.1f}% (± {100 * q[1]:.1f}) vs {r.baseline}",
      r.scale(v),
      _verdict(q[0] - 1 >= self.min_gain),
    )


@dataclasses.dataclass(frozen=True)
class LossGain:
  """A claimed gain with no metric ("x2.3 long-text ability"): at least a lower loss than the baseline."""

  variant: str
  claimed: float

  def judged_on(self) -> str:
    return f"baseline loss / loss > 1 (the x{self.claimed:g} names no metric); per-seed ratios, mean ± std"

  def __call__(self, folder: str) -> list[Measured]:
    return _each_variant(folder, (self.variant,), self._one)

  def _one(self, r: "Results", v: str) -> Measured:
    q = r.ratio(v, "eval/loss", invert=True)
    return Measured(
      f"{v}: dense loss / loss {_pm(*q, '{:.3f}')}",
      r.scale(v),
      f"a gain, not measurable as x{self.claimed:g}" if q[0] > 1 else NOT_AT_SCALE,
    )


@dataclasses.dataclass(frozen=True)
class Int8Size:
  """The INT8 model's bytes on disk at most `max_ratio` of the float model's, with its accuracy at least
  `min_quality` of the float model's (the int8 evaluator's sizes and scores, r1jax/evaluators.py)."""

  variants: tuple[str, ...]  # float-trained runs
  max_ratio: float
  min_quality: float

  def judged_on(self) -> str:
    return (
      f"INT8 / float bytes on disk <= {self.max_ratio:g} and INT8 / float accuracy >= {self.min_quality:g} (weights "
      "rounded after training); per-seed ratios, mean ± std"
    )

  def __call__(self, folder: str) -> list[Measured]:
    return _each_variant(folder, self.variants, self._one)

  def _one(self, r: "Results", v: str) -> Measured:
    size = r.per_seed((v, "eval/int8/disk_bytes"), (v, "eval/float/disk_bytes"))
    q = r.per_seed((v, "eval/int8/accuracy"), (v, "eval/accuracy"))
    return Measured(
      f"{v}: size x{size[0]:.3f}, accuracy x{_pm(*q, '{:.4f}')}",
      r.scale(v),
      _verdict(size[0] <= self.max_ratio and q[0] >= self.min_quality),
    )


@dataclasses.dataclass(frozen=True)
class QatDrop:
  """After quantization-aware training, the INT8 model's accuracy at most `max_drop` (relative) below the float
  model's (its float-trained counterpart, evaluated in float); the same for plain rounding beside it."""

  pairs: tuple[tuple[str, str], ...]  # (QAT variant, float variant)
  max_drop: float

  def judged_on(self) -> str:
    return f"1 - QAT model's INT8 accuracy / float model's accuracy <= {self.max_drop:.1%}; per-seed ratios, mean ± std"

  def __call__(self, folder: str) -> list[Measured]:
    r = Results.load(folder)
    return [] if r is None else [self._one(r, q, f) for q, f in self.pairs if q in r.rows and f in r.rows]

  def _one(self, r: "Results", qat: str, float_: str) -> Measured:
    q = r.per_seed((qat, "eval/int8/accuracy"), (float_, "eval/accuracy"))
    ptq = r.per_seed((float_, "eval/int8/accuracy"), (float_, "eval/accuracy"))
    return Measured(
      f"{qat}: accuracy drop {100 * (1 - q[0]):+.2f}% (± {100 * q[1]:.2f}) vs {float_} in float; rounding "
      f"{float_} without QAT: {100 * (1 - ptq[0]):+.2f}%",
      r.scale(qat),
      _verdict(1 - q[0] <= self.max_drop),
    )


@dataclasses.dataclass(frozen=True)
class DeepSeekCost:
  """DeepSeek's stated cost of a release against V3.2 at 1M tokens (`stated`: release -> (KV cache fraction, FLOP
  fraction)), counted from the published attention shapes (r1jax/lab/flops.deepseek_decode_cost) and, beside it,
  measured at our sizes by benchmarks/decode.py in the folder (`variant` against `baseline`: cache bytes and the
  decoding step's time at the longest context). Supported where each count is within `tolerance` x the statement."""

  stated: tuple[tuple[str, float, float], ...]
  variant: str = "v4"
  baseline: str = "mla_sparse"
  tolerance: float = 1.25

  def judged_on(self) -> str:
    return (
      f"KV-cache numbers and attention FLOPs per token at 1M tokens counted from the published shapes, within "
      f"{self.tolerance:g}x of the stated fractions; measured at our sizes beside it (benchmarks/decode.py: "
      f"{self.variant} / {self.baseline}, cache bytes and decode step time, the longest context)"
    )

  def __call__(self, folder: str) -> list[Measured]:
    from r1jax.lab.flops import deepseek_decode_cost

    d = _benchmark_report(folder)
    if d is None or not {self.variant, self.baseline} <= set(d["variants"]):
      return []
    runs, C, m = d["variants"], d["contexts"][-1], d["model"]
    cache = runs[self.variant]["cache_bytes"][-1] / runs[self.baseline]["cache_bytes"][-1]
    step = runs[self.variant]["step_sec_b1"][-1] / runs[self.baseline]["step_sec_b1"][-1]
    ours = (
      f"ours ({self.variant} / {self.baseline}, {C:,} cached tokens): cache {cache:.3f}, decode step time {step:.2f}"
    )
    scale = f"{m['layers']} layers x {m['d_model']} wide, {m['heads']} heads, batch 1, {m['dtype']}, {d['backend']}"
    v32 = deepseek_decode_cost("V3.2", 2**20)
    out = []
    for release, kv, fl in self.stated:
      mine = deepseek_decode_cost(release, 2**20)
      counted = (mine["cache"] / v32["cache"], mine["flops"] / v32["flops"])
      ok = all(c <= self.tolerance * s for c, s in zip(counted, (kv, fl)))
      out.append(
        Measured(
          f"{release} at 1M, counted: cache {counted[0]:.3f} (stated {kv:g}), attention FLOPs {counted[1]:.3f} "
          f"(stated {fl:g}); {ours}",
          scale,
          _verdict(ok),
        )
      )
    return out


@dataclasses.dataclass(frozen=True)
class Claim:
  """One numeric claim of a seed article, declared once: the driver's report and the ledger both judge it here."""

  source: str  # seed file(s)
  quote: str  # the claim in the seed's words
  english: str
  driver: str  # experiments/<driver>.py, whose results folder is <results root>/<driver>
  task: str  # the task folder inside it ("" for a single-task driver)
  measure: Callable[[str], list[Measured]]  # a measure above: metric, statistic and threshold
  script: str = ""  # what writes the results folder, when not experiments/<driver>.py (a benchmark)

  @property
  def experiment(self) -> str:
    return f"{self.driver}/{self.task}" if self.task else self.driver

  @property
  def command(self) -> str:
    return f"python {self.script or f'experiments/{self.driver}.py'}"


SPARSE = "sparse_attn_ablation"
# the learned selectors (the anchors' recipes; topk16_sample where a run holds it)
SPARSE_VARIANTS = ("nsa", "dsa", "csa", "topk16_sample", "block4x4_sample")
LONG = "attention_scaling"  # benchmarks/attention_scaling.py: one layer at 4k-64k, the papers' sizes
LONG_VARIANTS = ("nsa", "dsa256", "dsa2048", "block")
CLAIMS = (
  Claim(
    "002, 004",
    "在保持98%精度的情况下,推理速度提升3.2倍",
    "sparse attention: 3.2x faster at >= 98% accuracy",
    SPARSE,
    "mqar",
    SpeedQuality(SPARSE_VARIANTS, 3.2, 0.98, "accuracy"),
  ),
  Claim(
    "002, 004",
    "在保持98%精度的情况下,推理速度提升3.2倍",
    "(the same claim on passkey retrieval)",
    SPARSE,
    "passkey",
    SpeedQuality(SPARSE_VARIANTS, 3.2, 0.98, "accuracy"),
  ),
  Claim(
    "002, 004",
    "在保持98%精度的情况下,推理速度提升3.2倍",
    "(the same claim on text)",
    SPARSE,
    "shakespeare",
    SpeedQuality(SPARSE_VARIANTS, 3.2, 0.98, "loss"),
  ),
  Claim(
    "002, 004",
    "在保持98%精度的情况下,推理速度提升3.2倍",
    "(the same claim on decoding speed)",
    "decode",
    "",
    DecodeSpeed(("sparse", "nsa", "block_sparse"), 3.2),
    "benchmarks/decode.py",
  ),
  Claim(
    "002, 004",
    "在保持98%精度的情况下,推理速度提升3.2倍",
    "(the same claim on a GPU: GPT-2-small-sized decoding at 64k)",
    "gpu_check",
    "",
    GpuDecode(("gpt2_small:dsa", "gpt2_small:nsa"), 3.2),
    "benchmarks/gpu_check.py",
  ),
  Claim(
    "002, 004",
    "在保持98%精度的情况下,推理速度提升3.2倍",
    "(the same claim on one layer at long context)",
    LONG,
    "",
    LongContext(LONG_VARIANTS, "speed", 3.2),
    "benchmarks/attention_scaling.py",
  ),
  Claim(
    "002",
    "计算复杂度从O(n²)降至O(n log n)",
    "sparse attention: O(n^2) -> O(n log n)",
    SPARSE,
    "mqar",
    Complexity(SPARSE_VARIANTS),
  ),
  Claim(
    "002",
    "计算复杂度从O(n²)降至O(n log n)",
    "(the same claim at the papers' sizes, 4k-64k)",
    LONG,
    "",
    LongContext(LONG_VARIANTS, "slope", 0.1),
    "benchmarks/attention_scaling.py",
  ),
  Claim(
    "003",
    "稀疏注意力架构将计算量降低65%",
    "sparse attention cuts compute by 65%",
    SPARSE,
    "mqar",
    ComputeCut(SPARSE_VARIANTS, 0.65),
  ),
  Claim(
    "003",
    "稀疏注意力架构将计算量降低65%",
    "(the same claim at the papers' sizes, longest T)",
    LONG,
    "",
    LongContext(LONG_VARIANTS, "cut", 0.65),
    "benchmarks/attention_scaling.py",
  ),
  Claim(
    "001",
    "内存复用技术:通过共享K/V缓存,将连续推理的内存占用降低60%",
    "sharing the K/V cache cuts inference memory by 60%",
    "kv_cache_ablation",
    "shakespeare",
    CacheCut(("gqa2", "mqa", "mla", "mla_sparse"), 0.6, 0.98),
  ),
  Claim(
    "000",
    "推理速度提升3-5倍,而准确率损失不足1%",
    "MoE: 3-5x faster inference than dense, < 1% accuracy loss",
    "moe_ablation",
    "",
    SpeedAtLoss(("top2", "top1", "deepseekmoe"), "dense_8x", 3.0, 0.01),
  ),
  Claim(
    "000",
    "推理速度提升3-5倍,而准确率损失不足1%",
    "(the same claim on decoding speed: top-2 of 8 experts, each as wide as the dense FFN)",
    "decode",
    "",
    DecodeSpeed(("moe",), 3.0),
    "benchmarks/decode.py",
  ),
  Claim(
    "000",
    "采用8位整数量化,将模型体积压缩至原大小的1/4",
    "INT8 quantization compresses the model to 1/4 of its size (precision kept)",
    "int8_ablation",
    "",
    Int8Size(("float", "mla_float"), 0.275, 0.99),
  ),
  Claim(
    "001",
    "量化感知训练:通过模拟量化误差反向传播,使模型在INT8量化后准确率仅下降1.2%",
    "quantization-aware training: only 1.2% accuracy drop after INT8 quantization",
    "int8_ablation",
    "",
    QatDrop((("qat", "float"), ("mla_qat", "mla_float")), 0.012),
  ),
  Claim(
    "001",
    "参数量减少35%的同时,保持了与BERT-large相当的语义理解能力",
    "local lower / global upper layers: 35% fewer parameters at the same quality",
    "hierarchical_routing_ablation",
    "listops",
    FewerParams("LLGG", 0.35, 0.98, "LLGG (local, local, global, global)"),
  ),
  Claim(
    "V4 report",
    "at 1M tokens, 27% of V3.2's per-token FLOPs and 10% of its KV cache (V4-Pro); 10% and 7% (V4-Flash)",
    "DeepSeek-V4's compressed attentions: a fraction of V3.2's KV cache and FLOPs at 1M tokens",
    "decode",
    "v4",
    DeepSeekCost((("V4-Flash", 0.07, 0.10), ("V4-Pro", 0.10, 0.27))),
    script="benchmarks/decode.py --contexts=16384,65536 --variants=dense,sparse,mla,mla_sparse,csa,hca,v4 "
    "--out=results/decode/v4/report.json",
  ),
  Claim(
    "004",
    "Attention_final = β·Local_Att + (1-β)·Global_Att ... 证明题解答准确率提升27%",
    "learned local/global fusion: +27% accuracy",
    "hierarchical_routing_ablation",
    "listops",
    AccuracyGain(("fusion_token", "fusion_head"), 0.27),
  ),
  Claim(
    "003",
    "引入时间维度和空间维度的注意力权重,使长文本处理能力提升2.3倍",
    "time + space ('three-dimensional') attention: long-text ability x2.3",
    "attention3d_ablation",
    "text",
    LossGain("time_channel", 2.3),
  ),
)
TABLE_HEAD = ["| seed | claim | experiment | judged on | measured | scale | verdict |", "|---|---|---|---|---|---|---|"]


def rows(claim: Claim, driver_folder: str) -> list[str]:
  """The claim's table rows from the results folder of its driver (`<results root>/<driver>`)."""
  found = claim.measure(os.path.join(driver_folder, claim.task))
  head = f"| {claim.source} | {claim.english} ({claim.quote}) | {claim.experiment} | {claim.measure.judged_on()} |"
  if not found:
    return [f"{head} - | - | {NOT_TESTED}: run `{claim.command}` |"]
  return [f"{head} {m.value} | {m.scale} | {m.verdict} |" for m in found]


def section(driver: str, driver_folder: str) -> str:
  """The driver's seed claims judged from its results folder, as its report prints them ("" if it has none)."""
  mine = [c for c in CLAIMS if c.driver == driver]
  if not mine:
    return ""
  lines = [
    "## Seed claims, judged (declared in r1jax/lab/claims.py; `python -m r1jax.claims` gives the same verdicts)",
    "",
  ]
  lines += TABLE_HEAD + [row for c in mine for row in rows(c, driver_folder)]
  lines += ["", "What produced the results these verdicts read (r1jax/provenance.py):", ""]
  lines += provenance_rows(tuple(mine), os.path.dirname(os.path.abspath(driver_folder)))
  return "\n".join(lines)


def sources(folder: str) -> list[dict | None]:
  """The provenance of everything a claim reads in an experiment's task folder: each finished run (results.json)
  and the measurements beside them (the driver's report.json, or a benchmark's own report.json in the folder)."""
  out = []
  if os.path.exists(os.path.join(folder, "results.json")):
    out += list(load_summary(folder).get("runs_provenance", {}).values()) or [None]
  own = os.path.join(folder, "report.json")  # a benchmark's; else the driver's beside its task folders
  for path in (own,) if os.path.exists(own) else (os.path.join(os.path.dirname(folder), "report.json"),):
    if os.path.exists(path):
      with open(path) as f:
        out.append(json.load(f).get("provenance"))
  return out


def provenance_rows(claims: tuple["Claim", ...], results_root: str) -> list[str]:
  """One row per experiment the claims read: the commit, jax version and hardware behind its results."""
  lines = ["| experiment | produced by |", "|---|---|"]
  for claim in {c.experiment: c for c in claims}.values():
    found = sources(os.path.join(results_root, claim.driver, claim.task))
    lines.append(f"| {claim.experiment} | {describe(found) if found else NOT_TESTED} |")
  return lines


def ledger(results_root: str) -> str:
  """CLAIMS.md's text from the results folders under `results_root`."""
  lines = [
    "# Claims ledger",
    "",
    "Written by `python -m r1jax.claims` from the results folders of the experiments (never by hand); rerun it",
    "after rerunning an experiment. The seed articles are five popular Chinese write-ups of DeepSeek-R1; each",
    "claim is quoted in their words. Values are ratios to the baseline measured in the same run (per seed, then",
    "mean ± std over seeds). Each claim's metric, statistic and threshold are declared once, in",
    "`r1jax/lab/claims.py`; the drivers' reports judge them from the same declaration.",
    "",
  ]
  lines += TABLE_HEAD + [row for c in CLAIMS for row in rows(c, os.path.join(results_root, c.driver))]
  lines += [
    "",
    "The seeds give no number for context-aware weight updates (`W_t = a W_(t-1) + (1-a) f(context_t)`);",
    "`python experiments/context_rnn_ablation.py` measures them against attention (MQAR recall, text loss).",
    "",
    "## Where the results came from",
    "",
    "The code's commit, the jax version and the hardware of the runs and measurements each experiment's verdicts",
    "read (r1jax/provenance.py; each result.json holds the rest: every package version, XLA flags, time).",
    "`python -m r1jax.claims --check` names the results made with other versions than the installed ones.",
    "",
  ]
  lines += provenance_rows(CLAIMS, results_root)
  return "\n".join(lines) + "\n"


def check(results_root: str) -> list[str]:
  """The results under `results_root` made with other package versions than the installed ones (or with none
  recorded): one line each, '<file>: jax 0.10.2 (installed 0.10.3), ...'."""
  installed, out = versions(), []
  for root, dirs, files in sorted(os.walk(results_root)):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "seed")))
    for name in sorted(f for f in files if f in ("results.json", "report.json")):
      path = os.path.join(root, name)
      with open(path) as f:
        saved = json.load(f)
      records = {"": saved.get("provenance")}
      records.update({f" {label}": p for label, p in saved.get("runs_provenance", {}).items()})
      for label, record in records.items():
        d = drift(record, installed)
        if d:
          what = ", ".join(
            "no provenance" if k == "provenance" else f"{k} {a} (installed {b})" for k, (a, b) in d.items()
          )
          out.append(f"{os.path.relpath(path, results_root)}{label}: {what}")
  return out


def main(argv):
  del argv
  if flags.FLAGS.check:
    drifted = check(os.path.abspath(flags.FLAGS.results))
    print("\n".join(drifted) if drifted else "every result was made with the installed versions")
    sys.exit(1 if drifted else 0)
  text = ledger(os.path.abspath(flags.FLAGS.results))
  write_text(flags.FLAGS.out, text)
  print(text)


def cli() -> None:
  """The command line (`python -m r1jax.claims`)."""
  flags.DEFINE_string("results", "results", "the results root (one folder per experiment)")
  flags.DEFINE_string("out", "CLAIMS.md", "where the ledger goes")
  flags.DEFINE_bool("check", False, "instead: name the results made with other package versions than installed")
  entry.run(main)


if __name__ == "__main__":
  cli()
