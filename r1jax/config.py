"""Typed run configuration: frozen dataclasses validated on construction, built from ml_collections dicts."""

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Mapping

import ml_collections

from r1jax import registry
from r1jax.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
ARCHS = ("lm", "video")
TINY_SHAKESPEARE = "package:tinyshakespeare.txt"  # shipped in r1jax/assets (see its README), found from any cwd


def require(ok: bool, field: str, problem: str, fix: str) -> None:
  if not ok:
    raise ConfigError(f"{field}: {problem}. Fix: {fix}.")


def _rebuilt(cls: type, values: dict[str, Any]) -> Any:
  return cls(**values)


class PicklesAsDicts:
  """Pickles a frozen config dataclass whose read-only mappings (types.MappingProxyType, which do not pickle) are
  rebuilt, and validated again, from plain dicts: a ModelConfig or a Config can be sent to a worker process."""

  def __reduce__(self):
    return _rebuilt, (
      type(self),
      {
        f.name: dict(v) if isinstance(v := getattr(self, f.name), types.MappingProxyType) else v
        for f in dataclasses.fields(self)
      },
    )


def named_options(table: dict, values: Mapping[str, Any], field: str) -> Mapping[str, Any]:
  """{registered name: its validated options dataclass} from {name: mapping or dataclass}, read-only; ConfigError
  naming `field` for an unknown name or option."""
  return types.MappingProxyType(
    {
      name: registry.build_options(registry.lookup(table, name, field).options, v, f"{field}.{name}")
      for name, v in values.items()
    }
  )


@dataclasses.dataclass(frozen=True)
class ModelConfig(PicklesAsDicts):
  """Decoder-only Transformer LM; each layer's mixer and feed-forward are chosen by registry name."""

  vocab_size: int = 0  # 0: taken from the dataset; else >= the dataset's vocabulary
  pad_vocab_to: int = 64  # embedding rows rounded up to a multiple of this (shardable); padded logits are masked
  num_layers: int = 4  # >= 1
  d_model: int = 128  # divisible by num_heads
  num_heads: int = 4  # >= 1
  num_kv_heads: int = 0  # 0: = num_heads; else divides num_heads (grouped-query attention)
  d_ff: int = 0  # feed-forward hidden width; 0: 8/3 * d_model rounded up to a multiple of 32
  rope_base: float = 10000.0  # RoPE wavelength base (Su et al. 2021)
  arch: str = "lm"  # lm: decoder-only LM on tokens [B, T] | video: clip classifier on patches [B, T, S, P]
  mixer: str = "attention"  # registered mixer name used in every layer (see registry.MIXERS); video: spacetime
  mixer_pattern: tuple[str, ...] = ()  # per-layer mixer names, cycled over layers; () = `mixer` everywhere
  mixer_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # name -> options
  ffn: str = "swiglu"  # registered feed-forward name (see registry.FFNS)
  ffn_pattern: tuple[str, ...] = ()  # per-layer feed-forward names, cycled; () = `ffn` everywhere
  ffn_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # name -> options
  dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16 (params stay param_dtype)
  param_dtype: str = "float32"  # float32 | bfloat16
  dropout: float = 0.0  # residual and embedding dropout rate in [0, 1)
  tie_embeddings: bool = True  # output head shares the token embedding (as nanoGPT)
  remat: bool = False  # rematerialise each block in the backward pass (saves activation memory)
  init_std: float = 0.02  # normal init std; residual output projections scaled by 1/sqrt(2*num_layers)
  norm_eps: float = 1e-6  # RMSNorm epsilon
  mtp_depth: int = 0  # D multi-token-prediction modules (DeepSeek-V3 2.2): module k predicts token t+k+1; 0: off
  mtp_weight: float = 0.3  # lambda: the MTP losses weigh lambda / D each (DeepSeek-V3: 0.3, later 0.1)
  quant: str = ""  # "": float weights; int8: quantization-aware training on INT8 weights (r1jax/inference/quantize.py)

  def __post_init__(self):
    for name in ("num_layers", "d_model", "num_heads"):
      require(
        getattr(self, name) >= 1,
        f"model.{name}",
        f"must be >= 1, got {getattr(self, name)}",
        f"set --config.model.{name} to a positive integer",
      )
    require(
      self.d_model % self.num_heads == 0,
      "model.num_heads",
      f"{self.num_heads} heads do not divide d_model={self.d_model}",
      f"pick num_heads among the divisors of {self.d_model} or change model.d_model",
    )
    require(
      self.num_kv_heads >= 0 and (self.num_kv_heads == 0 or self.num_heads % self.num_kv_heads == 0),
      "model.num_kv_heads",
      f"{self.num_kv_heads} does not divide num_heads={self.num_heads}",
      "use 0 (multi-head) or a divisor of model.num_heads",
    )
    require(
      self.vocab_size >= 0 and self.pad_vocab_to >= 1 and self.d_ff >= 0,
      "model.vocab_size/d_ff",
      "must be >= 0 (pad_vocab_to >= 1)",
      "use 0 for 'from the dataset' / 'default width'",
    )
    require(self.dtype in DTYPES, "model.dtype", f"unknown dtype {self.dtype!r}", f"use one of {DTYPES}")
    require(
      self.param_dtype in DTYPES[:2],
      "model.param_dtype",
      f"unknown dtype {self.param_dtype!r}",
      "use float32 or bfloat16",
    )
    require(0.0 <= self.dropout < 1.0, "model.dropout", f"{self.dropout} is not in [0, 1)", "use e.g. 0.1")
    require(self.arch in ARCHS, "model.arch", f"unknown {self.arch!r}", f"use one of {ARCHS}")
    require(
      self.mtp_depth >= 0 and self.mtp_weight >= 0 and (self.arch == "lm" or not self.mtp_depth),
      "model.mtp_depth",
      f"{self.mtp_depth} modules of weight {self.mtp_weight} for arch={self.arch!r}",
      "use 0 or more modules and a weight >= 0, on a language model (arch=lm) only",
    )
    require(
      self.quant in ("", "int8") and (self.arch == "lm" or not self.quant),
      "model.quant",
      f"{self.quant!r} for arch={self.arch!r}",
      "use '' (float weights) or 'int8' (quantization-aware training), on a language model (arch=lm)",
    )
    object.__setattr__(self, "mixer_pattern", tuple(self.mixer_pattern))
    object.__setattr__(self, "ffn_pattern", tuple(self.ffn_pattern))
    for table, field in ((registry.MIXERS, "mixer"), (registry.FFNS, "ffn")):
      for name in self.layer_names(field):
        registry.lookup(table, name, f"model.{field}" + ("_pattern" if getattr(self, f"{field}_pattern") else ""))
      object.__setattr__(
        self, f"{field}_options", named_options(table, getattr(self, f"{field}_options"), f"model.{field}_options")
      )
    for kind in ("mixer", "ffn"):  # option sets with constraints that involve the model's widths check them here
      for name in sorted(set(self.layer_names(kind))):
        getattr(self.options(kind, name), "check_model", lambda model: None)(self)
    video = registry.video_mixers()
    video_mixers = set(self.layer_names("mixer")) & set(video)
    if self.arch == "video":
      require(
        set(self.layer_names("mixer")) <= set(video),
        "model.mixer",
        f"arch=video mixes [B, T, S, D] clips, but the layers use {sorted(set(self.layer_names('mixer')))}",
        f"use --config.model.mixer={video[0]} (choose the variant with mixer_options.spacetime.kind)",
      )
      require(
        self.num_layers >= 2 or self.options("mixer", "spacetime").kind != "factorised",
        "model.num_layers",
        "kind=factorised needs a spatial and a temporal layer",
        "use model.num_layers >= 2",
      )
    else:
      require(
        not video_mixers,
        "model.mixer",
        f"{sorted(video_mixers)} mixes [B, T, S, D] clips, not token sequences",
        "set --config.model.arch=video with data.kind=moving_digits, or pick a 1D mixer",
      )

  def layer_names(self, kind: str) -> tuple[str, ...]:
    """The registered name used by each layer for `kind` in ("mixer", "ffn")."""
    pattern = getattr(self, f"{kind}_pattern") or (getattr(self, kind),)
    return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

  def options(self, kind: str, name: str) -> Any:
    """The validated options dataclass of mixer/ffn `name` (defaults where not given)."""
    table = registry.MIXERS if kind == "mixer" else registry.FFNS
    entry = registry.lookup(table, name, f"model.{kind}")
    return getattr(self, f"{kind}_options").get(name) or entry.options()

  @property
  def hidden_ff(self) -> int:
    return self.d_ff or -(-8 * self.d_model // 3 // 32) * 32

  @property
  def padded_vocab(self) -> int:
    return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to

  def __hash__(self):  # options are read-only mappings; hash by value so Linen transforms can key on configs
    return hash(repr(self))


@dataclasses.dataclass(frozen=True)
class DataConfig(PicklesAsDicts):
  """Dataset and batching; the dataset is chosen by registry name, its own options in `options` (as a mixer's).
  The batch is global (over all devices and processes)."""

  kind: str = "text"  # registered dataset name (registry.DATASETS): text | mqar | listops | moving_digits | passkey
  seq_len: int = 64  # tokens per training sequence (moving_digits: unused, a clip's size is in its options)
  batch_size: int = 12  # global sequences per step
  eval_batch_size: int = 0  # 0: batch_size
  eval_max_batches: int = 0  # 0: the whole validation/test split
  options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # dataset name -> options

  def __post_init__(self):
    registry.lookup(registry.DATASETS, self.kind, "data.kind")
    require(
      self.seq_len >= 2 and self.batch_size >= 1,
      "data.seq_len/batch_size",
      "must be >= 2 and >= 1",
      "use positive sizes",
    )
    require(
      self.eval_batch_size >= 0 and self.eval_max_batches >= 0,
      "data.eval_batch_size",
      "must be >= 0",
      "use 0 for the defaults",
    )
    object.__setattr__(self, "options", named_options(registry.DATASETS, self.options, "data.options"))

  @property
  def opts(self) -> Any:
    """The validated options dataclass of this run's dataset (defaults where not given)."""
    return self.options.get(self.kind) or registry.DATASETS[self.kind].options()

  def __hash__(self):
    return hash(repr(self))


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warm-up and cosine decay (nanoGPT's schedule)."""

  lr: float = 1e-3  # peak learning rate
  min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
  warmup_steps: int = 100
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-8
  weight_decay: float = 0.1  # decoupled; applied to matrices only (not norms)
  grad_clip: float = 1.0  # global-norm clip; 0 disables
  # A regex searched in parameter names such as 'layer0/mixer/indexer_wk': only matching parameters train, the others
  # stay bitwise unchanged (e.g. DSA's indexer warm-up: 'indexer'); "" trains every parameter.
  trainable: str = ""
  # True: the warm-up and cosine restart at each change of the data's phase (the MQAR length curriculum's end), each
  # phase decaying over its own steps (SGDR-style restarts, Loshchilov & Hutter 2017); False: one schedule for the run.
  restart_per_phase: bool = False

  def __post_init__(self):
    try:
      re.compile(self.trainable)
    except re.error as e:
      raise ConfigError(
        f"optim.trainable: {self.trainable!r} is not a regular expression ({e}). Fix: pass a Python "
        "regex searched in names like 'layer0/mixer/wq', e.g. 'indexer'."
      ) from None
    require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}", "use e.g. 1e-3")
    require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]", "use 0.1")
    require(
      self.warmup_steps >= 0 and self.grad_clip >= 0 and self.weight_decay >= 0,
      "optim.warmup_steps",
      "warmup_steps, grad_clip and weight_decay must be >= 0",
      "use non-negative values",
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Loop lengths, evaluation, logging and checkpointing."""

  steps: int = 2000
  eval_every: int = 250  # 0: evaluate only at the end
  log_every: int = 20  # train metrics to TensorBoard/JSONL every this many steps
  checkpoint_every: int = 500  # 0: no periodic checkpoints (a final one is still written when workdir is set)
  keep_checkpoints: int = 2
  progress: bool = True  # tqdm progress bar (process 0 only)
  # What each evaluation measures (r1jax/evaluators.py): "timed" first (loss, accuracy, forward tokens/s: the forward
  # pass alone), then any of groups (accuracy per group of rows) | bpc (bits per character) | diagnostics (the
  # mixers' costly diagnostics, in an untimed pass of their own) | int8 (loss and accuracy with the weights rounded to
  # INT8 after training, r1jax/inference/quantize.py, and the parameters' bytes)
  evaluators: tuple[str, ...] = ("timed", "groups", "bpc", "diagnostics")
  # Eval batches the untimed diagnostics pass reads (e.g. a sparse mixer's recall of the dense top-k, which runs a
  # dense attention pass; registry.DIAGNOSTICS), from the start of the eval set; 0: all of them.
  diag_batches: int = 1
  # Another run's workdir: a new run starts from its latest checkpoint's parameters (and model state), matched by
  # name; parameters it lacks (e.g. a sparse mixer's indexer) keep their init; the optimizer and step start fresh.
  # Ignored once this run has checkpoints of its own (it resumes from them).
  init_from: str = ""

  def __post_init__(self):
    require(self.steps >= 1, "train.steps", f"must be >= 1, got {self.steps}", "use a positive number")
    require(
      min(self.eval_every, self.log_every, self.checkpoint_every) >= 0 and self.log_every >= 1,
      "train.log_every",
      "intervals must be >= 0 (log_every >= 1)",
      "use e.g. 20",
    )
    require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1", "use 2")
    object.__setattr__(self, "evaluators", tuple(self.evaluators))
    require(
      self.diag_batches >= 0,
      "train.diag_batches",
      f"must be >= 0, got {self.diag_batches}",
      "use 1 (0: every eval batch)",
    )


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh shape; -1 on one axis takes the remaining devices. Axes: data, fsdp, expert, tensor."""

  data: int = -1
  fsdp: int = 1
  expert: int = 1  # reserved for expert parallelism (MoE)
  tensor: int = 1
  devices: int = 0  # 0: all devices; n: the first n (single-process only), e.g. an unsharded run on a multi-device host

  def __post_init__(self):
    require(self.devices >= 0, "mesh.devices", f"must be >= 0, got {self.devices}", "use 0 for all devices")
    sizes = (self.data, self.fsdp, self.expert, self.tensor)
    require(
      all(s == -1 or s >= 1 for s in sizes) and sizes.count(-1) <= 1,
      "mesh",
      f"axis sizes {sizes} must be positive with at most one -1",
      "e.g. --config.mesh.data=-1",
    )


@dataclasses.dataclass(frozen=True)
class DistConfig:
  """Multi-process JAX (jax.distributed.initialize); all empty = single process."""

  coordinator_address: str = ""  # host:port of process 0; "" with num_processes=1 runs single-process
  num_processes: int = 1
  process_id: int = -1  # -1: from the environment (cluster auto-detection)
  auto: bool = False  # call jax.distributed.initialize() with cluster auto-detection (SLURM, TPU pods)

  def __post_init__(self):
    require(self.num_processes >= 1, "dist.num_processes", "must be >= 1", "use 1 for single-process runs")
    require(
      self.num_processes == 1 or bool(self.coordinator_address) or self.auto,
      "dist.coordinator_address",
      "several processes need a coordinator",
      "pass --config.dist.coordinator_address=localhost:12345",
    )


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole run: what to train, on what, how long, where."""

  # default_factory: the defaults are built when a Config is, not when this module is imported (the model's and
  # data's look their names up in the registries, which import this module)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  dist: DistConfig = dataclasses.field(default_factory=DistConfig)
  seed: int = 0
  workdir: str = ""  # checkpoints and logs; "" = no checkpoints, no logs (pure in-memory run)

  def __post_init__(self):
    arch = registry.DATASETS[self.data.kind].module.arch
    require(
      self.model.arch == arch,
      "model.arch",
      f"arch={self.model.arch!r} cannot read data.kind={self.data.kind!r}",
      f"use model.arch={arch} for it (video: data.kind=moving_digits; lm: token data)",
    )
    check = getattr(self.data.opts, "check", None)
    if check is not None:  # the dataset's constraints on other fields (its options' check)
      check(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any] | ml_collections.ConfigDict) -> "Config":
    """Builds a Config, raising ConfigError naming any unknown or invalid field."""
    if isinstance(values, ml_collections.ConfigDict):
      values = values.to_dict()
    return _build(cls, values, "")


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for key, value in values.items():
    if key not in fields:
      close = difflib.get_close_matches(key, fields, n=1)
      hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
      raise ConfigError(f"unknown config field '{prefix}{key}'.{hint} Known fields: {sorted(fields)}.")
    hint = hints[key]
    if dataclasses.is_dataclass(hint):
      value = _build(hint, value, f"{prefix}{key}.")
    elif hint in (int, float, bool, str) and value is not None:
      ok = isinstance(value, hint) or (hint is float and isinstance(value, int) and not isinstance(value, bool))
      if not ok or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{prefix}{key}: expected {hint.__name__}, got {value!r}. Fix: pass a {hint.__name__}.")
      value = hint(value)
    kwargs[key] = value
  return cls(**kwargs)


def default_config() -> ml_collections.ConfigDict:
  """The default run as an ml_collections ConfigDict, with every registered mixer's and ffn's options listed."""
  values = to_dict(Config())
  values["model"]["mixer_options"] = registry.default_options(registry.MIXERS)
  values["model"]["ffn_options"] = registry.default_options(registry.FFNS)
  values["data"]["options"] = registry.default_options(registry.DATASETS)
  for key in ("mixer_pattern", "ffn_pattern"):  # tuples, so that --config.model.mixer_pattern can override them
    values["model"][key] = tuple(values["model"][key])
  values["train"]["evaluators"] = tuple(values["train"]["evaluators"])
  return ml_collections.ConfigDict(values)


RUN_KEYS = ("model", "data", "optim", "seed", "train.steps", "train.init_from")  # what a run's result depends on
RESUME_KEYS = ("model", "data", "optim", "seed", "train.init_from")  # a resumed run may change its length and logs


def dotted_get(d: Any, dotted: str) -> Any:
  """d["a"]["b"] for "a.b" in a nested config dict; None where a level is missing."""
  for k in dotted.split("."):
    d = d.get(k) if isinstance(d, Mapping) else None
  return d


def _used_names(model: Mapping[str, Any], kind: str) -> set[str]:
  """The registered mixer/ffn names a model config dict's layers use (its pattern cycled over the layers)."""
  pattern = list(model.get(f"{kind}_pattern") or ()) or [model[kind]]
  return {pattern[i % len(pattern)] for i in range(model["num_layers"])}


def run_identity(cfg: Mapping[str, Any], keys: tuple[str, ...] = RUN_KEYS) -> dict[str, Any]:
  """What a run's result depends on, from a config dict (`to_dict`, or a saved result's), flattened to dotted names.

  Only the options of the mixers and feed-forwards the layers use, and only the run's own dataset's options, count:
  adding an option to an unused mixer, or a field to another dataset, leaves every finished run valid.
  """
  out = {}

  def flat(prefix: str, value: Any) -> None:
    if isinstance(value, Mapping):
      for k, v in value.items():
        flat(f"{prefix}.{k}", v)
    else:
      out[prefix] = list(value) if isinstance(value, tuple) else value

  for key in keys:
    *parent, leaf = key.split(".")
    if leaf not in (dotted_get(cfg, ".".join(parent)) if parent else cfg):
      continue  # saved before the field existed: check_same_config compares it as its default
    value = dotted_get(cfg, key)
    if key == "model" and isinstance(value, Mapping):
      value = dict(value)
      for kind in ("mixer", "ffn"):
        used = _used_names(value, kind)
        value[f"{kind}_options"] = {k: v for k, v in value.get(f"{kind}_options", {}).items() if k in used}
    elif key == "data" and isinstance(value, Mapping):
      value = dict(value)
      value["options"] = {k: v for k, v in value.get("options", {}).items() if k == value.get("kind")}
    flat(key, value)
  return out


NO_DEFAULT = object()


def field_default(dotted: str) -> Any:
  """The default of a dotted config field ('optim.trainable', 'model.mixer_options.sparse.top_k',
  'model.mixer_options.mla.indexer.top_k', 'data.options.mqar.power_a'), as run_identity flattens it (tuples as
  lists); NO_DEFAULT for a field that does not exist. A field inside a default dataclass value (MLA's indexer) takes
  that value's field, not its class's default."""
  parts = dotted.split(".")
  tables = {
    ("model", "mixer_options"): registry.MIXERS,
    ("model", "ffn_options"): registry.FFNS,
    ("data", "options"): registry.DATASETS,
  }
  if len(parts) >= 4 and tuple(parts[:2]) in tables:
    registry.load_builtins()
    entry = tables[tuple(parts[:2])].get(parts[2])
    value, parts = (entry.options() if entry else NO_DEFAULT), parts[3:]
  else:
    value = Config()
  for part in parts:
    if not dataclasses.is_dataclass(value) or part not in {f.name for f in dataclasses.fields(value)}:
      return NO_DEFAULT
    value = getattr(value, part)
  return list(value) if isinstance(value, tuple) else value


def to_dict(cfg: Config) -> dict[str, Any]:
  """A JSON-serialisable dict of `cfg` (options dataclasses become dicts): what runs save and are rebuilt from."""

  def plain(x):
    if dataclasses.is_dataclass(x):
      return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
      return {k: plain(v) for k, v in x.items()}
    if isinstance(x, tuple):
      return [plain(v) for v in x]
    return x

  out = plain(cfg)
  for kind in ("mixer", "ffn"):  # the options of the layers' own mixers/ffns, defaults filled in; no others
    out["model"][f"{kind}_options"] = {
      name: plain(cfg.model.options(kind, name)) for name in sorted(set(cfg.model.layer_names(kind)))
    }
  out["data"]["options"] = {cfg.data.kind: plain(cfg.data.opts)}  # likewise the run's own dataset's
  return out
