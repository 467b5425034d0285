"""Feed-forwards (SwiGLU, mixture-of-experts): each module registers its feed-forwards by name
(registry.register_ffn), and importing this package imports every module in it."""

from r1jax.registry import import_all

import_all(__name__, __path__)
