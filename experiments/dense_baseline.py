"""Dense Transformer on Tiny Shakespeare at nanoGPT's small CPU setting, with a model-size ablation.

  python experiments/dense_baseline.py                  # 3 sizes x seed 0, 7 minutes on 2 CPU cores (measured)
  python experiments/dense_baseline.py --seeds=0,1,2    # mean ± std over seeds
  python experiments/dense_baseline.py --quick          # smoke run (seconds)
  python experiments/dense_baseline.py --config.data.options.text.path=/abs/path/tinyshakespeare.txt \
      --results_dir=/tmp/r

nanoGPT reports val loss ~1.88 for `base` (4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 steps,
lr 1e-3, no dropout). Runs resume after being killed; finished variants are skipped on rerun.
"""

from r1jax.lab import ablation, configs

BASE = configs.shakespeare_char()
VARIANTS = {
  "base": {},  # nanoGPT's setting: 4 layers, 4 heads, 128 wide
  "small": {"model.num_layers": 2, "model.d_model": 64, "model.num_heads": 2},
  "deep": {"model.num_layers": 6},
}

if __name__ == "__main__":
  ablation.cli("dense_baseline", BASE, VARIANTS, seeds=(0,), baseline="base")
