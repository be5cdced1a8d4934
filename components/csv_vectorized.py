"""Vectorized CSV reading for ExampleGen (pyarrow): csv_reading's layout and the exact
example bytes of the strict reader, a block of rows at a time.

The strict reader (csv_reading, Python's csv module, one row and one tf.Example at a time)
is the reference; this reader must give the same result or step aside. It reads a file only
when that file cannot hold what makes the two differ (`_refusal`, checked as the first pass
reads): no quote character (quoting stays the strict reader's job), no blank line and no
lone carriage return (so data row i is physical line i + 2, as the strict reader counts), no
NUL byte, no byte-order mark (anywhere: pyarrow drops one starting a block), not compressed
(gzip, ...: named), valid UTF-8 throughout. A header that is blank, repeats or differs from
the first file's, a row with too many or too few fields (any pyarrow error), a file without
rows, a number written with non-ASCII characters or a field longer than csv's
field_size_limit also send the file back (`NotVectorizable`): the strict reader then reads
it and raises its precise error, or reads it.

Types are classified as csv_reading._kind_of does, on each block's distinct values: the
missing-value tokens by exact match, ints and floats by RE2 versions of `_INT`/`_FLOAT` whose
whitespace is Python's ASCII `\\s`; a non-ASCII value, one holding \\x1c-\\x1f or an int
longer than 18 characters (which may exceed int64) is classified by `_kind_of` itself. Values
convert as Python's int() and float() do (pyarrow's parsers are correctly rounded as Python's,
then float64 -> float32 as protobuf stores a float), and a tf.Example is serialized here, in
numpy and pyarrow compute, with the features in the order protobuf's upb runtime writes them
for that set of present features (`_written_order`, asked of upb once per set), so the
records are byte-for-byte what `Example.SerializeToString()` gives; the split hash is taken
of the same bytes with the features in the order `SerializeToString(deterministic=True)`
writes them (also asked of upb: its sort is not Python's, "c10" comes before "c1").

Memory: a block of CSV (`SCAN_BLOCK_BYTES` in the first pass, `BLOCK_BYTES` in the second)
and its encodings at a time; the second pass encodes the next block in a thread while the
caller writes this one.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Iterator

from components import csv_reading
from components.csv_reading import FLOAT, INT, STRING, ColumnReport, CsvLayout, FileScan
from components.example_splits import stable_hashes

BLOCK_BYTES = 1 << 19  # CSV bytes per block of the second pass: ~20 MB of encodings
SCAN_BLOCK_BYTES = 1 << 20  # per block of the first pass (strings and kind codes only)


def _strips(char: str) -> bool:
    try:
        return int(f"{char}5{char}") == 5 and float(f"{char}5{char}") == 5
    except ValueError:
        return False


# Python's `\s` on ASCII, which csv_reading's _INT/_FLOAT allow around a number, and which
# int() and float() strip; the rest of `\s` (\x1c-\x1f) they do not strip, so a value
# holding them is classified by _kind_of (`_kind_codes`): a string, as int() rejects it.
_REGEX_SPACE = [c for c in map(chr, range(128)) if re.fullmatch(r"\s", c)]
_SPACE = "".join(c for c in _REGEX_SPACE if _strips(c))
_SPACE_CLASS = "[" + "".join(f"\\x{ord(c):02x}" for c in _SPACE) + "]"
_ODD_SPACE_CLASS = "[" + "".join(f"\\x{ord(c):02x}" for c in _REGEX_SPACE
                                 if c not in _SPACE) + "]"
_INT_RE2 = f"^{_SPACE_CLASS}*[+-]?[0-9]+{_SPACE_CLASS}*$"
_FLOAT_RE2 = f"^{_SPACE_CLASS}*[+-]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][+-]?[0-9]+)?{_SPACE_CLASS}*$"
_SURE_INT_CHARS = 18  # at most 18 digits: |value| < 10**18 < 2**63, an int64 for sure
_CACHED_VALUES = 4096  # distinct values of a column whose encodings are kept across blocks
_MISSING, _INT_CODE, _FLOAT_CODE, _STRING_CODE = 0, 1, 2, 3
_KIND_CODE = {INT: _INT_CODE, FLOAT: _FLOAT_CODE, STRING: _STRING_CODE}


class NotVectorizable(Exception):
    """This file must be read by the strict reader; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# -- eligibility and blocks -----------------------------------------------------------------
def _refusal(data: bytes, first: bool) -> str | None:
    """Why the strict reader must read a file holding these bytes (whole lines, the file's
    first ones when `first`), None when this reader gives the same result."""
    if first and csv_reading.compression_of(data):
        return f"it is {csv_reading.compression_of(data)}-compressed"
    if first and data.startswith(codecs.BOM_UTF8):
        return "it starts with a byte-order mark"
    if b'"' in data:
        return "it holds a quote character (\")"
    if b"\x00" in data:
        return "it holds a NUL byte"
    if codecs.BOM_UTF8 in data:  # pyarrow drops one that starts a block: a value would change
        return "it holds a byte-order mark (U+FEFF) after its start"
    if (b"\n\n" in data or b"\n\r\n" in data or data.startswith(b"\n")
            or data.startswith(b"\r\n")):
        return "it holds a blank line"
    if data.count(b"\r") != data.count(b"\r\n"):
        return "it holds a carriage return that does not end a line"
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return "it holds bytes that are not UTF-8"
    return None


def _chunks(path: str, check: bool, size: int) -> Iterator[bytes]:
    """The file's bytes in whole lines: its header line, then about `size` bytes at a time.
    With `check`, raises NotVectorizable for bytes the strict reader must read (`_refusal`).
    A chunk ends at a line end, never inside a UTF-8 character, so it decodes on its own."""
    def checked(data: bytes, first: bool) -> bytes:
        reason = _refusal(data, first) if check else None
        if reason:
            raise NotVectorizable(reason)
        return data

    with open(path, "rb") as fh:
        header = fh.readline()
        if not header:
            raise NotVectorizable("it is empty")
        yield checked(header, True)
        rest = b""
        while True:
            chunk = fh.read(size)
            if not chunk:
                if rest:
                    yield checked(rest, False)
                return
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # a line longer than a block: read on
                rest = data
                continue
            rest = data[cut:]
            yield checked(data[:cut], False)


def _field_limit() -> int:
    """Python csv's limit on a field's characters: the strict reader fails on a longer one."""
    import csv

    return csv.field_size_limit()


def _long_field(limit: int) -> NotVectorizable:
    return NotVectorizable(f"it holds a field longer than {limit} characters, csv's "
                           f"field_size_limit")


def _header(data: bytes, path: str, expected: tuple[list[str], str] | None) -> list[str]:
    header = data.rstrip(b"\n").rstrip(b"\r").decode("utf-8").split(",")
    if any(not name.strip() for name in header) or len(set(header)) != len(header):
        raise NotVectorizable("its header has a blank or repeated column name")
    if max(map(len, header)) > _field_limit():
        raise _long_field(_field_limit())
    if expected is not None and header != expected[0]:
        raise NotVectorizable(f"its header differs from the header of {expected[1]}")
    return header


def _parse(data: bytes, header: list[str]) -> list:
    """Whole CSV lines (no header) as RecordBatches of strings, nothing read as null."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(column_names=header, use_threads=False,
                                          block_size=len(data) + 1),
            parse_options=pcsv.ParseOptions(delimiter=",", quote_char=False,
                                            double_quote=False, escape_char=False,
                                            newlines_in_values=False,
                                            ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[],
                check_utf8=True))
    except pa.ArrowException as exc:
        raise NotVectorizable(f"pyarrow could not read it ({str(exc).splitlines()[0]})"
                              ) from None
    return table.to_batches()


# -- first pass: the layout -----------------------------------------------------------------
def _kind_codes(values, missing) -> "object":
    """Per distinct value (a pyarrow string array): 0 missing, 1 int, 2 float, 3 string, as
    csv_reading._kind_of reads it."""
    import numpy as np
    import pyarrow.compute as pc

    def flags(array) -> np.ndarray:
        return array.to_numpy(zero_copy_only=False)

    if len(values) and pc.max(pc.utf8_length(values)).as_py() > _field_limit():
        raise _long_field(_field_limit())
    is_missing = flags(pc.is_in(values, value_set=missing))
    is_int = flags(pc.match_substring_regex(values, _INT_RE2))
    is_float = flags(pc.match_substring_regex(values, _FLOAT_RE2))
    codes = np.where(is_missing, _MISSING, np.where(
        is_int, _INT_CODE, np.where(is_float, _FLOAT_CODE, _STRING_CODE))).astype(np.int8)
    ascii_ = flags(pc.string_is_ascii(values))
    long = flags(pc.binary_length(values)) > _SURE_INT_CHARS
    odd = flags(pc.match_substring_regex(values, _ODD_SPACE_CLASS))
    for index in np.flatnonzero(~is_missing & (~ascii_ | odd | (is_int & long))):
        value = values[int(index)].as_py()
        kind = csv_reading._kind_of(value)
        if kind != STRING and not value.isascii():
            raise NotVectorizable(f"it holds a number written with non-ASCII characters "
                                  f"({value!r})")
        codes[index] = _KIND_CODE[kind]
    return codes


def _codes(column, missing, cache: list, index: int):
    """(_kind_codes of the column's distinct values, each row's index into them), with the
    distinct values of a column of at most _CACHED_VALUES kept across blocks in `cache`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    known = cache[index]
    if known is not False:
        if known is not None:
            positions = pc.index_in(column, value_set=known[0])
            if positions.null_count == 0:
                return known[1], positions.to_numpy()
        values = pc.unique(column if known is None else pa.concat_arrays([known[0], column]))
        if len(values) <= _CACHED_VALUES:
            cache[index] = (values, _kind_codes(values, missing))
            return cache[index][1], pc.index_in(column, value_set=values).to_numpy()
        cache[index] = False
    encoded = pc.dictionary_encode(column)
    return _kind_codes(encoded.dictionary, missing), encoded.indices.to_numpy()


def _missing_array(missing: frozenset[str]):
    import pyarrow as pa

    return pa.array(sorted(missing), pa.string())


def scan_file(path: str, missing: frozenset[str],
              expected: tuple[list[str], str] | None = None) -> FileScan:
    """csv_reading.scan_file's result for `path`, vectorized. Raises NotVectorizable when
    the strict reader must read the file (see the module's docstring).

    Blocks are classified by two threads (pyarrow releases the GIL) and merged in order.
    """
    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    chunks = _chunks(path, check=True, size=SCAN_BLOCK_BYTES)
    header = _header(next(chunks), path, expected)
    missing_values = _missing_array(missing)
    local = threading.local()  # a cache per thread (see _codes): results do not depend on it

    def scan(data: bytes) -> tuple[int, list]:
        if not hasattr(local, "cache"):
            local.cache = [None] * len(header)
        return _scan_chunk(data, header, missing_values, local.cache)

    kinds: list[str | None] = [None] * len(header)
    reports = [ColumnReport(name) for name in header]
    rows = 0

    def merge(result: tuple[int, list]) -> None:
        nonlocal rows
        chunk_rows, columns = result
        for index, (counts, first) in enumerate(columns):
            report = reports[index]
            report.missing += counts[_MISSING]
            report.numbers += counts[_INT_CODE] + counts[_FLOAT_CODE]
            report.others += counts[_STRING_CODE]
            if counts[_STRING_CODE]:
                kinds[index] = STRING
                if report.first_other is None:
                    report.first_other = (path, rows + first[0] + 2, first[1])
            elif counts[_FLOAT_CODE] and kinds[index] != STRING:
                kinds[index] = FLOAT
            elif counts[_INT_CODE] and kinds[index] is None:
                kinds[index] = INT
        rows += chunk_rows

    with ThreadPoolExecutor(2, thread_name_prefix="csv-scan") as pool:
        pending: deque = deque()
        for data in chunks:
            pending.append(pool.submit(scan, data))
            if len(pending) > 2:
                merge(pending.popleft().result())
        while pending:
            merge(pending.popleft().result())
    if rows == 0:
        raise NotVectorizable("it has a header but no rows")
    return FileScan(path, header, rows, kinds, reports)


def _scan_chunk(data: bytes, header: list[str], missing, cache: list) -> tuple[int, list]:
    """(rows, per column: (values per kind code, (row, value) of the first string or None))
    of whole CSV lines."""
    import numpy as np

    totals = [[0, 0, 0, 0] for _ in header]
    firsts: list = [None] * len(header)
    rows = 0
    for batch in _parse(data, header):
        for index, column in enumerate(batch.columns):
            codes, positions = _codes(column, missing, cache, index)
            counts = np.bincount(codes, weights=np.bincount(positions, minlength=len(codes)),
                                 minlength=4).astype(np.int64).tolist()
            totals[index] = [a + b for a, b in zip(totals[index], counts)]
            if counts[_STRING_CODE] and firsts[index] is None:
                row = int(np.argmax(codes[positions] == _STRING_CODE))
                firsts[index] = (rows + row, column[row].as_py())
        rows += batch.num_rows
    return rows, list(zip(totals, firsts))


# -- second pass: tf.Example bytes ----------------------------------------------------------
def _binary(offsets, data, valid=None):
    """A pyarrow binary array from numpy offsets (int32, n + 1) and bytes (uint8)."""
    import numpy as np
    import pyarrow as pa

    validity = None
    if valid is not None and not valid.all():
        validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.binary(), len(offsets) - 1,
                                 [validity, pa.py_buffer(offsets), pa.py_buffer(data)])


def _varints(values, valid=None):
    """Protobuf varints of uint64 `values` (numpy), as a binary array."""
    import numpy as np

    values = values.astype(np.uint64, copy=False)
    sizes = np.ones(len(values), np.int32)
    for bits in range(7, 64, 7):
        sizes += values >= np.uint64(1 << bits)
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    data = np.empty(int(offsets[-1]), np.uint8)
    starts = offsets[:-1]
    for byte in range(int(sizes.max()) if len(values) else 0):
        rows = np.flatnonzero(sizes > byte)
        part = (values[rows] >> np.uint64(7 * byte)) & np.uint64(0x7F)
        more = (sizes[rows] > byte + 1).astype(np.uint64) << np.uint64(7)
        data[starts[rows] + byte] = (part | more).astype(np.uint8)
    return _binary(offsets, data, valid)


def _wrap(tag: bytes, payload):
    """tag + varint(len(payload)) + payload per row (a length-delimited protobuf field);
    null stays null."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.binary_length(payload).fill_null(0).to_numpy(zero_copy_only=False)
    return pc.binary_join_element_wise(_scalar(tag), _varints(lengths.astype(np.uint64)),
                                       payload, _EMPTY())


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _trimmed(column):
    import pyarrow.compute as pc

    return pc.replace_substring_regex(pc.utf8_trim(column, characters=_SPACE), r"^\+", "")


def _feature_bytes(column, kind: str, present):
    """Per row, the Feature message holding the value (null where missing): what
    `feature.SerializeToString()` gives for a one-value list of `kind`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == STRING:
        values = pc.if_else(pa.array(present), column.cast(pa.binary()),
                            pa.scalar(None, pa.binary()))
        return _wrap(b"\n", _wrap(b"\n", values))  # bytes_list { value: ... }
    numbers = pc.if_else(pa.array(present), _trimmed(column), pa.scalar(None, pa.string()))
    if kind == INT:
        values = pc.cast(numbers, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        return _wrap(b"\x1a", _wrap(b"\n", _varints(values.view(np.uint64), present)))
    doubles = pc.cast(numbers, pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
    with np.errstate(over="ignore"):  # float32 overflow -> inf, as protobuf stores it
        floats = doubles.astype(np.float32)
    # float_list { value: [packed, 4 bytes] }: 0x12 0x06 0x0a 0x04 + little-endian float32
    rows = np.empty((len(floats), 8), np.uint8)
    rows[:, :4] = np.frombuffer(b"\x12\x06\n\x04", np.uint8)
    rows[:, 4:] = floats.astype("<f4").view(np.uint8).reshape(-1, 4)
    offsets = np.arange(0, 8 * len(floats) + 1, 8, dtype=np.int32)
    return _binary(offsets, rows.reshape(-1), present)


@dataclass
class EncodedBatch:
    """A block of one file's rows as serialized tf.Examples, in row order.

    `records`: what the strict reader writes (`SerializeToString()`); `hashes`: the split
    hash (example_splits.stable_hashes) of `SerializeToString(deterministic=True)`, a numpy
    uint64 per row, computed in the encoding thread; row i is `path` line first_line + i.
    """

    path: str
    first_line: int
    records: list[bytes]
    columns: list[str]
    hashes: object
    # Per column: (Feature bytes per distinct value, null where missing; each row's index)
    _features: list = field(default_factory=list)

    def feature(self, name: str) -> list[bytes | None]:
        """Per row, `example.features.feature[name].SerializeToString(deterministic=True)`,
        None where the feature is absent."""
        if name not in self.columns:
            return [None] * len(self.records)
        values, indices = self._features[self.columns.index(name)]
        return values.take(indices).to_pylist()

    def present(self, row: int) -> list[str]:
        """The features row `row` holds, sorted."""
        return sorted(name for name, (values, indices) in zip(self.columns, self._features)
                      if values[indices[row].as_py()].is_valid)


class ExampleEncoder:
    """Second pass: a file's rows as EncodedBatch, by the layout of the first pass."""

    def __init__(self, layout: CsvLayout):
        import pyarrow as pa

        self.layout = layout
        self._missing = _missing_array(layout.missing_tokens)
        # Per column: its map entry's key field; the value field (the Feature) follows.
        self._entry_heads = []
        for name in layout.columns:
            key = name.encode("utf-8")
            self._entry_heads.append(pa.scalar(b"\n" + _varint_bytes(len(key)) + key,
                                               pa.binary()))
        self._sorted = self._deterministic_order()
        self._orders: dict[tuple[bool, ...], list[int]] = {}
        # Per column: (distinct values, their _values) kept across blocks; False: too many
        self._cache: list = [None] * len(layout.columns)

    def _deterministic_order(self) -> list[int]:
        """The columns in the order `SerializeToString(deterministic=True)` writes them, asked
        of upb: it sorts map keys by their bytes but puts a key before its own prefixes ("c10"
        before "c1"), unlike Python's sorted(). The order of any subset of the columns is
        this order restricted to it, as a sort's is."""
        from tensorflow.core.example.example_pb2 import Example

        example = Example()
        for name in self.layout.columns:
            example.features.feature[name].int64_list.value.append(0)
        return [self.layout.columns.index(name)
                for name in _keys_of(example, deterministic=True)]

    def _written_order(self, present: tuple[bool, ...]) -> list[int]:
        """The columns (present ones) in the order upb serializes an Example holding them,
        set in header order as the strict reader sets them."""
        order = self._orders.get(present)
        if order is None:
            from tensorflow.core.example.example_pb2 import Example

            example = Example()
            features = example.features.feature
            names = [name for name, here in zip(self.layout.columns, present) if here]
            for name in names:
                features[name].int64_list.value.append(0)
            order = [self.layout.columns.index(name) for name in _keys_of(example)]
            if sorted(order) != [i for i, here in enumerate(present) if here]:
                raise AssertionError(f"upb wrote features {order} for {names}")
            self._orders[present] = order
        return order

    def _values(self, index: int, values):
        """(Feature bytes, map entry bytes, whether present) per value of `values` (distinct
        strings of one column); null where the value is missing."""
        import pyarrow.compute as pc

        here = ~pc.is_in(values, value_set=self._missing).to_numpy(zero_copy_only=False)
        feature = _feature_bytes(values, self.layout.types[self.layout.columns[index]], here)
        entry = pc.binary_join_element_wise(self._entry_heads[index], _wrap(b"\x12", feature),
                                            _EMPTY())
        return feature, _wrap(b"\n", entry), here

    def _column(self, index: int, column):
        """`_values` of one column's distinct values, and each row's index into them: values
        repeat, so each is encoded once. A column of at most _CACHED_VALUES distinct values
        keeps them across blocks (one lookup per block); others encode each block's own."""
        import pyarrow as pa
        import pyarrow.compute as pc

        cache = self._cache[index]
        if cache is not False:
            if cache is not None:
                positions = pc.index_in(column, value_set=cache[0])
                if positions.null_count == 0:
                    return (*cache[1:], positions)
            values = pc.unique(column if cache is None else pa.concat_arrays([cache[0], column]))
            if len(values) <= _CACHED_VALUES:
                self._cache[index] = (values, *self._values(index, values))
                return (*self._cache[index][1:], pc.index_in(column, value_set=values))
            self._cache[index] = False
        encoded = pc.dictionary_encode(column)
        return (*self._values(index, encoded.dictionary), encoded.indices)

    def batches(self, path: str) -> Iterator[EncodedBatch]:
        """The file's rows, a block at a time. The next block is encoded in a thread while
        this one is consumed (pyarrow and numpy release the GIL): two blocks in flight."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        header = self.layout.columns
        chunks = _chunks(path, check=False, size=BLOCK_BYTES)
        _header(next(chunks), path, (header, "the first pass"))
        line = 2  # of the chunk's first row: no blank line, no line break in a value
        with ThreadPoolExecutor(1, thread_name_prefix="csv-encode") as pool:
            pending: deque = deque()
            for data in chunks:
                pending.append(pool.submit(self._encode, path, line, data))
                line += data.count(b"\n") + (not data.endswith(b"\n"))
                if len(pending) > 1:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()

    def _encode(self, path: str, line: int, data: bytes) -> list[EncodedBatch]:
        import numpy as np
        import pyarrow as pa

        encoded = []
        for batch in _parse(data, self.layout.columns):
            entries, features, missing = [], [], []
            for index, column in enumerate(batch.columns):
                feature, entry, here, indices = self._column(index, column)
                entries.append(entry.take(indices))
                features.append((feature, indices))
                missing.append(~here[indices.to_numpy()])
            canonical = _example(_join([entries[i] for i in self._sorted], batch.num_rows))
            patterns, inverse = _patterns(missing)
            if len(patterns) == 1:
                order = self._written_order(patterns[0])
                written = _example(_join([entries[i] for i in order], batch.num_rows))
            else:
                # Rows grouped by feature set (one take per column), joined per group in
                # that set's order, then put back in row order.
                grouped = np.argsort(inverse, kind="stable")
                by_set = [entry.take(pa.array(grouped)) for entry in entries]
                parts, start = [], 0
                for number, count in enumerate(np.bincount(inverse).tolist()):
                    order = self._written_order(patterns[number])
                    parts.append(_join([by_set[i].slice(start, count) for i in order], count))
                    start += count
                back = np.empty(batch.num_rows, np.int64)
                back[grouped] = np.arange(batch.num_rows)
                written = _example(pa.concat_arrays(parts).take(pa.array(back)))
            encoded.append(EncodedBatch(path, line, _bytes_list(written), self.layout.columns,
                                        stable_hashes(_bytes_list(canonical)), features))
            line += batch.num_rows
        return encoded


def _patterns(missing: list) -> tuple[list[tuple[bool, ...]], object]:
    """The distinct sets of present columns among the rows (as tuples of bools), and each
    row's number among them. `missing`: per column, a numpy bool per row."""
    import numpy as np

    varying = [i for i, column in enumerate(missing) if column.any() and not column.all()]
    fixed = tuple(not column.all() for column in missing)
    if not varying:
        return [fixed], np.zeros(len(missing[0]) if missing else 0, np.int64)
    if len(varying) <= 62:
        ids = np.zeros(len(missing[0]), np.int64)
        for bit, i in enumerate(varying):
            ids |= missing[i].astype(np.int64) << bit
        distinct, inverse = np.unique(ids, return_inverse=True)
        patterns = []
        for value in distinct.tolist():
            pattern = list(fixed)
            for bit, i in enumerate(varying):
                pattern[i] = not (value >> bit) & 1
            patterns.append(tuple(pattern))
        return patterns, inverse.reshape(-1)
    distinct, inverse = np.unique(~np.stack(missing, axis=1), axis=0, return_inverse=True)
    return [tuple(bool(x) for x in row) for row in distinct], inverse.reshape(-1)


def _bytes_list(array) -> list[bytes]:
    """A binary array without nulls as Python bytes; slicing one copy of its data is twice
    as fast as Array.to_pylist."""
    import numpy as np

    offsets = np.frombuffer(array.buffers()[1], np.int32, count=len(array) + 1,
                            offset=array.offset * 4).tolist()
    data = array.buffers()[2].to_pybytes() if len(array) else b""
    return [data[start:end] for start, end in zip(offsets, offsets[1:])]


_SCALARS: dict[bytes | None, object] = {}


def _scalar(value: bytes | None):
    """A pyarrow binary scalar, made once (a block makes thousands of calls)."""
    scalar = _SCALARS.get(value)
    if scalar is None:
        import pyarrow as pa

        scalar = _SCALARS[value] = pa.scalar(value, pa.binary())
    return scalar


def _EMPTY():
    return _scalar(b"")


def _join(columns, rows: int):
    """Per row, the columns' bytes in the given order, nulls left out."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not columns:  # every value of these rows is missing
        return pa.array([b""] * rows, pa.binary())
    # The leading b"": pyarrow 10 drops a row whose every value is null from the output.
    return pc.binary_join_element_wise(_EMPTY(), *columns, _EMPTY(), null_handling="skip")


def _example(features):
    """Example { features { ...entries } }; an Example without features is empty."""
    import pyarrow as pa
    import pyarrow.compute as pc

    empty = pc.equal(pc.binary_length(features), 0)
    return pc.if_else(empty, _EMPTY(), _wrap(b"\n", features))


def _keys_of(example, deterministic: bool = False) -> list[str]:
    """The feature names in the order `example.SerializeToString(deterministic)` writes them."""
    from google.protobuf.internal.decoder import _DecodeVarint

    data = example.SerializeToString(deterministic=deterministic)
    keys, position = [], 0
    if not data:
        return keys
    length, position = _DecodeVarint(data, 1)  # Example.features
    end = position + length
    while position < end:
        length, start = _DecodeVarint(data, position + 1)  # Features.feature entry
        key_length, key_start = _DecodeVarint(data, start + 1)  # entry.key
        keys.append(data[key_start:key_start + key_length].decode("utf-8"))
        position = start + length
    return keys
