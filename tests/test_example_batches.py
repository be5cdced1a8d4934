"""components/example_batches.py: TensorFlow's C++ TFRecord reader in place of Beam's Python one
gives StatisticsGen and Transform the RecordBatches tfx_bsl's own source gives, and names a
damaged file."""
from __future__ import annotations

import gzip
import os

import pytest

from components.example_batches import ReadExampleBatches, example_files


def _example(i: int) -> bytes:
    from tensorflow.core.example.example_pb2 import Example

    example = Example()
    features = example.features.feature
    features["id"].int64_list.value.append(i)
    if i % 3:  # a feature missing from some examples
        features["weight"].float_list.value.append(i / 7)
    features["colour"].bytes_list.value.append(b"red" if i % 2 else b"blue")
    return example.SerializeToString()


def _write_shards(directory, shards: list[range], compressed: list[bool]) -> str:
    import tensorflow as tf

    os.makedirs(directory, exist_ok=True)
    for index, (rows, gz) in enumerate(zip(shards, compressed)):
        options = tf.io.TFRecordOptions(compression_type="GZIP" if gz else "")
        name = f"data-{index:05d}" + (".gz" if gz else ".tfrecord")  # Beam reads by suffix
        with tf.io.TFRecordWriter(os.path.join(directory, name), options=options) as writer:
            for i in rows:
                writer.write(_example(i))
    open(os.path.join(directory, "empty.gz"), "wb").close()  # matched, holds nothing
    return os.path.join(directory, "*")


_SEEN: list[dict] = []  # rows the in-process runner's DoFn saw (it runs in this process)


def _remember(batch) -> None:
    _SEEN.extend(batch.to_pylist())


def _collect(read):
    """Every row the source yields, as sorted (id, weight, colour) tuples."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    _SEEN.clear()
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        _ = pipeline | read | beam.Map(_remember)
    return sorted((r["id"], r.get("weight"), r["colour"]) for r in _SEEN)


def _schema():
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    return text_format.Parse("""
        feature { name: "id" type: INT }
        feature { name: "weight" type: FLOAT }
        feature { name: "colour" type: BYTES }""", schema_pb2.Schema())


@pytest.mark.parametrize("with_schema", [False, True])
def test_batches_hold_the_rows_tfx_bsls_source_reads(tmp_path, with_schema):
    from tfx_bsl.public import tfxio

    pattern = _write_shards(tmp_path / "split", [range(0, 2500), range(2500, 2600)],
                            compressed=[True, False])
    schema = _schema() if with_schema else None
    ours = _collect(ReadExampleBatches(pattern, schema, batch_size=700))
    theirs = _collect(tfxio.TFExampleRecord(file_pattern=os.path.join(tmp_path, "split",
                                                                      "data-*"),
                                            schema=schema).BeamSource())
    assert len(ours) == 2600
    assert ours == theirs
    assert ours[1] == ([1], [pytest.approx(1 / 7)], [b"red"]) and ours[3][1] is None


def test_no_matching_file_and_a_damaged_file_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no example files match .*nothing-here"):
        ReadExampleBatches(str(tmp_path / "nothing-here" / "*"))

    pattern = _write_shards(tmp_path / "split", [range(0, 3000)], compressed=[True])
    path = example_files(pattern)[0]
    with open(path, "rb") as fh:
        data = gzip.decompress(fh.read())
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF  # a flipped byte in the middle: a CRC mismatch
    with open(path, "wb") as fh:
        fh.write(gzip.compress(bytes(damaged)))
    with pytest.raises(Exception, match=f"{path}: damaged TFRecord file"):
        _collect(ReadExampleBatches(pattern))


def test_written_batches_read_back_whole_and_a_retried_bundles_file_is_not_published(tmp_path):
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from components.example_sink import _TEMP_DIR, WriteExampleBatches

    source = _write_shards(tmp_path / "in", [range(0, 1500), range(1500, 2300)],
                           compressed=[True, True])
    out = tmp_path / "out"
    abandoned = out / _TEMP_DIR / "abandoned.gz"  # what a failed, retried bundle leaves
    abandoned.parent.mkdir(parents=True)
    abandoned.write_bytes(b"not a committed bundle")
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        _ = (pipeline | ReadExampleBatches(source, batch_size=400)
             | beam.Map(lambda batch: (batch, None))  # TransformDataset's (batch, extras)
             | WriteExampleBatches(str(out), "transformed_examples"))
    names = sorted(os.listdir(out))
    assert names and all(n.startswith("transformed_examples-") and
                         n.endswith(f"-of-{len(names):05d}.gz") for n in names), names
    assert _collect(ReadExampleBatches(str(out / "*"))) == \
        _collect(ReadExampleBatches(source))


def test_no_rows_write_one_readable_file_of_no_records(tmp_path):
    import apache_beam as beam
    import tensorflow as tf
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from components.example_sink import WriteExampleBatches

    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        _ = (pipeline | beam.Create([]) | WriteExampleBatches(str(tmp_path), "examples"))
    assert os.listdir(tmp_path) == ["examples-00000-of-00001.gz"]
    path = str(tmp_path / "examples-00000-of-00001.gz")
    assert list(tf.data.TFRecordDataset(path, compression_type="GZIP")) == []


def _record_starts(raw: bytes) -> list[int]:
    """The offset of every record of the uncompressed TFRecord bytes `raw`."""
    starts, offset = [], 0
    while offset < len(raw):
        starts.append(offset)
        offset += 16 + int.from_bytes(raw[offset:offset + 8], "little")
    return starts


def cut_inside_a_record_header(path: str) -> int:
    """Cuts the TFRecord file `path` (gzip or not) short, the way a copy or a write that
    stopped does, so that what remains ends inside a record's 12-byte header (gzip: or
    at a record's start, the stream's end missing): where TensorFlow's reader takes the
    cut for the end of the file. Returns the whole records left before the cut."""
    import zlib

    data = open(path, "rb").read()
    gzipped = data[:2] == b"\x1f\x8b"
    raw = gzip.decompress(data) if gzipped else data
    starts = _record_starts(raw)
    for cut in range(len(data) - 9, 0, -1):
        left = zlib.decompressobj(31).decompress(data[:cut]) if gzipped else data[:cut]
        inside = [i for i, start in enumerate(starts)
                  if start + (0 if gzipped else 1) <= len(left) < start + 12]
        if inside:
            with open(path, "wb") as fh:
                fh.write(data[:cut])
            return inside[0]
    raise AssertionError(f"no cut of {path} ends inside a record header")


@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "uncompressed"])
def test_a_file_cut_short_is_named_not_read_as_fewer_rows(tmp_path, compressed):
    """TensorFlow's reader ends quietly when a file ends inside a record's header (or a
    gzip stream is cut short there): the rows before the cut came out as the whole file."""
    pattern = _write_shards(tmp_path / "split", [range(0, 3000), range(3000, 3100)],
                            compressed=[compressed, True])
    path = example_files(pattern)[0]
    left = cut_inside_a_record_header(path)
    assert 2000 < left < 3000, left
    with pytest.raises(Exception, match=f"{path}: damaged TFRecord file \\(truncated: "
                                        f"{left} whole records"):
        _collect(ReadExampleBatches(pattern))


def test_gzip_members_one_after_another_are_read_whole(tmp_path):
    """Concatenated gzip members (`cat a.gz b.gz`) are one valid file: the check for a cut
    must not take the first member's size for the file's."""
    pattern = _write_shards(tmp_path / "split", [range(0, 500), range(500, 1200)],
                            compressed=[True, True])
    first, second = example_files(pattern)[:2]
    with open(first, "ab") as fh:
        fh.write(open(second, "rb").read())
    os.remove(second)
    assert len(_collect(ReadExampleBatches(pattern))) == 1200


def test_records_that_are_not_examples_name_the_file_and_the_records(tmp_path):
    """Sound TFRecord framing around payloads that are not tf.Examples (another program's
    records): tfx_bsl's decoder says only "Unable to parse example"."""
    import tensorflow as tf

    pattern = _write_shards(tmp_path / "split", [range(0, 50)], compressed=[True])
    path = str(tmp_path / "split" / "other.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for _ in range(30):
            writer.write(b"\xff\xff\xff not a serialized tf.Example")
    with pytest.raises(Exception, match=f"{path}: records 1-30 \\(from 1\\) are not "
                                        f"tf.Examples the decoder reads: .*Unable to parse"):
        _collect(ReadExampleBatches(pattern))


_BATCHES_SEEN: list[int] = []


def _signal_at_the_second_batch(batch) -> None:
    import signal

    from components import interruption

    _BATCHES_SEEN.append(batch.num_rows)
    if len(_BATCHES_SEEN) == 2:  # as pipelines.interrupts records a SIGTERM to the runner
        interruption.record_signal(signal.SIGTERM)


def test_a_termination_signal_stops_the_reading_at_the_next_batch(tmp_path):
    """The local runner records the first SIGTERM/SIGINT and lets the running step end,
    then discards its outputs: reading to the end of every file first made a Ctrl-C'd
    Transform or StatisticsGen run on for minutes at scale."""
    import threading

    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from components import interruption

    pattern = _write_shards(tmp_path / "split", [range(0, 3000)], compressed=[True])
    _BATCHES_SEEN.clear()
    try:
        with pytest.raises(Exception, match="SIGTERM arrived while the step ran; reading "
                                            ".*data-00000.gz is not done"):
            with beam.Pipeline(runner=FnApiRunner()) as pipeline:
                _ = (pipeline | ReadExampleBatches(pattern, batch_size=100)
                     | beam.Map(_signal_at_the_second_batch))
    finally:
        interruption._received.clear()
    assert _BATCHES_SEEN == [100, 100]
    assert [t for t in threading.enumerate() if t.name == "read-examples"] == []


def test_a_signal_before_the_reading_began_stops_it_at_the_first_batch(tmp_path):
    """A Ctrl-C during the step's TensorFlow import, before any file is open: the reader
    sees it (signals since the step began count), instead of reading everything first."""
    import signal
    import time

    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from components import interruption

    pattern = _write_shards(tmp_path / "split", [range(0, 300)], compressed=[True])
    _BATCHES_SEEN.clear()
    try:
        with interruption.running_step(time.monotonic()):  # as the launcher marks a step
            interruption.record_signal(signal.SIGINT)
            with pytest.raises(Exception, match="SIGINT arrived while the step ran"):
                with beam.Pipeline(runner=FnApiRunner()) as pipeline:
                    _ = (pipeline | ReadExampleBatches(pattern, batch_size=100)
                         | beam.Map(_BATCHES_SEEN.append))
    finally:
        interruption._received.clear()
    assert _BATCHES_SEEN == []
    assert interruption.earliest_running_step(default=-1.0) == -1.0
