"""Self-speculative decoding (r1jax/inference/speculative.py): greedy output equals plain greedy decoding token for
token for every causal mixer (caches rolled back or not, with and without a cache window), sampling draws each token
from the plain sampler's distribution (a chi-square test), and asking a model without MTP modules is one clear error.

The models are random with a 4-token vocabulary, so that drafts agree with the main model often enough for every
number of accepted drafts to occur (each test checks that some were accepted)."""

import itertools
import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from r1jax import generate, registry
from r1jax.errors import ConfigError
from r1jax.inference import decoding, speculative
from r1jax.model import Transformer
from r1jax.train import Run

from conftest import REPO, SHAKESPEARE
from helpers import SMALL_MIXER_OPTIONS, small_model_config, tiny_config

V = 4
registry.load_builtins()
CAUSAL = [n for n, e in sorted(registry.MIXERS.items()) if not decoding.why_not_decodable(e.module, e.options())]


def _model(mixer: str, depth: int, **kw):
  kw = {"num_layers": 2, **kw}
  cfg = small_model_config("mixer", mixer, SMALL_MIXER_OPTIONS.get(mixer, {}), mtp_depth=depth, **kw)
  model = Transformer(cfg)
  return model, nn.unbox(jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4), jnp.int32)))


# (mixer, MTP depth, cache window, sinks): every causal mixer at depth 2; a wrapping window with spare slots: the
# verify step at once (attention, no sinks), token by token (MLA; attention with a sink), rolled back (fast weights)
CASES = [(m, 2, 0, 0) for m in CAUSAL] + [
  ("attention", 2, 6, 0),
  ("mla", 2, 6, 0),
  ("attention", 1, 6, 1),
  ("fast_weight", 1, 6, 1),
]
QUICK = {("attention", 2, 0, 0), ("fast_weight", 2, 0, 0), ("attention", 2, 6, 0)}


@pytest.mark.parametrize(
  "mixer,depth,context,sinks",
  [c if c in QUICK else pytest.param(*c, marks=pytest.mark.slow) for c in CASES],
  ids=[f"{m}-D{d}-window{c}-sinks{n}" for m, d, c, n in CASES],
)
def test_greedy_speculative_decoding_equals_plain_greedy_decoding(mixer, depth, context, sinks):
  model, params = _model(mixer, depth, vocab_size=V)
  prompts = jax.random.randint(jax.random.key(0), (3, 9), 0, V)
  lengths = jnp.array([9, 2, 4])  # the first row's prompt is longer than the window: fed through rounds
  kw = dict(max_new_tokens=20, max_len=29, sampling=generate.Sampling(temperature=0.0), context=context, sinks=sinks)
  plain = generate.generate_ids(model, params, prompts, lengths, **kw)
  spec, counts = speculative.speculative_ids(model, params, prompts, lengths, **kw)
  np.testing.assert_array_equal(spec, plain)
  assert int(counts["accepted"][:, 0].sum()) > 0, "no draft was ever accepted: the test would not see a rollback"
  assert np.all(np.asarray(counts["tokens"]) <= (depth + 1) * np.asarray(counts["rounds"]))


def test_speculative_sampling_draws_from_the_plain_samplers_distribution():
  """4000 rows draw 3 tokens after one prompt (depth 2: drafts accepted, rejected and resampled); the counts of the
  64 outcomes against their exact probabilities (the model's forward over every prefix), cells expected below 5
  pooled: a chi-square test at a 1e-3 false-alarm rate (fixed seeds: the verdict is reproducible)."""
  model, params = _model("attention", 2, vocab_size=V, init_std=1.0, num_layers=1)
  prompt, N = [1, 3, 0], 4000
  prefixes = np.array([prompt + [a, b] for a, b in itertools.product(range(V), repeat=2)])
  logp = np.asarray(jax.nn.log_softmax(model.apply(params, jnp.asarray(prefixes))[0][..., :V], -1), np.float64)
  exact = np.array([np.exp(logp[i, 2, a] + logp[i, 3, b] + logp[i, 4, c]) for i, (a, b) in enumerate(
    itertools.product(range(V), repeat=2)) for c in range(V)])  # fmt: skip
  kw = dict(max_new_tokens=3, max_len=6, sampling=generate.Sampling(temperature=1.0, seed=0))
  out, counts = speculative.speculative_ids(
    model, params, jnp.tile(jnp.array([prompt]), (N, 1)), jnp.full((N,), 3), **kw
  )
  assert 0 < int(counts["accepted"][:, 0].sum()) < int(counts["rounds"].sum())  # both rules of the round ran
  seen = np.bincount(np.asarray(out) @ np.array([V * V, V, 1]), minlength=V**3)
  big = exact * N >= 5
  observed = np.append(seen[big], seen[~big].sum())
  expected = np.append(exact[big], exact[~big].sum()) * N
  chi2 = float(((observed - expected) ** 2 / expected).sum())
  assert scipy.stats.chi2.sf(chi2, len(observed) - 1) > 1e-3, f"chi2 {chi2:.1f} over {len(observed)} cells"


def test_a_model_without_mtp_modules_cannot_speculate():
  model, params = _model("attention", 0)
  with pytest.raises(ConfigError, match=r"needs a model trained with multi-token prediction .* Fix: decode without"):
    speculative.speculative_ids(
      model, params, jnp.ones((1, 2), jnp.int32), jnp.array([2]), max_new_tokens=2, max_len=4,
      sampling=generate.Sampling(),
    )  # fmt: skip


@pytest.mark.slow
def test_the_command_line_decodes_speculatively_a_run_trained_with_mtp(tmp_path):
  workdir = str(tmp_path / "run")
  overrides = dict(train__steps=4, train__checkpoint_every=4, model__mtp_depth=1, model__mixer="attention")
  Run(tiny_config(text=SHAKESPEARE, workdir=workdir, **overrides)).train()
  s = generate.Sampling(temperature=0.0)
  plain = generate.generate_text(workdir, ["ROMEO:", "A"], 24, s)
  assert generate.generate_text(workdir, ["ROMEO:", "A"], 24, s, speculative_by="mtp") == plain
  cmd = [sys.executable, "-m", "r1jax.generate", f"--workdir={workdir}", "--prompt=ROMEO:", "--max_new_tokens=24"]
  run = subprocess.run(cmd + ["--temperature=0", "--speculative=mtp"], capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.startswith(plain[0]) and "tokens per pass of the model" in run.stderr
  bad = subprocess.run(cmd + ["--speculative=eagle"], capture_output=True, text=True, cwd=REPO)
  assert bad.returncode != 0 and "--speculative" in bad.stderr
  out = tmp_path / "inference.json"
  bench = ["benchmarks/decode.py", "--variants=", f"--speculative_workdir={workdir}", f"--int8_workdir={workdir}"]
  bench += ["--speculative_contexts=40", "--speculative_tokens=8", "--batch=2", "--repeats=1", f"--out={out}"]
  run = subprocess.run([sys.executable] + bench, capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = [line for line in run.stdout.splitlines() if line.startswith(("| 40 |", "| trained + new |", f"| {workdir}"))]
  assert len(rows) == 3 and "n/a" not in run.stdout, run.stdout
  saved = json.load(open(out))
  assert set(saved["speculative"]["rows"]) == {"40", "0"} and saved["int8"]["row"]["int8_bytes"]["memory"] > 0
