"""The ablation runner: variants x seeds, table with mean +- std and ratios, files and plots, skip when done."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from r1jax import atomic, registry
from r1jax.config import default_config
from r1jax.errors import ConfigError
from r1jax.lab import ablation, reporting, sweep
from r1jax.train import load_trained, train

from helpers import ablation_base

pytestmark = pytest.mark.slow  # end-to-end: subprocesses and whole runs (the whole suite only)


def _base(text_file):
  return ablation_base(text_file, train__eval_every=3)


def test_ablation_runs_tables_and_skips_finished(text_file, tmp_path):
  calls = []

  def counting_train(cfg):
    calls.append((cfg.model.num_layers, cfg.seed))
    return train(cfg)

  abl = ablation.Ablation(
    "toy",
    _base(text_file),
    {"one": {}, "two": {"model.num_layers": 2}},
    seeds=(0, 1),
    baseline="one",
    results_dir=str(tmp_path / "res"),
  )
  lines = []
  rows = ablation.run(abl, counting_train, log=lines.append)
  assert sorted(calls) == [(1, 0), (1, 1), (2, 0), (2, 1)]
  by = {r["variant"]: r for r in rows}
  assert by["one"]["perf/flops_per_token:ratio"] == 1.0 and by["two"]["perf/flops_per_token:ratio"] > 1.3
  assert by["two"]["num_params"] > by["one"]["num_params"] and by["one"]["seeds"] == 2
  assert by["one"]["eval/loss:std"] > 0  # two seeds give two different runs
  for name in ("results.json", "results.csv", "results.md", "learning_curves.png", "quality_vs_flops.png"):
    assert os.path.getsize(tmp_path / "res" / name) > 0
  table = open(tmp_path / "res" / "results.md").read()
  assert "| one | 2 |" in table and "±" in table and "tokens_per_sec / one" in table
  saved = json.load(open(tmp_path / "res" / "results.json"))
  assert set(saved["runs"]) == {"one/seed0", "one/seed1", "two/seed0", "two/seed1"}
  # results.json stands alone (it is what the repository commits): each run's scale and eval curve, plottable
  assert saved["scale"]["two/seed1"]["num_layers"] == 2 and saved["scale"]["one/seed0"]["num_layers"] == 1
  for label, run in saved["runs"].items():
    assert saved["curves"][label]["eval/loss"][-1] == pytest.approx(run["eval/loss"])
  assert set(reporting.plot(saved)) == {"learning_curves", "quality_vs_flops"}

  calls.clear()
  rows_again = ablation.run(abl, counting_train, log=lines.append)
  assert calls == [] and [r["eval/loss"] for r in rows_again] == [r["eval/loss"] for r in rows]
  assert any("finished earlier, skipping" in line for line in lines)

  # Two unfinished runs trained by two worker processes of one thread each: the same numbers as in this process.
  for name in ("one/seed1", "two/seed0"):
    os.remove(tmp_path / "res" / name / "result.json")
  lines.clear()
  rows_workers = ablation.run(abl, log=lines.append, workers=2)
  assert any("2 worker processes" in line for line in lines)
  np.testing.assert_allclose([r["eval/loss"] for r in rows_workers], [r["eval/loss"] for r in rows], rtol=1e-4)
  with pytest.raises(ValueError, match="workers=1"):
    ablation.run(abl, counting_train, workers=2)

  # Several ablations (a driver's tasks) in one pool: the runs of both in one launch, each its own summary.
  os.remove(tmp_path / "res" / "two" / "seed1" / atomic.RESULT_FILE)
  other = ablation.Ablation("toy2", _base(text_file), {"one": {}}, seeds=(0,), results_dir=str(tmp_path / "res2"))
  lines.clear()
  both = ablation.run_all({"a": abl, "b": other}, sweep.LocalLauncher(workers=2), lines.append)
  pools = [line for line in lines if "worker processes" in line]
  assert len(pools) == 1 and pools[0].startswith("training 2 runs in 2 worker processes"), pools
  np.testing.assert_allclose([r["eval/loss"] for r in both["a"]], [r["eval/loss"] for r in rows], rtol=1e-4)
  assert [r["variant"] for r in both["b"]] == ["one"] and os.path.exists(tmp_path / "res2" / "results.json")

  # A finished run of another config is stale: refused, naming the field, not silently reused.
  longer = ablation.Ablation(
    "toy",
    ablation.override(_base(text_file), {"train.steps": 7}, "longer"),
    {"one": {}},
    seeds=(0,),
    baseline="one",
    results_dir=str(tmp_path / "res"),
  )
  with pytest.raises(ConfigError, match="different 'train.steps' config"):
    ablation.run(longer, lambda cfg: pytest.fail("trained over a stale result"))


def test_bad_variant_fails_before_any_training(text_file, tmp_path):
  abl = ablation.Ablation(
    "bad", _base(text_file), {"ok": {}, "bad": {"model.num_heads": 3}}, seeds=(0,), results_dir=str(tmp_path / "res")
  )
  with pytest.raises(ConfigError, match="model.num_heads"):
    ablation.run(abl, lambda cfg: pytest.fail("trained before validating every variant"))
  assert not os.path.exists(tmp_path / "res")


def test_task_plan_per_task_defaults_and_limits():
  variants = {"a": {}, "b": {}, "c": {}, "d": {}}
  defaults = {"x": ["a", "c"], "y": ["b", "a"]}
  assert list(ablation.task_plan(variants, None, "x", defaults)) == ["a", "c"]  # nothing asked: the task's own
  assert list(ablation.task_plan(variants, None, "y", defaults)) == ["a", "b"]  # in the variants' order
  assert list(ablation.task_plan(variants, None, "z", defaults)) == ["a", "b", "c", "d"]  # no defaults: all
  assert list(ablation.task_plan(variants, ["d", "b"], "x", defaults)) == ["b", "d"]  # asked wins over defaults
  assert list(ablation.task_plan(variants, [], "x", defaults, {"x": ["a", "b"]})) == ["a", "b"]  # [] = all, limited


def test_a_run_with_a_non_finite_loss_is_a_failed_row_and_the_others_finish(text_file, tmp_path):
  # lr 1e30 without clipping: step 3's gradient norm is NaN (see test_train's non-finite test)
  nan = {"optim.lr": 1e30, "optim.warmup_steps": 4, "optim.grad_clip": 0.0, "train.checkpoint_every": 1}
  abl = ablation.Ablation(
    "toy", _base(text_file), {"ok": {}, "nan": nan}, seeds=(0,), baseline="ok", results_dir=str(tmp_path / "res")
  )
  lines = []
  rows = ablation.run(abl, log=lines.append)
  by = {r["variant"]: r for r in rows}
  assert by["ok"]["seeds"] == 1 and by["ok"]["failed"] == "" and np.isfinite(by["ok"]["eval/loss"])
  assert by["nan"]["seeds"] == 0 and by["nan"]["failed"].startswith("seed0: train step 3:")
  assert np.isnan(by["nan"]["eval/loss"]) and any("nan/seed0: FAILED" in line for line in lines)
  table = (tmp_path / "res" / "results.md").read_text()
  assert "failed runs" in table and "| nan | 0 |" in table and "seed0: train step 3" in table
  saved = json.load(open(tmp_path / "res" / "results.json"))
  assert saved["runs"]["nan/seed0"]["failed"].startswith("train step 3") and "eval/loss" in saved["runs"]["ok/seed0"]
  assert not os.path.exists(tmp_path / "res" / "nan" / "seed0" / "result.json")  # a rerun retries it
  assert sorted(os.listdir(tmp_path / "res" / "nan" / "seed0" / "checkpoints")) == ["1", "2"]


def test_an_option_of_an_unused_mixer_leaves_finished_results_valid(text_file, tmp_path, monkeypatch):
  abl = ablation.Ablation("toy", _base(text_file), {"one": {}}, seeds=(0,), results_dir=str(tmp_path / "res"))
  ablation.run(abl, log=lambda line: None)

  @dataclasses.dataclass(frozen=True)
  class LocalOptionsPlus(registry.MIXERS["local"].options):
    new_knob: int = 3  # an option added to a mixer the runs do not use

  monkeypatch.setitem(registry.MIXERS, "local", registry.Entry(registry.MIXERS["local"].module, LocalOptionsPlus))
  assert "new_knob" in default_config().model.mixer_options.local
  lines = []
  ablation.run(dataclasses.replace(abl, base=_base(text_file)), lambda cfg: pytest.fail("retrained"), lines.append)
  assert any("one/seed0: finished earlier, skipping" in line for line in lines)
  changed = dataclasses.replace(
    abl, base=ablation.override(_base(text_file), {"model.mixer_options.attention.qkv_bias": True}, "used option")
  )
  with pytest.raises(ConfigError, match=r"different 'model.mixer_options.attention.qkv_bias' config"):
    ablation.run(changed, lambda cfg: pytest.fail("trained over a stale result"))


def test_ratios_are_taken_against_the_named_baseline_not_the_first_variant():
  def result(loss, tps):
    return {
      "num_params": 10,
      "final": {"eval/loss": loss, "eval/accuracy": 0.5},
      "history": [],
      "perf": {
        "tokens_per_sec": tps,
        "eval_tokens_per_sec": tps,
        "flops_per_token": 1.0,
        "memory_bytes": 1.0,
        "wall_sec": 1.0,
      },
    }

  rows = reporting.summarise({("first", 0): result(2.0, 100.0), ("base", 0): result(4.0, 50.0)}, "base")
  by = {r["variant"]: r for r in rows}
  assert by["base"]["eval/loss:ratio"] == 1.0 and by["first"]["eval/loss:ratio"] == 0.5
  assert by["first"]["perf/tokens_per_sec:ratio"] == 2.0
  assert "loss / base" in reporting.markdown_table(rows, "base")


def test_bars_draw_error_bars_only_over_several_seeds_and_a_log_axis_over_decades():
  from matplotlib.container import BarContainer, ErrorbarContainer

  rows = [
    {"variant": "a", "seeds": 3, "x": 1.0, "x:std": 0.1, "y": 1.0, "y:std": 0.0},
    {"variant": "b", "seeds": 1, "x": 2.0, "x:std": 0.5, "y": 500.0, "y:std": 0.0},
  ]
  fig = reporting.bars(
    rows, [reporting.Panel("x", "x (units)", refs=((1.5, "anchor"),)), reporting.Panel("y", "y (units)", scale=2.0)]
  )
  ax_x, ax_y = fig.axes
  errorbars = next(c for c in ax_x.containers if isinstance(c, ErrorbarContainer))
  segments = errorbars.lines[2][0].get_segments()
  assert [s[1][1] - s[0][1] for s in segments] == pytest.approx([0.2, 0.0])  # b: one seed, no error bar
  assert ax_x.get_yscale() == "linear" and ax_y.get_yscale() == "log"  # 2 .. 1000 spans decades
  (heights,) = [c for c in ax_y.containers if isinstance(c, BarContainer)]
  assert [p.get_height() for p in heights] == [2.0, 1000.0]
  assert ax_x.get_legend_handles_labels()[1] == ["anchor"] and ax_x.get_ylabel() == "x (units)"


def test_a_variant_starts_from_another_variants_run_of_the_same_seed(text_file, tmp_path):
  """train.init_from='@base': 'cont' (listed first) waits for base's run of its seed, starts from its checkpoint,
  and with optim.trainable only its query projection trains: the rest stays bitwise base's."""
  variants = {"cont": {"train.init_from": "@base", "optim.trainable": "mixer/wq"}, "base": {}}
  abl = ablation.Ablation("chain", _base(text_file), variants, seeds=(0,), results_dir=str(tmp_path / "res"))
  ablation.run(abl, log=lambda s: None)
  cfgs = abl.configs()
  result = json.load(open(os.path.join(cfgs[("cont", 0)].workdir, "result.json")))
  assert result["init_from"]["workdir"] == cfgs[("base", 0)].workdir and result["init_from"]["new"] == []
  base, cont = (load_trained(cfgs[(v, 0)])[1]["params"] for v in ("base", "cont"))
  for path, b in jax.tree_util.tree_flatten_with_path(base)[0]:
    c = dict(jax.tree_util.tree_flatten_with_path(cont)[0])[path]
    assert np.array_equal(b, c) != ("mixer/wq" in jax.tree_util.keystr(path, separator="/", simple=True))
  for bad, match in (
    ({"a": {"train.init_from": "@nope"}}, "names no other variant"),
    ({"a": {"train.init_from": "@b"}, "b": {"train.init_from": "@a"}}, "in a cycle"),
  ):
    with pytest.raises(ConfigError, match=match):
      ablation.run(ablation.Ablation("bad", _base(text_file), bad, seeds=(0,), results_dir=str(tmp_path / "bad")))
    assert not os.path.exists(tmp_path / "bad")  # refused before anything is written
