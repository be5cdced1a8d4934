"""TensorProto <-> numpy, with TensorFlow's Tensor::FromProto rules.

FromProto: a typed value list shorter than the shape repeats its last value (an empty one gives
zeros), a longer one is cut; tensor_content must match the shape exactly. Responses use the
typed fields (TF Serving's default kAsProtoField serialization).
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2  # noqa: F401

from serving.errors import ServingError, INVALID_ARGUMENT
from serving.tensors import (
    NUMPY_DTYPES, DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING,
    DT_COMPLEX64, DT_INT64, DT_BOOL, DT_UINT16, DT_COMPLEX128, DT_HALF, DT_UINT32, DT_UINT64,
    DT_BFLOAT16,
)

_FIELDS = {
    DT_FLOAT: "float_val", DT_DOUBLE: "double_val", DT_INT32: "int_val", DT_UINT8: "int_val",
    DT_INT16: "int_val", DT_INT8: "int_val", DT_UINT16: "int_val", DT_STRING: "string_val",
    DT_INT64: "int64_val", DT_BOOL: "bool_val", DT_HALF: "half_val", DT_UINT32: "uint32_val",
    DT_UINT64: "uint64_val", DT_COMPLEX64: "scomplex_val", DT_COMPLEX128: "dcomplex_val",
}
DTYPE_OF_NUMPY = {np.dtype(v): k for k, v in NUMPY_DTYPES.items() if k != DT_STRING}
# Typed fields whose values convert to the numpy dtype as they are (no narrowing, no pairs).
_EXACT_FIELD_DTYPES = {DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64, DT_BOOL, DT_UINT32, DT_UINT64}


def _parse_error(alias: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, f"tensor parsing error: {alias}")


def _decode_string_content(content: bytes, n: int) -> list[bytes] | None:
    """DT_STRING tensor_content: n varint lengths, then the bytes."""
    lengths, pos = [], 0
    for _ in range(n):
        shift = value = 0
        while True:
            if pos >= len(content):
                return None
            byte = content[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        lengths.append(value)
    out = []
    for length in lengths:
        if pos + length > len(content):
            return None
        out.append(content[pos:pos + length])
        pos += length
    return out


_MAX_ELEMENTS = (1 << 63) - 1  # TensorShape: num_elements must fit int64


def to_ndarray(proto, alias: str) -> np.ndarray:
    """Tensor::FromProto; a proto it rejects, or one too large to allocate (FromProto fails
    when its buffer cannot be allocated), is "tensor parsing error: <alias>"."""
    try:
        return _to_ndarray(proto, alias)
    except (MemoryError, ValueError, OverflowError):
        raise _parse_error(alias) from None


def _to_ndarray(proto, alias: str) -> np.ndarray:
    dtype = proto.dtype
    field_name = _FIELDS.get(dtype)
    shape_proto = proto.tensor_shape
    if field_name is None or shape_proto.unknown_rank:
        raise _parse_error(alias)
    shape = [d.size for d in shape_proto.dim]
    n = 1
    for size in shape:
        n *= size
        if size < 0 or n > _MAX_ELEMENTS:  # TensorShape::IsValid: overflow checked per step
            raise _parse_error(alias)
    np_dtype = NUMPY_DTYPES[dtype]
    if n == 0:
        return np.zeros(shape, dtype=np_dtype)
    content = proto.tensor_content
    if content:
        if dtype == DT_STRING:
            values = _decode_string_content(content, n)
            if values is None:
                raise _parse_error(alias)
            array = np.empty(n, dtype=object)
            array[:] = values
            return array.reshape(shape)
        if len(content) != n * np.dtype(np_dtype).itemsize:
            raise _parse_error(alias)
        # Copied: TensorFlow may reuse an input buffer it believes it owns.
        return np.frombuffer(content, dtype=np_dtype).reshape(shape).copy()
    field = getattr(proto, field_name)
    if dtype in _EXACT_FIELD_DTYPES and len(field) == n:  # the common case: one value per element
        return np.fromiter(field, np_dtype, n).reshape(shape)
    if dtype in (DT_COMPLEX64, DT_COMPLEX128):
        pairs = list(field)
        values = [complex(pairs[i], pairs[i + 1]) for i in range(0, len(pairs) - 1, 2)]
    elif dtype == DT_STRING:
        values = list(field)
    elif dtype == DT_HALF:
        values = np.array(list(field), dtype=np.uint16).view(np.float16).tolist()
    else:
        values = field
    count = len(values)
    if dtype == DT_STRING:
        array = np.empty(n, dtype=object)
        if count == 0:
            array[:] = [b""] * n
        else:
            array[:] = list(values[:n]) + [values[-1]] * (n - count) if count < n else list(values[:n])
        return array.reshape(shape)
    if count == 0:
        return np.zeros(shape, dtype=np_dtype)
    if dtype in (DT_INT8, DT_INT16, DT_UINT8, DT_UINT16):
        flat = np.array(values, dtype=np.int64).astype(np_dtype)
    else:
        flat = np.array(values, dtype=np_dtype)
    if count >= n:
        flat = flat[:n]
    else:
        flat = np.concatenate([flat, np.full(n - count, flat[-1], dtype=np_dtype)])
    return flat.reshape(shape)


def dtype_of(array: np.ndarray) -> int:
    dtype = DTYPE_OF_NUMPY.get(array.dtype)
    if dtype is not None:
        return dtype
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return DT_STRING
    return 0


def from_ndarray(array: np.ndarray, proto=None):
    """Tensor::AsProtoField."""
    proto = proto if proto is not None else tensor_pb2.TensorProto()
    dtype = dtype_of(array)
    proto.dtype = dtype
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add(size=size)
    flat = array.reshape(-1)
    if dtype == DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist())
    elif dtype == DT_HALF:
        proto.half_val.extend(flat.view(np.uint16).tolist())
    elif dtype in (DT_COMPLEX64, DT_COMPLEX128):
        field = proto.scomplex_val if dtype == DT_COMPLEX64 else proto.dcomplex_val
        field.extend(np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist())
    elif dtype in _FIELDS:
        getattr(proto, _FIELDS[dtype]).extend(flat.tolist())
    return proto
