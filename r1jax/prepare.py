"""`python -m r1jax.prepare`: a corpus tokenized once into token shards (the code: r1jax/data/prepare.py)."""

from r1jax.data import prepare

if __name__ == "__main__":
  prepare.cli()
