"""Live data quality per model version: a DataPlane observer (like serving/request_log.py).

Where the schema comes from: the Pusher (components/pusher.py) copies the schema the model
was trained with to `<version>/assets.extra/schema.pbtxt` (a tensorflow_metadata Schema text
proto). TF Serving reads only `assets.extra/tf_serving_warmup_requests` from that directory
(servables/tensorflow/saved_model_warmup_util.cc), so the file is invisible to it. A
classifier's class names come from `<version>/assets/class_names.txt` (one per line, in the
order of `scores`; components/signatures.py writes it). Both are read once, when a version
loads (`version_loaded`); a version without a schema file (or with one that does not parse)
keeps no feature counters, logs a line saying so, and shows
:pipewright:serving:data_quality_schema_loaded{model_name,version} 0 (1 with a schema).

What is counted, per model and version (Prometheus labels model_name, version), for every
Predict / Classify / Regress call whose version was resolved (failed calls too: their inputs
were sent all the same). A "row" is one example: one tf.Example, or one index along the
first dimension of every input tensor.

With a schema:
  :pipewright:serving:data_quality_rows{model_name,version}             rows checked
  :pipewright:serving:feature_missing_count{model_name,version,feature}
      rows where the feature is missing: an Example without it (only for features the
      schema has in the SERVING environment, TFDV's environment rule) or with an empty
      value list; a tensor value NaN or "" (serving_raw's missing-value markers,
      components/signatures.py _raw_to_parsed).
  :pipewright:serving:feature_out_of_schema_count{model_name,version,feature,reason}
      rows where the feature is present but: reason="wrong_type" (an Example value list or
      a tensor of another kind than the schema's BYTES / INT / FLOAT; numeric tensors fit
      INT and FLOAT alike, as serving_raw takes INT features as floats), "out_of_domain" (a
      string outside the feature's string_domain, a number outside int_domain /
      float_domain [min, max]), or "not_in_schema" (the schema has no such feature; after
      MAX_UNKNOWN_FEATURES distinct names per version the rest count as feature="__other__",
      so clients cannot grow the series without bound).
      Predict inputs: a named input is a feature (serving_raw); an input the schema lacks
      named "examples" or "inputs" of DT_STRING is a batch of serialized tf.Examples
      (serving_default / classify style) and is parsed with tensorflow.core.example protos.

With or without a schema (they need only the response):
  :pipewright:serving:output_invalid_count{model_name,version,output,reason}
      rows of an output that are reason="nan" (a NaN value) or "empty" (no values, or an
      empty string; a classification without classes).
  :pipewright:serving:prediction_class_count{model_name,version,class}
      classifier rows by predicted class: argmax of `scores` (a Predict output, or a
      Classify result's scores), named by the `classes` output / the classification's label,
      else by assets/class_names.txt, else by the class index.
  :pipewright:serving:prediction_value{model_name,version}  (histogram, PREDICTION_BUCKETS)
      regressor rows: a Regress result's value, or a Predict `outputs` output (first value
      per row) when there is no `scores`.
  Rows with a NaN prediction are counted in output_invalid_count, not in the distribution:
  prediction_class_count + prediction_value_count + NaN rows = predicted rows.

MultiInference calls are not checked. Errors in here are caught by the data plane (logged,
never raised to the request).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass

from serving.data_plane import CLASSIFY, PREDICT, REGRESS, CallRecord
from serving.tensors import DT_STRING

log = logging.getLogger(__name__)

SCHEMA_PATH = os.path.join("assets.extra", "schema.pbtxt")
CLASS_NAMES_PATH = os.path.join("assets", "class_names.txt")
SERVING_ENVIRONMENT = "SERVING"
EXAMPLE_INPUTS = ("examples", "inputs")
MAX_UNKNOWN_FEATURES = 100
OTHER_FEATURE = "__other__"
MISSING, WRONG_TYPE, OUT_OF_DOMAIN, NOT_IN_SCHEMA = "missing", "wrong_type", "out_of_domain", "not_in_schema"
NAN, EMPTY = "nan", "empty"
BYTES, INT, FLOAT = "bytes", "int", "float"
_EXAMPLE_KINDS = {"bytes_list": BYTES, "int64_list": INT, "float_list": FLOAT}


@dataclass(frozen=True)
class FeatureRule:
    """One schema feature: kind (BYTES / INT / FLOAT), strings (allowed values as bytes, or
    None for any), low / high (numeric bounds, None for open), served (in the SERVING
    environment)."""

    name: str
    kind: str
    strings: frozenset | None = None
    low: float = -math.inf
    high: float = math.inf
    served: bool = True

    @property
    def bounded(self) -> bool:
        return self.low != -math.inf or self.high != math.inf

    def out_of_domain(self, values) -> bool:
        """values: a list of bytes (BYTES) or numbers; NaN counts as missing, not here (its
        comparisons are all False)."""
        if self.strings is not None:
            return not self.strings.issuperset(values)
        low, high = self.low, self.high
        for v in values:
            if v < low or v > high:
                return True
        return False


@dataclass(frozen=True)
class VersionRules:
    """A version's feature rules ({name: FeatureRule}) and the names that must be present in
    an Example (served features)."""

    features: dict
    served: tuple


def rules_from_schema(schema) -> VersionRules:
    """tensorflow_metadata Schema -> VersionRules. Types other than BYTES / INT / FLOAT
    (STRUCT) are kept as present-or-missing only (kind None)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    domains = {d.name: frozenset(v.encode("utf-8") for v in d.value) for d in schema.string_domain}
    kinds = {schema_pb2.BYTES: BYTES, schema_pb2.INT: INT, schema_pb2.FLOAT: FLOAT}
    default_envs = set(schema.default_environment)
    features = {}
    for f in schema.feature:
        strings = None
        low, high = -math.inf, math.inf
        which = f.WhichOneof("domain_info")
        if which == "domain":
            strings = domains.get(f.domain)
        elif which == "string_domain":
            strings = frozenset(v.encode("utf-8") for v in f.string_domain.value)
        elif which == "int_domain":
            low = f.int_domain.min if f.int_domain.HasField("min") else low
            high = f.int_domain.max if f.int_domain.HasField("max") else high
        elif which == "float_domain":
            low = f.float_domain.min if f.float_domain.HasField("min") else low
            high = f.float_domain.max if f.float_domain.HasField("max") else high
        # TFDV schema_util: a feature is in an environment if in_environment names it, else
        # not if not_in_environment names it, else if default_environment does (or is empty).
        if f.in_environment:
            served = SERVING_ENVIRONMENT in f.in_environment
        elif SERVING_ENVIRONMENT in f.not_in_environment:
            served = False
        else:
            served = not default_envs or SERVING_ENVIRONMENT in default_envs
        features[f.name] = FeatureRule(f.name, kinds.get(f.type), strings, low, high, served)
    served = tuple(name for name, rule in features.items() if rule.served)
    return VersionRules(features, served)


def load_rules(version_path: str) -> VersionRules | None:
    """The rules of `<version_path>/assets.extra/schema.pbtxt`; None when there is no such
    file. Raises components.tfmd_files.SchemaFileError for a file that does not parse."""
    from components.tfmd_files import read_schema

    path = os.path.join(version_path, SCHEMA_PATH)
    if not os.path.isfile(path):
        return None
    return rules_from_schema(read_schema(path))


def load_class_names(version_path: str) -> list[str] | None:
    path = os.path.join(version_path, CLASS_NAMES_PATH)
    try:
        with open(path, encoding="utf-8") as fh:
            return [line.rstrip("\n") for line in fh]
    except FileNotFoundError:
        return None


_FLOAT_DTYPES = (1, 2, 19)  # DT_FLOAT, DT_DOUBLE, DT_HALF
_INT_DTYPES = (3, 4, 5, 6, 9, 17, 22, 23)  # DT_INT32, UINT8, INT16, INT8, INT64, UINT16, UINT32/64
_VALUE_FIELDS = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val",
                 6: "int_val", 7: "string_val", 9: "int64_val", 17: "int_val",
                 22: "uint32_val", 23: "uint64_val"}


def _flat(proto, alias: str):
    """(rows, width, values) of a TensorProto: rows = the first dimension (1 for a scalar),
    width = elements per row, values = the rows*width elements in row-major order (the
    typed repeated field itself when it holds them all, one per element: no copy; else
    serving.tensor_proto.to_ndarray's, as a list). Raises ServingError as to_ndarray does."""
    dims = proto.tensor_shape.dim
    shape = [d.size for d in dims]
    n = shape[0] if shape else 1
    total = math.prod(shape)
    width = total // n if n else 0
    name = _VALUE_FIELDS.get(proto.dtype)
    if name is not None and not proto.tensor_content:
        field = getattr(proto, name)
        if len(field) == total:
            return n, width, field
    from serving.tensor_proto import to_ndarray

    return n, width, to_ndarray(proto, alias).reshape(-1).tolist()


def _rows_where(values, n: int, width: int, test) -> int:
    """How many of the n rows (width values each) have a value passing test."""
    if width == 1:
        return sum(1 for v in values if test(v))
    return sum(1 for i in range(n) if any(test(v) for v in values[i * width:(i + 1) * width]))


def _is_nan(v) -> bool:
    return v != v


@dataclass
class VersionState:
    rules: VersionRules | None
    class_names: list[str] | None
    unknown: set


class _Tally:
    """Counts of one call, flushed under the metrics lock once."""

    __slots__ = ("counts", "values")

    def __init__(self):
        self.counts: dict = {}
        self.values: list = []

    def add(self, metric, labels: tuple, amount: int = 1) -> None:
        if amount:
            key = (metric, labels)
            self.counts[key] = self.counts.get(key, 0) + amount


class DataQuality:
    """The observer: call version_loaded(name, version, path) from the model loader, and
    add the object to DataPlane.observers."""

    def __init__(self, metrics):
        self.metrics = metrics
        self._versions: dict[tuple[str, int], VersionState] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ loading (loader thread)

    def version_loaded(self, name: str, version: int, path: str) -> None:
        """Read the version's schema and class names (see the module docstring); never
        raises for a missing or bad file: logs it and sets the gauge to 0."""
        rules = None
        try:
            rules = load_rules(path)
            if rules is None:
                log.warning("data quality: model %s version %d has no schema (%s): its feature "
                            "counters are off", name, version, os.path.join(path, SCHEMA_PATH))
        except Exception as e:
            log.error("data quality: model %s version %d: schema not used, its feature counters "
                      "are off: %s", name, version, e)
        state = VersionState(rules, load_class_names(path), set())
        with self._lock:
            self._versions = {**self._versions, (name, version): state}  # readers take no lock
        self.metrics.set_gauge(self.metrics.data_quality_schema_loaded, name, str(version),
                               value=int(rules is not None))
        if rules is not None:
            log.info("data quality: model %s version %d checks %d schema features", name,
                     version, len(rules.features))

    # ------------------------------------------------------------ the observer (event loops)

    def __call__(self, record: CallRecord) -> None:
        if record.version is None or record.method not in (PREDICT, CLASSIFY, REGRESS):
            return
        state = self._versions.get((record.model_name, record.version))
        if state is None:
            return
        m = self.metrics
        labels = (record.model_name, str(record.version))
        tally = _Tally()
        if state.rules is not None and record.request is not None:
            if record.method == PREDICT:
                rows = self._check_tensors(state, labels, record.request.inputs, tally)
            else:
                rows = self._check_input(state, labels, record.request.input, tally)
            tally.add(m.data_quality_rows, labels, rows)
        response = record.response
        if response is not None:
            if record.method == PREDICT:
                self._predict_outputs(state, labels, response.outputs, tally)
            elif record.method == CLASSIFY:
                self._classifications(state, labels, response.result.classifications, tally)
            else:
                for r in response.result.regressions:
                    if r.value != r.value:
                        tally.add(m.output_invalid_count, labels + ("outputs", NAN))
                    else:
                        tally.values.append(r.value)
        m.add_all(tally.counts, m.prediction_value, labels, tally.values)

    # ------------------------------------------------------------ inputs

    def _feature_label(self, state: VersionState, name: str) -> str:
        if name in state.unknown:
            return name
        if len(state.unknown) >= MAX_UNKNOWN_FEATURES:
            return OTHER_FEATURE
        state.unknown.add(name)
        return name

    def _check_input(self, state, labels, input_proto, tally) -> int:
        """tensorflow.serving.Input (example_list / example_list_with_context) -> rows."""
        kind = input_proto.WhichOneof("kind")
        if kind == "example_list":
            examples, context = input_proto.example_list.examples, None
        elif kind == "example_list_with_context":
            examples = input_proto.example_list_with_context.examples
            context = input_proto.example_list_with_context.context.features.feature
        else:
            return 0
        self._check_examples(state, labels, examples, context, tally)
        return len(examples)

    def _check_examples(self, state, labels, examples, context, tally) -> None:
        """Examples: tensorflow.core.example Example protos; context: a feature map each
        example's features are merged over (proto merge: the example's value wins)."""
        m = self.metrics
        rules = state.rules.features
        counts: dict = {}
        for example in examples:
            features = example.features.feature
            if context:
                merged = dict(context.items())
                merged.update(features.items())
                items = merged.items()
                names = merged
            else:
                items = features.items()
                names = features
            for name, feature in items:
                rule = rules.get(name)
                if rule is None:
                    key = (NOT_IN_SCHEMA, name)
                else:
                    which = feature.WhichOneof("kind")
                    values = getattr(feature, which).value if which else ()
                    if not values:
                        key = (MISSING, name)
                    elif rule.kind is not None and _EXAMPLE_KINDS[which] != rule.kind:
                        key = (WRONG_TYPE, name)
                    elif rule.out_of_domain(values):
                        key = (OUT_OF_DOMAIN, name)
                    else:
                        continue
                counts[key] = counts.get(key, 0) + 1
            for name in state.rules.served:
                if name not in names:
                    key = (MISSING, name)
                    counts[key] = counts.get(key, 0) + 1
        for (reason, name), n in counts.items():
            if reason == MISSING:
                tally.add(m.feature_missing_count, labels + (name,), n)
            elif reason == NOT_IN_SCHEMA:
                tally.add(m.feature_out_of_schema_count,
                          labels + (self._feature_label(state, name), reason), n)
            else:
                tally.add(m.feature_out_of_schema_count, labels + (name, reason), n)

    def _check_tensors(self, state, labels, inputs, tally) -> int:
        """PredictRequest.inputs {alias: TensorProto} -> rows (first dimension)."""
        m = self.metrics
        rules = state.rules.features
        rows = 0
        for alias, proto in inputs.items():
            rule = rules.get(alias)
            if rule is None and proto.dtype == DT_STRING and alias in EXAMPLE_INPUTS:
                from tensorflow.core.example import example_pb2

                try:
                    examples = [example_pb2.Example.FromString(s) for s in proto.string_val]
                except Exception:  # not Examples after all: an input the schema lacks
                    examples = None
                if examples is not None:
                    self._check_examples(state, labels, examples, None, tally)
                    rows = max(rows, len(examples))
                    continue
            dims = proto.tensor_shape.dim
            n = dims[0].size if len(dims) else 1
            rows = max(rows, n)
            if rule is None:
                tally.add(m.feature_out_of_schema_count,
                          labels + (self._feature_label(state, alias), NOT_IN_SCHEMA), n)
                continue
            is_string = proto.dtype == DT_STRING
            if is_string != (rule.kind == BYTES) and rule.kind is not None:
                tally.add(m.feature_out_of_schema_count, labels + (alias, WRONG_TYPE), n)
                continue
            try:
                n, width, values = _flat(proto, alias)
            except Exception:
                continue  # the data plane answers the parse error
            if width == 0:
                tally.add(m.feature_missing_count, labels + (alias,), n)
                continue
            # NaN / "" mark a missing value (serving_raw); a row with one is missing, and a
            # missing row is not also out of its domain.
            gone = (lambda v: not v) if is_string else _is_nan
            if rule.strings is not None and is_string:
                strings = rule.strings
                bad_value = lambda v: not v or v not in strings  # noqa: E731
            elif rule.bounded and not is_string:
                low, high = rule.low, rule.high
                bad_value = lambda v: v != v or v < low or v > high  # noqa: E731
            else:
                bad_value = None
            # Fast paths (C loops) for the usual all-present, all-in-domain tensor.
            if is_string:
                clean = b"" not in values and (rule.strings is None or
                                               rule.strings.issuperset(values))
            else:
                total = sum(values)
                clean = total == total and (bad_value is None or (
                    min(values) >= rule.low and max(values) <= rule.high))
            if clean:
                continue
            if is_string or proto.dtype in _FLOAT_DTYPES:
                missing = _rows_where(values, n, width, gone)
            else:
                missing = 0
            tally.add(m.feature_missing_count, labels + (alias,), missing)
            if bad_value is not None:
                tally.add(m.feature_out_of_schema_count, labels + (alias, OUT_OF_DOMAIN),
                          _rows_where(values, n, width, bad_value) - missing)
        return rows

    # ------------------------------------------------------------ outputs

    def _predict_outputs(self, state, labels, outputs, tally) -> None:
        m = self.metrics
        flats = {}
        for alias, proto in outputs.items():
            dtype = proto.dtype
            if dtype in _INT_DTYPES and alias != "outputs":
                if proto.tensor_shape.dim and (len(proto.tensor_shape.dim) < 2 or
                                               proto.tensor_shape.dim[1].size):
                    continue  # integers are never NaN; an integer output is empty only at width 0
            try:
                n, width, values = flats[alias] = _flat(proto, alias)
            except Exception:
                continue
            if not proto.tensor_shape.dim:
                continue
            if width == 0:
                tally.add(m.output_invalid_count, labels + (alias, EMPTY), n)
            elif dtype == DT_STRING:
                tally.add(m.output_invalid_count, labels + (alias, EMPTY),
                          _rows_where(values, n, width, lambda v: not v))
            elif dtype in _FLOAT_DTYPES:
                total = sum(values)
                if total != total:  # some NaN (or inf - inf): count the rows
                    tally.add(m.output_invalid_count, labels + (alias, NAN),
                              _rows_where(values, n, width, _is_nan))
        scores = flats.get("scores")
        if scores is not None and outputs["scores"].dtype in _FLOAT_DTYPES and scores[1] \
                and len(outputs["scores"].tensor_shape.dim) == 2:
            n, width, values = scores
            classes = flats.get("classes")
            if classes is not None and classes[:2] != (n, width):
                classes = None
            for i in range(n):
                row = values[i * width:(i + 1) * width]
                top = sum(row)
                if top != top and any(v != v for v in row):
                    continue  # counted as NaN above
                j = row.index(max(row))
                name = classes[2][i * width + j] if classes is not None else None
                tally.add(m.prediction_class_count, labels + (self._class_name(state, name, j),))
            return
        predictions = flats.get("outputs")
        if predictions is not None and outputs["outputs"].dtype not in (DT_STRING,) \
                and predictions[1] and outputs["outputs"].tensor_shape.dim:
            n, width, values = predictions
            tally.values.extend(float(values[i * width]) for i in range(n)
                                if values[i * width] == values[i * width])

    def _classifications(self, state, labels, classifications, tally) -> None:
        m = self.metrics
        for c in classifications:
            if not c.classes:
                tally.add(m.output_invalid_count, labels + ("classes", EMPTY))
                continue
            best, best_score = 0, None
            for j, cls in enumerate(c.classes):
                if cls.score != cls.score:
                    best_score = math.nan
                    break
                if best_score is None or cls.score > best_score:
                    best, best_score = j, cls.score
            if best_score != best_score:
                tally.add(m.output_invalid_count, labels + ("scores", NAN))
                continue
            tally.add(m.prediction_class_count,
                      labels + (self._class_name(state, c.classes[best].label, best),))

    @staticmethod
    def _class_name(state: VersionState, name, index: int) -> str:
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if name:
            return name
        if state.class_names is not None and index < len(state.class_names):
            return state.class_names[index]
        return str(index)
