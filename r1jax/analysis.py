"""Reading what mixers sow (`intermediates`) from trained runs, e.g. fusion betas or routed positions."""

import itertools

import jax.numpy as jnp
import numpy as np

from r1jax.config import Config
from r1jax.train import load_trained


def sown(cfg: Config, name: str, batches: int = 1) -> dict[int, np.ndarray]:
  """layer -> the values mixers sowed as `intermediates/<name>`, over the first eval batches of the trained run in
  cfg.workdir, concatenated along the batch axis; layers that sow nothing are left out."""
  model, params, data = load_trained(cfg)
  found: dict[int, list[np.ndarray]] = {}
  for batch in itertools.islice(data.eval_batches(), batches):
    _, state = model.apply({"params": params}, jnp.asarray(batch["inputs"]), deterministic=True,
                           mutable=["intermediates"])
    for layer in range(cfg.model.num_layers):
      values = state["intermediates"].get(f"layer{layer}", {}).get("mixer", {}).get(name)
      if values is not None:
        found.setdefault(layer, []).append(np.asarray(values[0]))
  return {layer: np.concatenate(v) for layer, v in found.items()}


def histogram_table(values_by_layer: dict[int, np.ndarray], bins: int = 10, lo: float = 0.0,
                    hi: float = 1.0) -> str:
  """A markdown table with one row per layer: the fraction of values in each of `bins` equal bins of [lo, hi]."""
  edges = np.linspace(lo, hi, bins + 1)
  head = [f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:])]
  lines = ["| layer | mean | " + " | ".join(head) + " |", "|---" * (bins + 2) + "|"]
  for layer, v in sorted(values_by_layer.items()):
    counts, _ = np.histogram(np.clip(v.ravel(), lo, hi), edges)
    frac = counts / max(v.size, 1)
    lines.append(f"| {layer} | {v.mean():.3f} | " + " | ".join(f"{f:.2f}" for f in frac) + " |")
  return "\n".join(lines)
