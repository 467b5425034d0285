"""Block top-k sparse attention: NSA's selection branch (Yuan et al. 2025, 'Native Sparse Attention'), as in MoBA
(Lu et al. 2025): keys in blocks of b, each query block scores the earlier blocks by their mean-pooled keys, and
attends to its top-n blocks plus its own (causally masked) block. Cost O(T*(n+1)*b) for the attention and
O((T/b)^2) for the block scores; the selection is shared by the heads of a key/value group (NSA's GQA sharing).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax.attention.dense import project_out, project_qkv
from r1jax.attention.sparse import dense_probs
from r1jax.registry import ConfigError, register_mixer, wants_diagnostics


@dataclasses.dataclass(frozen=True)
class BlockSparseOptions:
  block_size: int = 16  # b, keys per block (NSA: 64)
  top_blocks: int = 2  # n earlier blocks attended per query block, besides its own (NSA: 16); budget (n+1)*b keys
  sample_temperature: float = 0.0  # > 0: training picks are a Gumbel-top-n sample of softmax(score / sqrt(K) / tau)
  #                                  (exploration, as r1jax.attention.sparse); eval stays greedy | 0: greedy
  diagnostics: bool = True  # in a diagnostics pass (registry.DIAGNOSTICS), the dense attention mass in the blocks

  def __post_init__(self):
    if self.block_size < 1 or self.top_blocks < 0:
      raise ConfigError(f"block_size={self.block_size}, top_blocks={self.top_blocks} are invalid. "
                        "Fix: use block_size >= 1 and top_blocks >= 0")
    if self.sample_temperature < 0:
      raise ConfigError(f"sample_temperature={self.sample_temperature} is invalid. Fix: use 0 (greedy) or more")


def select_blocks(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, b: int, n: int, noise: jax.Array | None = None,
                  tau: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Top-n earlier blocks per (query block, key/value group) by mean query . mean key, plus the own block last;
  with a `noise` key, a Gumbel-top-n sample of softmax(score / sqrt(K) / tau) instead.

  Returns:
    block ids [B, G, Q, n'+1] (Q = ceil(T/b) query blocks, n' = min(n, Q-1)) and their validity.
  """
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxTxGxK.shape[2]
  Q = -(-T // b)
  pad = [(0, 0), (0, Q * b - T), (0, 0), (0, 0)]
  # Zero padding only enters the last block's means; that block is never an *earlier* block of anyone.
  qm_BxQxGxK = jnp.pad(q_BxTxHxK, pad).reshape(B, Q, b, G, H // G, K).mean((2, 4))
  km_BxQxGxK = jnp.pad(k_BxTxGxK, pad).reshape(B, Q, b, G, K).mean(2)
  own_Q = jnp.arange(Q)
  own_BxGxQx1 = jnp.broadcast_to(own_Q[None, None, :, None], (B, G, Q, 1))
  n = min(n, Q - 1)
  if n == 0:
    return own_BxGxQx1, jnp.ones_like(own_BxGxQx1, bool)
  s_BxGxQxQ = jnp.einsum("BQGK,BPGK->BGQP", qm_BxQxGxK, km_BxQxGxK, preferred_element_type=jnp.float32)
  if noise is not None:
    s_BxGxQxQ = s_BxGxQxQ * K ** -0.5 / tau + jax.random.gumbel(noise, s_BxGxQxQ.shape)
  earlier_QxQ = own_Q[None, :] < own_Q[:, None]
  vals, ids = jax.lax.top_k(jnp.where(earlier_QxQ[None, None], s_BxGxQxQ, -jnp.inf), n)
  ids = jnp.concatenate([ids, own_BxGxQx1], -1)
  valid = jnp.concatenate([jnp.isfinite(vals), jnp.ones_like(own_BxGxQx1, bool)], -1)
  return ids, valid


def block_sparse_attention(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, b: int,
                           n: int, noise: jax.Array | None = None,
                           tau: float = 1.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Causal attention of each query block over its selected key blocks (sampled with a `noise` key: select_blocks).

  Returns:
    output [B, T, H, K], block ids [B, G, Q, n'+1] and validity (see select_blocks).
  """
  B, T, H, K = q_BxTxHxK.shape
  G, R = k_BxTxGxK.shape[2], H // k_BxTxGxK.shape[2]
  Q = -(-T // b)
  ids_BxGxQxJ, valid_BxGxQxJ = select_blocks(q_BxTxHxK, k_BxTxGxK, b, n, noise, tau)
  pad = [(0, 0), (0, Q * b - T), (0, 0), (0, 0)]
  q_BxGxQxbxRxK = jnp.pad(q_BxTxHxK, pad).reshape(B, Q, b, G, R, K).transpose(0, 3, 1, 2, 4, 5)
  kv = [jnp.pad(a, pad).reshape(B, Q, b, G, K).transpose(0, 3, 1, 2, 4) for a in (k_BxTxGxK, v_BxTxGxK)]
  gather = jax.vmap(jax.vmap(lambda a_QxbxK, i_QxJ: a_QxbxK[i_QxJ]))  # over B and G -> [B, G, Q, J, b, K]
  k_BxGxQxJxbxK, v_BxGxQxJxbxK = (gather(a, ids_BxGxQxJ) for a in kv)
  logits = jnp.einsum("BGQtRK,BGQJsK->BGQtRJs", q_BxGxQxbxRxK, k_BxGxQxJxbxK,
                      preferred_element_type=jnp.float32) * K ** -0.5
  qpos_Qxb = jnp.arange(Q * b).reshape(Q, b)
  kpos_BxGxQxJxb = ids_BxGxQxJ[..., None] * b + jnp.arange(b)[None, None, None, None, :]
  ok = valid_BxGxQxJ[:, :, :, None, :, None] & (kpos_BxGxQxJxb[:, :, :, None] <= qpos_Qxb[None, None, :, :, None, None])
  logits = jnp.where(ok[:, :, :, :, None], logits, -jnp.inf)  # [B, G, Q, t, R, J, s]
  shape = logits.shape
  probs = jax.nn.softmax(logits.reshape(*shape[:-2], -1), -1).reshape(shape)
  o = jnp.einsum("BGQtRJs,BGQJsK->BGQtRK", probs.astype(v_BxTxGxK.dtype), v_BxGxQxJxbxK)
  o_BxTxHxK = o.transpose(0, 2, 3, 1, 4, 5).reshape(B, Q * b, H, K)[:, :T]
  return o_BxTxHxK, ids_BxGxQxJ, valid_BxGxQxJ


def selected_mass(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, ids_BxGxQxJ: jax.Array, valid_BxGxQxJ: jax.Array,
                  b: int) -> jax.Array:
  """Mean dense attention mass (averaged over heads) that falls in each query's selected blocks (diagnostic)."""
  B, T = q_BxTxHxK.shape[:2]
  Q = ids_BxGxQxJ.shape[2]
  p_BxTxS = dense_probs(q_BxTxHxK, k_BxTxGxK, jnp.arange(T))
  p_BxTxQ = jnp.pad(p_BxTxS, [(0, 0), (0, 0), (0, Q * b - T)]).reshape(B, T, Q, b).sum(-1)
  # A block counts as selected for query t if any group selected it for t's query block (exact when G = 1).
  chosen_BxQxQ = jnp.zeros((B, Q, Q), bool)
  for g in range(ids_BxGxQxJ.shape[1]):
    one_hot = jax.nn.one_hot(ids_BxGxQxJ[:, g], Q, dtype=bool) & valid_BxGxQxJ[:, g, :, :, None]
    chosen_BxQxQ = chosen_BxQxQ | one_hot.any(2)
  chosen_BxTxQ = jnp.repeat(chosen_BxQxQ, b, axis=1)[:, :T]
  return jnp.mean(jnp.sum(jnp.where(chosen_BxTxQ, p_BxTxQ, 0.0), -1))


@register_mixer("block_sparse", BlockSparseOptions)
class BlockSparseAttention(nn.Module):
  """NSA-style block selection attention (selection branch only; no compressed or sliding branch)."""

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: BlockSparseOptions

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, *, deterministic: bool) -> tuple[jax.Array, dict]:
    o = self.opts
    q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = project_qkv(self, x_BxTxD, self.cfg)
    noise = self.make_rng("dropout") if o.sample_temperature > 0 and not deterministic else None
    out_BxTxHxK, ids, valid = block_sparse_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, o.block_size, o.top_blocks,
                                                     noise, o.sample_temperature or 1.0)
    aux = {}
    if o.diagnostics and wants_diagnostics(self):  # a dense pass: never in a timed or training pass
      aux["mass"] = selected_mass(q_BxTxHxK, k_BxTxGxK, ids, valid, o.block_size)
    return project_out(self, out_BxTxHxK, self.cfg), aux
