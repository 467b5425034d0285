"""r1jax's allocator setting (r1jax/allocator.py): every command runs with it from its start."""

import os
import subprocess
import sys

import pytest

from r1jax import allocator

from conftest import REPO

SCRIPT = """
import os, sys
import ml_collections
import ctypes, resource
from absl import flags
from r1jax import entry

def main(argv):
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  buf = libc.malloc(64 << 20)  # 64 MiB from glibc's malloc (numpy would madvise huge pages itself), touched:
  ctypes.memset(buf, 1, 64 << 20)  # 16,384 page faults on 4 KiB pages, ~32 on 2 MiB pages
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  print(os.environ.get("GLIBC_TUNABLES"), flags.FLAGS.c.n, faults < 4096, faults)

entry.run(main, {"c": ml_collections.ConfigDict({"n": 1})})
"""


def _run(tmp_path, **env):
  script = tmp_path / "prog.py"
  script.write_text(SCRIPT)
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", allocator.SWITCH)}
  base["PYTHONPATH"] = REPO
  out = subprocess.run(
    [sys.executable, str(script), "--c.n=7"], env={**base, **env}, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.split()


def test_the_setting_is_added_to_the_tunables_there_are_once():
  if not allocator._uses_glibc():
    pytest.skip("not glibc: nothing to set")
  ours = ":".join(allocator.TUNABLES)
  assert allocator.environment({})["GLIBC_TUNABLES"] == ours
  mixed = allocator.environment({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})["GLIBC_TUNABLES"]
  assert mixed == f"glibc.malloc.tcache_count=0:{ours}"
  assert allocator.environment({"GLIBC_TUNABLES": mixed})["GLIBC_TUNABLES"] == mixed
  # a value the user chose for one of them is theirs
  theirs = allocator.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})["GLIBC_TUNABLES"]
  assert theirs == "glibc.malloc.hugetlb=0:" + ":".join(allocator.TUNABLES[1:])
  assert "GLIBC_TUNABLES" not in allocator.environment({allocator.SWITCH: "default"})
  # a process with one XLA thread also gets one malloc arena, after the user's tunables and ours
  one = allocator.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, one_thread=True)["GLIBC_TUNABLES"]
  assert one == ":".join(["glibc.malloc.hugetlb=0", *allocator.TUNABLES[1:], *allocator.ONE_THREAD])


def test_a_command_started_without_it_reexecutes_itself_once_with_its_arguments(tmp_path):
  if not allocator._uses_glibc():
    pytest.skip("not glibc: nothing to set")
  tunables, n, huge, _ = _run(tmp_path)
  assert tunables == ":".join(allocator.TUNABLES) and n == "7"  # the command line survives the re-execution
  thp = "/sys/kernel/mm/transparent_hugepage/enabled"
  if os.path.exists(thp) and "[never]" not in open(thp).read():
    assert huge == "True"  # glibc read the setting: the buffer is on 2 MiB pages
  tunables, n, huge, _ = _run(tmp_path, **{allocator.SWITCH: "default"})
  assert tunables == "None" and n == "7" and huge == "False"  # switched off: as started, on 4 KiB pages
