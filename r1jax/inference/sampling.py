"""What a sampler draws from a model's logits: temperature (0: greedy), top-k, top-p (nucleus), a seed, and the prompt's
own token where a row is still inside its prompt; shared by plain
decoding (r1jax/generate.py) and self-speculative decoding (r1jax/inference/speculative.py), whose rejection rule needs
the distributions themselves."""

import dataclasses

import jax
import jax.numpy as jnp

from r1jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 1.0  # softmax temperature; 0: greedy
  top_k: int = 0  # keep the k most likely tokens; 0: all
  top_p: float = 1.0  # nucleus: keep the most likely tokens whose probabilities sum to >= p; 1: all
  seed: int = 0

  def __post_init__(self):
    for ok, field, fix in (
      (self.temperature >= 0, "temperature", "use 0 (greedy) or more"),
      (self.top_k >= 0, "top_k", "use 0 (off) or a positive count"),
      (0 < self.top_p <= 1, "top_p", "use a probability in (0, 1]"),
    ):
      if not ok:
        raise ConfigError(f"--{field}={getattr(self, field)} is invalid. Fix: {fix}.")


def filtered(logits_xV: jax.Array, s: Sampling) -> jax.Array:
  """float32 logits [..., V] of the distribution `s` samples from (temperature > 0): divided by the temperature,
  the tokens top-k and top-p drop at -inf."""
  logits = logits_xV.astype(jnp.float32) / s.temperature
  if s.top_k:
    kth_xx1 = jax.lax.top_k(logits, min(s.top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth_xx1, -jnp.inf, logits)
  if s.top_p < 1:  # the smallest set of the most likely tokens with probability >= p (the top token always kept)
    sorted_xV = jnp.sort(logits, -1)[..., ::-1]
    cum_xV = jnp.cumsum(jax.nn.softmax(sorted_xV, -1), -1)
    cutoff_xx1 = jnp.take_along_axis(sorted_xV, jnp.sum(cum_xV < s.top_p, -1, keepdims=True), -1)
    logits = jnp.where(logits < cutoff_xx1, -jnp.inf, logits)
  return logits


def probabilities(logits_xV: jax.Array, s: Sampling) -> jax.Array:
  """float32 [..., V]: the distribution `s` samples from (one-hot on the argmax at temperature 0)."""
  if s.temperature == 0:
    return jax.nn.one_hot(jnp.argmax(logits_xV, -1), logits_xV.shape[-1], dtype=jnp.float32)
  return jax.nn.softmax(filtered(logits_xV, s), -1)


def sample(logits_xV: jax.Array, key: jax.Array, s: Sampling) -> jax.Array:
  """Token ids [...] drawn from the logits under temperature, top-k and top-p (greedy at temperature 0)."""
  if s.temperature == 0:
    return jnp.argmax(logits_xV, -1).astype(jnp.int32)
  return jax.random.categorical(key, filtered(logits_xV, s), -1).astype(jnp.int32)


def at_rows(a_BxTx: jax.Array, i_B: jax.Array) -> jax.Array:
  """a[b, i[b]] for each row b."""
  return jnp.take_along_axis(a_BxTx, i_B.reshape(-1, *[1] * (a_BxTx.ndim - 1)), 1)[:, 0]


def prompt_or(prompts_BxP: jax.Array, lengths_B: jax.Array, position_B: jax.Array, token_B: jax.Array) -> jax.Array:
  """[B]: the token each row takes at `position`: its prompt's (the first lengths[b] of prompts) while inside the
  prompt, else `token` (a sample)."""
  inside_B = at_rows(prompts_BxP, jnp.minimum(position_B, prompts_BxP.shape[1] - 1))
  return jnp.where(position_B < lengths_B, inside_B, token_B)
