"""Orbax checkpoints of train state (params, optimizer, step) together with the data position and config."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from r1jax.registry import ConfigError

# Config sections that must match for a resume to make sense (loop lengths and logging may change).
_MUST_MATCH = ("model", "data", "optim", "seed")


def dotted_get(d: Any, dotted: str) -> Any:
  """d["a"]["b"] for "a.b" in a nested config dict; None where a level is missing."""
  for k in dotted.split("."):
    d = d.get(k) if isinstance(d, dict) else None
  return d


def check_same_config(saved: dict, config: dict, where: str, keys=_MUST_MATCH) -> None:
  """Raises ConfigError naming the first of `keys` (dotted for nested ones) on which `saved` differs from `config`."""
  for key in keys:
    if dotted_get(saved, key) != dotted_get(config, key):
      raise ConfigError(f"{where} holds a run with a different '{key}' config. Fix: use a new --config.workdir (or "
                        "--results_dir for an ablation), delete the old run, or go back to the original config.")


class Checkpointer:
  """Saves {state, meta} (asynchronously) when asked and restores the latest complete checkpoint.

  A run killed mid-save leaves only an unfinalised temporary directory, which orbax ignores on restore.
  """

  def __init__(self, workdir: str, keep: int, create: bool = True):
    """create=False: only read (a missing folder is not made, and has no latest step)."""
    self.dir = os.path.join(os.path.abspath(workdir), "checkpoints")  # orbax needs absolute paths
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    self.manager = ocp.CheckpointManager(self.dir, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, abstract_state: Any, shardings: Any, config: dict) -> tuple[Any, dict]:
    """Restores the latest checkpoint into `shardings`; checks the saved config matches `config`."""
    step = self.manager.latest_step()
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_same_config(meta["config"], config, f"workdir {os.path.dirname(self.dir)!r}")  # before any array is read
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
    state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    return state, meta

  def save(self, step: int, state: Any, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
