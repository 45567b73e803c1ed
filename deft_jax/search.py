"""`python -m deft_jax.search`: the search command (its arguments live in `deft_jax.cli.search`).

Importing this module sets `deft_jax.search` to it, so the module is callable: calling it
is `deft_jax.api.search` (the function `deft_jax.search` otherwise names)."""
import sys
import types

from deft_jax.cli.search import main


class CallableModule(types.ModuleType):
    """A module whose call is the API's `search`."""

    def __call__(self, *args, **kwargs):
        from deft_jax.api import search
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = CallableModule

if __name__ == "__main__":
    sys.exit(main())
