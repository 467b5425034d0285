"""What runs and reads experiments: the ablation runner and its command line, sweeps and worker processes, named
configs and presets, scaling and timing, analysis, reporting and the claims ledger. The library outside lab/ never
imports it (tests/test_layout.py); the entry points (experiments/, benchmarks/, notebooks/, r1jax.main) do."""
