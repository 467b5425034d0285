"""`python -m r1jax.claims`: the claims ledger, CLAIMS.md, from the results folders (the code: r1jax/lab/claims.py)."""

from r1jax.lab import claims

if __name__ == "__main__":
  claims.cli()
