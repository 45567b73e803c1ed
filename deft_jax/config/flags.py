"""The search's convenience flags (`--data`, `--model`, `--weights`, `--image-size`) as
config overrides, and the input size a run gets when none is given anywhere.

Flags become `--set`-style overrides applied after the config file and before the user's
own `--set` values, so the precedence is: defaults < config file < flags < `--set`.

`--data` takes a folder of images (any layout of `deft_jax.data.layout`), an `.npz` file,
`tfds:NAME` or `digits`. It sets the source's kind and path (or name): a config file's
source of the same kind keeps its other options (crop, label_regex, ...); another kind
starts from that kind's defaults.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from deft_jax.errors import UserError
from deft_jax.models.registry import MODELS

logger = logging.getLogger(__name__)

# ImageNet backbones were trained at 224 px; on a CPU a search at 224 costs about twice
# what it costs at 160 (pixels: 160^2 / 224^2 = 0.51), so CPU runs default to 160. Small
# images are upsampled to it too: Lite0 on 64 px blood cells (.npz) scored 0.845 at 64 px,
# 0.900 at 128 and 0.934 at 160, 5 seeds each (docs/benchmarks.md, "Image size on the blood cells").
PHOTO_FAMILIES = ("imagenet", "lite")
PHOTO_SOURCES = ("folder", "tfds", "npz")  # the digits demo (8 px images) keeps 32 px
PHOTO_INPUT_SIZE = 224
PHOTO_INPUT_SIZE_CPU = 160
SMALL_INPUT_SIZE = 32  # the CIFAR models (and small_cnn): 32 px, as before


def data_overrides(data: str) -> list[str]:
    """`--data` as overrides (see module doc); UserError for a path that is neither."""
    def kv(key, value):
        return f"data.source.{key}={json.dumps(value)}"

    if data == "digits":
        return [kv("kind", "digits")]
    if data.startswith("tfds:"):
        if not data[len("tfds:"):]:
            raise UserError("--data tfds:NAME needs a dataset name, e.g. tfds:beans")
        return [kv("kind", "tfds"), kv("name", data[len("tfds:"):])]
    path = Path(data)
    if path.is_dir():
        return [kv("kind", "folder"), kv("path", str(path))]
    if path.suffix.lower() == ".npz" and path.is_file():
        return [kv("kind", "npz"), kv("path", str(path))]
    what = "not found" if not path.exists() else "is neither a folder nor an .npz file"
    raise UserError(f"--data {data}: {what} (give a folder of images, an .npz file, "
                    "tfds:NAME or digits)")


def flag_overrides(data: str | None = None, model: str | None = None, weights: str | None = None,
                   image_size: int | None = None) -> list[str]:
    """The overrides of the flags that are set, in a fixed order."""
    out = data_overrides(data) if data is not None else []
    if model is not None:
        out.append(f"model.name={json.dumps(model)}")
    if weights is not None:
        out.append(f"model.weights={json.dumps(str(weights))}")
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int):
            raise UserError(f"--image-size must be an integer, got {image_size!r}")
        out.append(f"model.input_size={image_size}")
    return out


def default_input_size(model: str, source: dict, backend=lambda: "cpu") -> tuple[int, str | None]:
    """(model.input_size, why) for a run that sets none: the source's own `image_size` if it
    has one; for an ImageNet backbone (registry family imagenet or lite) on images of a
    folder, a TFDS source or an `.npz` file, whatever their own size, 224 px on a GPU/TPU and
    160 px on a CPU (`backend()`: JAX's default backend, asked only then); else 32 px, as
    always (the digits demo, the CIFAR models, small_cnn). `why` is None for the plain 32 px
    default."""
    source = source if isinstance(source, dict) else {}
    if isinstance(source.get("image_size"), int) and not isinstance(source.get("image_size"), bool):
        return source["image_size"], f"data.source.image_size = {source['image_size']}"
    entry = MODELS.get(model) if isinstance(model, str) else None
    if entry is None or entry.family not in PHOTO_FAMILIES or source.get("kind") not in PHOTO_SOURCES:
        return SMALL_INPUT_SIZE, None
    device = backend()
    size = PHOTO_INPUT_SIZE_CPU if device == "cpu" else PHOTO_INPUT_SIZE
    return size, (f"{model} is an ImageNet backbone; {PHOTO_INPUT_SIZE_CPU} px on a CPU, "
                  f"{PHOTO_INPUT_SIZE} px on a GPU/TPU, this run: {device}")


def logged_default_input_size(backend):
    """For `load_config(input_size_default=...)`: the raw config -> `default_input_size`,
    saying in the log which size the run got and why."""
    def choose(raw: dict) -> int:
        model = raw.get("model") or {}
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        size, why = default_input_size(model.get("name"), data.get("source"), backend)
        if why is not None:
            logger.info(f"model.input_size not set: {size} px ({why}); set --image-size N to choose")
        return size
    return choose
