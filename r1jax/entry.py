"""Command-line entry points: a config that cannot work ends the program with one line, not a traceback.

Every driver, `r1jax.main`, `r1jax.claims` and the benchmarks start through `run`: a ConfigError (bad value, unknown
field, missing data file, mesh that does not fit) prints `error: <field>: <problem>. Fix: <fix>.` on stderr and
exits with status 2; a run stopped on a non-finite loss (NonFiniteError) prints its one line (the step, the last
good checkpoint) and exits with status 1; any other exception keeps its traceback.
"""

import difflib
import sys
from typing import Callable, Mapping, Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from r1jax import allocator
from r1jax.errors import ConfigError, NonFiniteError

EXIT_CONFIG_ERROR = 2


def _leaves(cfg: ml_collections.ConfigDict, prefix: str) -> list[str]:
  out = []
  for key, value in cfg.items():
    out += _leaves(value, f"{prefix}.{key}") if isinstance(value, ml_collections.ConfigDict) else [f"{prefix}.{key}"]
  return out


def check_overrides(argv: Sequence[str], name: str, cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming an override `--name.a.b=v` in `argv` whose field `cfg` lacks, and the nearest known
  field (ml_collections would fail later with a bare AttributeError)."""
  for arg in argv:
    flag = arg.lstrip("-").split("=", 1)[0]
    if not arg.startswith("-") or not flag.startswith(f"{name}."):
      continue
    node, path = cfg, name
    for key in flag.split(".")[1:]:
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(flag, _leaves(cfg, name), n=1) or [
          f"{path}.{k}" for k in difflib.get_close_matches(key, known, n=1, cutoff=0.0)
        ]
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
          f"{arg}: unknown config field '{flag}'.{hint} Known fields of '{path}': {known}. Fix: "
          "correct the name (the driver's base config lists every field)."
        )
      node, path = node[key], f"{path}.{key}"


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, a bad value (e.g. --config.train.steps=abc, an unknown flag) raised as a ConfigError."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise ConfigError(f"{e}. Fix: see --helpshort for the flags and their types.") from None


def run(
  main: Callable[[list[str]], None],
  flag_configs: Mapping[str, ml_collections.ConfigDict | Callable[[], ml_collections.ConfigDict]] | None = None,
  argv: Sequence[str] | None = None,
) -> None:
  """Defines a ConfigDict flag per `flag_configs` entry (a ConfigDict, or a function returning one; --name.a.b=v
  overrides; main reads flags.FLAGS.name), then runs absl's `app.run(main)`. The overrides are checked first
  (ml_collections reads them as the flag is defined), and a ConfigError ends the program with one line on stderr and
  exit status 2. A command-line run (`argv` None) first re-executes itself with r1jax's allocator setting where it
  started without it (allocator.ensure)."""
  if argv is None:
    allocator.ensure()
  argv = list(sys.argv if argv is None else argv)
  try:
    for name, cfg in (flag_configs or {}).items():
      cfg = cfg() if callable(cfg) else cfg  # a function building the config may raise a ConfigError too
      check_overrides(argv[1:], name, cfg)
      config_flags.DEFINE_config_dict(name, cfg, f"config overrides: --{name}.<field>=<value>")
    app.run(main, argv=argv, flags_parser=_parse_flags)
  except (ConfigError, NonFiniteError) as e:
    sys.stderr.write("error: " + " ".join(str(e).splitlines()) + "\n")
    sys.exit(EXIT_CONFIG_ERROR if isinstance(e, ConfigError) else 1)
