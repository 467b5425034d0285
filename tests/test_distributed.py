"""Two processes on localhost (jax.distributed, gloo CPU collectives) train like one process with as many devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _cmd(text_file, workdir, **dist):
  flags = {"data.path": text_file, "data.seq_len": 16, "data.batch_size": 8, "data.eval_batch_size": 8,
           "data.eval_max_batches": 3, "model.num_layers": 2, "model.d_model": 32, "model.num_heads": 4,
           "model.d_ff": 64, "train.steps": 8, "train.eval_every": 4, "train.log_every": 2,
           "train.checkpoint_every": 4, "train.progress": False, "mesh.data": 2, "mesh.fsdp": 2,
           "workdir": workdir, **{f"dist.{k}": v for k, v in dist.items()}}
  return [sys.executable, "-m", "r1jax.main"] + [f"--config.{k}={v}" for k, v in flags.items()]


def _env(devices: int) -> dict:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_mesh(text_file, tmp_path):
  single = subprocess.run(_cmd(text_file, str(tmp_path / "one")), env=_env(4), capture_output=True, text=True,
                          timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  address = f"localhost:{_free_port()}"
  procs = [subprocess.Popen(_cmd(text_file, str(tmp_path / "two"), coordinator_address=address, num_processes=2,
                                 process_id=i), env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  one = json.loads(single.stdout.strip().splitlines()[-1])
  two = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert two[0]["perf"]["devices"] == one["perf"]["devices"] == 4
  for result in two:  # both processes see the same global metrics
    np.testing.assert_allclose(result["final"]["eval/loss"], one["final"]["eval/loss"], rtol=1e-5)
  assert sorted(d for d in os.listdir(tmp_path / "two" / "checkpoints") if d.isdigit()) == ["4", "8"]
  assert os.path.exists(tmp_path / "two" / "result.json")  # written once, by process 0
