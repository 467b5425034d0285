"""The two errors every entry point turns into one line (r1jax/entry.py): a config that cannot work, a stopped run."""


class ConfigError(ValueError):
  """A configuration that cannot work; the message names the field and a fix."""


class NonFiniteError(RuntimeError):
  """Training stopped: a step's loss or gradient norm was not finite; nothing from that step on was saved."""
