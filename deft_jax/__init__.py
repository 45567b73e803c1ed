"""deft_jax: Differential Evolution based Fine-Tuning (DEFT) in JAX/Flax.

Flow: data -> models (+ layer groups) -> masks -> fine-tune -> fitness -> search
-> final training -> checkpoint -> report -> predict.
"""

__version__ = "0.1.0"
