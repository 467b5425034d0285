"""Configs that cannot work fail before compilation, with a message naming the field and a fix."""

import os
import pickle
import types

import jax
import pytest

from r1jax import sharding
from r1jax.config import Config, MeshConfig, ModelConfig, default_config
from r1jax.errors import ConfigError
from r1jax.lab.ablation import override
from r1jax.train import Run

from helpers import tiny_config


@pytest.mark.parametrize(
  "values,match",
  [
    ({"model": {"num_heads": 3}}, r"model\.num_heads: 3 heads do not divide d_model=128.*Fix"),
    ({"model": {"num_kv_heads": 3}}, r"model\.num_kv_heads"),
    ({"model": {"mixer": "atention"}}, r"model\.mixer='atention' is not a registered name\. Did you mean 'attention'"),
    ({"model": {"mixer_pattern": ["attention", "nope"]}}, r"model\.mixer_pattern='nope'"),
    ({"model": {"ffn": "moe_not_yet"}}, r"model\.ffn='moe_not_yet'"),
    (
      {"model": {"mixer_options": {"attention": {"implementation": "xla"}}}},
      r"unknown config field 'model\.mixer_options\.attention\.implementation'\. Known fields: \['impl'",
    ),
    ({"model": {"mixer_options": {"attention": {"impl": "splash"}}}}, r"model\.mixer_options\.attention: impl"),
    (
      {"model": {"mixer_options": {"block_sparse": {"score_by": "head"}}}},
      r"model\.mixer_options\.block_sparse: score_by='head' is unknown\. Fix: use one of \('token', 'block'\)",
    ),
    ({"model": {"dtype": "float8"}}, r"model\.dtype"),
    ({"model": {"layers": 4}}, r"unknown config field 'model\.layers'"),
    ({"optimizer": {}}, r"unknown config field 'optimizer'\. Did you mean 'optim'"),
    ({"optim": {"lr": "fast"}}, r"optim\.lr: expected float"),
    ({"train": {"steps": 0}}, r"train\.steps"),
    ({"data": {"kind": "images"}}, r"data\.kind"),
    ({"data": {"kind": "text", "options": {"text": {"path": ""}}}}, r"data\.options\.text: path: no text file"),
    ({"data": {"kind": "text", "options": {"text": {"paht": "x"}}}}, r"'data\.options\.text\.paht'.*'path'"),
    (
      {"data": {"kind": "mqar", "seq_len": 32, "options": {"mqar": {"num_kv_pairs": 16}}}},
      r"data\.options\.mqar\.num_kv_pairs.*seq_len >= 64",
    ),
    (
      {
        "data": {"kind": "mqar", "options": {"mqar": {"curriculum_steps": 10, "curriculum_seq_len": 64}}},
        "train": {"steps": 20},
      },
      r"data\.options\.mqar\.curriculum_seq_len: .*< seq_len=64",
    ),
    (
      {
        "data": {"kind": "mqar", "options": {"mqar": {"curriculum_steps": 10, "curriculum_seq_len": 40}}},
        "train": {"steps": 20},
      },
      r"data\.options\.mqar\.curriculum_seq_len: .*do not split into rows of 40",
    ),
    (
      {"data": {"kind": "mqar", "seq_len": 128, "options": {"mqar": {"curriculum_steps": 30}}}, "train": {"steps": 20}},
      r"data\.options\.mqar\.curriculum_steps: 30 must be fewer than train\.steps=20",
    ),
    ({"data": {"kind": "passkey", "seq_len": 256}}, r"data\.options\.passkey\.length_fractions: the shortest"),
    (
      {"data": {"kind": "listops", "seq_len": 32, "options": {"listops": {"min_len": 40}}}},
      r"data\.options\.listops\.min_len",
    ),
    ({"mesh": {"data": -1, "fsdp": -1}}, r"mesh"),
    ({"dist": {"num_processes": 2}}, r"dist\.coordinator_address"),
  ],
)
def test_bad_config_names_field_and_fix(values, match):
  with pytest.raises(ConfigError, match=match):
    Config.from_dict(values)


def test_default_config_round_trips_and_lists_registered_options():
  cfg = default_config()
  assert "attention" in cfg.model.mixer_options and "swiglu" in cfg.model.ffn_options
  assert Config.from_dict(cfg).model.options("mixer", "attention").impl == "auto"


def test_override_rejects_unknown_dotted_key():
  with pytest.raises(ConfigError, match="model.widht"):
    override(default_config(), {"model.widht": 3}, "variant 'x'")


def test_mesh_must_match_device_count():
  assert len(jax.devices()) == 8
  with pytest.raises(ConfigError, match=r"mesh: .* has 6 devices but 8 are available\. Fix"):
    sharding.make_mesh(MeshConfig(data=3, fsdp=2))
  with pytest.raises(ConfigError, match="do not divide"):
    sharding.make_mesh(MeshConfig(data=-1, tensor=3))
  with pytest.raises(ConfigError, match="mesh.devices=9"):
    sharding.make_mesh(MeshConfig(devices=9))
  assert sharding.make_mesh(MeshConfig(data=-1, tensor=2)).shape == {"data": 4, "fsdp": 1, "expert": 1, "tensor": 2}


def test_sharded_dims_must_divide(text_file):
  with pytest.raises(ConfigError, match=r"data\.batch_size=12 is not divisible by data\*fsdp\*expert"):
    Run(tiny_config(text=text_file, data__batch_size=12))
  with pytest.raises(ConfigError, match=r"model\.num_heads=4 is not divisible by mesh\.tensor=8"):
    Run(tiny_config(text=text_file, mesh__data=1, mesh__tensor=8))


def test_missing_data_file_fails_before_anything_is_written(tmp_path):
  workdir = tmp_path / "run"
  cfg = tiny_config(text=str(tmp_path / "nope.txt"), workdir=str(workdir))
  with pytest.raises(ConfigError, match=r"data\.options\.text\.path: text file .*nope\.txt' does not exist.*Fix"):
    Run(cfg).train()
  assert not os.path.exists(workdir)


def test_vocab_smaller_than_data_is_an_error(text_file):
  with pytest.raises(ConfigError, match=r"model\.vocab_size=5 is smaller"):
    Run(tiny_config(text=text_file, model__vocab_size=5))


def test_model_config_defaults():
  cfg = ModelConfig(vocab_size=65)
  assert cfg.hidden_ff == 352 and cfg.padded_vocab == 128
  assert cfg.layer_names("mixer") == ("attention",) * 4
  assert ModelConfig(num_layers=3, mixer_pattern=("attention",)).layer_names("mixer") == ("attention",) * 3


def test_layer_schedule_from_the_command_line():
  """ml_collections overrides tuples from the command line (`--config.model.mixer_pattern="('local','attention')"`)
  but not lists, so the default pattern must be a tuple; the pattern is cycled over the layers."""
  base = default_config()
  assert isinstance(base.model.mixer_pattern, tuple) and isinstance(base.model.ffn_pattern, tuple)
  cfg = Config.from_dict(override(base, {"model.mixer_pattern": ("local", "attention")}, "t"))
  assert cfg.model.layer_names("mixer") == ("local", "attention", "local", "attention")


def test_run_identity_covers_the_used_mixers_and_the_own_dataset_only():
  from r1jax.config import run_identity, to_dict

  text = run_identity(to_dict(tiny_config(text="x.txt")))
  assert "data.options.text.path" in text and not any(
    k.startswith(("data.options.mqar", "data.options.listops")) for k in text
  )
  assert "model.mixer_options.attention.impl" in text and not any(".local." in k for k in text)
  other_dataset = run_identity(to_dict(tiny_config(text="x.txt", data__options__mqar__vocab_size=99)))
  assert other_dataset == text
  saved = to_dict(tiny_config(text="x.txt"))  # a saved config listing every registered mixer's and dataset's options
  saved["model"]["mixer_options"] = default_config().model.mixer_options.to_dict()
  saved["data"]["options"] = {**default_config().data.options.to_dict(), "text": saved["data"]["options"]["text"]}
  assert run_identity(saved) == text
  mixed = run_identity(
    to_dict(
      tiny_config(text="x.txt", model__mixer_pattern=("attention", "local"), model__mixer_options__local__window=4)
    )
  )
  assert mixed["model.mixer_options.local.window"] == 4


def test_configs_pickle_with_their_read_only_options():
  """A Config (and its ModelConfig) crosses to a worker process: pickled and back, equal, options still read-only."""
  cfg = Config.from_dict(
    override(default_config(), {"model.mixer": "nsa", "model.mixer_options.nsa.window": 8}, "test")
  )
  back = pickle.loads(pickle.dumps(cfg))
  assert back == cfg and pickle.loads(pickle.dumps(cfg.model)) == cfg.model
  assert isinstance(back.model.mixer_options, types.MappingProxyType) and back.model.mixer_options["nsa"].window == 8
  assert isinstance(back.data.options, types.MappingProxyType)
