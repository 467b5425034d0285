"""r1jax.generate: sampling rules, batched prompts of different lengths, and one-line errors."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from r1jax import generate
from r1jax.errors import ConfigError
from r1jax.train import Run

from conftest import REPO, SHAKESPEARE
from helpers import VIDEO, tiny_config

pytestmark = pytest.mark.slow  # end-to-end: subprocesses and whole runs (the whole suite only)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny character model trained for a few steps on Tiny Shakespeare, with a checkpoint."""
  workdir = str(tmp_path_factory.mktemp("gen") / "run")
  Run(
    tiny_config(
      text=SHAKESPEARE,
      workdir=workdir,
      train__steps=6,
      train__checkpoint_every=6,
      model__mixer="local",
      model__mixer_options__local__window=4,
    )
  ).train()
  return workdir


def test_top_k_1_is_greedy_and_rules_keep_only_what_they_allow():
  logits = jax.random.normal(jax.random.key(0), (4, 30)) * 3
  greedy = np.argmax(logits, -1)
  for s in (generate.Sampling(temperature=0.0), generate.Sampling(top_k=1, seed=3), generate.Sampling(top_p=1e-6)):
    np.testing.assert_array_equal(generate.sample(logits, jax.random.key(5), s), greedy)
  draws = np.stack([generate.sample(logits, jax.random.key(i), generate.Sampling(top_k=3)) for i in range(200)])
  top3 = np.argsort(-np.asarray(logits), -1)[:, :3]
  assert all(set(draws[:, b]) <= set(top3[b]) for b in range(4))
  assert len(set(draws[:, 0])) > 1  # a sample, not the argmax
  probs = jax.nn.softmax(logits, -1)
  order = np.argsort(-np.asarray(probs), -1)
  nucleus = [
    set(order[b, : int(np.searchsorted(np.cumsum(np.asarray(probs)[b, order[b]]), 0.6)) + 1]) for b in range(4)
  ]
  draws = np.stack([generate.sample(logits, jax.random.key(i), generate.Sampling(top_p=0.6)) for i in range(200)])
  assert all(set(draws[:, b]) <= nucleus[b] for b in range(4))


def test_same_seed_same_text_and_a_batch_decodes_each_prompt_as_alone(trained):
  prompts = ["ROMEO:", "A", "First Citizen:\nWe"]
  s = generate.Sampling(temperature=0.0)
  batch = generate.generate_text(trained, prompts, 12, s)
  alone = [generate.generate_text(trained, [p], 12, s)[0] for p in prompts]
  assert batch == alone and all(t.startswith(p) and len(t) == len(p) + 12 for t, p in zip(batch, prompts))
  s = generate.Sampling(temperature=1.0, seed=4)
  assert generate.generate_text(trained, prompts, 12, s) == generate.generate_text(trained, prompts, 12, s)
  assert generate.generate_text(trained, prompts, 12, s) != generate.generate_text(
    trained, prompts, 12, generate.Sampling(temperature=1.0, seed=5)
  )


def test_bad_input_is_one_clear_error(trained, tmp_path):
  with pytest.raises(ConfigError, match="holds no checkpoint"):
    generate.generate_text(str(tmp_path), ["a"], 4)
  with pytest.raises(ConfigError, match=r"lacks: \['@', '€'\]"):
    generate.generate_text(trained, ["a@€"], 4)
  with pytest.raises(ConfigError, match="need 10 positions but --max_len=8"):
    generate.generate_text(trained, ["ROMEO:"], 4, max_len=8)
  with pytest.raises(ConfigError, match="--top_p=0"):
    generate.Sampling(top_p=0.0)


def test_a_video_model_cannot_generate(tmp_path):
  workdir = str(tmp_path / "video")
  Run(tiny_config(**VIDEO, workdir=workdir, model__num_layers=1, train__steps=1, mesh__devices=1, mesh__data=1)).train()
  with pytest.raises(ConfigError, match="holds a video model .*cannot generate. Fix: pass the workdir of a language"):
    generate.load(workdir)


def test_command_line_prints_text_and_errors_in_one_line(trained, tmp_path):
  cmd = [sys.executable, "-m", "r1jax.generate", f"--workdir={trained}", "--prompt=ROMEO:", "--max_new_tokens=20"]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("ROMEO:") and len(out.stdout.splitlines()[0]) >= 6
  bad = subprocess.run(cmd[:3] + [f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=REPO)
  assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "holds no checkpoint" in bad.stderr


def test_past_context_benchmark_scores_text_with_and_without_the_window(trained, tmp_path):
  """benchmarks/past_context.py: a table row per setting over position ranges from the trained length (16) on, and
  its JSON; the run's local mixer (window 4) keeps its own window, so every setting scores the same here."""
  out = tmp_path / "past.json"
  cmd = ["benchmarks/past_context.py", f"--workdir={trained}", "--length=40", "--rows=2", "--sinks=0,2", f"--out={out}"]
  run = subprocess.run([sys.executable] + cmd, capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "| setting | 0-16 | 16-32 | 32-40 | 16-40 / 0-16 |" in run.stdout
  rows = [line for line in run.stdout.splitlines() if line.startswith(("| no window", "| window 16"))]
  assert len(rows) == 3 and len({r.split("|", 2)[2] for r in rows}) == 1, rows
  saved = json.load(open(out))
  assert saved["trained_context"] == 16 and saved["window 16, 2 sinks"]["sinks"] == 2 and "eval_loss" in saved
