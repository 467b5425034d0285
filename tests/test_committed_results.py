"""What the repository commits from real runs: every experiment driver's summary under results/<driver>/ (from its
default run), CLAIMS.md generated from exactly those summaries, and no local paths in them or in the notebooks."""

import glob
import json
import os

import pytest

from r1jax.lab import claims, reporting

from conftest import REPO

RESULTS = os.path.join(REPO, "results")
DRIVERS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "experiments", "*.py")))
IGNORED = ("seed", ".xla_cache")  # runs and the compile cache are not committed (.gitignore)


def committed_files() -> list[str]:
  """results/ as the repository holds it: the summaries, not the runs, the cache or the sweep record."""
  out = []
  for root, dirs, files in os.walk(RESULTS):
    dirs[:] = [d for d in dirs if not d.startswith(IGNORED)]
    out += [os.path.join(root, f) for f in files if f != "sweep.json" and not f.endswith(".tmp")]
  return out


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_driver_has_its_default_run_committed(driver):
  summaries = [
    p
    for p in committed_files()
    if os.path.basename(p) == "results.json" and os.path.relpath(p, RESULTS).split(os.sep)[0] == driver
  ]
  assert summaries, f"results/{driver}/ holds no results.json. Fix: run `python experiments/{driver}.py` and commit it"
  for path in summaries:
    saved = reporting.load_summary(os.path.dirname(path))
    finished = [label for label, run in saved["runs"].items() if "failed" not in run]
    assert finished and set(saved["scale"]) == set(finished) == set(saved["curves"]), path
    assert {r["variant"] for r in saved["rows"]} == {label.split("/")[0] for label in saved["runs"]}
    for name in ("results.md", "learning_curves.png", "quality_vs_flops.png"):
      assert os.path.exists(os.path.join(os.path.dirname(path), name)), f"{path}: {name} missing"


def test_claims_md_regenerates_byte_for_byte_from_the_committed_results():
  with open(os.path.join(REPO, "CLAIMS.md")) as f:
    committed = f.read()
  assert claims.ledger(RESULTS) == committed, "CLAIMS.md is stale. Fix: python -m r1jax.claims (from the repo root)"


def test_committed_results_and_notebooks_hold_no_local_paths():
  texts = {p: open(p).read() for p in committed_files() if p.endswith((".json", ".md", ".csv"))}
  texts.update({p: open(p).read() for p in glob.glob(os.path.join(REPO, "notebooks", "*.ipynb"))})
  texts[os.path.join(REPO, "CLAIMS.md")] = open(os.path.join(REPO, "CLAIMS.md")).read()
  for path, text in texts.items():
    for local in (REPO, "/tmp/", "/home/", "/root/", "/Users/"):
      assert local not in text, f"{path} names the local path {local!r}"


def test_every_notebook_is_committed_executed():
  for path in glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")):
    nb = json.load(open(path))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), f"{path}: not executed (run it, then commit)"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", [])), path


# Results written before r1jax recorded provenance (issue 45), each until its driver's next regeneration; CLAIMS.md
# names them "not recorded". An entry whose results do carry provenance fails the test below: remove it then.
BEFORE_PROVENANCE = {
  "context_rnn_ablation",
  "hierarchical_routing_ablation",
  "moe_ablation",
}


def test_every_committed_summary_records_where_it_came_from():
  """Each results.json and report.json carries the provenance of whatever wrote it, and each finished run in a
  results.json its own (r1jax/provenance.py), so that CLAIMS.md can name the code, jax and hardware behind it."""
  seen = set()
  for path in committed_files():
    if os.path.basename(path) not in ("results.json", "report.json"):
      continue
    experiment = os.path.relpath(path, os.path.join(REPO, "results")).split(os.sep)[0]
    saved = json.load(open(path))
    recorded = bool(saved.get("provenance", {}).get("versions", {}).get("jax"))
    if experiment in BEFORE_PROVENANCE:
      seen.add(experiment)
      assert not recorded, f"{path} now records provenance. Fix: remove {experiment!r} from BEFORE_PROVENANCE"
      continue
    assert recorded, f"{path}: no provenance. Fix: rerun its driver"
    if os.path.basename(path) == "results.json":
      finished = [label for label, run in saved["runs"].items() if "failed" not in run]
      assert set(saved.get("runs_provenance", {})) == set(finished), path
      assert all(p and p["versions"]["jax"] for p in saved["runs_provenance"].values()), path
  assert seen == BEFORE_PROVENANCE, f"no committed results for {BEFORE_PROVENANCE - seen}: remove them from the list"
