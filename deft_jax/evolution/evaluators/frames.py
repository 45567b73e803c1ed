"""Length-prefixed pickled messages over a pipe between the search and its own worker
processes (`deft_jax.evolution.evaluators.workers`). Only ever between a deft_jax process and
the children it started: nothing a user supplies is unpickled here."""

from __future__ import annotations

import pickle
import struct

HEADER = struct.Struct(">Q")  # payload length in bytes


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
    return pickle.loads(payload)
