"""Train one configuration from the command line.

  python -m r1jax.main --config.data.path=../shared/data/tinyshakespeare.txt --config.workdir=/tmp/run
  python -m r1jax.main --config.data.kind=mqar --config.data.seq_len=256 --config.train.steps=1500

Rerunning the same command with the same workdir resumes from the latest checkpoint. The result (final
metrics, perf, config) is written to <workdir>/result.json and printed as JSON.
"""

import json
import os

import jax
from absl import app, logging
from ml_collections import config_flags

from r1jax.config import Config, default_config
from r1jax.train import train

_CONFIG = config_flags.DEFINE_config_dict("config", default_config())


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  result = train(Config.from_dict(_CONFIG.value))
  summary = {"final": result["final"], "num_params": result["num_params"], "perf": result["perf"]}
  workdir = result["config"]["workdir"]
  if workdir and jax.process_index() == 0:
    with open(os.path.join(workdir, "result.json"), "w") as f:
      json.dump(result, f, indent=1)
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
