"""Examples as Arrow RecordBatches, read by TensorFlow's C++ TFRecord reader, for Beam steps.

tfx_bsl's `TFExampleRecord.BeamSource()` reads through Beam's TFRecord source, which frames
every record in Python (gzip blocks, length, CRC): 43 % of Transform's time at 337k rows
(bench/profile_data_step.py, README "The data half at scale"). `ReadExampleBatches` reads each
file with tf.data's `TFRecordDataset` (C++, CRCs checked) in batches of `batch_size` records
and decodes them with tfx_bsl's `ExamplesToRecordBatchDecoder` (C++), the decoder
TFExampleRecord's source uses (tfx_bsl/tfxio/tf_example_record.py, `_DecodeBatchExamplesDoFn`):
the same RecordBatches, columns and types, cut at other row boundaries (batches never span
files).

The files are read in order, in the bundle that lists them, with no Reshuffle between: with
one, the FnApiRunner buffered the RecordBatches tf.Transform's deep copy re-reads for its
second analyzer phase (tensorflow_transform/beam/deep_copy.py stops copying at a GroupByKey,
so the copy shared the first phase's read): Transform's own memory growth at 800k rows was
0.98 GiB with it, 0.36 GiB without (tfx_bsl's source: 0.47 GiB). The price: multi-process
Beam reads a split on one worker; the work after the read (statistics, analyzers) stays
fused with it there.

Errors: no file matching the pattern raises FileNotFoundError naming it; a damaged file fails
the pipeline with TensorFlow's DataLossError, re-raised as IOError naming the file, and so
does a file cut short, which TensorFlow's reader may end quietly (`_check_read_whole`); records
the decoder cannot read (not tf.Examples, a type the schema contradicts) raise ValueError naming
the file and the records, the decoder's error (tfx_bsl's wording, which
components.transform_errors reads) after it.
"""
from __future__ import annotations

import glob
import os
import time

from components.background import prefetched
from components.interruption import check_not_interrupted, earliest_running_step

DEFAULT_BATCH_SIZE = 1000  # rows per RecordBatch; tfx_bsl's BatchRecords grows to this too
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + 15  # zlib: a gzip header and trailer, a 32 KiB window
_FRAMING = 8 + 4 + 4  # a record's length, its CRC, the data's CRC


def example_files(file_pattern: str) -> list[str]:
    """The non-empty files matching `file_pattern`, sorted (ExampleGen and Transform write
    gzip TFRecord shards; an empty file holds no records)."""
    return sorted(path for path in glob.glob(file_pattern) if os.path.getsize(path) > 0)


def why_no_example_files(file_pattern: str) -> str:
    """Why `example_files(file_pattern)` is empty: its files are all 0 bytes (naming them),
    or none matches; "" when there are example files."""
    if example_files(file_pattern):
        return ""
    empty = sorted(glob.glob(file_pattern))
    return (f"its files are empty (0 bytes): {empty}" if empty
            else f"no file matches {file_pattern}")


def read_record_batches(path: str, serialized_schema: bytes | None,
                        batch_size: int = DEFAULT_BATCH_SIZE):
    """Yields pa.RecordBatch of up to `batch_size` rows decoded from the TFRecord file
    `path` (gzip or not, told by its first bytes) with `serialized_schema` (a serialized
    tensorflow_metadata Schema; None: types inferred per batch, as tfx_bsl does). Reading
    and decoding run a batch or two ahead in a background thread (components.background):
    both release the GIL, so they overlap the work on the batch before.

    A termination signal this process records (pipelines.interrupts) since the step began
    (or, outside a launched step, since the reading began) stops it before the next batch
    with StepInterrupted: the step's outputs will be discarded anyway
    (components.interruption), so an interrupted run ends within a batch instead of
    reading every file to the end first."""
    started = earliest_running_step(default=time.monotonic())
    for batch in prefetched(_decoded_batches(path, serialized_schema, batch_size),
                            name="read-examples"):
        check_not_interrupted(started, f"reading {path}")
        yield batch


def _decoded_batches(path: str, serialized_schema: bytes | None, batch_size: int):
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    with open(path, "rb") as fh:
        compression = "GZIP" if fh.read(2) == _GZIP_MAGIC else ""
    decoder = (example_coder.ExamplesToRecordBatchDecoder(serialized_schema)
               if serialized_schema else example_coder.ExamplesToRecordBatchDecoder())
    dataset = tf.data.TFRecordDataset(path, compression_type=compression,
                                      buffer_size=8 << 20).batch(batch_size)
    dataset = dataset.prefetch(2)
    count = consumed = 0  # records read; their bytes with the framing (16 bytes a record)
    try:
        for records in dataset.as_numpy_iterator():
            batch = records.tolist()
            count += len(batch)
            consumed += _FRAMING * len(batch) + sum(map(len, batch))
            try:
                decoded = decoder.DecodeBatch(batch)
            except Exception as exc:  # tfx_bsl names neither the file nor the record
                raise ValueError(f"{path}: records {count - len(batch) + 1}-{count} (from 1) "
                                 f"are not tf.Examples the decoder reads: {exc}") from exc
            yield decoded
    except tf.errors.DataLossError as exc:
        raise IOError(f"{path}: damaged TFRecord file ({exc.message})") from None
    _check_read_whole(path, compression == "GZIP", count, consumed)


def _check_read_whole(path: str, gzipped: bool, count: int, consumed: int) -> None:
    """Raises IOError naming `path` unless its `count` records of `consumed` bytes are all
    the file holds. TensorFlow's reader ends without an error when a file is cut inside a
    record's 12-byte header (record_reader.cc reads the header as end of file), or when a
    gzip file is cut short (zlib_inputstream.cc): the records before the cut were read as
    if they were the whole file. A gzip file's last 4 bytes are its uncompressed size mod
    2**32 (RFC 1952, ISIZE); only when they disagree (a cut, or several gzip members) is
    the file decompressed again to tell which."""
    if not gzipped:
        size = os.path.getsize(path)
        whole = consumed == size
    else:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            size = int.from_bytes(fh.read(4), "little")
        whole = size == consumed % 2 ** 32
        if not whole:
            size = _gunzipped_size(path)
            whole = size == consumed
    if not whole:
        raise IOError(f"{path}: damaged TFRecord file (truncated: {count} whole records, "
                      f"{consumed} bytes, then "
                      + (f"{size - consumed} bytes that are no record)" if size is not None
                         else "a gzip stream cut short)"))


def _gunzipped_size(path: str) -> int | None:
    """The uncompressed size of the gzip file `path` (all its members), None when its
    last member is cut short."""
    import zlib

    total, stream, ended = 0, zlib.decompressobj(_GZIP_WBITS), False
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                while chunk:
                    if ended:  # another member follows
                        stream, ended = zlib.decompressobj(_GZIP_WBITS), False
                    total += len(stream.decompress(chunk))
                    ended = stream.eof
                    chunk = stream.unused_data if ended else b""
    except zlib.error as exc:
        raise IOError(f"{path}: damaged TFRecord file (gzip: {exc})") from None
    return total if ended else None


def ReadExampleBatches(file_pattern: str, schema=None, batch_size: int = DEFAULT_BATCH_SIZE):
    """A PTransform from a pipeline (or PBegin) to PCollection[pa.RecordBatch]: the
    tf.Examples of every file matching `file_pattern`, decoded with the tensorflow_metadata
    `schema` (None: inferred, as `TFExampleRecord(schema=None)` decodes)."""
    import apache_beam as beam

    files = example_files(file_pattern)
    if not files:
        raise FileNotFoundError(f"no example files match {file_pattern}: "
                                f"{why_no_example_files(file_pattern)}")
    serialized = schema.SerializeToString() if schema is not None else None

    @beam.ptransform_fn
    def _read(begin):
        return (begin
                | "ListFiles" >> beam.Create(files, reshuffle=False)
                | "ReadAndDecode" >> beam.FlatMap(read_record_batches, serialized, batch_size))

    return _read()
