"""Dense causal multi-head attention (Vaswani et al. 2017) with RoPE and grouped-query heads: the baseline mixer."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import layers, reference, sharding
from r1jax.errors import ConfigError
from r1jax.inference import decoding
from r1jax.mixers.flash import flash_attention
from r1jax.registry import register_mixer

IMPLS = ("auto", "xla", "flash", "cudnn", "naive")
# Without cuDNN, auto takes the blocked O(T)-memory path (r1jax/mixers/flash.py) from this length on: on the 2-core
# CPU it was 3.8x faster than XLA's [T, T] path in forward at 16k and 2.2x at 1k (benchmarks/attention_scaling.py);
# shorter sequences (every trained model here) keep XLA's path, so trained results stay as committed.
FLASH_FROM = 1024


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
  impl: str = "auto"  # auto: cuDNN on GPU where shapes/dtypes allow, else flash from T >= FLASH_FROM, else xla |
  #                     xla ([T, T] scores) | flash (blocked online softmax, O(T) memory) | cudnn | naive
  qkv_bias: bool = False  # biases on q, k, v (Qwen); with RoPE, b_q.R(s-t).b_k is a content-free positional score

  def __post_init__(self):
    if self.impl not in IMPLS:
      raise ConfigError(f"impl={self.impl!r} is unknown. Fix: use one of {IMPLS}")


def resolve_impl(impl: str, dtype: jnp.dtype, head_dim: int, length: int = 0) -> str:
  """Picks the backend for `impl='auto'` on the platform traced for (sharding.platform()): cuDNN needs a GPU with
  cuDNN installed, 16-bit inputs and head_dim % 8 == 0, <= 128; else, on a CPU, the blocked path from `length` >=
  FLASH_FROM; else XLA's."""
  if impl != "auto":
    return impl
  platform = sharding.platform()
  cudnn_ok = platform == "gpu" and dtype in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
  if cudnn_ok and cudnn_installed():
    return "cudnn"
  return "flash" if length >= FLASH_FROM and platform == "cpu" else "xla"


@functools.cache
def cudnn_installed() -> bool:
  """Whether cuDNN's library loads (JAX's CUDA packages bring it; a compile-only install may lack it)."""
  try:
    from jax._src.lib import cuda_versions

    return cuda_versions is not None and cuda_versions.cudnn_get_version() > 0
  except (ImportError, RuntimeError):
    return False


def causal_attention(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, impl: str) -> jax.Array:
  """Causal softmax attention through `jax.nn.dot_product_attention`, the blocked path, or the naive reference."""
  impl = resolve_impl(impl, q_BxTxHxK.dtype, q_BxTxHxK.shape[-1], q_BxTxHxK.shape[1])
  if impl == "naive":
    return reference.attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK).astype(q_BxTxHxK.dtype)
  if impl == "flash":
    return flash_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK)
  return jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, is_causal=True, implementation=impl)


def project_kv(
  mod: nn.Module, x_BxTxD: jax.Array, cfg, suffix: str = "", bias: bool = False, positions=None
) -> tuple[jax.Array, jax.Array]:
  """Key and value projections `wk<suffix>`, `wv<suffix>` (optionally with zero-initialised biases `bk`, `bv`),
  RoPE on the keys at `positions` ([T] or [B, T]; None: 0..T-1); `suffix` gives a mixer further key/value sets (NSA's
  per-branch keys and values)."""
  D, H = cfg.d_model, cfg.num_heads
  G, K = cfg.num_kv_heads or H, D // H
  dt = layers.dtype(cfg.dtype)
  x = x_BxTxD.astype(dt)
  axes = ("act_batch", "act_length", "act_heads", "act_kv")
  kv = []
  for n in ("k", "v"):
    w_DxGxK = layers.param(mod, f"w{n}{suffix}", (D, G, K), ("embed", "heads", "kv"), cfg.init_std, cfg.param_dtype)
    kv.append(layers.constrain(jnp.einsum("BTD,DGK->BTGK", x, w_DxGxK.astype(dt)), axes))
  if bias:  # zero-initialised, [1, 1, heads, K]
    kv = [
      a + layers.param(mod, f"b{n}{suffix}", (G, K), ("heads", "kv"), 0.0, cfg.param_dtype).astype(dt)[None, None]
      for n, a in zip("kv", kv)
    ]
  positions = np.arange(x.shape[1]) if positions is None else positions
  return layers.rope(kv[0], positions, cfg.rope_base), kv[1]


def project_qkv(
  mod: nn.Module, x_BxTxD: jax.Array, cfg, bias: bool = False, positions=None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Query, key and value projections (optionally with biases) and RoPE on q and k at `positions` ([T] or [B, T];
  None: 0..T-1); shared by attention mixers."""
  D, H = cfg.d_model, cfg.num_heads
  K = D // H
  wq_DxHxK = layers.param(mod, "wq", (D, H, K), ("embed", "heads", "kv"), cfg.init_std, cfg.param_dtype)
  dt = layers.dtype(cfg.dtype)
  x = x_BxTxD.astype(dt)
  q_BxTxHxK = layers.constrain(
    jnp.einsum("BTD,DHK->BTHK", x, wq_DxHxK.astype(dt)), ("act_batch", "act_length", "act_heads", "act_kv")
  )
  k_BxTxGxK, v_BxTxGxK = project_kv(mod, x_BxTxD, cfg, bias=bias, positions=positions)
  if bias:  # zero-initialised, [1, 1, heads, K]
    q_BxTxHxK = (
      q_BxTxHxK + layers.param(mod, "bq", (H, K), ("heads", "kv"), 0.0, cfg.param_dtype).astype(dt)[None, None]
    )
  positions = np.arange(x.shape[1]) if positions is None else positions
  return layers.rope(q_BxTxHxK, positions, cfg.rope_base), k_BxTxGxK, v_BxTxGxK


def project_out(mod: nn.Module, o_BxTxHxK: jax.Array, cfg) -> jax.Array:
  """Output projection back to the residual width."""
  H, K = o_BxTxHxK.shape[-2:]
  wo_HxKxD = layers.param(
    mod, "wo", (H, K, cfg.d_model), ("heads", "kv", "embed"), layers.out_std(cfg), cfg.param_dtype
  )
  y_BxTxD = jnp.einsum("BTHK,HKD->BTD", o_BxTxHxK, wo_HxKxD.astype(o_BxTxHxK.dtype))
  return layers.constrain(y_BxTxD, ("act_batch", "act_length", "act_embed"))


@register_mixer("attention", AttentionOptions)
class Attention(nn.Module):
  """Dense causal attention; O(T^2) time, O(T) memory with the cuDNN and flash paths, O(T^2) with XLA's."""

  positional_cache = True  # its caches are indexed by position (r1jax/inference/decoding.py: rollback_free)
  multi_token_step = True  # a step takes several tokens at once (a causal mask over the cache)

  cfg: "ModelConfig"  # noqa: F821 (r1jax.config.ModelConfig)
  opts: AttentionOptions

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, *, deterministic: bool, decode: decoding.Decode | None = None
  ) -> tuple[jax.Array, dict]:
    del deterministic  # no attention dropout
    T = x_BxTxD.shape[1]
    q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = project_qkv(
      self, x_BxTxD, self.cfg, self.opts.qkv_bias, decoding.positions_of(decode, T)
    )
    if decode is not None:  # the KV cache: [B, max_len, G, K] keys and values
      k_BxSxGxK = decoding.cached(self, "k", k_BxTxGxK, decode, self.cfg.rope_base)
      v_BxSxGxK = decoding.cached(self, "v", v_BxTxGxK, decode)
    if decoding.stepping(decode):
      o_BxTxHxK = decoding.attend(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, decoding.causal_ok(decode, T))
    else:
      o_BxTxHxK = causal_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, self.opts.impl)
    return project_out(self, o_BxTxHxK, self.cfg), {}
