"""Reading what mixers sow (`intermediates`) from trained runs, e.g. fusion betas or routed positions."""

import itertools

import jax.numpy as jnp
import numpy as np

from r1jax.config import Config
from r1jax.train import load_trained


def sown(cfg: Config, name: str, batches: int = 1, kind: str = "mixer") -> dict[int, np.ndarray]:
  """layer -> the values the layers' `kind` ("mixer" or "ffn") sowed as `intermediates/<name>`, over the first eval
  batches of the trained run in cfg.workdir, concatenated along the first axis; layers that sow nothing are left
  out."""
  model, variables, data = load_trained(cfg)
  found: dict[int, list[np.ndarray]] = {}
  for batch in itertools.islice(data.eval_batches(), batches):
    _, state = model.apply(variables, jnp.asarray(batch["inputs"]), deterministic=True, mutable=["intermediates"])
    for layer in range(cfg.model.num_layers):
      values = state["intermediates"].get(f"layer{layer}", {}).get(kind, {}).get(name)
      if values is not None:
        found.setdefault(layer, []).append(np.asarray(values[0]))
  return {layer: np.concatenate(v) for layer, v in found.items()}


def histogram_table(values_by_layer: dict[int, np.ndarray], bins: int = 10, lo: float = 0.0, hi: float = 1.0) -> str:
  """A markdown table with one row per layer: the fraction of values in each of `bins` equal bins of [lo, hi]."""
  edges = np.linspace(lo, hi, bins + 1)
  head = [f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:])]
  lines = ["| layer | mean | " + " | ".join(head) + " |", "|---" * (bins + 2) + "|"]
  for layer, v in sorted(values_by_layer.items()):
    counts, _ = np.histogram(np.clip(v.ravel(), lo, hi), edges)
    frac = counts / max(v.size, 1)
    lines.append(f"| {layer} | {v.mean():.3f} | " + " | ".join(f"{f:.2f}" for f in frac) + " |")
  return "\n".join(lines)


def horizon_table(log_a_by_layer: dict[int, np.ndarray]) -> str:
  """A markdown table of recurrent decays per layer and head: mean a and the memory horizon 1 / (1 - a) in tokens
  (10th, 50th, 90th percentile over batch, time and key dimensions) from sown log a [B, T, H, 1 or K]."""
  lines = ["| layer | head | mean a | horizon p10 | p50 | p90 |", "|---|---|---|---|---|---|"]
  for layer, log_a in sorted(log_a_by_layer.items()):
    for h in range(log_a.shape[2]):
      a = np.exp(np.asarray(log_a[:, :, h], np.float64))
      p10, p50, p90 = np.percentile(1.0 / np.maximum(1.0 - a, 1e-12), [10, 50, 90])
      lines.append(f"| {layer} | {h} | {a.mean():.4f} | {p10:.1f} | {p50:.1f} | {p90:.1f} |")
  return "\n".join(lines)
