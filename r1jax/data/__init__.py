"""Datasets: the contract (core.py) and one module per dataset, each registering itself by name
(registry.register_dataset); importing this package imports every module in it."""

from r1jax.registry import import_all

import_all(__name__, __path__)
