"""r1jax: architecture ablations in JAX/Flax, measured side by side with a dense baseline."""

__version__ = "0.1.0"
