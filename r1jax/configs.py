"""Named base run configs shared by the experiment drivers (ml_collections ConfigDicts)."""

import ml_collections

from r1jax.ablation import override
from r1jax.config import default_config

TINY_SHAKESPEARE = "../shared/data/tinyshakespeare.txt"  # relative to the repository root (see ../shared/data)


def shakespeare_char(path: str = TINY_SHAKESPEARE) -> ml_collections.ConfigDict:
  """nanoGPT's small CPU setting on Tiny Shakespeare: 4 layers, 4 heads, 128 wide, context 64, batch 12,
  2000 steps, lr 1e-3 (warm-up 100, cosine to 1e-4), beta2 0.99, no dropout. nanoGPT reports val loss ~1.88."""
  return override(default_config(), {
      "data.kind": "text", "data.path": path, "data.seq_len": 64, "data.batch_size": 12,
      "data.eval_batch_size": 64,
      "model.num_layers": 4, "model.num_heads": 4, "model.d_model": 128, "model.dropout": 0.0,
      "optim.lr": 1e-3, "optim.min_lr_ratio": 0.1, "optim.warmup_steps": 100, "optim.b2": 0.99,
      "train.steps": 2000, "train.eval_every": 250, "train.checkpoint_every": 500,
  }, "shakespeare_char")


def mqar(seq_len: int = 256, num_kv_pairs: int = 16) -> ml_collections.ConfigDict:
  """Zoology's MQAR (vocab 8192, filler token 0) with a 2-layer attention-only dense model (no MLP, as Zoology's
  MQAR models), scored on the answer positions only; 3000 held-out test examples."""
  return override(default_config(), {
      "data.kind": "mqar", "data.path": "", "data.seq_len": seq_len, "data.num_kv_pairs": num_kv_pairs,
      "data.mqar_vocab_size": 8192, "data.batch_size": 32, "data.eval_batch_size": 250,
      "data.num_test_examples": 3000,
      "model.num_layers": 2, "model.num_heads": 1, "model.d_model": 64, "model.ffn": "none",
      "optim.lr": 1e-3, "optim.warmup_steps": 50, "optim.b2": 0.99,
      "train.steps": 1500, "train.eval_every": 250, "train.checkpoint_every": 250,
  }, "mqar")
