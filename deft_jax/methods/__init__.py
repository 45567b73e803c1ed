"""Methods compared by `python -m deft_jax.experiment`.

A method is a module with `run(ctx: MethodContext) -> MethodResult` (see
`deft_jax.methods.common`) and, optionally, `AFTER = ("other-method", ...)`: methods it
must follow on the same seed when both are requested (random-search reads deft's
evaluation count). Adding a method = one small module + one line here.
"""

from __future__ import annotations

from typing import Any

from deft_jax.errors import UserError
from deft_jax.methods import (
    auto_rgn,
    deft,
    fastai,
    full,
    full_ensemble,
    full_trainval,
    full_trainval_ensemble,
    full_valfolds_ensemble,
    handpicked,
    linear_probe,
    lp_ft,
    random_search,
    scratch,
    surgical,
)
from deft_jax.methods.common import MethodContext, MethodResult, ExperimentCache

METHODS: dict[str, Any] = {  # name -> an object with run(ctx) and optionally AFTER
    "scratch": scratch,
    "linear-probe": linear_probe,
    "handpicked": handpicked,
    "full": full,
    "auto-rgn": auto_rgn,
    "lp-ft": lp_ft,
    "fastai": fastai,
    "surgical": surgical,
    "full-ensemble": full_ensemble,
    "full-trainval": full_trainval,
    "full-trainval-ensemble": full_trainval_ensemble,
    "full-valfolds-ensemble": full_valfolds_ensemble,
    **{name: deft.variant(name) for name in deft.VARIANTS},
    "random-search": random_search,
}
SEARCH_METHODS = tuple(deft.VARIANTS) + ("random-search",)


def get_method(name: str) -> Any:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def run_order(names: list[str]) -> list[str]:
    """The requested methods, deduplicated, each moved after the methods in its AFTER."""
    names = list(dict.fromkeys(names))
    for n in names:
        get_method(n)
    ordered: list[str] = []

    def place(n: str, seen: tuple[str, ...] = ()) -> None:
        if n in ordered or n in seen:
            return
        for dep in getattr(METHODS[n], "AFTER", ()):
            if dep in names:
                place(dep, seen + (n,))
        ordered.append(n)

    for n in names:
        place(n)
    return ordered


__all__ = ["METHODS", "SEARCH_METHODS", "MethodContext", "MethodResult", "ExperimentCache", "get_method", "run_order"]
