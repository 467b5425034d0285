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
  return loss + aux["aux_loss"], metrics, sums, new_state
