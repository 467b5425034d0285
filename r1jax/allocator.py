"""The memory allocator's settings for every r1jax process: glibc's malloc keeps freed memory for reuse and backs it
with transparent huge pages (GLIBC_TUNABLES: glibc.malloc.hugetlb=1, mmap_max=0, trim_threshold=1 TiB).

XLA's CPU runtime allocates each step's buffers afresh. By default glibc serves every block over its mmap threshold
with a fresh mmap and returns it with munmap, so each step touches new 4 KiB pages, each a page fault the kernel
zero-fills: the README's main job on this 2-core machine spent 81-90 s of 343-381 s of CPU time in the kernel (24
M page faults). With huge pages alone (hugetlb=1, what sweep workers used) 32-34 s (1.4 M faults); blocks kept in
the heap for reuse (mmap_max=0: no per-block mmap; trim_threshold: freed memory is not handed back) fault only
while the heap grows. The price is a higher resident size: the heap does not shrink (500 steps of the main job:
0.81 GB peak against 0.58 GB).

A process that runs one XLA thread (a sweep worker: `--xla_cpu_multi_thread_eigen=false`) also keeps every thread on
glibc's main arena (arena_max=1, `environment(one_thread=True)`). XLA runs a program on a thread of its own, whose
arena is an mmapped heap of at most 64 MiB: a bigger block is mmapped afresh and unmapped on every step whatever
mmap_max says. The sparse driver's dense and NSA MQAR runs side by side (seed 0, 2 pinned workers, 2-core AMD EPYC):
1.20 M page faults and 23.1 s of system time -> 0.26 M and 9.3 s; NSA's run 124 -> 114 s, its eval tokens/s 68.5k
-> 91.4k. The README's main job (XLA's thread pool on both cores) gained nothing from it (110.5 s wall, 6.0 s
system before; 115.7 s and 5.9 s with it), so other processes keep glibc's arenas.

glibc reads its tunables once, when the process starts, so a command that lacks them re-executes itself once with
them (`ensure`, called by r1jax.entry.run before the program's first step); workers and notebook kernels are started
with them (`environment`). A tunable the user set keeps the user's value; R1JAX_ALLOCATOR=default leaves the
allocator as glibc sets it (nothing is re-executed).
"""

import os
import sys

TUNABLES = ("glibc.malloc.hugetlb=1", "glibc.malloc.mmap_max=0", f"glibc.malloc.trim_threshold={1 << 40}")
ONE_THREAD = ("glibc.malloc.arena_max=1",)  # added for processes with one XLA thread (see the module docstring)
SWITCH = "R1JAX_ALLOCATOR"  # "default": leave the allocator as it is
_REEXECUTED = "_R1JAX_REEXECUTED"  # set in the re-executed process: never twice


def _uses_glibc() -> bool:
  import platform

  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _with_tunables(tunables: str, ours: tuple[str, ...]) -> str:
  items = [t for t in tunables.split(":") if t]
  for tunable in ours:
    key = tunable.split("=")[0]
    if not any(t.startswith(key + "=") for t in items):
      items.append(tunable)
  return ":".join(items)


def environment(env: dict | None = None, one_thread: bool = False) -> dict[str, str]:
  """`env` (default os.environ) with the settings added (and ONE_THREAD's for a process with one XLA thread), for a
  process about to be started; unchanged when it is switched off or the platform's C library is not glibc."""
  env = dict(os.environ if env is None else env)
  if env.get(SWITCH) != "default" and _uses_glibc():
    env["GLIBC_TUNABLES"] = _with_tunables(env.get("GLIBC_TUNABLES", ""), TUNABLES + (ONE_THREAD if one_thread else ()))
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
