"""Top-k MoE: dispatch paths against the float64 token loop, routing rules, the aux-free bias update, gradients,
expert-sharded == unsharded, and option validation."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reference
from r1jax.errors import ConfigError
from r1jax.ffn import grouped_matmul as gmm
from r1jax.ffn.moe import MoE, MoEOptions, grouped_layout, grouped_swiglu, permute_rows, route, sort_by_expert

from helpers import assert_causal, one_run, tiny_config


def moe_config(d_model=16, d_ff=24):
  return tiny_config(text="x", model__d_model=d_model, model__d_ff=d_ff, model__init_std=0.3).model


def apply_moe(opts, x, variables=None, mutable=("balance", "intermediates")):
  """(variables, (y, aux), updated collections) of an MoE layer at a fixed init."""
  module = MoE(moe_config(x.shape[-1]), opts)
  variables = variables or nn.meta.unbox(module.init(jax.random.key(1), x, deterministic=True))
  out, state = module.apply(variables, x, deterministic=False, mutable=list(mutable))
  return variables, out, state


def reference_of(variables, x, opts, capacity=None):
  p = variables["params"]
  bias = variables.get("balance", {}).get("bias")
  return reference.moe_ffn(x, p["router"], p["w1"], p["w3"], p["w2"], opts, bias, capacity)


OPTION_SETS = [
  dict(num_experts=8, top_k=2),  # GShard-like softmax top-2
  dict(num_experts=4, top_k=1),  # Switch
  dict(num_experts=8, top_k=4, norm_topk=True),
  dict(num_experts=8, top_k=3, score="sigmoid", norm_topk=True, num_groups=4, topk_groups=2),  # DeepSeek-V3
  dict(num_experts=16, top_k=4, d_expert=6, balance="none", z_weight=1e-3),  # fine-grained
]


@pytest.mark.slow
@pytest.mark.parametrize(
  "kw, matmul, block",
  [(kw, "ragged_dot", 0) for kw in OPTION_SETS]
  + [(OPTION_SETS[0], "blocks", 3), (OPTION_SETS[4], "blocks", 3), (OPTION_SETS[0], "auto", 0)],
)
def test_dropless_equals_token_loop(kw, matmul, block):
  opts = MoEOptions(**kw, grouped_matmul=matmul, block_size=block)
  x = jax.random.normal(jax.random.key(len(kw) + 7 * kw["top_k"]), (3, 7, 16))
  variables, (y, aux), _ = apply_moe(opts, x)
  want, _, _ = reference_of(variables, x, opts)
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
  assert float(aux["dropped"]) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("matmul, block", [("ragged_dot", 1), ("blocks", 4), ("blocks", 1)])
def test_sorted_rows_through_their_experts_with_empty_groups_and_other_shards_copies(matmul, block):
  k = jax.random.split(jax.random.key(0), 4)
  expert_M = jnp.array([3, 1, 4, 1, 3, 3, 4, 1, 3, 3, 1, 3, 4], jnp.int32)  # 4: another shard's expert
  x = jax.random.normal(k[0], (13, 5))
  w1, w3 = jax.random.normal(k[1], (4, 5, 6)), jax.random.normal(k[2], (4, 5, 6))
  w2 = jax.random.normal(k[3], (4, 6, 5))

  def through(x):
    row_M, copy_R, expert_B, sizes_E = sort_by_expert(expert_M, 4, block)
    np.testing.assert_array_equal(sizes_E, [0, 4, 0, 6])
    return permute_rows(
      grouped_swiglu(permute_rows(x, copy_R, row_M), sizes_E, expert_B, w1, w3, w2, matmul), row_M, copy_R
    )

  silu = lambda z: z * jax.nn.sigmoid(z)
  want = jnp.stack(
    [silu(x[m] @ w1[e]) * (x[m] @ w3[e]) @ w2[e] if e < 4 else jnp.zeros(5) for m, e in enumerate(expert_M.tolist())]
  )
  np.testing.assert_allclose(through(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-4), (jnp.bfloat16, 3e-2)])
def test_pallas_grouped_matmul_equals_each_blocks_einsum_in_values_and_gradients(dtype, tol):
  """The GPU kernels (r1jax/ffn/grouped_matmul.py, interpreted on the CPU) against a per-block einsum with each
  block's expert weights gathered: the product, dx and dW (expert 2 has no block: its dW is exactly zero)."""
  R, I, O, E, b = 96, 128, 192, 4, 16
  expert_B = jnp.array([0, 0, 1, 3, 3, 3], jnp.int32)
  k = jax.random.split(jax.random.key(5), 3)
  x = jax.random.normal(k[0], (R, I), dtype)
  w = jax.random.normal(k[1], (E, I, O), jnp.float32) / np.sqrt(I)
  g = jax.random.normal(k[2], (R, O), jnp.float32)
  plain = lambda x, w: jnp.einsum("Bbi,Bio->Bbo", x.reshape(-1, b, I), w[expert_B].astype(x.dtype)).reshape(R, O)
  fast = lambda x, w: gmm.grouped_matmul(x, w, expert_B, True)
  np.testing.assert_allclose(np.float32(fast(x, w)), np.float32(plain(x, w)), rtol=tol, atol=tol)
  grads = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) * g), argnums=(0, 1))(x, w)
  (dx, dw), (dx_ref, dw_ref) = grads(fast), grads(plain)
  np.testing.assert_allclose(np.float32(dx), np.float32(dx_ref), rtol=tol, atol=tol * 4)
  np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=tol * 4)
  assert dw.dtype == jnp.float32 and not np.any(np.asarray(dw[2]))
  assert gmm.kernel_flops(gmm.NAMES[0], [(6,), (R, I), (E, I, O)]) == 2.0 * R * I * O


@pytest.mark.slow
def test_dropless_through_the_pallas_kernels_equals_the_token_loop_and_the_blocks_path():
  opts = MoEOptions(num_experts=4, top_k=2, d_expert=64, grouped_matmul="pallas")
  x = jax.random.normal(jax.random.key(8), (2, 24, 64))
  variables, (y, _), _ = apply_moe(opts, x)
  want, _, _ = reference_of(variables, x, opts)
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
  loss = lambda o: jax.grad(lambda p: jnp.sum(MoE(moe_config(64), o).apply(p, x, deterministic=True)[0] ** 2))
  got, ref = loss(opts)(variables), loss(dataclasses.replace(opts, grouped_matmul="blocks"))(variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, ref)


def test_auto_grouped_matmul_keys_on_the_platform_traced_for(monkeypatch):
  """auto: blocks on a CPU; on a GPU the Pallas kernels where the widths tile (else blocks: XLA's GPU ragged_dot
  computes every expert for every row); ragged_dot on TPU; the Pallas path's rows per block a power of 2 in 16..128."""
  from r1jax import sharding

  opts = MoEOptions(num_experts=8, top_k=2)
  for platform, (D, F), want in [
    ("cpu", (64, 128), "blocks"),
    ("gpu", (64, 128), "pallas"),
    ("gpu", (48, 128), "blocks"),
    ("tpu", (64, 128), "ragged_dot"),
  ]:
    monkeypatch.setattr(sharding, "platform", lambda: platform)
    matmul, block = grouped_layout(opts, 4096, 8, D, F)
    assert matmul == want, (platform, D, F)
    if matmul == "pallas":
      assert block in (16, 32, 64, 128) and grouped_layout(opts, 4, 8, D, F)[1] == 16


def test_permute_rows_gradient_is_the_gather_of_the_inverse_map():
  """permute_rows's hand-written backward (a gather through the inverse map) equals autodiff of the plain gather."""
  x = jax.random.normal(jax.random.key(3), (6, 4))
  row_M, copy_R, _, _ = sort_by_expert(jnp.array([2, 0, 3, 2, 0, 2], jnp.int32), 3, 2)  # 3: not here
  g = jax.random.normal(jax.random.key(4), (copy_R.shape[0], 4))
  plain = lambda x: x.at[copy_R].get(mode="fill", fill_value=0)
  np.testing.assert_array_equal(permute_rows(x, copy_R, row_M), plain(x))
  np.testing.assert_allclose(
    jax.vjp(lambda x: permute_rows(x, copy_R, row_M), x)[1](g)[0], jax.vjp(plain, x)[1](g)[0], rtol=1e-6
  )


@pytest.mark.slow
@pytest.mark.parametrize("kw", OPTION_SETS[:2] + OPTION_SETS[3:4])
def test_capacity_unlimited_equals_dropless_and_limited_drops_in_token_order(kw):
  x = jax.random.normal(jax.random.key(3), (2, 12, 16))
  dropless = MoEOptions(**kw)
  variables, (y0, _), _ = apply_moe(dropless, x)
  unlimited = dataclasses.replace(dropless, dispatch="capacity", capacity_factor=kw["num_experts"] / kw["top_k"])
  _, (y1, aux1), _ = apply_moe(unlimited, x, variables)
  np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-6)
  assert float(aux1["dropped"]) == 0.0
  tight = dataclasses.replace(unlimited, capacity_factor=0.5)
  _, (y2, aux2), _ = apply_moe(tight, x, variables)
  C = math.ceil(0.5 * 12 * kw["top_k"] / kw["num_experts"])
  want, _, kept = reference_of(variables, x, tight, capacity=C)
  np.testing.assert_allclose(y2, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(aux2["dropped"]), 1.0 - kept.mean(), rtol=1e-6)
  assert 0 < float(aux2["dropped"]) < 1


@pytest.mark.slow
@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_moe_is_causal(dispatch):
  """By the Jacobian, and by replacing the future: drop decisions are discrete, invisible to gradients."""
  opts = MoEOptions(num_experts=4, top_k=2, dispatch=dispatch, capacity_factor=1.0, grouped_matmul="blocks")
  if dispatch == "dropless":
    assert_causal(MoE(moe_config(), opts))
  x = jax.random.normal(jax.random.key(0), (4, 12, 16))
  variables, (y, aux), _ = apply_moe(opts, x)
  assert dispatch == "dropless" or float(aux["dropped"]) > 0
  for t in (2, 6, 9):
    future = x.at[:, t + 1 :].set(jax.random.normal(jax.random.key(t), (4, 11 - t, 16)) * 3)
    _, (y_future, _), _ = apply_moe(opts, future, variables)
    np.testing.assert_allclose(y_future[:, : t + 1], y[:, : t + 1], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_aux_free_bias_update_follows_the_rule_and_steers_selection_only():
  opts = MoEOptions(num_experts=8, top_k=2, balance="aux_free", bias_rate=0.01)
  x = jax.random.normal(jax.random.key(5), (4, 8, 16))
  variables, _, _ = apply_moe(opts, x)
  bias0 = jnp.linspace(-0.05, 0.05, 8)
  variables = {**variables, "balance": {"bias": bias0}}
  _, (y, aux), state = apply_moe(opts, x, variables)
  want, ids, _ = reference_of(variables, x, opts)  # the reference selects with the same bias
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
  load = np.bincount(ids.ravel(), minlength=8)
  expected = np.asarray(bias0) + 0.01 * np.sign(load.mean() - load)
  np.testing.assert_allclose(state["balance"]["bias"], expected, rtol=0, atol=1e-7)
  assert np.any(load != load.mean())
  # A large bias on expert 0 sends every token there, while the gate stays the unbiased router score.
  big = {**variables, "balance": {"bias": jnp.zeros(8).at[0].set(10.0)}}
  one = dataclasses.replace(opts, top_k=1)
  _, (y_big, _), _ = apply_moe(one, x, big)
  p = variables["params"]
  probs = jax.nn.softmax(jnp.einsum("BTD,DE->BTE", x, p["router"]), -1)
  silu = lambda z: z * jax.nn.sigmoid(z)
  expert0 = silu(x @ p["w1"][0]) * (x @ p["w3"][0]) @ p["w2"][0]
  np.testing.assert_allclose(y_big, probs[..., :1] * expert0, rtol=1e-4, atol=1e-5)
  # Evaluation (deterministic) leaves the bias alone.
  module = MoE(moe_config(), opts)
  _, frozen = module.apply(variables, x, deterministic=True, mutable=["balance"])
  np.testing.assert_array_equal(frozen["balance"]["bias"], bias0)


def test_route_group_limit_keeps_choices_inside_the_best_groups():
  opts = MoEOptions(num_experts=8, top_k=2, score="sigmoid", norm_topk=True, num_groups=4, topk_groups=1)
  logits = jax.random.normal(jax.random.key(2), (50, 8)) * 3
  idx, gate, _ = route(logits, jnp.zeros(8), opts)
  assert np.all(idx[:, 0] // 2 == idx[:, 1] // 2), "both experts come from one group of 2"
  np.testing.assert_allclose(gate.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_gradients_reach_router_and_every_expert():
  opts = MoEOptions(num_experts=4, top_k=2, num_shared=1, z_weight=1e-3, grouped_matmul="blocks", block_size=8)
  x = jax.random.normal(jax.random.key(4), (2, 16, 16))
  module = MoE(moe_config(), opts)
  variables = nn.meta.unbox(module.init(jax.random.key(1), x, deterministic=True))

  def loss(params):
    y, aux = module.apply({"params": params}, x, deterministic=True)
    return jnp.sum(y**2) + aux["loss_balance"] + aux["loss_z"]

  grads = jax.jit(jax.grad(loss))(variables["params"])
  for name, g in [("router", grads["router"])] + [(f"shared/{w}", grads["shared"][w]) for w in ("w1", "w2", "w3")]:
    assert np.abs(g).sum() > 0, name
  for name in ("w1", "w2", "w3"):
    per_expert = np.abs(np.asarray(grads[name])).sum((1, 2))
    assert np.all(per_expert > 0), f"{name}: an expert got no gradient: {per_expert}"


@pytest.mark.slow
def test_train_step_updates_the_aux_free_bias(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("the quick brown fox jumps over the lazy dog. " * 200)
  opts = {"moe": {"num_experts": 4, "top_k": 1, "balance": "aux_free", "bias_rate": 0.01}}
  state, (_, _, _, metrics) = one_run(
    str(path), {"data": 1, "devices": 1}, steps=3, model__ffn="moe", model__ffn_options=opts
  )
  bias = np.asarray(state.model_state["balance"]["layer0"]["ffn"]["bias"])
  steps = np.round(bias / 0.01)
  np.testing.assert_allclose(bias, steps * 0.01, atol=1e-6)  # whole multiples of gamma
  assert np.abs(steps).max() >= 1 and np.all(np.abs(steps) <= 3)
  assert "train/ffn/max_load" in metrics and "train/ffn/bias_abs/layer1" in metrics


def _gmm_plain(x_RxI, w_ExIxO, expert_B, interpret):
  """What grouped_matmul's forward kernel computes, in plain jnp."""
  xb = x_RxI.reshape(expert_B.shape[0], -1, x_RxI.shape[1])
  return jnp.einsum("Bbi,Bio->Bbo", xb, w_ExIxO[expert_B]).reshape(x_RxI.shape[0], -1)


def _gmm_dw_plain(x_RxI, g_RxO, expert_B, num_experts, dtype, interpret):
  """What the weight-gradient kernel computes, in plain jnp: per expert, the sum over its blocks of x_b^T g_b."""
  nb = expert_B.shape[0]
  per_block = jnp.einsum("Bbi,Bbo->Bio", x_RxI.reshape(nb, -1, x_RxI.shape[1]), g_RxO.reshape(nb, -1, g_RxO.shape[1]))
  return jax.ops.segment_sum(per_block.astype(jnp.float32), expert_B, num_experts).astype(dtype)


@pytest.mark.slow
@pytest.mark.parametrize(
  "opts, mesh",
  [
    # dropless through shard_map (experts over `expert`, widths over `tensor`), with the aux-free bias state
    ({"num_experts": 8, "top_k": 2, "balance": "aux_free", "num_shared": 1}, {"data": 1, "expert": 4, "tensor": 2}),
    # dropless with the batch over data and fsdp (each device sorts only its tokens; the blocks path on this mesh is
    # test_contract's sharded == unsharded), FSDP weights gathered, through the Pallas path's custom VJP (its kernels'
    # plain-jnp equivalents: Pallas's interpreter fails inside shard_map): weight gradients summed over the devices
    ({"num_experts": 4, "top_k": 2, "grouped_matmul": "pallas", "d_expert": 128}, {"data": 2, "fsdp": 2, "tensor": 2}),
    # capacity: GShard buffers resharded batch -> experts by XLA
    ({"num_experts": 8, "top_k": 2, "dispatch": "capacity", "capacity_factor": 1.0}, {"data": 2, "expert": 4}),
  ],
)
def test_expert_sharded_equals_unsharded(tmp_path, opts, mesh, monkeypatch):
  if opts.get("grouped_matmul") == "pallas":
    monkeypatch.setattr(gmm, "_gmm", _gmm_plain)
    monkeypatch.setattr(gmm, "_gmm_dw", _gmm_dw_plain)
  path = tmp_path / "corpus.txt"
  path.write_text("".join(chr(97 + (i * i + 5 * i) % 26) for i in range(5000)))
  over = {"model__ffn": "moe", "model__ffn_options": {"moe": {"grouped_matmul": "blocks", "block_size": 8, **opts}}}
  if opts.get("grouped_matmul") == "pallas":  # its tiles: widths in multiples of 64
    over.update(model__d_model=64, model__num_heads=2)
  state0, (loss0, grads0, params0, m0) = one_run(str(path), {"data": 1, "devices": 1}, **over)
  state, (loss, grads, params, m) = one_run(str(path), mesh, **over)
  np.testing.assert_allclose(loss, loss0, rtol=1e-5)
  for key in ("train/loss", "train/ffn/max_load", "train/ffn/dropped"):
    np.testing.assert_allclose(m[key], m0[key], rtol=1e-5, atol=1e-7)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=3e-5, atol=3e-5)
  jax.tree.map(close, (grads, params), (grads0, params0))
  jax.tree.map(close, jax.device_get(state.model_state), jax.device_get(state0.model_state))  # aux-free biases
  w1 = state.params["layer0"]["ffn"]["w1"]
  experts = mesh.get("expert", 1)
  assert w1.addressable_shards[0].data.shape[0] == opts["num_experts"] // experts


@pytest.mark.parametrize(
  "kw, field",
  [
    (dict(top_k=9), "top_k"),
    (dict(top_k=1, norm_topk=True), "norm_topk"),
    (dict(num_groups=3), "num_groups"),
    (dict(num_groups=4, topk_groups=1, top_k=3), "top_k"),
    (dict(score="softplus"), "score"),
    (dict(dispatch="drop"), "dispatch"),
    (dict(capacity_factor=0.0), "capacity_factor"),
  ],
)
def test_bad_options_name_the_field(kw, field):
  with pytest.raises(ConfigError, match=field):
    MoEOptions(**kw)


def test_experts_must_divide_the_expert_axis(tmp_path):
  from r1jax.train import Run

  cfg = tiny_config(
    text=str(tmp_path / "c.txt"),
    model__ffn="moe",
    model__ffn_options={"moe": {"num_experts": 6}},
    mesh__expert=4,
    mesh__data=2,
  )
  (tmp_path / "c.txt").write_text("abc" * 300)
  with pytest.raises(ConfigError, match="ffn_options.moe.num_experts"):
    Run(cfg)


@pytest.mark.slow
def test_balance_and_z_losses_equal_the_switch_and_st_moe_formulas_with_their_gradients():
  """Switch (Fedus et al. 2021, eq. 4): aux_weight * E * sum_i f_i P_i, f_i the share of routed copies (no gradient),
  P_i the mean router probability (the gradient's path); ST-MoE (Zoph et al. 2022, eq. 5): z_weight * mean over
  tokens of logsumexp(router logits)^2."""
  opts = MoEOptions(num_experts=4, top_k=2, aux_weight=0.01, z_weight=1e-3, grouped_matmul="blocks", block_size=8)
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  variables, _, _ = apply_moe(opts, x)
  module = MoE(moe_config(16), opts)

  def ours(router):
    params = {**variables["params"], "router": router}
    return module.apply({**variables, "params": params}, x, deterministic=True)[1]

  def formulas(router):
    logits = jnp.einsum("BTD,DE->BTE", x, router).reshape(-1, 4)
    probs = jax.nn.softmax(logits, -1)
    top = jax.lax.top_k(probs, 2)[1]
    f = jnp.stack([jnp.mean(jnp.any(top == e, -1)) for e in range(4)]) / 2  # share of the 2 copies per token
    balance = 0.01 * 4 * jnp.sum(jax.lax.stop_gradient(f) * jnp.mean(probs, 0))
    z = 1e-3 * jnp.mean(jax.nn.logsumexp(logits, -1) ** 2)
    return balance, z

  router = variables["params"]["router"]
  aux, (balance, z) = ours(router), formulas(router)
  np.testing.assert_allclose(aux["loss_balance"], balance, rtol=1e-6)
  np.testing.assert_allclose(aux["loss_z"], z, rtol=1e-6)
  for i, key in enumerate(("loss_balance", "loss_z")):
    got = jax.grad(lambda r: ours(r)[key])(router)
    want = jax.grad(lambda r: formulas(r)[i])(router)
    assert float(jnp.abs(want).max()) > 1e-6  # the formula has a gradient to compare with
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("balance,group", [("aux", 0), ("none", 0), ("aux_free", 1)])
def test_group_scores_follow_deepseek_v3_best_one_without_a_bias_best_two_with_one(balance, group):
  """DeepSeek-V3's Gate (inference/model.py) scores a group by its best score when the router has no bias and by the
  sum of its best two when it has one (aux_free); chosen gates are scaled by route_scale. Hand-made sigmoid scores
  where the two rules disagree: group 0 = (0.9, 0.1) (best 0.9, best two 1.0), group 1 = (0.6, 0.6) (0.6, 1.2)."""
  p = np.array([0.9, 0.1, 0.6, 0.6])
  logits = np.log(p / (1 - p))
  opts = MoEOptions(
    num_experts=4, top_k=1, score="sigmoid", num_groups=2, topk_groups=1, balance=balance, route_scale=2.5
  )
  idx, gate, scores = route(jnp.asarray(logits[None], jnp.float32), jnp.zeros(4), opts)
  assert int(idx[0, 0]) // 2 == group
  np.testing.assert_allclose(float(gate[0, 0]), 2.5 * p[int(idx[0, 0])], rtol=1e-6)
  # the float64 reference makes the same choice with the same gate
  router = np.zeros((4, 4))
  router[0] = logits  # x = e_0 reads row 0: the router logits are `logits`
  rng = np.random.default_rng(0)
  w1, w3, w2 = rng.normal(size=(4, 4, 3)), rng.normal(size=(4, 4, 3)), rng.normal(size=(4, 3, 4))
  x = np.eye(4)[None, :1]
  y, ids, _ = reference.moe_ffn(x, router, w1, w3, w2, opts)
  assert ids[0, 0, 0] == int(idx[0, 0])
  silu = lambda z: z / (1 + np.exp(-z))
  e = int(idx[0, 0])
  np.testing.assert_allclose(y[0, 0], 2.5 * p[e] * (silu(x[0, 0] @ w1[e]) * (x[0, 0] @ w3[e])) @ w2[e], rtol=1e-12)
