"""TF Serving's JSON <-> tensor codec (util/json_tensor.cc) over numpy arrays.

Requests become {input alias: ndarray} with the dtype the signature names; responses are written
byte for byte as TF Serving writes them. Error messages are TF Serving's. Well-formed requests
take a vectorized path; anything it does not accept is re-walked by the exact (slow) path, which
produces the precise error, so both paths agree on what is valid.
"""

from __future__ import annotations

import base64
import binascii
import re
from itertools import chain

import numpy as np

from serving import jsontext
from serving.errors import ServingError, INVALID_ARGUMENT, UNIMPLEMENTED
from serving.jsontext import quote, value_to_string

# tensorflow.DataType numbers and DataTypeString names.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_COMPLEX64, DT_INT64, DT_BOOL, DT_BFLOAT16, DT_UINT16, DT_COMPLEX128 = 8, 9, 10, 14, 17, 18
DT_HALF, DT_RESOURCE, DT_VARIANT, DT_UINT32, DT_UINT64 = 19, 20, 21, 22, 23

DTYPE_STRINGS = {
    0: "INVALID", 1: "float", 2: "double", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
    7: "string", 8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8",
    13: "qint32", 14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16",
    18: "complex128", 19: "half", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
}
NUMPY_DTYPES = {
    DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8,
    DT_INT16: np.int16, DT_INT8: np.int8, DT_STRING: np.object_, DT_COMPLEX64: np.complex64,
    DT_INT64: np.int64, DT_BOOL: np.bool_, DT_UINT16: np.uint16, DT_COMPLEX128: np.complex128,
    DT_HALF: np.float16, DT_UINT32: np.uint32, DT_UINT64: np.uint64,
}
_INT32_TYPES = (DT_INT32, DT_INT16, DT_INT8, DT_UINT8)
_INT_RANGES = {
    DT_INT32: (-(1 << 31), (1 << 31) - 1), DT_INT16: (-(1 << 31), (1 << 31) - 1),
    DT_INT8: (-(1 << 31), (1 << 31) - 1), DT_UINT8: (-(1 << 31), (1 << 31) - 1),
    DT_INT64: (-(1 << 63), (1 << 63) - 1), DT_UINT32: (0, (1 << 32) - 1),
    DT_UINT64: (0, (1 << 64) - 1),
}
BYTES_SUFFIX = "_bytes"
_B64_CHARS = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")


def dtype_string(dtype: int) -> str:
    return DTYPE_STRINGS.get(dtype, f"unknown dtype enum ({dtype})")


def _invalid(message: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, message)


def _to_bytes(text) -> bytes:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text


# ---------------------------------------------------------------- JSON value -> ndarray


def is_b64_object(value) -> bool:
    return (isinstance(value, dict) and len(value) == 1 and "b64" in value
            and isinstance(value["b64"], str))


def decode_b64_object(value) -> bytes:
    if not is_b64_object(value):
        raise _invalid(f"JSON Value: {value_to_string(value)} not formatted correctly for base64 data")
    text = _to_bytes(value["b64"])
    # absl::Base64Unescape: standard alphabet, padding optional.
    if not _B64_CHARS.match(text) or len(text.rstrip(b"=")) % 4 == 1:
        raise _invalid("Unable to base64 decode")
    stripped = text.rstrip(b"=")
    try:
        return base64.b64decode(stripped + b"=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("Unable to base64 decode") from None


def dense_shape(value) -> list[int]:
    """GetDenseTensorShape: follow the first element of each nested list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _type_error(value, dtype: int) -> ServingError:
    return _invalid(f"JSON Value: {value_to_string(value)} Type: {jsontext.type_name(value)} "
                    f"is not of expected type: {dtype_string(dtype)}")


def _convert_leaf(value, dtype: int):
    """AddValueToTensor (plus the base64 object case of FillTensorProto)."""
    if isinstance(value, dict):
        if dtype == DT_STRING:
            return decode_b64_object(value)
        raise _type_error(value, dtype)
    kind = type(value)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        if kind is int or kind is float:
            return value
    elif dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if kind is int and low <= value <= high:
            return value
    elif dtype == DT_STRING:
        if kind is str:
            return _to_bytes(value)
    elif dtype == DT_BOOL:
        if kind is bool:
            return value
    else:
        raise ServingError(UNIMPLEMENTED, f"Conversion of JSON Value: {value_to_string(value)} "
                                          f"to type: {dtype_string(dtype)}")
    raise _type_error(value, dtype)


def _exact_values(value, dtype: int, shape: list[int]) -> list:
    """FillTensorProto: the reference walk, raising TF Serving's errors."""
    rank = len(shape)
    out: list = []

    def walk(val, level):
        if not isinstance(val, list):
            if level != rank:
                raise _invalid(f"JSON Value: {value_to_string(val)} found at incorrect level: "
                               f"{level + 1} in the JSON DOM. Expected at level: {rank}")
            out.append(_convert_leaf(val, dtype))
            return
        if level >= rank:
            raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(val) != shape[level]:
            raise _invalid(f"Encountered list at unexpected size: {len(val)} at level: {level} "
                           f"expected size: {shape[level]}")
        for item in val:
            walk(item, level + 1)

    try:
        walk(value, 0)
    except RecursionError:
        raise _invalid("JSON value is nested too deeply") from None
    return out


_FAST_LEAF_TYPES = {
    DT_FLOAT: {int, float}, DT_DOUBLE: {int, float}, DT_BOOL: {bool}, DT_STRING: {str},
    **{dt: {int} for dt in _INT_RANGES},
}


def _fast_values(value, dtype: int, shape: list[int]):
    """The leaves of a regular nested list with acceptable types, or None."""
    items = [value]
    for size in shape:
        if not items:
            break
        if set(map(type, items)) != {list} or set(map(len, items)) != {size}:
            return None
        items = list(chain.from_iterable(items))
    if not items:
        return items
    allowed = _FAST_LEAF_TYPES.get(dtype)
    if allowed is None or not set(map(type, items)) <= allowed:
        return None
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if min(items) < low or max(items) > high:
            return None
    elif dtype == DT_STRING:
        return [s.encode("utf-8", "surrogateescape") for s in items]
    return items


def _array(values: list, dtype: int, shape: list[int]) -> np.ndarray:
    np_dtype = NUMPY_DTYPES[dtype]
    if dtype == DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype in (DT_INT8, DT_INT16, DT_UINT8):
        # TensorProto int_val holds int32; the tensor narrows it (wrapping), as TF does.
        return np.array(values, dtype=np.int64).astype(np_dtype).reshape(shape)
    with np.errstate(over="ignore"):
        return np.array(values, dtype=np_dtype).reshape(shape)


def json_to_array(value, dtype: int) -> np.ndarray:
    """One tensor from a JSON value (scalar, b64 object or nested lists)."""
    shape = dense_shape(value)
    values = _fast_values(value, dtype, shape)
    if values is None:
        values = _exact_values(value, dtype, shape)
    return _array(values, dtype, shape)


# ---------------------------------------------------------------- :predict request bodies

ROW, COLUMNAR = "row", "columnar"


def parse_signature_name(doc) -> str:
    """FillSignature: the optional "signature_name" must be a string."""
    if not isinstance(doc, dict):
        raise _invalid(f"JSON Value: {value_to_string(doc)} Is not object")
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise _invalid(f"JSON Value: {value_to_string(doc)} not formatted correctly. "
                       "'signature_name' key must be a string value.")
    return name


def predict_inputs(doc: dict, input_dtypes: dict[str, int], signature_name: str):
    """FillPredictRequestFromJson after the signature is known: (format, {alias: ndarray})."""
    if not input_dtypes:
        raise _invalid("Failed to get input map for signature: "
                       + (signature_name or "DEFAULT"))
    has_instances = "instances" in doc
    has_inputs = "inputs" in doc
    if has_instances:
        if has_inputs:
            raise _invalid(f"JSON Value: {value_to_string(doc)} Not formatted correctly expecting "
                           "only one of 'inputs' or 'instances' keys to exist ")
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _invalid(f"JSON Value: {value_to_string(doc)} Expecting 'instances' to be an "
                           "list/array")
        if not instances:
            raise _invalid(f"JSON Value: {value_to_string(doc)} No values in 'instances' array")
        return ROW, _rows_to_arrays(instances, input_dtypes)
    if has_inputs:
        return COLUMNAR, _columns_to_arrays(doc["inputs"], input_dtypes)
    raise _invalid("Missing 'inputs' or 'instances' key")


def _is_element_object(value) -> bool:
    return isinstance(value, dict) and not is_b64_object(value)


def _rows_to_arrays(instances: list, input_dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    names = sorted(input_dtypes)
    if not isinstance(instances[0], dict) and len(names) > 1:
        raise _invalid("instances is a plain list, but expecting list of objects as multiple "
                       "input tensors required as per tensorinfo_map")
    objects = _is_element_object(instances[0])
    # Fast path: every row has exactly the input names; each column stacks regularly.
    if objects:
        name_set = set(names)
        if all(type(row) is dict and row.keys() == name_set for row in instances):
            arrays = {}
            for name in names:
                column = [row[name] for row in instances]
                shape = dense_shape(column)
                values = _fast_values(column, input_dtypes[name], shape)
                if values is None:
                    break
                arrays[name] = _array(values, input_dtypes[name], shape)
            else:
                return arrays
    else:
        name = names[0]
        shape = dense_shape(instances)
        values = _fast_values(instances, input_dtypes[name], shape)
        if values is not None and all(not _is_element_object(r) for r in instances):
            return {name: _array(values, input_dtypes[name], shape)}
    return _rows_to_arrays_exact(instances, input_dtypes, names, objects)


def _rows_to_arrays_exact(instances, input_dtypes, names, objects) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList, step by step for its error messages."""
    per_name: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add_item(item, name):
        if name not in input_dtypes:
            raise _invalid(f"JSON object: does not have named input: {name}")
        shape = dense_shape(item)
        values = _exact_values(item, input_dtypes[name], shape)
        if name not in sizes:
            sizes[name] = len(values)
            shapes[name] = shape
        elif sizes[name] != len(values):
            raise _invalid(f"Expecting tensor size: {sizes[name]} but got: {len(values)}")
        elif shapes[name] != shape:
            raise _invalid(f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(shape)}")
        per_name.setdefault(name, []).extend(values)

    for index, row in enumerate(instances):
        if objects:
            if not _is_element_object(row):
                raise _invalid(f"Expecting object but got list at item {index} of input list")
            for key, item in row.items():
                try:
                    add_item(item, key)
                except ServingError as e:
                    raise _invalid(f"Failed to process element: {index} key: {key} of 'instances' "
                                   f"list. Error: {e.status_string()}") from None
            if set(row) != set(names):
                raise _invalid(f"Failed to process element: {index} of 'instances' list. JSON "
                               f"object: {value_to_string(row)} keys must be equal to: "
                               + ",".join(names))
        else:
            if _is_element_object(row):
                raise _invalid(f"Expecting value/list but got object at item {index} of input list")
            try:
                add_item(row, names[0])
            except ServingError as e:
                raise _invalid(f"Failed to process element: {index} of 'instances' list. "
                               f"Error: {e.status_string()}") from None
    return {name: _array(values, input_dtypes[name], [len(instances)] + shapes[name])
            for name, values in per_name.items()}


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _columns_to_arrays(inputs, input_dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap."""
    if not isinstance(inputs, dict) or is_b64_object(inputs):
        if len(input_dtypes) > 1:
            raise _invalid("inputs is a plain value/list, but expecting an object as multiple "
                           "input tensors required as per tensorinfo_map")
        (name, dtype), = input_dtypes.items()
        return {name: json_to_array(inputs, dtype)}
    arrays = {}
    for name in sorted(input_dtypes):
        if name not in inputs:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = json_to_array(inputs[name], input_dtypes[name])
    return arrays


# ---------------------------------------------------------------- :classify / :regress bodies


def examples_from_json(doc) -> tuple[dict | None, list[dict]]:
    """FillClassifyRegressRequestFromJson: ({feature: Feature-like} context, examples).

    Features come back as (kind, values) with kind in "bytes", "float", "int64".
    """
    context = None
    if "context" in doc:
        context = _example_features(doc["context"])
    if "examples" not in doc:
        raise _invalid(f"JSON Value: {value_to_string(doc)} When method is classify, key "
                       "'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _invalid(f"JSON Value: {value_to_string(doc)} Expecting 'examples' value to be an "
                       "list/array")
    if not examples:
        raise _invalid(f"JSON Value: {value_to_string(doc)} 'examples' value is an empty array")
    return context, [_example_features(e) for e in examples]


def _example_features(value) -> dict:
    if not isinstance(value, dict):
        raise _invalid(f"Example must be JSON object but got JSON {jsontext.type_name(value)}")
    features = {}
    for name, content in value.items():
        kind, values = None, []
        for item in (content if isinstance(content, list) else [content]):
            kind = _add_feature_value(item, name, kind, values)
        features[name] = (kind, values)
    return features


def _add_feature_value(item, name: str, kind, values: list):
    """AddValueToFeature; returns the feature's kind after adding item."""
    def incompatible():
        return _invalid(f"Unexpected element type in feature: {name} expecting type: {kind}")

    if item is None or isinstance(item, list):
        raise _invalid(f"Feature: {name} has element with unexpected JSON type: "
                       f"{jsontext.type_name(item)}")
    if item is True or item is False:
        if kind not in (None, "int64"):
            raise incompatible()
        values.append(1 if item else 0)
        return "int64"
    if isinstance(item, dict):
        if not is_b64_object(item):
            raise _invalid(f"Feature: {name} has element with unexpected JSON type: Object")
        if kind not in (None, "bytes"):
            raise incompatible()
        values.append(decode_b64_object(item))
        return "bytes"
    if isinstance(item, str):
        if kind not in (None, "bytes"):
            raise incompatible()
        values.append(_to_bytes(item))
        return "bytes"
    if isinstance(item, float):
        if kind not in (None, "float"):
            raise incompatible()
        values.append(item)
        return "float"
    if kind not in (None, "int64"):
        raise incompatible()
    if item >= 1 << 63:
        raise _invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    values.append(item)
    return "int64"


# ---------------------------------------------------------------- responses


def _indent(depth: int) -> str:
    return "\n" + "    " * depth


def leaf_texts(array: np.ndarray, as_bytes: bool, leaf_depth: int) -> list[str]:
    """AddSingleValueAndAdvance for every element; leaf_depth is the writer's nesting there."""
    kind = array.dtype
    if kind == np.float32:
        return jsontext.format_float32_array(array)
    flat = array.reshape(-1)
    if kind == np.float64:
        return [jsontext.format_float64(v) for v in flat.tolist()]
    if kind == np.bool_:
        return ["true" if v else "false" for v in flat.tolist()]
    if kind.kind in "iu":
        return [str(v) for v in flat.tolist()]
    if kind == np.object_ or kind.kind in "SU":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist()]
        if as_bytes:
            open_ = "{" + _indent(leaf_depth + 1) + '"b64": '
            close = _indent(leaf_depth) + "}"
            return [open_ + '"' + base64.b64encode(v).decode("ascii") + '"' + close for v in values]
        return [quote(v.decode("utf-8", "surrogateescape")) for v in values]
    names = {np.dtype(np.float16): "half", np.dtype(np.complex64): "complex64",
             np.dtype(np.complex128): "complex128"}
    raise _invalid(f"Failed to write JSON value for tensor type: {names.get(kind, str(kind))}")


def _nested(texts: list[str], shape: tuple, start: int, single_line: bool, depth: int) -> tuple[str, int]:
    """AddTensorValues for one (sub)array beginning at depth; returns (text, next offset)."""
    if not shape:
        return texts[start], start + 1
    size = shape[0]
    if len(shape) == 1:
        children = texts[start:start + size]
        offset = start + size
    else:
        children = []
        offset = start
        for _ in range(size):
            child, offset = _nested(texts, shape[1:], offset, single_line, depth + 1)
            children.append(child)
    if single_line:
        return "[" + ", ".join(children) + "]", offset
    if not children:
        return "[]", offset
    pad = _indent(depth + 1)
    return "[" + pad + ("," + pad).join(children) + _indent(depth) + "]", offset


def predict_response_json(outputs: dict[str, np.ndarray], fmt: str) -> bytes:
    """MakeJsonFromTensors."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    multiple = len(names) > 1
    if fmt == COLUMNAR:
        if not multiple:
            array = outputs[names[0]]
            texts = leaf_texts(array, _is_bytes(names[0], array), 1 + array.ndim)
            body, _ = _nested(texts, array.shape, 0, False, 1)
            return ('{\n    "outputs": ' + body + "\n}").encode("utf-8", "surrogateescape")
        parts = []
        for name in names:
            array = outputs[name]
            texts = leaf_texts(array, _is_bytes(name, array), 2 + array.ndim)
            body, _ = _nested(texts, array.shape, 0, False, 2)
            parts.append(_indent(2) + quote(name) + ": " + body)
        text = '{\n    "outputs": {' + ",".join(parts) + _indent(1) + "}\n}"
        return text.encode("utf-8", "surrogateescape")

    batch = -1
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                           f"expecting: {batch}")
        batch = array.shape[0]
    item_depth = 3 if multiple else 2
    columns = []
    for name in names:
        array = outputs[name]
        texts = leaf_texts(array, _is_bytes(name, array), item_depth + array.ndim - 1)
        per_item, offset = [], 0
        for _ in range(batch):
            text, offset = _nested(texts, array.shape[1:], offset, True, item_depth)
            per_item.append(text)
        columns.append(per_item)
    if batch == 0:
        return b'{\n    "predictions": []\n}'
    if not multiple:
        text = '{\n    "predictions": [' + ", ".join(columns[0]) + _indent(1) + "]\n}"
    else:
        quoted = [quote(n) for n in names]
        items = []
        for i in range(batch):
            fields = ",".join(_indent(3) + quoted[k] + ": " + columns[k][i] for k in range(len(names)))
            items.append("{" + fields + _indent(2) + "}")
        pad = _indent(2)
        text = '{\n    "predictions": [' + pad + ("," + pad).join(items) + _indent(1) + "]\n}"
    return text.encode("utf-8", "surrogateescape")


def _is_bytes(name: str, array: np.ndarray) -> bool:
    return array.dtype == np.object_ and name.endswith(BYTES_SUFFIX)


def classify_response_json(results: list[list[tuple[bytes, float]]]) -> bytes:
    """MakeJsonFromClassificationResult."""
    if not results:
        raise _invalid("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classes in results:
        pairs = ["[" + quote(label.decode("utf-8", "surrogateescape")) + ", "
                 + jsontext.format_float32(score) + "]" for label, score in classes]
        rows.append("[" + ", ".join(pairs) + "]")
    return ('{\n    "results": [' + ", ".join(rows) + _indent(1) + "]\n}").encode(
        "utf-8", "surrogateescape")


def regress_response_json(values: list[float]) -> bytes:
    """MakeJsonFromRegressionResult."""
    if not values:
        raise _invalid("Cannot convert empty RegressionResults to JSON")
    texts = jsontext.format_float32_array(np.asarray(values, dtype=np.float32))
    return ('{\n    "results": [' + ", ".join(texts) + "]\n}").encode()
