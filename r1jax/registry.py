"""Name -> (module, options) registries for sequence mixers, feed-forwards and datasets."""

import dataclasses
import difflib
import importlib
import pkgutil
import typing
from typing import Any, Callable

from r1jax.errors import ConfigError

# The packages whose modules register the built-in mixers, feed-forwards and datasets: each package's __init__
# imports every module in its folder (import_all), so a new mechanism or dataset is one new file there.
BUILTIN_PACKAGES = ("r1jax.mixers", "r1jax.ffn", "r1jax.data")


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


def import_all(package: str, path) -> None:
  """Imports every module of a package's folder (a package's __init__ calls this with its __name__ and __path__),
  so that each module's register_* decorators run; modules named _* are skipped."""
  for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
    if not info.name.startswith("_"):
      importlib.import_module(f"{package}.{info.name}")


def load_builtins() -> None:
  """Registers every built-in mixer, feed-forward and dataset (imports BUILTIN_PACKAGES once)."""
  global _loaded
  if not _loaded:
    _loaded = True
    for package in BUILTIN_PACKAGES:
      importlib.import_module(package)


def is_video(name: str) -> bool:
  """Whether mixer `name` mixes video clips [B, T, S, D] (its module's VIDEO flag) rather than sequences [B, T, D]."""
  return bool(getattr(lookup(MIXERS, name, "model.mixer").module, "VIDEO", False))


def video_mixers() -> tuple[str, ...]:
  """The registered mixers of model.arch=video (see is_video), sorted."""
  load_builtins()
  return tuple(sorted(name for name in MIXERS if is_video(name)))


def lookup(table: dict[str, Entry], name: str, field: str) -> Entry:
  """Returns the entry for `name`, or raises ConfigError naming `field` and the known names."""
  load_builtins()
  if name not in table:
    close = difflib.get_close_matches(name, table, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{field}={name!r} is not a registered name.{hint} Known: {sorted(table)}.")
  return table[name]


def build_options(options_cls: type, values: Any, field: str) -> Any:
  """Builds an options dataclass from a mapping, raising ConfigError on unknown or invalid fields; a field whose type
  is itself an options dataclass (MLA's `indexer`) is built from its own mapping the same way, over its default."""
  if isinstance(values, options_cls):
    return values
  values = dict(values or {})
  hints = typing.get_type_hints(options_cls)
  known = {f.name for f in dataclasses.fields(options_cls)}
  for key in values:
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ConfigError(f"unknown config field '{field}.{key}'.{hint} Known fields: {sorted(known)}.")
    if dataclasses.is_dataclass(hints[key]) and not isinstance(values[key], hints[key]):
      # fields not given keep the parent's default for them (MLA's indexer: DSA's recipe, not the class defaults)
      default = next(f for f in dataclasses.fields(options_cls) if f.name == key).default
      given = {**(dataclasses.asdict(default) if dataclasses.is_dataclass(default) else {}), **dict(values[key] or {})}
      values[key] = build_options(hints[key], given, f"{field}.{key}")
  try:
    return options_cls(**values)
  except ConfigError as e:
    raise ConfigError(f"{field}: {e}") from None


def default_options(table: dict[str, Entry]) -> dict[str, dict[str, Any]]:
  """Default options of every registered entry, as plain dicts (for ml_collections configs)."""
  load_builtins()
  return {name: dataclasses.asdict(entry.options()) for name, entry in sorted(table.items())}
