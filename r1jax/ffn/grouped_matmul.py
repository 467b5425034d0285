"""Grouped matmul for GPU in Pallas (Triton): rows sorted by expert into blocks of b rows, each block multiplied by
its own expert's weights, with no copy of the weights per block and no expert computed for rows it was not given.

The layout is MegaBlocks' (Gale et al. 2023, block-sparse MoE): `moe.sort_by_expert` pads each expert's group of
routed copies to a multiple of b rows, so every block of rows belongs to one expert (`expert_B`). Three kernels:
- `y = x @ W[e]` per block (forward; grid over row blocks x output tiles, the input dimension looped over);
- `dx = dy @ W[e]^T` per block (the same kernel on the transposed weights);
- `dW[e] = sum over e's blocks of x_b^T dy_b` (grid over experts x weight tiles, looping over that expert's blocks,
  which are contiguous), so the weight gradient reads each row once.
XLA's GPU lowering of `jax.lax.ragged_dot` instead computes every expert for every row (issue 43: 8x the FLOPs at 8
experts). The work a kernel does is fixed by its operand shapes (`kernel_flops`), which is how a compiled
program's FLOPs are counted (XLA's cost analysis counts a Pallas call as zero). Off a GPU, `interpret=True` runs the
same kernels through Pallas's interpreter (the tests check them against an einsum on the CPU).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from r1jax import sharding

WARPS = 4  # Triton warps per program
TILE = 64  # rows x columns of a weight tile the kernels load (powers of 2, as Triton needs)
MIN_BLOCK = 16  # Triton's dot needs at least 16 rows
NAMES = ("r1jax_gmm", "r1jax_gmm_dw")  # the Pallas calls' names, as they appear in compiled HLO


def supported(d_in: int, d_out: int) -> bool:
  """Whether the kernels tile these widths (multiples of TILE); otherwise the caller takes another path."""
  return d_in % TILE == 0 and d_out % TILE == 0


def kernel_flops(name: str, operand_shapes: list[tuple[int, ...]]) -> float:
  """The multiply-add work (2 FLOPs each) of one call of a kernel of this module, from its operands' shapes (as in
  compiled HLO: gmm takes (expert_B, x[R, I], w[E, I, O]); gmm_dw takes (start_E, count_E, x[R, I], g[R, O]))."""
  if name == NAMES[0]:
    (_, (rows, d_in), (_, _, d_out)) = operand_shapes[:3]
  else:
    (_, _, (rows, d_in), (_, d_out)) = operand_shapes[:4]
  return 2.0 * rows * d_in * d_out


def _gmm_kernel(expert_ref, x_ref, w_ref, o_ref, *, block: int, d_in: int):
  i, j = pl.program_id(0), pl.program_id(1)
  e = expert_ref[i]

  def step(k, acc):
    x = x_ref[pl.ds(i * block, block), pl.ds(k * TILE, TILE)]
    w = w_ref[e, pl.ds(k * TILE, TILE), pl.ds(j * TILE, TILE)]
    return acc + jnp.dot(x, w, preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, d_in // TILE, step, jnp.zeros((block, TILE), jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def _gmm(x_RxI, w_ExIxO, expert_B, interpret: bool) -> jax.Array:
  R, I = x_RxI.shape
  O = w_ExIxO.shape[2]
  block = R // expert_B.shape[0]
  return pl.pallas_call(
    functools.partial(_gmm_kernel, block=block, d_in=I),
    out_shape=sharding.shaped_like(x_RxI, (R, O), x_RxI.dtype),
    grid=(expert_B.shape[0], O // TILE),
    in_specs=[pl.no_block_spec] * 3,
    out_specs=pl.BlockSpec((block, TILE), lambda i, j: (i, j)),
    interpret=interpret,
    compiler_params=pl_triton.CompilerParams(num_warps=WARPS, num_stages=2),  # Triton, not Mosaic GPU
    name=NAMES[0],
  )(expert_B, x_RxI, w_ExIxO)


def _dw_kernel(start_ref, count_ref, x_ref, g_ref, o_ref, *, block: int):
  e, k, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  first = start_ref[e]

  def step(t, acc):
    rows = pl.ds((first + t) * block, block)
    x = x_ref[rows, pl.ds(k * TILE, TILE)]
    g = g_ref[rows, pl.ds(j * TILE, TILE)]
    return acc + jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, count_ref[e], step, jnp.zeros((TILE, TILE), jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def _gmm_dw(x_RxI, g_RxO, expert_B, num_experts: int, dtype, interpret: bool) -> jax.Array:
  R, I = x_RxI.shape
  O = g_RxO.shape[1]
  block = R // expert_B.shape[0]
  count_E = jnp.bincount(expert_B, length=num_experts).astype(jnp.int32)
  start_E = (jnp.cumsum(count_E) - count_E).astype(jnp.int32)  # an expert's blocks are contiguous (sorted)
  return pl.pallas_call(
    functools.partial(_dw_kernel, block=block),
    out_shape=sharding.shaped_like(x_RxI, (num_experts, I, O), dtype),
    grid=(num_experts, I // TILE, O // TILE),
    in_specs=[pl.no_block_spec] * 4,
    out_specs=pl.BlockSpec((None, TILE, TILE), lambda e, k, j: (e, k, j)),
    interpret=interpret,
    compiler_params=pl_triton.CompilerParams(num_warps=WARPS, num_stages=2),
    name=NAMES[1],
  )(start_E, count_E, x_RxI, g_RxO)


def grouped_matmul(x_RxI: jax.Array, w_ExIxO: jax.Array, expert_B: jax.Array, interpret: bool = False) -> jax.Array:
  """Row block b of x (R / len(expert_B) rows each) times w[expert_B[b]]: [R, O]. Every block is computed, padding
  rows too (they are zero in moe's layout), and nothing else; I and O multiples of TILE, blocks of >= MIN_BLOCK
  rows, expert_B non-decreasing (the sorted layout; the weight gradient relies on it).

  Inside shard_map the operands may vary over different mesh axes (tokens over the batch, weights over the tensor
  axis): each is cast to vary over all of them first, so that the weights' gradient is summed over the devices
  that shared them (pcast's transpose) outside the kernels."""
  x_RxI, w_ExIxO, expert_B = sharding.vary_together(x_RxI, w_ExIxO, expert_B)
  return _grouped_matmul(x_RxI, w_ExIxO, expert_B, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _grouped_matmul(x_RxI: jax.Array, w_ExIxO: jax.Array, expert_B: jax.Array, interpret: bool) -> jax.Array:
  return _gmm(x_RxI, w_ExIxO.astype(x_RxI.dtype), expert_B, interpret)


def _fwd(x_RxI, w_ExIxO, expert_B, interpret):
  return _grouped_matmul(x_RxI, w_ExIxO, expert_B, interpret), (x_RxI, w_ExIxO, expert_B)


def _bwd(interpret, res, g_RxO):
  x_RxI, w_ExIxO, expert_B = res
  g = g_RxO.astype(x_RxI.dtype)
  dx = _gmm(g, jnp.swapaxes(w_ExIxO, 1, 2).astype(x_RxI.dtype), expert_B, interpret)
  dw = _gmm_dw(x_RxI, g, expert_B, w_ExIxO.shape[0], w_ExIxO.dtype, interpret)
  return dx, dw, None


_grouped_matmul.defvjp(_fwd, _bwd)
