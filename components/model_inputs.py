"""What a SavedModel signature needs from an example: read from saved_model.pb, no loading.

A signature that takes serialized tf.Example (TF Serving's `examples`/`inputs` string
tensor) parses them with `tf.io.parse_example`, i.e. a ParseExampleV2 op somewhere in the
functions the signature calls. Its dense keys without a default value are required: an
example lacking one fails the parse ("Feature: x (data type: float) is required but could
not be found", tensorflow/core/util/example_proto_fast_parsing.cc); sparse and ragged keys
(tf.io.VarLenFeature, RaggedFeature) and dense keys with a default may be absent. A
signature with named inputs (one tensor per feature, like `serving_raw`) needs every input.

The Evaluator uses this to tell, before TensorFlow Model Analysis runs, that a model (the
served baseline, typically) cannot score the examples it is given.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

PARSE_OPS = ("ParseExampleV2", "ParseExample")
# tf.DType names -> the TFMD schema FeatureType a tf.Example carries them in.
SCHEMA_TYPE = {"float32": "FLOAT", "float64": "FLOAT", "int64": "INT", "int32": "INT",
               "string": "BYTES", "bool": "INT"}


@dataclass(frozen=True)
class SignatureNeeds:
    """The features one signature requires: name -> tf dtype name ("float32", "int64",
    "string"). `parses_examples`: the signature takes serialized tf.Example (its required
    features are the parse's dense keys without a default) rather than named inputs.
    `known`: False when the parse spec could not be read from the graph (keys not
    constants), so nothing can be said in advance."""

    signature_name: str
    required: dict[str, str]
    parses_examples: bool
    known: bool = True


def signature_needs(saved_model_dir: str, signature_name: str) -> SignatureNeeds:
    """The features `signature_name` of the SavedModel in `saved_model_dir` requires.

    Raises FileNotFoundError naming saved_model.pb when it is missing, KeyError naming the
    signature and the ones the model has when it has no such signature."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(saved_model_dir, "saved_model.pb")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: not a SavedModel directory")
    with open(path, "rb") as fh:
        saved_model = saved_model_pb2.SavedModel.FromString(fh.read())
    meta_graph = saved_model.meta_graphs[0]
    signatures = meta_graph.signature_def
    if signature_name not in signatures:
        raise KeyError(f"{saved_model_dir} has no signature {signature_name!r}; it has "
                       f"{sorted(signatures)}")
    signature = signatures[signature_name]
    inputs = dict(signature.inputs)
    if not (len(inputs) == 1 and next(iter(inputs.values())).dtype == types_pb2.DT_STRING):
        # Named inputs: every one must be fed (TF Serving rejects a request lacking one).
        return SignatureNeeds(signature_name, {
            name: _dtype_name(info.dtype) for name, info in sorted(inputs.items())}, False)
    parses = [(node, constants) for node, constants in _reachable_nodes(meta_graph, signature)
              if node.op in PARSE_OPS]
    required: dict[str, str] = {}
    known = True
    for node, constants in parses:
        found = _required_dense_keys(node, constants)
        if found is None:
            known = False
            continue
        required.update(found)
    return SignatureNeeds(signature_name, dict(sorted(required.items())), True,
                          known=known and bool(parses))


def _dtype_name(dtype_enum: int) -> str:
    from tensorflow.python.framework import dtypes

    return dtypes.as_dtype(dtype_enum).name


def _node_name(tensor_ref: str) -> str:
    """'a/b:output:0' (in a FunctionDef) or 'a/b:0' (in a GraphDef) -> 'a/b'."""
    return tensor_ref.lstrip("^").split(":")[0]


def _reachable_nodes(meta_graph, signature):
    """(node, the constants of its graph or function) for every node of every function the
    signature's outputs reach, the top-level nodes feeding them included."""
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    top = {node.name: node for node in meta_graph.graph_def.node}
    top_constants = {name: node for name, node in top.items() if node.op == "Const"}

    seen_nodes: set[str] = set()
    pending = [_node_name(info.name) for info in signature.outputs.values()]
    called: list[str] = []
    while pending:
        name = pending.pop()
        if name in seen_nodes or name not in top:
            continue
        seen_nodes.add(name)
        node = top[name]
        yield node, top_constants
        called.extend(_called_functions(node, library))
        pending.extend(_node_name(ref) for ref in node.input)

    seen_functions: set[str] = set()
    while called:
        fname = called.pop()
        if fname in seen_functions or fname not in library:
            continue
        seen_functions.add(fname)
        function = library[fname]
        constants = {node.name: node for node in function.node_def if node.op == "Const"}
        for node in function.node_def:
            yield node, constants
            called.extend(_called_functions(node, library))


def _called_functions(node, library) -> list[str]:
    names = [node.op] if node.op in library else []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names.extend(f.name for f in value.list.func)
    return names


def _constant(ref: str, constants):
    import tensorflow as tf

    node = constants.get(_node_name(ref))
    if node is None:
        return None
    return tf.make_ndarray(node.attr["value"].tensor)


def _required_dense_keys(node, constants) -> dict[str, str] | None:
    """Dense key -> dtype name for the dense keys of a parse op without a default value;
    None when its keys are not constants of the graph."""
    data_inputs = [ref for ref in node.input if not ref.startswith("^")]
    types = [_dtype_name(t) for t in node.attr["Tdense"].list.type]
    if node.op == "ParseExampleV2":
        # serialized, names, sparse_keys, dense_keys, ragged_keys, dense_defaults...
        keys = _constant(data_inputs[3], constants)
        if keys is None:
            return None
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in keys.reshape(-1)]
        defaults = data_inputs[5:5 + len(keys)]
    else:  # ParseExample: serialized, names, sparse_keys[Nsparse], dense_keys[Ndense], ...
        n_sparse, n_dense = node.attr["Nsparse"].i, node.attr["Ndense"].i
        refs = data_inputs[2 + n_sparse:2 + n_sparse + n_dense]
        values = [_constant(ref, constants) for ref in refs]
        if any(v is None for v in values):
            return None
        keys = [v.reshape(-1)[0].decode() for v in values]
        defaults = data_inputs[2 + n_sparse + n_dense:2 + n_sparse + 2 * n_dense]
    required = {}
    for key, dtype, default_ref in zip(keys, types, defaults):
        default = _constant(default_ref, constants)
        if default is not None and default.size == 0:  # no default: the key is required
            required[key] = dtype
    return required
