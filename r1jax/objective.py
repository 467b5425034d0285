"""A batch's objective and metric sums (the one forward pass that training and evaluation share)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from r1jax.registry import DIAGNOSTICS


def forward(
  model: nn.Module,
  params,
  model_state,
  batch: dict,
  rng: jax.Array | None,
  deterministic: bool,
  diagnostics: bool = False,
) -> tuple[jax.Array, dict, dict, dict]:
  """Loss and metric sums on a batch; with `diagnostics`, also the mixers' costly diagnostics (registry.DIAGNOSTICS:
  e.g. a sparse mixer's recall of the dense top-k), for an untimed pass only.

  Returns:
    (objective = mean CE + aux losses, metrics (means), sums {loss_sum, correct_sum, count; per row: correct_B,
    count_B}, new model_state).
  """
  mutable = list(model_state) if not deterministic else []
  mutable += [DIAGNOSTICS] if diagnostics else []
  out = model.apply(
    {"params": params, **model_state},
    batch["inputs"],
    deterministic=deterministic,
    target_pos_BxN=batch.get("target_pos"),
    rngs={"dropout": rng} if rng is not None else None,
    mutable=mutable or False,
  )
  (logits_BxNxV, aux), new_state = out if mutable else (out, model_state)
  new_state = model_state if deterministic else {k: v for k, v in new_state.items() if k != DIAGNOSTICS}
  aux = dict(aux)
  mtp_DxBxNxV = aux.pop("mtp_logits", None)
  targets_BxN, w_BxN = batch["targets"], batch["weights"]
  ce_BxN = optax.softmax_cross_entropy_with_integer_labels(logits_BxNxV, targets_BxN)
  correct_BxN = (jnp.argmax(logits_BxNxV, axis=-1) == targets_BxN).astype(jnp.float32)
  count = jnp.sum(w_BxN)
  sums = {
    "loss_sum": jnp.sum(ce_BxN * w_BxN),
    "correct_sum": jnp.sum(correct_BxN * w_BxN),
    "count": count,
    "correct_B": jnp.sum(correct_BxN * w_BxN, axis=1),
    "count_B": jnp.sum(w_BxN, axis=1),
  }
  loss = sums["loss_sum"] / jnp.maximum(count, 1.0)
  metrics = {"loss": loss, "accuracy": sums["correct_sum"] / jnp.maximum(count, 1.0), **aux}
  if mtp_DxBxNxV is not None:
    metrics.update(mtp_metrics(mtp_DxBxNxV, logits_BxNxV, targets_BxN, w_BxN, model.cfg.mtp_weight))
    return loss + aux["aux_loss"] + metrics["mtp/loss"], metrics, sums, new_state
  return loss + aux["aux_loss"], metrics, sums, new_state


def mtp_metrics(
  mtp_DxBxTxV: jax.Array, logits_BxTxV: jax.Array, targets_BxT: jax.Array, w_BxT: jax.Array, weight: float
) -> dict[str, jax.Array]:
  """Multi-token prediction's losses and rates (DeepSeek-V3 2.2): depth k's logits at position i predict token
  i+k+1 = targets[i+k] (positions without one weigh 0). `mtp/loss` = weight / D * sum_k of depth k's mean
  cross-entropy (`mtp/loss<k>`, unweighted), the objective's auxiliary loss; `mtp/accuracy<k>` its top-1 accuracy;
  `mtp/accept<k>` the teacher-forced acceptance rate: how often depth k's top-1 equals the main head's at position
  i+k, which is what a self-speculative draft of that token would need (MaxText logs the same rate). With weight 0
  the modules are measured only: no gradient flows back through them (so training is the plain model's, bitwise,
  which a zero-weighted loss does not guarantee: XLA may then regroup the shared head's and embedding's sums)."""
  D = mtp_DxBxTxV.shape[0]
  mtp_DxBxTxV = jax.lax.stop_gradient(mtp_DxBxTxV) if weight == 0 else mtp_DxBxTxV
  shift = lambda a, k: jnp.concatenate([a[:, k:], jnp.zeros_like(a[:, :k])], 1)  # noqa: E731 (a[i + k] at i)
  main_BxT = jnp.argmax(logits_BxTxV, -1)
  out, total = {}, jnp.zeros((), jnp.float32)
  for k in range(1, D + 1):
    target_BxT, w_k_BxT = shift(targets_BxT, k), shift(w_BxT, k)
    count = jnp.maximum(jnp.sum(w_k_BxT), 1.0)
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(mtp_DxBxTxV[k - 1], target_BxT)
    guess_BxT = jnp.argmax(mtp_DxBxTxV[k - 1], -1)
    out[f"mtp/loss{k}"] = jnp.sum(ce_BxT * w_k_BxT) / count
    out[f"mtp/accuracy{k}"] = jnp.sum((guess_BxT == target_BxT) * w_k_BxT) / count
    out[f"mtp/accept{k}"] = jnp.sum((guess_BxT == shift(main_BxT, k)) * w_k_BxT) / count
    total = total + out[f"mtp/loss{k}"]
  out["mtp/loss"] = weight / D * total
  return out
