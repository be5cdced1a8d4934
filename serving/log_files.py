"""Rotating gzip TFRecord files for the request log, with a disk byte budget.

Layout: <root>/<model>/<version>/<prefix>-<UTC timestamp>-<seq>.tfrecord.gz, where <model> is
the model name percent-quoted to one path component and <version> the version that answered
("unresolved" when the request failed before a version was chosen). Records are framed and
compressed by TensorFlow's own TFRecordWriter (GZIP), so tf.data.TFRecordDataset(...,
compression_type="GZIP") reads them.

A file is written as ".<final name>" and renamed to its final name only once closed, so a
reader listing files without a leading dot never sees a partial file. A file is closed when its
records reach max_file_bytes (serialized bytes before compression, so rotation does not depend
on how the compressor buffers), when it is max_file_age_seconds old (checked by the writer
thread at least once a second), and on close_all(). After each close the closed files under
every root used are summed (sizes on disk) and the oldest (by modification time, then name)
removed until the total is within max_total_bytes; the files being written add at most
max_file_bytes each on top. Dot files a crashed process left behind are never counted or
removed. Not thread-safe: one writer thread owns it.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.parse
from dataclasses import dataclass

log = logging.getLogger(__name__)

SUFFIX = ".tfrecord.gz"
UNRESOLVED_VERSION = "unresolved"
_FINAL_NAME = re.compile(r"(?P<prefix>.+)-\d{8}T\d{12}Z-\d{6,}" + re.escape(SUFFIX))


def model_dir_name(name: str) -> str:
    """A model name as one safe path component ("demo" stays "demo"; "/" and a leading "."
    are percent-quoted)."""
    quoted = urllib.parse.quote(name, safe="") or "%00"
    return "%2E" + quoted[1:] if quoted.startswith(".") else quoted


@dataclass
class _OpenFile:
    writer: object
    temp_path: str
    final_path: str
    opened: float
    bytes: int = 0


class LogFiles:
    """write(root, model, version, prefix, record) appends one serialized record."""

    def __init__(self, *, max_file_bytes: int, max_file_age_seconds: float, max_total_bytes: int,
                 on_removed=lambda files, size: None, clock=time.time):
        self.max_file_bytes = max_file_bytes
        self.max_file_age = max_file_age_seconds
        self.max_total_bytes = max_total_bytes
        self._on_removed = on_removed
        self._clock = clock
        self._open: dict[tuple[str, str, str, str], _OpenFile] = {}
        self._roots: dict[str, set[str]] = {}  # root -> prefixes written there
        self._seq = 0

    def write(self, root: str, model: str, version: int | None, prefix: str, record: bytes) -> None:
        """Raises OSError (or TensorFlow's error) when the file cannot be opened or written;
        the file is then closed and the next write opens a new one."""
        version_dir = UNRESOLVED_VERSION if version is None else str(version)
        key = (root, model_dir_name(model), version_dir, prefix)
        current = self._open.get(key)
        if current is None:
            current = self._open[key] = self._new_file(key)
        try:
            current.writer.write(record)
        except Exception:
            self._close(key)
            raise
        current.bytes += len(record)
        if current.bytes >= self.max_file_bytes:
            self._close(key)
            self._enforce_budget()

    def rotate_old(self) -> None:
        """Close files older than max_file_age_seconds."""
        now = self._clock()
        old = [key for key, f in self._open.items() if now - f.opened >= self.max_file_age]
        for key in old:
            self._close(key)
        if old:
            self._enforce_budget()

    def close_all(self) -> None:
        for key in list(self._open):
            self._close(key)
        self._enforce_budget()

    # ------------------------------------------------------------ files

    def _new_file(self, key) -> _OpenFile:
        from tensorflow.python.lib.io import tf_record

        root, model_dir, version_dir, prefix = key
        directory = os.path.join(root, model_dir, version_dir)
        os.makedirs(directory, exist_ok=True)
        now = self._clock()
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + "%06dZ" % int(now % 1 * 1e6)
        name = f"{prefix}-{stamp}-{self._seq:06d}{SUFFIX}"
        temp_path = os.path.join(directory, "." + name)
        options = tf_record.TFRecordOptions(compression_type="GZIP")
        writer = tf_record.TFRecordWriter(temp_path, options)
        self._roots.setdefault(root, set()).add(prefix)
        return _OpenFile(writer, temp_path, os.path.join(directory, name), now)

    def _close(self, key) -> None:
        current = self._open.pop(key)
        try:
            current.writer.close()
            os.replace(current.temp_path, current.final_path)
        except Exception:
            log.exception("request log: could not close %s", current.temp_path)

    def closed_files(self) -> list[tuple[float, str, int]]:
        """[(mtime, path, size)] of the closed log files under the roots written, oldest first."""
        found = []
        for root, prefixes in self._roots.items():
            try:
                models = os.scandir(root)
            except OSError:
                continue
            with models:
                for model in models:
                    if not model.is_dir(follow_symlinks=False):
                        continue
                    for version in _subdirs(model.path):
                        for entry in _files(version):
                            match = _FINAL_NAME.fullmatch(entry.name)
                            if match and match["prefix"] in prefixes:
                                try:
                                    stat = entry.stat(follow_symlinks=False)
                                except OSError:
                                    continue
                                found.append((stat.st_mtime, entry.path, stat.st_size))
        found.sort()
        return found

    def _enforce_budget(self) -> None:
        files = self.closed_files()
        total = sum(size for _, _, size in files)
        removed = removed_bytes = 0
        for _, path, size in files:
            if total <= self.max_total_bytes:
                break
            try:
                os.remove(path)
            except OSError:
                log.exception("request log: could not remove %s", path)
                continue
            total -= size
            removed += 1
            removed_bytes += size
        if removed:
            self._on_removed(removed, removed_bytes)


def _subdirs(path: str):
    try:
        with os.scandir(path) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _files(path: str):
    try:
        with os.scandir(path) as entries:
            return [e for e in entries if e.is_file(follow_symlinks=False)]
    except OSError:
        return []
