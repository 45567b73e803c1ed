"""Read PyTorch checkpoint files (`torch.save` output) into numpy, without torch.

Pretrained weights ship as torch.save files, but torch is only an optional extra of this
package. Both on-disk formats are read:

- the legacy format (torch < 1.6 and `_use_new_zipfile_serialization=False`): a magic-number
  pickle, the protocol version, system info, the main pickle (storages appear as persistent
  ids), the pickled list of storage keys, then each storage as an 8-byte little-endian
  element count followed by its raw bytes;
- the zip format: `<prefix>/data.pkl` plus one record `<prefix>/data/<key>` per storage.

Unpickling never imports or runs arbitrary code, in either format and for every record:
- the legacy header records (magic number, protocol version, system info) and the list of
  storage keys are plain data; they are read by `_DataUnpickler`, which refuses every global
  and every persistent id, so a crafted record is an error before anything runs;
- the main pickle is read by `_Unpickler`, whose `find_class` maps the few torch names that
  tensors are made of to numpy-building shims, refuses every other torch name, and turns any
  non-torch global (numpy scalars, argparse namespaces in a checkpoint's extra entries,
  `os.system`...) into an inert placeholder whose construction and state are ignored.
  Those extra entries are dropped; only tensors are returned.
No plain `pickle.load` is used anywhere in this module.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from deft_jax.errors import UserError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _bfloat16() -> np.dtype | None:
    try:
        import ml_dtypes  # ships with jax
    except ImportError:  # pragma: no cover
        return None
    return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES: dict[str, np.dtype | None] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": _bfloat16(),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}


class _Unsupported(Exception):
    """Raised inside the reader; turned into a UserError naming the file."""


class _StorageType:
    """Stands in for `torch.FloatStorage` etc.: only its numpy dtype matters."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype


class _Storage:
    """A flat typed buffer; `data` is filled when the bytes are read (legacy: after the pickle).
    Its size must fit in `limit` bytes (what the file can hold), checked before any
    allocation, so a tiny crafted file cannot ask for terabytes."""

    def __init__(self, dtype: np.dtype, numel: Any, limit: int):
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise _Unsupported(f"storage with an invalid element count {numel!r}")
        if numel * dtype.itemsize > limit:
            raise _Unsupported(f"a storage claims {numel * dtype.itemsize:,} bytes, more than the "
                               f"{limit:,} bytes the file holds")
        self.dtype, self.numel = dtype, numel
        self.data: np.ndarray | None = None


class _StorageView:
    """Legacy format only: a storage that is a slice of another (root) storage."""

    def __init__(self, root: _Storage, offset: int, numel: int):
        if offset < 0 or numel < 0 or offset + numel > root.numel:
            raise _Unsupported("storage view extends past the end of its storage")
        self.root, self.offset, self.numel = root, offset, numel
        self.dtype = root.dtype


class _Tensor:
    """A tensor to be materialised once all storage bytes are known."""

    def __init__(self, storage: Any, offset: int, size: tuple, stride: tuple):
        if not isinstance(storage, (_Storage, _StorageView)):
            raise _Unsupported("tensor without a storage")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        if len(self.size) != len(self.stride):
            raise _Unsupported("tensor size and stride disagree")
        if any(n < 0 for n in self.size):
            raise _Unsupported("negative tensor size")
        # a tensor never holds more elements than its storage (checked before anything is
        # allocated: a stride-0 view of one element could otherwise ask for terabytes)
        if 0 not in self.size and int(np.prod(self.size, dtype=object)) > storage.numel:
            raise _Unsupported(f"a tensor of shape {list(self.size)} is larger than its storage "
                               f"({storage.numel} elements)")

    def to_numpy(self) -> np.ndarray:
        storage, offset = self.storage, self.offset
        if isinstance(storage, _StorageView):
            offset += storage.offset
            storage = storage.root
        if storage.data is None:
            raise _Unsupported("storage data missing")
        flat = storage.data
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or offset < 0:
            raise _Unsupported("negative size, stride or offset")
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size:
            raise _Unsupported("tensor extends past the end of its storage")
        strides = tuple(s * flat.itemsize for s in self.stride)
        view = np.lib.stride_tricks.as_strided(flat[offset:], self.size, strides, writeable=False)
        return np.array(view, copy=True)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    del requires_grad, backward_hooks, state
    if not isinstance(data, _Tensor):
        raise _Unsupported("parameter without tensor data")
    return data


def _size(values=()):
    return tuple(values)


class _Opaque:
    """Inert stand-in for any non-torch object; absorbs construction and state."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Opaque()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


_TORCH_NAMES = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _size,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storage_for):
        super().__init__(file)
        self._storage_for = storage_for

    def find_class(self, module: str, name: str):
        if (module, name) in _TORCH_NAMES:
            return _TORCH_NAMES[(module, name)]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            dtype = _STORAGE_DTYPES[name]
            if dtype is None:
                raise _Unsupported(f"storage type torch.{name}")
            return _StorageType(name, dtype)
        if module == "torch" or module.startswith("torch."):
            raise _Unsupported(f"{module}.{name}")
        return _Opaque

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise _Unsupported("persistent id")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":  # legacy: source of a pickled nn.Module class
            return _Opaque()
        if kind != "storage":
            raise _Unsupported(f"persistent id {kind!r}")
        return self._storage_for(pid[1:])


class _DataUnpickler(pickle.Unpickler):
    """For records that are plain data (ints, strings, lists, dicts): no global, no
    persistent id, so nothing can be constructed or called."""

    def find_class(self, module: str, name: str):
        raise _Unsupported(f"a header record names the global {module}.{name}")

    def persistent_load(self, pid):
        raise _Unsupported("a header record holds a persistent id")


def _load_data(f) -> Any:
    return _DataUnpickler(f).load()


def _read_legacy(f) -> Any:
    magic = _load_data(f)
    if magic != _LEGACY_MAGIC:
        raise _Unsupported("not a torch.save file")
    if _load_data(f) != _LEGACY_PROTOCOL:
        raise _Unsupported("unknown legacy protocol version")
    sys_info = _load_data(f)
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True

    storages: dict[str, _Storage] = {}
    views: dict[str, _StorageView] = {}
    file_size = os.fstat(f.fileno()).st_size

    def storage_for(data):
        storage_type, root_key, _location, numel, view_metadata = data
        if not isinstance(storage_type, _StorageType):
            raise _Unsupported("storage of unknown type")
        root = storages.get(root_key)
        if root is None:
            root = storages[root_key] = _Storage(storage_type.dtype, numel, file_size)
        if view_metadata is None:
            return root
        view_key, offset, view_numel = view_metadata
        if view_key not in views:
            views[view_key] = _StorageView(root, int(offset), int(view_numel))
        return views[view_key]

    result = _Unpickler(f, storage_for).load()
    keys = _load_data(f)
    if not isinstance(keys, list):
        raise _Unsupported("storage key record is not a list")
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise _Unsupported(f"storage {key!r} not referenced")
        header = f.read(8)
        if len(header) != 8:
            raise _Unsupported("file truncated")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise _Unsupported(f"storage {key!r} has {numel} elements, expected {storage.numel}")
        nbytes = numel * storage.dtype.itemsize
        if nbytes > file_size - f.tell():  # never read (allocate) past the end of the file
            raise _Unsupported("file truncated")
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise _Unsupported("file truncated")
        storage.data = _as_array(raw, storage.dtype, little)
    return result


def _read_zip(path: Path) -> Any:
    file_size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()

        def read(name: str) -> bytes:
            """A record, refused before it is read when it claims to be larger than the
            whole file (torch.save stores records uncompressed)."""
            if archive.getinfo(name).file_size > file_size:
                raise _Unsupported(f"record {name} claims {archive.getinfo(name).file_size:,} "
                                   f"bytes, more than the {file_size:,} bytes of the file")
            return archive.read(name)

        pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise _Unsupported("zip archive without a single <prefix>/data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = b"little"
        if prefix + "byteorder" in names:
            byteorder = read(prefix + "byteorder").strip()
        if byteorder not in (b"little", b"big"):
            raise _Unsupported(f"unknown byte order {byteorder!r}")
        storages: dict[str, _Storage] = {}

        def storage_for(data):
            storage_type, key, _location, numel = data
            if not isinstance(storage_type, _StorageType):
                raise _Unsupported("storage of unknown type")
            if key not in storages:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise _Unsupported(f"storage record data/{key} missing")
                storage = _Storage(storage_type.dtype, numel, archive.getinfo(record).file_size)
                nbytes = storage.numel * storage.dtype.itemsize
                raw = read(record)
                if len(raw) < nbytes:
                    raise _Unsupported(f"storage record data/{key} too short")
                storage.data = _as_array(raw[:nbytes], storage.dtype, byteorder == b"little")
                storages[key] = storage
            return storages[key]

        return _Unpickler(io.BytesIO(read(pkl[0])), storage_for).load()


def _as_array(raw: bytes, dtype: np.dtype, little: bool) -> np.ndarray:
    array = np.frombuffer(raw, dtype=dtype)
    if little != (sys.byteorder == "little") and dtype.itemsize > 1:
        array = array.byteswap()
    return array


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a torch.save'd state dict (or {'state_dict': ...} checkpoint) as numpy.

    Keys lose a leading 'module.' (DataParallel); non-tensor entries are dropped.
    Raises UserError, naming the file, when it is missing or cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} "
                        f"{'is not a regular file' if path.exists() else 'not found'}")
    try:
        if zipfile.is_zipfile(path):
            obj = _read_zip(path)
        elif tarfile.is_tarfile(path):
            raise _Unsupported("the pre-1.0 tar format of torch.save is not supported")
        else:
            with open(path, "rb") as f:
                obj = _read_legacy(f)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise _Unsupported("top-level object is not a state dict")
        out: dict[str, np.ndarray] = {}
        for key, value in obj.items():
            if not isinstance(value, _Tensor):
                continue
            if not isinstance(key, str):
                raise _Unsupported("non-string key")
            key = key[len("module."):] if key.startswith("module.") else key
            out[key] = value.to_numpy()
    except UserError:
        raise
    except _Unsupported as err:
        raise UserError(f"cannot read weights file {path}: {err}") from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError,
            IndexError, struct.error) as err:  # corrupt pickle, truncated zip, ...
        raise UserError(f"cannot read weights file {path}: not a readable torch.save file "
                        f"({type(err).__name__}: {err})".replace("\n", " ")) from None
    if not out:
        raise UserError(f"cannot read weights file {path}: it contains no tensors")
    return out
