"""Name -> (module, options) registries for sequence mixers, feed-forwards and datasets."""

import dataclasses
import difflib
import importlib
from typing import Any, Callable

# Modules that register the built-in mixers and feed-forwards on import. A new mechanism adds one line here and
# is then selectable by name from the config, without touching the model.
BUILTIN_MODULES = (
    "r1jax.attention.dense",
    "r1jax.attention.sparse",
    "r1jax.attention.block_sparse",
    "r1jax.attention.nsa",
    "r1jax.attention.mla",
    "r1jax.attention.local",
    "r1jax.attention.fusion",
    "r1jax.attention.routed",
    "r1jax.attention.spacetime",
    "r1jax.attention.channel",
    "r1jax.recurrent",
    "r1jax.feedforward",
    "r1jax.moe",
    "r1jax.data",
    "r1jax.mqar",
    "r1jax.listops",
    "r1jax.moving_digits",
    "r1jax.passkey",
    "r1jax.tokens",
)


class ConfigError(ValueError):
  """A configuration that cannot work; the message names the field and a fix."""


class NonFiniteError(RuntimeError):
  """Training stopped: a step's loss or gradient norm was not finite; nothing from that step on was saved."""


# Diagnostics that cost a pass of their own (a sparse mixer's recall of the dense top-k needs dense attention) are
# computed only when the caller makes this variable collection mutable: an untimed diagnostics pass
# (`model.apply(..., mutable=[DIAGNOSTICS])`, as Run.evaluate's), never a training or timed evaluation pass.
DIAGNOSTICS = "diagnostics"


def wants_diagnostics(module: Any) -> bool:
  """Whether `module` (a Linen module, inside apply) runs in a diagnostics pass (see DIAGNOSTICS)."""
  return module.is_mutable_collection(DIAGNOSTICS)


@dataclasses.dataclass(frozen=True)
class Entry:
  module: type  # a Linen module class taking (cfg: ModelConfig, opts: options); a dataset class (cfg, seed)
  options: type  # a frozen dataclass of the entry's options, all with defaults


MIXERS: dict[str, Entry] = {}
FFNS: dict[str, Entry] = {}
DATASETS: dict[str, Entry] = {}
_loaded = False


def _register(table: dict[str, Entry], kind: str, name: str, options: type) -> Callable[[type], type]:
  def wrap(module: type) -> type:
    if name in table and table[name].module.__qualname__ != module.__qualname__:
      raise ValueError(f"{kind} {name!r} is registered twice ({table[name].module} and {module})")
    table[name] = Entry(module, options)
    return module

  return wrap


def register_mixer(name: str, options: type) -> Callable[[type], type]:
  """Class decorator: makes a sequence mixer selectable as `model.mixer=name`."""
  return _register(MIXERS, "mixer", name, options)


def register_ffn(name: str, options: type) -> Callable[[type], type]:
  """Class decorator: makes a feed-forward selectable as `model.ffn=name`."""
  return _register(FFNS, "ffn", name, options)


def register_dataset(name: str, options: type) -> Callable[[type], type]:
  """Class decorator: makes a dataset selectable as `data.kind=name`, its options as `data.options.<name>.*`.

  The options dataclass may define `check(cfg)`, called with the whole run Config, for constraints that involve
  other fields (the sequence length, the number of steps)."""
  return _register(DATASETS, "dataset", name, options)


def load_builtins() -> None:
  global _loaded
  if not _loaded:
    _loaded = True
    for mod in BUILTIN_MODULES:
      importlib.import_module(mod)


def lookup(table: dict[str, Entry], name: str, field: str) -> Entry:
  """Returns the entry for `name`, or raises ConfigError naming `field` and the known names."""
  load_builtins()
  if name not in table:
    close = difflib.get_close_matches(name, table, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{field}={name!r} is not a registered name.{hint} Known: {sorted(table)}.")
  return table[name]


def build_options(options_cls: type, values: Any, field: str) -> Any:
  """Builds an options dataclass from a mapping, raising ConfigError on unknown or invalid fields."""
  if isinstance(values, options_cls):
    return values
  values = dict(values or {})
  known = {f.name for f in dataclasses.fields(options_cls)}
  for key in values:
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ConfigError(f"unknown config field '{field}.{key}'.{hint} Known fields: {sorted(known)}.")
  try:
    return options_cls(**values)
  except ConfigError as e:
    raise ConfigError(f"{field}: {e}") from None


def default_options(table: dict[str, Entry]) -> dict[str, dict[str, Any]]:
  """Default options of every registered entry, as plain dicts (for ml_collections configs)."""
  load_builtins()
  return {name: dataclasses.asdict(entry.options()) for name, entry in sorted(table.items())}
