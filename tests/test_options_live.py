"""Every option is live: generated from the config schema, for each field of every registered options dataclass (each
mixer's, feed-forward's and dataset's) and each model, data, optim and train field, changing its value changes what
it should: a tiny model's forward pass and train steps (model and optimizer fields), the batches (data fields) or
the evaluation (evaluation fields). An option the code silently ignores fails here. The fields that legitimately
change no value are listed below, each with why; those that only choose another implementation of the same
computation are checked to give the same values.

The changed value is found, not hand-written: the first candidate that makes a valid config (a bool flipped; an int
+1, x2 or -1; a float x2, /2 or +0.5; a string from the words of the field's comment, which lists its choices; a
tuple shortened), unless ALTERNATIVES names one.
"""

import dataclasses
import functools
import inspect
import json
import re
import typing
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import registry, sharding
from r1jax.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from r1jax.errors import ConfigError
from r1jax.objective import forward
from r1jax.train import Run, initial_state, make_train_step

from helpers import SMALL_MIXER_OPTIONS, tiny_config

registry.load_builtins()

# Fields whose every value computes the same thing (another implementation, order or memory trade): checked to give
# the same forward pass (allclose) instead; each one's own tests compare its gradients too.
SAME_VALUES = {
  "model.remat": "recomputes each block in the backward pass",
  "model.mixer_options.attention.impl": "cuDNN or XLA's fused attention, or the naive reference",
  "model.mixer_options.local.impl": "blocked, cuDNN, block-sparse kernel or naive local attention",
  "model.mixer_options.nsa.implementation": "the selected branch through XLA or the block-sparse kernels",
  "model.mixer_options.block_sparse.implementation": "XLA or the block-sparse kernels",
  "model.mixer_options.fusion.local_impl": "as local.impl",
  "model.mixer_options.fusion.global_impl": "as attention.impl",
  "model.mixer_options.routed.local_impl": "as local.impl",
  "model.mixer_options.sparse.query_chunk": "queries per chunk",
  "model.mixer_options.nsa.query_chunk": "queries per chunk",
  "model.mixer_options.mla.indexer.query_chunk": "queries per chunk",
  "model.mixer_options.fast_weight.form": "chunkwise, parallel and recurrent forms agree",
  "model.mixer_options.fast_weight.chunk": "the chunkwise form's chunk",
  "model.ffn_options.moe.grouped_matmul": "ragged_dot, padded row blocks or the Pallas kernels over them",
  "model.ffn_options.moe.block_size": "rows per block of the padded path",
}
# Fields that change where, when or whether something is written or checked, not what is computed.
NOT_COMPUTATION = {
  "train.eval_every": "when evaluation runs",
  "train.log_every": "when metrics are written",
  "train.checkpoint_every": "when checkpoints are written",
  "train.keep_checkpoints": "how many checkpoints are kept",
  "train.progress": "the progress bar",
  "model.mixer_options.mla.absorb": "the decoding step only; absorbed == expanded is tests/test_mla.py's",
  "model.arch": "fixed by data.kind (changed alone, a config is refused: tests/test_config.py)",
  "data.options.tokens.verify": "checks the shards' sha256 on load",
}
# Fields checked by a test of their own, which builds what they need.
ELSEWHERE = {
  "train.init_from": "another run's checkpoint: tests/test_train.py::test_init_from_restores_parameters_by_name_and_"
  "trainable_freezes_the_rest_bitwise",
}
# Where a field acts only beside another value: the overrides of the base it is changed on.
MOE = "model.ffn_options.moe"
CONTEXT = {
  f"{MOE}.bias_rate": {f"{MOE}.balance": "aux_free"},
  # capacity slots that overflow at this size (with room for every copy, capacity computes what dropless does)
  f"{MOE}.dispatch": {f"{MOE}.capacity_factor": 0.25},
  f"{MOE}.capacity_factor": {f"{MOE}.dispatch": "capacity", f"{MOE}.capacity_factor": 0.25},
  f"{MOE}.topk_groups": {f"{MOE}.num_groups": 2},
  "model.mixer_options.sparse.indexer_loss_weight": {"model.mixer_options.sparse.indexer_loss": "kl"},
  "model.mixer_options.fast_weight.alpha": {"model.mixer_options.fast_weight.gate": "fixed"},
  "model.mixer_options.fast_weight.delta": {"model.mixer_options.fast_weight.gate": "scalar"},
  "data.kind": {f"data.options.mqar.{k}": v for k, v in dict(vocab_size=64, num_kv_pairs=2).items()},
  "model.mixer": {"model.mixer_options.local.window": 3},  # a window as long as T is dense attention
  "model.mixer_pattern": {"model.num_layers": 2, "model.mixer_options.local.window": 3},
  "model.ffn_pattern": {"model.num_layers": 2},
  "train.evaluators": {"model.mixer": "sparse", "model.mixer_options.sparse.top_k": 4},
  "optim.restart_per_phase": {
    "data.kind": "mqar",
    "data.seq_len": 32,
    "train.steps": 4,
    **{
      f"data.options.mqar.{k}": v
      for k, v in dict(
        vocab_size=64,
        num_kv_pairs=4,
        num_test_examples=16,
        curriculum_steps=2,
        curriculum_seq_len=16,
        curriculum_kv_pairs=2,
      ).items()
    },
  },
  # a curriculum of 2 steps at T=16 (the probe reads the batches of steps 0 and 2)
  **{
    f"data.options.mqar.curriculum_{k}": {
      "train.steps": 4,
      **{f"data.options.mqar.curriculum_{f}": v for f, v in dict(steps=2, seq_len=16, kv_pairs=2).items()},
    }
    for k in ("steps", "seq_len", "kv_pairs")
  },
  **{
    f"data.options.passkey.curriculum_{k}": {
      "train.steps": 4,
      "data.batch_size": 9,  # 9 x 256 tokens: rows of 128 or 144
      **{f"data.options.passkey.curriculum_{f}": v for f, v in dict(steps=2, seq_len=128).items()},
    }
    for k in ("steps", "seq_len")
  },
  "train.diag_batches": {"model.mixer": "sparse", "model.mixer_options.sparse.top_k": 4},
  "model.mtp_weight": {"model.mtp_depth": 1},
  # the query latent it reads exists with q_rank > 0 (without one, c_q is x itself)
  "model.mixer_options.mla.indexer_query": {
    "model.mixer_options.mla.sparse": True,
    "model.mixer_options.mla.q_rank": 8,
  },
}
ALTERNATIVES = {  # values the candidates would not find ("<text_file>", "<tokens_dir_2>": the fixtures' paths)
  "model.vocab_size": 200,  # >= the dataset's vocabulary (a smaller one is refused)
  "model.mixer": "local",
  "data.options.passkey.curriculum_seq_len": 144,
  "model.ffn": "none",
  "data.kind": "mqar",
  "optim.eps": 1e-3,  # near sqrt(v): 2e-8 moves no float32 parameter of this model
  "optim.grad_clip": 1e-3,  # a clip that acts at init (the gradient norm is below 1)
  "optim.trainable": "mixer",
  "data.options.text.path": "package:tinyshakespeare.txt",
  "data.options.passkey.path": "<text_file>",
  "data.options.tokens.path": "<tokens_dir_2>",
  "model.mixer_pattern": ("attention", "local"),
  "model.ffn_pattern": ("swiglu", "none"),
  "train.evaluators": ("timed",),
  "model.mixer_options.mla.indexer.select": None,  # sparse MLA has one rule (a config with another is refused)
}
# One layer, two train steps without warm-up: the second one's learning rate is on the cosine (min_lr_ratio acts on
# it); evaluation over the whole held-out set of a dataset (its size is an option).
MODEL_BASE = {
  "model.num_layers": 1,
  "mesh.devices": 1,
  "mesh.data": 1,
  "train.steps": 2,
  "optim.warmup_steps": 0,
  "data.eval_max_batches": 0,
}
DATASETS = {  # a small valid config of each dataset (data.kind and its options)
  "text": {},
  "mqar": {
    "data.kind": "mqar",
    "data.seq_len": 32,
    **{f"data.options.mqar.{k}": v for k, v in dict(vocab_size=64, num_kv_pairs=4, num_test_examples=16).items()},
  },
  "listops": {
    "data.kind": "listops",
    "data.seq_len": 64,
    "data.options.listops.min_len": 16,
    "data.options.listops.max_depth": 3,
    "data.options.listops.num_test_examples": 16,
  },
  "passkey": {
    "data.kind": "passkey",
    "data.seq_len": 256,
    "data.options.passkey.length_fractions": (0.5, 1.0),
    "data.options.passkey.num_test_examples": 16,
  },
  "moving_digits": {
    "model.arch": "video",
    "model.mixer": "spacetime",
    "data.kind": "moving_digits",
    **{
      f"data.options.moving_digits.{k}": v for k, v in dict(frames=3, canvas=8, patch=4, num_test_examples=16).items()
    },
  },
}


def _fields(cls: type, prefix: str) -> list[tuple[str, dataclasses.Field, type]]:
  """(dotted name, field, owner class) of every field of an options dataclass, nested ones (MLA's indexer) too."""
  out = []
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(hints[f.name]):
      out += _fields(hints[f.name], f"{prefix}.{f.name}")
    else:
      out.append((f"{prefix}.{f.name}", f, cls))
  return out


def _schema() -> list[tuple[str, dataclasses.Field, type]]:
  out = []
  for cls, prefix, skip in (
    (ModelConfig, "model", {"mixer_options", "ffn_options"}),
    (DataConfig, "data", {"options"}),
    (OptimConfig, "optim", set()),
    (TrainConfig, "train", set()),
  ):
    out += [(f"{prefix}.{f.name}", f, cls) for f in dataclasses.fields(cls) if f.name not in skip]
  for table, prefix in (
    (registry.MIXERS, "model.mixer_options"),
    (registry.FFNS, "model.ffn_options"),
    (registry.DATASETS, "data.options"),
  ):
    for name, entry in sorted(table.items()):
      out += _fields(entry.options, f"{prefix}.{name}")
  return out


SCHEMA = _schema()
# mesh.* and dist.* place the same computation on devices (sharded == unsharded: tests/test_contract.py, test_sharding)


def _comment(cls: type, name: str) -> str:
  """The comment of field `name` in its class's source (its line and the comment lines after it)."""
  lines = inspect.getsource(cls).splitlines()
  for i, line in enumerate(lines):
    if re.match(rf"\s+{name}:", line):
      text = line.split("#", 1)[1] if "#" in line else ""
      for more in lines[i + 1 :]:
        if not more.strip().startswith("#"):
          break
        text += " " + more.strip()[1:]
      return text
  return ""


def _candidates(value, field_name: str, cls: type) -> list:
  if isinstance(value, bool):
    return [not value]
  if isinstance(value, int):
    return [value + 1, value * 2, value - 1, 2, 4, 8] if value else [1, 2, 4, 8]
  if isinstance(value, float):
    return [value * 2, value / 2, value + 0.5] if value else [0.5, 1.0, 0.1]
  if isinstance(value, str):
    return list(dict.fromkeys(w for w in re.findall(r"[\w\-.]+", _comment(cls, field_name)) if w != value))
  if isinstance(value, tuple):
    return [value[1:], value[:-1]] if len(value) > 1 else []
  return []


def _section(path: str) -> str:
  parts = path.split(".")
  if parts[0] == "model" and parts[1] in ("mixer_options", "ffn_options"):
    return f"{parts[1][:-8]}:{parts[2]}"
  if parts[0] == "data" and parts[1] == "options":
    return f"dataset:{parts[2]}"
  return parts[0]


def _base(path: str, text_file: str, tokens_dir: str) -> dict:
  """The overrides a field is changed on: a small model whose layers use the field's mixer or ffn (with options
  small enough that every selection rule chooses at T = 16), or a small config of the field's dataset."""
  kind, _, name = _section(path).partition(":")
  base = {**MODEL_BASE, "data.options.text.path": text_file}
  if kind == "mixer":
    base.update(DATASETS["moving_digits"] if registry.is_video(name) else {"model.mixer": name})
    base.update({f"model.mixer_options.{name}.{k}": v for k, v in SMALL_MIXER_OPTIONS.get(name, {}).items()})
    if name == "mla":
      base.update(
        {
          "model.mixer_options.mla.sparse": True,
          "model.mixer_options.mla.indexer.top_k": 4,
          "model.mixer_options.mla.indexer.query_chunk": 8,
        }
        if ".indexer." in path
        else {}
      )
  elif kind == "ffn":
    base.update({"model.ffn": name, **({f"{MOE}.num_experts": 4, f"{MOE}.top_k": 2} if name == "moe" else {})})
  elif kind == "dataset":
    base.update(DATASETS.get(name, {"data.kind": name, "data.options.tokens.path": tokens_dir}))
  return {**base, **CONTEXT.get(path, {})}


def _probes(path: str) -> tuple[str, ...]:
  """The probes that may see a field change, cheapest first: data fields change batches, evaluation fields the
  evaluation; a model field the training forward pass, else (a gradient-only option, as an indexer's detached input)
  the train steps; an optimizer or loop field the train steps."""
  if path.startswith("data.") or _section(path).startswith("dataset"):
    return ("batches",)
  if path in ("train.evaluators", "train.diag_batches"):
    return ("evaluation",)
  if path.split(".")[0] in ("optim", "train"):
    return ("steps",)
  return ("diagnostics",) if path.endswith(".diagnostics") else ("forward", "steps")


@functools.lru_cache(maxsize=64)
def _cached_signature(key: str, probe: str, real_init: bool):
  return _signature(_build(json.loads(key)), probe, real_init)


def _signature_of(overrides: dict, probe: str, real_init: bool = False):
  """_signature of the config `overrides` build, computed once per process for each (config, probe)."""
  return _cached_signature(json.dumps(overrides, sort_keys=True), probe, real_init)


def _drawn(shapes, rng: jax.Array):
  """Parameters of the given shapes drawn from one normal per parameter name: what the model's own init would give
  without tracing its forward pass a second time (the fields of an initialisation use the real init)."""
  draw = lambda path, s: (
    0.1
    * jax.random.normal(  # noqa: E731
      jax.random.fold_in(rng, zlib.crc32(jax.tree_util.keystr(path).encode())), s.shape, s.dtype
    )
  )
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _signature(cfg: Config, probe: str, real_init: bool = False):
  """What `probe` sees of a run of `cfg` (host arrays): its batches ("batches"), its evaluation at init
  ("evaluation"), a training-mode forward pass at init ("forward": the loss, metrics and auxiliaries; "diagnostics":
  with the costly diagnostics too), or the parameters, model state and metrics after each train step ("steps"); all
  but the first two one compiled program each, from parameters drawn by name (`real_init`: the model's init)."""
  run = Run(cfg)
  if probe == "batches":
    return {
      "vocab": run.data.vocab_size,
      "train": [run.data.train_batch(s) for s in (0, 2)],
      "eval": list(run.data.eval_batches()),
    }
  if probe == "evaluation":
    return run.evaluate(run.init_state()[0])
  batches = [run.data.train_batch(s) for s in range(cfg.train.steps)]
  step = make_train_step(run.model, run.tx, run.schedule, cfg.optim.trainable)
  shapes = nn.unbox(jax.eval_shape(lambda r: initial_state(run.model, run.tx, batches[0], r), jax.random.key(0)))

  def everything(rng):
    if real_init:
      state = nn.unbox(initial_state(run.model, run.tx, batches[0], rng))
    else:
      params = _drawn(shapes.params, rng)
      state = shapes.replace(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=run.tx.init(params),
        model_state=_drawn(shapes.model_state, rng),
      )
    if probe in ("forward", "diagnostics"):
      return forward(
        run.model, state.params, state.model_state, batches[0], rng, False, diagnostics=probe == "diagnostics"
      )[:3]
    if len({b["inputs"].shape for b in batches}) == 1:  # one compiled step, scanned over the batches
      stacked = jax.tree.map(lambda *a: np.stack(a), *batches)
      body = lambda st, b: (lambda st2, m: (st2, (st2.params, st2.model_state, m)))(*step(st, b, rng))  # noqa: E731
      return jax.lax.scan(body, state, stacked)[1]
    out = []
    for b in batches:  # batch shapes change (a length curriculum): the steps unrolled
      state, metrics = step(state, b, rng)
      out.append((state.params, state.model_state, metrics))
    return out

  with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.RULES):
    return jax.device_get(jax.jit(everything)(jax.random.key(cfg.seed)))


def _leaves(tree) -> list:
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [(jax.tree_util.keystr(p), np.asarray(v)) for p, v in flat], str(treedef)


def _differs(a, b) -> bool:
  (la, ta), (lb, tb) = _leaves(a), _leaves(b)
  if ta != tb or [k for k, _ in la] != [k for k, _ in lb]:
    return True
  return any(
    x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=True)
    for (_, x), (_, y) in zip(la, lb)
  )


def _close(a, b) -> bool:
  (la, ta), (lb, tb) = _leaves(a), _leaves(b)
  return ta == tb and all(
    x.shape == y.shape and np.allclose(x, y, rtol=1e-4, atol=1e-4) for (_, x), (_, y) in zip(la, lb)
  )


def _build(overrides: dict) -> Config:
  return tiny_config(**{k.replace(".", "__"): v for k, v in overrides.items()})


@pytest.fixture(scope="module")
def tokens_dirs(tmp_path_factory):
  """A corpus prepared by r1jax.prepare for the tokens dataset, with the character and the byte tokenizer."""
  from r1jax.data import prepare

  out = tmp_path_factory.mktemp("tokens")
  text = out / "corpus.txt"
  words = ("the king", "a horse", "my kingdom", "for")
  text.write_text("\n\n".join(" ".join(words[(i * 7 + j) % 4] for j in range(60)) for i in range(40)) + "\n")
  for tokenizer in ("char", "byte"):
    prepare.prepare(
      prepare.PrepareOptions(
        inputs=(str(text),), tokenizer=tokenizer, out=str(out / tokenizer), docs="paragraph", shard_tokens=4096
      )
    )
  return str(out / "char"), str(out / "byte")


LISTED = {**SAME_VALUES, **NOT_COMPUTATION, **ELSEWHERE}
# The fields of a mixer, feed-forward or dataset share a base config, whose signature each test process computes once
# (and JAX's persistent compilation cache, which the test processes share, compiles once).
CASES = [pytest.param(p, f, c, id=p) for p, f, c in SCHEMA]


@pytest.mark.slow
@pytest.mark.parametrize("path,field,owner", CASES)
def test_changing_an_option_changes_what_it_should(path, field, owner, text_file, tokens_dirs):
  if path in NOT_COMPUTATION or path in ELSEWHERE:
    pytest.skip(f"{path}: {NOT_COMPUTATION.get(path) or ELSEWHERE[path]}")
  if path in ALTERNATIVES and ALTERNATIVES[path] is None:
    pytest.skip(f"{path}: one value only")
  tokens_dir = tokens_dirs
  base = _base(path, text_file, tokens_dir[0])
  cfg = _build(base)
  value = _current(cfg, path)
  places = {"<text_file>": text_file, "<tokens_dir_2>": tokens_dir[1]}
  candidates = (
    [places.get(ALTERNATIVES[path], ALTERNATIVES[path])]
    if path in ALTERNATIVES
    else _candidates(value, path.split(".")[-1], owner)
  )
  probes = _probes(path)
  tried = []
  for candidate in candidates:
    try:
      Run(_build({**base, path: candidate}))  # some constraints are checked against the data (as the vocabulary)
    except ConfigError as e:
      tried.append(f"{candidate!r}: {e}")
      continue
    real_init = "init" in path.split(".")[-1]  # an initialisation's fields: the model's own init
    for probe in probes if path not in SAME_VALUES else probes[:1]:  # the same values: in the forward pass
      before = _signature_of(base, probe, real_init)
      after = _signature_of({**base, path: candidate}, probe, real_init)
      if path in SAME_VALUES:
        assert _close(before, after), f"{path}={candidate!r} ({SAME_VALUES[path]}) changed the values"
        return
      if _differs(before, after):
        return
    pytest.fail(
      f"{path}: {value!r} -> {candidate!r} changed nothing in the {' or the '.join(probes)}: the option is ignored"
    )
  pytest.fail(f"{path}: no candidate made a valid config from {value!r}; name one in ALTERNATIVES. Tried: {tried}")


def _current(cfg: Config, path: str):
  parts = path.split(".")
  if parts[:2] in (["model", "mixer_options"], ["model", "ffn_options"]):
    value = cfg.model.options(parts[1][:-8], parts[2])
    parts = parts[3:]
  elif parts[:2] == ["data", "options"]:
    value = cfg.data.options.get(parts[2]) or registry.DATASETS[parts[2]].options()
    parts = parts[3:]
  else:
    value = cfg
  for part in parts:
    value = getattr(value, part)
  return value


def test_the_lists_name_only_fields_of_the_schema():
  fields = {p for p, _, _ in SCHEMA}
  assert set(LISTED) <= fields and set(CONTEXT) <= fields and set(ALTERNATIVES) <= fields
  assert len(SCHEMA) > 120 and not set(SAME_VALUES) & set(NOT_COMPUTATION)
