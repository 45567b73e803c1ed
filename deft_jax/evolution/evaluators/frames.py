"""Length-prefixed pickled messages over a pipe between the search and its own worker
processes (`deft_jax.evolution.evaluators.workers`). Only ever between a deft_jax process and
the children it started, and read back through an allow-list (`ALLOWED`): plain containers,
numbers and strings, numpy arrays and scalars, and the few deft_jax dataclasses an evaluator
is built from. Anything else in a message is an error, never imported."""

from __future__ import annotations

import io
import pickle
import struct

HEADER = struct.Struct(">Q")  # payload length in bytes

_NUMPY = {"_reconstruct", "scalar", "_frombuffer"}
# module -> the names a message may refer to (numpy 1.x and 2.x spell its modules differently)
ALLOWED: dict[str, set[str]] = {
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": _NUMPY, "numpy._core.multiarray": _NUMPY,
    "numpy.core.numeric": _NUMPY, "numpy._core.numeric": _NUMPY,
    "deft_jax.config.schema": {"FineTuneConfig"},
    "deft_jax.data.inputs": {"SplitArrays"},
    "deft_jax.data.normalize": {"NormalizedImages"},
    "deft_jax.evolution.evaluators.recipe": {"FitnessRecipe"},
}


class AllowListUnpickler(pickle.Unpickler):
    """Resolves only the globals in `ALLOWED`."""

    def find_class(self, module: str, name: str):
        if name in ALLOWED.get(module, ()) or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a worker message refers to {module}.{name}, which is not allowed")


def write_frame(stream, message) -> None:
    """Send one message (any picklable value) and flush."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(HEADER.pack(len(payload)) + payload)
    while view:
        n = stream.write(view)
        view = view[n:]
    stream.flush()


def read_exact(stream, n: int) -> bytes | None:
    """Exactly n bytes, or None at end of stream (the other side exited)."""
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(stream):
    """The next message; raises EOFError when the other side has gone."""
    header = read_exact(stream, HEADER.size)
    if header is None:
        raise EOFError("the other process closed the pipe")
    payload = read_exact(stream, HEADER.unpack(header)[0])
    if payload is None:
        raise EOFError("the other process closed the pipe mid-message")
    return AllowListUnpickler(io.BytesIO(payload)).load()
