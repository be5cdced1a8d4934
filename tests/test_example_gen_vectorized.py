"""ExampleGen's vectorized CSV reader (components/csv_vectorized.py) against the strict one
(csv_reading), through the real launcher: the same inputs read both ways give the same gzip
TFRecord files byte for byte, the same split counts, column lines and notes, and the same
errors; a file the vectorized reader must not read goes to the strict reader, and the step
says so."""
from __future__ import annotations

import csv
import random
import re
import shutil
from pathlib import Path

import pytest

from components import csv_vectorized, example_sources
from pipelines.local_runner import run_pipeline
from tests.data_pipelines import PENGUIN_CSV, example_gen_pipeline, penguin_rows, write_csv

VECTORIZED_LINE = "csv reader: vectorized (pyarrow) for "


def _run(home: Path, vectorized: bool, monkeypatch, **args):
    monkeypatch.setattr(example_sources, "VECTORIZED_CSV", vectorized)
    try:
        return run_pipeline(example_gen_pipeline("gen", **args), home=home)
    finally:
        monkeypatch.setattr(example_sources, "VECTORIZED_CSV", True)


def _outputs(step) -> dict[str, bytes]:
    """Every shard file of the Examples artifact, by split/name, as bytes."""
    uri = Path(step.outputs["examples"].uri)
    files = {str(path.relative_to(uri)): path.read_bytes() for path in sorted(uri.rglob("*"))
             if path.is_file()}
    assert files
    return files


def _failure(result) -> str:
    """The run's failure without the step log's path (each run has its own home)."""
    return re.sub(r" \(log: [^)]*\)", "", result.failure)


def _log(step) -> list[str]:
    return Path(step.log_path).read_text().splitlines()


def _column_lines(step) -> list[str]:
    return [line.split("  column ", 1)[1] for line in _log(step) if "  column " in line]


def _both(tmp_path: Path, monkeypatch, **args):
    """ExampleGen on the same input, with the vectorized reader, then the strict one."""
    fast = _run(tmp_path / "fast", True, monkeypatch, **args)
    strict = _run(tmp_path / "strict", False, monkeypatch, **args)
    return fast, strict


def _assert_same_output(fast, strict, vectorized_files: int) -> None:
    assert fast.ok, fast.failure
    assert strict.ok, strict.failure
    fast_step, strict_step = fast.steps["ExampleGen"], strict.steps["ExampleGen"]
    assert sum(VECTORIZED_LINE in line for line in _log(fast_step)) == vectorized_files
    assert not any(VECTORIZED_LINE in line for line in _log(strict_step))
    assert _outputs(fast_step) == _outputs(strict_step)
    assert fast_step.outputs["examples"].properties == strict_step.outputs["examples"].properties
    assert _column_lines(fast_step) == _column_lines(strict_step)
    # The strict run notes why it read the files strictly (switched off); otherwise the
    # notes - mixed columns, examples per split - are the same.
    assert "csv reader" not in fast_step.reason
    assert strict_step.reason.startswith("csv reader: strict (python csv) for ")
    assert strict_step.reason.endswith("the vectorized reader is switched off; "
                                       + fast_step.reason), strict_step.reason


def _generated(directory: Path, rows: int, seed: int, line_end: str = "\n",
               empty_rows: bool = True) -> Path:
    """Rows with what type inference and conversion must agree on: missing tokens and empty
    fields, negative and signed numbers, whitespace around numbers (\\t, \\v, \\f too), ints
    of 19+ characters (int64's limits, leading zeros), ints beyond int64 (a float column),
    floats in exponent form (float32 overflow and underflow), a column with no value at all,
    rows with no value at all, non-ASCII words and names, and a number column with a few
    words."""
    rng = random.Random(seed)
    # Upper case and non-ASCII names: the split key sorts them as protobuf does (by bytes).
    header = ["id", "group", "neg", "big", "huge", "expo", "empty", "Wörd", "mixed", "Spaced"]
    lines = [",".join(header)]
    for i in range(rows):
        def pick(*values):
            return rng.choice(values)
        if empty_rows and rng.random() < 0.01:  # an example without features
            lines.append(",".join(pick("", "NA", "NaN") for _ in header))
            continue
        lines.append(",".join([
            str(i),
            pick("a", "b", "c", "d"),
            pick("-3", "+5", " 7 ", "\t-12", "007", "-0", "", "NA",
                 str(rng.randint(-10**6, 10**6))),
            pick("9223372036854775807", "-9223372036854775807", "  0000000000000000000042  ",
                 "12", "", str(rng.randint(-2**62, 2**62))),
            pick("9223372036854775808", "-9223372036854775808", "1", "-77",
                 "123456789012345678901234567890", "null"),
            pick("1e5", "-2.5E-3", ".5", "3.", "1e39", "-1e39", "1e-50", " 4.25 ", "NaN",
                 "1.00000005960464478",  # float64 then float32: 1.0, not 1.0000001
                 f"{rng.uniform(-1e6, 1e6):.7g}", f"{rng.uniform(0, 1):.17g}", "2"),
            pick("", "NA", "null"),
            pick("café", "naïve", "12abc", "x y", "N/A", "—"),
            pick("1", "2.5", "3", "") if rng.random() > 0.002 else "oops",
            pick("\x0c5\t", "\x0b6", "7\x0c", " 8", "9"),
        ]))
    path = directory / f"data-{seed}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write(line_end.join(lines) + line_end)
    return path


def test_penguins_read_both_ways_give_the_same_bytes(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    shutil.copyfile(PENGUIN_CSV, tmp_path / "in" / "penguins.csv")
    fast, strict = _both(tmp_path, monkeypatch, input_base=str(tmp_path / "in"))
    _assert_same_output(fast, strict, vectorized_files=1)
    # With a partition feature, the split key is that feature's bytes.
    fast, strict = _both(tmp_path / "by_island", monkeypatch, input_base=str(tmp_path / "in"),
                         partition_feature="island")
    _assert_same_output(fast, strict, vectorized_files=1)


def test_generated_rows_over_many_blocks_give_the_same_bytes(tmp_path, monkeypatch):
    # Small blocks: rows cross block boundaries, and every block has its own mix of missing
    # values (feature sets). Columns of more than 50 distinct values (id, big, expo) are
    # encoded block by block, the others once across blocks.
    monkeypatch.setattr(csv_vectorized, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(csv_vectorized, "SCAN_BLOCK_BYTES", 8192)
    monkeypatch.setattr(csv_vectorized, "_CACHED_VALUES", 50)
    base = tmp_path / "in"
    _generated(base, 1500, seed=1)
    _generated(base, 700, seed=2, line_end="\r\n")
    fast, strict = _both(tmp_path, monkeypatch, input_base=str(base),
                         splits={"train": 3, "eval": 1, "test": 1})
    _assert_same_output(fast, strict, vectorized_files=2)
    lines = dict(line.split(": ", 1) for line in _column_lines(fast.steps["ExampleGen"]))
    assert lines["big"].startswith("int,") and lines["huge"].startswith("float,")
    assert lines["expo"].startswith("float,") and lines["Spaced"].startswith("int,")
    assert lines["empty"] == "string, 2200 missing of 2200 (no value at all: typed string)"
    assert "'oops' at " in lines["mixed"]

    # A row without the partition feature fails naming the same line and features.
    fast, strict = _both(tmp_path / "by_group", monkeypatch, input_base=str(base),
                         partition_feature="group")
    assert "partition feature 'group' is missing (features present: [])" in fast.failure
    assert _failure(fast) == _failure(strict)

    _generated(tmp_path / "full", 1200, seed=3, empty_rows=False)
    fast, strict = _both(tmp_path / "full_by_group", monkeypatch,
                         input_base=str(tmp_path / "full"), partition_feature="group")
    _assert_same_output(fast, strict, vectorized_files=1)


def test_a_column_name_that_prefixes_another_gives_the_same_splits(tmp_path, monkeypatch):
    """The split hash is of `SerializeToString(deterministic=True)`, whose upb sort puts a
    key before its own prefixes ("age_group" before "age", "c10" before "c1"), unlike
    Python's sorted(): the vectorized reader must hash the same bytes."""
    path = tmp_path / "in" / "p.csv"
    path.parent.mkdir()
    lines = ["age,age_group,c1,c10,c2"] + [f"{i % 90},g{i % 4},{i},{i % 7}.5,x{i % 3}"
                                            for i in range(200)]
    path.write_text("\n".join(lines) + "\n")
    fast, strict = _both(tmp_path, monkeypatch, input_base=str(path.parent))
    _assert_same_output(fast, strict, vectorized_files=1)


def test_a_number_padded_with_a_separator_character_is_a_string(tmp_path, monkeypatch):
    """`\\s` matches \\x1c-\\x1f but int() and float() do not strip them: such a value is a
    string both ways (it failed with int()'s ValueError, naming no file), and the column's
    note names it with its line."""
    path = tmp_path / "in" / "p.csv"
    path.parent.mkdir()
    lines = ["id,year,mass"] + [f"{i},{2000 + i % 9},{i}.5" for i in range(40)]
    lines[7] = "6,\x1c2006,6.5"
    lines[9] = "8,2008,8.5\x1f"
    path.write_text("\n".join(lines) + "\n")
    fast, strict = _both(tmp_path, monkeypatch, input_base=str(path.parent))
    _assert_same_output(fast, strict, vectorized_files=1)
    columns = dict(line.split(": ", 1) for line in _column_lines(fast.steps["ExampleGen"]))
    assert columns["year"].endswith(f"the first '\\x1c2006' at {path} line 8"), columns
    assert columns["mass"].endswith(f"the first '8.5\\x1f' at {path} line 10"), columns


def test_errors_raised_per_example_name_the_same_line(tmp_path, monkeypatch):
    """A missing partition feature far into a file (a later block) fails naming the same
    line both ways."""
    monkeypatch.setattr(csv_vectorized, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(csv_vectorized, "SCAN_BLOCK_BYTES", 8192)
    path = tmp_path / "in" / "p.csv"
    path.parent.mkdir()
    lines = ["id,key"] + [f"{i},k{i % 7}" for i in range(1, 3000)] + ["3000,NA", "3001,k1"]
    path.write_text("\n".join(lines) + "\n")
    fast, strict = _both(tmp_path, monkeypatch, input_base=str(path.parent),
                         partition_feature="key")
    assert not fast.ok and not strict.ok
    assert f"{path} line 3001: partition feature 'key' is missing (features present: " \
           f"['id'])" in fast.failure
    assert _failure(fast) == _failure(strict)


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data, reason", [
    (b'id,comment\n1,"a, b"\n2,c\n', 'it holds a quote character (")'),
    (b"id,comment\n1,a\n\n2,c\n", "it holds a blank line"),
    (b"id,comment\n1,a\r2,c\n", "it holds a carriage return that does not end a line"),
    (b"\xef\xbb\xbfid,comment\n1,a\n", "it starts with a byte-order mark"),
    (b"id,n\n1,\xd9\xa1\xd9\xa2\n", "it holds a number written with non-ASCII characters"),
    # pyarrow drops a BOM starting the block it parses, and the first row starts a block
    (b"id,comment\n\xef\xbb\xbf1,a\n2,c\n", "it holds a byte-order mark (U+FEFF) after its start"),
], ids=["quote", "blank-line", "lone-cr", "bom", "arabic-indic-digits", "bom-in-first-row"])
def test_a_file_the_vectorized_reader_must_not_read_goes_to_the_strict_reader(
        tmp_path, monkeypatch, data, reason):
    """With another, plain file beside it: that one is read vectorized, this one strictly,
    the step says which and why, and the bytes are those of the strict reader alone."""
    base = tmp_path / "in"
    header = data.split(b"\n", 1)[0].lstrip(b"\xef\xbb\xbf")
    _write_bytes(base / "a.csv", header + b"\n3,x\n4,y\n" if b"n" != header[-1:] else
                 header + b"\n3,5\n4,6\n")
    special = _write_bytes(base / "b.csv", data)
    fast, strict = _both(tmp_path, monkeypatch, input_base=str(base), splits={"all": 1})
    assert fast.ok, fast.failure
    step = fast.steps["ExampleGen"]
    assert (f"csv reader: strict (python csv) for 1 file(s) (b.csv): {reason}"
            in step.reason), step.reason
    assert any(f"csv reader: strict (python csv) for {special}: {reason}" in line
               for line in _log(step))
    assert any(f"{VECTORIZED_LINE}{base / 'a.csv'}" in line for line in _log(step))
    assert _outputs(step) == _outputs(strict.steps["ExampleGen"])


@pytest.mark.parametrize("case", ["surplus-field", "missing-field", "header-only",
                                  "blank-header-name", "not-utf8", "other-header",
                                  "over-long-field"])
def test_input_the_vectorized_reader_rejects_fails_with_the_strict_error(
        tmp_path, monkeypatch, case):
    header, rows = penguin_rows()
    rows = [row[:] for row in rows[:30]]
    base = tmp_path / "in"
    if case == "surplus-field":
        rows[16].append("surplus")
    elif case == "missing-field":
        del rows[9][-1]
    elif case == "header-only":
        rows = []
    elif case == "blank-header-name":
        header = header[:-1] + [""]
    elif case == "over-long-field":  # the strict reader's csv fails on it: so must this one
        rows[20][1] = "x" * (csv.field_size_limit() + 1)
    write_csv(base / "a.csv", header, rows)
    if case == "not-utf8":
        _write_bytes(base / "a.csv", (base / "a.csv").read_bytes() + b"31,caf\xe9\r\n")
    if case == "other-header":
        write_csv(base / "b.csv", [name.upper() for name in header], rows)
    fast, strict = _both(tmp_path, monkeypatch, input_base=str(base))
    assert not fast.ok and not strict.ok
    assert _failure(fast) == _failure(strict)
    assert str(base / ("b.csv" if case == "other-header" else "a.csv")) in fast.failure
    # The failed step still says which reader raised the error, and why that one.
    assert any("csv reader: strict (python csv) for 1 file(s)" in line
               for line in _log(fast.steps["ExampleGen"]))


def test_a_gzip_compressed_csv_file_fails_saying_so(tmp_path, monkeypatch):
    """A .csv file that is gzip-compressed: both readers fail naming the file and its
    compression (not only a byte that is not UTF-8), and the step names the reason the
    vectorized reader did not read it (not "a quote character", a byte gzip happened to
    write)."""
    import gzip

    base = tmp_path / "in"
    _write_bytes(base / "a.csv", b"id,x\n1,2\n3,4\n")
    packed = _write_bytes(base / "b.csv", gzip.compress(b'id,x\n5,6\n7,"8"\n' * 20, mtime=0))
    fast, strict = _both(tmp_path, monkeypatch, input_base=str(base))
    assert not fast.ok and not strict.ok
    assert _failure(fast) == _failure(strict)
    assert (f"{packed} line 1: cannot be read as UTF-8 CSV (byte 0x8b at character 2 is not "
            f"UTF-8); the file is gzip-compressed: decompress it") in fast.failure, fast.failure
    assert any(f"csv reader: strict (python csv) for {packed}: it is gzip-compressed" in line
               for line in _log(fast.steps["ExampleGen"]))


def test_writing_a_block_of_records_rolls_shards_as_writing_each_does(tmp_path):
    from components.tfrecord_io import SplitWriter

    class Examples:  # the one thing SplitWriter asks of an Examples artifact
        def __init__(self, root: Path):
            self.root = root

        def split_uri(self, split: str) -> str:
            return str(self.root / f"Split-{split}")

    records = [bytes([65 + i % 26]) * (i % 37 + 1) for i in range(500)]
    one, many = Examples(tmp_path / "one"), Examples(tmp_path / "many")
    with SplitWriter(one, ["a", "b"], shard_bytes=1000) as writer:
        for record in records:
            writer.write("a", record)
    with SplitWriter(many, ["a", "b"], shard_bytes=1000) as writer:
        for start in range(0, len(records), 64):
            writer.write_many("a", records[start:start + 64])
            writer.write_many("b", [])
        assert writer.counts == {"a": 500, "b": 0}

    def files(root: Path) -> dict[str, bytes]:
        return {str(path.relative_to(root)): path.read_bytes()
                for path in sorted(root.rglob("*.gz"))}

    assert len(files(one.root)) > 5  # shards rolled over
    assert files(many.root) == files(one.root)  # and no file for the empty split "b"
