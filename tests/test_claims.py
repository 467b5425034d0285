"""Claims ledger: per-seed ratios, verdicts from measured values, and 'not tested' where results are missing."""

import json
import os

import numpy as np
import pytest

from r1jax.lab import claims


def _scales(runs, kind="mqar"):
  """results.json's "scale" of each finished run (reporting.scale)."""
  return {
    label: {"num_layers": 2, "d_model": 64, "data": kind, "seq_len": 64, "steps": 100, "backend": "cpu"}
    for label, run in runs.items()
    if "failed" not in run
  }


def _write_task(folder, baseline, runs, kind="mqar"):
  """A results folder as ablation.run writes it: results.json (rows, runs and their scale)."""
  os.makedirs(folder, exist_ok=True)
  variants = list(dict.fromkeys(label.split("/")[0] for label in runs))
  rows = [{"variant": v, "num_params": runs[f"{v}/seed0"]["num_params"]} for v in variants]
  with open(os.path.join(folder, "results.json"), "w") as f:
    json.dump({"name": "x", "baseline": baseline, "rows": rows, "runs": runs, "scale": _scales(runs, kind)}, f)


def _run(acc, loss, eval_tps, params=1000):
  return {"eval/accuracy": acc, "eval/loss": loss, "perf/eval_tokens_per_sec": eval_tps, "num_params": params}


def test_speed_quality_uses_per_seed_ratios_and_the_claimed_thresholds(tmp_path):
  runs = {
    "dense/seed0": _run(0.9, 1.0, 100),
    "dense/seed1": _run(0.8, 1.0, 200),
    "topk16/seed0": _run(0.9, 1.0, 400),
    "topk16/seed1": _run(0.8, 1.0, 600),  # 4x and 3x: mean 3.5
    "block8x2/seed0": _run(0.45, 1.0, 1000),
    "block8x2/seed1": _run(0.4, 1.0, 2000),
  }  # 10x at half
  _write_task(tmp_path / "sparse" / "mqar", "dense", runs)
  found = claims.SpeedQuality(("topk16", "block8x2"), 3.2, 0.98, "accuracy")(str(tmp_path / "sparse" / "mqar"))
  assert [m.verdict for m in found] == [claims.SUPPORTED, claims.NOT_AT_SCALE]
  assert f"3.50 ± {np.std([4.0, 3.0], ddof=1):.2f}x" in found[0].value and "quality 1.000" in found[0].value
  assert "2 layers x 64 wide, mqar T=64, 100 steps, 2 seeds, cpu" == found[0].scale


def test_moe_claim_is_measured_against_the_dense_model_of_equal_total_parameters(tmp_path):
  runs = {"dense/seed0": _run(0, 2.0, 100), "dense_8x/seed0": _run(0, 1.0, 100), "top2/seed0": _run(0, 1.005, 350)}
  _write_task(tmp_path / "moe_ablation", "dense", runs)
  (m,) = claims.SpeedAtLoss(("top2",), "dense_8x", 3.0, 0.01)(str(tmp_path / "moe_ablation"))
  assert "3.50x inference" in m.value and "+0.50%" in m.value and m.verdict == claims.SUPPORTED


def test_ledger_lists_every_claim_and_marks_missing_results_not_tested(tmp_path):
  text = claims.ledger(str(tmp_path))  # an empty results root
  table = [line for line in text.splitlines() if line.startswith(tuple(f"| {c.source} |" for c in claims.CLAIMS))]
  assert len(table) == len(claims.CLAIMS)
  benchmarks = ("| decode |", "| decode/v4 |", "| attention_scaling |", "| gpu_check |")
  assert all(
    claims.NOT_TESTED in line and "run `python experiments/" in line
    for line in table
    if not any(b in line for b in benchmarks)
  )
  assert sum("| decode/v4 |" in line and "run `python benchmarks/decode.py --contexts=" in line for line in table) == 1
  assert sum("| gpu_check |" in line and "run `python benchmarks/gpu_check.py`" in line for line in table) == 1
  assert sum("| decode |" in line and "run `python benchmarks/decode.py`" in line for line in table) == 2
  long = "| attention_scaling |"
  assert sum(long in line and "run `python benchmarks/attention_scaling.py`" in line for line in table) == 3


@pytest.mark.parametrize("step_sec,verdict", [(0.3, claims.SUPPORTED), (0.33, claims.NOT_AT_SCALE)])
def test_decode_speed_verdict_from_the_benchmark_at_its_longest_context(tmp_path, step_sec, verdict):
  os.makedirs(tmp_path / "decode")
  saved = {
    "backend": "cpu (cpu)",
    "contexts": [1024, 4096],
    "variants": {"dense": {"step_sec_b1": [0.1, 1.0]}, "sparse": {"step_sec_b1": [1.0, step_sec]}},
    "model": {"layers": 2, "d_model": 256, "heads": 4, "budget": 128, "dtype": "float32", "batch": 8},
  }
  with open(tmp_path / "decode" / "report.json", "w") as f:
    json.dump(saved, f)
  (m,) = claims.DecodeSpeed(("sparse", "nsa"), 3.2)(str(tmp_path / "decode"))  # nsa not measured: no row
  assert m.verdict == verdict and "4,096 cached tokens" in m.scale and f"{1 / step_sec:.2f}x" in m.value


@pytest.mark.parametrize(
  "gpu_numbers, dsa_sec, verdict",
  [(True, 0.25, claims.SUPPORTED), (True, 0.5, claims.NOT_AT_SCALE), (False, 0.25, None)],
)
def test_gpu_decode_reads_only_gpu_timings_at_the_longest_context(tmp_path, gpu_numbers, dsa_sec, verdict):
  os.makedirs(tmp_path / "gpu_check")
  row = lambda name, C, sec: {"program": f"decode {name} C={C}", "sec": sec}  # noqa: E731
  saved = {
    "device": "NVIDIA H100 80GB HBM3",
    "gpu_numbers": gpu_numbers,
    "decode": [row("gpt2_small", 16384, 1.0), row("gpt2_small:dsa", 16384, 2.0), row("gpt2_small", 65536, 1.0)]
    + [row("gpt2_small:dsa", 65536, dsa_sec), {"program": "decode gpt2_small:nsa C=65536", "error": "OOM"}],
  }
  with open(tmp_path / "gpu_check" / "report.json", "w") as f:
    json.dump(saved, f)
  found = claims.GpuDecode(("gpt2_small:dsa", "gpt2_small:nsa"), 3.2)(str(tmp_path / "gpu_check"))
  if verdict is None:  # a compile-only report times nothing
    assert found == []
    return
  (m,) = found  # nsa failed: no row
  assert m.verdict == verdict and "65,536 cached tokens" in m.scale and "GPU numbers" in m.scale
  assert f"{1 / dsa_sec:.2f}x" in m.value


def _long_context_report(folder, nsa_fwd_sec, nsa_flops):
  """A benchmarks/attention_scaling.py report: dense and NSA at 4k and 64k (NSA's forward+backward n/a at 64k)."""
  os.makedirs(folder)
  cell = lambda *sec: [{"sec": s} for s in sec]  # noqa: E731
  flops = lambda *f: [{"total": x} for x in f]  # noqa: E731
  saved = {
    "backend": "cpu (cpu)",
    "lengths": [4096, 65536],
    "model": {"d_model": 128, "heads": 2, "batch": 1, "dtype": "float32"},
    "variants": {
      "dense": {"fwd": cell(1.0, 10.0), "fwd+bwd": cell(3.0, 30.0), "flops": flops(16.0, 4096.0)},
      "nsa": {"fwd": cell(2.0, nsa_fwd_sec), "fwd+bwd": cell(6.0, float("nan")), "flops": flops(8.0, nsa_flops)},
    },
  }
  with open(folder / "report.json", "w") as f:
    json.dump(saved, f)


@pytest.mark.parametrize("fwd_sec,verdict", [(3.0, claims.SUPPORTED), (3.2, claims.NOT_AT_SCALE)])
def test_long_context_speed_reads_the_longest_length_measured(tmp_path, fwd_sec, verdict):
  _long_context_report(tmp_path / "long", fwd_sec, 1000.0)
  (m,) = claims.LongContext(("nsa", "dsa256"), "speed", 3.2)(str(tmp_path / "long"))  # dsa256 not measured: no row
  assert m.verdict == verdict and "T=65,536" in m.scale and f"{10 / fwd_sec:.2f}x dense's speed forward" in m.value


@pytest.mark.parametrize("flops,verdict", [(1400.0, claims.SUPPORTED), (1500.0, claims.NOT_AT_SCALE)])
def test_long_context_compute_cut_and_slope_from_the_definitions_flops(tmp_path, flops, verdict):
  _long_context_report(tmp_path / "long", 3.0, flops)
  (cut,) = claims.LongContext(("nsa",), "cut", 0.65)(str(tmp_path / "long"))
  assert cut.verdict == verdict and f"{1 - flops / 4096:.0%} fewer" in cut.value
  (slope,) = claims.LongContext(("nsa",), "slope", 0.1)(str(tmp_path / "long"))  # 8 -> 1000+ over 16x: ~T^1.7
  assert slope.verdict == claims.NOT_AT_SCALE and "T=4,096..65,536" in slope.scale


@pytest.mark.parametrize(
  "cache_bytes,loss,verdict",
  [(400, 1.0, claims.SUPPORTED), (420, 1.0, claims.NOT_AT_SCALE), (400, 1.03, claims.NOT_AT_SCALE)],
)
def test_cache_cut_needs_the_cut_and_the_quality(tmp_path, cache_bytes, loss, verdict):
  _write_task(tmp_path / "kv" / "text", "mha", {"mha/seed0": _run(0, 1.0, 1), "mla/seed0": _run(0, loss, 1)})
  with open(tmp_path / "kv" / "report.json", "w") as f:
    json.dump(
      {"decode": {"variants": {"mha": {"cache_bytes_per_token": 1000}, "mla": {"cache_bytes_per_token": cache_bytes}}}},
      f,
    )
  (m,) = claims.CacheCut(("mla", "mqa"), 0.6, 0.98)(str(tmp_path / "kv" / "text"))
  assert m.verdict == verdict and f"{1 - cache_bytes / 1000:.0%} smaller cache than mha" in m.value


@pytest.mark.parametrize("slope, verdict", [(1.05, claims.SUPPORTED), (1.8, claims.NOT_AT_SCALE)])
def test_complexity_verdict_from_the_saved_flops_slope(tmp_path, slope, verdict):
  os.makedirs(tmp_path / "sparse" / "mqar")
  T = [512, 1024, 2048, 4096, 8192]
  cx = {
    v: {"lengths": T, "flops": [float(t) ** s for t in T], "slope": s} for v, s in (("dense", 2.0), ("topk16", slope))
  }
  with open(tmp_path / "sparse" / "report.json", "w") as f:
    json.dump({"complexity": cx}, f)
  found = claims.Complexity(("topk16",))(str(tmp_path / "sparse" / "mqar"))
  assert [m.verdict for m in found] == ["-", verdict]


@pytest.mark.parametrize(
  "measure,variant,base,run,verdict",
  [
    # MoE against dense_8x: >= 3x inference speed and < 1% more loss, both needed
    (
      claims.SpeedAtLoss(("top2",), "dense_8x", 3.0, 0.01),
      "top2",
      _run(0, 1.0, 100),
      _run(0, 1.005, 310),
      claims.SUPPORTED,
    ),
    (
      claims.SpeedAtLoss(("top2",), "dense_8x", 3.0, 0.01),
      "top2",
      _run(0, 1.0, 100),
      _run(0, 1.005, 290),
      claims.NOT_AT_SCALE,
    ),
    (
      claims.SpeedAtLoss(("top2",), "dense_8x", 3.0, 0.01),
      "top2",
      _run(0, 1.0, 100),
      _run(0, 1.02, 500),
      claims.NOT_AT_SCALE,
    ),
    # fusion: >= 27% more accuracy than global attention
    (claims.AccuracyGain(("fusion_token",), 0.27), "fusion_token", _run(0.5, 1, 1), _run(0.64, 1, 1), claims.SUPPORTED),
    (
      claims.AccuracyGain(("fusion_token",), 0.27),
      "fusion_token",
      _run(0.5, 1, 1),
      _run(0.62, 1, 1),
      claims.NOT_AT_SCALE,
    ),
    # LLGG: >= 35% fewer parameters at >= 98% of the accuracy
    (claims.FewerParams("LLGG", 0.35, 0.98), "LLGG", _run(0.5, 1, 1, 1000), _run(0.5, 1, 1, 600), claims.SUPPORTED),
    (claims.FewerParams("LLGG", 0.35, 0.98), "LLGG", _run(0.5, 1, 1, 1000), _run(0.5, 1, 1, 700), claims.NOT_AT_SCALE),
    (claims.FewerParams("LLGG", 0.35, 0.98), "LLGG", _run(0.5, 1, 1, 1000), _run(0.48, 1, 1, 600), claims.NOT_AT_SCALE),
    # sparse attention: >= 3.2x speed at >= 98% of the accuracy
    (
      claims.SpeedQuality(("topk16",), 3.2, 0.98, "accuracy"),
      "topk16",
      _run(0.9, 1, 100),
      _run(0.89, 1, 330),
      claims.SUPPORTED,
    ),
    (
      claims.SpeedQuality(("topk16",), 3.2, 0.98, "accuracy"),
      "topk16",
      _run(0.9, 1, 100),
      _run(0.87, 1, 330),
      claims.NOT_AT_SCALE,
    ),
    (
      claims.SpeedQuality(("topk16",), 3.2, 0.98, "loss"),
      "topk16",
      _run(0, 2.0, 100),
      _run(0, 2.1, 330),
      claims.NOT_AT_SCALE,
    ),
    # the seed's "x2.3 long text": at least a lower loss
    (
      claims.LossGain("time_channel", 2.3),
      "time_channel",
      _run(0, 2.0, 1),
      _run(0, 1.9, 1),
      "a gain, not measurable as x2.3",
    ),
    (claims.LossGain("time_channel", 2.3), "time_channel", _run(0, 2.0, 1), _run(0, 2.1, 1), claims.NOT_AT_SCALE),
  ],
)
def test_each_measure_gives_its_verdict_on_either_side_of_its_threshold(tmp_path, measure, variant, base, run, verdict):
  baseline = getattr(measure, "baseline", "base")
  _write_task(
    tmp_path / "task",
    "base",
    {"base/seed0": base, f"{variant}/seed0": run}
    if baseline == "base"
    else {"base/seed0": base, f"{baseline}/seed0": base, f"{variant}/seed0": run},
  )
  (m,) = measure(str(tmp_path / "task"))
  assert m.verdict == verdict, m.value


@pytest.mark.parametrize("dense_flops,verdict", [(1000.0, claims.SUPPORTED), (900.0, claims.NOT_AT_SCALE)])
def test_compute_cut_verdict_on_either_side_of_65_percent(tmp_path, dense_flops, verdict):
  os.makedirs(tmp_path / "sparse" / "mqar")
  cx = {"dense": {"lengths": [512], "flops": [dense_flops]}, "topk16": {"lengths": [512], "flops": [340.0]}}
  with open(tmp_path / "sparse" / "report.json", "w") as f:
    json.dump({"complexity": cx}, f)
  (m,) = claims.ComputeCut(("topk16",), 0.65)(str(tmp_path / "sparse" / "mqar"))
  assert m.verdict == verdict  # 66% fewer FLOPs / 62% fewer


def test_a_failed_seed_is_left_out_of_the_ratios_and_the_scale(tmp_path):
  runs = {
    "dense/seed0": _run(0.9, 1.0, 100),
    "dense/seed1": _run(0.8, 1.0, 200),
    "topk16/seed0": _run(0.9, 1.0, 400),
    "topk16/seed1": {"failed": "train step 3: loss=nan"},
  }
  os.makedirs(tmp_path / "task")
  with open(tmp_path / "task" / "results.json", "w") as f:  # the failed run has no scale
    json.dump(
      {
        "name": "x",
        "baseline": "dense",
        "rows": [{"variant": "dense", "num_params": 1000}, {"variant": "topk16", "num_params": 1000}],
        "runs": runs,
        "scale": _scales(runs),
      },
      f,
    )
  (m,) = claims.SpeedQuality(("topk16",), 3.2, 0.98, "accuracy")(str(tmp_path / "task"))
  assert "topk16: 4.00x" in m.value and ", 1 seeds," in m.scale and m.verdict == claims.SUPPORTED


def _provenance(jax_version: str, commit: str = "a" * 40, cores: int = 2) -> dict:
  from r1jax import provenance

  return {
    "commit": commit,
    "dirty": False,
    "versions": {**provenance.versions(), "jax": jax_version},
    "backend": "cpu",
    "device_kind": "cpu",
    "devices": 1,
    "cpu": "AMD EPYC",
    "cores": cores,
  }


def test_the_ledger_names_what_produced_each_experiments_results_and_a_mixture_as_one(tmp_path):
  """The provenance section: one commit/jax/hardware line per experiment, each distinct one counted in a mixture,
  'not recorded' for results written before provenance existed."""
  from r1jax import provenance

  installed = provenance.versions()["jax"]
  same, other = _provenance(installed), _provenance("0.0.1", commit="b" * 40, cores=16)
  assert provenance.describe([same, same]) == f"commit aaaaaaa, jax {installed}, cpu: AMD EPYC, 2 cores"
  assert provenance.describe([same, other, None]) == (
    f"mixture: 1 x commit aaaaaaa, jax {installed}, cpu: AMD EPYC, 2 cores; 1 x commit bbbbbbb, jax 0.0.1, cpu: AMD "
    "EPYC, 16 cores; 1 x not recorded (written before r1jax recorded provenance; rerun to record it)"
  )
  runs = {f"{v}/seed0": _run(0.9, 1.0, 100.0) for v in ("dense", "nsa")}
  _write_task(tmp_path / "sparse_attn_ablation" / "mqar", "dense", runs)
  saved = json.load(open(tmp_path / "sparse_attn_ablation" / "mqar" / "results.json"))
  saved["runs_provenance"] = {"dense/seed0": same, "nsa/seed0": same}
  json.dump(saved, open(tmp_path / "sparse_attn_ablation" / "mqar" / "results.json", "w"))
  row = [line for line in claims.ledger(str(tmp_path)).splitlines() if line.startswith("| sparse_attn_ablation/mqar |")]
  assert row == [f"| sparse_attn_ablation/mqar | commit aaaaaaa, jax {installed}, cpu: AMD EPYC, 2 cores |"]


def test_the_drift_check_names_the_results_made_with_another_jax(tmp_path):
  from r1jax import provenance

  for name, record in (
    ("ok", _provenance(provenance.versions()["jax"])),
    ("old", _provenance("0.0.1")),
    ("none", None),
  ):
    os.makedirs(tmp_path / name)
    json.dump(
      {"rows": [], "provenance": record, "runs_provenance": {"dense/seed0": record}},
      open(tmp_path / name / "results.json", "w"),
    )
  found = claims.check(str(tmp_path))
  assert found == [
    "none/results.json: no provenance",
    "none/results.json dense/seed0: no provenance",
    f"old/results.json: jax 0.0.1 (installed {provenance.versions()['jax']})",
    f"old/results.json dense/seed0: jax 0.0.1 (installed {provenance.versions()['jax']})",
  ]
