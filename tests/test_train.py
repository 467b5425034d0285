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
from r1jax.registry import ConfigError, NonFiniteError
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
  with pytest.raises(ConfigError, match=r"different 'model.d_ff' config \(saved 64, now 32\)"):
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


def _nan_config(workdir, **overrides):
  """A run whose learning rate makes step 3's gradient norm NaN (measured: step 3, with checkpoints at 1 and 2)."""
  return tiny_config(data__path="package:tinyshakespeare.txt", optim__lr=1e30, optim__warmup_steps=4,
                     optim__grad_clip=0.0, train__steps=8, train__checkpoint_every=1, train__log_every=4,
                     workdir=workdir, mesh__devices=1, mesh__data=1, **overrides)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  cfg = _nan_config(str(tmp_path / "run"))
  with pytest.raises(NonFiniteError, match=r"train step 3: .*not finite.*last good checkpoint is step 2") as first:
    Run(cfg).train()
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["1", "2"]  # nothing from step 3 on
  assert not os.path.exists(tmp_path / "run" / "result.json")
  assert max(r["step"] for r in read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))) <= 2
  with pytest.raises(NonFiniteError) as again:  # a rerun resumes from step 2 and meets the same step
    Run(cfg).train()
  assert str(again.value) == str(first.value)


def _truncate(folder):
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_damaged_latest_checkpoint_falls_back_to_the_newest_readable_one(text_file, tmp_path, caplog):
  cfg = tiny_config(data__path=text_file, train__steps=6, train__checkpoint_every=2, train__keep_checkpoints=3,
                    workdir=str(tmp_path / "run"), mesh__devices=1, mesh__data=1)
  whole = Run(cfg).train()
  _truncate(tmp_path / "run" / "checkpoints" / "6")  # its files cut short after a committed save
  resumed = Run(cfg).train()
  assert resumed["perf"]["resumed_from"] == 4 and resumed["final"] == whole["final"]
  assert any("checkpoint step 6" in r.getMessage() and "cannot be read" in r.getMessage() for r in caplog.records)
  assert os.path.isdir(tmp_path / "run" / "corrupt_checkpoints" / "6")
  for step in os.listdir(tmp_path / "run" / "checkpoints"):
    _truncate(tmp_path / "run" / "checkpoints" / step)
  with pytest.raises(ConfigError, match=r"no checkpoint in .*checkpoints can be read"):
    Run(cfg).train()


@pytest.mark.parametrize("field,value", [("optim__lr", 3e-3), ("data__seq_len", 8), ("seed", 1),
                                         ("model__num_layers", 1), ("data__path", "copy.txt"),
                                         ("model__mixer_options__attention__qkv_bias", True)])
def test_resume_is_refused_for_each_field_of_the_run_identity(text_file, tmp_path, field, value):
  workdir = str(tmp_path / "r")
  Run(tiny_config(data__path=text_file, workdir=workdir, train__steps=2)).train()
  if value == "copy.txt":  # the same text under another name (the same vocabulary)
    value = str(shutil.copy(text_file, tmp_path / value))
  changed = {"data__path": text_file, field: value}
  with pytest.raises(ConfigError, match=rf"different '{field.replace('__', '.')}' config"):
    Run(tiny_config(workdir=workdir, train__steps=2, **changed)).train()
  # Loop lengths, logging and unused mixers' options are not part of it: the run resumes (here: only evaluates).
  again = Run(tiny_config(data__path=text_file, workdir=workdir, train__steps=2, train__log_every=1,
                          model__mixer_options__local__window=4)).train()
  assert again["perf"]["resumed_from"] == 2
