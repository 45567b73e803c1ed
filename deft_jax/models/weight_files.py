"""Weight files users bring, read as numpy, and the on-disk cache of converted parameters.

- `.safetensors`: read with the `safetensors` package's numpy backend (no torch, no code
  execution: the format is a JSON header plus raw tensor bytes);
- anything else (`.pth`, `.pt`, `.th`, `.bin`): a `torch.save` file, read by
  `deft_jax.models.torch_weights` (torch-free, no arbitrary unpickling).

Converted parameters (already transposed to Flax layouts) are cached as one `.npz` per
(weight-file hash, model layout) under `$DEFT_JAX_WEIGHT_CACHE` (default
`~/.cache/deft_jax/converted`), so a second run neither parses nor converts the file again.
The cache is an optimisation only: an unreadable or unwritable cache is silently bypassed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from deft_jax.errors import UserError

CACHE_ENV = "DEFT_JAX_WEIGHT_CACHE"
SAFETENSORS_SUFFIXES = (".safetensors",)


def read_weight_file(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a `.safetensors` or `torch.save` state dict, as numpy arrays.

    A leading 'module.' (DataParallel) is dropped from every key. UserError when the file is
    missing, unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} "
                        f"{'is not a regular file' if path.exists() else 'not found'}")
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        from deft_jax.models.torch_weights import read_torch_state_dict
        return read_torch_state_dict(path)
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError:
        raise UserError("reading .safetensors needs the safetensors package: "
                        "pip install safetensors") from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:  # a corrupt or truncated file, or unreadable
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read weights file {path}: not a readable .safetensors file "
                        f"({message})") from None
    out = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in tensors.items()}
    if not out:
        raise UserError(f"cannot read weights file {path}: it contains no tensors")
    return out


def _bfloat16() -> np.dtype | None:
    try:
        import ml_dtypes  # ships with jax
    except ImportError:  # pragma: no cover
        return None
    return np.dtype(ml_dtypes.bfloat16)


BFLOAT16 = _bfloat16()


def is_real_float(dtype: np.dtype) -> bool:
    """float16/32/64 or bfloat16 (numpy does not count ml_dtypes' bfloat16 as floating)."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or (BFLOAT16 is not None and dtype == BFLOAT16)


def as_float32(array, what: str) -> np.ndarray:
    """A weight tensor as float32: float16/32/64 and bfloat16 are converted; integers,
    booleans and complex values (whose imaginary part would be dropped) are refused with
    one line starting with `what` (e.g. "weights file X: key 'conv1.weight'")."""
    array = np.asarray(array)
    if not is_real_float(array.dtype):
        kind = "complex" if array.dtype.kind == "c" else "not floating point"
        raise UserError(f"{what} has dtype {array.dtype} ({kind}); weights must be real "
                        "floating point (float16, bfloat16, float32 or float64)")
    return array.astype(np.float32)


def file_digest(path: str | Path) -> str:
    """SHA-256 of the file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "deft_jax" / "converted"


def cache_path(digest: str, layout_id: str) -> Path:
    """Where the converted parameters of the file with `digest` for `layout_id` live."""
    layout_hash = hashlib.sha256(layout_id.encode()).hexdigest()[:16]
    return cache_dir() / f"{digest[:32]}-{layout_hash}.npz"


def load_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The cached {name: array} or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError):
        return None


def save_cached(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write atomically (temp file + rename); False when the cache folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        return False
    return True
