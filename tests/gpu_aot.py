"""Compiles for one H100 without a GPU, under a Python with JAX's CUDA plugin (conftest's `gpu_aot` fixture runs it
once per test session): the module-contract cases named (test_contract.CASES ids, bfloat16, forward and backward)
and, when asked, GPU presets' train steps on one H100 and on an 8-GPU mesh, plus one step too large for the
device (the memory check's negative control), and the block-sparse kernels in one layer at the NSA preset's sizes.
Writes {"modules": {case id: report}, "steps": {label: report}, "kernels": {label: report}}
(r1jax/lab/aot.py's reports; {"error": line} where compiling failed).

  python tests/gpu_aot.py OUT.json mixer=attention,ffn=moe steps|no_steps
"""

import dataclasses
import sys
import time

from r1jax.lab import aot

aot.use_cpu_runtime()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from r1jax import atomic, registry, sharding  # noqa: E402
from r1jax.config import MeshConfig  # noqa: E402
from r1jax.lab import configs, flops  # noqa: E402
from r1jax.mixers import dense  # noqa: E402

import test_contract  # noqa: E402
from helpers import SMALL_MIXER_OPTIONS, small_model_config  # noqa: E402

# label -> (preset, GPUs, mesh, global batch of 1024-token sequences, layers: 0 the preset's). For CI's time the MoE
# preset runs 2 of its 12 layers (every code path: the Pallas grouped matmul in shard_map, the collectives; 14 s
# against 45 s of compile), and the MoE preset on one GPU and the dense one on 8 are left to
# benchmarks/train_step.py --target=h100.
STEPS = {
  "gpt2_small@1": ("gpt2_small", 1, MeshConfig(), 16, 0),
  "gpt2_small:moe (2 layers)@8": ("gpt2_small:moe", 8, MeshConfig(data=2, fsdp=2, tensor=2), 128, 2),
  "gpt2_small@1 batch 192 (too large)": ("gpt2_small", 1, MeshConfig(), 192, 0),
}
SEQ_LEN = 1024
# label -> (preset, mixer, options): one layer's mixer of a preset at 16 x 1024 tokens (the block-sparse kernels of
# r1jax/mixers/selected_kernel.py, chosen on a GPU, against NSA's XLA path)
KERNELS = {
  "nsa": ("gpt2_small:nsa", "nsa", {}),
  "nsa_xla": ("gpt2_small:nsa_xla", "nsa", {}),
  "block_sparse": ("gpt2_small:nsa", "block_sparse", {"block_size": 64, "top_blocks": 15}),
}


def _guarded(fn) -> dict:
  t0 = time.perf_counter()
  try:
    out = fn()
  except Exception as e:  # noqa: BLE001 (a GPU lowering error is the result this reports)
    out = {"error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"}
  out["compile_sec"] = time.perf_counter() - t0
  return out


def _module(kind: str, name: str, device) -> dict:
  """The contract's module and options at 128 wide (head dim 32), T 64: at the contract's 32 wide XLA's untuned
  Triton GEMM tiling (no autotuning without a GPU) finds no tile for some tiny bfloat16 dots (MLA's 24 x 64)."""
  options = SMALL_MIXER_OPTIONS.get(name, {}) if kind == "mixer" else test_contract.FFN_OPTIONS.get(name, {})
  cfg = small_model_config(kind, name, options, dtype="bfloat16", d_model=128, d_ff=256)
  module = (registry.MIXERS if kind == "mixer" else registry.FFNS)[name].module(cfg, cfg.options(kind, name))
  video = kind == "mixer" and registry.is_video(name)
  x = jax.ShapeDtypeStruct((2, 64, 3, 128) if video else (2, 64, 128), jnp.bfloat16)
  params = nn.unbox(jax.eval_shape(lambda x: module.init(jax.random.key(1), x, deterministic=True), x))
  return aot.report(aot.module_step(module, params, x, device))


def _step(preset: str, count: int, mesh_cfg: MeshConfig, batch: int, layers: int) -> dict:
  cfg = configs.preset_model(preset)
  cfg = dataclasses.replace(cfg, num_layers=layers) if layers else cfg
  mesh = sharding.make_mesh(mesh_cfg, devices=aot.devices("h100", count))
  r = aot.report(aot.train_step(cfg, batch, SEQ_LEN, mesh))
  tokens = batch * SEQ_LEN / mesh.size
  defined = flops.train_flops_per_token(cfg, SEQ_LEN, aot.abstract_params(cfg))
  return {**r, "flops_per_token": r["flops"] / tokens, "defined_flops_per_token": defined}


def _kernel_case(preset: str, mixer: str, options: dict, device) -> dict:
  cfg = configs.preset_model(preset)
  cfg = dataclasses.replace(
    cfg, mixer=mixer, mixer_options={**cfg.mixer_options, mixer: options} if options else cfg.mixer_options
  )
  module = registry.MIXERS[mixer].module(cfg, cfg.options("mixer", mixer))
  x = jax.ShapeDtypeStruct((16, SEQ_LEN, cfg.d_model), jnp.bfloat16)
  params = nn.unbox(jax.eval_shape(lambda x: module.init(jax.random.key(1), x, deterministic=True), x))
  return aot.report(aot.module_step(module, params, x, device))


def main(out_path: str, cases: str, steps: str) -> None:
  device = aot.devices("h100", 1)[0]
  wanted = set(cases.split(",")) - {""}
  modules = {
    f"{k}={n}": _guarded(lambda: _module(k, n, device)) for k, n in test_contract.CASES if f"{k}={n}" in wanted
  }
  kernels = {l: _guarded(lambda: _kernel_case(*c, device)) for l, c in KERNELS.items()} if steps == "steps" else {}
  steps = {label: _guarded(lambda: _step(*spec)) for label, spec in STEPS.items()} if steps == "steps" else {}
  cudnn = dense.cudnn_installed()
  atomic.write_json(
    out_path,
    {"modules": modules, "steps": steps, "kernels": kernels, "device_bytes": aot.TARGETS["h100"][1], "cudnn": cudnn},
  )


if __name__ == "__main__":
  main(*sys.argv[1:4])
