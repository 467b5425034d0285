"""Mutation check: plants small, realistic bugs in the library one at a time and runs the tests meant to catch each.

  python tests/mutations.py                          # every mutation (about 3 minutes on 2 CPU cores)
  python tests/mutations.py --only=heads_unsharded,eval_ignores_weights
  python tests/mutations.py --list

Not part of the CI suite. The repository is copied to a scratch folder once; each mutation replaces one snippet of one
file there (the snippet must occur exactly once, so a mutation that no longer applies fails loudly instead of being
skipped), runs its tests with `pytest -x -q`, and restores the file. A mutation is caught when its tests fail, and
SURVIVED when they pass. Exit status 1 if any survived. Add a mutation for each bug a test is written against.
"""

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str  # file in the repository
  old: str  # the snippet, exactly once in the file
  new: str
  tests: str  # test file(s), space-separated
  select: str  # pytest -k expression: the tests meant to catch it


MUTATIONS = (
  Mutation(
    "compressed_overlap_pools_its_own_block_twice",
    "r1jax/mixers/compressed.py",
    "  return jnp.concatenate([prev(z, 0.0), z[..., h:]], 2), jnp.concatenate([prev(g, -jnp.inf), g[..., h:]], 2)",
    "  return jnp.concatenate([z[..., :h], z[..., h:]], 2), jnp.concatenate([g[..., :h], g[..., h:]], 2)",
    "tests/test_compressed.py",
    "definition",
  ),
  Mutation(
    "compressed_entry_visible_before_its_block_ends",
    "r1jax/mixers/compressed.py",
    "  ends_M = (jnp.arange(M) + 1) * m - 1\n",
    "  ends_M = jnp.arange(M) * m\n",
    "tests/test_compressed.py",
    "definition",
  ),
  Mutation(
    "compressed_window_blocks_read_the_previous_blocks_keys",
    "r1jax/mixers/compressed.py",
    "      at_nxS = Q * np.arange(C // Q)[:, None] + np.arange(Q + W - 1)[None]",
    "      at_nxS = np.maximum(Q * np.arange(C // Q)[:, None] - Q, 0) + np.arange(Q + W - 1)[None]",
    "tests/test_compressed.py",
    "definition",
  ),
  Mutation(
    "compressed_sink_left_out",
    "r1jax/mixers/compressed.py",
    "  if sink_H is not None:  # a logit with no value: attention mass that goes nowhere",
    "  if False:",
    "tests/test_compressed.py",
    "definition or sink",
  ),
  Mutation(
    "compressed_step_reads_empty_ring_slots_as_position_minus_one",
    "r1jax/mixers/compressed.py",
    " & (want_BxL >= 0)  # empty slots hold -1",
    "",
    "tests/test_decoding.py",
    "csa",
  ),
  Mutation(
    "v32_indexer_rotates_every_dim",
    "r1jax/mixers/sparse.py",
    "  R = o.rope_dims()\n",
    "  R = I\n",
    "tests/test_sparse.py",
    "v32",
  ),
  Mutation(
    "v32_indexer_key_norm_without_centering",
    "r1jax/mixers/sparse.py",
    "    k = k - jnp.mean(k, -1, keepdims=True)\n",
    "",
    "tests/test_sparse.py",
    "v32",
  ),
  Mutation(
    "v32_weights_copied_without_reordering_the_rotated_pairs",
    "r1jax/mixers/sparse.py",
    "  order = np.r_[np.arange(0, rope_dims, 2), np.arange(1, rope_dims, 2), np.arange(rope_dims, I)]",
    "  order = np.arange(I)",
    "tests/test_sparse.py",
    "v32",
  ),
  Mutation(
    "spare_window_slots_visible",
    "r1jax/inference/decoding.py",
    "    ok &= sink_1x1xS | (t_BxTx1 - s_Bx1xS < decode.context - decode.sinks)",
    "    ok &= sink_1x1xS | (t_BxTx1 - s_Bx1xS < decode.slots)",
    "tests/test_speculative.py",
    "greedy and window6",
  ),
  Mutation(
    "int8_leaves_the_mtp_modules_float",
    "r1jax/inference/quantize.py",
    'BLOCKS = r"(layer|mtp)\\d+/.*"',
    'BLOCKS = r"layer\\d+/.*"',
    "tests/test_quantize.py",
    "post_training",
  ),
  Mutation(
    "quantization_aware_training_ignored",
    "r1jax/model.py",
    "  if cfg.quant:\n",
    "  if False:\n",
    "tests/test_quantize.py",
    "evaluator",
  ),
  Mutation(
    "speculative_skips_the_rollback",
    "r1jax/inference/speculative.py",
    'rollback = needs_rollback(cfg, decoding.Decode.step(state["pre"], L, context, sinks, spare=D))',
    "rollback = False",
    "tests/test_speculative.py",
    "greedy",
  ),
  Mutation(
    "speculative_counts_drafts_accepted_after_a_rejection",
    "r1jax/inference/speculative.py",
    "a_B = jnp.where(done_B, 0, run_BxD.sum(-1))",
    "a_B = jnp.where(done_B, 0, ok_BxD.sum(-1))",
    "tests/test_speculative.py",
    "greedy",
  ),
  Mutation(
    "speculative_resamples_from_p_after_a_rejection",
    "r1jax/inference/speculative.py",
    "jnp.maximum(p_BxV - at_rows(q_BxDxV, jnp.minimum(a_B, D - 1)), 0.0)",
    "p_BxV",
    "tests/test_speculative.py",
    "sampling",
  ),
  Mutation(
    "state_cache_keeps_an_uncommitted_token",
    "r1jax/inference/decoding.py",
    "      if keep_B is not None:",
    "      if False:",
    "tests/test_speculative.py",
    "greedy and fast_weight",
  ),
  Mutation(
    "mtp_merges_the_token_it_should_predict",
    "r1jax/model.py",
    "jnp.concatenate([e_BxTxD[:, k:], jnp.zeros_like(e_BxTxD[:, :k])], 1)",
    "jnp.concatenate([e_BxTxD[:, k + 1 :], jnp.zeros_like(e_BxTxD[:, : k + 1])], 1)",
    "tests/test_mtp.py",
    "definition or up_to",
  ),
  Mutation(
    "mtp_loss_on_the_main_heads_targets",
    "r1jax/objective.py",
    "shift(targets_BxT, k), shift(w_BxT, k)",
    "shift(targets_BxT, k - 1), shift(w_BxT, k)",
    "tests/test_mtp.py",
    "shifted_targets",
  ),
  Mutation(
    "mtp_zero_weight_still_backpropagates",
    "r1jax/objective.py",
    "jax.lax.stop_gradient(mtp_DxBxTxV) if weight == 0 else mtp_DxBxTxV",
    "mtp_DxBxTxV",
    "tests/test_mtp.py",
    "bitwise",
  ),
  Mutation(
    "sinks_read_one_position_late",
    "r1jax/inference/decoding.py",
    "jnp.maximum(decode.positions - (decode.context - 1), 0)",
    "jnp.maximum(decode.positions - decode.context, 0)",
    "tests/test_context_window.py",
    "sinks_and_the_ring",
  ),
  Mutation(
    "ring_slot_ignores_the_sinks",
    "r1jax/inference/decoding.py",
    "slot_B = jnp.where(slot_B < N, slot_B, N + jnp.mod(slot_B - N, R))",
    "slot_B = jnp.where(slot_B < N, slot_B, N + jnp.mod(slot_B, R))",
    "tests/test_context_window.py",
    "sinks_and_the_ring",
  ),
  Mutation(
    "window_top_k_breaks_ties_by_slot",
    "r1jax/inference/decoding.py",
    "  if not decode.wraps:\n    return jax.lax.top_k(scores_BxTxS, k)",
    "  if True:\n    return jax.lax.top_k(scores_BxTxS, k)",
    "tests/test_context_window.py",
    "sinks_and_the_ring",
  ),
  Mutation(
    "long_prompt_prefilled_past_the_window",
    "r1jax/generate.py",
    "F = min(P, decoding.Decode.prefill(lengths_B, max_len, context, sinks).longest_prefill)  # tokens prefilled",
    "F = P  # tokens prefilled",
    "tests/test_context_window.py",
    "longer_than_the_window",
  ),
  Mutation(
    "pool_waits_for_every_run",
    "r1jax/lab/sweep.py",
    "return_when=concurrent.futures.FIRST_COMPLETED",
    "return_when=concurrent.futures.ALL_COMPLETED",
    "tests/test_sweep.py",
    "source_finishes",
  ),
  Mutation(
    "pool_ignores_its_slots",
    "r1jax/lab/sweep.py",
    "if len(running) == slots:",
    "if False:",
    "tests/test_sweep.py",
    "source_finishes",
  ),
  Mutation(
    "sampled_selection_normal_noise",
    "r1jax/mixers/sparse.py",
    "+ jax.random.gumbel(",
    "+ jax.random.normal(",
    "tests/test_sparse.py",
    "sampled_selection",
  ),
  Mutation(
    "block_scores_with_the_block_mean_query",
    "r1jax/mixers/block_sparse.py",
    "u = 1 if per_token else b  # queries per unit",
    "u = b  # queries per unit",
    "tests/test_sparse.py",
    "block_topk",
  ),
  Mutation(
    "sampled_selection_in_eval",
    "r1jax/mixers/sparse.py",
    'self.make_rng("dropout") if o.sample_temperature > 0 and not deterministic else None',
    'self.make_rng("dropout") if o.sample_temperature > 0 else None',
    "tests/test_sparse.py",
    "sampled_selection",
  ),
  Mutation(
    "objective_without_aux_losses",
    "r1jax/objective.py",
    'return loss + aux["aux_loss"], metrics, sums, new_state',
    "return loss, metrics, sums, new_state",
    "tests/test_train.py",
    "objective",
  ),
  Mutation(
    "eval_ignores_weights",
    "r1jax/objective.py",
    '"loss_sum": jnp.sum(ce_BxN * w_BxN),\n    "correct_sum": jnp.sum(correct_BxN * w_BxN),\n    "count": count,',
    '"loss_sum": jnp.sum(ce_BxN),\n    "correct_sum": jnp.sum(correct_BxN),\n    "count": 1.0 * ce_BxN.size,',
    "tests/test_train.py",
    "zero_weight",
  ),
  Mutation(
    "text_train_reads_validation",
    "r1jax/data/text.py",
    "return chars, ids[:split], ids[split:]",
    "return chars, ids, ids[split:]",
    "tests/test_data.py",
    "no_training_window",
  ),
  Mutation(
    "heads_unsharded",
    "r1jax/sharding.py",
    '("heads", "tensor"),',
    '("heads", None),',
    "tests/test_sharding.py",
    "golden",
  ),
  Mutation(
    "activation_heads_unsharded",
    "r1jax/sharding.py",
    '("act_heads", "tensor"),',
    '("act_heads", None),',
    "tests/test_sharding.py",
    "golden",
  ),
  Mutation(
    "ratios_against_first_variant",
    "r1jax/lab/reporting.py",
    'base = next(r for r in rows if r["variant"] == baseline)',
    "base = rows[0]",
    "tests/test_ablation.py",
    "named_baseline",
  ),
  Mutation(
    "moe_claim_threshold_flipped",
    "r1jax/lab/claims.py",
    "ok = s[0] >= self.min_speed and loss[0] - 1 < self.max_loss_increase",
    "ok = s[0] >= self.min_speed and loss[0] - 1 > self.max_loss_increase",
    "tests/test_claims.py",
    "either_side",
  ),
  Mutation(
    "fusion_claim_threshold_flipped",
    "r1jax/lab/claims.py",
    "_verdict(q[0] - 1 >= self.min_gain)",
    "_verdict(q[0] - 1 <= self.min_gain)",
    "tests/test_claims.py",
    "either_side",
  ),
  Mutation(
    "resume_checks_model_and_seed_only",
    "r1jax/config.py",
    'RESUME_KEYS = ("model", "data", "optim", "seed", "train.init_from")',
    'RESUME_KEYS = ("model", "seed", "train.init_from")',
    "tests/test_train.py",
    "identity",
  ),
  Mutation(
    "adamw_decays_vectors",
    "r1jax/train.py",
    "lambda p: p.ndim >= 2",
    "lambda p: p.ndim >= 1",
    "tests/test_train.py",
    "weight_decay",
  ),
  Mutation(
    "switch_balance_gradient_stopped",
    "r1jax/ffn/moe.py",
    "jnp.sum(load_E / (B * T * K) * jnp.mean(probs_NxE, 0))",
    "jnp.sum(load_E / (B * T * K) * jax.lax.stop_gradient(jnp.mean(probs_NxE, 0)))",
    "tests/test_moe.py",
    "formulas",
  ),
  Mutation(
    "v3_group_score_always_best_two",
    "r1jax/ffn/moe.py",
    'best = min(2, E // G) if opts.balance == "aux_free" else 1',
    "best = min(2, E // G)",
    "tests/test_moe.py",
    "deepseek_v3",
  ),
  Mutation(
    "permute_gradient_through_the_forward_map",
    "r1jax/ffn/moe.py",
    'return g_SxD.at[from_R].get(mode="fill", fill_value=0), None, None',
    'return g_SxD.at[to_S].get(mode="fill", fill_value=0), None, None',
    "tests/test_moe.py",
    "permute_rows or gradients_reach",
  ),
  Mutation(
    "padding_rows_off_by_one",
    "r1jax/ffn/moe.py",
    "pstart_E[e_M] + rank_M - start_E[e_M]",
    "pstart_E[e_M] + rank_M - start_E[e_M] + 1",
    "tests/test_moe.py",
    "sorted_rows or dropless_equals",
  ),
  Mutation(
    "route_scale_ignored",
    "r1jax/ffn/moe.py",
    "return idx_NxK, gate_NxK * opts.route_scale, scores_NxE",
    "return idx_NxK, gate_NxK, scores_NxE",
    "tests/test_moe.py",
    "deepseek_v3",
  ),
  Mutation(
    "nan_guard_off",
    "r1jax/train.py",
    "bad = next(((s, l, g) for s, l, g in checks if not (np.isfinite(l) and np.isfinite(g))), None)",
    "bad = None",
    "tests/test_train.py",
    "non_finite",
  ),
  Mutation(
    "damaged_checkpoint_not_skipped",
    "r1jax/checkpoint.py",
    "except (ValueError, OSError, KeyError) as e:",
    "except () as e:",
    "tests/test_train.py",
    "damaged",
  ),
  Mutation(
    "identity_keeps_unused_options",
    "r1jax/config.py",
    'value[f"{kind}_options"] = {k: v for k, v in value.get(f"{kind}_options", {}).items() if k in used}',
    'value[f"{kind}_options"] = dict(value.get(f"{kind}_options", {}))',
    "tests/test_config.py",
    "run_identity",
  ),
  Mutation(
    "claims_judge_train_speed",
    "r1jax/lab/claims.py",
    'speed_key: str = "perf/eval_tokens_per_sec"  # forward-only',
    'speed_key: str = "perf/tokens_per_sec"  # forward-only',
    "tests/test_claims.py",
    "speed_quality",
  ),
  Mutation(
    "nsa_previous_block_not_forced",
    "r1jax/mixers/nsa.py",
    "jnp.ones_like(own_xCx1, bool), own_xCx1 >= 2, own_xCx1 >= 1]",
    "jnp.ones_like(own_xCx1, bool), own_xCx1 < 0, own_xCx1 >= 1]",
    "tests/test_nsa.py",
    "masked_reference",
  ),
  Mutation(
    "nsa_overlap_misses_the_last_block",
    "r1jax/mixers/nsa.py",
    "for r in range(a + b - 1))",
    "for r in range(a + b - 2))",
    "tests/test_nsa.py",
    "masked_reference or overlap",
  ),
  Mutation(
    "nsa_reads_an_unfinished_block",
    "r1jax/mixers/nsa.py",
    "ended_xTxM = (jnp.arange(M)[None, None, :] * d + l - 1) <=",
    "ended_xTxM = (jnp.arange(M)[None, None, :] * d + l - 2) <=",
    "tests/test_nsa.py",
    "masked_reference or causal",
  ),
  Mutation(
    "nsa_mlp_chunks_share_one_weight_slice",
    "r1jax/mixers/nsa.py",
    "sum(y_rxBxNxGxF[r, :, r : r + M] for r in range(b))",
    "sum(y_rxBxNxGxF[0, :, r : r + M] for r in range(b))",
    "tests/test_nsa.py",
    "masked_reference",
  ),
  Mutation(
    "nsa_mlp_chunks_reversed",
    "r1jax/mixers/nsa.py",
    "sum(y_rxBxNxGxF[r, :, r : r + M] for r in range(b))",
    "sum(y_rxBxNxGxF[b - 1 - r, :, r : r + M] for r in range(b))",
    "tests/test_nsa.py",
    "masked_reference",
  ),
  Mutation(
    "block_gather_offsets_in_keys_not_rows",
    "r1jax/mixers/sparse.py",
    "* G + jnp.arange(G)[None, :]) * (S // rows))",
    "* G + jnp.arange(G)[None, :]) * S)",
    "tests/test_sparse.py",
    "gathered_attention",
  ),
  Mutation(
    "nsa_mass_counts_masked_tokens",
    "r1jax/mixers/nsa.py",
    'jnp.sum(jnp.where(res["ok"], p_BxTxGxN, 0.0), -1)',
    "jnp.sum(p_BxTxGxN, -1)",
    "tests/test_nsa.py",
    "mass",
  ),
  Mutation(
    "recall_counts_ties_as_above",
    "r1jax/mixers/sparse.py",
    "p_dense_BxCxS[:, :, None, :] > p_sel",
    "p_dense_BxCxS[:, :, None, :] >= p_sel",
    "tests/test_sparse.py",
    "diagnostics_by_their_definition",
  ),
  Mutation(
    "diagnostics_pass_reads_every_batch",
    "r1jax/evaluators.py",
    "self.run.cfg.train.diag_batches or None)",
    "None)",
    "tests/test_train.py",
    "diag_batches",
  ),
  Mutation(
    "diagnostics_in_the_timed_eval",
    "r1jax/mixers/sparse.py",
    "want_diag = o.diagnostics and wants_diagnostics(self)",
    "want_diag = o.diagnostics and deterministic",
    "tests/test_sparse.py",
    "timed_eval",
  ),
  Mutation(
    "identity_keeps_other_datasets",
    "r1jax/config.py",
    'value["options"] = {k: v for k, v in value.get("options", {}).items() if k == value.get("kind")}',
    'value["options"] = dict(value.get("options", {}))',
    "tests/test_config.py",
    "run_identity",
  ),
  Mutation(
    "passkey_depth_group_shifted",
    "r1jax/data/passkey.py",
    "min(int(depth * o.depth_bins), o.depth_bins - 1)",
    "min(int(depth * o.depth_bins) + 1, o.depth_bins - 1)",
    "tests/test_passkey.py",
    "hides",
  ),
  Mutation(
    "passkey_tests_on_training_text",
    "r1jax/data/passkey.py",
    "ids = self.val_ids if split == TEST else self.train_ids",
    "ids = self.train_ids",
    "tests/test_passkey.py",
    "validation",
  ),
  Mutation(
    "group_accuracy_counts_rows",
    "r1jax/evaluators.py",
    'count += n_B @ batch["groups"]',
    'count += batch["groups"].sum(0)',
    "tests/test_passkey.py",
    "group_accuracy",
  ),
  Mutation(
    "mqar_curriculum_phase_missing",
    "r1jax/data/core.py",
    "return (0, self.curriculum_steps) if self.curriculum_steps else (0,)",
    "return (0,)",
    "tests/test_data.py tests/test_train.py tests/test_passkey.py",
    "curriculum",
  ),
  Mutation(
    "passkey_curriculum_pads_short_contexts",
    "r1jax/data/passkey.py",
    "return Passkey(self.short_config(length_fractions=(1.0,)), self.seed)",
    "return Passkey(self.short_config(), self.seed)",
    "tests/test_passkey.py",
    "curriculum",
  ),
  Mutation(
    "mqar_min_gap_ignored",
    "r1jax/data/mqar.py",
    "skip = int(min_gap * space)",
    "skip = 0",
    "tests/test_data.py",
    "min_gap",
  ),
  Mutation(
    "frozen_parameters_updated",
    "r1jax/train.py",
    "lambda m, new, old: new if m else old",
    "lambda m, new, old: new",
    "tests/test_train.py",
    "trainable_freezes",
  ),
  # MLA and the module contract (tests/test_mla.py, tests/test_contract.py) and the decoding cache
  Mutation(
    "mla_absorbs_w_uv_into_the_query",
    "r1jax/mixers/mla.py",
    'q_lat = jnp.einsum("BTHN,CHN->BTHC", q_C, wk)',
    'q_lat = jnp.einsum("BTHN,CHN->BTHC", q_C, wv)',
    "tests/test_mla.py",
    "absorbed",
  ),
  Mutation(
    "mla_mask_reads_the_next_token",
    "r1jax/mixers/mla.py",
    "np.tril(np.ones((T, T), bool))",
    "np.tril(np.ones((T, T), bool), 1)",
    "tests/test_contract.py",
    "later and mla",
  ),
  Mutation(
    "decode_cache_written_one_position_late",
    "r1jax/inference/decoding.py",
    "  slot_B = decode.positions\n",
    "  slot_B = decode.positions + 1\n",
    "tests/test_decoding.py",
    "full_forward and attention",
  ),
  Mutation(
    "feed_forward_mixes_tokens",
    "r1jax/ffn/swiglu.py",
    "h_BxTxF = layers.constrain(nn.silu(gate_BxTxF) * up_BxTxF,",
    "h_BxTxF = layers.constrain(nn.silu(gate_BxTxF) * jnp.cumsum(up_BxTxF, 1),",
    "tests/test_contract.py",
    "row and swiglu",
  ),
  Mutation(
    "resumed_prepare_rewrites_the_whole_document",
    "r1jax/data/prepare.py",
    "ids = ids[skip:]",
    "ids = ids",
    "tests/test_tokens.py",
    "killed_run_resumes",
  ),
  Mutation(
    "every_process_reads_rows_from_the_start",
    "r1jax/sharding.py",
    "where[rows] = np.arange(len(rows))",
    "where[:len(rows)] = np.arange(len(rows))",
    "tests/test_tokens.py",
    "two_processes",
  ),
  Mutation(
    "window_order_ignores_the_seed",
    "r1jax/data/tokens.py",
    ".shuffle(seed=self.seed)",
    ".shuffle(seed=0)",
    "tests/test_tokens.py",
    "depend_only_on_seed",
  ),
  Mutation(
    "windows_overlap_by_a_token",
    "r1jax/data/tokens.py",
    "self.train.read(i * T, i * T + T + 1)",
    "self.train.read(i * (T - 1), i * (T - 1) + T + 1)",
    "tests/test_tokens.py",
    "depend_only_on_seed",
  ),
  # The blocked O(T)-memory attention (issue 40)
  Mutation(
    "flash_window_starts_a_block_late",
    "r1jax/mixers/flash.py",
    "(i * g.block - g.window - g.offset) // g.stride + 1, 0)",
    "(i * g.block - g.window - g.offset) // g.stride + g.block, 0)",
    "tests/test_flash.py",
    "values_and_gradients",
  ),
  Mutation(
    "flash_backward_without_the_row_correction",
    "r1jax/mixers/flash.py",
    "ds = (p * (dp - delta_i[..., None])).astype(q.dtype)",
    "ds = (p * dp).astype(q.dtype)",
    "tests/test_flash.py",
    "values_and_gradients",
  ),
  Mutation(
    "selected_partials_merged_without_their_maxima",
    "r1jax/mixers/selected.py",
    "w = jnp.exp(m - jnp.max(m, 2, keepdims=True))",
    "w = jnp.ones_like(m)",
    "tests/test_selected.py",
    "masked_reference",
  ),
  Mutation(
    "selected_rows_of_a_block_read_the_next_block",
    "r1jax/mixers/selected.py",
    "k_pos = (gb % NB)[:, None] * block + jnp.arange(block)[None, :]",
    "k_pos = (gb % NB)[:, None] * block + jnp.arange(block)[None, :] - 1",
    "tests/test_selected.py",
    "masked_reference",
  ),
  Mutation(
    "selected_pairs_ranked_against_the_first_slab",
    "r1jax/mixers/selected.py",
    "rank = jnp.arange(Q)[None] - first_SxNB1[slab_S1, b]",
    "rank = jnp.arange(Q)[None] - first_SxNB1[0, b]",
    "tests/test_selected.py",
    "masked_reference",
  ),
  Mutation(
    "selected_sort_keys_of_two_blocks_overlap",
    "r1jax/mixers/selected.py",
    "keys = jnp.sort(blk_P.astype(jnp.int32) * P + jnp.arange(P, dtype=jnp.int32))",
    "keys = jnp.sort(blk_P.astype(jnp.int32) * (P // 2) + jnp.arange(P, dtype=jnp.int32))",
    "tests/test_selected.py",
    "both_sort_paths",
  ),
  Mutation(
    "selected_gathered_block_reads_its_later_keys",
    "r1jax/mixers/selected.py",
    "ok = jnp.repeat(valid_BxCxGxN, block, -1) & (tok_BxCxGxN <= pos_xCx1x1) & (tok_BxCxGxN < T)",
    "ok = jnp.repeat(valid_BxCxGxN, block, -1) & (tok_BxCxGxN < T)",
    "tests/test_selected.py",
    "masked_reference",
  ),
  Mutation(
    "selected_small_blocks_not_gathered",
    "r1jax/mixers/selected_kernel.py",
    "    elif block <= GATHER_MAX_BLOCK:\n",
    "    elif block < GATHER_MAX_BLOCK:\n",
    "tests/test_selected.py",
    "gathers_small_blocks",
  ),
  Mutation(
    "csa_masked_picks_kl_in_entry_order",
    "r1jax/mixers/compressed.py",
    "      if masked:  # back to the picks' order\n",
    "      if False:  # back to the picks' order\n",
    "tests/test_compressed.py",
    "masked_and_gathered",
  ),
  Mutation(
    "csa_masked_picks_keep_invalid_ones",
    "r1jax/mixers/compressed.py",
    "hit_BxCxNxM = (idx[..., None] == jnp.arange(M)[None, None, None]) & ok[..., None]",
    "hit_BxCxNxM = idx[..., None] == jnp.arange(M)[None, None, None]",
    "tests/test_compressed.py",
    "definition",
  ),
  Mutation(
    "mqar_values_range_off_by_one",
    "r1jax/data/mqar.py",
    "values = vocab // 2 + rng.choice(vocab - vocab // 2, size=num_pairs, replace=False)",
    "values = vocab // 2 + rng.choice(vocab // 2, size=num_pairs, replace=False)",
    "tests/test_data.py",
    "plain_definition",
  ),
  Mutation(
    "selected_whole_blocks_merge_ignores_partial_weights",
    "r1jax/mixers/selected.py",
    'jnp.einsum("STNR,STNRK->STRK", w, acc)',
    'jnp.einsum("STNR,STNRK->STRK", jnp.ones_like(w), acc)',
    "tests/test_selected.py",
    "whole_blocks",
  ),
  Mutation(
    "selected_masked_counts_a_twice_picked_block_once",
    "r1jax/mixers/selected.py",
    "count_BxGxTxS = jnp.repeat(jnp.sum(hits, -2, dtype=jnp.int32), block, -1)[..., :T]",
    "count_BxGxTxS = jnp.repeat(jnp.any(hits, -2).astype(jnp.int32), block, -1)[..., :T]",
    "tests/test_selected.py",
    "twice",
  ),
  Mutation(
    "selected_masked_reads_later_keys_of_its_own_block",
    "r1jax/mixers/selected.py",
    "ok_BxGxTxS = (count_BxGxTxS > 0) & (jnp.arange(T)[:, None] >= jnp.arange(T)[None, :])[None, None]",
    "ok_BxGxTxS = count_BxGxTxS > 0",
    "tests/test_selected.py",
    "masked_reference",
  ),
  Mutation(
    "selected_short_sequences_not_masked",
    "r1jax/mixers/selected.py",
    "return T <= MASK_MAX_LEN and T <= MASK_KEYS * picks * block",
    "return T < MASK_MAX_LEN and T <= MASK_KEYS * picks * block",
    "tests/test_selected.py",
    "masks_short",
  ),
  Mutation(
    "nsa_long_compressed_block_read_before_it_ends",
    "r1jax/mixers/nsa.py",
    "stride=o.cmp_stride, offset=o.cmp_block - 1, with_lse=True",
    "stride=o.cmp_stride, offset=o.cmp_block - 2, with_lse=True",
    "tests/test_nsa.py",
    "long_context_path",
  ),
  Mutation(
    "long_chunks_score_only_the_keys_before_their_run",
    "r1jax/mixers/sparse.py",
    "functools.partial(fn, S=min(max(c1 * C, min_keys), T))",
    "functools.partial(fn, S=min(max(c0 * C, min_keys), T))",
    "tests/test_sparse.py",
    "long_sequences",
  ),
  Mutation(
    "sparse_padding_rows_of_the_last_chunk_pick_nothing",
    "r1jax/mixers/sparse.py",
    'idx_pad, valid_pad = padT(idx_BxTxN, "edge"), padT(valid_BxTxN, "edge")',
    "idx_pad, valid_pad = padT(idx_BxTxN), padT(valid_BxTxN)",
    "tests/test_sparse.py",
    "causal_by_gradients",
  ),
  # Options the code silently ignores (issue 39): the every-option-is-live test, generated from the config schema
  Mutation(
    "adam_b2_ignored",
    "r1jax/train.py",
    "optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps,",
    "optax.adamw(schedule, cfg.b1, 0.99, cfg.eps,",
    "tests/test_options_live.py",
    "optim.b2",
  ),
  Mutation(
    "nsa_gate_init_ignored",
    "r1jax/mixers/nsa.py",
    "GATE_INIT[self.opts.gate_init][None]",
    'GATE_INIT["window"][None]',
    "tests/test_options_live.py",
    "nsa.gate_init",
  ),
  Mutation(
    "mqar_power_a_ignored",
    "r1jax/data/mqar.py",
    "o.vocab_size, o.num_kv_pairs, o.power_a, o.random_non_queries",
    "o.vocab_size, o.num_kv_pairs, 0.01, o.random_non_queries",
    "tests/test_options_live.py",
    "mqar.power_a",
  ),
  Mutation(
    "gmm_dw_reads_the_next_experts_blocks",
    "r1jax/ffn/grouped_matmul.py",
    "rows = pl.ds((first + t) * block, block)",
    "rows = pl.ds((first + t + 1) * block, block)",
    "tests/test_moe.py",
    "pallas_grouped_matmul",
  ),
  Mutation(
    "gmm_forward_uses_the_first_expert",
    "r1jax/ffn/grouped_matmul.py",
    "  e = expert_ref[i]\n",
    "  e = expert_ref[0]\n",
    "tests/test_moe.py",
    "pallas_grouped_matmul",
  ),
  Mutation(
    "sel_kernel_hides_the_querys_own_key",
    "r1jax/mixers/selected_kernel.py",
    "  ok = key_pos <= t\n",
    "  ok = key_pos < t\n",
    "tests/test_selected_kernel.py",
    "masked_reference",
  ),
  Mutation(
    "sel_kernel_window_one_key_wider",
    "r1jax/mixers/selected_kernel.py",
    "(key_pos > t - window)",
    "(key_pos >= t - window)",
    "tests/test_selected_kernel.py",
    "sliding_window",
  ),
  Mutation(
    "sel_kernel_dv_from_the_score_gradient",
    "r1jax/mixers/selected_kernel.py",
    "dv + _cols_times(e, do, dots)",
    "dv + _cols_times(ds, do, dots)",
    "tests/test_selected_kernel.py",
    "masked_reference",
  ),
  Mutation(
    "sel_kernel_sums_only_a_blocks_first_group",
    "r1jax/mixers/selected_kernel.py",
    "carry[0] + dk_ref[first + c]",
    "carry[0] + dk_ref[first]",
    "tests/test_selected_kernel.py",
    "masked_reference",
  ),
  Mutation(
    "sel_kernel_counts_picks_before_sorting_them",
    "r1jax/mixers/selected_kernel.py",
    "jnp.argsort(~valid_PxN, 1, stable=True)",
    "jnp.argsort(valid_PxN, 1, stable=True)",
    "tests/test_selected_kernel.py",
    "masked_reference or empty",
  ),
  Mutation(
    "aot_ignores_cudnns_causal_mask",
    "r1jax/lab/aot.py",
    "causal = 0.5 if",
    "causal = 1.0 if",
    "tests/test_aot.py",
    "custom_calls",
  ),
)


def _copy_repo(dst: str) -> None:
  shutil.copytree(
    REPO,
    dst,
    ignore=shutil.ignore_patterns(
      ".git", "results", ".pytest_cache", "__pycache__", "*.egg-info", ".ipynb_checkpoints"
    ),
  )


def run(mutation: Mutation, scratch: str, env: dict) -> tuple[bool, float, str]:
  """(caught, seconds, last output line) of one mutation, applied in `scratch` and undone afterwards."""
  path = os.path.join(scratch, mutation.path)
  with open(path) as f:
    original = f.read()
  if original.count(mutation.old) != 1:
    raise SystemExit(
      f"{mutation.name}: the snippet occurs {original.count(mutation.old)} times in {mutation.path} "
      "(expected once). Fix: update the mutation to the current code."
    )
  try:
    with open(path, "w") as f:
      f.write(original.replace(mutation.old, mutation.new))
    t0 = time.time()
    out = subprocess.run(
      [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        *mutation.tests.split(),
        "-k",
        mutation.select,
      ],
      cwd=scratch,
      env=env,
      capture_output=True,
      text=True,
    )
    last = (out.stdout.strip().splitlines() or [""])[-1]
    if out.returncode == 5:
      raise SystemExit(f"{mutation.name}: -k {mutation.select!r} selects no test in {mutation.tests}.")
    return out.returncode != 0, time.time() - t0, last
  finally:
    with open(path, "w") as f:
      f.write(original)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="comma-separated mutation names (default: all)")
  parser.add_argument("--list", action="store_true", help="list the mutations and their tests, then exit")
  args = parser.parse_args()
  names = [n for n in args.only.split(",") if n]
  unknown = set(names) - {m.name for m in MUTATIONS}
  if unknown:
    raise SystemExit(f"--only: unknown {sorted(unknown)}. Fix: see --list.")
  chosen = [m for m in MUTATIONS if not names or m.name in names]
  if args.list:
    for m in chosen:
      print(f"{m.name:36s} {m.path:22s} {m.tests} -k {m.select}")
    return
  scratch = tempfile.mkdtemp(prefix="r1jax-mutations-")
  try:
    _copy_repo(os.path.join(scratch, "repo"))
    repo = os.path.join(scratch, "repo")
    env = {**os.environ, "PYTHONPATH": repo}  # the scratch copy's r1jax, also in the tests' subprocesses
    survived = []
    print("| mutation | file | test | result | seconds |\n|---|---|---|---|---|")
    for m in chosen:
      caught, sec, last = run(m, repo, env)
      survived += [] if caught else [m.name]
      print(
        f"| {m.name} | {m.path} | {m.tests} -k {m.select} | {'caught' if caught else 'SURVIVED: ' + last} | "
        f"{sec:.0f} |",
        flush=True,
      )
    print(
      f"\n{len(chosen) - len(survived)} of {len(chosen)} mutations caught"
      + (f"; survived: {', '.join(survived)}" if survived else "")
    )
    sys.exit(1 if survived else 0)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  main()
