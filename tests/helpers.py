"""Small configs shared by the tests."""

from r1jax.ablation import override
from r1jax.config import Config, default_config


def tiny_config(**overrides) -> Config:
  """A model and run small enough to compile and train in seconds; overrides are dotted keys."""
  base = {
      "model.num_layers": 2, "model.d_model": 32, "model.num_heads": 4, "model.d_ff": 64,
      "data.seq_len": 16, "data.batch_size": 8, "data.eval_batch_size": 8, "data.eval_max_batches": 2,
      "train.steps": 4, "train.eval_every": 0, "train.log_every": 2, "train.checkpoint_every": 0,
      "train.progress": False, "optim.warmup_steps": 2,
  }
  base.update({k.replace("__", "."): v for k, v in overrides.items()})
  return Config.from_dict(override(default_config(), base, "test"))
