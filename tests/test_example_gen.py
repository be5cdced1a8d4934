"""ExampleGen on real files through the real launcher and MLMD: CSV type inference and
missing values (tokens, the logged column types), hash and partition splits, spans,
versions and dates, rolling span windows, TFRecord and Parquet inputs, and the
input-content cache key."""
from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from pathlib import Path

import pytest

from components.artifacts import Examples
from components.base import ComponentDefinitionError
from components.example_gen import ExampleGen
from components.spans import InputPatternError, NoInputError, select_input
from pipelines.local_runner import run_pipeline
from pipelines.metadata import Metadata
from tests.data_pipelines import (all_examples, example_gen_pipeline, penguin_rows,
                                  write_csv)


def _run(tmp_path: Path, **args):
    result = run_pipeline(example_gen_pipeline("gen", **args), home=tmp_path / "home")
    assert result.ok, result.failure
    return result.steps["ExampleGen"]


def _generate(tmp_path: Path, **args):
    return _run(tmp_path, **args).outputs["examples"]


def _type_lines(step) -> dict[str, str]:
    """The step log's column lines: {column: "type, m missing of n..."}."""
    lines = Path(step.log_path).read_text().splitlines()
    found = [line.split("  column ", 1)[1] for line in lines if "  column " in line]
    return dict(line.split(": ", 1) for line in found)


def _values(examples, feature: str) -> Counter:
    return Counter(row[feature][0] for rows in all_examples(examples).values() for row in rows)


def test_csv_columns_get_their_types_and_missing_values_stay_missing(tmp_path):
    write_csv(tmp_path / "in" / "data.csv", ["count", "weight", "name", "code", "note"], [
        ["1", "2.5", "a", "7", "x"],
        ["2", "3", "b", "007b", "NA"],
        ["NA", "", "c", "9", ""],
        ["-4", "1e3", "NA", "10", "y"],
    ] * 3)
    examples = _generate(tmp_path, input_base=str(tmp_path / "in"), splits={"all": 1})
    rows = all_examples(examples)["all"]
    assert len(rows) == 12
    first = next(r for r in rows if r.get("count") == [1])
    assert first == {"count": [1], "weight": [2.5], "name": ["a"], "code": ["7"], "note": ["x"]}
    assert any(r.get("weight") == [1000.0] for r in rows)  # "3" and "1e3" in a float column
    missing = next(r for r in rows if r["name"] == ["c"])
    assert missing == {"name": ["c"], "code": ["9"]}  # NA and "" left out, not filled
    assert sum("note" not in r for r in rows) == 6


def test_missing_value_tokens_keep_number_columns_numeric(tmp_path):
    """Issue 13: "NaN" (and NA, nan, null, NULL, N/A, "") in a number column are missing
    values of a float column, not strings that make it a string column; each column's
    type and missing count is logged."""
    write_csv(tmp_path / "in" / "data.csv", ["bill", "mass", "name", "empty"], [
        ["39.5", "3750", "a", ""],
        ["NaN", "nan", "b", "NA"],
        ["null", "NULL", "N/A", "NaN"],
        ["", "NA", "NaN", ""],
        ["40.5", "4000", "c", "null"],
    ])
    step = _run(tmp_path, input_base=str(tmp_path / "in"), splits={"all": 1})
    rows = all_examples(step.outputs["examples"])["all"]
    assert sorted(rows, key=lambda r: r.get("name", ["~"])) == [
        {"bill": [39.5], "mass": [3750], "name": ["a"]},
        {"name": ["b"]},
        {"bill": [40.5], "mass": [4000], "name": ["c"]},
        {},
        {},
    ]
    assert _type_lines(step) == {
        "bill": "float, 3 missing of 5",
        "mass": "int, 3 missing of 5",
        "name": "string, 2 missing of 5",
        "empty": "string, 5 missing of 5 (no value at all: typed string)",
    }
    # No column mixes numbers and words: nothing to note but the examples per split.
    assert step.reason == "5 examples (all 5)", step.reason  # one split, "all"


def test_missing_value_tokens_are_configurable(tmp_path):
    write_csv(tmp_path / "in" / "data.csv", ["score", "label"],
              [["1.5", "x"], ["-", "y"], ["NA", "z"], ["2", "-"]])
    step = _run(tmp_path, input_base=str(tmp_path / "in"), splits={"all": 1},
                missing_value_tokens=["-"])
    rows = all_examples(step.outputs["examples"])["all"]
    # "NA" is a word now, so score is a string column; "-" is missing in both columns.
    assert sorted(rows, key=str) == sorted([{"score": ["1.5"], "label": ["x"]}, {"label": ["y"]},
                                            {"score": ["NA"], "label": ["z"]},
                                            {"score": ["2"]}], key=str)
    lines = _type_lines(step)
    # "NA" is not a token here: it is a word in a number column, named with its line.
    path = tmp_path / "in" / "data.csv"
    assert lines["score"] == (f"string, 1 missing of 4; 2 value(s) are numbers but 1 are "
                              f"not, the first 'NA' at {path} line 4")
    assert lines["label"] == "string, 1 missing of 4"


def test_quoted_fields_may_hold_delimiters_doubled_quotes_and_line_breaks(tmp_path):
    """Legal CSV (RFC 4180) quoting is read as written: the strict quote checks reject
    none of it, and a field spanning lines neither merges nor drops a row."""
    base = tmp_path / "in"
    base.mkdir()
    with open(base / "notes.csv", "w", newline="") as fh:
        fh.write('id,comment,score\r\n'
                 '1,"two\r\nlines",1.5\r\n'
                 '2,"a, b and ""c""",2\r\n'
                 '3,plain,NA\r\n'
                 '"4","",3\r\n'
                 '5,"""quoted"" start",4\r\n')
    rows = all_examples(_generate(tmp_path, input_base=str(base), splits={"all": 1}))["all"]
    assert sorted(rows, key=lambda r: r["id"]) == [
        {"id": [1], "comment": ["two\r\nlines"], "score": [1.5]},
        {"id": [2], "comment": ['a, b and "c"'], "score": [2.0]},
        {"id": [3], "comment": ["plain"]},
        {"id": [4], "score": [3.0]},  # a quoted empty field is missing like an unquoted one
        {"id": [5], "comment": ['"quoted" start'], "score": [4.0]},
    ]


def test_hash_split_is_deterministic_and_follows_the_ratios(tmp_path):
    header, rows = penguin_rows()
    base = tmp_path / "in"
    write_csv(base / "penguins.csv", header, rows)
    splits = {"train": 8, "eval": 1, "test": 1}
    first = all_examples(_generate(tmp_path / "a", input_base=str(base), splits=splits))
    second = all_examples(_generate(tmp_path / "b", input_base=str(base), splits=splits))
    assert first == second
    counts = {split: len(r) for split, r in first.items()}
    assert sum(counts.values()) == 344
    assert counts["train"] > 3 * (counts["eval"] + counts["test"]) / 2 and counts["test"] > 10
    # The assignment depends on the example, not on its position in the file.
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    write_csv(base / "penguins.csv", header, shuffled)
    third = all_examples(_generate(tmp_path / "c", input_base=str(base), splits=splits))
    key = lambda r: sorted((k, tuple(v)) for k, v in r.items())  # noqa: E731
    assert {s: sorted(map(key, r)) for s, r in third.items()} == \
           {s: sorted(map(key, r)) for s, r in first.items()}


def test_partition_feature_keeps_each_value_in_one_split(tmp_path):
    rng = random.Random(3)
    rows = [[f"bird-{i % 40}", f"{rng.uniform(30, 60):.1f}"] for i in range(400)]
    write_csv(tmp_path / "in" / "birds.csv", ["bird", "bill"], rows)
    examples = _generate(tmp_path, input_base=str(tmp_path / "in"), partition_feature="bird")
    birds = {split: {r["bird"][0] for r in rows} for split, rows in all_examples(examples).items()}
    assert birds["train"] and birds["eval"] and not birds["train"] & birds["eval"]
    assert len(birds["train"] | birds["eval"]) == 40


@pytest.fixture()
def spans(tmp_path):
    """span-1, span-2 and span-3 (two versions) of penguin rows, told apart by island."""
    header, rows = penguin_rows()
    base = tmp_path / "spans"
    by_island = {island: [r for r in rows if r[1] == island]
                 for island in ("Torgersen", "Dream", "Biscoe")}
    write_csv(base / "span-1" / "v-1" / "data.csv", header, by_island["Torgersen"])
    write_csv(base / "span-2" / "v-1" / "data.csv", header, by_island["Dream"])
    write_csv(base / "span-3" / "v-1" / "data.csv", header, by_island["Torgersen"])
    write_csv(base / "span-3" / "v-2" / "data-a.csv", header, by_island["Biscoe"][:60])
    write_csv(base / "span-3" / "v-2" / "data-b.csv", header, by_island["Biscoe"][60:])
    return base


def test_latest_span_and_version_by_default(spans, tmp_path):
    examples = _generate(tmp_path, input_base=str(spans),
                         input_pattern="span-{SPAN}/v-{VERSION}/*.csv")
    assert (examples.span, examples.version) == (3, 2)
    assert _values(examples, "island") == Counter({"Biscoe": 168})


def test_span_range_reads_every_span_in_it(spans, tmp_path):
    examples = _generate(tmp_path, input_base=str(spans),
                         input_pattern="span-{SPAN}/v-{VERSION}/*.csv", span_range=[1, 2])
    assert examples.span == 2
    assert _values(examples, "island") == Counter({"Dream": 124, "Torgersen": 52})


def _daily(tmp_path: Path, days: list[str]) -> Path:
    """One folder of penguin rows per date, each holding one island's rows (cycling), so
    examples tell their span."""
    header, rows = penguin_rows()
    islands = ["Torgersen", "Dream", "Biscoe"]
    base = tmp_path / "daily"
    for i, day in enumerate(days):
        island = islands[i % 3]
        write_csv(base / day / "penguins.csv", header, [r for r in rows if r[1] == island][:20])
    return base


def _span(day: str) -> int:
    return (dt.date.fromisoformat(day) - dt.date(1970, 1, 1)).days


def test_rolling_window_merges_the_latest_spans(tmp_path):
    """rolling_num_spans=3 over dated folders with a gap: the window is the last 3 days
    (TFX's RollingRange counts span numbers), 2024-02-03 has no folder, so 2 spans are
    merged into one Examples artifact recording them; an older day is not read."""
    base = _daily(tmp_path, ["2024-02-01", "2024-02-02", "2024-02-04", "2024-02-05"])
    pipeline = example_gen_pipeline("rolling", input_base=str(base),
                                    input_pattern="{YYYY}-{MM}-{DD}/*.csv",
                                    rolling_num_spans=3)
    home = tmp_path / "home"
    first = run_pipeline(pipeline, home=home)
    assert first.ok, first.failure
    step = first.steps["ExampleGen"]
    examples = step.outputs["examples"]
    assert examples.spans == [_span("2024-02-04"), _span("2024-02-05")]
    assert examples.span_range == [_span("2024-02-04"), _span("2024-02-05")]
    assert examples.span == _span("2024-02-05")
    # 02-04 held Biscoe rows, 02-05 Torgersen; 02-01 (Torgersen) and 02-02 (Dream) are out.
    assert _values(examples, "island") == Counter({"Biscoe": 20, "Torgersen": 20})
    assert step.reason == (f"rolling window of 3 span(s) {_span('2024-02-03')}.."
                           f"{_span('2024-02-05')} (2024-02-03..2024-02-05): read 2, absent "
                           f"{_span('2024-02-03')} (2024-02-03); 40 examples "
                           f"(train {step.reason.split('(train ')[1]}")
    # MLMD has the properties too (what the next run's steps see).
    recorded = Metadata(str(home / "metadata.sqlite")).artifacts_of_type(Examples)
    assert [a.span_range for a in recorded] == [examples.span_range]

    # The next day arrives: the window moves, ExampleGen runs again (not cached).
    header, rows = penguin_rows()
    write_csv(base / "2024-02-06" / "penguins.csv", header,
              [r for r in rows if r[1] == "Dream"][:20])
    second = run_pipeline(pipeline, home=home).steps["ExampleGen"]
    assert second.status == "executed"
    moved = second.outputs["examples"]
    assert moved.spans == [_span(d) for d in ("2024-02-04", "2024-02-05", "2024-02-06")]
    assert _values(moved, "island") == Counter({"Biscoe": 20, "Torgersen": 20, "Dream": 20})


def test_rolling_window_of_span_numbers(spans, tmp_path):
    """With {SPAN} folders: 2 spans -> spans 2 and 3 (3 at its newest version); a window
    wider than the data is clipped to it; 1 is the default newest span."""
    pattern = "span-{SPAN}/v-{VERSION}/*.csv"
    two = _generate(tmp_path / "a", input_base=str(spans), input_pattern=pattern,
                    rolling_num_spans=2)
    assert (two.spans, two.span_range, two.version) == ([2, 3], [2, 3], 2)
    assert _values(two, "island") == Counter({"Biscoe": 168, "Dream": 124})
    wide = select_input(str(spans), pattern, rolling_num_spans=10)
    assert (wide.spans, wide.window, wide.absent) == ([1, 2, 3], [-6, 3], list(range(-6, 1)))
    one = select_input(str(spans), pattern, rolling_num_spans=1)
    assert one.files == select_input(str(spans), pattern).files


def test_rolling_window_parameters_are_checked():
    with pytest.raises(ComponentDefinitionError, match="rolling_num_spans must be at least 1"):
        ExampleGen(input_base="/tmp", input_pattern="span-{SPAN}/*.csv", rolling_num_spans=0)
    with pytest.raises(ComponentDefinitionError, match=r"span_range \[1, 2\] and "
                                                       r"rolling_num_spans 3 both set"):
        ExampleGen(input_base="/tmp", input_pattern="span-{SPAN}/*.csv", span_range=[1, 2],
                   rolling_num_spans=3)
    with pytest.raises(ComponentDefinitionError, match=r"needs an input pattern with \{SPAN\}"):
        ExampleGen(input_base="/tmp", input_pattern="*.csv", rolling_num_spans=3)
    with pytest.raises(ComponentDefinitionError, match="'\\*.csv' has neither"):
        ExampleGen(input_base="/tmp", rolling_num_spans=3)  # the default pattern


def test_date_pattern_span_is_days_since_epoch(tmp_path):
    header, rows = penguin_rows()
    base = tmp_path / "daily"
    write_csv(base / "2024-01-30" / "penguins.csv", header, rows[:100])
    write_csv(base / "2024-02-01" / "penguins.csv", header, rows[100:250])
    examples = _generate(tmp_path, input_base=str(base), input_pattern="{YYYY}-{MM}-{DD}/*.csv")
    assert examples.span == (dt.date(2024, 2, 1) - dt.date(1970, 1, 1)).days
    assert sum(_values(examples, "species").values()) == 150
    selection = select_input(str(base), "{YYYY}-{MM}-{DD}/*.csv", span_range=[0, 10**6])
    assert len(selection.files) == 2 and selection.spans[0] + 2 == selection.spans[1]
    # The compact spelling, as in daily exports named 20240201.csv.
    write_csv(tmp_path / "compact" / "20231231.csv", header, rows[:5])
    write_csv(tmp_path / "compact" / "20240101.csv", header, rows[:5])
    latest = select_input(str(tmp_path / "compact"), "{YYYY}{MM}{DD}.csv")
    assert latest.files == [str(tmp_path / "compact" / "20240101.csv")]
    assert latest.span == (dt.date(2024, 1, 1) - dt.date(1970, 1, 1)).days


def test_span_patterns_are_checked():
    with pytest.raises(InputPatternError, match="mixes"):
        select_input("/tmp", "{SPAN}/{YYYY}{MM}{DD}.csv")
    with pytest.raises(InputPatternError, match="no {SPAN} or date"):
        select_input("/tmp", "v{VERSION}/*.csv")
    with pytest.raises(ComponentDefinitionError, match="input_format"):
        ExampleGen(input_base="/tmp", input_format="xlsx")
    with pytest.raises(ComponentDefinitionError, match="ratio"):
        ExampleGen(input_base="/tmp", splits={"train": 0})


def test_span_range_without_matching_span_is_an_error(spans):
    with pytest.raises(NoInputError, match=r"no span in range 7\.\.9.*spans found: \[1, 2, 3\]"):
        select_input(str(spans), "span-{SPAN}/v-{VERSION}/*.csv", span_range=[7, 9])


def test_parquet_and_tfrecord_inputs_give_the_same_examples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    header, rows = penguin_rows()
    write_csv(tmp_path / "csv_in" / "p.csv", header, rows)
    from_csv = _generate(tmp_path / "csv", input_base=str(tmp_path / "csv_in"))

    def column(index: int, kind):
        return [None if r[index] == "NA" else kind(r[index]) for r in rows]

    kinds = [str, str, float, float, int, int, str, int]
    table = pa.table({name: column(i, kind) for i, (name, kind) in enumerate(zip(header, kinds))})
    parquet_in = tmp_path / "parquet_in"
    parquet_in.mkdir()
    pq.write_table(table.slice(0, 200), parquet_in / "part-0.parquet")
    pq.write_table(table.slice(200), parquet_in / "part-1.parquet")
    from_parquet = _generate(tmp_path / "parquet", input_base=str(parquet_in),
                             input_format="parquet")

    # ExampleGen's own output (gzip TFRecords of tf.Example) is valid TFRecord input.
    from_tfrecord = _generate(tmp_path / "tfrecord", input_base=from_csv.uri,
                              input_format="tfrecord", input_pattern="Split-*/*.gz")

    expected = all_examples(from_csv)
    assert sum(map(len, expected.values())) == 344
    assert all_examples(from_parquet) == expected  # same splits too: the hash is of content
    assert all_examples(from_tfrecord) == expected


def test_unchanged_input_is_cached_and_changed_input_reruns(tmp_path):
    header, rows = penguin_rows()
    csv_path = write_csv(tmp_path / "in" / "p.csv", header, rows[:100])
    pipeline = example_gen_pipeline("gen", input_base=str(tmp_path / "in"))
    home = tmp_path / "home"
    first = run_pipeline(pipeline, home=home).steps["ExampleGen"]
    second = run_pipeline(pipeline, home=home).steps["ExampleGen"]
    assert (first.status, second.status) == ("executed", "cached")
    assert second.outputs["examples"].id == first.outputs["examples"].id
    write_csv(csv_path, header, rows[:101])
    third = run_pipeline(pipeline, home=home).steps["ExampleGen"]
    assert third.status == "executed"
    assert third.outputs["examples"].input_fingerprint != \
        first.outputs["examples"].input_fingerprint
