"""Compiling for a GPU without one (r1jax/lab/aot.py): the GPU presets' train steps fit an H100 alone and on an 8-GPU
mesh, the memory check fails a step too large, MoE compiles to its active FLOPs on GPU, cuDNN attention is chosen
where installed; and, without the CUDA plugin, the FLOP counts read from compiled HLO and the one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from r1jax.config import ModelConfig
from r1jax.errors import ConfigError
from r1jax.lab import aot, flops
from r1jax.mixers import dense, selected_kernel

from conftest import REPO

FITTING = ("gpt2_small@1", "gpt2_small:moe (2 layers)@8")


@pytest.mark.slow
@pytest.mark.parametrize("label", FITTING)
def test_gpu_presets_train_steps_compile_within_an_h100s_memory(label, gpu_aot):
  r = gpu_aot["steps"][label]
  assert "error" not in r, r.get("error")
  assert 0 < r["memory_bytes"] <= gpu_aot["device_bytes"], f"{label}: {r['memory_bytes'] / 2**30:.1f} GiB per device"
  if label.endswith("@8"):  # data, fsdp and tensor axes: gradients reduced, fsdp weights gathered
    assert r["collectives"].get("all-reduce", 0) + r["collectives"].get("reduce-scatter", 0) > 0, r["collectives"]
    assert r["collectives"].get("all-gather", 0) > 0, r["collectives"]


@pytest.mark.slow
def test_the_memory_check_fails_a_step_too_large_for_the_device(gpu_aot):
  r = gpu_aot["steps"]["gpt2_small@1 batch 192 (too large)"]
  assert "error" not in r, r.get("error")
  assert r["memory_bytes"] > gpu_aot["device_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("label", ["gpt2_small:moe (2 layers)@8", "gpt2_small@1"])
def test_train_steps_compile_to_their_active_flops_on_gpu(label, gpu_aot):
  """Compiled FLOPs per token within 1.3x of the definition's (6 per active parameter + attention): MoE through the
  Pallas grouped matmul, not ragged_dot's every-expert-for-every-row (4.7x before), and cuDNN attention where
  installed."""
  r = gpu_aot["steps"][label]
  assert "error" not in r, r.get("error")
  assert 0.8 <= r["flops_per_token"] / r["defined_flops_per_token"] <= 1.3, r["flops_per_token"]
  if ":moe" in label:
    assert r["kernels"].get("r1jax_gmm", 0) > 0 and r["kernels"].get("r1jax_gmm_dw", 0) > 0, r["kernels"]
  assert (r["kernels"].get("cudnn_attention", 0) > 0) == gpu_aot["cudnn"], r["kernels"]


@pytest.mark.slow
def test_sparse_mixers_compile_with_the_block_sparse_kernels_for_an_h100(gpu_aot):
  """NSA and block top-k at the gpt2_small:nsa preset's sizes (one layer, 16 x 1024 tokens, bfloat16) take the
  kernels on the GPU target (`implementation=auto`), forward and backward, and NSA's layer needs less memory
  through them than through its XLA path."""
  cases = gpu_aot["kernels"]
  assert all("error" not in r for r in cases.values()), cases
  for label in ("nsa", "block_sparse"):
    assert all(cases[label]["kernels"].get(n) == 1 for n in selected_kernel.NAMES), cases[label]["kernels"]
  assert not set(selected_kernel.NAMES) & set(cases["nsa_xla"]["kernels"])
  assert cases["nsa"]["memory_bytes"] < 0.75 * cases["nsa_xla"]["memory_bytes"]


HLO_FMHA = (
  "%fmha = (bf16[2,12,1024,64]{3,1,2,0}, f32[2,12,1024]{2,1,0}) custom-call(%q, %k, %v), "
  'custom_call_target="__cudnn$fmhaSoftmax", operand_layout_constraints={bf16[2,1024,12,64]{3,2,1,0}, '
  'bf16[2,1024,12,64]{3,2,1,0}, bf16[2,1024,12,64]{3,2,1,0}}, backend_config={"cudnn_fmha_backend_config": '
  '{"mask_type": "CAUSAL"}}'
)
HLO_GMM = (
  '%pallas_call.2 = bf16[512,768]{1,0} custom-call(%e, %x, %w), custom_call_target="__gpu$xla.gpu.triton", '
  "operand_layout_constraints={s32[4]{0}, bf16[512,1536]{1,0}, bf16[8,1536,768]{2,1,0}}, "
  'backend_config={grid_x = 4 : i32, name = "r1jax_gmm", num_warps = 4 : i32}'
)

HLO_SEL = (
  "%pallas_call.9 = (bf16[512,16,64]{2,1,0}, f32[512,16]{1,0}) custom-call(%c, %i, %q, %k, %v, %pos), "
  'custom_call_target="__gpu$xla.gpu.triton", operand_layout_constraints={s32[512]{0}, s32[512,4]{1,0}, '
  "bf16[512,16,64]{2,1,0}, bf16[512,64]{1,0}, bf16[512,64]{1,0}, s32[64]{0}}, "
  'backend_config={name = "r1jax_sel_fwd", num_stages = 2 : i32, num_warps = 4 : i32}'
)


def test_custom_calls_count_as_their_matmuls():
  """XLA's cost analysis counts a custom call as zero; aot adds cuDNN attention's q.k and p.v (halved when causal)
  and r1jax's Pallas kernels (grouped matmul, block-sparse attention) from their operand shapes."""
  name, f = aot.custom_call_flops(HLO_FMHA)
  assert name == "cudnn_attention" and f == 2 * 2.0 * 2 * 12 * 1024 * 1024 * 64 * 0.5
  assert aot.custom_call_flops(HLO_FMHA.replace("fmhaSoftmax", "fmhaSoftmaxBackward"))[1] == f * 2.5
  assert aot.custom_call_flops(HLO_GMM) == ("r1jax_gmm", 2.0 * 512 * 1536 * 768)
  # block-sparse attention: 512 query rows of 16 heads, 4 picks of 64 keys, head dim 64; its backward 7 products
  assert aot.custom_call_flops(HLO_SEL) == ("r1jax_sel_fwd", 2 * 2.0 * 512 * 4 * 64 * 16 * 64)
  assert aot.custom_call_flops(HLO_SEL.replace("sel_fwd", "sel_dq"))[1] == 3.5 * aot.custom_call_flops(HLO_SEL)[1]


def test_definition_flops_of_a_dense_lm_are_six_per_matrix_parameter_plus_attention():
  cfg = ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, d_ff=48)
  params = aot.abstract_params(cfg)
  matrices = 2 * (4 * 32 * 32 + 3 * 32 * 48) + 32 * 64  # q, k, v, o and the SwiGLU per layer; the output head
  T = 16
  attention = 2 * 4.0 * 32 * (T + 1) / 2  # per token per layer: (T + 1) / 2 keys on average, 4 D FLOPs each
  np.testing.assert_allclose(flops.train_flops_per_token(cfg, T, params), 6.0 * matrices + 3.0 * attention)


def test_without_the_cuda_plugin_or_with_an_unknown_target_one_line_names_the_fix(monkeypatch):
  monkeypatch.setattr(aot, "plugin_missing", lambda: "JAX's CUDA plugin is not installed. Fix: " + aot.INSTALL + ".")
  with pytest.raises(ConfigError, match=r"gpu-aot"):
    aot.devices("h100", 1)
  with pytest.raises(ConfigError, match=r"--target='a100' is unknown"):
    aot.devices("a100", 1)
  with pytest.raises(ConfigError, match=r"--devices=12"):
    aot.devices("h100", 12)


def test_attention_on_a_gpu_without_cudnn_takes_xlas_path_not_the_cpus_blocked_one(monkeypatch):
  from r1jax import sharding

  monkeypatch.setattr(sharding, "platform", lambda: "gpu")
  monkeypatch.setattr(dense, "cudnn_installed", lambda: False)
  assert dense.resolve_impl("auto", np.dtype("bfloat16"), 64, 4096) == "xla"
  monkeypatch.setattr(dense, "cudnn_installed", lambda: True)
  assert dense.resolve_impl("auto", np.dtype("bfloat16"), 64, 4096) == "cudnn"
  assert dense.resolve_impl("auto", np.dtype("float32"), 64, 4096) == "xla"
  monkeypatch.setattr(sharding, "platform", lambda: "cpu")
  assert dense.resolve_impl("auto", np.dtype("bfloat16"), 64, 4096) == "flash"


def test_the_benchmark_without_the_plugin_says_what_to_install_in_one_line():
  if not aot.plugin_missing():
    pytest.skip("this environment has JAX's CUDA plugin")
  run = subprocess.run(
    [sys.executable, os.path.join(REPO, "benchmarks", "train_step.py"), "--presets=gpt2_small", "--target=h100"],
    capture_output=True,
    text=True,
  )
  assert run.returncode == 2 and run.stderr.strip().count("\n") == 0, run.stderr
  assert "pip install -e .[gpu-aot]" in run.stderr
