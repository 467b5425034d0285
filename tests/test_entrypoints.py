"""Every command of the README runs as written (tiny step counts, one CPU device) and shows what it should; a bad
config at any entry point is one line and exit status 2."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from r1jax.lab import ablation, claims

from conftest import REPO, xla_flags

pytestmark = pytest.mark.slow  # end-to-end: subprocesses and whole runs (the whole suite only)

ENV = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}


def _check_train_step(out, res):
  rows = [line for line in out.splitlines() if line.startswith("| 1x32x2") or line.startswith("| 2x32x2")]
  assert len(rows) == 2 and rows[0].rstrip(" |").endswith("| 1 | 1")  # ratios against the first size


def _check_scaling(out, res):
  """attention_scaling.py (and recurrence_scaling.py, the same sweep with its variants): one child process per
  measurement, a table of ratios to dense, and a slope and crossover line per variant."""
  rows = [line for line in out.splitlines() if line.startswith("| 64 |")]
  assert len(rows) == 2 and rows[0].startswith("| 64 | dense |") and "| 1.000 | 1.000 | 1.000 |" in rows[0]
  assert rows[1].split("|")[2].strip() + ": fwd+bwd time slope" in out and "n/a" not in out


def _check_parts(out, res):
  """attention_parts.py: NSA's parts, one row each with forward and forward+backward seconds."""
  rows = [line for line in out.splitlines() if line.startswith("| ") and " | " in line[2:]]
  assert any(r.startswith("| selected branch") for r in rows) and len(rows) == 7, out


def claim_rows(results_root) -> list[str]:
  """The ledger's claim table under `results_root` (not its table of where the results came from)."""
  return claims.ledger(str(results_root)).split("## Where the results came from")[0].splitlines()


def _check_decode(out, res):
  """decode.py: a child process per measurement, a row per (context, variant) with ratios to dense, a crossover line."""
  rows = [line for line in out.splitlines() if line.startswith("| 64 |")]
  assert len(rows) == 2 and rows[0].startswith("| 64 | dense |") and rows[0].count("(1.00)") == 4, rows
  assert "local: decode step" in out and "n/a" not in out
  saved = json.load(open(res / "decode.json"))  # what the claims ledger reads
  assert saved["contexts"] == [32, 64] and set(saved["variants"]) == {"dense", "local"}
  assert saved["variants"]["dense"]["step_sec_b1"][1] > 0 and saved["model"]["d_model"] == 32


def _check_sparse(out, res):
  # passkey only, for time: the other tasks run the same code paths (their claim rows read "not tested" here)
  assert os.path.exists(res / "passkey" / "results.md") and "| sparse_attn_ablation/passkey |" in out
  assert "| dsa | 1 |" in out and "mixer/recall" in out  # the indexer's recall diagnostic is a column
  assert "| dense | " in out and "- dsa: slope" in out and os.path.exists(res / "report.md")
  assert os.path.exists(res / "passkey" / "accuracy_by_depth.png") and "| dsa | " in out.split("Passkey")[1]
  facts = json.load(open(res / "report.json"))  # what the claims ledger reads
  assert set(facts["complexity"]) == {"dense", "dsa_warmup", "dsa"} and 1.5 < facts["complexity"]["dense"]["slope"]
  assert facts["layer_time"]["variants"] == {"dense": ["dense"], "dsa_warmup": ["dsa_warmup", "dsa"]}
  assert "| dense | " in out.split("One layer")[1] and "| dsa_warmup / dsa | " in out.split("One layer")[1]
  rows = [line for line in claim_rows(res.parent) if "| sparse_attn_ablation/passkey |" in line]
  assert len(rows) == 1 and "dsa:" in rows[0] and "not tested" not in rows[0]
  # The driver's report and the ledger judge each claim from its one declaration: the same rows, the same verdicts.
  ours = lambda line: "| sparse_attn_ablation/" in line  # noqa: E731
  reported = [line for line in open(res / "report.md").read().splitlines() if ours(line)]
  assert reported == [line for line in claims.ledger(str(res.parent)).splitlines() if ours(line)]


def _check_kv_cache(out, res):
  """kv_cache_ablation (the text task, for time): its table, the cache / quality / decode table, report.json and
  the claim's row."""
  assert os.path.exists(res / "shakespeare" / "results.md") and "kv_cache_ablation/shakespeare: mean" in out
  table = out.split("## The KV cache")[1]
  assert "| mha | 16,384 | 128 | 1,024 (1.00) |" in table and "| mla | 19,488 | 48 | 384 (0.38) |" in table
  facts = json.load(open(res / "report.json"))["decode"]
  assert facts["contexts"] == [256, 512] and set(facts["variants"]) == {"mha", "mla"}
  assert facts["variants"]["mla"]["cache_bytes_per_token"] == 384
  rows = [line for line in claim_rows(res.parent) if "| kv_cache_ablation/" in line]
  assert len(rows) == 1 and "mla: 62% smaller cache than mha" in rows[0]


def _check_hierarchical(out, res):
  # ListOps only: which variants a task runs (routing only on ListOps) is test_ablation's task_plan test.
  assert "| listops | routed25 |" in out and "| listops | fusion_token | 1.005 |" in out
  assert "not supported at this scale" in out
  assert "### beta per layer: listops / fusion_token" in out and "mixer/routed_pos" in out
  assert os.path.exists(res / "listops" / "results.md") and os.path.exists(res / "report.md")


def _check_context_rnn(out, res):
  assert "| mqar | scalar_k2 | 256 |" in out and "| mqar | attention | 8,192 |" in out  # decode state at T=32
  assert "| mqar | hybrid | 6,144 |" in out and "mixer/state_size" in out
  assert "scalar_k2 128 floats" in out and "### memory horizon 1 / (1 - a) in tokens: mqar / hybrid" in out
  assert os.path.exists(res / "mqar" / "results.md") and os.path.exists(res / "report.md")


def _check_moe_dispatch(out, res):
  """moe_dispatch.py: every phase of the layer and the dense SwiGLU as 1.00, then the train steps with their ratio."""
  rows = [line.split("|")[3].strip() for line in out.splitlines() if line.startswith("| 64 | 4 |")]
  assert rows == ["route", "sort", "gather", "experts", "combine", "moe layer", "capacity layer", "dense SwiGLU"]
  assert out.splitlines()[[i for i, line in enumerate(out.splitlines()) if "| dense SwiGLU |" in line][0]].endswith(
    "| 1.00 |"
  )
  assert "Whole train steps" in out and len([line for line in out.splitlines() if line.startswith("| 64 | ")]) == 9


def _check_moe(out, res):
  assert "| top1 < dense | Switch" in out  # the anchors' orderings, per seed
  assert "| top1 | 8.02 | 1.02 |" in out  # 8x the FFN parameters of dense (+ router), 1x of them active
  assert "## MoE against dense_8x" in out and "| top1 |" in out.split("## MoE against dense_8x")[1]
  assert "top1 vs dense_8x:" in out.split("## Seed claims, judged")[1]
  assert os.path.exists(res / "report.md")


def _check_attention3d(out, res):
  assert "attention3d_ablation/appearance: mean" in out and "| time_channel | 1 |" in out and "| space | 1 |" in out
  assert "divided" not in (res / "text" / "results.md").read_text()  # video kinds run on clips only
  assert "comparisons per patch" in out and "## Time + channel attention on text" in out
  assert "| attention3d_ablation/text |" in out.split("## Seed claims, judged")[1]


@pytest.mark.parametrize(
  "args,field",
  [
    (["experiments/dense_baseline.py", "--config.model.num_hedas=2"], "Did you mean 'config.model.num_heads'"),
    (["experiments/sparse_attn_ablation.py", "--config.mqar.model.num_heads=3"], "model.num_heads: 3 heads"),
    (["experiments/moe_ablation.py", "--variants=top3"], "--variants: unknown ['top3']"),
    (["-m", "r1jax.main", "--config.bogus=1"], "unknown config field 'config.bogus'"),
    (
      ["-m", "r1jax.main", "--config.data.options.text.path=/no/such/file.txt"],
      "data.options.text.path: text file '/no/such/file.txt'",
    ),
    (["-m", "r1jax.main", "--config.train.steps=many"], "flag --config.train.steps=many"),
    (["-m", "r1jax.claims", "--resuls=x"], "Unknown command line flag 'resuls'"),
    (["-m", "r1jax.prepare", "--input=/no/such/*.txt", "--out=/tmp/r1jax_never"], "--input: '/no/such/*.txt' matches"),
    (["-m", "r1jax.main", "--preset=gpt3:nsa"], "preset name='gpt3' is unknown"),
    (
      ["-m", "r1jax.main", "--config.data.kind=tokens", "--config.data.options.tokens.path=/no/such/dir"],
      "data.options.tokens.path: '/no/such/dir' holds no meta.json",
    ),
    (["benchmarks/train_step.py", "--sizes=2x30x4"], "model.num_heads: 4 heads do not divide d_model=30"),
    (["benchmarks/attention_scaling.py", "--variants=dense,topk8"], "--variants: unknown 'topk8'"),
  ],
)
def test_a_bad_config_at_any_entry_point_is_one_line_and_exit_status_2(args, field, tmp_path):
  out = subprocess.run(
    [sys.executable] + args + [f"--results_dir={tmp_path / 'res'}"] * args[0].startswith("exp"),
    cwd=REPO,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=120,
  )
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
  assert field in lines[0] and "Fix:" in lines[0]
  assert not os.path.exists(tmp_path / "res")  # nothing written


def _readme_commands() -> list[str]:
  """The commands of the README's "Running things" block, continuation lines joined."""
  text = open(os.path.join(REPO, "README.md")).read()
  block = text.split("## Running things", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
  return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


README_COMMANDS = _readme_commands()
# What each README command gets appended so that it runs in seconds (absl: the last value of a flag wins), and what
# its output must show. A driver keeps the variants a command names, else runs one cheap variant; a driver's default
# invocation (no flags) runs the smoke settings below and is checked.
TINY_STEPS = [
  "--config.train.steps=2",
  "--config.train.eval_every=0",
  "--config.train.checkpoint_every=0",
  "--config.data.eval_max_batches=1",
  "--config.train.progress=False",
]
TINY = {
  "r1jax.main": (TINY_STEPS, None),
  "benchmarks/attention_scaling.py": (
    ["--lengths=64", "--budget=8", "--d_model=32", "--heads=2", "--repeats=1", "--variants=dense,local"],
    _check_scaling,
  ),
  "benchmarks/attention_parts.py": (["--lengths=128", "--repeats=1"], _check_parts),
  "benchmarks/recurrence_scaling.py": (
    ["--lengths=64", "--d_model=32", "--heads=2", "--repeats=1", "--variants=dense,fw_chunkwise"],
    _check_scaling,
  ),
  "benchmarks/decode.py": (
    [
      "--contexts=32,64",
      "--steps=4",
      "--d_model=32",
      "--heads=2",
      "--layers=1",
      "--batch=2",
      "--repeats=1",
      "--variants=dense,local",
    ],
    _check_decode,
  ),
  "benchmarks/train_step.py": (["--sizes=1x32x2,2x32x2", "--steps=2", "--seq_len=16", "--batch=4"], _check_train_step),
  "benchmarks/moe_dispatch.py": (
    ["--tokens=64", "--experts=4", "--d_model=16", "--d_expert=8", "--seq_len=32", "--layers=1", "--repeats=1"],
    _check_moe_dispatch,
  ),
}
ONE_VARIANT = {
  "dense_baseline": "small",
  "mqar_dense": "d64",
  "sparse_attn_ablation": "dense",
  "hierarchical_routing_ablation": "global",
  "context_rnn_ablation": "attention",
  "moe_ablation": "dense",
  "attention3d_ablation": "space",
  "kv_cache_ablation": "mha",
  "mtp_ablation": "d2",
  "int8_ablation": "qat",
}
SMOKE = {
  "sparse_attn_ablation": (["--variants=dense,dsa_warmup,dsa", "--tasks=passkey"], _check_sparse),  # DSA's chain
  "hierarchical_routing_ablation": (
    ["--tasks=listops", "--variants=global,fusion_token,routed25"],
    _check_hierarchical,
  ),
  "context_rnn_ablation": (["--tasks=mqar", "--variants=attention,scalar_k2,hybrid"], _check_context_rnn),
  "moe_ablation": (["--variants=dense,dense_8x,top1"], _check_moe),
  # motion: the appearance task's code path on other clips (skipped for time)
  "attention3d_ablation": (["--variants=divided,space,time_channel", "--tasks=appearance,text"], _check_attention3d),
  "kv_cache_ablation": (["--variants=mha,mla", "--tasks=shakespeare"], _check_kv_cache),
}


def test_the_readme_lists_the_commands_this_test_runs():
  programs = [next(a for a in shlex.split(c, comments=True) if "=" not in a) for c in README_COMMANDS]
  assert len(README_COMMANDS) >= 15 and set(programs) == {"python", "tensorboard"}  # tensorboard: not run
  defaults = {shlex.split(c, comments=True)[1] for c in README_COMMANDS if len(shlex.split(c, comments=True)) == 2}
  assert {f"experiments/{d}.py" for d in SMOKE} <= defaults  # every smoke check runs


@pytest.mark.parametrize("command", [c for c in README_COMMANDS if "python" in shlex.split(c, comments=True)])
def test_readme_command_runs_as_written_with_tiny_step_counts(command, tmp_path):
  words = shlex.split(command, comments=True)
  env = dict(ENV)
  while "=" in words[0]:  # VAR=value prefixes
    key, value = words.pop(0).split("=", 1)
    env[key] = value
    if key == "XLA_FLAGS":  # the command's devices, with the tests' compile-time flags (no change in semantics)
      env[key] = " ".join([value] + xla_flags(1).split()[1:])
  assert words[0] == "python"
  target = words[2] if words[1] == "-m" else words[1]
  extra, check = TINY.get(target, ([], None))
  res = tmp_path
  if target.startswith("experiments/"):
    driver = os.path.basename(target)[:-3]
    res = tmp_path / driver
    extra = ["--quick", "--seeds=0", f"--results_dir={res}"]
    if len(words) == 2 and driver in SMOKE:  # the default invocation: the smoke settings, checked
      smoke, check = SMOKE[driver]
      extra += smoke
    elif not any(w.startswith("--variants=") for w in words):
      extra.append(f"--variants={ONE_VARIANT[driver]}")
    # a command's own step counts win over --quick: shrink them again
    extra += [f"{w.split('=')[0]}=3" for w in words if w.split("=")[0].endswith(".train.steps")]
  elif target == "r1jax.main":
    extra = extra + [f"--config.workdir={tmp_path / 'run'}"]
  elif target in ("benchmarks/decode.py", "benchmarks/attention_scaling.py"):  # never over the committed ones
    extra = extra + [f"--out={tmp_path / os.path.basename(target)[:-3]}.json"]
  out = subprocess.run(
    [sys.executable] + words[1:] + extra, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
  if target.startswith("experiments/"):  # a driver prints its table and writes it (per task, if it has tasks)
    tables = [res / "results.md"] + [res / t / "results.md" for t in os.listdir(res)]
    assert "mean ± std over seeds" in out.stdout and any(os.path.exists(t) for t in tables)
  if check is not None:
    check(out.stdout, res)


DRIVERS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "experiments")) if f.endswith(".py"))


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_variant_of_every_driver_is_a_valid_config(driver, tmp_path):
  """Each variant a driver declares (on request or by default, on each task it may run) builds a valid config, so
  `--variants=<any>` never fails on a typo in the declaration (nothing is trained)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(f"driver_{driver}", os.path.join(REPO, "experiments", f"{driver}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  tasks = getattr(module, "TASKS", None) or {"": module.BASE}
  limits = getattr(module, "TASK_VARIANTS", None) or {}
  for task, base in tasks.items():
    variants = {k: v for k, v in module.VARIANTS.items() if k in limits.get(task, module.VARIANTS)}
    configs = ablation.Ablation(driver, base, variants, seeds=(0,), results_dir=str(tmp_path)).configs()
    assert {v for v, _ in configs} == set(variants)
