"""The models: Flax `StagedNet`s, their layer groups and weight files; `registry` names them."""

from deft_jax.models.registry import (
                                      CIFAR_MODELS,
                                      IMAGENET_MODELS,
                                      LITE_MODELS,
                                      MODEL_NAMES,
                                      MODELS,
                                      build_model,
)

__all__ = ["CIFAR_MODELS", "IMAGENET_MODELS", "LITE_MODELS", "MODEL_NAMES", "MODELS", "build_model"]
