"""Self-speculative decoding with the model's own multi-token-prediction modules (`model.mtp_depth` D >= 1).

Each round, for every row: the D tokens drafted by the MTP modules are verified in one decoding step of the main
model over the cache (the last accepted token and the D drafts, D + 1 tokens at once), the longest agreeing prefix
is accepted and one more token comes from the main model's own distribution, so a round commits 1 to D + 1 tokens for
one pass of the main model. Greedy (temperature 0): a draft is accepted when it is the main model's argmax, and the
output equals plain greedy decoding token for token. Sampling: draft x ~ q is accepted with probability
min(1, p(x) / q(x)), and at the first rejection the next token is drawn from norm(max(p - q, 0)) (Leviathan et al.
2023, arXiv:2211.17192; Chen et al. 2023, arXiv:2302.01318), so each token is distributed exactly as plain sampling's
(p and q: the model's and the draft's distributions after temperature, top-k and top-p). Drafts: DeepSeek-V3
(arXiv:2412.19437, section 2.2; its section 5.4.3 reports 85-90% acceptance of the second token and 1.8x tokens per
second) uses its MTP module as the draft of speculative decoding; module k at position i reads the main model's (or
module k-1's) hidden state at i and the embedding of token i + k, and predicts token i + k + 1 (r1jax/model.py).

Caches (r1jax/inference/decoding.py): the verifying step writes all D + 1 tokens. A model whose every mixer keeps a
cache indexed by position (`decoding.rollback_free`: attention, fusion, MLA, DSA, block top-k) needs no rollback: an
entry past a row's position is never read before a later step overwrites it, and a cache window keeps D spare slots
(`Decode.spare`) so that a rejected token overwrites only entries older than any later query's window. Any other
cache (recurrent states, ring buffers, NSA's compressed blocks) is rolled back by repeating the step from the cache
before it, each row committing only its accepted tokens (`Decode.step`'s lengths). Each MTP module keeps its own cache,
stepped once per round over the positions the round accepted; module k >= 2's entries at a row's last k - 1
positions were computed from drafted tokens (the ones after them are not known yet) and stay so, which can only
lower the acceptance, never change the output; `accept_rate` reports what decoding achieves beside the
teacher-forced rate training measures (r1jax/objective.py).
"""

import functools

import jax
import jax.numpy as jnp

from r1jax import registry
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.inference.sampling import Sampling, at_rows, probabilities, prompt_or, sample


def check_speculative(cfg) -> None:
  """ConfigError when model config `cfg` has no MTP modules to draft with."""
  if cfg.mtp_depth < 1:
    raise ConfigError(
      "--speculative=mtp needs a model trained with multi-token prediction (model.mtp_depth >= 1), this one has "
      "model.mtp_depth=0. Fix: decode without --speculative, or train with model.mtp_depth=1 (experiments/"
      "mtp_ablation.py)."
    )


def needs_rollback(cfg, decode: decoding.Decode) -> bool:
  """Whether a verifying step's rejected tokens must be undone in some layer's cache (see the module docstring)."""
  names = cfg.layer_names("mixer")
  return not all(
    decoding.rollback_free(registry.lookup(registry.MIXERS, n, "model.mixer").module, decode) for n in names
  )


def _apply(model, params, cache, ids_BxT, decode, mtp=None):
  """(logits, hidden state, cache) of a decoding call (`cache` None: a prefill that creates it)."""
  variables = params if cache is None else {**params, decoding.CACHE: cache}
  (logits, aux), new = model.apply(variables, ids_BxT, decode=decode, mtp=mtp, mutable=[decoding.CACHE])
  return logits, aux["hidden"], new[decoding.CACHE]


def _draft(model, params, cache, h_BxTxD, buf_BxW, decode, start_B, last_B, writes_B, lengths_B, key, s):
  """Steps MTP modules 1..D over T positions from start[b] (hidden states h of the main model there; module k reads
  the tokens at positions i + k from buf), then drafts from each module's logits at index last[b]: module k's draft
  for position start + last + k + 1 goes into buf (where writes[b] and past the prompt). Returns the cache, buf and
  the drafts' distributions q [B, D, V]."""
  B, T = h_BxTxD.shape[:2]
  qs = []
  for k in range(1, model.cfg.mtp_depth + 1):
    ahead_BxT = jnp.take_along_axis(
      buf_BxW, jnp.clip(start_B[:, None] + jnp.arange(T)[None] + k, 0, buf_BxW.shape[1] - 1), 1
    )
    logits_BxTxV, h_BxTxD, cache = _apply(model, params, cache, ahead_BxT, decode, (k, h_BxTxD))
    logits_BxV = at_rows(logits_BxTxV, last_B)
    draft_B = sample(logits_BxV, jax.random.fold_in(key, k), s)
    at_B = start_B + last_B + k + 1
    old_B = jnp.take_along_axis(buf_BxW, at_B[:, None], 1)[:, 0]
    buf_BxW = buf_BxW.at[jnp.arange(B), at_B].set(jnp.where(writes_B & (at_B >= lengths_B), draft_B, old_B))
    qs.append(probabilities(logits_BxV, s))
  return cache, buf_BxW, jnp.stack(qs, 1)


STATIC = ("model", "max_len", "sampling", "context", "sinks")


def _sizes(cfg, prompts_BxP, lengths_B, max_len, context, sinks):
  """(D, L: the positions a row may reach, a round verifying D tokens past its last one; F: tokens prefilled)."""
  L = max_len + cfg.mtp_depth + 1
  return (
    cfg.mtp_depth,
    L,
    min(prompts_BxP.shape[1], decoding.Decode.prefill(lengths_B, L, context, sinks).longest_prefill),
  )


@functools.partial(jax.jit, static_argnames=STATIC)
def speculative_prefill(
  model, params, prompts_BxP: jax.Array, lengths_B: jax.Array, *, max_len: int, sampling: Sampling, context=0, sinks=0
) -> dict[str, jax.Array]:
  """The state self-speculative decoding starts from (`speculative_decode`): the main model's and the MTP modules'
  caches after a prefill of each row's prompt (at most the cache window), every position's token so far (`buf`: the
  prompts, the next token, the first drafts), the drafts' distributions and the prefilled length."""
  cfg, s = model.cfg, sampling
  check_speculative(cfg)
  D, L, F = _sizes(cfg, prompts_BxP, lengths_B, max_len, context, sinks)
  B, P = prompts_BxP.shape
  pre_B = jnp.minimum(lengths_B, F)
  key = jax.random.key(s.seed)
  buf_BxW = jnp.zeros((B, L + D + 2), jnp.int32).at[:, :P].set(prompts_BxP)
  prefill = decoding.Decode.prefill(pre_B, L, context, sinks, spare=D)  # spare slots: no rollback in a window
  logits_BxFxV, h_BxFxD, cache = _apply(model, params, None, prompts_BxP[:, :F], prefill)
  drawn_B = sample(at_rows(logits_BxFxV, pre_B - 1), jax.random.fold_in(key, 0), s)
  first_B = prompt_or(prompts_BxP, lengths_B, pre_B, drawn_B)
  buf_BxW = buf_BxW.at[jnp.arange(B), pre_B].set(first_B)
  cache, buf_BxW, q_BxDxV = _draft(
    model, params, cache, h_BxFxD, buf_BxW, prefill, jnp.zeros_like(pre_B), pre_B - 1, jnp.ones((B,), bool),
    lengths_B, jax.random.fold_in(key, 1), s,
  )  # fmt: skip
  return {"cache": cache, "buf": buf_BxW, "q": q_BxDxV, "pre": pre_B}


@functools.partial(jax.jit, static_argnames=("max_new_tokens", *STATIC))
def speculative_decode(
  model, params, state: dict, prompts_BxP, lengths_B, *, max_new_tokens: int, max_len: int, sampling, context=0, sinks=0
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """[B, max_new_tokens] ids after each row's prompt from `speculative_prefill`'s state: a while loop of rounds until
  every row has its tokens; and per-row counts: `rounds` (past the prompt), `tokens` (committed in them),
  `accepted` [B, D] (rounds whose drafts 1..k were all accepted)."""
  cfg, s = model.cfg, sampling
  D, L, _ = _sizes(cfg, prompts_BxP, lengths_B, max_len, context, sinks)
  B = prompts_BxP.shape[0]
  rows, key = jnp.arange(B), jax.random.key(s.seed)

  end_B = lengths_B + max_new_tokens - 1  # the last position a row needs
  rollback = needs_rollback(cfg, decoding.Decode.step(state["pre"], L, context, sinks, spare=D))
  zeros_B = jnp.zeros((B,), jnp.int32)
  counts = {"rounds": zeros_B, "tokens": zeros_B, "accepted": jnp.zeros((B, D), jnp.int32)}

  def round_(carry):
    cache, buf_BxW, q_BxDxV, p_B, counts, r = carry
    done_B = p_B >= end_B
    rkey = jax.random.fold_in(key, r + 2)
    ids_BxT = jnp.take_along_axis(buf_BxW, p_B[:, None] + jnp.arange(D + 1)[None], 1)  # the last token, then the drafts
    step = decoding.Decode.step(p_B, L, context, sinks, spare=D)
    logits_BxTxV, h_BxTxD, verified = _apply(model, params, cache, ids_BxT, step)
    drafts_BxD = ids_BxT[:, 1:]
    if s.temperature == 0:
      ok_BxD = drafts_BxD == jnp.argmax(logits_BxTxV[:, :D], -1)
    else:  # accept x ~ q with probability min(1, p(x) / q(x))
      p_BxDxV = probabilities(logits_BxTxV[:, :D], s)
      pick = lambda a: jnp.take_along_axis(a, drafts_BxD[..., None], -1)[..., 0]  # noqa: E731
      u_BxD = jax.random.uniform(jax.random.fold_in(rkey, 0), (B, D))
      ok_BxD = u_BxD * pick(q_BxDxV) < pick(p_BxDxV)
    ok_BxD |= p_B[:, None] + 1 + jnp.arange(D)[None] < lengths_B[:, None]  # the prompt's tokens: accepted as they are
    run_BxD = jnp.cumprod(ok_BxD.astype(jnp.int32), -1)
    a_B = jnp.where(done_B, 0, run_BxD.sum(-1))  # drafts accepted
    logits_BxV = at_rows(logits_BxTxV, a_B)
    if s.temperature == 0:
      next_B = jnp.argmax(logits_BxV, -1).astype(jnp.int32)
    else:  # after a rejection, from norm(max(p - q, 0)); after D acceptances, from p
      p_BxV = probabilities(logits_BxV, s)
      rest_BxV = jnp.where(
        (a_B < D)[:, None], jnp.maximum(p_BxV - at_rows(q_BxDxV, jnp.minimum(a_B, D - 1)), 0.0), p_BxV
      )
      rest_BxV = jnp.where(rest_BxV.sum(-1, keepdims=True) > 0, rest_BxV, p_BxV)  # p == q: never rejected
      next_B = jax.random.categorical(jax.random.fold_in(rkey, 1), jnp.log(rest_BxV), -1).astype(jnp.int32)
    at_B = p_B + a_B + 1
    next_B = jnp.where(done_B, at_rows(buf_BxW, at_B), prompt_or(prompts_BxP, lengths_B, at_B, next_B))
    buf_BxW = buf_BxW.at[rows, at_B].set(next_B)
    commit_B = jnp.where(done_B, 0, a_B + 1)
    if rollback:  # the step again from the cache before it, each row committing its accepted tokens only
      verified = _apply(model, params, cache, ids_BxT, step.replace(lengths=commit_B))[2]
    cache, buf_BxW, q_BxDxV = _draft(
      model, params, verified, h_BxTxD, buf_BxW, step.replace(lengths=commit_B), p_B, a_B, ~done_B, lengths_B,
      jax.random.fold_in(rkey, 2), s,
    )  # fmt: skip
    live_B = (~done_B & (p_B + 1 >= lengths_B)).astype(jnp.int32)  # a round past the prompt
    counts = {
      "rounds": counts["rounds"] + live_B,
      "tokens": counts["tokens"] + live_B * commit_B,
      "accepted": counts["accepted"] + live_B[:, None] * run_BxD,
    }
    return cache, buf_BxW, q_BxDxV, jnp.where(done_B, p_B, at_B), counts, r + 1

  carry = (state["cache"], state["buf"], state["q"], state["pre"], counts, 0)
  _, buf_BxW, _, _, counts, _ = jax.lax.while_loop(lambda c: ~jnp.all(c[3] >= end_B), round_, carry)
  return jnp.take_along_axis(buf_BxW, lengths_B[:, None] + jnp.arange(max_new_tokens)[None], 1), counts


speculative_ids = decoding.prefill_then_decode(
  speculative_prefill,
  speculative_decode,
  """[B, max_new_tokens] ids after each row's prompt (its first lengths[b] tokens) by self-speculative decoding, in
  one compiled function (`speculative_prefill`, then `speculative_decode`), and its per-row counts. A prompt longer
  than the cache window is fed through rounds as accepted drafts (r1jax/generate.py).""",
)
