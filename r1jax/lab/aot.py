"""Compiling for a GPU on a machine without one (deviceless ahead-of-time compilation), and what the compiled
program says: memory per device, FLOPs, the kernels XLA chose and the collectives on a multi-GPU mesh.

JAX's CUDA plugin (`pip install -e .[gpu-aot]`) compiles for a GPU described by XLA's GPU target spec (compute
capability, SMs, memory; r1jax/assets/gpu_specs/, from OpenXLA): `jax.experimental.topologies.get_topology_desc(
platform="cuda", target_config=spec, topology="1x1xN")` gives compile-only devices that meshes, shardings and
`.lower(...).compile()` accept (jax's tests/deviceless_aot_test.py takes this route). The process's runtime stays
the CPU (JAX_PLATFORMS=cpu; `use_cpu_runtime`), and the automatic kernel choices key on the mesh's platform
(`sharding.platform()`), so the program compiled is the one a GPU would run.

What it gives: `memory_analysis()` per device; the HLO after XLA's GPU passes; FLOPs from XLA's HLO cost analysis
of that module run through the CPU client (its `cost_analysis()` is not implemented for this route), to which the
custom calls' work is added from their operand shapes (the cost analysis counts cuDNN attention and Pallas kernels
as zero). What it cannot give: time. cuDNN's graphs are not built and GEMM tiles are not autotuned, so nothing
compiled this way may be timed (benchmarks/gpu_check.py times on a GPU).
"""

import collections
import os
import re
from importlib import resources, util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax import sharding
from r1jax.config import ModelConfig, OptimConfig
from r1jax.errors import ConfigError
from r1jax.ffn import grouped_matmul
from r1jax.inference import decoding
from r1jax.mixers import selected_kernel
from r1jax.model import Transformer
from r1jax.train import compile_train_step, initial_state, make_optimizer, static_memory_bytes

# target -> (XLA GPU spec file under r1jax/assets/gpu_specs/, device memory in bytes as the spec states it)
TARGETS = {"h100": ("h100_sxm.txtpb", 84978434048)}
INSTALL = "pip install -e .[gpu-aot] (JAX's CUDA plugin; no GPU needed)"
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def plugin_missing() -> str:
  """'' when JAX's CUDA plugin is installed, else why deviceless GPU compilation cannot run here."""
  if util.find_spec("jax_plugins") is None or util.find_spec("jax_plugins.xla_cuda12") is None:
    return f"JAX's CUDA plugin is not installed. Fix: {INSTALL}."
  return ""


def use_cpu_runtime() -> None:
  """Entry points call this first: on a machine without a GPU the CUDA plugin would fail its CUDA check at start-up
  unless JAX runs on the CPU (JAX_PLATFORMS=cpu); compiling for the target does not need the GPU runtime."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])


def devices(target: str = "h100", count: int = 1) -> list:
  """`count` compile-only devices of `target` on one host (8 at most) or count / 8 hosts of 8."""
  if target not in TARGETS:
    raise ConfigError(f"--target={target!r} is unknown. Fix: use one of {sorted(TARGETS)}.")
  if count < 1 or (count > 8 and count % 8):
    raise ConfigError(f"--devices={count}: must be 1..8 or a multiple of 8 (hosts of 8 GPUs). Fix: e.g. --devices=8.")
  if missing := plugin_missing():
    raise ConfigError(missing)
  spec = resources.files("r1jax").joinpath("assets", "gpu_specs", TARGETS[target][0]).read_text()
  topology = f"1x1x{count}" if count <= 8 else f"1x{count // 8}x8"
  from jax.experimental import topologies

  try:
    return list(topologies.get_topology_desc(platform="cuda", target_config=spec, topology=topology).devices)
  except (NotImplementedError, RuntimeError) as e:
    raise ConfigError(
      f"JAX's CUDA plugin did not give {target} devices ({str(e).splitlines()[0][:120]}). Fix: run with "
      "JAX_PLATFORMS=cpu, and jax-cuda12-plugin at the installed jax's version."
    ) from e


def train_step(cfg: ModelConfig, batch_size: int, seq_len: int, mesh: jax.sharding.Mesh):
  """cfg's LM train step (default optimizer, state donated) compiled for `mesh`'s devices from abstract values: no
  array is allocated, so the mesh may be a GPU target's compile-only devices."""
  sharding.check_divisibility(cfg, batch_size, batch_size, mesh)
  model = Transformer(cfg)
  schedule, tx = make_optimizer(OptimConfig(), 1000)
  batch = {
    "inputs": np.zeros((batch_size, seq_len), np.int32),
    "targets": np.zeros((batch_size, seq_len), np.int32),
    "weights": np.ones((batch_size, seq_len), np.float32),
  }
  key = jax.eval_shape(lambda: jax.random.key(0))  # abstract: nothing may run on compile-only devices
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    boxed = jax.eval_shape(lambda r: initial_state(model, tx, batch, r), key)
    state_sh = sharding.logical_shardings(boxed, mesh)
  place = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  state = jax.tree.map(place, nn.unbox(boxed), state_sh)
  batch = {k: place(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
  rng = place(key, NamedSharding(mesh, P()))
  return compile_train_step(model, tx, schedule, state, state_sh, batch, rng, mesh)


def replicated_on(device) -> NamedSharding:
  """A sharding that places a whole array on `device` (a compile-only device too), through a one-device mesh."""
  return NamedSharding(jax.sharding.Mesh(np.array([device]), ("data",)), P())


def abstract_params(cfg: ModelConfig):
  """The LM's parameter shapes (unboxed ShapeDtypeStructs), nothing allocated."""
  model = Transformer(cfg)
  return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))


def decode_step(cfg: ModelConfig, context: int, batch: int, device):
  """One decoding step of cfg's LM (r1jax/inference/decoding.py: a token per sequence against a cache of `context`
  positions, the cache donated) compiled for one device from abstract values."""
  model = Transformer(cfg)
  one = replicated_on(device)
  mesh = one.mesh
  token = jax.ShapeDtypeStruct((batch, 1), jnp.int32, sharding=one)
  fill = decoding.Decode.prefill(jnp.ones((batch,), jnp.int32), context)
  params = abstract_params(cfg)
  cache = jax.eval_shape(lambda p, t: model.apply(p, t, decode=fill, mutable=[decoding.CACHE])[1], params, token)
  place = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one)
  params, cache = jax.tree.map(place, (params, cache[decoding.CACHE]))
  pos = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=one)

  def step(p, c, t, pos_B):
    (logits, _), new = model.apply(
      {**p, decoding.CACHE: c}, t, decode=decoding.Decode.step(pos_B, context), mutable=[decoding.CACHE]
    )
    return logits, new[decoding.CACHE]

  with jax.set_mesh(mesh):
    return jax.jit(step, donate_argnums=1).lower(params, cache, token, pos).compile()


def module_step(module: nn.Module, params, x: jax.Array, device):
  """A mixer's or feed-forward's forward and backward (gradients of sum(y^2) in the parameters and the input)
  compiled for one device, from the shapes of `params` and `x`."""
  one = replicated_on(device)
  mesh = one.mesh
  params, x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), (params, x))

  def loss(p, x):
    y = module.apply(p, x, deterministic=False, rngs={"dropout": jax.random.key(2)})[0]
    return jnp.sum(y.astype(jnp.float32) ** 2)

  with jax.set_mesh(mesh):
    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()


def _shapes(text: str) -> list[tuple[int, ...]]:
  return [tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"\w+\[([\d,]*)\]", text)]


def _braced(line: str, key: str) -> str:
  """The text inside the braces that follow `key` in an HLO line (layouts nest braces inside)."""
  start = line.find(key + "{")
  if start < 0:
    return ""
  depth, i = 0, start + len(key)
  for j in range(i, len(line)):
    depth += {"{": 1, "}": -1}.get(line[j], 0)
    if depth == 0:
      return line[i + 1 : j]
  return ""


def custom_call_flops(line: str) -> tuple[str, float]:
  """(kernel, FLOPs) of one custom call of a compiled GPU module: r1jax's Pallas kernels (grouped matmuls,
  block-sparse attention) from their operand shapes; cuDNN's fused attention as its matmuls (forward 2: q.k and p.v;
  backward 5), causal halving them; ('', 0) for the rest."""
  shapes = _shapes(_braced(line, "operand_layout_constraints="))
  name = re.search(r'name = "([^"]+)"', line)
  for kernels in (grouped_matmul, selected_kernel):
    if name and name.group(1) in kernels.NAMES:
      return name.group(1), kernels.kernel_flops(name.group(1), shapes)
  target = re.search(r'custom_call_target="([^"]+)"', line)
  target = target.group(1) if target else ""
  if "__cudnn$fmha" in target:
    (b, t, h, k), (_, s, _, _) = shapes[0], shapes[1]  # q [B, T, H, K], k [B, S, G, K]
    products = 5 if "Backward" in target else 2
    causal = 0.5 if re.search(r'"mask_type":\s*"CAUSAL"', line) else 1.0
    return "cudnn_attention" + ("_bwd" if "Backward" in target else ""), products * 2.0 * b * h * t * s * k * causal
  return target, 0.0


def report(compiled) -> dict:
  """What a program compiled for a GPU target says: bytes per device (arguments, outputs, temporaries, donated, and
  their total), FLOPs per device (XLA's count of its ops plus the custom calls' work), the custom calls and the
  collectives it contains."""
  m = compiled.memory_analysis()
  from jax._src.lib import _jax  # XLA's HLO cost analysis, run through the CPU client

  cpu = jax.devices("cpu")[0].client
  xla_flops = sum(
    _jax.hlo_module_cost_analysis(cpu, mod).get("flops", 0.0) for mod in compiled.runtime_executable().hlo_modules()
  )
  kernels, kernel_flops, collectives = collections.Counter(), 0.0, collections.Counter()
  for line in compiled.as_text().splitlines():
    if "custom-call(" in line:
      name, flops = custom_call_flops(line)
      kernels[name] += 1
      kernel_flops += flops
    op = re.search(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", line)
    if op and " ROOT " not in line[:8] and "=" in line:
      collectives[op.group(1)] += 1
  return {
    "memory_bytes": static_memory_bytes(compiled),
    "argument_bytes": float(m.argument_size_in_bytes),
    "output_bytes": float(m.output_size_in_bytes),
    "temp_bytes": float(m.temp_size_in_bytes),
    "donated_bytes": float(m.alias_size_in_bytes),
    "flops": float(xla_flops + kernel_flops),
    "xla_flops": float(xla_flops),
    "kernel_flops": float(kernel_flops),
    "kernels": dict(kernels),
    "collectives": dict(collectives),
  }
