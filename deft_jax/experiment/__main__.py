"""`python -m deft_jax.experiment`: see `deft_jax.experiment.cli`."""

import sys

from deft_jax.experiment.cli import main

sys.exit(main())
