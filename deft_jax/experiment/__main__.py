"""`python -m deft_jax.experiment`: see `deft_jax.cli.experiment`."""

import sys

from deft_jax.cli.experiment import main

sys.exit(main())
