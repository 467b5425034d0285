"""The memory allocator's settings for every r1jax process: glibc's malloc keeps freed memory for reuse and backs it
with transparent huge pages (GLIBC_TUNABLES: glibc.malloc.hugetlb=1, mmap_max=0, trim_threshold=1 TiB).

XLA's CPU runtime allocates each step's buffers afresh. By default glibc serves every block over its mmap threshold
with a fresh mmap and returns it with munmap, so each step touches new 4 KiB pages, each a page fault the kernel
zero-fills: the README's main job on this 2-core machine spent 81-90 s of 343-381 s of CPU time in the kernel (24
M page faults). With huge pages alone (hugetlb=1, what sweep workers used) 32-34 s (1.4 M faults); blocks kept in
the heap for reuse (mmap_max=0: no per-block mmap; trim_threshold: freed memory is not handed back) fault only
while the heap grows. The price is a higher resident size: the heap does not shrink (500 steps of the main job:
0.81 GB peak against 0.58 GB).

glibc reads its tunables once, when the process starts, so a command that lacks them re-executes itself once with
them (`ensure`, called by r1jax.entry.run before the program's first step); workers and notebook kernels are started
with them (`environment`). A tunable the user set keeps the user's value; R1JAX_ALLOCATOR=default leaves the
allocator as glibc sets it (nothing is re-executed).
"""

import os
import sys

TUNABLES = ("glibc.malloc.hugetlb=1", "glibc.malloc.mmap_max=0", f"glibc.malloc.trim_threshold={1 << 40}")
SWITCH = "R1JAX_ALLOCATOR"  # "default": leave the allocator as it is
_REEXECUTED = "_R1JAX_REEXECUTED"  # set in the re-executed process: never twice


def _uses_glibc() -> bool:
  import platform

  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _with_tunables(tunables: str) -> str:
  items = [t for t in tunables.split(":") if t]
  for tunable in TUNABLES:
    key = tunable.split("=")[0]
    if not any(t.startswith(key + "=") for t in items):
      items.append(tunable)
  return ":".join(items)


def environment(env: dict | None = None) -> dict[str, str]:
  """`env` (default os.environ) with the settings added, for a process about to be started; unchanged when it is
  switched off or the platform's C library is not glibc."""
  env = dict(os.environ if env is None else env)
  if env.get(SWITCH) != "default" and _uses_glibc():
    env["GLIBC_TUNABLES"] = _with_tunables(env.get("GLIBC_TUNABLES", ""))
  return env


def active() -> bool:
  """Whether this process started with the settings (or needs none)."""
  return environment() == dict(os.environ)


def ensure() -> None:
  """Re-executes this process once with the settings, where it started without it: the same interpreter and command
  line (sys.orig_argv: `python -m r1jax.main ...` stays a module run). Nothing is re-executed inside an interactive
  session or a notebook kernel, or when R1JAX_ALLOCATOR=default."""
  if active() or os.environ.get(_REEXECUTED) or not getattr(sys, "orig_argv", None) or hasattr(sys, "ps1"):
    return
  if "ipykernel" in sys.modules:
    return
  env = environment()
  env[_REEXECUTED] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
