"""DeepSeek-V4's compressed attentions (r1jax/mixers/compressed.py: csa, hca) against naive references: the pooled
entries, the one softmax over window, entries and sink, CSA's picks, gradients, the decoding cache's size per token
and option errors. Causality, jit, bfloat16 and sharding are the module contract's (test_contract.py); decode ==
forward, test_decoding.py's (both cover csa and hca by registration)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.mixers import compressed
from r1jax.mixers.compressed import CompressedSparseAttention, CSAOptions, HCAOptions, HeavilyCompressedAttention
from r1jax.model import Transformer

from helpers import apply_mixer, mixer_config, small_model_config

CASES = [
  ("hca", dict(rate=4, window=5, query_chunk=8)),
  ("hca", dict(rate=3, overlap=True, window=2, sink=False, query_chunk=32)),
  ("csa", dict(rate=2, top_k=3, window=3, indexer_heads=2, indexer_dim=8, query_chunk=8)),
  ("csa", dict(rate=3, overlap=False, top_k=2, window=4, indexer_dim=8, indexer_grad="gate", query_chunk=7)),
  # windows in blocks of W queries within a chunk (C % W == 0)
  ("hca", dict(rate=2, window=4, query_chunk=8)),
  ("csa", dict(rate=2, top_k=3, window=2, indexer_heads=2, indexer_dim=8, query_chunk=8)),
]


def _module(name: str, opts: dict, kv_heads: int = 2):
  cfg = mixer_config(kv_heads=kv_heads)
  cls, options = (CompressedSparseAttention, CSAOptions) if name == "csa" else (HeavilyCompressedAttention, HCAOptions)
  return cls(cfg, options(**opts)), cfg


def _rmsnorm(a, scale, eps):
  return a / np.sqrt(np.mean(a * a, -1, keepdims=True) + eps) * np.asarray(scale)


# CSA's picks attended as a mask over every entry (MASK_ENTRIES: where they are few) or gathered per query
PICKED = [(n, o, p, i) for i, (n, o) in enumerate(CASES) for p in (("masked", "gathered") if n == "csa" else ("all",))]


@pytest.mark.parametrize("name,opts,picks", [c[:3] for c in PICKED], ids=[f"{n}-{i}-{p}" for n, _, p, i in PICKED])
def test_forward_equals_the_definition(name, opts, picks, monkeypatch):
  """Entries pooled as defined (RMSNorm'd), keys RoPE'd at their blocks' first positions, and one softmax over the
  window's raw keys, the visible entries (csa: the indexer's top-k of them, by the reference's own ranking, attended
  as a mask over all entries or gathered per query) and the sink: the module's output matches the float64 loops."""
  monkeypatch.setattr(compressed, "MASK_ENTRIES", 0 if picks == "gathered" else compressed.MASK_ENTRIES)
  module, cfg = _module(name, opts)
  T = 19
  x = jax.random.normal(jax.random.key(0), (2, T, cfg.d_model))
  params, (y, _), inter = apply_mixer(module, x)
  p, o = params["params"], module.opts
  q, k, v = inter["qkv"][0]
  z, g = inter["cmp_zg"][0]
  entries = _rmsnorm(reference.compressed_entries(z, g, o.rate, o.overlap), p["cmp_norm"]["scale"], cfg.norm_eps)
  np.testing.assert_allclose(inter["entries"][0], entries, rtol=1e-5, atol=1e-5)
  M = entries.shape[1]
  keys = reference.rope(entries, cfg.rope_base, np.arange(M) * o.rate)
  picked = None
  if name == "csa":
    iq, iw, ik = inter["indexer"][0]
    zi, gi = inter["idx_zg"][0]
    ik_want = _rmsnorm(reference.compressed_entries(zi, gi, o.rate, o.overlap), p["idx_norm"]["scale"], cfg.norm_eps)
    half = o.indexer_dim // 2
    rotated = reference.rope(ik_want[..., :half], cfg.rope_base, np.arange(M) * o.rate)
    np.testing.assert_allclose(ik, np.concatenate([rotated, ik_want[..., half:]], -1)[:, :, 0], rtol=1e-5, atol=1e-5)
    scores = reference.indexer_scores(iq, ik, iw)  # [B, T, M]
    ended = (np.arange(M)[None] + 1) * o.rate - 1 <= np.arange(T)[:, None]
    picked = np.zeros(scores.shape, bool)
    for b in range(2):
      for t in range(T):
        order = [i for i in np.argsort(-scores[b, t], kind="stable") if ended[t, i]]
        picked[b, t, order[: o.top_k]] = True
    idx, valid = (np.asarray(a) for a in inter["selected"][0])
    for b in range(2):
      for t in range(T):
        assert set(idx[b, t][valid[b, t]].tolist()) == set(np.nonzero(picked[b, t])[0].tolist()), (b, t)
  gate = scores if name == "csa" and o.indexer_grad == "gate" else None  # added to the picked entries' logits
  want = reference.compressed_attention(q, k, v, entries, keys, o.rate, o.window, p.get("sink"), picked, gate)
  out = jnp.einsum("BTHK,HKD->BTD", jnp.asarray(want, jnp.float32), p["wo"])
  np.testing.assert_allclose(y, out, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name,opts", CASES[2:4], ids=["csa-overlap", "csa-gate"])
def test_a_sequence_shorter_than_a_block_reads_the_window_alone(name, opts):
  """No block has ended: no entry exists (M = 0), and the output is the window's attention beside the sink."""
  module, cfg = _module(name, opts)
  T = opts["rate"] - 1
  x = jax.random.normal(jax.random.key(0), (2, T, cfg.d_model))
  params, (y, _), inter = apply_mixer(module, x)
  p, o = params["params"], module.opts
  q, k, v = inter["qkv"][0]
  none = np.zeros((2, 0, *k.shape[2:]))
  want = reference.compressed_attention(q, k, v, none, none, o.rate, o.window, p.get("sink"))
  np.testing.assert_allclose(y, jnp.einsum("BTHK,HKD->BTD", jnp.asarray(want, jnp.float32), p["wo"]), atol=2e-5)


@pytest.mark.parametrize("grad", ["none", "gate"])
def test_masked_and_gathered_picks_give_the_same_output_loss_and_gradients(grad, monkeypatch):
  """CSA's two ways of attending its picks (a mask over every entry where they are few, a per-query gather): the same
  output, indexer KL and gradients, the KL's main-attention probabilities taken in the picks' order."""
  loss = "kl" if grad == "none" else "none"
  module, cfg = _module("csa", dict(rate=2, top_k=3, window=2, indexer_dim=8, indexer_grad=grad, indexer_loss=loss))
  x = jax.random.normal(jax.random.key(0), (2, 16, cfg.d_model))
  params = nn.meta.unbox(module.init(jax.random.key(1), x, deterministic=True))

  def run(mask_entries):
    monkeypatch.setattr(compressed, "MASK_ENTRIES", mask_entries)
    f = lambda p: module.apply(p, x, deterministic=True)  # noqa: E731
    (y, aux), grads = f(params), jax.grad(lambda p: jnp.sum(f(p)[0] ** 2) + f(p)[1].get("loss_indexer", 0.0))(params)
    return y, aux, grads

  masked, gathered = run(compressed.MASK_ENTRIES), run(0)
  for a, b in zip(jax.tree.leaves(masked), jax.tree.leaves(gathered)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  if grad == "none":
    assert float(masked[1]["indexer_kl"]) > 0


def test_the_sink_takes_mass_and_no_value():
  """A large sink logit sends every head's attention to nowhere: the output goes to zero."""
  module, cfg = _module("hca", dict(rate=2, window=3))
  x = jax.random.normal(jax.random.key(0), (1, 8, cfg.d_model))
  params = nn.meta.unbox(module.init(jax.random.key(1), x, deterministic=True))
  params["params"]["sink"] = jnp.full_like(params["params"]["sink"], 60.0)
  y, _ = module.apply(params, x, deterministic=True)
  np.testing.assert_allclose(y, 0.0, atol=1e-12)


@pytest.mark.parametrize("grad", ["none", "gate"])
def test_gradients_reach_every_part_and_the_indexer_through_its_kl_or_gate(grad):
  """The task loss trains the projections, the compressor (weights, gates, position bias, norm) and the sink; the
  indexer learns from its KL to the main attention (indexer_grad=none, DSA's sparse stage) or through the gate,
  and, its input detached, never shapes x through the indexer."""
  loss = "kl" if grad == "none" else "none"
  module, cfg = _module("csa", dict(rate=2, top_k=2, window=2, indexer_dim=8, indexer_grad=grad, indexer_loss=loss))
  x = jax.random.normal(jax.random.key(0), (2, 12, cfg.d_model))
  params = nn.meta.unbox(module.init(jax.random.key(1), x, deterministic=True))

  def total(p, x, task=True, indexer=True):
    y, aux = module.apply(p, x, deterministic=True)
    return task * jnp.mean(y**2) + indexer * aux.get("loss_indexer", 0.0)

  grads = jax.grad(total)(params, x)["params"]
  for name, g in grads.items():
    assert all(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g)), f"no gradient reaches {name}"
  task_only = jax.grad(lambda p: total(p, x, indexer=False))(params)["params"]
  reached = float(jnp.abs(task_only["idx_wq"]).max()) > 0
  assert reached == (grad == "gate"), "the task loss reaches the indexer only through the gate"
  if grad == "none":  # the KL trains the indexer alone, and its input is detached
    dx = jax.grad(lambda x: total(params, x, task=False))(x)
    np.testing.assert_array_equal(dx, 0.0)


@pytest.mark.parametrize("name", ["csa", "hca"])
def test_decoding_cache_per_token_matches_the_analytic_count(name):
  """The cache's growth with max_len, in numbers per token, is cache_per_token: (G K + I) / m for csa, G K / m for
  hca (the window's and the partial block's rings are constant)."""
  opts = dict(rate=4, window=3, query_chunk=8, **({"top_k": 2, "indexer_dim": 8} if name == "csa" else {}))
  cfg = small_model_config("mixer", name, opts)
  model = Transformer(cfg)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(0), tokens))

  def numbers(max_len):
    shapes = jax.eval_shape(
      lambda: model.apply(params, tokens, decode=decoding.Decode.prefill(jnp.array([8]), max_len), mutable=["cache"])
    )[1]["cache"]
    return sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(shapes))  # per row

  per_token = (numbers(1024) - numbers(512)) / 512
  assert per_token == pytest.approx(cfg.num_layers * cfg.options("mixer", name).cache_per_token(cfg))


@pytest.mark.parametrize(
  "cls,opts,field",
  [
    (HCAOptions, dict(rate=0), "rate"),
    (HCAOptions, dict(window=0), "window"),
    (CSAOptions, dict(top_k=0), "top_k"),
    (CSAOptions, dict(indexer_dim=6), "indexer_dim"),
    (CSAOptions, dict(indexer_loss="mse"), "indexer_loss"),
    (CSAOptions, dict(indexer_grad="both"), "indexer_grad"),
  ],
)
def test_bad_options_name_the_field(cls, opts, field):
  with pytest.raises(ConfigError, match=field):
    cls(**opts)


def test_v4_defaults():
  """The options default to DeepSeek-V4's: CSA m = 4 with overlap, top 512, window 128; HCA m = 128, no overlap."""
  assert dataclasses.astuple(CSAOptions())[:4] == (4, True, 128, True) and CSAOptions().top_k == 512
  assert dataclasses.astuple(HCAOptions())[:4] == (128, False, 128, True)


@pytest.mark.parametrize("name", ["csa", "hca"])
def test_flops_from_the_definition_count_the_pairs_each_query_reads(name):
  """r1jax/lab/flops.py's count: 4 H K per (query, key) pair over the window's keys and the entries each query reads
  (csa: at most top_k of the ended ones; its indexer scores every ended entry), counted here query by query."""
  from r1jax.lab.flops import mixer_flops

  opts = dict(rate=4, window=6, **({"top_k": 3, "indexer_heads": 2, "indexer_dim": 8} if name == "csa" else {}))
  cfg = small_model_config("mixer", name, opts)
  T, H, K = 50, cfg.num_heads, cfg.d_model // cfg.num_heads
  pairs = ended = 0
  for t in range(T):
    e = sum((i + 1) * 4 - 1 <= t for i in range(T))
    pairs += min(t + 1, 6) + (min(e, 3) if name == "csa" else e)
    ended += e
  got = mixer_flops(cfg, T)
  assert got["window"] + got["compressed"] == 4 * H * K * pairs
  assert got.get("indexer", 0) == (ended * (2 * 2 * 8 + 2 * 2) if name == "csa" else 0)


def test_deepseek_costs_count_the_published_layers():
  """V4-Flash has 43 attention layers (2 window-only, 21 CSA, 20 HCA), V4-Pro 61 (30 CSA, 31 HCA), V3.2 61 sparse MLA
  layers; their caches per token and a decoded token's FLOPs follow from those shapes (r1jax/lab/flops.py)."""
  from r1jax.lab.flops import V4_SHAPES, deepseek_decode_cost

  flash, pro = (V4_SHAPES[r]["rates"] for r in ("V4-Flash", "V4-Pro"))
  assert (len(flash), flash.count(0), flash.count(4), flash.count(128)) == (43, 2, 21, 20)
  assert (len(pro), pro.count(4), pro.count(128)) == (61, 30, 31)
  C = 2**20
  assert deepseek_decode_cost("V4-Flash", C)["cache"] == 21 * (512 / 4 + 128 / 4) + 20 * 512 / 128
  assert deepseek_decode_cost("V3.2", C)["cache"] == 61 * (512 + 64 + 128)
  window_only = 4 * 64 * 512 * 128  # a window layer reads 128 keys of one shared 512-wide head, 64 heads
  hca = 4 * 64 * 512 * (128 + C // 128)
  csa = 4 * 64 * 512 * (128 + 512) + 2 * 64 * 129 * (C // 4)
  assert deepseek_decode_cost("V4-Flash", C)["flops"] == 2 * window_only + 21 * csa + 20 * hca
