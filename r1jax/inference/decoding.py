"""Decoding with a cache: the contract a causal mixer implements next to its training forward.

A model decodes in two kinds of call, `Transformer.apply(variables, tokens, decode=Decode(...), mutable=["cache"])`:
  prefill  tokens [B, T] from position 0, each row's prompt its first lengths[b] tokens (right-padded to T): the
           training forward over the prompts, and each mixer writes into its `cache` variables what later steps read.
           Key/value caches take all T positions (entries past a prompt are never read before a step overwrites
           them); stateful caches (recurrent states, ring buffers, running sums) stop at lengths[b].
  step     tokens [B, T] at per-row positions positions[b].. (a row's next position: its prompt length, then one
           more per token): each mixer reads its cache, writes the new tokens' entries and returns their outputs.
           A row commits its first lengths[b] tokens (default: all): a mixer whose state is not indexed by position
           (a recurrent state, a ring buffer) leaves it as it was for the rest (whose outputs are then not
           meaningful), so that a caller can verify drafted tokens and commit the accepted ones (self-speculative
           decoding, r1jax/inference/speculative.py). A mixer whose step takes several tokens at once says so
           (`multi_token_step = True`); the Block steps the others one token at a time (`Decode.token`).
The cache variables are created by the first prefill (max_len positions, a static size).

Past the trained context, a cache keeps a window (`context`, static: 0 keeps every position): the first `sinks`
positions (attention sinks, StreamingLLM: Xiao et al. 2023, arXiv:2309.17453) and a ring of the last
context - sinks, so memory is O(context) and no query sees a key farther than training did. Keys stay roped at their
own positions (RoPE scores depend on distance only), except the sinks, which are read re-rotated to sit just before
the ring (StreamingLLM's positions within the cache): with one layer, a windowed step equals the training forward
over [the sinks, the ring]. A cache that verifies drafted tokens (r1jax/inference/speculative.py) keeps `spare` more
ring slots than the window and masks each query to its window: a step's rejected tokens then overwrite only entries
no later query reads, so such a cache needs no rollback and takes several tokens at once (without sinks, whose
rotation depends on the query). A prefill in a window takes at most `context` tokens (r1jax.generate feeds a longer
prompt through steps). A mixer whose state is not a window of tokens says what it does instead in a
`decode_window(opts)` staticmethod (a recurrent state summarises all of the past; NSA's blocks). A mixer that cannot
decode says why in a `not_decodable(opts)` staticmethod (the video mixer is not autoregressive; a router that ranks a
whole sequence sees later tokens), and asking it to decode is one clear error before compilation. Caches follow flax's
Gemma / lm1b examples (a `cache` collection, `dynamic_update_slice` writes) and MaxText's KV cache.
"""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from r1jax.errors import ConfigError
from r1jax.layers import rope

MODES = ("prefill", "step")
CACHE = "cache"  # the variable collection of decoding caches


@flax.struct.dataclass
class Decode:
  """What a decoding call is: `mode`, `max_len`, `context` and `sinks` are static (they shape the program), the rest
  are arrays."""

  positions: jax.Array  # [B] int32: step: each row's position; prefill: zeros
  lengths: jax.Array  # [B] int32: prefill: each row's prompt length (<= T); step: the tokens each row commits
  max_len: int = flax.struct.field(pytree_node=False)  # positions a sequence may reach
  mode: str = flax.struct.field(pytree_node=False)  # prefill | step
  context: int = flax.struct.field(pytree_node=False, default=0)  # cache slots past which it wraps; 0: max_len
  sinks: int = flax.struct.field(pytree_node=False, default=0)  # the first positions a wrapping cache keeps
  spare: int = flax.struct.field(pytree_node=False, default=0)  # ring slots a wrapping cache keeps beyond the window

  def __post_init__(self):
    if self.context and not 0 <= self.sinks < self.context:
      raise ConfigError(
        f"sink_tokens={self.sinks} with a context window of {self.context}. Fix: keep fewer sink tokens than the "
        "window (StreamingLLM keeps 4)."
      )

  @classmethod
  def prefill(cls, lengths_B: jax.Array, max_len: int, context: int = 0, sinks: int = 0, spare: int = 0) -> "Decode":
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    return cls(jnp.zeros_like(lengths_B), lengths_B, max_len, "prefill", context, sinks, spare)

  @classmethod
  def step(
    cls,
    positions_B: jax.Array,
    max_len: int,
    context: int = 0,
    sinks: int = 0,
    lengths_B: jax.Array | None = None,
    spare: int = 0,
  ) -> "Decode":
    """A step whose tokens start at `positions`; each row commits its first `lengths` tokens (None: all)."""
    positions_B = jnp.asarray(positions_B, jnp.int32)
    lengths_B = jnp.full_like(positions_B, max_len) if lengths_B is None else jnp.asarray(lengths_B, jnp.int32)
    return cls(positions_B, lengths_B, max_len, "step", context, sinks, spare)

  def token(self, j: int) -> "Decode":
    """The one-token step of this step's j-th token (committed by the rows that commit it)."""
    return self.replace(positions=self.positions + j, lengths=(self.lengths > j).astype(jnp.int32))

  @property
  def wraps(self) -> bool:
    """Whether the cache keeps a window (fewer slots than positions)."""
    return 0 < self.context < self.max_len

  @property
  def slots(self) -> int:
    """Entries a token cache holds: `context` (+ `spare`) when it wraps, else max_len."""
    return self.context + self.spare if self.wraps else self.max_len

  @property
  def ring(self) -> int:
    """A wrapping cache's ring slots (after the sinks)."""
    return self.context - self.sinks + self.spare

  @property
  def longest_prefill(self) -> int:
    """The most tokens a prefill may take: the window when the cache wraps, else max_len."""
    return self.context if self.wraps else self.max_len

  def whole(self) -> "Decode":
    """This call for a mixer that keeps every position (its `decode_window` says why)."""
    return self.replace(context=0, sinks=0, spare=0)

  def token_positions(self, T: int) -> jax.Array | np.ndarray:
    """Positions of this call's tokens: [T] numpy in a prefill (static, as the training forward's), else [B, T]."""
    if self.mode == "prefill":
      return np.arange(T)
    return self.positions[:, None] + jnp.arange(T)[None, :]


def prefill_then_decode(prefill, decode, doc: str):
  """One jitted function `(model, params, prompts, lengths, *, max_new_tokens, max_len, sampling, context, sinks)` of
  `prefill(model, params, prompts, lengths, **settings) -> state`, then `decode(model, params, state, prompts, lengths,
  max_new_tokens=..., **settings)` (plain and self-speculative decoding, r1jax/generate.py and speculative.py)."""

  def both(model, params, prompts_BxP, lengths_B, *, max_new_tokens, max_len, sampling, context=0, sinks=0):
    kw = dict(max_len=max_len, sampling=sampling, context=context, sinks=sinks)
    state = prefill(model, params, prompts_BxP, lengths_B, **kw)
    return decode(model, params, state, prompts_BxP, lengths_B, max_new_tokens=max_new_tokens, **kw)

  both.__doc__ = doc
  return jax.jit(both, static_argnames=("model", "max_new_tokens", "max_len", "sampling", "context", "sinks"))


def positions_of(decode: Decode | None, T: int) -> jax.Array | np.ndarray:
  """The token positions a mixer ropes with: 0..T-1 (training, prefill) or each row's step position."""
  return np.arange(T) if decode is None else decode.token_positions(T)


def stepping(decode: Decode | None) -> bool:
  return decode is not None and decode.mode == "step"


def commits(decode: Decode) -> jax.Array:
  """[B] bool: the row keeps what a one-token step writes (see Decode.step's lengths)."""
  return decode.lengths > 0


def steps_at_once(module_cls: type, decode: Decode) -> bool:
  """Whether mixer class `module_cls` takes this step's tokens in one call (its `multi_token_step`, into a cache
  that keeps every position or a window with spare slots and no sinks); else the Block steps it one token at a
  time."""
  at_once = not decode.wraps or (decode.spare > 0 and not decode.sinks)
  return decode.mode == "prefill" or (getattr(module_cls, "multi_token_step", False) and at_once)


def rollback_free(module_cls: type, decode: Decode) -> bool:
  """Whether a step of mixer class `module_cls` may write tokens that are later rejected without a rollback: its
  cache is indexed by position (`positional_cache`) and keeps every position, or a window with spare slots (at
  least the step's tokens - 1, the caller's to ensure), so an entry past a row's position is never read before a
  later step overwrites it, and a rejected one overwrites only entries older than any later query's window."""
  return getattr(module_cls, "positional_cache", False) and (not decode.wraps or decode.spare > 0)


def why_not_decodable(module_cls: type, opts) -> str:
  """Why mixer class `module_cls` cannot decode with `opts` (its `not_decodable(opts)`), "" when it can (a mixer
  without one decodes)."""
  return getattr(module_cls, "not_decodable", lambda o: "")(opts)


def why_no_window(module_cls: type, opts) -> str:
  """What mixer class `module_cls` does instead of keeping a cache window with `opts` (its `decode_window(opts)`),
  "" when its cache keeps the window (a mixer without one does)."""
  return getattr(module_cls, "decode_window", lambda o: "")(opts)


def check_decodable(module_cls: type, opts, name: str) -> None:
  """ConfigError naming mixer `name` when it cannot decode with `opts` (see why_not_decodable)."""
  why = why_not_decodable(module_cls, opts)
  if why:
    raise ConfigError(
      f"model.mixer={name!r} cannot decode: {why}. Fix: decode a model whose mixers are causal "
      "(attention, local, fusion, sparse, block_sparse with score_by='token', nsa, mla, csa, hca, "
      "fast_weight, time_channel)."
    )


def sink_shift(decode: Decode) -> jax.Array:
  """[B]: how far a wrapping cache's sinks are moved forward when read (StreamingLLM's positions within the cache:
  the sinks just before the ring's oldest entry); 0 until the cache is full."""
  return jnp.maximum(decode.positions - (decode.context - 1), 0)


def slot_positions(decode: Decode, T: int = 1) -> jax.Array:
  """[B, slots]: the position each cache slot holds after a step's T tokens are written (-1: empty), the sinks at
  the positions they are read at (`sink_shift`); 0..max_len-1 when the cache keeps every position."""
  if not decode.wraps:
    return jnp.broadcast_to(jnp.arange(decode.max_len)[None], (decode.positions.shape[0], decode.max_len))
  N, R, p_Bx1 = decode.sinks, decode.ring, decode.positions[:, None] + T - 1
  j_1xS = jnp.arange(decode.slots)[None]
  ring_BxS = p_Bx1 - jnp.mod(p_Bx1 - j_1xS, R)  # the newest position q <= p with slot N + (q - N) % R == j
  sink_BxS = j_1xS + sink_shift(decode)[:, None]
  return jnp.where(j_1xS < N, jnp.where(j_1xS <= p_Bx1, sink_BxS, -1), jnp.where(ring_BxS >= N, ring_BxS, -1))


def write(cache: jax.Array, new_BxTx: jax.Array, decode: Decode) -> jax.Array:
  """`cache` [B, S, ...] with `new` [B, T, ...] written at each row's positions (prefill: 0..T-1); a wrapping cache
  writes a step's tokens into their slots (a sink's, or the ring's N + (p - N) % ring)."""
  new_BxTx = new_BxTx.astype(cache.dtype)
  T = new_BxTx.shape[1]
  if decode.mode == "prefill":
    if decode.wraps and T > decode.context:
      raise ValueError(f"a prefill of {T} tokens into a cache window of {decode.context}: prefill at most the window")
    return jax.lax.dynamic_update_slice_in_dim(cache, new_BxTx, 0, 1)
  slot_B = decode.positions
  if decode.wraps:
    N, R = decode.sinks, decode.ring
    if T > 1:  # a verifying step (spare slots, no sinks: steps_at_once); it may wrap around the ring's end
      if not decode.spare or N:
        raise ValueError(f"a step of {T} tokens into a cache window without spare slots or with sinks")
      slot_BxT = N + jnp.mod(slot_B[:, None] + jnp.arange(T)[None] - N, R)
      return cache.at[jnp.arange(cache.shape[0])[:, None], slot_BxT].set(new_BxTx)
    slot_B = jnp.where(slot_B < N, slot_B, N + jnp.mod(slot_B - N, R))
  if T == 1:  # a row that does not commit rewrites the slot's entry (a wrapping cache's slot holds an older token)
    old = jax.vmap(lambda c, p: jax.lax.dynamic_slice_in_dim(c, p, 1, 0))(cache, slot_B)
    new_BxTx = jnp.where(commits(decode).reshape(-1, *[1] * (new_BxTx.ndim - 1)), new_BxTx, old)
  return jax.vmap(lambda c, n, p: jax.lax.dynamic_update_slice_in_dim(c, n, p, 0))(cache, new_BxTx, slot_B)


def cached(
  module, name: str, new_BxTx: jax.Array, decode: Decode, rope_base: float | None = None, rope_dims: int | None = None
) -> jax.Array:
  """The cache variable `name` ([B, slots, ...], zeros at first) with this call's entries written; returns it.
  `rope_base`: the entries are RoPE'd keys (rotated over the last axis, or its first `rope_dims`), so a step reads
  the sinks of a wrapping cache rotated forward by `sink_shift` (the stored entries stay as written)."""
  B, _, *rest = new_BxTx.shape
  var = module.variable(CACHE, name, jnp.zeros, (B, decode.slots, *rest), new_BxTx.dtype)
  var.value = write(var.value, new_BxTx, decode)
  if rope_base is None or not (decode.wraps and decode.sinks and decode.mode == "step"):
    return var.value
  N, sinks = decode.sinks, var.value[:, : decode.sinks]
  shift_BxN = jnp.broadcast_to(sink_shift(decode)[:, None], (B, N))
  flat = sinks.reshape(B, N, -1, sinks.shape[-1])  # rope wants [B, T, heads, K]
  moved = rope(flat, shift_BxN, rope_base, rope_dims).reshape(sinks.shape)
  return jnp.concatenate([moved, var.value[:, N:]], 1)


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


def top_k(scores_BxTxS: jax.Array, k: int, decode: Decode) -> tuple[jax.Array, jax.Array]:
  """jax.lax.top_k over a cache's slots with ties broken by position, as the forward's top-k over positions breaks
  them (ties are common: a ReLU indexer scores many keys 0): (values [B, T, k], slot ids [B, T, k])."""
  if not decode.wraps:
    return jax.lax.top_k(scores_BxTxS, k)
  order_Bx1xS = jnp.argsort(slot_positions(decode), axis=-1, stable=True)[:, None, :]
  top, i_BxTxk = jax.lax.top_k(jnp.take_along_axis(scores_BxTxS, order_Bx1xS, -1), k)
  return top, jnp.take_along_axis(jnp.broadcast_to(order_Bx1xS, scores_BxTxS.shape), i_BxTxk, -1)


def causal_ok(decode: Decode, T: int, window: int | None = None) -> jax.Array:
  """[B, T, slots]: the cached entry in each slot is visible to the call's token at position t (s <= t; t - s <
  window), by `slot_positions`; in a wrapping cache, a ring entry only within the query's own window (the spare
  slots hold older ones)."""
  t_BxTx1 = decode.positions[:, None, None] + jnp.arange(T)[None, :, None]
  s_Bx1xS = slot_positions(decode, T)[:, None, :]
  ok = (s_Bx1xS >= 0) & (s_Bx1xS <= t_BxTx1)
  if decode.wraps and decode.spare:
    sink_1x1xS = (jnp.arange(decode.slots) < decode.sinks)[None, None]
    ok &= sink_1x1xS | (t_BxTx1 - s_Bx1xS < decode.context - decode.sinks)
  return ok if window is None else ok & (t_BxTx1 - s_Bx1xS < window)


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
    slot_B, rows, keep_B = jnp.mod(decode.positions, W), jnp.arange(B), commits(decode)
    new_Bx = jnp.where(
      keep_B.reshape(-1, *[1] * len(rest)), new_BxTx[:, 0].astype(buf.value.dtype), buf.value[rows, slot_B]
    )
    buf.value = buf.value.at[rows, slot_B].set(new_Bx)
    pos.value = pos.value.at[rows, slot_B].set(jnp.where(keep_B, decode.positions, pos.value[rows, slot_B]))
  return buf.value, pos.value


def in_window(pos_BxW: jax.Array, decode: Decode, window: int) -> jax.Array:
  """[B, 1, W]: the slots of a `ring` (positions pos_BxW, -1 empty) a one-token step at decode.positions reads with
  a sliding window of `window` tokens."""
  t_Bx1 = decode.positions[:, None]
  return ((pos_BxW >= 0) & (pos_BxW <= t_Bx1) & (t_Bx1 - pos_BxW < window))[:, None]


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
  variables later): __call__(empty state, update, keep) runs update(state) -> (output, new state), stores the new
  state in the rows where `keep` [B] (None: all; a step's `commits`) and returns the output; the state starts as
  `empty`."""

  @nn.compact
  def __call__(self, empty: dict[str, jax.Array], update, keep_B: jax.Array | None = None):
    slots = {k: self.variable(CACHE, k, lambda v=v: v) for k, v in empty.items()}
    out, new = update({k: s.value for k, s in slots.items()})
    for k, v in new.items():
      v = v.astype(slots[k].value.dtype)
      if keep_B is not None:
        v = jnp.where(keep_B.reshape(-1, *[1] * (v.ndim - 1)), v, slots[k].value)
      slots[k].value = v
    return out
