"""Input files as a stream of tf.Example: CSV, TFRecord of tf.Example, Parquet.

Every reader yields one example at a time with where it came from ("line 12",
"row 7", "record 3"; a CSV record whose quoted field spans lines is named by its first
line), so memory does not grow with the input and errors can name the file and row. A CSV
file the vectorized reader can read (csv_vectorized: no quotes, no blank lines, ...) comes
as blocks of serialized examples instead (EncodedBatch, rows named by line the same way),
byte-for-byte what the one-at-a-time reader makes of it.
Missing values (an empty CSV field or a missing-value token such as "NA" or "NaN", see
csv_reading; Parquet nulls) leave the feature out of the example: they stay missing,
nothing is filled in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from components import csv_reading, csv_vectorized

FORMATS = ("csv", "tfrecord", "parquet")
_LIST_FIELD = {csv_reading.INT: "int64_list", csv_reading.FLOAT: "float_list",
               csv_reading.STRING: "bytes_list"}
_GZIP_MAGIC = b"\x1f\x8b"


class ExampleInputError(ValueError):
    """An input file that cannot be turned into examples; names the file and row."""


@dataclass
class SourceExample:
    path: str
    where: str  # "line 12", "row 7", "record 3": where in `path`
    example: Any  # tf.train.Example


def read_examples(input_format: str, files: list[str], *,
                  missing_value_tokens=csv_reading.DEFAULT_MISSING_VALUE_TOKENS,
                  on_layout: Callable[[csv_reading.CsvLayout], None] | None = None,
                  on_reader: Callable[[str, str, str | None], None] | None = None,
                  ) -> Iterator[SourceExample | csv_vectorized.EncodedBatch]:
    """The examples of `files`, in file order: one SourceExample at a time, or (CSV files
    the vectorized reader reads) an EncodedBatch of serialized examples at a time.

    CSV only: `missing_value_tokens` are read as missing (besides the empty field),
    `on_reader(path, reader, reason)` is called per file with the reader that reads it
    (VECTORIZED or STRICT) and why not the vectorized one (None when it is), and `on_layout`
    with the inferred CsvLayout (column types, missing counts) before the first example.
    Raises ExampleInputError naming the file and row.
    """
    if input_format == "csv":
        return _csv_examples(files, missing_value_tokens, on_layout, on_reader)
    readers = {"tfrecord": _tfrecord_examples, "parquet": _parquet_examples}
    if input_format not in readers:
        raise ValueError(f"input_format must be one of {FORMATS}, got {input_format!r}")
    return readers[input_format](files)


# -- CSV ------------------------------------------------------------------------------------
VECTORIZED_CSV = True  # False: every CSV file is read by the strict reader (tests, benches)
VECTORIZED = "vectorized (pyarrow)"
STRICT = "strict (python csv)"


def _csv_examples(files: list[str], missing_value_tokens,
                  on_layout: Callable[[csv_reading.CsvLayout], None] | None,
                  on_reader: Callable[[str, str, str | None], None] | None,
                  ) -> Iterator[SourceExample | csv_vectorized.EncodedBatch]:
    """Each file is read by the vectorized reader (csv_vectorized) when it gives the strict
    reader's result, else by the strict reader (csv_reading), which raises the precise error;
    `on_reader(path, reader, reason)` says which and why, before the first example."""
    from tensorflow.core.example.example_pb2 import Example

    try:
        missing = csv_reading.missing_tokens_of(missing_value_tokens)
        scans: list[csv_reading.FileScan] = []
        vectorized: list[bool] = []
        for path in files:
            expected = (scans[0].header, scans[0].path) if scans else None
            reason, scan = "the vectorized reader is switched off", None
            if VECTORIZED_CSV:
                try:
                    scan, reason = csv_vectorized.scan_file(path, missing, expected), None
                except csv_vectorized.NotVectorizable as exc:
                    reason = exc.reason
            if on_reader is not None:
                on_reader(path, VECTORIZED if scan is not None else STRICT, reason)
            vectorized.append(scan is not None)
            scans.append(scan or csv_reading.scan_file(path, missing, expected))
        layout = csv_reading.merge_scans(scans, missing)
        if on_layout is not None:
            on_layout(layout)
        columns = [(name, _LIST_FIELD[layout.types[name]]) for name in layout.columns]
        encoder = csv_vectorized.ExampleEncoder(layout) if any(vectorized) else None
        for path, fast in zip(files, vectorized):
            if fast:
                try:
                    yield from encoder.batches(path)
                except csv_vectorized.NotVectorizable as exc:
                    raise ExampleInputError(f"{path} changed while it was read: {exc.reason}"
                                            ) from None
                continue
            for line, values in csv_reading.typed_rows(path, layout):
                example = Example()
                features = example.features.feature
                for (name, list_field), value in zip(columns, values):
                    if value is not None:
                        getattr(features[name], list_field).value.append(value)
                yield SourceExample(path, f"line {line}", example)
    except csv_reading.CsvInputError as exc:
        raise ExampleInputError(str(exc)) from None


# -- TFRecord -------------------------------------------------------------------------------
def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _tfrecord_examples(files: list[str]) -> Iterator[SourceExample]:
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.example.example_pb2 import Example

    for path in files:
        dataset = tf.data.TFRecordDataset(path, compression_type="GZIP" if _is_gzip(path) else "")
        records = iter(dataset)
        index = 0
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except tf.errors.OpError as exc:
                raise ExampleInputError(f"{path} record {index + 1}: not readable as a "
                                        f"TFRecord ({exc.message})") from None
            index += 1
            try:
                example = Example.FromString(record.numpy())
            except DecodeError as exc:
                raise ExampleInputError(f"{path} record {index}: not a tf.Example ({exc})") from None
            yield SourceExample(path, f"record {index}", example)
        if index == 0:
            raise ExampleInputError(f"{path} is empty: it holds no records")


# -- Parquet --------------------------------------------------------------------------------
def _arrow_list_field(arrow_type, column: str, path: str) -> tuple[str, bool]:
    """(tf.Example list field, whether the column holds lists) for an Arrow column type."""
    import pyarrow as pa

    is_list = pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
    value_type = arrow_type.value_type if is_list else arrow_type
    if pa.types.is_integer(value_type) or pa.types.is_boolean(value_type):
        return "int64_list", is_list
    if pa.types.is_floating(value_type) or pa.types.is_decimal(value_type):
        return "float_list", is_list
    if (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)
            or pa.types.is_binary(value_type) or pa.types.is_large_binary(value_type)):
        return "bytes_list", is_list
    raise ExampleInputError(f"{path}: column {column!r} has type {arrow_type}, which a "
                            f"tf.Example cannot hold (use integers, floats, strings or lists)")


def _as_feature_value(value: Any, list_field: str) -> Any:
    if list_field == "bytes_list":
        return value.encode("utf-8") if isinstance(value, str) else value
    if list_field == "float_list":
        return float(value)
    return int(value)


def _parquet_examples(files: list[str]) -> Iterator[SourceExample]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tensorflow.core.example.example_pb2 import Example

    first_schema, first_path = None, ""
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ExampleInputError(f"{path}: not a readable Parquet file ({exc})") from None
        schema = parquet.schema_arrow
        if first_schema is None:
            first_schema, first_path = schema, path
        elif not schema.equals(first_schema):
            raise ExampleInputError(f"{path}: columns {_describe(schema)} do not match the "
                                    f"columns {_describe(first_schema)} of {first_path}")
        columns = [(field.name, *_arrow_list_field(field.type, field.name, path))
                   for field in schema]
        row = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                example = Example()
                features = example.features.feature
                for name, list_field, is_list in columns:
                    value = record[name]
                    if value is None:
                        continue
                    values = value if is_list else [value]
                    if any(v is None for v in values):
                        raise ExampleInputError(f"{path} row {row}: column {name!r} has a null "
                                                f"inside a list, which a tf.Example cannot hold")
                    getattr(features[name], list_field).value.extend(
                        _as_feature_value(v, list_field) for v in values)
                yield SourceExample(path, f"row {row}", example)
        if row == 0:
            raise ExampleInputError(f"{path} is empty: it holds no rows")


def _describe(schema) -> str:
    return "[" + ", ".join(f"{field.name}: {field.type}" for field in schema) + "]"
