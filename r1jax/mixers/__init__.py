"""Sequence mixers under one contract, `__call__(x_BxTxD, *, deterministic) -> (y, aux)` (STYLE.md 2): each module
registers its mixers by name (registry.register_mixer), and importing this package imports every module in it."""

from r1jax.registry import import_all

import_all(__name__, __path__)
