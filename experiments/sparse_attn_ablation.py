"""Dynamic sparse attention vs dense: DSA token top-k (learned indexer), NSA block top-k, window and random-k
controls with the same key budget, on MQAR and Tiny Shakespeare; then the seed articles' claims, measured.

  python experiments/sparse_attn_ablation.py                  # 6 variants x 3 seeds x 2 tasks (~9.5 min, 2-core CPU)
  python experiments/sparse_attn_ablation.py --quick          # smoke run
  python experiments/sparse_attn_ablation.py --tasks=mqar --config.mqar.data.seq_len=1024 \
      --config.mqar.data.num_kv_pairs=64 --config.mqar.data.mqar_vocab_size=8192 \
      --config.mqar.train.steps=20000                 # the long-context setting (a GPU-sized run)

Key budget: k = 16 keys per query for every sparse variant of the default (block: 1 selected block of 8 plus the own
block). On request: `nsa` (NSA's three branches), and DeepSeek-V3.2's two stages `dsa_warmup` -> `dsa`, which start
from the `dense` variant's run of the same seed (train.init_from='@dense'; run them with dense:
--variants=dense,dsa_warmup,dsa).
Runs go two at a time on a CPU with 2+ cores (--workers=auto, one XLA thread each; --workers=1: one at a time).
Seed claims judged (declared in r1jax/claims.py): "3.2x faster at >= 98% of dense accuracy" (forward tokens/s and
quality ratios to dense in the same run), "O(n log n) instead of O(n^2)" and "65% less compute" (each mixer's
compiled FLOPs over T = 512..8192).
"""

from r1jax import ablation, configs
from r1jax.config import Config
from r1jax.scaling import compiled_cost, fit_exponent

SPARSE = "model.mixer_options.sparse"
VARIANTS = {
    "dense": {"model.mixer": "attention"},
    "topk8": {"model.mixer": "sparse", f"{SPARSE}.top_k": 8},
    "topk16": {"model.mixer": "sparse", f"{SPARSE}.top_k": 16},
    "topk16_kl": {"model.mixer": "sparse", f"{SPARSE}.top_k": 16, f"{SPARSE}.indexer_grad": "none",
                  f"{SPARSE}.indexer_loss": "kl", f"{SPARSE}.detach_indexer_input": True},  # DSA's recipe
    "block8x2": {"model.mixer": "block_sparse", "model.mixer_options.block_sparse.block_size": 8,
                 "model.mixer_options.block_sparse.top_blocks": 1},
    # the last 16 keys need no gather: the banded `local` mixer computes the same attention (tests/test_sparse.py)
    "window16": {"model.mixer": "local", "model.mixer_options.local.window": 16},
    "random16": {"model.mixer": "sparse", f"{SPARSE}.select": "random", f"{SPARSE}.top_k": 16},
    # On request (--variants=...), not yet in the default run:
    # NSA as published (r1jax/attention/nsa.py) at T=64: up to 15 compressed blocks (l = 8, d = 4), 3 selected
    # blocks of 4 (the first and the 2 local ones forced) and a window of 4: up to 31 keys read per query, more than
    # the others' 16 (at T=64 NSA's fixed parts dominate; it pays at long T).
    "nsa": {"model.mixer": "nsa", **{f"model.mixer_options.nsa.{k}": v for k, v in dict(
        cmp_block=8, cmp_stride=4, slc_block=4, top_blocks=3, window=4).items()}},
    # DeepSeek-V3.2's two stages from the dense variant's run of the same seed: (i) indexer warm-up, every weight
    # frozen but the indexer's, KL to dense attention over all earlier keys; (ii) sparse training, top-16, indexer
    # input detached, the indexer trained only by the KL over its selected keys, the rest by the LM loss.
    "dsa_warmup": {"model.mixer": "sparse", f"{SPARSE}.top_k": 16, f"{SPARSE}.indexer_grad": "none",
                   f"{SPARSE}.indexer_loss": "kl_dense", "train.init_from": "@dense", "optim.trainable": "idx_",
                   "train.steps": 100, "optim.warmup_steps": 10},
    "dsa": {"model.mixer": "sparse", f"{SPARSE}.top_k": 16, f"{SPARSE}.indexer_grad": "none",
            f"{SPARSE}.indexer_loss": "kl", f"{SPARSE}.detach_indexer_input": True, "train.init_from": "@dsa_warmup"},
}
DEFAULT = ("dense", "topk8", "topk16", "block8x2", "window16", "random16")
TASKS = {
    # MQAR where a 16-key window misses most keys (queries come up to 48 tokens after their pair); the init
    # (0.1, PyTorch-like) and lr are what let dense attention learn it in about 1000 steps on a CPU.
    "mqar": ablation.override(configs.mqar(seq_len=64, num_kv_pairs=8), {
        "data.mqar_vocab_size": 128, "model.num_heads": 2, "model.init_std": 0.1, "optim.lr": 3e-3,
        "train.steps": 1000, "train.eval_every": 500, "train.checkpoint_every": 1000, "data.eval_max_batches": 2},
        "mqar"),
    "shakespeare": ablation.override(configs.shakespeare_char(), {
        "model.num_layers": 2, "model.d_model": 64, "model.num_heads": 2, "data.seq_len": 128,
        "train.steps": 200, "train.eval_every": 100, "train.checkpoint_every": 200, "data.eval_max_batches": 8},
        "shakespeare"),
}
QUICK = {"train.steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3, "data.eval_max_batches": 1}
LENGTHS = (512, 1024, 2048, 4096, 8192)


def report(rows_by_task: dict[str, list[dict]], ablations=None) -> tuple[str, dict]:
  """Each mixer's compiled FLOPs against T, also saved to report.json, where r1jax.claims judges the complexity
  and compute claims (the speed-at-quality claim is judged from the tables)."""
  lines = [f"Complexity: log-log slope of compiled forward FLOPs of one mixer (d=64, 2 heads) over T={LENGTHS}",
           "(1 = linear, 2 = quadratic; n log n over this range fits ~1.1):", ""]
  complexity = {}
  for name in dict.fromkeys(row["variant"] for rows in rows_by_task.values() for row in rows):
    overrides = VARIANTS[name]
    # One query chunk: XLA's cost analysis counts a loop body once, so chunked FLOPs would be undercounted.
    model = Config.from_dict(ablation.override(TASKS["shakespeare"], {**overrides, f"{SPARSE}.query_chunk": max(
        LENGTHS), "model.mixer_options.nsa.query_chunk": max(LENGTHS)}, name)).model
    flops = [compiled_cost(model, T)["flops"] for T in LENGTHS]
    complexity[name] = {"lengths": list(LENGTHS), "flops": flops, "slope": fit_exponent(LENGTHS, flops)}
    lines.append(f"- {name}: slope {complexity[name]['slope']:.2f}, FLOPs at T={LENGTHS[-1]}: {flops[-1]:.3g}")
  return "\n".join(lines), {"complexity": complexity}


if __name__ == "__main__":
  ablation.cli("sparse_attn_ablation", TASKS, VARIANTS, seeds=(0, 1, 2), baseline="dense", quick=QUICK,
               default_variants=DEFAULT, report=report, workers="auto")
