"""The notebooks execute as CI runs them (QUICK), and every cell that draws shows its figure: a figure drawn after a
library call must not vanish (the library never switches matplotlib's backend)."""

import glob
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

from r1jax.lab import ablation

from conftest import REPO, xla_flags

pytestmark = pytest.mark.slow  # end-to-end: subprocesses and whole runs (the whole suite only)

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
DRAWS = re.compile(r"plt\.show\(|display\((?!Markdown)|\.subplots\(")  # a cell that means to show a figure


def drawing_cells_without_figure(nb) -> list[int]:
  """Indices of code cells that draw but hold no image/png output."""
  return [
    i
    for i, c in enumerate(nb.cells)
    if c.cell_type == "code"
    and DRAWS.search(c.source)
    and not any("image/png" in o.get("data", {}) for o in c.get("outputs", []))
  ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_and_every_drawing_cell_shows_a_figure(path, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", xla_flags(8, fast_compile=False))  # the kernel trains for hundreds of steps
  monkeypatch.setenv(ablation.QUICK_ENV, "1")  # the sizes the stored outputs show
  nb = nbformat.read(path, as_version=4)
  NotebookClient(
    nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(path)}}
  ).execute()
  assert drawing_cells_without_figure(nb) == [], "cells that draw but show no figure"
