"""Sparse attention (token top-k with the DSA indexer, window, random, NSA block top-k) against naive references."""

import dataclasses

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.errors import ConfigError
from r1jax.mixers.block_sparse import BlockSparseAttention, BlockSparseOptions, block_sparse_attention, select_blocks
from r1jax.mixers.dense import Attention, AttentionOptions
from r1jax.mixers.local import LocalAttention, LocalOptions
from r1jax.mixers.mla import MultiHeadLatentAttention
from r1jax.mixers.sparse import (
  INDEXER_V0,
  SparseAttention,
  SparseOptions,
  gathered_attention,
  v32_indexer_params,
)

from helpers import apply_mixer, assert_causal, mixer_config, project_out, tiny_config

# DSA's sparse-stage KL (its loss reads the selected keys only, so the long path may skip the later ones)
DSA_KL = {"indexer_grad": "none", "indexer_loss": "kl"}


@pytest.mark.parametrize("B,T,H,G,N", [(2, 9, 4, 2, 3), (1, 16, 2, 1, 16), (3, 5, 6, 3, 1)])
def test_gathered_attention_equals_masked_reference(B, T, H, G, N):
  rng = np.random.default_rng(T)
  q, k, v = (rng.normal(size=(B, T, h, 8)).astype(np.float32) for h in (H, G, G))
  idx, valid = np.zeros((B, T, N), np.int32), np.zeros((B, T, N), bool)
  mask, bias_full = np.zeros((B, T, T), bool), np.zeros((B, T, T), np.float32)
  bias = rng.normal(size=(B, T, N)).astype(np.float32)
  for b in range(B):
    for t in range(T):
      n = min(N, t + 1)  # distinct earlier keys, as top-k picks them; the rest are padding picks
      idx[b, t, :n], valid[b, t, :n] = rng.choice(t + 1, size=n, replace=False), True
      mask[b, t, idx[b, t, :n]], bias_full[b, t, idx[b, t, :n]] = True, bias[b, t, :n]
  out, _ = gathered_attention(*map(jnp.asarray, (q, k, v, idx, valid, bias)))
  ref = reference.attention(q, k, v, mask[:, None], bias_BxTxS=bias_full)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_gathered_attention_over_blocks_of_rows_equals_the_same_keys_picked_one_by_one():
  """rows > 1 (NSA's selection blocks): block ids per (query, group) read the same keys as their token positions."""
  rng = np.random.default_rng(0)
  B, T, H, G, rows, N = 2, 12, 4, 2, 3, 2
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, h, 8)), jnp.float32) for h in (H, G, G))
  ids = jnp.asarray(rng.integers(0, T // rows, size=(B, T, G, N)), jnp.int32)
  tok = (ids[..., None] * rows + jnp.arange(rows)[None, None, None, None]).reshape(B, T, G, N * rows)
  valid = jnp.asarray(rng.random((B, T, G, N * rows)) < 0.8).at[..., 0].set(True)
  by_block, p_block = gathered_attention(q, k, v, ids, valid, rows=rows)
  by_token, p_token = gathered_attention(q, k, v, tok, valid)
  np.testing.assert_allclose(by_block, by_token, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(p_block, p_token, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("T,chunk,top_k,kv_heads", [(13, 4, 3, 0), (16, 16, 5, 2), (7, 3, 7, 1)])
def test_indexer_topk_equals_masked_reference(T, chunk, top_k, kv_heads):
  """The whole mixer (chunked queries, T not a multiple of the chunk, GQA) against top-k by sorting."""
  cfg = mixer_config(kv_heads=kv_heads)
  opts = SparseOptions(select="indexer", top_k=top_k, indexer_heads=8, indexer_dim=8, query_chunk=chunk)
  mixer = SparseAttention(cfg, opts)
  x = jax.random.normal(jax.random.key(T), (2, T, cfg.d_model))
  params, (out, _), inter = apply_mixer(mixer, x)
  (q, k, v), (iq, ik, iw) = inter["qkv"][0], inter["indexer"][0]
  scores = reference.indexer_scores(iq, ik, iw)
  mask = reference.topk_mask(scores, top_k)
  ref = reference.attention(q, k, v, mask[:, None], bias_BxTxS=np.where(mask, scores, 0.0).astype(np.float32))
  np.testing.assert_allclose(out, project_out(params, ref), rtol=1e-4, atol=1e-5)


def count_primitive(jaxpr, name: str) -> int:
  """How many equations of primitive `name` a jaxpr holds, its sub-jaxprs (scans, remat, custom rules) included."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == name
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += count_primitive(sub, name)
  return count


@pytest.mark.parametrize("select", ["indexer", "random"])
def test_picks_are_made_once_in_forward_and_backward(select):
  """The O(T^2) scoring and top-k run in the forward only: the backward rematerialises attention over the picks,
  not the picks (one top_k in the forward+backward program, as in the forward's)."""
  cfg = mixer_config()
  mixer = SparseAttention(cfg, SparseOptions(select=select, top_k=3, query_chunk=4, indexer_grad="none"))
  x = jax.random.normal(jax.random.key(0), (1, 13, cfg.d_model))
  params = mixer.init(jax.random.key(1), x, deterministic=True)
  loss = lambda p, x: jnp.sum(mixer.apply(p, x, deterministic=False)[0] ** 2)  # noqa: E731
  forward = jax.make_jaxpr(loss)(params, x).jaxpr
  both = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x).jaxpr
  assert count_primitive(forward, "top_k") == count_primitive(both, "top_k") == 1


@pytest.mark.parametrize("select", ["indexer", "window", "random"])
def test_topk_with_k_at_least_T_equals_dense(select):
  cfg = mixer_config(kv_heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 11, cfg.d_model))
  sparse = SparseAttention(cfg, SparseOptions(select=select, top_k=11, indexer_grad="none", query_chunk=4))
  params = sparse.init(jax.random.key(1), x, deterministic=True)
  (out, aux), _ = sparse.apply(params, x, deterministic=True, mutable=["diagnostics"])  # a diagnostics pass
  dense_params = {"params": {n: params["params"][n] for n in ("wq", "wk", "wv", "wo")}}
  dense, _ = Attention(cfg, AttentionOptions(impl="xla")).apply(dense_params, x, deterministic=True)
  np.testing.assert_allclose(out, dense, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([aux["recall"], aux["mass"]], [1.0, 1.0], rtol=1e-5)


def test_window_keeps_the_last_k_keys():
  cfg = mixer_config()
  x = jax.random.normal(jax.random.key(0), (1, 10, cfg.d_model))
  mixer = SparseAttention(cfg, SparseOptions(select="window", top_k=3, query_chunk=4))
  params, (out, _), inter = apply_mixer(mixer, x)
  q, k, v = inter["qkv"][0]
  t, s = np.arange(10)[:, None], np.arange(10)[None, :]
  ref = reference.attention(q, k, v, (s <= t) & (s > t - 3))
  np.testing.assert_allclose(out, project_out(params, ref), rtol=1e-5, atol=1e-6)
  # The banded `local` mixer is the same attention without a gather (the ablation driver's window control).
  local, _ = LocalAttention(cfg, LocalOptions(window=3)).apply(params, x, deterministic=True)
  np.testing.assert_allclose(local, out, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
  "T,block,n,kv_heads,per_token",
  [
    (20, 4, 2, 0, True),
    (19, 5, 1, 2, True),
    (16, 8, 0, 1, True),
    (12, 3, 5, 4, True),
    (20, 4, 2, 0, False),
    (19, 5, 1, 2, False),
  ],
)
def test_block_topk_equals_masked_reference(T, block, n, kv_heads, per_token):
  rng = np.random.default_rng(T)
  H, G = 4, kv_heads or 4
  q, k, v = (rng.normal(size=(2, T, h, 8)).astype(np.float32) for h in (H, G, G))
  out, _, _ = block_sparse_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), block, n, per_token=per_token)
  mask_BxGxTxS = reference.block_select_mask(q, k, block, n, per_token)
  ref = reference.attention(q, k, v, np.repeat(mask_BxGxTxS, H // G, axis=1))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_block_topk_with_all_blocks_equals_dense():
  cfg = mixer_config(kv_heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 22, cfg.d_model))
  mixer = BlockSparseAttention(cfg, BlockSparseOptions(block_size=4, top_blocks=6))
  params = mixer.init(jax.random.key(1), x, deterministic=True)
  (out, aux), _ = mixer.apply(params, x, deterministic=True, mutable=["diagnostics"])  # a diagnostics pass
  dense, _ = Attention(cfg, AttentionOptions(impl="xla")).apply(params, x, deterministic=True)
  np.testing.assert_allclose(out, dense, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aux["mass"], 1.0, rtol=1e-5)
  assert "mass" not in mixer.apply(params, x, deterministic=True)[1]  # none in a plain (timed) pass


CAUSAL_CASES = [
  (SparseAttention, SparseOptions(select="indexer", top_k=3, query_chunk=4)),
  (SparseAttention, SparseOptions(select="window", top_k=3, query_chunk=5)),
  (SparseAttention, SparseOptions(select="random", top_k=3, query_chunk=4)),
  (SparseAttention, SparseOptions(select="indexer", top_k=4, indexer_loss="kl")),
  (BlockSparseAttention, BlockSparseOptions(block_size=3, top_blocks=1)),
]


@pytest.mark.slow
@pytest.mark.parametrize("cls,opts", CAUSAL_CASES)
def test_selection_is_causal_by_gradients(cls, opts):
  """Output t (and the selection behind it) never depends on inputs after t."""
  assert_causal(cls(mixer_config(), opts))


@pytest.mark.slow
@pytest.mark.parametrize(
  "grad,loss,reaches",
  [("gate", "none", True), ("none", "kl", True), ("none", "kl_dense", True), ("none", "none", False)],
)
def test_indexer_receives_gradient(grad, loss, reaches):
  cfg = mixer_config()
  mixer = SparseAttention(cfg, SparseOptions(top_k=3, indexer_grad=grad, indexer_loss=loss, query_chunk=4))
  x = jax.random.normal(jax.random.key(0), (2, 9, cfg.d_model))
  params = nn.meta.unbox(mixer.init(jax.random.key(1), x, deterministic=True))

  def objective(p):
    y, aux = mixer.apply(p, x, deterministic=False)
    return jnp.mean(y**2) + aux.get("loss_indexer", 0.0)

  grads = jax.grad(objective)(params)["params"]
  norms = [float(jnp.linalg.norm(grads[n])) for n in ("idx_wq", "idx_wk", "idx_ww")]
  assert all(n > 0 for n in norms) == reaches and all(np.isfinite(norms))
  assert float(jnp.linalg.norm(grads["wq"])) > 0


@pytest.mark.slow
def test_sampled_selection_draws_from_the_indexer_softmax_in_training_only():
  """sample_temperature=tau: a training pass picks k=1 key with the frequencies of softmax(I / tau) over the earlier
  keys (Gumbel-top-k); an eval pass is the greedy mixer's, bitwise."""
  cfg, T, tau = mixer_config(), 6, 16.0
  x = jax.random.normal(jax.random.key(0), (1, T, cfg.d_model))
  opts = SparseOptions(top_k=1, indexer_grad="none", sample_temperature=tau)
  params, (greedy, _), inter = apply_mixer(
    SparseAttention(cfg, dataclasses.replace(opts, sample_temperature=0.0)), x, deterministic=True
  )
  sampled, _ = SparseAttention(cfg, opts).apply(params, x, deterministic=True)
  np.testing.assert_array_equal(sampled, greedy)
  picks = jax.jit(
    jax.vmap(
      lambda key: SparseAttention(cfg, opts).apply(
        params, x, deterministic=False, rngs={"dropout": key}, mutable=["intermediates"]
      )[1]["intermediates"]["selected"][0][0][0, :, 0]
    )
  )(jax.random.split(jax.random.key(2), 4000))  # [draws, T]
  scores = reference.indexer_scores(*inter["indexer"][0])[0]
  for t in (3, T - 1):
    p = np.exp((scores[t, : t + 1] - scores[t, : t + 1].max()) / tau)
    assert 0.05 < p.max() / p.sum() < 0.95, "pick a temperature that makes the test informative"
    freq = np.bincount(np.asarray(picks[:, t]), minlength=T) / len(picks)
    np.testing.assert_allclose(freq, np.pad(p / p.sum(), (0, T - t - 1)), atol=0.03)


def test_sampled_block_selection_draws_from_the_score_softmax():
  """Block top-1 with a noise key picks earlier block j for query t with probability softmax over j of
  q_t . mean(k_j) / sqrt(K) / tau; without one it is the greedy pick; the own block always comes last."""
  rng = np.random.default_rng(0)
  T, b, K, tau = 20, 4, 8, 0.5
  q, k = (jnp.asarray(rng.normal(size=(1, T, 1, K)).astype(np.float32)) for _ in range(2))
  greedy, _ = select_blocks(q, k, b, 1)
  draws = jax.jit(jax.vmap(lambda key: select_blocks(q, k, b, 1, key, tau)[0][0, 0]))(
    jax.random.split(jax.random.key(3), 4000)
  )  # [draws, T, 2]
  np.testing.assert_array_equal(draws[:, :, 1], np.broadcast_to(np.arange(T) // b, draws.shape[:2]))
  km = np.asarray(k).reshape(T // b, b, K).mean(1)
  for t in (9, 17):
    i = t // b
    s = np.asarray(q)[0, t, 0] @ km[:i].T / np.sqrt(K) / tau
    p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    assert p.max() < 0.95, "pick a temperature that makes the test informative"
    np.testing.assert_allclose(np.bincount(np.asarray(draws[:, t, 0]), minlength=i)[:i] / len(draws), p, atol=0.03)
    assert int(greedy[0, 0, t, 0]) == int(np.argmax(s))


def test_kl_dense_matches_definition():
  """DSA warm-up loss: KL(mean-over-heads dense attention || softmax(indexer scores)) over earlier keys."""
  cfg = mixer_config()
  mixer = SparseAttention(cfg, SparseOptions(top_k=2, indexer_loss="kl_dense", query_chunk=3))
  x = jax.random.normal(jax.random.key(0), (2, 7, cfg.d_model))
  _, (_, aux), inter = apply_mixer(mixer, x)
  (q, k, _), (iq, ik, iw) = inter["qkv"][0], inter["indexer"][0]
  q, k = np.float64(q), np.float64(k)
  T, H, K = 7, q.shape[2], q.shape[3]
  causal = reference.causal_mask(T)
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(K)
  p = np.exp(np.where(causal, logits, -np.inf) - logits.max(-1, keepdims=True))
  p = (p / p.sum(-1, keepdims=True)).mean(1)
  s = np.where(causal, reference.indexer_scores(iq, ik, iw), -np.inf)
  logq = s - s.max(-1, keepdims=True) - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True))
  kl = np.where(causal, p * (np.log(np.maximum(p, 1e-300)) - np.where(causal, logq, 0.0)), 0.0).sum(-1).mean()
  np.testing.assert_allclose(aux["indexer_kl"], kl, rtol=1e-4)
  assert H > 1


@pytest.mark.parametrize(
  "opts,field",
  [
    (dict(select="toppp"), "select"),
    (dict(top_k=0), "top_k"),
    (dict(indexer_loss="mse"), "indexer_loss"),
    (dict(indexer_dim=3), "indexer_heads/indexer_dim"),
    (dict(select="random", sample_temperature=1.0), "sample_temperature"),
    (dict(indexer_rope_fraction=0.0), "indexer_rope_fraction"),
    (dict(indexer_dim=12, indexer_rope_fraction=0.25), "indexer_rope_fraction"),  # 3 dims: not pairs
  ],
)
def test_bad_options_name_the_field(opts, field):
  with pytest.raises(ConfigError, match=field):
    SparseOptions(**opts)


def test_bad_block_options():
  with pytest.raises(ConfigError, match="block_size"):
    BlockSparseOptions(block_size=0)


@pytest.mark.parametrize("mixer", ["sparse", "block_sparse"])
def test_the_timed_eval_step_holds_no_dense_pass_and_the_diagnostics_pass_does(mixer):
  """At T=2048 a sparse model's timed eval step (what `eval tok/s` measures) compiles to fewer FLOPs than dense's;
  the untimed diagnostics pass (recall / mass against dense attention) is the one that pays for a dense pass."""
  from r1jax.model import make_model
  from r1jax.objective import forward
  from r1jax.train import compiled_flops, resolve_model_config

  T = 2048

  def flops(mixer_name: str, diagnostics: bool) -> float:
    cfg = tiny_config(
      text="x",
      model__num_layers=1,
      model__d_model=64,
      model__num_heads=2,
      model__ffn="none",
      model__mixer=mixer_name,
      **{"model__mixer_options__sparse__query_chunk": T, "model__mixer_options__attention__impl": "xla"},
    )  # one chunk, and dense's [T, T] path (its blocked one is a loop):
    model = make_model(resolve_model_config(cfg.model, 32))  # XLA's cost analysis counts a loop body once
    tokens = jax.ShapeDtypeStruct((1, T), jnp.int32)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), tokens)["params"]
    batch = {"inputs": tokens, "targets": tokens, "weights": jax.ShapeDtypeStruct((1, T), jnp.float32)}
    step = jax.jit(lambda p, b: forward(model, p, {}, b, None, True, diagnostics)[1:3])
    return compiled_flops(step.lower(params, batch).compile())

  dense, timed, diag = flops("attention", False), flops(mixer, False), flops(mixer, True)
  assert timed < 0.8 * dense, (timed, dense)
  assert diag > timed + 0.3 * dense, (diag, timed, dense)  # the diagnostics' dense probabilities


@pytest.mark.slow
def test_a_run_reports_the_diagnostics_from_its_untimed_pass(text_file):
  """Recall and mass reach the results (from the diagnostics evaluator's pass), loss and accuracy from the timed."""
  from r1jax.train import train

  cfg = tiny_config(
    text=text_file, model__mixer="sparse", model__num_layers=1, **{"model__mixer_options__sparse__top_k": 4}
  )
  final = train(cfg)["final"]
  assert 0.0 < final["eval/mixer/recall"] <= 1.0 and 0.0 < final["eval/mixer/mass"] <= 1.0
  assert np.isfinite(final["eval/loss"])


def test_selection_diagnostics_by_their_definition():
  """recall: the share of a query's valid picks whose dense probability is at least the N-th largest (ties count,
  zero-probability keys never); mass: the dense probability the valid picks hold. Probabilities with ties."""
  from r1jax.mixers.sparse import selection_diagnostics

  rng = np.random.default_rng(0)
  B, C, S, N = 2, 5, 12, 4
  p = rng.integers(0, 5, (B, C, S)).astype(np.float32)  # many ties, some zeros
  p /= np.maximum(p.sum(-1, keepdims=True), 1)
  idx = np.stack([[rng.choice(S, N, replace=False) for _ in range(C)] for _ in range(B)])
  valid = rng.random((B, C, N)) < 0.8
  got = jax.jit(selection_diagnostics)(jnp.asarray(p), jnp.asarray(idx), jnp.asarray(valid))
  for b in range(B):
    for c in range(C):
      kth = np.sort(p[b, c])[-N]
      picks = [p[b, c, i] for i, ok in zip(idx[b, c], valid[b, c]) if ok]
      want = sum(x >= kth and x > 0 for x in picks) / max(len(picks), 1)
      np.testing.assert_allclose(got["recall"][b, c], want, rtol=1e-6, err_msg=f"{b},{c}")
      np.testing.assert_allclose(got["mass"][b, c], sum(picks), rtol=1e-6)


@pytest.mark.parametrize("select", ["indexer", "random"])
def test_long_sequences_skip_the_keys_after_each_chunk_with_the_same_picks(select, monkeypatch):
  """From T >= dense.FLASH_FROM the query chunks run in 8 runs that each score only the keys up to their end: the
  picks, the output, the losses and the gradients equal the one-run path's (the threshold moved to reach both at
  T=150)."""
  import r1jax.mixers.sparse as sparse

  cfg = mixer_config(kv_heads=2)
  kl = DSA_KL if select == "indexer" else {}
  opts = SparseOptions(select=select, top_k=24, indexer_heads=2, indexer_dim=8, query_chunk=16, **kl)
  mixer = SparseAttention(cfg, opts)
  x = jax.random.normal(jax.random.key(5), (1, 150, cfg.d_model))
  params = mixer.init(jax.random.key(1), x, deterministic=True)

  def run(threshold):
    monkeypatch.setattr(sparse, "FLASH_FROM", threshold)
    f = lambda p: mixer.apply(p, x, deterministic=True, mutable=["intermediates"])  # noqa: E731
    (out, aux), inter = jax.jit(f)(params)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(mixer.apply(p, x, deterministic=True)[0] ** 2)))(params)
    return out, aux, inter["intermediates"]["selected"][0], grads

  out, aux, picks, grads = run(64)
  want_out, want_aux, want_picks, want_grads = run(10**9)
  for a, b in zip(picks, want_picks):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves((aux, grads)), jax.tree.leaves((want_aux, want_grads))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)  # float32 sums over other key extents


@pytest.mark.parametrize("mixer", ["sparse", "mla"])
def test_v32_weights_copied_in_give_v32s_index_scores_and_picks(mixer):
  """DeepSeek-V3.2-Exp's indexer weights (its PyTorch layout) converted by v32_indexer_params: our index scores equal
  a float64 transcription of V3.2's Indexer (reference.v32_indexer: LayerNorm'd key, RoPE on the first half of the
  dims as interleaved pairs, 1/sqrt(d_I) in the score; the query from the query latent in sparse MLA, from x in the
  sparse mixer) to 1e-5, and the top-k sets are V3.2's, ties at the k-th score aside."""
  B, T, D, J, I, Q, k = 2, 24, 32, 4, 16, 12, 5
  cfg = mixer_config(d_model=D)
  idx = dict(top_k=k, indexer_heads=J, indexer_dim=I, query_chunk=8, **DSA_KL)
  if mixer == "mla":
    cfg = dataclasses.replace(cfg, mixer="mla", mixer_options={"mla": dict(sparse=True, q_rank=Q, indexer=idx)})
    module = MultiHeadLatentAttention(cfg, cfg.options("mixer", "mla"))
  else:
    module, Q = SparseAttention(cfg, SparseOptions(**idx)), D
  rng = np.random.default_rng(0)
  v32 = {
    "wq_b": rng.normal(size=(J * I, Q)) * 0.3,
    "wk": rng.normal(size=(I, D)) * 0.3,
    "k_norm_weight": 1 + 0.3 * rng.normal(size=I),
    "k_norm_bias": 0.3 * rng.normal(size=I),
    "weights_proj": rng.normal(size=(J, D)) * 0.3,
  }
  x = jax.random.normal(jax.random.key(0), (B, T, D))
  params = nn.meta.unbox(module.init(jax.random.key(1), x, deterministic=True))
  params["params"].update(v32_indexer_params(v32, rope_dims=I // 2))
  _, state = module.apply(params, x, deterministic=True, mutable=["intermediates"])
  ours = reference.indexer_scores(*state["intermediates"]["indexer"][0])  # our q, k, w, scored in float64
  if mixer == "mla":  # V3.2's query latent qr = q_norm(wq_a(x)), from the module's own weights
    a = np.asarray(x, np.float64) @ np.asarray(params["params"]["wq_a"], np.float64)
    qr = a / np.sqrt(np.mean(a * a, -1, keepdims=True) + cfg.norm_eps) * np.asarray(params["params"]["q_norm"]["scale"])
  else:
    qr = x
  want = reference.v32_indexer(x, qr, v32, cfg.rope_base, rope_dim=I // 2)
  causal = reference.causal_mask(T)[None]
  np.testing.assert_allclose(np.where(causal, ours, 0), np.where(causal, want, 0), rtol=1e-5, atol=1e-5)
  picks, valid = (np.asarray(a) for a in state["intermediates"]["selected"][0])
  for b in range(B):
    for t in range(T):
      kth = np.sort(want[b, t, : t + 1])[::-1][min(k, t + 1) - 1]
      chosen = set(picks[b, t][valid[b, t]].tolist())
      assert {s for s in range(t + 1) if want[b, t, s] > kth + 1e-5} <= chosen, (b, t)
      assert all(want[b, t, s] >= kth - 1e-5 for s in chosen), (b, t)


def test_indexer_v0_names_the_earlier_recipe():
  """INDEXER_V0 (the committed results before issue 41): the query from x, no key norm, RoPE over every indexer dim,
  head weights scaled by 1/sqrt(J) only; the default (V3.2's) differs in each."""
  cfg = mixer_config()
  x = jax.random.normal(jax.random.key(0), (1, 6, 32))
  got = {}
  for name, extra in (("v0", INDEXER_V0), ("v32", {})):
    module = SparseAttention(cfg, SparseOptions(top_k=2, indexer_heads=2, indexer_dim=8, **DSA_KL, **extra))
    params, _, inter = apply_mixer(module, x)
    got[name] = inter["indexer"][0]
    p = params["params"]
    if name == "v0":
      assert not any("k_scale" in n or "k_bias" in n for n in p)
      q = reference.rope(np.einsum("btd,dji->btji", x, p["idx_wq"]), cfg.rope_base)
      k = reference.rope(np.einsum("btd,di->bti", x, p["idx_wk"])[:, :, None], cfg.rope_base)[:, :, 0]
      w = np.einsum("btd,dj->btj", x, p["idx_ww"]) / np.sqrt(2)
      for ours, want in zip(got[name], (q, k, w)):
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["v32"][2], got["v0"][2] / np.sqrt(8), rtol=1e-6)  # V3.2's 1/sqrt(d_I)
