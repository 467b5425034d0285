"""Train one configuration from the command line.

  python -m r1jax.main --config.workdir=/tmp/run           # Tiny Shakespeare (shipped with the package)
  python -m r1jax.main --config.data.options.text.path=my_corpus.txt    # any UTF-8 text file, character level
  python -m r1jax.main --config.data.kind=mqar --config.data.seq_len=256 --config.train.steps=1500
  python -m r1jax.main --preset=gpt2_small:nsa --config.data.options.tokens.path=<prepared corpus>  # a GPU preset

Rerunning the same command with the same workdir resumes from the latest checkpoint. The result (final
metrics, perf, config) is written to <workdir>/result.json and printed as JSON.
"""

import json
import sys

from absl import flags, logging

from r1jax import entry
from r1jax.config import Config, default_config
from r1jax.lab import configs
from r1jax.train import train


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  result = train(Config.from_dict(flags.FLAGS.config))
  summary = {"final": result["final"], "num_params": result["num_params"], "perf": result["perf"]}
  print(json.dumps(summary))


if __name__ == "__main__":
  # --preset picks the base config that the --config.<field> overrides then apply to
  spec = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--preset=")), "")
  flags.DEFINE_string("preset", "", "NAME[:MECHANISM][:remat] of r1jax.lab.configs.PRESETS / MECHANISMS (GPU sizes)")
  entry.run(main, {"config": (lambda: configs.preset_spec(spec)) if spec else default_config()})
