"""Streaming CSV reading for ExampleGen: header checks, column type inference, typed rows.

Two passes over the files, neither holding more than one row: the first checks every
file's header and field counts and infers each column's type, the second yields typed
values. Type inference follows tfx_bsl's CSV decoder (`tfx_bsl.coders.csv_decoder`,
what TFX's CsvExampleGen uses): each value is int, float or string, a column takes the
widest kind among its values (int < float < string), and an empty field is missing.
Beyond tfx_bsl, the missing-value tokens (`DEFAULT_MISSING_VALUE_TOKENS`: NA, NaN, nan,
null, NULL, N/A; configurable) are missing too, so a numeric column holding "NaN" stays
numeric with missing values instead of silently becoming a string column, and a column
with no value at all is a string column (tfx_bsl leaves it untyped). Missing values are
yielded as None, never filled. The first pass also records, per column, how many values
are missing and - for a string column that also holds numbers - the first value that is
not a number and where it is (`ColumnReport.describe`), so the type is explained.
Quoting is checked strictly (see `_records`): malformed quoting fails naming the file and
line instead of merging or changing rows.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from typing import Iterator

# Read as missing besides the empty field (which always is, as in tfx_bsl).
DEFAULT_MISSING_VALUE_TOKENS = ("NA", "NaN", "nan", "null", "NULL", "N/A")
INT, FLOAT, STRING = "int", "float", "string"
_INT = re.compile(r"\s*[+-]?\d+\s*")
_FLOAT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_INT64_MAX = 2 ** 63 - 1


class CsvInputError(ValueError):
    """A CSV file that cannot be read as examples; the message names the file and line."""


@dataclass
class ColumnReport:
    """What the first pass saw in one column: its values by kind, and the first value
    that is not a number (with its file and line), which makes a column a string column."""

    name: str
    missing: int = 0
    numbers: int = 0  # values that read as int or float
    others: int = 0  # values that do not (strings)
    first_other: tuple[str, int, str] | None = None  # (path, line, value)

    def describe(self, kind: str, rows: int) -> str:
        """One line: "<name>: <type>, <m> missing of <rows>", and for a string column that
        also holds numbers, how many values are not numbers and the first of them."""
        text = f"{self.name}: {kind}, {self.missing} missing of {rows}"
        if kind == STRING and self.numbers == 0 and self.others == 0:
            text += " (no value at all: typed string)"
        elif kind == STRING and self.numbers and self.first_other is not None:
            path, line, value = self.first_other
            text += (f"; {self.numbers} value(s) are numbers but {self.others} are not, the "
                     f"first {value!r} at {path} line {line}")
        return text


@dataclass(frozen=True)
class CsvLayout:
    """What the first pass learned: the shared header, each column's type and report, and
    the tokens read as missing (the second pass reads with the same ones)."""

    columns: list[str]
    types: dict[str, str]
    rows: int
    reports: dict[str, ColumnReport]
    missing_tokens: frozenset[str]

    def type_lines(self) -> list[str]:
        """One line per column, in header order (see ColumnReport.describe)."""
        return [self.reports[name].describe(self.types[name], self.rows)
                for name in self.columns]

    def mixed_columns(self) -> list[str]:
        """String columns that also hold numbers: most likely a number column with a few
        words in it (an unlisted missing-value token, a typo), named with the first word."""
        return [self.reports[name].describe(STRING, self.rows) for name in self.columns
                if self.types[name] == STRING and self.reports[name].numbers]


def _kind_of(value: str) -> str:
    """INT, FLOAT or STRING. A value the patterns match but int() and float() reject is a
    string: `\\s` also matches \\x1c-\\x1f, which int() and float() do not strip ("\\x1c7")."""
    if _INT.fullmatch(value):
        number = _number(int, value)
        if number is not None and abs(number) <= _INT64_MAX:
            return INT
    if _FLOAT.fullmatch(value) and _number(float, value) is not None:
        return FLOAT
    return STRING


def _number(convert, value: str) -> int | float | None:
    try:
        return convert(value)
    except ValueError:
        return None


_WIDER = {(INT, FLOAT): FLOAT, (FLOAT, INT): FLOAT}


def _widen(current: str | None, seen: str) -> str:
    if current is None or current == seen:
        return seen
    return _WIDER.get((current, seen), STRING)


def _records(path: str) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) for every non-blank record, the header included.

    Quoting is read strictly, as RFC 4180 writes it: a quoted field is closed by a quote
    followed by a delimiter or the end of the line, a quote inside it is doubled, and an
    unquoted field holds no quote. Anything else fails naming the line, so a quote left open
    never swallows the rows after it and a stray quote never changes a value silently. A
    quoted field may span lines (legal CSV); line numbers count physical lines, so they stay
    right after it.
    """
    # surrogateescape: undecodable bytes are found line by line (_lines), not per buffer
    # chunk, so the error names the right line. -sig: drop an Excel BOM.
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        raw: list[str] = []  # the physical lines of the record being read, nothing more
        reader = csv.reader(_lines(fh, path, raw), strict=True)
        while True:
            start = reader.line_num + 1
            raw.clear()
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise CsvInputError(_malformed(path, start, raw, reader.line_num, exc)) from None
            if not fields:
                continue
            # Fast path: a one-line record without a quote cannot be misquoted. Otherwise a
            # quote left in a value is either doubled inside a quoted field or stray.
            if (len(raw) > 1 or '"' in raw[0]) and any('"' in value for value in fields):
                problem = _quote_problem(raw)
                if problem:
                    raise CsvInputError(_describe(path, start, problem))
            yield start, reader.line_num, fields


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a bad byte


# The first bytes of a compressed file, named when such a file fails as CSV. bzip2's "BZh"
# could start a CSV header: its level digit and first block's magic must follow.
_COMPRESSED = re.compile(rb"(\x1f\x8b)|(BZh[1-9]1AY&SY)|(\xfd7zXZ\x00)|(\x28\xb5\x2f\xfd)"
                         rb"|(PK\x03\x04)")
_COMPRESSION_NAMES = ("gzip", "bzip2", "xz", "zstd", "zip")


def compression_of(data: bytes) -> str | None:
    """The compression ("gzip", "bzip2", "xz", "zstd", "zip") whose magic bytes `data` (a
    file's first bytes) begins with; None for none of them."""
    match = _COMPRESSED.match(data)
    return _COMPRESSION_NAMES[match.lastindex - 1] if match else None


def _lines(fh, path: str, raw: list[str]) -> Iterator[str]:
    for number, line in enumerate(fh, 1):
        if not line.isascii():
            bad = _UNDECODABLE.search(line)
            if bad:
                compressed = number == 1 and compression_of(
                    line.encode("utf-8", "surrogateescape"))
                raise CsvInputError(
                    f"{path} line {number}: cannot be read as UTF-8 CSV (byte "
                    f"0x{ord(bad.group()) - 0xDC00:02x} at character {bad.start() + 1} is "
                    f"not UTF-8)" + (f"; the file is {compressed}-compressed: decompress it "
                                     f"for ExampleGen, which reads plain CSV"
                                     if compressed else ""))
        raw.append(line)
        yield line


@dataclass(frozen=True)
class _QuoteProblem:
    kind: str  # "stray", "after_close" or "unclosed"
    line: int  # the line of the offending quote or text, as an offset into the record's lines
    field: int  # which field of the record, from 1
    opened: int  # the line (offset) where that field's opening quote is; -1: unquoted field


def _quote_problem(lines: list[str]) -> _QuoteProblem | None:
    """The first quoting error in one record's raw lines, by RFC 4180; None if it has none.

    Only run on records that hold a quote in a value or failed to parse, so its
    character-by-character pace does not matter.
    """
    state, field, opened = "start", 1, -1
    for offset, line in enumerate(lines):
        for char in line:
            if state == "quoted":
                if char == '"':
                    state = "quote_in_quoted"
            elif char == ",":
                state, field, opened = "start", field + 1, -1
            elif char in "\r\n":  # outside quotes: the end of the record
                state, field, opened = "start", 1, -1
            elif state == "start":
                state, opened = ("quoted", offset) if char == '"' else ("unquoted", -1)
            elif state == "unquoted":
                if char == '"':
                    return _QuoteProblem("stray", offset, field, -1)
            elif state == "quote_in_quoted":
                if char != '"':
                    return _QuoteProblem("after_close", offset, field, opened)
                state = "quoted"  # a doubled quote inside the field
    if state == "quoted":
        return _QuoteProblem("unclosed", opened, field, opened)
    return None


def _describe(path: str, start: int, problem: _QuoteProblem) -> str:
    where = f"{path} line {start + problem.line}: unbalanced quotes"
    if problem.kind == "stray":
        return (f"{where}: a quote inside unquoted field {problem.field}; a field holding a "
                f"quote must be quoted whole, with the quote doubled (\"ab\"\"c\")")
    if problem.kind == "after_close":
        opened = ("" if problem.opened == problem.line
                  else f", whose quote opened on line {start + problem.opened}")
        return (f"{where}: text after the closing quote of field {problem.field}{opened}; a "
                f"quote inside a quoted field is doubled (\"ab\"\"c\")")
    return (f"{where}: the quote opening field {problem.field} here is never closed, so "
            f"every line after it would be read into that field")


def _malformed(path: str, start: int, raw: list[str], line: int, exc: csv.Error) -> str:
    problem = _quote_problem(raw)
    if problem is None:
        return f"{path} line {line}: cannot be read as CSV ({exc})"
    if problem.kind == "unclosed" and "field limit" in str(exc):
        # In a large file an open quote hits csv's size limit for one field long before the
        # end of the file; a field that large is almost always an unbalanced quote.
        return (f"{path} line {start + problem.opened}: unbalanced quotes: the quote opening "
                f"field {problem.field} here is not closed within {csv.field_size_limit()} "
                f"characters (by line {line}), csv's limit for one field")
    return _describe(path, start, problem)


def _check_header(path: str, line: int, header: list[str]) -> None:
    blank = [i + 1 for i, name in enumerate(header) if not name.strip()]
    if blank:
        raise CsvInputError(f"{path} line {line}: header column(s) {blank} have no name")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise CsvInputError(f"{path} line {line}: header repeats column(s) {duplicates}")


def _lines_of(start: int, end: int) -> str:
    """Where a record is: its first line, and its last when a quoted field spans lines."""
    return f"line {start}" if start == end else f"line {start} (a record over lines {start}-{end})"


def missing_tokens_of(tokens) -> frozenset[str]:
    """The values read as missing: the empty field and the given tokens."""
    return frozenset({"", *tokens})


@dataclass
class FileScan:
    """What the first pass found in one file: its header, its row count, and per column
    (in header order) the widest kind of its values (None: no value) and its report."""

    path: str
    header: list[str]
    rows: int
    kinds: list[str | None]
    reports: list[ColumnReport]


def scan_file(path: str, missing: frozenset[str],
              expected: tuple[list[str], str] | None = None) -> FileScan:
    """The first pass over one file, strictly (see `_records`). `expected`: the header of
    the first file and that file's path, which this file's header must equal.

    Raises CsvInputError naming the file (and line) for an empty file, a header that is
    blank, repeats a column or differs from `expected`, a file without rows, a row with too
    many or too few fields, malformed quoting or bytes that are not UTF-8.
    """
    records = _records(path)
    try:
        header_line, _, header = next(records)
    except StopIteration:
        raise CsvInputError(f"{path} is empty: expected a header line and rows") from None
    _check_header(path, header_line, header)
    if expected is not None and header != expected[0]:
        raise CsvInputError(f"{path} line {header_line}: header {header} does not match "
                            f"the header {expected[0]} of {expected[1]}")
    kinds: list[str | None] = [None] * len(header)
    reports = [ColumnReport(name) for name in header]
    rows = 0
    for line, end, fields in records:
        if len(fields) != len(header):
            raise CsvInputError(f"{path} {_lines_of(line, end)}: expected {len(header)} "
                                f"fields ({','.join(header)}), found {len(fields)}")
        for index, value in enumerate(fields):
            report = reports[index]
            if value in missing:
                report.missing += 1
                continue
            kind = _kind_of(value)
            kinds[index] = _widen(kinds[index], kind)
            if kind == STRING:
                report.others += 1
                if report.first_other is None:
                    report.first_other = (path, line, value)
            else:
                report.numbers += 1
        rows += 1
    if rows == 0:
        raise CsvInputError(f"{path} has a header but no rows")
    return FileScan(path, header, rows, kinds, reports)


def merge_scans(scans: list[FileScan], missing: frozenset[str]) -> CsvLayout:
    """The layout of files read in `scans`' order (every header equal): a column's type is
    the widest of its kinds, its counts add up, its first non-number is the first file's."""
    columns = list(scans[0].header) if scans else []
    types: dict[str, str | None] = {name: None for name in columns}
    reports = {name: ColumnReport(name) for name in columns}
    for scan in scans:
        for name, kind, seen in zip(columns, scan.kinds, scan.reports):
            if kind is not None:
                types[name] = _widen(types[name], kind)
            report = reports[name]
            report.missing += seen.missing
            report.numbers += seen.numbers
            report.others += seen.others
            if report.first_other is None:
                report.first_other = seen.first_other
    # A column with no value at all carries no type information; strings are the safe kind.
    return CsvLayout(columns=columns,
                     types={name: kind or STRING for name, kind in types.items()},
                     rows=sum(scan.rows for scan in scans), reports=reports,
                     missing_tokens=missing)


def infer_layout(paths: list[str],
                 missing_value_tokens=DEFAULT_MISSING_VALUE_TOKENS) -> CsvLayout:
    """First pass: every file has the same header, every row as many fields; column types.

    Raises CsvInputError as `scan_file` does, for the first file with a problem.
    """
    missing = missing_tokens_of(missing_value_tokens)
    scans: list[FileScan] = []
    for path in paths:
        expected = (scans[0].header, scans[0].path) if scans else None
        scans.append(scan_file(path, missing, expected))
    return merge_scans(scans, missing)


_CONVERT = {INT: int, FLOAT: float, STRING: lambda value: value.encode("utf-8")}


def typed_rows(path: str, layout: CsvLayout) -> Iterator[tuple[int, list]]:
    """Second pass over one file: (line number, values), None where a value is missing."""
    converters = [_CONVERT[layout.types[name]] for name in layout.columns]
    missing = layout.missing_tokens
    records = _records(path)
    next(records)  # the header, checked in the first pass
    for line, end, fields in records:
        if len(fields) != len(converters):  # the file changed since the first pass
            raise CsvInputError(f"{path} {_lines_of(line, end)}: expected {len(converters)} "
                                f"fields, found {len(fields)}")
        yield line, [None if value in missing else convert(value)
                     for convert, value in zip(converters, fields)]
