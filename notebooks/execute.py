"""Executes notebooks in place, as CI does (QUICK) and as the repository commits them (outputs stored).

  python notebooks/execute.py                      # every notebook, at the quick sizes (R1JAX_QUICK=1, as CI)
  python notebooks/execute.py sparse_attention     # some, by name
  R1JAX_QUICK=0 python notebooks/execute.py        # the live demonstrations at their full sizes

Each runs from notebooks/ (so that `../results` is the committed results); a failing cell stops with its error and
leaves the file as it was.
"""

import glob
import os
import sys

import nbformat
from nbclient import NotebookClient

from r1jax import allocator, atomic
from r1jax.lab import ablation

HERE = os.path.dirname(os.path.abspath(__file__))


def execute(path: str) -> None:
  nb = nbformat.read(path, as_version=4)
  NotebookClient(
    nb, timeout=1800, kernel_name="python3", record_timing=False, resources={"metadata": {"path": HERE}}
  ).execute()
  with atomic.writing(path) as tmp:
    nbformat.write(nb, tmp)


if __name__ == "__main__":
  os.environ.setdefault(ablation.QUICK_ENV, "1")  # the kernels inherit it: the stored outputs are CI's sizes
  os.environ.update(allocator.environment())  # and r1jax's allocator setting, from their start
  names = sys.argv[1:] or sorted(os.path.basename(p)[:-6] for p in glob.glob(os.path.join(HERE, "*.ipynb")))
  for name in names:
    path = os.path.join(HERE, name if name.endswith(".ipynb") else name + ".ipynb")
    if not os.path.exists(path):
      sys.exit(f"error: {name}: no such notebook in {HERE}. Fix: use one of the names of notebooks/*.ipynb.")
    print(f"executing {os.path.basename(path)}", flush=True)
    execute(path)
