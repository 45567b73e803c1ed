"""deft_jax: Differential Evolution based Fine-Tuning (DEFT) in JAX/Flax.

Flow: data -> models (+ layer groups) -> masks -> fine-tune -> fitness -> search
-> final training -> checkpoint -> report -> predict.

    import deft_jax
    run = deft_jax.search(data="photos", model="efficientnet_lite0", out="runs/a")
    model = deft_jax.load("runs/a")
    probabilities = model.predict(["a.jpg"])

`search` and `load` (`deft_jax.api`) are imported on first use, so `import deft_jax`
does not import JAX. `deft_jax.search` is also the `python -m deft_jax.search` module;
that module is callable and calls the same function, so `import deft_jax.search` (which
sets this package's attribute `search` to the module) does not break `deft_jax.search(...)`.
"""

__version__ = "0.1.0"
__all__ = ["search", "load", "__version__"]


def __getattr__(name: str):
    if name in ("search", "load"):
        from deft_jax import api
        return getattr(api, name)
    raise AttributeError(f"module 'deft_jax' has no attribute {name!r}")
