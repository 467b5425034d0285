"""Two processes on localhost (jax.distributed, gloo CPU collectives) train like one process with as many devices,
and, SIGKILLed mid-run, resume from their orbax checkpoint (global arrays) to the same result."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from r1jax.config import Config, default_config
from r1jax.lab.ablation import override
from r1jax.train import train

from conftest import xla_flags

pytestmark = pytest.mark.slow  # end-to-end: subprocesses and whole runs (the whole suite only)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _flags(text_file, workdir, **dist) -> dict:
  return {
    "data.options.text.path": text_file,
    "data.seq_len": 16,
    "data.batch_size": 8,
    "data.eval_batch_size": 8,
    "data.eval_max_batches": 3,
    "model.num_layers": 2,
    "model.d_model": 32,
    "model.num_heads": 4,
    "model.d_ff": 64,
    "train.steps": 60,
    "train.eval_every": 30,
    "train.log_every": 10,
    "train.checkpoint_every": 10,
    "train.progress": False,
    "mesh.data": 2,
    "mesh.fsdp": 2,
    "workdir": workdir,
    **{f"dist.{k}": v for k, v in dist.items()},
  }


def _cmd(text_file, workdir, **dist):
  return [sys.executable, "-m", "r1jax.main"] + [
    f"--config.{k}={v}" for k, v in _flags(text_file, workdir, **dist).items()
  ]


def _env(devices: int) -> dict:
  return {**os.environ, "XLA_FLAGS": xla_flags(devices), "JAX_PLATFORMS": "cpu"}


def _two_processes(text_file, workdir):
  address = f"localhost:{_free_port()}"
  return [
    subprocess.Popen(
      _cmd(text_file, workdir, coordinator_address=address, num_processes=2, process_id=i),
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


@pytest.mark.slow
def test_two_processes_killed_mid_run_resume_to_the_one_process_result(text_file, tmp_path):
  # The reference: one process, the same 4-device mesh (the first 4 of this process's 8 CPU devices).
  one = train(
    Config.from_dict(
      override(default_config(), {**_flags(text_file, str(tmp_path / "one")), "mesh.devices": 4}, "test")
    )
  )
  two = str(tmp_path / "two")
  procs = _two_processes(text_file, two)
  deadline = time.time() + 240
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if os.path.isdir(os.path.join(two, "checkpoints")) and any(d.isdigit() for d in os.listdir(two + "/checkpoints")):
      break
    time.sleep(0.01)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  assert [p.wait() for p in procs] == [-signal.SIGKILL] * 2, "the run finished before it could be killed"
  assert not os.path.exists(os.path.join(two, "result.json"))

  procs = _two_processes(text_file, two)  # the same command again: both processes restore the global state
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert results[0]["perf"]["devices"] == one["perf"]["devices"] == 4 and results[0]["perf"]["processes"] == 2
  for result in results:  # both processes see the same global metrics, those of the uninterrupted single process
    assert 0 < result["perf"]["resumed_from"] < 60
    np.testing.assert_allclose(result["final"]["eval/loss"], one["final"]["eval/loss"], rtol=1e-5)
  assert sorted(int(d) for d in os.listdir(os.path.join(two, "checkpoints")) if d.isdigit())[-1] == 60
  assert os.path.exists(os.path.join(two, "result.json"))  # written once, by process 0
