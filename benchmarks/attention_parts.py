"""Where one attention layer's time goes at long context: each part of a mixer jitted and timed alone (median of
--repeats calls after a warm-up), forward and forward+backward, on random inputs (batch 1). The probes behind
docs/probes/attention_scaling.md.

  python benchmarks/attention_parts.py --part=dense --lengths=256,1024,4096,16384   # XLA's [T, T] path vs blocked
  python benchmarks/attention_parts.py --part=nsa --lengths=65536                    # NSA at its paper's sizes
  python benchmarks/attention_parts.py --part=dsa --lengths=16384                    # DSA's indexer and top-k

Parts: dense, XLA's path and the blocked one (r1jax/mixers/flash.py) at query/key blocks of 256, 512 and 1024;
nsa (l=32, d=16, l'=64, n=16, w=512), its compression MLP, compressed, selection, selected and window branches as
the mixer runs them from T >= dense.FLASH_FROM; dsa, the indexer's scores over every key and with the top-k
(k=256, 2048) in query chunks of 256.
"""

import jax
import jax.numpy as jnp
from absl import flags

from r1jax import entry
from r1jax.lab import scaling
from r1jax.lab.configs import NSA_PAPER
from r1jax.mixers import nsa
from r1jax.mixers.flash import flash_attention
from r1jax.mixers.selected import selected_block_attention
from r1jax.mixers.sparse import indexer_scores, map_query_chunks

flags.DEFINE_enum("part", "nsa", ["dense", "nsa", "dsa"], "which mixer's parts")
flags.DEFINE_list("lengths", ["16384"], "sequence lengths T")
flags.DEFINE_integer("heads", 2, "heads (of 64; key/value heads = heads)")
flags.DEFINE_integer("repeats", 3, "timed calls (median) after one warm-up")
FLAGS = flags.FLAGS
K = 64


def median_sec(f, *args) -> float:
  return scaling.median_sec(f, *args, repeats=FLAGS.repeats)


def both(f, *args) -> tuple[float, float]:
  """(forward s, forward+backward s) of f's float outputs' sum of squares, differentiated in every argument."""
  loss = lambda *a: sum(jnp.sum(x**2) for x in jax.tree.leaves(f(*a)) if x.dtype == jnp.float32)  # noqa: E731
  return median_sec(jax.jit(f), *args), median_sec(jax.jit(jax.grad(loss, range(len(args)))), *args)


def dense_parts(q, k, v) -> list:
  rows = [("XLA [T, T]",) + both(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True), q, k, v)]
  for block in (256, 512, 1024):
    rows.append((f"blocked, blocks of {block}",) + both(lambda q, k, v: flash_attention(q, k, v, None, block), q, k, v))
  return rows


def nsa_parts(q, k, v) -> list:
  T, H = q.shape[1:3]
  o = nsa.NSAOptions(**NSA_PAPER)
  l, d = o.cmp_block, o.cmp_stride
  keys = jax.random.split(jax.random.key(3), 3)
  mlp = (  # the compression MLP at its initialisation scales
    jax.random.normal(keys[0], (l, K)) * 0.02,
    jax.random.normal(keys[1], (l * K, K)) * (l * K) ** -0.5,
    jax.random.normal(keys[2], (K, K)) * K**-0.5,
  )
  compress = lambda k, v: [nsa.compress_blocks(a, l, d, "mlp", mlp) for a in (k, v)]  # noqa: E731
  rows = [("compression MLP (keys and values)",) + both(compress, k, v)]
  kc, vc = jax.jit(compress)(k, v)
  M = kc.shape[1]
  rows.append(
    ("compressed branch (blocked)",) + both(lambda q, a, b: flash_attention(q, a, b, stride=d, offset=l - 1), q, kc, vc)
  )
  _, lse = flash_attention(q, kc, vc, stride=d, offset=l - 1, with_lse=True)
  C = o.query_chunk
  pad = lambda a: jnp.pad(a, [(0, 0), (0, -T % C)] + [(0, 0)] * (a.ndim - 2))  # noqa: E731

  def select(q, kc, lse):  # the mixer's selection (r1jax/mixers/nsa.py, group_probs + select_blocks)
    q_pad, lse_pad = pad(q), pad(lse)

    def chunk(start, S):
      pos = jnp.minimum(start + jnp.arange(C), T - 1)
      Ms = max(nsa.num_compressed(S, l, d), 1)
      q_C = jax.lax.dynamic_slice_in_dim(q_pad, start, C, 1).reshape(1, C, H, 1, K)
      lse_C = jax.lax.dynamic_slice_in_dim(lse_pad, start, C, 1).reshape(1, C, H, 1)
      logits = jnp.einsum("BCGRK,BMGK->BCGRM", q_C, kc[:, :Ms]) * K**-0.5
      ended = (jnp.arange(Ms)[None, :] * d + l - 1) <= pos[:, None]
      p = jnp.where(ended[None, :, None, None], jnp.exp(logits - lse_C[..., None]), 0.0).sum(3)
      ids, valid = nsa.select_blocks(jnp.pad(p, [(0, 0), (0, 0), (0, 0), (0, M - Ms)]), pos, T, o)
      return {"ids": ids, "valid": valid}

    return map_query_chunks(chunk, T, C, 8)

  picks = jax.jit(select)(q, kc, lse)
  rows.append(
    ("selection (block probabilities per chunk, top-n)", median_sec(jax.jit(select), q, kc, lse), float("nan"))
  )
  selected = lambda q, k, v: selected_block_attention(q, k, v, picks["ids"], picks["valid"], o.slc_block)  # noqa: E731
  rows.append(("selected branch (whole-block row groups)",) + both(selected, q, k, v))
  rows.append(("window branch (blocked)",) + both(lambda q, k, v: flash_attention(q, k, v, o.window), q, k, v))
  rows.append(("dense, blocked, for scale",) + both(lambda q, k, v: flash_attention(q, k, v), q, k, v))
  return rows


def dsa_parts(T: int) -> list:
  J, I, C = 4, 16, 256  # the sparse mixer's default indexer (4 heads of 16), query chunks of 256
  keys = jax.random.split(jax.random.key(0), 3)
  iq, ik, iw = (jax.random.normal(kk, s) for kk, s in zip(keys, ((1, T, J, I), (1, T, I), (1, T, J))))

  def scores(top_k, approx):
    def run(iq, ik, iw):
      def chunk(start, S):
        s = indexer_scores(*(jax.lax.dynamic_slice_in_dim(a, start, C, 1) for a in (iq, iw)), ik, "BCJI,BSI->BCJS")
        if not top_k:
          return {"sum": s.sum(-1)}
        return {"ids": (jax.lax.approx_max_k if approx else jax.lax.top_k)(s, top_k)[1]}

      return map_query_chunks(chunk, T, C)

    return median_sec(jax.jit(run), iq, ik, iw)

  rows = [("indexer scores, every key", scores(0, False), float("nan"))]
  for k in (256, 2048):
    rows.append((f"indexer scores + lax.top_k, k={k}", scores(k, False), float("nan")))
    rows.append((f"indexer scores + lax.approx_max_k, k={k}", scores(k, True), float("nan")))
  return rows


def main(argv):
  del argv
  for T in (int(t) for t in FLAGS.lengths):
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (1, T, FLAGS.heads, K)) for kk in keys)
    rows = {"dense": lambda: dense_parts(q, k, v), "nsa": lambda: nsa_parts(q, k, v), "dsa": lambda: dsa_parts(T)}
    print(f"\n| {FLAGS.part}: part (T={T}, {FLAGS.heads} heads of {K}) | fwd s | fwd+bwd s |\n|---|---|---|")
    for name, fwd, bwd in rows[FLAGS.part]():
      print(f"| {name} | {fwd:.3f} | {bwd:.3f} |", flush=True)


if __name__ == "__main__":
  entry.run(main)
