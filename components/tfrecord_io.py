"""Writing split examples: gzip TFRecord shards under `Split-<name>/`, record by record."""
from __future__ import annotations

import os

SHARD_BYTES = 256 << 20  # uncompressed bytes per shard before starting the next one


class SplitWriter:
    """Streams serialized examples into `<artifact>/Split-<name>/data-NNNNN.gz` shards."""

    def __init__(self, examples, split_names: list[str], shard_bytes: int = SHARD_BYTES):
        import tensorflow as tf

        self._tf = tf
        self._examples = examples
        self._shard_bytes = shard_bytes
        self._writers: dict[str, object] = {}
        self._shard_index = {name: 0 for name in split_names}
        self._shard_size = {name: 0 for name in split_names}
        self.counts = {name: 0 for name in split_names}
        for name in split_names:
            os.makedirs(examples.split_uri(name), exist_ok=True)

    def _open(self, split: str):
        path = os.path.join(self._examples.split_uri(split),
                            f"data-{self._shard_index[split]:05d}.gz")
        options = self._tf.io.TFRecordOptions(compression_type="GZIP")
        self._writers[split] = self._tf.io.TFRecordWriter(path, options=options)
        self._shard_size[split] = 0
        return self._writers[split]

    def write(self, split: str, record: bytes) -> None:
        writer = self._writers.get(split)
        if writer is None:
            writer = self._open(split)
        elif self._shard_size[split] >= self._shard_bytes:
            writer.close()
            self._shard_index[split] += 1
            writer = self._open(split)
        writer.write(record)
        self._shard_size[split] += len(record)
        self.counts[split] += 1

    def write_many(self, split: str, records: list[bytes]) -> None:
        """`write(split, record)` for each record in order, without its per-call overhead."""
        if not records:  # as write(): a shard file is opened by its first record
            return
        writer = self._writers.get(split)
        if writer is None:
            writer = self._open(split)
        size, limit, write = self._shard_size[split], self._shard_bytes, writer.write
        for record in records:
            if size >= limit:
                self._shard_size[split] = size
                writer.close()
                self._shard_index[split] += 1
                writer = self._open(split)
                size, write = 0, writer.write
            write(record)
            size += len(record)
        self._shard_size[split] = size
        self.counts[split] += len(records)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> "SplitWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
