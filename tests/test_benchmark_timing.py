"""The benchmarks' timing and its check across runs: more calls for short cells (r1jax/lab/scaling.timed), and
benchmarks/attention_scaling.py's per-cell agreement of two reports (--compare)."""

import os
import sys

import pytest

from r1jax.config import ModelConfig
from r1jax.lab.scaling import timed

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import attention_scaling  # noqa: E402 (benchmarks/ is not a package)


@pytest.mark.parametrize("min_total_sec,more", [(0.0, False), (0.005, True)])
def test_short_calls_are_repeated_until_they_add_up_to_the_minimum(min_total_sec, more):
  cfg = ModelConfig(vocab_size=64, d_model=16, num_heads=2, mixer="attention")
  out = timed(cfg, 16, repeats=2, min_total_sec=min_total_sec)
  assert (out["calls"] > 2) == more and out["calls"] <= 100
  assert out["min_sec"] <= out["sec"] <= out["max_sec"]
  assert out["calls"] == 100 or out["calls"] * out["max_sec"] >= min_total_sec
  assert "steal" in out


def _report(dense, nsa):
  cells = lambda sec: {"fwd": [{"sec": s} for s in sec], "fwd+bwd": [{"sec": 3 * s} for s in sec]}  # noqa: E731
  return {"lengths": [4096, 65536], "variants": {"dense": cells(dense), "nsa": cells(nsa)}}


def test_two_reports_agree_per_cell_in_seconds_and_in_ratios_to_dense():
  # the second run: NSA at 64k 30% slower, dense at 4k 25% faster; four of eight times over 15%, and every ratio
  # to dense (4k: 2.0 against 2.5, 64k: 0.4 against 0.52)
  lines = attention_scaling.agreement(_report([1.0, 10.0], [2.0, 4.0]), _report([0.8, 10.0], [2.0, 5.2]))
  assert lines[0].startswith("4 of 8 cells' times within 15% of the other run's, 0 of 4 ratios to dense")
  rows = [line for line in lines if line.startswith("| 65536 | nsa | fwd |")]
  assert rows == ["| 65536 | nsa | fwd | 4000.0 (5200.0) | 30% * | 0.400 (0.520) | 30% * |"]


def test_the_same_report_agrees_with_itself_everywhere():
  report = _report([1.0, 10.0], [2.0, 4.0])
  assert attention_scaling.agreement(report, report)[0].startswith(
    "8 of 8 cells' times within 15% of the other run's, 4 of 4"
  )
