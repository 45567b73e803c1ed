"""PyTorch state-dict layouts of the Flax models: naming detection, checking, conversion.

A model describes, per key naming it accepts ("torchvision", "timm", ...), where every
tensor of the PyTorch state dict goes: an `Entry` (torch key, Flax collection, Flax path,
kind). `pretrained_loader` then
1. hashes the weight file and returns the cached conversion when there is one;
2. otherwise reads it (`.safetensors` or `torch.save`), detects the naming (the one whose
   backbone keys the file holds most of), checks it key by key against the model's own
   variable shapes, converts (OIHW -> HWIO, Linear transposes) and caches the result;
3. returns `load_pretrained(variables) -> variables` for `ModelSpec`.

A file that does not fit is one UserError naming the first missing, unexpected or
wrongly shaped key and what the model expected. The classifier (`head` entries) is loaded
only with `load_head=True`; otherwise the file's classifier keys are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from flax import traverse_util

from deft_jax.errors import UserError
from deft_jax.models import weight_files

LAYOUT_VERSION = "1"  # bump when a conversion changes, to invalidate caches
KINDS = ("conv", "dense", "vector", "channel_vector")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor: torch `key` -> Flax `collection`/`path`.

    kind: 'conv' (OIHW -> HWIO, depthwise (C,1,k,k) -> (k,k,1,C)), 'dense' ([out,in] ->
    [in,out]), 'vector' (same shape), 'channel_vector' ((C,1,1) -> (C,), torchvision's
    ConvNeXt layer scale). `head`: part of the classifier that is replaced.
    """

    key: str
    collection: str
    path: tuple[str, ...]
    kind: str
    head: bool = False


class LayoutBuilder:
    """Collects entries; helpers for the usual module kinds (torch prefix -> flax path)."""

    def __init__(self):
        self.entries: list[Entry] = []

    def conv(self, key: str, path: tuple[str, ...], bias: bool = False, head: bool = False):
        self.entries.append(Entry(f"{key}.weight", "params", (*path, "kernel"), "conv", head))
        if bias:
            self.entries.append(Entry(f"{key}.bias", "params", (*path, "bias"), "vector", head))

    def dense(self, key: str, path: tuple[str, ...], head: bool = False):
        self.entries.append(Entry(f"{key}.weight", "params", (*path, "kernel"), "dense", head))
        self.entries.append(Entry(f"{key}.bias", "params", (*path, "bias"), "vector", head))

    def bn(self, key: str, path: tuple[str, ...]):
        self.entries.append(Entry(f"{key}.weight", "params", (*path, "scale"), "vector"))
        self.entries.append(Entry(f"{key}.bias", "params", (*path, "bias"), "vector"))
        self.entries.append(Entry(f"{key}.running_mean", "batch_stats", (*path, "mean"), "vector"))
        self.entries.append(Entry(f"{key}.running_var", "batch_stats", (*path, "var"), "vector"))

    def norm(self, key: str, path: tuple[str, ...], head: bool = False):
        """LayerNorm (weight, bias; no statistics)."""
        self.entries.append(Entry(f"{key}.weight", "params", (*path, "scale"), "vector", head))
        self.entries.append(Entry(f"{key}.bias", "params", (*path, "bias"), "vector", head))

    def vector(self, key: str, path: tuple[str, ...], kind: str = "vector"):
        self.entries.append(Entry(key, "params", path, kind))


def torch_shape(kind: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "conv":
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if kind == "dense":
        return tuple(flax_shape[::-1])
    if kind == "channel_vector":
        return (*flax_shape, 1, 1)
    return tuple(flax_shape)


def _to_flax(kind: str, array: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
    if kind == "conv":
        array = np.transpose(array, (2, 3, 1, 0))
    elif kind == "dense":
        array = array.T
    return np.ascontiguousarray(array.reshape(flax_shape), dtype=np.float32)


def detect_naming(keys, layouts: Mapping[str, list[Entry]]) -> str:
    """The naming whose backbone keys the file holds most of (ties: the first listed)."""
    keys = set(keys)
    scores = {naming: sum(1 for e in entries if not e.head and e.key in keys)
              for naming, entries in layouts.items()}
    return max(scores, key=lambda naming: scores[naming])


def _ignored(key: str, head_prefixes: tuple[str, ...], load_head: bool) -> bool:
    if key.endswith("num_batches_tracked"):
        return True
    return not load_head and key.startswith(head_prefixes)


def check_and_convert(tensors: Mapping[str, np.ndarray], entries: list[Entry], shapes: Mapping,
                      load_head: bool, what: str) -> dict[str, np.ndarray]:
    """{'collection/flax/path': array}; `what` starts the one-line error
    (e.g. "weights file X does not fit resnet18 (torchvision naming)")."""
    flat_shapes = {"/".join(k): tuple(v.shape)
                   for k, v in traverse_util.flatten_dict(dict(shapes)).items()}
    used = [e for e in entries if load_head or not e.head]
    head_prefixes = tuple(e.key.rsplit(".", 1)[0] + "." for e in entries if e.head)
    expected = {}
    for entry in used:
        flax_shape = flat_shapes["/".join((entry.collection, *entry.path))]
        expected[entry.key] = torch_shape(entry.kind, flax_shape)
    for entry in used:
        if entry.key not in tensors:
            raise UserError(f"{what}: missing key '{entry.key}' "
                            f"(expected shape {expected[entry.key]})")
    for key in tensors:
        if key not in expected and not _ignored(key, head_prefixes, load_head):
            raise UserError(f"{what}: unexpected key '{key}' with shape "
                            f"{tuple(np.shape(tensors[key]))} (the model has no such tensor)")
    converted = {}
    for entry in used:
        array = np.asarray(tensors[entry.key])
        if tuple(array.shape) != expected[entry.key]:
            raise UserError(f"{what}: key '{entry.key}' has shape {tuple(array.shape)}, "
                            f"the model expects {expected[entry.key]}")
        array = weight_files.as_float32(array, f"{what}: key '{entry.key}'")
        name = "/".join((entry.collection, *entry.path))
        converted[name] = _to_flax(entry.kind, array, flat_shapes[name])
    return converted


def _cache_fits(arrays: Mapping[str, np.ndarray], entries: list[Entry], shapes: Mapping,
                load_head: bool) -> bool:
    flat_shapes = {"/".join(k): tuple(v.shape)
                   for k, v in traverse_util.flatten_dict(dict(shapes)).items()}
    names = {"/".join((e.collection, *e.path)) for e in entries if load_head or not e.head}
    return names == set(arrays) and all(tuple(arrays[n].shape) == flat_shapes[n] for n in names)


def pretrained_loader(path: str | Path, model_name: str, layouts: Mapping[str, list[Entry]],
                      shapes: Mapping, load_head: bool = False
                      ) -> tuple[Callable[[dict], dict], str]:
    """(load_pretrained, the path as text) for `ModelSpec`; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} "
                        f"{'is not a regular file' if path.exists() else 'not found'}")
    digest = weight_files.file_digest(path)
    arrays, naming = None, None
    for candidate, entries in layouts.items():
        layout_id = f"{LAYOUT_VERSION}:{model_name}:{candidate}:head={load_head}"
        cached = weight_files.load_cached(weight_files.cache_path(digest, layout_id))
        if cached is not None and _cache_fits(cached, entries, shapes, load_head):
            arrays, naming = cached, candidate
            break
    if arrays is None:
        tensors = weight_files.read_weight_file(path)
        naming = detect_naming(tensors, layouts)
        what = f"weights file {path} does not fit {model_name} ({naming} naming)"
        arrays = check_and_convert(tensors, layouts[naming], shapes, load_head, what)
        layout_id = f"{LAYOUT_VERSION}:{model_name}:{naming}:head={load_head}"
        weight_files.save_cached(weight_files.cache_path(digest, layout_id), arrays)

    def load_pretrained(variables: dict) -> dict:
        flat = traverse_util.flatten_dict({c: dict(v) for c, v in variables.items()})
        for name, array in arrays.items():
            key = tuple(name.split("/"))
            if tuple(flat[key].shape) != array.shape:  # pragma: no cover - checked above
                raise UserError(f"weights file {path}: {name} has shape {array.shape}, "
                                f"model expects {tuple(flat[key].shape)}")
            flat[key] = array
        loaded = traverse_util.unflatten_dict(flat)
        # an empty collection (a model without BatchNorm has no batch_stats) stays present
        return {c: loaded.get(c, {}) for c in variables}

    return load_pretrained, str(path)
