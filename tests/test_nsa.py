"""Native Sparse Attention: each branch against its masked reference (r1jax.reference.nsa_branches), selection over
every block equal to dense attention, the gated sum, causality and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.errors import ConfigError
from r1jax.mixers.nsa import GATE_INIT, NativeSparseAttention, NSAOptions, num_compressed, overlap_scores

from helpers import apply_mixer, assert_causal, mixer_config, project_out


def _run(opts, T, kv_heads, seed=0):
  cfg = mixer_config(kv_heads=kv_heads)
  mixer = NativeSparseAttention(cfg, opts)
  x = jax.random.normal(jax.random.key(seed), (2, T, cfg.d_model))
  params, (out, aux), inter = apply_mixer(mixer, x)
  return mixer, x, params, out, aux, inter


def _reference(opts, params, inter):
  q, kv_cmp, kv_slc, kv_win = inter["qkv"][0]
  p = params["params"]
  mlp = {n: (p[f"{n}_pos"], p[f"{n}_w1"], p[f"{n}_w2"]) if opts.compress == "mlp" else None for n in ("cmp_k", "cmp_v")}
  return reference.nsa_branches(q, kv_cmp, kv_slc, kv_win, opts, mlp["cmp_k"], mlp["cmp_v"])


@pytest.mark.parametrize("T,l,d,ls", [(21, 4, 2, 4), (16, 4, 4, 8), (19, 6, 2, 2), (5, 8, 4, 4), (64, 32, 16, 64)])
def test_overlap_scores_sum_the_compressed_blocks_overlapping_each_selection_block(T, l, d, ls):
  """The paper's Eq. 9 by its definition: selection block j sums compressed block i iff their tokens overlap."""
  M, NB = num_compressed(T, l, d), -(-T // ls)
  p = np.random.default_rng(T).random((2, 3, M))
  want = np.zeros((2, 3, NB))
  for j in range(NB):
    for i in range(M):
      if i * d < (j + 1) * ls and i * d + l > j * ls:
        want[..., j] += p[..., i]
  np.testing.assert_allclose(overlap_scores(jnp.asarray(p, jnp.float32), T, l, d, ls), want, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
  "T,l,d,ls,n,w,chunk,kv_heads,compress",
  [
    (21, 4, 2, 4, 3, 5, 8, 2, "mlp"),  # overlapping compressed blocks, T not a multiple of anything, GQA
    (16, 4, 4, 8, 3, 4, 16, 0, "mean"),  # l = d, selection blocks of two compressed blocks, one query chunk
    (19, 6, 2, 2, 4, 3, 5, 1, "mlp"),  # compressed blocks longer than selection blocks, MQA
    (5, 8, 4, 4, 3, 2, 4, 2, "mean"),  # shorter than one compressed block: the compressed branch is empty
  ],
)
def test_each_branch_equals_its_masked_reference(T, l, d, ls, n, w, chunk, kv_heads, compress):
  opts = NSAOptions(
    cmp_block=l,
    cmp_stride=d,
    slc_block=ls,
    top_blocks=n,
    window=w,
    query_chunk=chunk,
    compress=compress,
    gate_init="equal" if compress == "mean" else "window",
  )
  _, _, params, out, _, inter = _run(opts, T, kv_heads)
  o_cmp, o_slc, o_win, chosen = _reference(opts, params, inter)
  got = inter["branches"][0]
  for name, a, b in zip(("compressed", "selected", "window"), got, (o_cmp, o_slc, o_win)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=name)
  ids, valid = inter["selected"][0]  # the block sets: the same tokens as the reference's
  tok = np.asarray(ids)[..., None] * ls + np.arange(ls)
  got_mask = np.zeros_like(chosen)
  for b, t, g, j in zip(*np.nonzero(np.asarray(valid))):
    keys = tok[b, t, g, j][tok[b, t, g, j] <= t]
    got_mask[b, g, t, keys] = True
  np.testing.assert_array_equal(got_mask, chosen)
  # the layer's output: the gated sum (gates at init: sigmoid of the offsets), projected
  gates = 1 / (1 + np.exp(-GATE_INIT[opts.gate_init]))
  want = sum(g * o for g, o in zip(gates, (o_cmp, o_slc, o_win)))
  np.testing.assert_allclose(out, project_out(params, jnp.asarray(want, jnp.float32)), rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_selecting_every_block_is_dense_attention_and_keeps_all_the_mass():
  T, ls = 23, 4
  opts = NSAOptions(cmp_block=4, cmp_stride=2, slc_block=ls, top_blocks=-(-T // ls), window=3, query_chunk=7)
  mixer, x, params, _, aux, inter = _run(opts, T, kv_heads=2)
  q, _, (k, v), _ = inter["qkv"][0]
  np.testing.assert_allclose(inter["branches"][0][1], reference.attention(q, k, v), rtol=2e-4, atol=2e-5)
  assert "mass" not in aux  # the diagnostic needs a dense pass: only in a diagnostics pass
  (_, aux), _ = mixer.apply(params, x, deterministic=True, mutable=["diagnostics"])
  np.testing.assert_allclose(aux["mass"], 1.0, rtol=1e-5)


@pytest.mark.slow
def test_nsa_is_causal_and_every_parameter_gets_a_gradient():
  opts = NSAOptions(cmp_block=4, cmp_stride=2, slc_block=4, top_blocks=3, window=3, query_chunk=12)  # one chunk:
  mixer, x, params, _, _, _ = _run(opts, 12, kv_heads=2)  # the chunked path is checked against the reference
  assert_causal(NativeSparseAttention(mixer_config(d_model=16, heads=2, kv_heads=1), opts), T=12)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(mixer.apply(p, x, deterministic=False)[0] ** 2)))(params)["params"]
  for name, g in grads.items():
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("cmp_stride", 3, "nsa.cmp_block"),
    ("slc_block", 5, "nsa.slc_block"),
    ("top_blocks", 2, "nsa.top_blocks"),
    ("compress", "max", "nsa.compress"),
  ],
)
def test_bad_options_name_the_field(field, value, match):
  with pytest.raises(ConfigError, match=match):
    NSAOptions(**{"cmp_block": 4, "cmp_stride": 2, "slc_block": 4, field: value})


@pytest.mark.slow
def test_the_mass_diagnostic_is_the_dense_attention_on_each_groups_selected_tokens():
  """With some blocks left out: `mass` = dense attention (averaged over heads) summed over the tokens the reference
  selects for each (query, group), averaged over queries and groups."""
  T, ls = 22, 4
  opts = NSAOptions(cmp_block=4, cmp_stride=2, slc_block=ls, top_blocks=3, window=3, query_chunk=8)
  mixer, x, params, _, _, inter = _run(opts, T, kv_heads=2)
  q, _, (k, _), _ = (np.asarray(a, np.float64) if not isinstance(a, tuple) else a for a in inter["qkv"][0])
  chosen = _reference(opts, params, inter)[3]  # [B, G, T, S]
  B, _, H, K = q.shape
  G = k.shape[2]
  logits = np.einsum("BTHK,BSHK->BHTS", q, np.repeat(np.asarray(k, np.float64), H // G, 2)) / np.sqrt(K)
  logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p = (p / p.sum(-1, keepdims=True)).mean(1)  # [B, T, S]
  want = np.mean(np.einsum("BGTS,BTS->BGT", chosen.astype(np.float64), p))
  assert 0.2 < want < 0.95  # a partial selection
  (_, aux), _ = mixer.apply(params, x, deterministic=True, mutable=["diagnostics"])
  np.testing.assert_allclose(aux["mass"], want, rtol=1e-4)


def test_the_long_context_path_equals_the_direct_one(monkeypatch):
  """From T >= dense.FLASH_FROM the compressed and window branches run blocked (r1jax/mixers/flash.py) and the
  selection reads probabilities recomputed per chunk (8 runs) from the log-sum-exp: the same blocks are picked,
  and the output and the gradients equal those of the direct path (the threshold moved to reach both at T=150)."""
  import r1jax.mixers.local as local
  import r1jax.mixers.nsa as nsa

  opts = NSAOptions(cmp_block=8, cmp_stride=4, slc_block=16, top_blocks=5, window=40, query_chunk=16)
  cfg = mixer_config(kv_heads=2)
  mixer = NativeSparseAttention(cfg, opts)
  x = jax.random.normal(jax.random.key(0), (1, 150, cfg.d_model))
  params = mixer.init(jax.random.key(1), x, deterministic=True)

  def run(threshold):
    monkeypatch.setattr(nsa, "FLASH_FROM", threshold)
    monkeypatch.setattr(local, "FLASH_FROM", threshold)
    f = lambda p: mixer.apply(p, x, deterministic=True, mutable=["intermediates"])  # noqa: E731
    (out, _), inter = jax.jit(f)(params)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(mixer.apply(p, x, deterministic=True)[0] ** 2)))(params)
    return out, inter["intermediates"]["selected"][0], grads

  out, picks, grads = run(64)
  want_out, want_picks, want_grads = run(10**9)
  np.testing.assert_array_equal(picks[0], want_picks[0])
  np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
