"""Corpora prepared once into token shards (r1jax/data/prepare.py) and read through Grain (r1jax/data/tokens.py):
exact round trips, identical shards across runs and after a killed run, batches that depend only on (seed, step), and
processes that together read exactly the global batch."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import generate
from r1jax.config import Config
from r1jax.data import prepare as prep
from r1jax.data.core import make_dataset
from r1jax.data.tokens import TokenStream
from r1jax.errors import ConfigError
from r1jax.lab import configs
from r1jax.train import make_model, train

from conftest import xla_flags
from helpers import tiny_config

PARAGRAPHS = [
  "ROMEO:\nBut soft, what light through yonder window breaks?\n\n",
  "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n\n\n",
  "NURSE:\nÉcoute — déjà vu, 東京.\n\n",
]


@pytest.fixture
def corpus(tmp_path):
  """A .txt of 60 paragraphs (non-ASCII ones too), a .jsonl of 20 documents and a .parquet of 10."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  rng = np.random.default_rng(0)
  txt, jsonl, parquet = tmp_path / "plays.txt", tmp_path / "docs.jsonl", tmp_path / "rows.parquet"
  txt.write_text("".join(PARAGRAPHS[i] * int(k) for i, k in zip(rng.integers(0, 3, 60), rng.integers(1, 4, 60))))
  rows = [
    {"id": i, "text": " ".join(rng.choice(["to be", "or not", "that is", "the question\n"], 30))} for i in range(20)
  ]
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
  pq.write_table(
    pa.table({"text": [f"row {i}: " + "ab\u00e9 " * i for i in range(10)], "n": list(range(10))}),
    parquet,
    row_group_size=3,
  )
  return str(txt), str(jsonl), str(parquet)


def options(corpus, out, **kw) -> prep.PrepareOptions:
  return prep.PrepareOptions(
    **{
      "inputs": corpus,
      "tokenizer": "train:300",
      "out": str(out),
      "docs": "paragraph",
      "shard_tokens": 500,
      "val_fraction": 0.2,
      **kw,
    }
  )


def split_tokens(out: str, meta: dict, split: str) -> np.ndarray:
  shards = meta["splits"][split]["shards"]
  return np.concatenate([np.fromfile(os.path.join(out, s["file"]), meta["dtype"]) for s in shards])


@pytest.mark.parametrize("tokenizer", ["char", "byte", "train:300"])
def test_prepare_then_load_round_trips_the_text_exactly(corpus, tmp_path, tokenizer):
  from tokenizers import Tokenizer

  opts = options(corpus, tmp_path / "out", tokenizer=tokenizer)
  meta = prep.prepare(opts)
  tok = Tokenizer.from_file(os.path.join(opts.out, "tokenizer.json"))
  docs = list(prep.documents(prep.input_files(corpus), opts))
  held = prep.held_out(np.array([len(d) for d in docs]), opts)
  rows = [f"row {i}: " + "ab\u00e9 " * i for i in range(10)]
  assert "".join(docs) == (
    open(corpus[0]).read() + "".join(json.loads(line)["text"] for line in open(corpus[1])) + "".join(rows)
  )
  for split in prep.SPLITS:
    ids = split_tokens(opts.out, meta, split)
    want = [d for d, v in zip(docs, held) if v == (split == "val")]
    assert (ids == meta["eod_id"]).sum() == len(want) == meta["splits"][split]["documents"]  # one EOD per document
    pieces = np.split(ids, np.flatnonzero(ids == meta["eod_id"]) + 1)[:-1]
    assert [tok.decode(p[:-1].tolist()) for p in pieces] == want
    assert meta["splits"][split]["characters"] == sum(len(d) for d in want)
  assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.get_vocab_size()
  assert list(np.flatnonzero(held)) == list(range(len(docs) - held.sum(), len(docs)))  # tail: the last documents


def test_held_out_documents_tail_holds_the_last_characters_and_hash_a_stable_fraction(tmp_path):
  lengths = np.array([50, 10, 30, 5, 5])
  tail = prep.held_out(lengths, options(("x.txt",), tmp_path, val_fraction=0.1))
  assert list(tail) == [False, False, False, True, True]  # 10 of 100 characters: the last two documents
  many = options(("x.txt",), tmp_path, val_split="hash", val_fraction=0.05)
  held = prep.held_out(np.ones(4000, int), many)
  assert 0.04 < held.mean() < 0.06 and np.array_equal(held, prep.held_out(np.ones(4000, int), many))
  assert 30 < np.flatnonzero(held).mean() / 4000 * 100 < 70  # spread over the corpus, not its end


def test_shards_are_identical_across_runs_and_a_killed_run_resumes_to_the_same_shards(corpus, tmp_path, monkeypatch):
  first = prep.prepare(options(corpus, tmp_path / "a"))
  assert prep.prepare(options(corpus, tmp_path / "b")) == {**first, "args": first["args"]}
  assert len(first["splits"]["train"]["shards"]) > 3
  files = sorted(os.listdir(tmp_path / "a"))
  for f in files:
    assert open(tmp_path / "a" / f, "rb").read() == open(tmp_path / "b" / f, "rb").read(), f

  real, written = prep._write_shard, []

  def dies_after_three(out, name, tokens):
    if len(written) == 3:
      open(os.path.join(out, name + ".tmp"), "wb").write(tokens[:7].tobytes())  # killed while writing the 4th
      raise KeyboardInterrupt
    written.append(name)
    return real(out, name, tokens)

  monkeypatch.setattr(prep, "_write_shard", dies_after_three)
  with pytest.raises(KeyboardInterrupt):
    prep.prepare(options(corpus, tmp_path / "c"))
  with pytest.raises(ConfigError, match="unfinished preparation"):  # nothing is read from a half-written folder
    make_dataset(tiny_config(data__kind="tokens", data__options__tokens__path=str(tmp_path / "c")).data, 0)
  monkeypatch.setattr(prep, "_write_shard", lambda *a: written.append(a[1]) or real(*a))
  assert prep.prepare(options(corpus, tmp_path / "c")) == first
  assert written[3] == "train_00003.bin"  # the rerun skipped the three finished shards
  assert sorted(os.listdir(tmp_path / "c")) == files
  for f in files:
    assert open(tmp_path / "a" / f, "rb").read() == open(tmp_path / "c" / f, "rb").read(), f


def test_prepare_refuses_bad_input_with_one_line(corpus, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"body": "no text field"}\n')
  with pytest.raises(ConfigError, match="--text_field: line 1 .* no string field 'text'"):
    prep.prepare(options((str(bad),), tmp_path / "o1"))
  with pytest.raises(ConfigError, match="--text_field: .*rows.parquet' has no column 'body'"):
    prep.prepare(options((corpus[2],), tmp_path / "o5", text_field="body"))
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(ConfigError, match="hold no text"):
    prep.prepare(options((str(empty),), tmp_path / "o2"))
  with pytest.raises(ConfigError, match="matches no file"):
    prep.prepare(options((str(tmp_path / "none*.txt"),), tmp_path / "o3"))
  with pytest.raises(ConfigError, match="uint16 holds 65536 ids but the vocabulary has 70000"):
    prep.dtype_for(70000, "uint16")
  assert prep.dtype_for(70000, "auto") == "uint32" and prep.dtype_for(65536, "auto") == "uint16"
  prep.prepare(options(corpus, tmp_path / "o4"))
  with pytest.raises(ConfigError, match="holds a preparation with other options"):
    prep.prepare(options(corpus, tmp_path / "o4", tokenizer="byte"))
  assert not os.path.exists(tmp_path / "o1" / "meta.json")


def test_windows_cross_shard_seams_and_batches_depend_only_on_seed_and_step(tmp_path):
  numbers = tmp_path / "numbers.txt"  # no window repeats: each is found at one place of the split
  numbers.write_text("\n\n".join(" ".join(str(j) for j in range(i, i + 40)) for i in range(0, 2400, 40)))
  meta = prep.prepare(options((str(numbers),), tmp_path / "out", tokenizer="char"))
  stream = TokenStream(str(tmp_path / "out"), meta["splits"]["train"], meta["dtype"], verify=True)
  whole = split_tokens(str(tmp_path / "out"), meta, "train")
  np.testing.assert_array_equal(stream.read(480, 1020), whole[480:1020])  # across two seams (shards of 500)
  cfg = tiny_config(data__kind="tokens", data__options__tokens__path=str(tmp_path / "out")).data
  a, b, other = make_dataset(cfg, 3), make_dataset(cfg, 3), make_dataset(cfg, 4)
  for step in (0, 5, 10_000):  # far past one epoch: a new permutation of the windows
    batch = a.train_batch(step)
    np.testing.assert_array_equal(batch["inputs"], b.train_batch(step)["inputs"])
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    np.testing.assert_array_equal(a.train_batch(step, [5, 2])["targets"], batch["targets"][[5, 2]])
  assert not np.array_equal(a.train_batch(0)["inputs"], other.train_batch(0)["inputs"])
  T, n = cfg.seq_len, (len(whole) - 1) // cfg.seq_len
  rows = np.concatenate([a.train_batch(s)["inputs"] for s in range(n // cfg.batch_size)])
  windows = np.lib.stride_tricks.sliding_window_view(whole, T)
  starts = [int(np.flatnonzero(np.all(windows == r, axis=1))[0]) for r in rows]
  assert all(s % T == 0 for s in starts) and len(set(starts)) == len(starts)  # an epoch reads each window once
  val = np.concatenate([v["targets"][v["weights"] > 0] for v in a.eval_batches()])
  np.testing.assert_array_equal(val, split_tokens(str(tmp_path / "out"), meta, "val")[1 : 1 + len(val)])


@pytest.mark.slow
def test_token_run_resumes_on_the_same_batches_and_reports_bits_per_character(corpus, tmp_path):
  prep.prepare(options(corpus, tmp_path / "out"))
  kw = dict(
    data__kind="tokens",
    data__options__tokens__path=str(tmp_path / "out"),
    train__steps=8,
    train__checkpoint_every=4,
    train__keep_checkpoints=3,
  )
  whole = train(tiny_config(workdir=str(tmp_path / "whole"), **kw))
  cut = str(tmp_path / "cut")
  train(tiny_config(workdir=cut, **kw))
  shutil.rmtree(os.path.join(cut, "checkpoints", "8"))  # as if killed after the step-4 checkpoint
  os.remove(os.path.join(cut, "result.json"))
  resumed = train(tiny_config(workdir=cut, **kw))
  assert resumed["perf"]["resumed_from"] == 4 and resumed["final"] == whole["final"]
  meta = json.load(open(tmp_path / "out" / "meta.json"))["splits"]["val"]
  assert whole["final"]["eval/bpc"] == pytest.approx(
    whole["final"]["eval/loss"] / np.log(2) * meta["tokens"] / meta["characters"]
  )
  [text] = generate.generate_text(cut, ["JULIET:\nO Romeo"], 12, generate.Sampling(temperature=0.0))
  assert text.startswith("JULIET:\nO Romeo") and len(text) > len("JULIET:\nO Romeo")  # tokens decoded to text


@pytest.mark.slow
@pytest.mark.parametrize("name, params", [("gpt2_small", 124e6), ("gpt2_medium", 355e6)])
def test_presets_have_gpt2_shapes_and_every_mechanism_builds_at_them(name, params):
  for mechanism in configs.MECHANISMS if name == "gpt2_small" else ["dense"]:
    cfg = Config.from_dict(configs.preset_spec(f"{name}:{mechanism}"))
    model = make_model(dataclasses.replace(cfg.model, vocab_size=50304))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128), jnp.int32))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert cfg.data.seq_len == 1024 and cfg.model.dtype == "bfloat16"
    if mechanism == "dense":
      assert count == pytest.approx(params, rel=1e-2)  # GPT-2's (RoPE instead of learned positions, SwiGLU)
  with pytest.raises(ConfigError, match="mechanism='nope' is unknown"):
    configs.preset_spec(f"{name}:nope")


TWO_PROCESS = """
import json, sys
import jax, numpy as np
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from jax.experimental import multihost_utils
from r1jax import sharding
from r1jax.config import MeshConfig
from r1jax.data.core import make_dataset
from helpers import tiny_config
data = make_dataset(tiny_config(data__kind="tokens", data__options__tokens__path=sys.argv[3]).data, 0)
mesh = sharding.make_mesh(MeshConfig(data=4))
rows = sharding.local_rows(mesh, data.cfg.batch_size)
out = {"rows": rows.tolist(), "batches": []}
for step in range(3):
  read = data.train_batch(step, rows)["inputs"]
  whole = multihost_utils.process_allgather(sharding.put_train_batch(data, step, mesh)["inputs"], tiled=True)
  out["batches"].append({"read": read.tolist(), "global": np.asarray(whole).tolist()})
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.slow
def test_two_processes_read_exactly_the_global_batch_of_one(corpus, tmp_path):
  from test_distributed import _free_port

  prep.prepare(options(corpus, tmp_path / "out"))
  one = make_dataset(tiny_config(data__kind="tokens", data__options__tokens__path=str(tmp_path / "out")).data, 0)
  env = {**os.environ, "XLA_FLAGS": xla_flags(2), "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.path.dirname(__file__)}
  address = f"localhost:{_free_port()}"
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", TWO_PROCESS, address, str(i), str(tmp_path / "out")],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  rows = [set(g["rows"]) for g in got]
  assert rows[0].isdisjoint(rows[1]) and rows[0] | rows[1] == set(range(one.cfg.batch_size)) and all(rows)
  for step in range(3):
    want = one.train_batch(step)["inputs"]
    for g in got:  # each process read only its rows, and the global array is the one-process batch
      np.testing.assert_array_equal(g["batches"][step]["read"], want[g["rows"]])
      np.testing.assert_array_equal(g["batches"][step]["global"], want)
