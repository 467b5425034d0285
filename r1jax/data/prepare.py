"""Tokenize a corpus once into fixed-size token shards on disk, for `data.kind=tokens` (r1jax/data/tokens.py).

  python -m r1jax.prepare --input=package:tinyshakespeare.txt --docs=paragraph --tokenizer=train:2048 \
      --out=data/shakespeare_bpe2048
  python -m r1jax.prepare --input='corpus/*.jsonl' --text_field=text --tokenizer=train:32768 --out=/scratch/corpus

Inputs (files or globs, read in sorted order): .txt (one document per file, or per blank-line-separated paragraph
with --docs=paragraph), .jsonl (one document per line, its --text_field), .parquet (one per row, through pyarrow).
Tokenizers (the `tokenizers` library; nothing is downloaded): `char` (the corpus's characters), `byte` (the 256
bytes, GPT-2's byte-to-unicode map), a tokenizer.json file, or `train:<vocab size>` (a byte-level BPE trained on
the train split, as GPT-2's). Every document ends with an end-of-document token (`<|endoftext|>`, nanoGPT's and
GPT-2's separator), so that windows crossing documents see where one ends.

The split is by document: the last documents, holding --val_fraction of the characters (`tail`: for one text file cut
in paragraphs, the character-level split of r1jax/data/core.py extended back to a paragraph's start), or each document
with probability --val_fraction by a hash of its index (`hash`, for corpora in no particular order). Each split is
written as `<split>_<i>.bin` shards of exactly --shard_tokens tokens (the last one shorter), uint16 where the
vocabulary fits and uint32 otherwise, then `meta.json`: tokenizer, vocabulary, dtype, per split the documents,
characters, tokens and each shard's sha256. A shard is written to a temporary name and renamed, and the resume point
after it is recorded in `progress.json`: a rerun of a killed run skips finished shards and writes the same bytes;
`meta.json` appears last,
and the loader reads nothing without it.
"""

import dataclasses
import glob
import hashlib
import itertools
import json
import os
import re
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from r1jax import atomic
from r1jax.config import require
from r1jax.data.core import resolve_path
from r1jax.data.tokens import FORMAT, sha256
from r1jax.errors import ConfigError

EOD = "<|endoftext|>"
SPLITS = ("train", "val")
PARAGRAPH = re.compile(r".*?(?:\n\n+|\Z)", re.S)  # a paragraph keeps the blank lines after it: docs join to the file


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  inputs: tuple[str, ...]  # files or globs: .txt, .jsonl, .parquet (package:<name>: a file shipped in r1jax/assets)
  tokenizer: str  # char | byte | path/to/tokenizer.json | train:<vocab size>
  out: str  # output folder
  text_field: str = "text"  # the text of a .jsonl line or a .parquet row
  docs: str = "file"  # .txt documents: file (one per file) | paragraph (blank-line separated)
  val_fraction: float = 0.1  # held out for validation: of the characters (tail), of the documents (hash)
  val_split: str = "tail"  # tail (the last documents) | hash (documents picked by a hash of their index)
  shard_tokens: int = 1 << 24  # tokens per shard (the last one of a split is shorter)
  dtype: str = "auto"  # auto (uint16 where the vocabulary fits) | uint16 | uint32
  batch_docs: int = 256  # documents tokenized per call (the `tokenizers` library parallelises within a call)

  def __post_init__(self):
    require(bool(self.inputs), "--input", "no input given", "pass files or globs: --input=corpus/*.jsonl")
    require(bool(self.out), "--out", "no output folder given", "pass --out=<dir>")
    require(self.docs in ("file", "paragraph"), "--docs", f"unknown {self.docs!r}", "use file or paragraph")
    require(self.val_split in ("tail", "hash"), "--val_split", f"unknown {self.val_split!r}", "use tail or hash")
    require(0.0 < self.val_fraction < 1.0, "--val_fraction", f"{self.val_fraction} not in (0, 1)", "use e.g. 0.1")
    require(self.shard_tokens >= 2, "--shard_tokens", f"{self.shard_tokens} < 2", "use e.g. 16777216")
    require(
      self.dtype in ("auto", "uint16", "uint32"), "--dtype", f"unknown {self.dtype!r}", "use auto, uint16 or uint32"
    )
    spec = self.tokenizer
    ok = spec in ("char", "byte") or spec.endswith(".json") or re.fullmatch(r"train:\d+", spec) is not None
    require(ok, "--tokenizer", f"unknown {spec!r}", "use char, byte, path/to/tokenizer.json or train:<vocab size>")


def input_files(patterns) -> list[str]:
  """The files `patterns` name, each glob in sorted order; ConfigError for a pattern that matches nothing or a
  file of an unknown kind."""
  files = []
  for pattern in patterns:
    found = [resolve_path(pattern, "--input")] if pattern.startswith("package:") else sorted(glob.glob(pattern))
    require(bool(found), "--input", f"{pattern!r} matches no file (cwd {os.getcwd()!r})", "pass existing files")
    for f in found:
      require(
        f.endswith((".txt", ".jsonl", ".parquet")),
        "--input",
        f"{f!r} is not .txt, .jsonl or .parquet",
        "convert it, or pass only those kinds",
      )
    files += found
  return files


def documents(files: list[str], opts: PrepareOptions) -> Iterator[str]:
  """Every document of `files`, in order."""
  for path in files:
    if path.endswith(".txt"):
      with open(path, encoding="utf-8") as f:
        text = f.read()
      if opts.docs == "file":
        yield text
      else:
        yield from (m.group(0) for m in PARAGRAPH.finditer(text) if m.group(0))
    elif path.endswith(".jsonl"):
      with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
          if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get(opts.text_field), str):
              raise ConfigError(
                f"--text_field: line {n} of {path!r} has no string field {opts.text_field!r} "
                f"(it has {sorted(row) if isinstance(row, dict) else type(row).__name__}). Fix: "
                "pass --text_field=<the field holding the text>."
              )
            yield row[opts.text_field]
    else:
      try:
        import pyarrow.parquet as pq
      except ImportError as e:
        raise ConfigError(f"--input: reading {path!r} needs pyarrow. Fix: pip install pyarrow.") from e
      table = pq.ParquetFile(path)
      if opts.text_field not in table.schema_arrow.names:
        raise ConfigError(
          f"--text_field: {path!r} has no column {opts.text_field!r} (it has "
          f"{table.schema_arrow.names}). Fix: pass --text_field=<the column holding the text>."
        )
      for batch in table.iter_batches(columns=[opts.text_field]):
        yield from (t for t in batch.column(0).to_pylist() if t is not None)


def held_out(lengths: np.ndarray, opts: PrepareOptions) -> np.ndarray:
  """Whether each document (given its length in characters) is held out: `tail`, the last documents that together
  hold val_fraction of the characters; `hash`, each with probability val_fraction by a hash of its index."""
  if opts.val_split == "hash":
    return np.array(
      [
        int.from_bytes(hashlib.sha256(f"r1jax-val:{i}".encode()).digest()[:8], "little") < opts.val_fraction * 2.0**64
        for i in range(len(lengths))
      ],
      bool,
    )
  after = np.cumsum(lengths[::-1])[::-1] - lengths  # characters after each document
  return after < opts.val_fraction * lengths.sum()


def build_tokenizer(spec: str, train_docs, all_docs):
  """The tokenizer `spec` names, with EOD as a special token; `train_docs()` iterates the training documents (to
  train a BPE on), `all_docs()` every document (char's alphabet: a character only the validation split has must
  still encode)."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

  if spec == "char":
    chars = sorted(set().union(*(set(d) for d in all_docs())))
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
  elif spec == "byte":
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
  elif spec.startswith("train:"):
    size = int(spec.split(":")[1])
    require(size > 257, "--tokenizer", f"train:{size} is below the 256 bytes and the EOD token", "use e.g. train:2048")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
      vocab_size=size, special_tokens=[EOD], show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(train_docs(), trainer)
  else:
    if not os.path.isfile(spec):
      raise ConfigError(f"--tokenizer: {spec!r} does not exist. Fix: pass a tokenizer.json, char, byte or train:N.")
    tok = Tokenizer.from_file(spec)
  if tok.token_to_id(EOD) is None:
    tok.add_special_tokens([EOD])
  return tok


def dtype_for(vocab: int, asked: str) -> str:
  """The shard dtype: uint16 where `vocab` ids fit (as nanoGPT), else uint32; ConfigError when `asked` cannot hold
  them."""
  fits16 = vocab <= 1 << 16
  if asked == "uint16":
    require(fits16, "--dtype", f"uint16 holds 65536 ids but the vocabulary has {vocab}", "use --dtype=uint32 or auto")
  return asked if asked != "auto" else ("uint16" if fits16 else "uint32")


def _write_shard(out: str, name: str, tokens: np.ndarray) -> dict:
  """Writes one shard to a temporary name, then renames it: a reader never sees part of one."""
  path = os.path.join(out, name)
  atomic.write_bytes(path, tokens.tobytes(), sync=True)
  return {"file": name, "tokens": int(len(tokens)), "sha256": sha256(path)}


def write_split(
  split: str, docs: Callable[[], Iterator[str]], count: int, tok, dtype: str, opts: PrepareOptions, progress: dict
) -> list[dict]:
  """Tokenizes the `count` documents `docs()` yields (one split's) into shards, resuming after the shards
  `progress[split]` lists (the next token to write is token `skip` of the split's document `doc`: the documents
  before it are read but not tokenized); returns the split's shards."""
  state = progress.setdefault(split, {"shards": [], "doc": 0, "skip": 0})
  eod = tok.token_to_id(EOD)
  first, skip = state["doc"], state["skip"]
  pending, held = [], 0  # tokens tokenized but not yet in a shard, in order
  bar = tqdm(total=count, initial=first, desc=f"{split} documents", unit="doc", mininterval=1.0)
  todo = itertools.islice(docs(), first, None)
  for at in range(first, count, opts.batch_docs):
    batch = list(itertools.islice(todo, opts.batch_docs))
    for d, enc in enumerate(tok.encode_batch(batch, add_special_tokens=False), at):
      ids = np.asarray(enc.ids + [eod], dtype=dtype)
      full = len(ids)
      if d == first:
        ids = ids[skip:]
      pending.append(ids)
      held += len(ids)
      while held >= opts.shard_tokens:  # a full shard: write it, then record where the next one starts
        flat = np.concatenate(pending)
        rest = flat[opts.shard_tokens :]  # a suffix of document d's tokens
        state["shards"].append(
          _write_shard(opts.out, f"{split}_{len(state['shards']):05d}.bin", flat[: opts.shard_tokens])
        )
        state.update(doc=d, skip=full - len(rest)) if len(rest) else state.update(doc=d + 1, skip=0)
        atomic.write_json(os.path.join(opts.out, "progress.json"), progress)
        pending, held = [rest], len(rest)
    bar.update(len(batch))
  bar.close()
  if held:
    state["shards"].append(_write_shard(opts.out, f"{split}_{len(state['shards']):05d}.bin", np.concatenate(pending)))
  state.update(doc=count, skip=0)
  atomic.write_json(os.path.join(opts.out, "progress.json"), progress)
  return state["shards"]


def prepare(opts: PrepareOptions) -> dict:
  """Tokenizes the corpus into opts.out (see the module docstring) and returns its metadata; a finished folder with
  the same options is left as is, one with other options is a ConfigError. The corpus is streamed (read once to
  count and split it, once more per split; a BPE's training reads the train split once more), never held whole."""
  files = input_files(opts.inputs)
  meta_path, progress_path = os.path.join(opts.out, "meta.json"), os.path.join(opts.out, "progress.json")
  args = {**dataclasses.asdict(opts), "inputs": files, "out": None}
  for path in (meta_path, progress_path):
    if os.path.exists(path):
      with open(path) as f:
        had = json.load(f)
      if had["args"] != args:
        raise ConfigError(
          f"--out: {opts.out!r} holds a preparation with other options ({had['args']}). Fix: pass "
          "a new --out, or delete that folder."
        )
      if path == meta_path:
        return had
  lengths = np.fromiter((len(d) for d in documents(files, opts)), np.int64)
  if not lengths.sum():
    raise ConfigError(f"--input: {files} hold no text. Fix: pass a corpus with at least one non-empty document.")
  val = held_out(lengths, opts)
  for name, count in (("train", (~val).sum()), ("val", val.sum())):
    require(
      count > 0,
      "--val_fraction",
      f"the {name} split has no document ({len(lengths)} in all)",
      "pass more documents, --docs=paragraph for a single text file, or another --val_fraction",
    )

  def split_docs(name: str) -> Callable[[], Iterator[str]]:
    return lambda: (d for d, v in zip(documents(files, opts), val) if v == (name == "val"))

  os.makedirs(opts.out, exist_ok=True)
  tok_path = os.path.join(opts.out, "tokenizer.json")
  if os.path.exists(tok_path) and os.path.exists(progress_path):  # resuming: the same tokenizer (a trained BPE too)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tok_path)
  else:
    tok = build_tokenizer(opts.tokenizer, split_docs("train"), lambda: documents(files, opts))
    with atomic.writing(tok_path) as tmp:
      tok.save(tmp)
  progress = {"args": args}
  if os.path.exists(progress_path):
    with open(progress_path) as f:
      progress = json.load(f)
  else:
    atomic.write_json(progress_path, progress)
  vocab = tok.get_vocab_size()
  dtype = dtype_for(vocab, opts.dtype)
  splits = {}
  for name, held in (("train", ~val), ("val", val)):
    shards = write_split(name, split_docs(name), int(held.sum()), tok, dtype, opts, progress)
    splits[name] = {
      "documents": int(held.sum()),
      "characters": int(lengths[held].sum()),
      "tokens": sum(s["tokens"] for s in shards),
      "shards": shards,
    }
  meta = {
    "format": FORMAT,
    "tokenizer": "tokenizer.json",
    "tokenizer_spec": opts.tokenizer,
    "vocab_size": vocab,
    "eod_id": tok.token_to_id(EOD),
    "dtype": dtype,
    "args": args,
    "splits": splits,
  }
  atomic.write_json(meta_path, meta)
  os.remove(progress_path)
  return meta


def main(argv):
  del argv
  from absl import flags

  f = flags.FLAGS
  opts = PrepareOptions(
    inputs=tuple(f.input),
    tokenizer=f.tokenizer,
    out=os.path.abspath(f.out) if f.out else "",
    text_field=f.text_field,
    docs=f.docs,
    val_fraction=f.val_fraction,
    val_split=f.val_split,
    shard_tokens=f.shard_tokens,
    dtype=f.dtype,
  )
  meta = prepare(opts)
  for name, s in meta["splits"].items():
    print(
      f"{name}: {s['documents']} documents, {s['characters']} characters, {s['tokens']} tokens "
      f"({s['characters'] / s['tokens']:.2f} characters per token) in {len(s['shards'])} shards"
    )
  print(f"vocabulary {meta['vocab_size']} ({meta['dtype']}), written to {opts.out}")


def cli() -> None:
  """The command line (`python -m r1jax.prepare`)."""
  from absl import flags

  from r1jax import entry

  d = PrepareOptions.__dataclass_fields__
  flags.DEFINE_list("input", [], "files or globs (.txt, .jsonl, .parquet)")
  flags.DEFINE_string("tokenizer", "train:2048", "char | byte | path/to/tokenizer.json | train:<vocab size>")
  flags.DEFINE_string("out", "", "output folder")
  flags.DEFINE_string("text_field", d["text_field"].default, "text field of .jsonl lines / .parquet rows")
  flags.DEFINE_enum("docs", d["docs"].default, ["file", "paragraph"], ".txt documents: per file or per paragraph")
  flags.DEFINE_float("val_fraction", d["val_fraction"].default, "documents held out for validation")
  flags.DEFINE_enum("val_split", d["val_split"].default, ["tail", "hash"], "which documents are held out")
  flags.DEFINE_integer("shard_tokens", d["shard_tokens"].default, "tokens per shard")
  flags.DEFINE_enum("dtype", d["dtype"].default, ["auto", "uint16", "uint32"], "token dtype on disk")
  entry.run(main)


if __name__ == "__main__":
  cli()
