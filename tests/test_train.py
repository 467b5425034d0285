"""Training end to end: loss goes down, logs are written, a SIGKILLed run resumes to the same result."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import sharding
from r1jax.config import OptimConfig
from r1jax.errors import ConfigError, NonFiniteError
from r1jax.objective import forward
from r1jax.train import Run, load_trained, make_optimizer, train
from r1jax.writers import read_jsonl

from helpers import tiny_config


@pytest.mark.slow
def test_training_reduces_loss_and_writes_logs(text_file, tmp_path):
  cfg = tiny_config(
    text=text_file,
    train__steps=60,
    train__eval_every=30,
    train__log_every=10,
    optim__lr=3e-3,
    workdir=str(tmp_path / "run"),
    mesh__devices=1,
    mesh__data=1,
  )
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


@pytest.mark.slow
def test_mqar_training_scores_answer_positions_only():
  cfg = tiny_config(
    data__kind="mqar",
    data__options__mqar__vocab_size=64,
    data__seq_len=32,
    data__options__mqar__num_kv_pairs=4,
    data__options__mqar__num_test_examples=16,
    train__steps=30,
    optim__lr=3e-3,
  )
  run = Run(cfg)
  result = run.train()
  assert result["final"]["eval/loss"] < np.log(64)  # at least learns that answers are values (V/2 of them)
  state, _ = run.init_state()
  batch = next(iter(run.data.eval_batches()))
  _, _, sums, _ = forward(run.model, state.params, state.model_state, batch, None, True)
  assert float(sums["count"]) == 8 * 4  # 8 rows x 4 answers: no other position is scored


@pytest.mark.slow
def test_mqar_curriculum_trains_both_lengths_and_resumes_inside_it(tmp_path):
  mqar = dict(
    vocab_size=64,
    num_kv_pairs=4,
    num_test_examples=16,
    curriculum_steps=3,
    curriculum_seq_len=16,
    curriculum_kv_pairs=2,
  )
  cfg = tiny_config(
    data__kind="mqar",
    data__seq_len=32,
    **{f"data__options__mqar__{k}": v for k, v in mqar.items()},
    train__steps=6,
    train__checkpoint_every=2,
    train__keep_checkpoints=3,
    workdir=str(tmp_path / "run"),
  )
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
  short, _ = make_optimizer(OptimConfig(lr=1e-3, warmup_steps=100), 6)  # a run shorter than its warm-up stays in it
  assert np.isclose(float(short(5)), 5e-5)


def test_schedule_restarts_at_each_phase_only_when_asked():
  cfg = OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
  one, _ = make_optimizer(cfg, 100, phases=(0, 60))
  per_phase, _ = make_optimizer(dataclasses.replace(cfg, restart_per_phase=True), 100, phases=(0, 60))
  plain, _ = make_optimizer(cfg, 100)
  assert all(float(one(s)) == float(plain(s)) for s in range(101))  # phases alone change nothing
  alone = {n: make_optimizer(cfg, n)[0] for n in (60, 40)}  # each phase: a whole schedule over its own steps
  assert [float(per_phase(s)) for s in range(60)] == [float(alone[60](s)) for s in range(60)]
  assert [float(per_phase(s)) for s in range(60, 101)] == [float(alone[40](s)) for s in range(41)]
  assert float(per_phase(60)) == 0.0 and np.isclose(float(per_phase(70)), 1e-3)


def _main_cmd(workdir, text_file, steps):
  flags = {
    "data.options.text.path": text_file,
    "data.seq_len": 64,
    "data.batch_size": 8,
    "data.eval_batch_size": 8,
    "data.eval_max_batches": 4,
    "model.num_layers": 2,
    "model.d_model": 64,
    "model.num_heads": 4,
    "train.steps": steps,
    "train.eval_every": 100,
    "train.log_every": 10,
    "train.checkpoint_every": 50,
    "train.progress": False,
    "mesh.devices": 1,
    "mesh.data": 1,
    "workdir": workdir,
  }
  return [sys.executable, "-m", "r1jax.main"] + [f"--config.{k}={v}" for k, v in flags.items()]


@pytest.mark.slow
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


@pytest.mark.slow
def test_rerun_of_a_finished_run_only_evaluates(text_file, tmp_path):
  cfg = tiny_config(text=text_file, workdir=str(tmp_path / "r"), mesh__devices=1, mesh__data=1)
  first = Run(cfg).train()
  again = Run(cfg).train()
  assert again["perf"]["resumed_from"] == cfg.train.steps and again["final"] == first["final"]


@pytest.mark.slow
def test_resume_refuses_a_different_model(text_file, tmp_path):
  Run(tiny_config(text=text_file, workdir=str(tmp_path / "r"))).train()
  with pytest.raises(ConfigError, match=r"different 'model.d_ff' config \(saved 64, now 32\)"):
    Run(tiny_config(text=text_file, workdir=str(tmp_path / "r"), model__d_ff=32)).train()


@pytest.mark.slow
def test_load_trained_returns_the_trained_params(tmp_path, text_file):
  cfg = tiny_config(text=text_file, workdir=str(tmp_path / "run"), train__checkpoint_every=4)
  with pytest.raises(ConfigError, match="holds no checkpoint"):
    load_trained(cfg)
  assert not os.path.exists(cfg.workdir)  # looking wrote nothing
  result = train(cfg)
  model, variables, data = load_trained(cfg)
  totals = np.zeros(2)
  for batch in data.eval_batches():  # the loaded params give the trained run's own final eval loss
    logits, _ = model.apply(variables, batch["inputs"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    totals += [float(jnp.sum(ce * batch["weights"])), float(batch["weights"].sum())]
  np.testing.assert_allclose(totals[0] / totals[1], result["final"]["eval/loss"], rtol=1e-5)


def _nan_config(workdir, **overrides):
  """A run whose learning rate makes step 3's gradient norm NaN (measured: step 3, with checkpoints at 1 and 2)."""
  return tiny_config(
    text="package:tinyshakespeare.txt",
    optim__lr=1e30,
    optim__warmup_steps=4,
    optim__grad_clip=0.0,
    train__steps=8,
    train__checkpoint_every=1,
    train__log_every=4,
    workdir=workdir,
    mesh__devices=1,
    mesh__data=1,
    **overrides,
  )


@pytest.mark.slow
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


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_newest_readable_one(text_file, tmp_path, caplog):
  cfg = tiny_config(
    text=text_file,
    train__steps=6,
    train__checkpoint_every=2,
    train__keep_checkpoints=3,
    workdir=str(tmp_path / "run"),
    mesh__devices=1,
    mesh__data=1,
  )
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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 2-step run (its workdir and its text file), shared by the resume-identity tests (they only read it)."""
  root = tmp_path_factory.mktemp("finished")
  text = root / "corpus.txt"
  text.write_text(" ".join(("the king", "a horse", "my kingdom", "for")[(i * 7) % 4] for i in range(4000)) + "\n")
  workdir = str(root / "r")
  Run(tiny_config(text=str(text), workdir=workdir, train__steps=2)).train()
  return str(text), workdir


@pytest.mark.slow
@pytest.mark.parametrize(
  "field,value",
  [
    ("optim__lr", 3e-3),
    ("data__seq_len", 8),
    ("seed", 1),
    ("model__num_layers", 1),
    ("data__options__text__path", "copy.txt"),
    ("model__mixer_options__attention__qkv_bias", True),
  ],
)
def test_resume_is_refused_for_each_field_of_the_run_identity(finished_run, tmp_path, field, value):
  text_file, workdir = finished_run
  if value == "copy.txt":  # the same text under another name (the same vocabulary)
    value = str(shutil.copy(text_file, tmp_path / value))
  changed = {"text": text_file, field: value}
  with pytest.raises(ConfigError, match=rf"different '{field.replace('__', '.')}' config"):
    Run(tiny_config(workdir=workdir, train__steps=2, **changed)).train()


def test_resume_ignores_loop_settings_and_unused_mixers_options(finished_run):
  text_file, workdir = finished_run
  again = Run(
    tiny_config(
      text=text_file, workdir=workdir, train__steps=2, train__log_every=1, model__mixer_options__local__window=4
    )
  ).train()
  assert again["perf"]["resumed_from"] == 2  # resumed (here: at the end, so it only evaluates)


@pytest.mark.slow
@pytest.mark.parametrize(
  "overrides,num_losses",
  [
    (
      {"model__ffn": "moe", "model__ffn_options__moe__num_experts": 4, "model__ffn_options__moe__z_weight": 1e-2},
      4,
    ),  # balance and z-loss in 2 layers
    (
      {
        "model__mixer": "sparse",
        "model__mixer_options__sparse__top_k": 4,
        "model__mixer_options__sparse__indexer_loss": "kl",
        "model__mixer_options__sparse__indexer_grad": "none",
      },
      2,
    ),  # DSA's indexer KL in 2 layers
  ],
)
def test_objective_is_cross_entropy_plus_every_auxiliary_loss(text_file, overrides, num_losses):
  run = Run(tiny_config(text=text_file, mesh__devices=1, mesh__data=1, **overrides))
  state, _ = run.init_state()
  batch = run.data.train_batch(0)
  objective, metrics, sums, _ = forward(run.model, state.params, state.model_state, batch, None, True)
  logits, aux = run.model.apply({"params": state.params, **state.model_state}, batch["inputs"], deterministic=True)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
  losses = {k: float(v) for k, v in aux.items() if "/loss_" in k and "/layer" in k}  # every layer's weighted term
  assert len(losses) == num_losses and all(v > 0 for v in losses.values()), losses
  np.testing.assert_allclose(float(metrics["loss"]), float(ce), rtol=1e-6)
  np.testing.assert_allclose(float(objective), float(ce) + sum(losses.values()), rtol=1e-6)


@pytest.mark.slow
def test_a_zero_weight_row_changes_no_loss_or_metric(text_file):
  run = Run(tiny_config(text=text_file, mesh__devices=1, mesh__data=1))
  state, _ = run.init_state()
  batch = run.data.train_batch(0)
  rng = np.random.default_rng(0)
  padded = {k: np.concatenate([v, v[:1]]) for k, v in batch.items()}  # one more row: random tokens, weight 0
  padded["inputs"][-1] = rng.integers(0, run.data.vocab_size, batch["inputs"].shape[1])
  padded["targets"][-1] = rng.integers(0, run.data.vocab_size, batch["targets"].shape[1])
  padded["weights"][-1] = 0.0
  (obj, metrics, sums, _), (obj_p, metrics_p, sums_p, _) = (
    forward(run.model, state.params, state.model_state, b, None, True) for b in (batch, padded)
  )
  for got, want in (
    (obj_p, obj),
    (metrics_p["loss"], metrics["loss"]),
    (metrics_p["accuracy"], metrics["accuracy"]),
    *((sums_p[k], sums[k]) for k in ("loss_sum", "correct_sum", "count")),
  ):
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  for k in ("correct_B", "count_B"):  # per row: the padded row counts nothing, the others as before
    np.testing.assert_allclose(np.asarray(sums_p[k]), np.append(np.asarray(sums[k]), 0.0), rtol=1e-6)
  assert float(sums["count"]) == batch["weights"].size


@pytest.mark.slow
def test_weight_decay_reaches_matrices_and_no_one_dimensional_parameter(text_file):
  run = Run(
    tiny_config(
      text=text_file,
      mesh__devices=1,
      mesh__data=1,
      optim__warmup_steps=0,
      optim__weight_decay=0.5,
      optim__grad_clip=0.0,
    )
  )
  state, _ = run.init_state()
  zero = jax.tree.map(jnp.zeros_like, state.params)  # no gradient: only decay moves a parameter
  updates, _ = run.tx.update(zero, run.tx.init(state.params), state.params)
  moved = {
    "/".join(p.key for p in path): bool(jnp.any(u != 0)) for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]
  }
  ndim = {"/".join(p.key for p in path): x.ndim for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  assert {k for k, m in moved.items() if m} == {k for k, n in ndim.items() if n >= 2}
  assert "final_norm/scale" in ndim and not moved["final_norm/scale"] and moved["embed"]


SPARSE_KL_DENSE = {
  "model__mixer": "sparse",
  "model__mixer_options__sparse__top_k": 4,
  "model__mixer_options__sparse__indexer_grad": "none",
  "model__mixer_options__sparse__indexer_loss": "kl_dense",
}  # DSA's indexer warm-up


def _named(params) -> dict:
  from r1jax.train import param_name

  return {param_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.slow
def test_init_from_restores_parameters_by_name_and_trainable_freezes_the_rest_bitwise(text_file, tmp_path):
  """DSA's warm-up as two general features: a sparse run starts from a dense run's checkpoint (its new indexer keeps
  its init), and only the indexer trains: every other parameter stays bitwise the dense run's."""
  dense = tiny_config(text=text_file, workdir=str(tmp_path / "dense"), model__num_layers=1)
  train(dense)
  warm = tiny_config(
    text=text_file,
    workdir=str(tmp_path / "warm"),
    model__num_layers=1,
    train__init_from=str(tmp_path / "dense"),
    optim__trainable="idx_",
    **SPARSE_KL_DENSE,
  )
  init = _named(Run(warm).init_state()[0].params)
  result = train(warm)
  new = ["idx_k_bias", "idx_k_scale", "idx_wk", "idx_wq", "idx_ww"]  # V3.2's indexer: its key LayerNorm too
  assert result["init_from"]["restored"] == len(init) - len(new) and result["init_from"]["step"] == 4
  assert sorted(result["init_from"]["new"]) == [f"params/layer0/mixer/{n}" for n in new]
  source, after = _named(load_trained(dense)[1]["params"]), _named(load_trained(warm)[1]["params"])
  for name, value in after.items():
    if name.split("/")[-1].startswith("idx_"):
      assert not np.array_equal(value, init[name]), f"{name} did not train"
    else:
      assert value.dtype == source[name].dtype and value.tobytes() == source[name].tobytes(), f"{name} changed"


@pytest.mark.slow
def test_init_from_and_trainable_refuse_what_cannot_work(text_file, tmp_path):
  small = tiny_config(text=text_file, workdir=str(tmp_path / "small"), model__num_layers=1)
  train(small)
  wide = tiny_config(
    text=text_file,
    workdir=str(tmp_path / "wide"),
    model__num_layers=1,
    model__d_model=64,
    train__init_from=str(tmp_path / "small"),
  )
  with pytest.raises(ConfigError, match=r"train.init_from: params 'embed' has shape \(\d+, 32\)"):
    train(wide)
  with pytest.raises(ConfigError, match="train.init_from=.* holds no checkpoint"):
    Run(tiny_config(text=text_file, train__init_from=str(tmp_path / "nothing")))
  with pytest.raises(ConfigError, match="optim.trainable: '\\(' is not a regular expression"):
    tiny_config(text=text_file, optim__trainable="(")
  with pytest.raises(ConfigError, match="optim.trainable='idx_' matches no parameter"):
    train(tiny_config(text=text_file, optim__trainable="idx_"))  # a dense model has no indexer
  assert not os.path.exists(tmp_path / "wide" / "checkpoints")  # nothing written


def test_a_field_added_after_a_run_was_saved_counts_as_its_default():
  from r1jax.checkpoint import check_same_config
  from r1jax.config import to_dict

  saved = to_dict(tiny_config(text="x"))
  del saved["optim"]["trainable"], saved["train"]["init_from"]  # saved before these fields existed
  check_same_config(saved, to_dict(tiny_config(text="x")), "run")  # at their defaults: the same run
  with pytest.raises(ConfigError, match="different 'optim.trainable' config"):
    check_same_config(saved, to_dict(tiny_config(text="x", optim__trainable="wq")), "run")


@pytest.mark.parametrize("diag_batches", [1, 2, 0])
def test_the_diagnostics_pass_reads_the_first_diag_batches_eval_batches(text_file, diag_batches):
  """The diagnostics evaluator: the untimed pass reads the first train.diag_batches eval batches (0: all) and averages
  its diagnostics over those; the timed pass still reads every batch."""
  run = Run(tiny_config(text=text_file, data__eval_max_batches=3, train__diag_batches=diag_batches))
  batches = [b["inputs"] for b in run.data.eval_batches()]
  assert len(batches) == 3
  timed, seen = [], []

  def eval_fn(state, batch):
    timed.append(np.asarray(batch["inputs"]))
    return {"loss_sum": 1.0, "correct_B": np.zeros(1), "count_B": np.ones(1)}, {}

  def diag_fn(state, batch):
    seen.append(np.asarray(batch["inputs"]))
    return {}, {"mixer/recall": float(len(seen))}

  run = Run(run.cfg, eval_steps={"timed": eval_fn, "diagnostics": diag_fn})
  out = run.evaluate(None)
  n = diag_batches or 3
  assert len(timed) == 3 and len(seen) == n
  assert all(np.array_equal(a, b) for a, b in zip(seen, batches))  # the first n, in order
  assert out["eval/mixer/recall"] == pytest.approx(np.mean(np.arange(1, n + 1)))
  assert out["eval/loss"] == pytest.approx(1.0)


def test_a_negative_diag_batches_is_refused_naming_the_field():
  with pytest.raises(ConfigError, match="train.diag_batches"):
    tiny_config(train__diag_batches=-1)


def test_the_timed_step_is_the_same_program_whatever_else_is_evaluated(text_file):
  """Nothing an untimed evaluator computes enters the timed one: listing every evaluator or the timed one alone, a
  sparse model's timed eval step lowers to the same program (its diagnostics evaluator runs dense attention), and
  the diagnostics reach the results only from their own pass."""
  programs, finals = [], []
  for names in (("timed",), ("timed", "groups", "bpc", "diagnostics")):
    run = Run(
      tiny_config(
        text=text_file,
        model__mixer="sparse",
        model__mixer_options__sparse__top_k=4,
        train__evaluators=names,
        mesh__devices=1,
        mesh__data=1,
      )
    )
    state, _ = run.init_state()
    batch = sharding.put_batch(next(iter(run.data.eval_batches())), run.mesh)
    programs.append(run.evaluation.timed.step.lower(state, batch).as_text())
    finals.append(run.evaluate(state))
  assert programs[0] == programs[1]
  assert "eval/mixer/recall" not in finals[0] and 0 < finals[1]["eval/mixer/recall"] <= 1
  assert finals[0]["eval/loss"] == finals[1]["eval/loss"]


@pytest.mark.parametrize("names", [("groups",), ("timed", "timed"), ("timed", "perplexity")])
def test_an_evaluator_list_that_cannot_work_is_refused_naming_the_field(names, text_file):
  with pytest.raises(ConfigError, match=r"train.evaluators=.*Fix: list 'timed' first"):
    Run(tiny_config(text=text_file, train__evaluators=names))


def test_a_runs_result_records_where_it_came_from(text_file, tmp_path):
  """result.json: the commit (and whether the code differed from it), the package versions, XLA flags, backend,
  device kind and count (CPU model and cores), process count and time, from one function (r1jax/provenance.py)."""
  train(tiny_config(text=text_file, workdir=str(tmp_path / "run"), mesh__devices=1, mesh__data=1))
  p = json.load(open(tmp_path / "run" / "result.json"))["provenance"]
  assert set(p) >= {
    "commit",
    "dirty",
    "versions",
    "xla_flags",
    "backend",
    "device_kind",
    "devices",
    "processes",
    "cpu",
    "cores",
    "utc",
  }
  assert set(p["versions"]) == {"python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy"}
  assert p["versions"]["jax"] == jax.__version__ and p["xla_flags"] == os.environ["XLA_FLAGS"]
  assert p["backend"] == "cpu" and p["devices"] == jax.device_count() and p["cores"] >= 1
  assert p["commit"] is None or len(p["commit"]) == 40  # a git checkout's commit (none for an installed copy)
