"""dino.v1.Tensor <-> NumPy: raw little-endian row-major bytes of float32 or float64."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._stubs import load_stubs

__all__ = ["to_tensor", "from_tensor", "proto_dtype", "DTYPES"]

# The wire element types by their names in the API ("fp32" / "fp64").
DTYPES = {"fp32": np.dtype("<f4"), "fp64": np.dtype("<f8")}


def proto_dtype(name: str | None) -> int:
    """The dino.v1.DType value of "fp32", "fp64" or None (DTYPE_UNSPECIFIED: the model's)."""
    pb = load_stubs().pb
    if name is None:
        return pb.DTYPE_UNSPECIFIED
    try:
        return {"fp32": pb.FP32, "fp64": pb.FP64}[name]
    except KeyError:
        raise ValueError("dtype must be None, 'fp32' or 'fp64', got %r" % (name,)) from None


def to_tensor(array: Any, dtype: str | None = None) -> Any:
    """Encodes an array-like as a dino.v1.Tensor. ``dtype`` ("fp32"/"fp64") forces the element
    type; by default float32 stays float32 and everything else (float64, integers, float16,
    ...) becomes float64."""
    pb = load_stubs().pb
    a = np.asarray(array)
    if dtype is None:
        dtype = "fp32" if a.dtype == np.float32 else "fp64"
    np_dtype = DTYPES.get(dtype)
    if np_dtype is None:
        raise ValueError("dtype must be None, 'fp32' or 'fp64', got %r" % (dtype,))
    a = np.ascontiguousarray(a, dtype=np_dtype)
    return pb.Tensor(shape=list(a.shape), dtype=proto_dtype(dtype), data=a.tobytes())


def from_tensor(tensor: Any, field: str = "tensor") -> np.ndarray:
    """Decodes a dino.v1.Tensor into a writable NumPy array, checking the byte count.
    ValueError naming ``field`` for an unknown dtype, a negative dimension or a byte count
    that does not match the shape."""
    pb = load_stubs().pb
    if tensor.dtype == pb.FP32:
        np_dtype = DTYPES["fp32"]
    elif tensor.dtype == pb.FP64:
        np_dtype = DTYPES["fp64"]
    else:
        raise ValueError("%s: unsupported dtype %d" % (field, tensor.dtype))
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise ValueError("%s: negative dimension in shape %s" % (field, list(shape)))
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError("%s: data holds %d bytes but shape %s of %s needs %d"
                         % (field, len(tensor.data), list(shape), np_dtype.name, expected))
    return np.frombuffer(tensor.data, dtype=np_dtype).reshape(shape).copy()
