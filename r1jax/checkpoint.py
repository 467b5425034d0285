"""Orbax checkpoints of train state (params, optimizer, step) together with the data position and config."""

import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from r1jax.config import NO_DEFAULT, RESUME_KEYS, field_default, run_identity
from r1jax.errors import ConfigError

_MISSING = "<missing>"


def check_same_config(saved: dict, config: dict, where: str, keys: tuple[str, ...] = RESUME_KEYS) -> None:
  """Raises ConfigError naming the first dotted field of the run identity (config.run_identity over `keys`) on
  which the `saved` config dict differs from `config`."""
  old, new = run_identity(saved, keys), run_identity(config, keys)
  for field in list(new) + [f for f in old if f not in new]:
    # A field added to r1jax after the run was saved counts as its default there (and the other way round).
    was, now = (side.get(field, field_default(field)) for side in (old, new))
    if was is NO_DEFAULT or now is NO_DEFAULT or was != now:
      raise ConfigError(
        f"{where} holds a run with a different '{field}' config (saved {old.get(field, _MISSING)!r}, "
        f"now {new.get(field, _MISSING)!r}). Fix: use a new --config.workdir (or --results_dir for an "
        "ablation), delete the old run, or go back to the original config."
      )


def latest_step(workdir: str) -> int | None:
  """The newest checkpoint step in <workdir>/checkpoints (None if none), read without creating anything."""
  ckpt = Checkpointer(workdir, 1, create=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


class Checkpointer:
  """Saves {state, meta} (asynchronously) when asked and restores the newest readable checkpoint.

  A run killed mid-save leaves only an unfinalised temporary directory, which orbax ignores on restore. A finalised
  checkpoint whose files are damaged (truncated, say) is moved to <workdir>/corrupt_checkpoints/<step> with a
  warning, and the next older one is restored.
  """

  def __init__(self, workdir: str, keep: int, create: bool = True):
    """create=False: only read (a missing folder is not made, and has no latest step)."""
    self.dir = os.path.join(os.path.abspath(workdir), "checkpoints")  # orbax needs absolute paths
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    self.manager = ocp.CheckpointManager(self.dir, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, abstract_state: Any, shardings: Any, config: dict) -> tuple[Any, dict]:
    """Restores the newest readable checkpoint into `shardings`; checks the saved config matches `config`."""
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
    workdir = os.path.dirname(self.dir)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        check_same_config(meta["config"], config, f"workdir {workdir!r}")  # before any array is read
        state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        return state, meta
      except ConfigError:
        raise
      except (ValueError, OSError, KeyError) as e:  # damaged files (JSONDecodeError is a ValueError)
        aside = os.path.join(workdir, "corrupt_checkpoints", str(step))
        logging.warning(
          "checkpoint step %d in %s cannot be read (%s: %s); moved to %s, trying an older one",
          step,
          self.dir,
          type(e).__name__,
          str(e)[:200],
          aside,
        )
        if jax.process_index() == 0:
          os.makedirs(os.path.dirname(aside), exist_ok=True)
          shutil.rmtree(aside, ignore_errors=True)
          shutil.move(os.path.join(self.dir, str(step)), aside)
        self.manager.reload()
    raise ConfigError(
      f"workdir {workdir!r}: no checkpoint in {self.dir} can be read (damaged ones were moved to "
      f"{os.path.join(workdir, 'corrupt_checkpoints')}). Fix: delete the workdir to start over, or "
      "use a new --config.workdir."
    )

  def restore_raw(self) -> tuple[Any, dict]:
    """The newest checkpoint as saved, without a target (nested dicts of host arrays) and its meta: for starting
    another run from it (train.init_from)."""
    step = self.manager.latest_step()
    restored = self.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    )
    return restored["state"], restored["meta"]

  def save(self, step: int, state: Any, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
