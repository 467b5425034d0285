"""Dense attention on MQAR (Zoology's multi-query associative recall): seq len 256, 16 key-value pairs, 2 layers.

  python experiments/mqar_dense.py                       # d_model 64, seed 0, about 5 minutes on 2 CPU cores
  python experiments/mqar_dense.py --variants=d64,d128 --seeds=0,1,2
  python experiments/mqar_dense.py --quick

Zoology (Arora et al. 2023) finds attention solves MQAR at any width given enough training; this driver measures
how far a CPU budget gets. Test accuracy is over the answer positions of 3000 held-out sequences.
"""

from r1jax import ablation, configs

VARIANTS = {
    "d64": {},
    "d128": {"model.d_model": 128},
    "d64_mlp": {"model.ffn": "swiglu"},
}
QUICK = {"train.steps": 20, "train.eval_every": 10, "train.checkpoint_every": 10, "data.eval_max_batches": 2}

if __name__ == "__main__":
  ablation.cli("mqar_dense", configs.mqar(), VARIANTS, seeds=(0,), baseline="d64", quick=QUICK,
               default_variants=("d64",))
