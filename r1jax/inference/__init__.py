"""Inference: the decoding contract every causal mixer implements (`decoding`), what a sampler draws (`sampling`),
self-speculative decoding with the MTP modules (`speculative`) and INT8 weights (`quantize`). The command line is
`python -m r1jax.generate`."""
