"""Decoding with a cache: the contract a causal mixer implements next to its training forward.

A model decodes in two kinds of call, `Transformer.apply(variables, tokens, decode=Decode(...), mutable=["cache"])`:
  prefill  tokens [B, T] from position 0, each row's prompt its first lengths[b] tokens (right-padded to T): the
           training forward over the prompts, and each mixer writes into its `cache` variables what later steps read.
           Key/value caches take all T positions (entries past a prompt are never read before a step overwrites
           them); stateful caches (recurrent states, ring buffers, running sums) stop at lengths[b].
  step     tokens [B, 1] at per-row positions positions[b] (a row's next position: its prompt length, then one more
           per step): each mixer reads its cache, writes the new token's entries and returns its output.
The cache variables are created by the first prefill (max_len positions, a static size). A mixer that cannot decode
says why in a `not_decodable(opts)` staticmethod (the video mixer is not autoregressive; a router that ranks a whole
sequence sees later tokens), and asking it to decode is one clear error before compilation. Caches follow flax's Gemma
/ lm1b examples (a `cache` collection, `dynamic_update_slice` writes) and MaxText's KV cache.
"""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from r1jax.errors import ConfigError

MODES = ("prefill", "step")
CACHE = "cache"  # the variable collection of decoding caches


@flax.struct.dataclass
class Decode:
  """What a decoding call is: `mode` and `max_len` are static (they shape the program), the rest are arrays."""

  positions: jax.Array  # [B] int32: step: each row's position; prefill: zeros
  lengths: jax.Array  # [B] int32: prefill: each row's prompt length (<= T); step: ones
  max_len: int = flax.struct.field(pytree_node=False)  # positions the cache holds
  mode: str = flax.struct.field(pytree_node=False)  # prefill | step

  @classmethod
  def prefill(cls, lengths_B: jax.Array, max_len: int) -> "Decode":
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    return cls(jnp.zeros_like(lengths_B), lengths_B, max_len, "prefill")

  @classmethod
  def step(cls, positions_B: jax.Array, max_len: int) -> "Decode":
    positions_B = jnp.asarray(positions_B, jnp.int32)
    return cls(positions_B, jnp.ones_like(positions_B), max_len, "step")

  def token_positions(self, T: int) -> jax.Array | np.ndarray:
    """Positions of this call's tokens: [T] numpy in a prefill (static, as the training forward's), else [B, T]."""
    if self.mode == "prefill":
      return np.arange(T)
    return self.positions[:, None] + jnp.arange(T)[None, :]


def positions_of(decode: Decode | None, T: int) -> jax.Array | np.ndarray:
  """The token positions a mixer ropes with: 0..T-1 (training, prefill) or each row's step position."""
  return np.arange(T) if decode is None else decode.token_positions(T)


def stepping(decode: Decode | None) -> bool:
  return decode is not None and decode.mode == "step"


def why_not_decodable(module_cls: type, opts) -> str:
  """Why mixer class `module_cls` cannot decode with `opts` (its `not_decodable(opts)`), "" when it can (a mixer
  without one decodes)."""
  return getattr(module_cls, "not_decodable", lambda o: "")(opts)


def check_decodable(module_cls: type, opts, name: str) -> None:
  """ConfigError naming mixer `name` when it cannot decode with `opts` (see why_not_decodable)."""
  why = why_not_decodable(module_cls, opts)
  if why:
    raise ConfigError(
      f"model.mixer={name!r} cannot decode: {why}. Fix: decode a model whose mixers are causal "
      "(attention, local, fusion, sparse, block_sparse with score_by='token', nsa, mla, "
      "fast_weight, time_channel)."
    )


def write(cache: jax.Array, new_BxTx: jax.Array, decode: Decode) -> jax.Array:
  """`cache` [B, S, ...] with `new` [B, T, ...] written at each row's positions (prefill: 0..T-1)."""
  new_BxTx = new_BxTx.astype(cache.dtype)
  if decode.mode == "prefill":
    return jax.lax.dynamic_update_slice_in_dim(cache, new_BxTx, 0, 1)
  return jax.vmap(lambda c, n, p: jax.lax.dynamic_update_slice_in_dim(c, n, p, 0))(cache, new_BxTx, decode.positions)


def cached(module, name: str, new_BxTx: jax.Array, decode: Decode) -> jax.Array:
  """The cache variable `name` ([B, max_len, ...], zeros at first) with this call's entries written; returns it."""
  B, _, *rest = new_BxTx.shape
  var = module.variable(CACHE, name, jnp.zeros, (B, decode.max_len, *rest), new_BxTx.dtype)
  var.value = write(var.value, new_BxTx, decode)
  return var.value


def state(module, name: str, shape: tuple[int, ...], dtype, fill: float = 0.0):
  """A cache variable holding a fixed-size state (a recurrent state, a ring buffer) filled with `fill` at first."""
  return module.variable(CACHE, name, lambda: jnp.full(shape, fill, dtype))


def attend(
  q_BxTxHxK: jax.Array,
  k_BxSxGxK: jax.Array,
  v_BxSxGxV: jax.Array,
  ok_BxTxS: jax.Array,
  bias_BxTxS: jax.Array | None = None,
) -> jax.Array:
  """Softmax attention of the step's queries over cached keys where `ok` (float32 logits and softmax, as the
  training paths); G key/value heads, H/G query heads each; values may be narrower or wider than keys (MLA);
  `bias` is added to every head's logits (a sparse indexer's gate), or None."""
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxSxGxK.shape[2]
  q_BxTxGxRxK = q_BxTxHxK.reshape(B, T, G, H // G, K)
  logits = jnp.einsum("BTGRK,BSGK->BTGRS", q_BxTxGxRxK, k_BxSxGxK, preferred_element_type=jnp.float32) * K**-0.5
  if bias_BxTxS is not None:
    logits = logits + bias_BxTxS[:, :, None, None]
  logits = jnp.where(ok_BxTxS[:, :, None, None], logits, -jnp.inf)
  probs = jax.nn.softmax(logits, -1).astype(v_BxSxGxV.dtype)
  return jnp.einsum("BTGRS,BSGV->BTGRV", probs, v_BxSxGxV).reshape(B, T, H, -1).astype(q_BxTxHxK.dtype)


def causal_ok(decode: Decode, T: int, window: int | None = None) -> jax.Array:
  """[B, T, max_len]: cached position s is visible to the call's token at position t (s <= t; t - s < window)."""
  t_BxTx1 = decode.positions[:, None, None] + jnp.arange(T)[None, :, None]
  s_1x1xS = jnp.arange(decode.max_len)[None, None, :]
  ok = s_1x1xS <= t_BxTx1
  return ok if window is None else ok & (t_BxTx1 - s_1x1xS < window)


def ring(module, name: str, new_BxTx: jax.Array, decode: Decode, window: int) -> tuple[jax.Array, jax.Array]:
  """A ring buffer of the last `window` entries per row (memory O(window), not O(max_len)): slot j holds position p
  with p % window == j. Returns the buffer [B, W, ...] and its slots' positions [B, W] (-1: empty)."""
  B, T, *rest = new_BxTx.shape
  W = min(window, decode.max_len)  # a window longer than the cache needs no more slots than it
  buf = module.variable(CACHE, name, jnp.zeros, (B, W, *rest), new_BxTx.dtype)
  pos = module.variable(CACHE, f"{name}_pos", lambda: jnp.full((B, W), -1, jnp.int32))
  if decode.mode == "prefill":  # slot j: the last prompt position p < L with p % W == j
    last_Bx1 = decode.lengths[:, None] - 1
    p_BxW = last_Bx1 - jnp.mod(last_Bx1 - jnp.arange(W)[None, :], W)
    idx = jnp.clip(p_BxW, 0, T - 1).reshape(B, W, *([1] * len(rest)))
    buf.value = jnp.take_along_axis(new_BxTx, idx, 1).astype(buf.value.dtype)
    pos.value = jnp.where(p_BxW >= 0, p_BxW, -1)
  else:
    slot_B = jnp.mod(decode.positions, W)
    rows = jnp.arange(B)
    buf.value = buf.value.at[rows, slot_B].set(new_BxTx[:, 0].astype(buf.value.dtype))
    pos.value = pos.value.at[rows, slot_B].set(decode.positions)
  return buf.value, pos.value


def last_inputs(x_BxTxD: jax.Array, lengths_B: jax.Array, n: int) -> jax.Array:
  """Each row's last n inputs before its prompt length, [B, n, D] (zeros before position 0): a short
  convolution's state after the prompt."""
  B, T, D = x_BxTxD.shape
  padded = jnp.concatenate([jnp.zeros((B, n, D), x_BxTxD.dtype), x_BxTxD], axis=1)  # position p at index p + n
  return jax.vmap(lambda a, L: jax.lax.dynamic_slice_in_dim(a, L, n, 0))(padded, lengths_B)


def prompt_mask(decode: Decode, T: int) -> jax.Array:
  """[B, T]: the token is inside its row's prompt (prefill) or is the step's token."""
  return jnp.arange(T)[None, :] < decode.lengths[:, None]


class StateCache(nn.Module):
  """A fixed-size decoding state in the cache collection, for mixers built in `setup` (which cannot create
  variables later): __call__(empty state, update) runs update(state) -> (output, new state), stores the new state
  and returns the output; the state starts as `empty`."""

  @nn.compact
  def __call__(self, empty: dict[str, jax.Array], update):
    slots = {k: self.variable(CACHE, k, lambda v=v: v) for k, v in empty.items()}
    out, new = update({k: s.value for k, s in slots.items()})
    for k, v in new.items():
      slots[k].value = v.astype(slots[k].value.dtype)
    return out
