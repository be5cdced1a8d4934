"""Writing Arrow RecordBatches as gzip TFRecord files of tf.Examples, from a Beam step.

Beam's `WriteToTFRecord` takes one element per record and frames each in Python (length,
CRC, gzip): for Transform that was every transformed example passing Beam's per-element
machinery twice (the encoding FlatMap's output, the sink's input). `WriteExampleBatches`
takes the RecordBatches themselves, encodes each with tfx_bsl's `RecordBatchToExamplesEncoder`
(C++) and writes the records with TensorFlow's `TFRecordWriter` (C++), both in a background
thread (components.background: they release the GIL, so they overlap the transforming of the
next batch).

Like Beam's file sinks (apache_beam/io/iobase.py `WriteImpl`) it is safe under a runner that
retries bundles: a bundle writes a temporary file named by a fresh id and only the bundles the
runner committed reach the finalization, which moves their files into place as
`<prefix>-NNNNN-of-MMMMM.gz` (ordered by temporary name) and removes the temporary directory.
A retried bundle's abandoned file is never moved.
"""
from __future__ import annotations

import os
import shutil
import uuid

from components.background import BackgroundCalls

_TEMP_DIR = ".temp-beam-write"


def WriteExampleBatches(directory: str, prefix: str):
    """A PTransform from PCollection[pa.RecordBatch] (or (RecordBatch, extras) tuples, as
    tft_beam.TransformDataset(output_record_batches=True) gives) to nothing: gzip TFRecord
    files `<directory>/<prefix>-NNNNN-of-MMMMM.gz` of the batches' rows as tf.Examples.
    An empty input writes one empty file, as Beam's sink does."""
    import apache_beam as beam
    from apache_beam.transforms.window import GlobalWindows

    temp_dir = os.path.join(directory, _TEMP_DIR)

    class _WriteBundle(beam.DoFn):
        def setup(self):
            import tensorflow as tf
            from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

            self._tf = tf
            self._encoder = RecordBatchToExamplesEncoder()

        def start_bundle(self):
            self._writer = None
            self._path = None
            self._calls = None

        def process(self, element):
            batch = element[0] if isinstance(element, tuple) else element
            if self._writer is None:
                os.makedirs(temp_dir, exist_ok=True)
                self._path = os.path.join(temp_dir, uuid.uuid4().hex + ".gz")
                self._writer = self._tf.io.TFRecordWriter(
                    self._path, options=self._tf.io.TFRecordOptions(compression_type="GZIP"))
                self._calls = BackgroundCalls(self._write, name="write-examples")
            self._calls.submit(batch)

        def _write(self, batch):  # in the background thread: encoding and gzip free the GIL
            for record in self._encoder.encode(batch):
                self._writer.write(record)

        def finish_bundle(self):
            if self._writer is not None:
                self._calls.close()
                self._writer.close()
                yield GlobalWindows.windowed_value(self._path)

        def teardown(self):  # a bundle that failed: its thread ends, its temp file stays unlisted
            if getattr(self, "_calls", None) is not None:
                self._calls.abandon()

    def finalize(paths):
        os.makedirs(directory, exist_ok=True)
        paths = sorted(paths)
        if not paths:  # no rows at all: one file of no records, the split still has a file
            import tensorflow as tf

            tf.io.TFRecordWriter(os.path.join(directory, f"{prefix}-00000-of-00001.gz"),
                                 options=tf.io.TFRecordOptions(compression_type="GZIP")).close()
        for index, path in enumerate(paths):
            os.replace(path, os.path.join(directory,
                                          f"{prefix}-{index:05d}-of-{len(paths):05d}.gz"))
        shutil.rmtree(temp_dir, ignore_errors=True)

    @beam.ptransform_fn
    def _write(batches):
        return (batches
                | "WriteBundles" >> beam.ParDo(_WriteBundle())
                | "Committed" >> beam.combiners.ToList()
                | "Finalize" >> beam.Map(finalize))

    return _write()
