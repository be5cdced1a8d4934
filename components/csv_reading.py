"""Streaming CSV reading for ExampleGen: header checks, column type inference, typed rows.

Two passes over the files, neither holding more than one row: the first checks every
file's header and field counts and infers each column's type (int, float or string: a
column with any non-numeric value is a string column), the second yields typed values.
"NA" and the empty string are missing values; they are yielded as None, never filled.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from typing import Iterator

MISSING = frozenset({"", "NA"})
INT, FLOAT, STRING = "int", "float", "string"
_INT = re.compile(r"\s*[+-]?\d+\s*")
_FLOAT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_INT64_MAX = 2 ** 63 - 1


class CsvInputError(ValueError):
    """A CSV file that cannot be read as examples; the message names the file and line."""


@dataclass(frozen=True)
class CsvLayout:
    """What the first pass learned: the shared header and each column's type."""

    columns: list[str]
    types: dict[str, str]
    rows: int


def _kind_of(value: str) -> str:
    if _INT.fullmatch(value) and abs(int(value)) <= _INT64_MAX:
        return INT
    if _FLOAT.fullmatch(value):
        return FLOAT
    return STRING


_WIDER = {(INT, FLOAT): FLOAT, (FLOAT, INT): FLOAT}


def _widen(current: str | None, seen: str) -> str:
    if current is None or current == seen:
        return seen
    return _WIDER.get((current, seen), STRING)


def _records(path: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank record, the header included."""
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: drop an Excel BOM
        reader = csv.reader(fh)
        try:
            for fields in reader:
                if fields:
                    yield reader.line_num, fields
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CsvInputError(f"{path} line {reader.line_num + 1}: cannot be read as "
                                f"UTF-8 CSV ({exc})") from None


def _check_header(path: str, header: list[str]) -> None:
    blank = [i + 1 for i, name in enumerate(header) if not name.strip()]
    if blank:
        raise CsvInputError(f"{path} line 1: header column(s) {blank} have no name")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise CsvInputError(f"{path} line 1: header repeats column(s) {duplicates}")


def infer_layout(paths: list[str]) -> CsvLayout:
    """First pass: every file has the same header, every row as many fields; column types."""
    columns: list[str] | None = None
    first_path = ""
    types: dict[str, str | None] = {}
    rows = 0
    for path in paths:
        records = _records(path)
        try:
            _, header = next(records)
        except StopIteration:
            raise CsvInputError(f"{path} is empty: expected a header line and rows") from None
        _check_header(path, header)
        if columns is None:
            columns, first_path = header, path
            types = {name: None for name in header}
        elif header != columns:
            raise CsvInputError(f"{path} line 1: header {header} does not match the header "
                                f"{columns} of {first_path}")
        file_rows = 0
        for line, fields in records:
            if len(fields) != len(columns):
                raise CsvInputError(f"{path} line {line}: expected {len(columns)} fields "
                                    f"({','.join(columns)}), found {len(fields)}")
            for name, value in zip(columns, fields):
                if value not in MISSING and types[name] != STRING:
                    types[name] = _widen(types[name], _kind_of(value))
            file_rows += 1
        if file_rows == 0:
            raise CsvInputError(f"{path} has a header but no rows")
        rows += file_rows
    # A column with no value at all carries no type information; strings are the safe kind.
    return CsvLayout(columns=list(columns or []),
                     types={name: kind or STRING for name, kind in types.items()}, rows=rows)


_CONVERT = {INT: int, FLOAT: float, STRING: lambda value: value.encode("utf-8")}


def typed_rows(path: str, layout: CsvLayout) -> Iterator[tuple[int, list]]:
    """Second pass over one file: (line number, values), None where a value is missing."""
    converters = [_CONVERT[layout.types[name]] for name in layout.columns]
    records = _records(path)
    next(records)  # the header, checked in the first pass
    for line, fields in records:
        if len(fields) != len(converters):  # the file changed since the first pass
            raise CsvInputError(f"{path} line {line}: expected {len(converters)} fields, "
                                f"found {len(fields)}")
        yield line, [None if value in MISSING else convert(value)
                     for convert, value in zip(converters, fields)]
