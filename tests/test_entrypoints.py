"""The experiment drivers and the benchmark run end to end (smoke settings, one CPU device)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SHAKESPEARE
from r1jax import claims

ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}


def _run(args, cwd=REPO):
  out = subprocess.run([sys.executable] + args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.parametrize("driver,variant", [("dense_baseline", "small"), ("mqar_dense", "d64")])
def test_driver_quick_run_prints_table(driver, variant, tmp_path):
  if driver == "dense_baseline" and not os.path.isfile(SHAKESPEARE):
    pytest.skip(f"real text data not found at {SHAKESPEARE}")
  out = _run([f"experiments/{driver}.py", "--quick", f"--variants={variant}", f"--results_dir={tmp_path}",
              "--config.train.progress=False"])
  assert f"| {variant} | 1 |" in out and os.path.exists(tmp_path / "results.md")


def test_benchmark_prints_ratios_against_the_first_size():
  out = _run(["benchmarks/train_step.py", "--sizes=1x32x2,2x32x2", "--steps=2", "--seq_len=16", "--batch=4"])
  rows = [line for line in out.splitlines() if line.startswith("| 1x32x2") or line.startswith("| 2x32x2")]
  assert len(rows) == 2 and rows[0].rstrip(" |").endswith("| 1 | 1")


def test_sparse_driver_runs_both_tasks_and_reports_the_claims(tmp_path):
  if not os.path.isfile(SHAKESPEARE):
    pytest.skip(f"real text data not found at {SHAKESPEARE}")
  res = tmp_path / "sparse_attn_ablation"
  out = _run(["experiments/sparse_attn_ablation.py", "--quick", "--seeds=0", "--variants=dense,topk16",
              f"--results_dir={res}", "--config.mqar.train.progress=False",
              "--config.shakespeare.train.progress=False"])
  for task in ("mqar", "shakespeare"):
    assert os.path.exists(res / task / "results.md")
    assert f"| {task} | topk16 |" in out
  assert "| topk16 | 1 |" in out and "mixer/recall" in out  # the indexer's recall diagnostic is a column
  assert "- topk16: slope" in out and os.path.exists(res / "report.md")
  complexity = json.load(open(res / "report.json"))["complexity"]  # what the claims ledger reads
  assert set(complexity) == {"dense", "topk16"} and 1.5 < complexity["dense"]["slope"] < 2.1
  rows = [line for line in claims.ledger(str(tmp_path)).splitlines() if "| sparse_attn_ablation/" in line]
  assert len(rows) == 5 and not any("not tested" in row for row in rows)  # dense's own complexity row too
  assert sum("topk16:" in row for row in rows) == 4


def test_hierarchical_driver_reports_claims_and_prints_betas(tmp_path):
  # ListOps only: which variants a task runs (routing only on ListOps) is test_ablation's task_plan test.
  out = _run(["experiments/hierarchical_routing_ablation.py", "--quick", "--seeds=0", "--tasks=listops",
              "--variants=global,fusion_token,routed25", f"--results_dir={tmp_path}",
              "--config.listops.train.progress=False"])
  assert "| listops | routed25 |" in out and "| listops | fusion_token | 1.005 |" in out
  assert "not supported at this scale" in out
  assert "### beta per layer: listops / fusion_token" in out and "mixer/routed_pos" in out
  assert os.path.exists(tmp_path / "listops" / "results.md") and os.path.exists(tmp_path / "report.md")


def test_scaling_benchmarks_print_ratios_and_crossover():
  """recurrence_scaling.py runs attention_scaling.py's sweep (one child process per measurement) with its variants."""
  out = _run(["benchmarks/recurrence_scaling.py", "--lengths=64", "--budget=8", "--d_model=32", "--heads=2",
              "--repeats=1", "--variants=dense,local,fw_chunkwise"])
  rows = [line for line in out.splitlines() if line.startswith("| 64 |")]
  assert len(rows) == 3 and rows[0].startswith("| 64 | dense |") and "| 1.000 | 1.000 | 1.000 |" in rows[0]
  assert "local: fwd+bwd time slope" in out and "fw_chunkwise: fwd+bwd time slope" in out
  assert "n/a" not in out


def test_context_rnn_driver_reports_state_and_horizons(tmp_path):
  out = _run(["experiments/context_rnn_ablation.py", "--quick", "--seeds=0", "--tasks=mqar",
              "--variants=attention,scalar_k2,hybrid", f"--results_dir={tmp_path}",
              "--config.mqar.train.progress=False"])
  assert "| mqar | scalar_k2 | 256 |" in out and "| mqar | attention | 8,192 |" in out  # decode state at T=32
  assert "| mqar | hybrid | 6,144 |" in out and "mixer/state_size" in out
  assert "scalar_k2 128 floats" in out and "### memory horizon 1 / (1 - a) in tokens: mqar / hybrid" in out
  assert os.path.exists(tmp_path / "mqar" / "results.md") and os.path.exists(tmp_path / "report.md")


def test_moe_driver_reports_params_and_the_seed_claim(tmp_path):
  if not os.path.isfile(SHAKESPEARE):
    pytest.skip(f"real text data not found at {SHAKESPEARE}")
  out = _run(["experiments/moe_ablation.py", "--quick", "--seeds=0", "--variants=dense_8x,top1",
              f"--results_dir={tmp_path}", "--config.train.progress=False"])
  assert "| top1 | 1.00 | 0.13 |" in out  # same total FFN parameters as dense_8x, 1/8 of them active (+ router)
  assert "## Seed claim" in out and "| top1 |" in out.split("## Seed claim")[1]
  assert os.path.exists(tmp_path / "report.md")


def test_attention3d_driver_reports_kinds_on_both_labels_and_the_seed_form(tmp_path):
  if not os.path.isfile(SHAKESPEARE):
    pytest.skip(f"real text data not found at {SHAKESPEARE}")
  out = _run(["experiments/attention3d_ablation.py", "--quick", "--seeds=0", "--variants=divided,space,time_channel",
              f"--results_dir={tmp_path}"] + [f"--config.{t}.train.progress=False"
                                              for t in ("motion", "appearance", "text")])
  assert "attention3d_ablation/appearance: mean" in out and "| time_channel | 1 |" in out and "| space | 1 |" in out
  assert "divided" not in (tmp_path / "text" / "results.md").read_text()  # video kinds run on clips only
  assert "comparisons per patch" in out and "## Seed claim: time + channel" in out
  assert os.path.exists(tmp_path / "report.md")
