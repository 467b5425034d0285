"""Block top-k sparse attention: NSA's selection branch (Yuan et al. 2025, 'Native Sparse Attention') and MoBA (Lu
et al. 2025): keys in blocks of b; each query scores the earlier blocks by its query . the block's mean-pooled key
(MoBA's gate; averaged over the heads of a key/value group: NSA's GQA sharing, one block set per group) and attends
to its top-n blocks plus its own (causally masked) block. Cost O(T*(n+1)*b) for the attention and O(T^2/b) for the
block scores. `score_by="block"` scores with the query block's mean query instead (one set per b queries, a cheaper
gather; our earlier recipe, kept as an ablation).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.mixers import selected_kernel
from r1jax.mixers.dense import project_out, project_qkv
from r1jax.mixers.sparse import dense_probs
from r1jax.registry import register_mixer, wants_diagnostics

SCORE_BY = ("token", "block")


@dataclasses.dataclass(frozen=True)
class BlockSparseOptions:
  block_size: int = 16  # b, keys per block (NSA: 64)
  top_blocks: int = 2  # n earlier blocks attended per query, besides its own (NSA: 16); budget (n+1)*b keys
  score_by: str = "token"  # token: each query picks its blocks (MoBA, NSA) | block: the query block's mean query
  #                          picks one set for its b queries (an ablation)
  sample_temperature: float = 0.0  # > 0: training picks are a Gumbel-top-n sample of softmax(score / sqrt(K) / tau)
  #                                  (exploration, as r1jax.mixers.sparse); eval stays greedy | 0: greedy
  diagnostics: bool = True  # in a diagnostics pass (registry.DIAGNOSTICS), the dense attention mass in the blocks
  implementation: str = "auto"  # xla (r1jax/mixers/selected.py) | pallas (the block-sparse kernels,
  #                               r1jax/mixers/selected_kernel.py; interpreted off a GPU) | auto (pallas on a GPU where
  #                               its sizes tile, else xla)

  def __post_init__(self):
    if self.block_size < 1 or self.top_blocks < 0:
      raise ConfigError(
        f"block_size={self.block_size}, top_blocks={self.top_blocks} are invalid. "
        "Fix: use block_size >= 1 and top_blocks >= 0"
      )
    if self.score_by not in SCORE_BY:
      raise ConfigError(f"score_by={self.score_by!r} is unknown. Fix: use one of {SCORE_BY}")
    if self.sample_temperature < 0:
      raise ConfigError(f"sample_temperature={self.sample_temperature} is invalid. Fix: use 0 (greedy) or more")
    selected_kernel.check_implementation(self.implementation, "block_sparse.implementation")


def select_blocks(
  q_BxTxHxK: jax.Array,
  k_BxTxGxK: jax.Array,
  b: int,
  n: int,
  noise: jax.Array | None = None,
  tau: float = 1.0,
  per_token: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """Top-n earlier blocks per (query, key/value group) by query . mean key, averaged over the group's heads, plus
  the own block last; per query block by its mean query if not `per_token`; with a `noise` key, a Gumbel-top-n sample
  of softmax(score / sqrt(K) / tau) instead.

  Returns:
    block ids [B, G, U, n'+1] for U query units (Q*b tokens, padded, or Q = ceil(T/b) blocks; n' = min(n, Q-1)) and
    their validity (an earlier block that does not exist yet for an early query is invalid).
  """
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxTxGxK.shape[2]
  Q = -(-T // b)
  u = 1 if per_token else b  # queries per unit
  pad = [(0, 0), (0, Q * b - T), (0, 0), (0, 0)]
  # Zero padding only enters the last block's means; that block is never an *earlier* block of anyone.
  qm_BxUxGxK = jnp.pad(q_BxTxHxK, pad).reshape(B, Q * b // u, u, G, H // G, K).mean((2, 4))
  km_BxQxGxK = jnp.pad(k_BxTxGxK, pad).reshape(B, Q, b, G, K).mean(2)
  own_U = jnp.arange(Q * b // u) * u // b
  own_BxGxUx1 = jnp.broadcast_to(own_U[None, None, :, None], (B, G, len(own_U), 1))
  n = min(n, Q - 1)
  if n == 0:
    return own_BxGxUx1, jnp.ones_like(own_BxGxUx1, bool)
  s_BxGxUxQ = jnp.einsum("BUGK,BPGK->BGUP", qm_BxUxGxK, km_BxQxGxK, preferred_element_type=jnp.float32)
  if noise is not None:
    s_BxGxUxQ = s_BxGxUxQ * K**-0.5 / tau + jax.random.gumbel(noise, s_BxGxUxQ.shape)
  earlier_UxQ = jnp.arange(Q)[None, :] < own_U[:, None]
  vals, ids = jax.lax.top_k(jnp.where(earlier_UxQ[None, None], s_BxGxUxQ, -jnp.inf), n)
  ids = jnp.concatenate([ids, own_BxGxUx1], -1)
  valid = jnp.concatenate([jnp.isfinite(vals), jnp.ones_like(own_BxGxUx1, bool)], -1)
  return ids, valid


def block_sparse_attention(
  q_BxTxHxK: jax.Array,
  k_BxTxGxK: jax.Array,
  v_BxTxGxK: jax.Array,
  b: int,
  n: int,
  noise: jax.Array | None = None,
  tau: float = 1.0,
  per_token: bool = True,
  implementation: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Causal attention of each query (or query block) over its selected key blocks (select_blocks), through XLA
  (selected_kernel.attend: small blocks gathered per query, larger ones by whole-block matmuls, selected.py)
  or the block-sparse kernels (selected_kernel.py), as `implementation` says.

  Returns:
    output [B, T, H, K], block ids [B, G, U, n'+1] and validity (see select_blocks).
  """
  B, T, H, K = q_BxTxHxK.shape
  Q = -(-T // b)
  ids_BxGxUxJ, valid_BxGxUxJ = select_blocks(q_BxTxHxK, k_BxTxGxK, b, n, noise, tau, per_token)
  u = Q * b // ids_BxGxUxJ.shape[2]  # queries per unit
  per_query = lambda a: jnp.repeat(a, u, 2)[:, :, :T].transpose(0, 2, 1, 3)  # noqa: E731 [B, T, G, n'+1]
  o_BxTxHxK = selected_kernel.attend(
    q_BxTxHxK,
    k_BxTxGxK,
    v_BxTxGxK,
    per_query(ids_BxGxUxJ),
    per_query(valid_BxGxUxJ),
    b,
    implementation,
    "block_sparse.implementation",
  )
  return o_BxTxHxK, ids_BxGxUxJ, valid_BxGxUxJ


def selected_mass(
  q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, ids_BxGxUxJ: jax.Array, valid_BxGxUxJ: jax.Array, b: int
) -> jax.Array:
  """Mean dense attention mass (averaged over heads) that falls in each query's selected blocks (diagnostic)."""
  B, T = q_BxTxHxK.shape[:2]
  Q, U = -(-T // b), ids_BxGxUxJ.shape[2]
  p_BxTxS = dense_probs(q_BxTxHxK, k_BxTxGxK, jnp.arange(T))
  p_BxTxQ = jnp.pad(p_BxTxS, [(0, 0), (0, 0), (0, Q * b - T)]).reshape(B, T, Q, b).sum(-1)
  # A block counts as selected for query t if any group selected it for t's unit (exact when G = 1).
  chosen_BxUxQ = jnp.zeros((B, U, Q), bool)
  for g in range(ids_BxGxUxJ.shape[1]):
    one_hot = jax.nn.one_hot(ids_BxGxUxJ[:, g], Q, dtype=bool) & valid_BxGxUxJ[:, g, :, :, None]
    chosen_BxUxQ = chosen_BxUxQ | one_hot.any(2)
  chosen_BxTxQ = jnp.repeat(chosen_BxUxQ, Q * b // U, axis=1)[:, :T]
  return jnp.mean(jnp.sum(jnp.where(chosen_BxTxQ, p_BxTxQ, 0.0), -1))


@register_mixer("block_sparse", BlockSparseOptions)
class BlockSparseAttention(nn.Module):
  """MoBA / NSA-style block selection attention (selection branch only; no compressed or sliding branch)."""

  positional_cache = True  # its caches are indexed by position (r1jax/inference/decoding.py: rollback_free)

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: BlockSparseOptions

  @staticmethod
  def not_decodable(opts: BlockSparseOptions) -> str:
    return (
      "score_by='block' picks with the mean query of a query block, later queries included"
      if opts.score_by == "block"
      else ""
    )

  @staticmethod
  def decode_window(opts: BlockSparseOptions) -> str:
    return "keeps every block (the blocks it picks from are the whole past): no window over its cache"

  def _step(self, x_BxTxD: jax.Array, decode: decoding.Decode) -> tuple[jax.Array, dict]:
    """One decoding step: the query scores the cached blocks before its own by their mean keys (complete blocks),
    then attends to the top n and its own block, as the full forward's query at this position does."""
    o, b = self.opts, self.opts.block_size
    B, S = x_BxTxD.shape[0], decode.max_len
    Q = -(-S // b)
    q_Bx1xHxK, k_Bx1xGxK, v_Bx1xGxK = project_qkv(self, x_BxTxD, self.cfg, positions=decode.token_positions(1))
    k_BxSxGxK, v_BxSxGxK = (decoding.cached(self, n, a, decode) for n, a in (("k", k_Bx1xGxK), ("v", v_Bx1xGxK)))
    H, K = q_Bx1xHxK.shape[2:]
    G = k_BxSxGxK.shape[2]
    q_BxGxRxK = q_Bx1xHxK[:, 0].reshape(B, G, H // G, K)
    km_BxQxGxK = jnp.pad(k_BxSxGxK, [(0, 0), (0, Q * b - S), (0, 0), (0, 0)]).reshape(B, Q, b, G, K).mean(2)
    own_B = decode.positions // b
    ids_BxGxJ, valid_BxGxJ = own_B[:, None, None] * jnp.ones((1, G, 1), jnp.int32), jnp.ones((B, G, 1), bool)
    n = min(o.top_blocks, Q - 1)
    if n:
      s_BxGxQ = jnp.einsum("BGK,BPGK->BGP", q_BxGxRxK.mean(2), km_BxQxGxK, preferred_element_type=jnp.float32)
      earlier_BxQ = jnp.arange(Q)[None, :] < own_B[:, None]
      vals, ids = jax.lax.top_k(jnp.where(earlier_BxQ[:, None], s_BxGxQ, -jnp.inf), n)
      ids_BxGxJ = jnp.concatenate([ids, ids_BxGxJ], -1)
      valid_BxGxJ = jnp.concatenate([jnp.isfinite(vals), valid_BxGxJ], -1)
    tok_BxGxJxb = ids_BxGxJ[..., None] * b + jnp.arange(b)[None, None, None, :]
    ok_BxGxN = (valid_BxGxJ[..., None] & (tok_BxGxJxb <= decode.positions[:, None, None, None])).reshape(B, G, -1)
    tok_BxGxN = jnp.minimum(tok_BxGxJxb.reshape(B, G, -1), S - 1)
    take = jax.vmap(jax.vmap(lambda a_SxK, i_N: a_SxK[i_N], (1, 0)), (0, 0))  # over B, G -> [B, G, N, K]
    k_BxGxNxK, v_BxGxNxK = take(k_BxSxGxK, tok_BxGxN), take(v_BxSxGxK, tok_BxGxN)
    logits = jnp.einsum("BGRK,BGNK->BGRN", q_BxGxRxK, k_BxGxNxK, preferred_element_type=jnp.float32) * K**-0.5
    probs = jax.nn.softmax(jnp.where(ok_BxGxN[:, :, None], logits, -jnp.inf), -1).astype(v_BxSxGxK.dtype)
    o_BxGxRxK = jnp.einsum("BGRN,BGNK->BGRK", probs, v_BxGxNxK)
    return project_out(self, o_BxGxRxK.reshape(B, 1, H, K), self.cfg), {}

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, *, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
    decode = decode.whole() if decode is not None else None  # see decode_window
    if decoding.stepping(decode):
      return self._step(x_BxTxD, decode)
    o = self.opts
    q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = project_qkv(self, x_BxTxD, self.cfg)
    if decode is not None:  # prefill: cache the prompt's keys and values
      decoding.cached(self, "k", k_BxTxGxK, decode)
      decoding.cached(self, "v", v_BxTxGxK, decode)
    noise = self.make_rng("dropout") if o.sample_temperature > 0 and not deterministic else None
    out_BxTxHxK, ids, valid = block_sparse_attention(
      q_BxTxHxK,
      k_BxTxGxK,
      v_BxTxGxK,
      o.block_size,
      o.top_blocks,
      noise,
      o.sample_temperature or 1.0,
      o.score_by == "token",
      o.implementation,
    )
    aux = {}
    if o.diagnostics and wants_diagnostics(self):  # a dense pass: never in a timed or training pass
      aux["mass"] = selected_mass(q_BxTxHxK, k_BxTxGxK, ids, valid, o.block_size)
    return project_out(self, out_BxTxHxK, self.cfg), aux
