"""`python -m deft_jax.predict`: the predict command (its arguments live in `deft_jax.cli.predict`)."""
import sys

from deft_jax.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
