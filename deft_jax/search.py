"""`python -m deft_jax.search`: the search command (its arguments live in `deft_jax.cli.search`)."""
import sys

from deft_jax.cli.search import main

if __name__ == "__main__":
    sys.exit(main())
