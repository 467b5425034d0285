"""Every file r1jax writes goes through `writing`: written under a temporary name beside its place, then renamed over
it, so that a reader (or a run resumed after a kill) sees the old file or the new one, never part of one."""

import contextlib
import json
import os
from typing import Any, Iterator

from r1jax.provenance import provenance

RESULT_FILE = "result.json"  # a finished run's result, in its workdir


@contextlib.contextmanager
def writing(path: str, sync: bool = False) -> Iterator[str]:
  """Yields `<path>.tmp` to write to; on leaving without an error it replaces `path` (os.replace, atomic on POSIX).

  Args:
    path: the file's final place.
    sync: fsync the file before the rename (data that must survive a machine crash, e.g. token shards).
  """
  tmp = path + ".tmp"
  yield tmp
  if sync:
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
  os.replace(tmp, path)


def write_bytes(path: str, data: bytes, sync: bool = False) -> None:
  with writing(path, sync) as tmp, open(tmp, "wb") as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  with writing(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=1))


def save_figure(path: str, fig, dpi: int = 100) -> None:
  """A matplotlib Figure as a PNG file (no global backend involved)."""
  with writing(path) as tmp:
    fig.savefig(tmp, dpi=dpi, format="png")


def write_record(path: str, record: dict) -> None:
  """A result as JSON, stamped with where it came from (r1jax/provenance.py: commit, versions, XLA flags, hardware,
  time) unless it carries that already: every result r1jax writes (a run's, a driver's summary and report, a
  benchmark's measurements) goes through here."""
  write_json(path, {**record, "provenance": record.get("provenance") or provenance()})


def save_result(result: dict) -> None:
  """<workdir>/result.json of a finished run (nothing without a workdir); the one place a run's result is written."""
  workdir = result["config"]["workdir"]
  if workdir:
    write_record(os.path.join(workdir, RESULT_FILE), result)
