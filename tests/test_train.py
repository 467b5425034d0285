"""Training end to end: loss goes down, logs are written, a SIGKILLed run resumes to the same result."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import tiny_config
from r1jax.registry import ConfigError
from r1jax.train import Run, load_trained, make_optimizer, train
from r1jax.config import OptimConfig
from r1jax.writers import read_jsonl


def test_training_reduces_loss_and_writes_logs(text_file, tmp_path):
  cfg = tiny_config(data__path=text_file, train__steps=60, train__eval_every=30, train__log_every=10,
                    optim__lr=3e-3, workdir=str(tmp_path / "run"), mesh__devices=1, mesh__data=1)
  result = Run(cfg).train()
  evals = [r for r in result["history"] if "eval/loss" in r]
  assert [r["step"] for r in evals] == [30, 60]
  assert result["final"]["eval/loss"] == evals[-1]["eval/loss"] < np.log(result["config"]["model"]["vocab_size"])
  train_losses = [r["train/loss"] for r in result["history"] if "train/loss" in r]
  assert train_losses[-1] < train_losses[0] - 0.5
  assert read_jsonl(str(tmp_path / "run" / "metrics.jsonl")) == result["history"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "run" / "tb"))
  perf = result["perf"]
  assert perf["flops_per_token"] > 6 * 2 * 32 * 32 and perf["tokens_per_sec"] > 0 and perf["memory_bytes"] > 0
  assert result["num_params"] == 64 * 32 + 2 * (4 * 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32


def test_mqar_training_scores_answer_positions_only():
  cfg = tiny_config(data__kind="mqar", data__path="", data__mqar_vocab_size=64, data__seq_len=32,
                    data__num_kv_pairs=4, data__num_test_examples=16, train__steps=30, optim__lr=3e-3)
  result = Run(cfg).train()
  assert 0.0 <= result["final"]["eval/accuracy"] <= 1.0
  assert result["final"]["eval/loss"] < np.log(64)  # at least learns that answers are values (V/2 of them)


def test_mqar_curriculum_trains_both_lengths_and_resumes_inside_it(tmp_path):
  cfg = tiny_config(data__kind="mqar", data__path="", data__mqar_vocab_size=64, data__seq_len=32, data__num_kv_pairs=4,
                    data__num_test_examples=16, data__curriculum_steps=3, data__curriculum_seq_len=16,
                    data__curriculum_kv_pairs=2, train__steps=6, train__checkpoint_every=2,
                    train__keep_checkpoints=3, workdir=str(tmp_path / "run"))
  whole = Run(cfg).train()
  ckpts = tmp_path / "run" / "checkpoints"
  for step in ("4", "6"):  # back to step 2, inside the curriculum: the resumed run needs both shapes again
    shutil.rmtree(ckpts / step)
  resumed = Run(cfg).train()
  assert resumed["perf"]["resumed_from"] == 2 and resumed["final"] == whole["final"]
  assert np.isfinite(whole["final"]["eval/loss"]) and whole["history"][-1]["step"] == 6


def test_schedule_is_warmup_then_cosine_to_min_lr():
  schedule, _ = make_optimizer(OptimConfig(lr=1e-3, warmup_steps=100, min_lr_ratio=0.1), 2000)
  assert float(schedule(0)) == 0.0 and np.isclose(float(schedule(50)), 5e-4)
  assert np.isclose(float(schedule(100)), 1e-3) and np.isclose(float(schedule(2000)), 1e-4)


def _main_cmd(workdir, text_file, steps):
  flags = {"data.path": text_file, "data.seq_len": 64, "data.batch_size": 8, "data.eval_batch_size": 8,
           "data.eval_max_batches": 4, "model.num_layers": 2, "model.d_model": 64, "model.num_heads": 4,
           "train.steps": steps, "train.eval_every": 100, "train.log_every": 10, "train.checkpoint_every": 50,
           "train.progress": False, "mesh.devices": 1, "mesh.data": 1, "workdir": workdir}
  return [sys.executable, "-m", "r1jax.main"] + [f"--config.{k}={v}" for k, v in flags.items()]


def test_sigkilled_run_resumes_to_the_uninterrupted_result(text_file, tmp_path):
  steps = 300
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  subprocess.run(_main_cmd(whole, text_file, steps), check=True, capture_output=True, timeout=300)

  proc = subprocess.Popen(_main_cmd(killed, text_file, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = os.path.join(killed, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
  assert not os.path.exists(os.path.join(killed, "result.json"))

  subprocess.run(_main_cmd(killed, text_file, steps), check=True, capture_output=True, timeout=300)
  a = json.load(open(os.path.join(whole, "result.json")))
  b = json.load(open(os.path.join(killed, "result.json")))
  assert 0 < b["perf"]["resumed_from"] < steps
  assert a["final"] == b["final"]  # bitwise: same data position, same rng per step, same state
  strip = lambda hist: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in hist]
  assert strip(a["history"]) == strip(b["history"])  # the log reads as one uninterrupted run


def test_rerun_of_a_finished_run_only_evaluates(text_file, tmp_path):
  cfg = tiny_config(data__path=text_file, workdir=str(tmp_path / "r"), mesh__devices=1, mesh__data=1)
  first = Run(cfg).train()
  again = Run(cfg).train()
  assert again["perf"]["resumed_from"] == cfg.train.steps and again["final"] == first["final"]


def test_resume_refuses_a_different_model(text_file, tmp_path):
  Run(tiny_config(data__path=text_file, workdir=str(tmp_path / "r"))).train()
  with pytest.raises(ConfigError, match="different 'model' config"):
    Run(tiny_config(data__path=text_file, workdir=str(tmp_path / "r"), model__d_ff=32)).train()


def test_load_trained_returns_the_trained_params(tmp_path, text_file):
  cfg = tiny_config(data__path=text_file, workdir=str(tmp_path / "run"), train__checkpoint_every=4)
  with pytest.raises(ConfigError, match="holds no checkpoint"):
    load_trained(cfg)
  assert not os.path.exists(cfg.workdir)  # looking wrote nothing
  result = train(cfg)
  model, variables, data = load_trained(cfg)
  batch = data.train_batch(0)
  logits, _ = model.apply(variables, batch["inputs"])
  assert logits.shape[:2] == batch["inputs"].shape and np.isfinite(np.asarray(logits)).all()
  assert result["final"]["eval/loss"] > 0
