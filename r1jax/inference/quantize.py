"""INT8 weights, with qwix (github.com/google/qwix, Google's JAX quantization library for Flax).

Two ways, both weight-only INT8 with a scale per output channel (symmetric: absmax / 127.5, rounded to nearest,
clipped to [-128, 127]), for the matmuls (einsum / dot_general) of every Transformer block and MTP module; the
activations stay in the compute dtype:
  post-training (PTQ)  `ptq(model, params, tokens)`: the trained float weights rounded to int8 once; the model then
                       runs on the int8 weights and their scales (qwix's PtqProvider; memory and disk hold int8).
  quantization-aware   `model.quant="int8"` (r1jax/model.py make_model): training runs the forward on fake-quantized
  training (QAT)       weights (rounded to the int8 grid and back) with straight-through gradients (qwix's QtProvider:
                       a weight's gradient passes the rounding as the identity; its backward matmuls read quantized
                       operands of qwix's own), so the float weights learn to sit where rounding costs little;
                       deployed through `ptq`.
Why qwix: it intercepts the einsums a module makes and reads each weight's contracting axes from the einsum that uses
it, so every matmul of every mixer gets per-channel scales on the right axes with no change to the mixers and no
table of our own, and the same rules serve PTQ and QAT; AQT would need its dot_general passed into each call site.
What stays float: the top level's parameters (the token embedding, a gather tied to the output head; the MTP
modules' merge projections), the norms and biases (vectors) and anything a mixer computes outside an einsum with a
weight.
References: Jacob et al. 2018 (arXiv:1712.05877, integer-only inference; QAT with fake quantization); Bengio et al.
2013 (arXiv:1308.3432, the straight-through estimator); LLM.int8() (Dettmers et al. 2022, arXiv:2208.07339) on
where INT8 weights lose quality at scale.
"""

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import qwix
from qwix._src.providers import ptq as qwix_ptq

_plain_astype = qwix_ptq.WithAux.astype


def _astype(self, dtype):
  """A quantized weight cast to the compute dtype is itself (qwix's einsum dequantizes it into the other operand's
  dtype): qwix 0.1.8's WithAux.astype raises on a QArray, and every mixer casts its weights (`w.astype(dt)`)."""
  return self if isinstance(self.array, qwix.QArray) else _plain_astype(self, dtype)


qwix_ptq.WithAux.astype = _astype

# every block's and MTP module's matmuls (module paths under the Transformer), not the top level's embedding / head
BLOCKS = r"(layer|mtp)\d+/.*"


def rules() -> list[qwix.QuantizationRule]:
  """Weight-only INT8, per output channel, for the blocks' matmuls."""
  return [qwix.QuantizationRule(module_path=BLOCKS, weight_qtype=jnp.int8)]


def qat(model: nn.Module) -> nn.Module:
  """`model` training on fake-quantized INT8 weights with straight-through gradients (same parameters)."""
  return qwix.quantize_model(model, qwix.QtProvider([qwix.QtRule(module_path=BLOCKS, weight_qtype=jnp.int8)]))


def ptq_model(model: nn.Module, tokens_BxT: jax.Array) -> tuple[nn.Module, dict]:
  """(the model running on INT8 weights, the abstract tree of its parameters: which weights it rounds and how) for a
  float-trained or QAT-trained `model`; `tokens` of any shape the model takes (to trace which weights the matmuls
  read)."""
  quantized = qwix.quantize_model(model, qwix.PtqProvider(rules()))
  return quantized, jax.eval_shape(quantized.init, jax.random.key(0), tokens_BxT)["params"]


def rounded(params, abstract) -> dict:
  """The float `params` rounded to INT8 as `ptq_model`'s abstract tree says."""
  return qwix.quantize_params(params, abstract)


def ptq(model: nn.Module, params, tokens_BxT: jax.Array) -> tuple[nn.Module, dict]:
  """(the model running on INT8 weights, its parameters: the float `params` rounded): `ptq_model`, then `rounded`."""
  quantized, abstract = ptq_model(model, tokens_BxT)
  return quantized, rounded(params, abstract)


def param_bytes(params) -> dict[str, int]:
  """Sizes of a parameter tree: `memory` (its arrays' bytes) and `disk` (serialised with flax's msgpack, as a
  checkpoint of the arrays alone would hold them)."""
  leaves = jax.tree.leaves(nn.unbox(params))
  return {
    "memory": int(sum(x.size * x.dtype.itemsize for x in leaves)),
    "disk": len(flax.serialization.msgpack_serialize(jax.tree.map(jax.device_get, leaves))),
  }
