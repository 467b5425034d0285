"""Scalar metrics to TensorBoard event files and a JSONL log (process 0 only); resumable."""

import json
import os
from typing import Mapping

from tensorboard.summary import Writer

from r1jax import atomic


class MetricWriter:
  """Writes `{step, name: value}` records to `<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tb`.

  On resume from step s, JSONL records after s (written by the killed run after its last checkpoint) are dropped,
  so the log reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
    self.enabled = bool(workdir) and enabled
    self.records: list[dict] = []  # every record of the run, also when nothing is written to disk
    if not self.enabled:
      return
    self.path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(self.path):
      self.records = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
      atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
    self._jsonl = open(self.path, "a")
    self._tb = Writer(os.path.join(workdir, "tb"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self.records.append(record)
    if not self.enabled:
      return
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
