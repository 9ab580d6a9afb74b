"""Arrow columns straight from numpy buffers and Python strings.

``pa.array`` on a list or a numpy array imports pandas on its first call (a third of a second,
more than scoring a thousand devices); building arrays from their buffers does not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def numeric(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """A fixed-width column (ints, floats, timestamps as int64) sharing ``values``' memory."""
    values = np.ascontiguousarray(values)
    if values.dtype.itemsize * 8 != kind.bit_width:
        raise ValueError(f"{values.dtype} values do not fit an Arrow {kind} column")
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def booleans(values: np.ndarray) -> pa.Array:
    packed = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(packed)])


def strings(values: Sequence[str | None]) -> pa.Array:
    """A string column; ``None`` is null."""
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    nulls = np.array([v is None for v in values], dtype=bool)
    validity = pa.py_buffer(np.packbits(~nulls, bitorder="little")) if nulls.any() else None
    return pa.Array.from_buffers(
        pa.large_string(),
        len(values),
        [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
    )


def dictionary(codes: np.ndarray, values: Sequence[str]) -> pa.Array:
    """A dictionary-encoded string column: ``values[codes[i]]`` per row (int32 ``codes`` are
    shared, not copied)."""
    return pa.DictionaryArray.from_arrays(
        numeric(codes.astype(np.int32, copy=False), pa.int32()), strings(values)
    )
