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
the pipeline with TensorFlow's DataLossError, re-raised as IOError naming the file.
"""
from __future__ import annotations

import glob
import os

from components.background import prefetched

DEFAULT_BATCH_SIZE = 1000  # rows per RecordBatch; tfx_bsl's BatchRecords grows to this too
_GZIP_MAGIC = b"\x1f\x8b"


def example_files(file_pattern: str) -> list[str]:
    """The non-empty files matching `file_pattern`, sorted (ExampleGen and Transform write
    gzip TFRecord shards; an empty file holds no records)."""
    return sorted(path for path in glob.glob(file_pattern) if os.path.getsize(path) > 0)


def read_record_batches(path: str, serialized_schema: bytes | None,
                        batch_size: int = DEFAULT_BATCH_SIZE):
    """Yields pa.RecordBatch of up to `batch_size` rows decoded from the TFRecord file
    `path` (gzip or not, told by its first bytes) with `serialized_schema` (a serialized
    tensorflow_metadata Schema; None: types inferred per batch, as tfx_bsl does). Reading
    and decoding run a batch or two ahead in a background thread (components.background):
    both release the GIL, so they overlap the work on the batch before."""
    yield from prefetched(_decoded_batches(path, serialized_schema, batch_size),
                          name="read-examples")


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
    try:
        for records in dataset.as_numpy_iterator():
            yield decoder.DecodeBatch(records.tolist())
    except tf.errors.DataLossError as exc:
        raise IOError(f"{path}: damaged TFRecord file ({exc.message})") from None


def ReadExampleBatches(file_pattern: str, schema=None, batch_size: int = DEFAULT_BATCH_SIZE):
    """A PTransform from a pipeline (or PBegin) to PCollection[pa.RecordBatch]: the
    tf.Examples of every file matching `file_pattern`, decoded with the tensorflow_metadata
    `schema` (None: inferred, as `TFExampleRecord(schema=None)` decodes)."""
    import apache_beam as beam

    files = example_files(file_pattern)
    if not files:
        raise FileNotFoundError(f"no example files match {file_pattern}")
    serialized = schema.SerializeToString() if schema is not None else None

    @beam.ptransform_fn
    def _read(begin):
        return (begin
                | "ListFiles" >> beam.Create(files, reshuffle=False)
                | "ReadAndDecode" >> beam.FlatMap(read_record_batches, serialized, batch_size))

    return _read()
