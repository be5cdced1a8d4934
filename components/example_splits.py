"""Deterministic split assignment: hash buckets in configured ratios.

An example's bucket is a stable hash (BLAKE2b) of its canonical serialization, or of one
feature's value when a partition feature is given, so that every example sharing that
value (e.g. one individual's measurements) lands in the same split. The same example
always lands in the same split, whatever file format or order it arrives in.
"""
from __future__ import annotations

import hashlib
import re

_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class SplitError(ValueError):
    """An example cannot be assigned (e.g. its partition feature is missing)."""


def check_splits(splits: dict[str, int]) -> None:
    if not splits:
        raise ValueError("splits must name at least one split, e.g. {'train': 2, 'eval': 1}")
    for name, ratio in splits.items():
        if not isinstance(name, str) or not _SPLIT_NAME.fullmatch(name):
            raise ValueError(f"split name {name!r} must be letters, digits, '-' or '_'")
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio <= 0:
            raise ValueError(f"split {name!r}: ratio must be a positive integer, got {ratio!r}")


def _stable_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def stable_hashes(keys: list[bytes]):
    """`_stable_hash` of every key, as a numpy uint64 array (the digests joined, read at once)."""
    import numpy as np

    digests = b"".join([hashlib.blake2b(key, digest_size=8).digest() for key in keys])
    return np.frombuffer(digests, ">u8").astype(np.uint64)


class SplitAssigner:
    def __init__(self, splits: dict[str, int], partition_feature: str | None = None):
        check_splits(splits)
        self.partition_feature = partition_feature
        # Bucket i of sum(ratios) belongs to the split whose ratio range covers it.
        self._bucket_split = [name for name, ratio in splits.items() for _ in range(ratio)]

    def split_of(self, example, where: str) -> str:
        """The split for a tf.Example; `where` names its file and row for errors."""
        if self.partition_feature is None:
            key = example.SerializeToString(deterministic=True)
        else:
            features = example.features.feature
            feature = features.get(self.partition_feature)
            if feature is None or feature.WhichOneof("kind") is None or not getattr(
                    feature, feature.WhichOneof("kind")).value:
                raise self._missing(where, sorted(features.keys()))
            key = feature.SerializeToString(deterministic=True)
        return self._bucket_split[_stable_hash(key) % len(self._bucket_split)]

    def rows_by_split(self, batch) -> dict[str, list[int]]:
        """The rows of a csv_vectorized.EncodedBatch per split, in order: each row goes to
        the split `split_of` gives its example. SplitError names the first row without the
        partition feature."""
        import numpy as np

        if self.partition_feature is None:
            hashes = batch.hashes
        else:
            keys = batch.feature(self.partition_feature)
            for row, key in enumerate(keys):
                if key is None:
                    raise self._missing(f"{batch.path} line {batch.first_line + row}",
                                        batch.present(row))
            hashes = stable_hashes(keys)
        buckets = hashes % np.uint64(len(self._bucket_split))
        names = list(dict.fromkeys(self._bucket_split))
        split_of_bucket = np.array([names.index(name) for name in self._bucket_split])
        splits = split_of_bucket[buckets.astype(np.int64)]
        return {name: np.flatnonzero(splits == index).tolist()
                for index, name in enumerate(names)}

    def _missing(self, where: str, known: list[str]) -> SplitError:
        return SplitError(f"{where}: partition feature {self.partition_feature!r} is "
                          f"missing (features present: {known})")
