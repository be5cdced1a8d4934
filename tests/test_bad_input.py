"""Bad input on the data side: each gets a clear error or anomaly report naming the file,
row or feature, and a failed step publishes nothing (no artifact in MLMD, no directory).
A column whose values ExampleGen reads as words gets a line naming the column and the
first offending row; Transform names the feature and the op that failed on it."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from components.artifacts import Examples, ExampleStatistics, Schema, TransformGraph
from components.example_gen import ExampleGen
from components.schema_gen import ImportSchemaGen
from components.statistics_gen import StatisticsGen
from components.transform import Transform
from components.tfmd_files import read_anomalies
from pipelines.local_runner import run_pipeline
from pipelines.metadata import Metadata
from pipelines.pipeline import Pipeline
from tests.data_pipelines import (CURATED_SCHEMA, artifact_dirs, copy_penguins, data_half,
                                  example_gen_pipeline, penguin_rows, write_csv)
from tests.test_example_batches import cut_inside_a_record_header

PIPEWRIGHT = str(Path(sys.executable).parent / "pipewright")
PENGUIN_MODULE = Path(__file__).resolve().parents[1] / "pipelines" / "penguin" / "penguin_module.py"


def _fails_without_publishing(tmp_path: Path, pipeline: Pipeline, component_id: str,
                              artifact_type) -> str:
    """Runs the pipeline, checks `component_id` failed and published nothing; the error."""
    home = tmp_path / "home"
    result = run_pipeline(pipeline, home=home)
    assert not result.ok
    assert result.steps[component_id].status == "failed"
    assert Metadata(str(home / "metadata.sqlite")).artifacts_of_type(artifact_type) == []
    assert artifact_dirs(home, pipeline.name, component_id) == []
    assert not list((home / "staging").glob("*"))
    return result.failure


def _example_gen_fails(tmp_path: Path, **args) -> str:
    return _fails_without_publishing(tmp_path, example_gen_pipeline("bad", **args),
                                     "ExampleGen", Examples)


def test_missing_input_directory(tmp_path):
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "nowhere"))
    assert f"input base {tmp_path / 'nowhere'} does not exist" in error


def test_no_file_matches_the_pattern(tmp_path):
    (tmp_path / "in").mkdir()
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"),
                               input_pattern="span-{SPAN}/*.csv")
    assert "no input file matches 'span-{SPAN}/*.csv' under " + str(tmp_path / "in") in error


@pytest.mark.parametrize("text", ["", "\n\n\r\n"], ids=["no-bytes", "blank-lines"])
def test_empty_file(tmp_path, text):
    header, rows = penguin_rows()
    write_csv(tmp_path / "in" / "a.csv", header, rows[:50])
    (tmp_path / "in" / "b.csv").write_text(text)
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"))
    assert f"{tmp_path / 'in' / 'b.csv'} is empty: expected a header line and rows" in error


def _column_lines(step) -> dict[str, str]:
    """ExampleGen's logged column lines: {column: "type, m missing of n..."}."""
    lines = Path(step.log_path).read_text().splitlines()
    found = [line.split("  column ", 1)[1] for line in lines if "  column " in line]
    return dict(line.split(": ", 1) for line in found)


def _penguins_with(tmp_path: Path, column: str, values: dict[int, str]) -> Path:
    """The penguin CSV with `column` of data row i (from 0) set to values[i]."""
    header, rows = penguin_rows()
    rows = [r[:] for r in rows]
    for i, value in values.items():
        rows[i][header.index(column)] = value
    return write_csv(tmp_path / "in" / "penguins.csv", header, rows)


def test_nan_tokens_in_a_number_column_are_missing_values(tmp_path):
    """Issue 13: "NaN" in bill_length_mm made it a string column, so Transform failed
    later naming no feature. Now it is a float column with those values missing; with
    the tokens turned off, the column's line names the column, the file and the row."""
    path = _penguins_with(tmp_path, "bill_length_mm", {5: "NaN", 9: "NaN", 20: "nan"})
    result = run_pipeline(example_gen_pipeline("nan", input_base=str(path.parent)),
                          home=tmp_path / "home")
    assert result.ok, result.failure
    step = result.steps["ExampleGen"]
    # palmerpenguins has 2 "NA" rows in bill_length_mm (rows 3 and 271) besides these 3
    assert _column_lines(step)["bill_length_mm"] == "float, 5 missing of 344"
    assert step.reason.startswith("344 examples (train "), step.reason  # no column note

    result = run_pipeline(example_gen_pipeline("nan_off", input_base=str(path.parent),
                                               missing_value_tokens=[]),
                          home=tmp_path / "home2")
    assert result.ok, result.failure
    step = result.steps["ExampleGen"]
    expected = (f"bill_length_mm: string, 0 missing of 344; 339 value(s) are numbers but 5 "
                f"are not, the first 'NA' at {path} line 5")
    assert f"bill_length_mm: {_column_lines(step)['bill_length_mm']}" == expected
    assert step.reason.startswith("column " + expected)  # the console line shows it too


def test_a_few_words_in_a_number_column_name_the_first_offending_row(tmp_path):
    path = _penguins_with(tmp_path, "body_mass_g", {42: "heavy", 100: "unknown", 300: "heavy"})
    result = run_pipeline(example_gen_pipeline("words", input_base=str(path.parent)),
                          home=tmp_path / "home")
    assert result.ok, result.failure
    step = result.steps["ExampleGen"]
    lines = _column_lines(step)
    assert lines["body_mass_g"] == (f"string, 2 missing of 344; 339 value(s) are numbers but "
                                    f"3 are not, the first 'heavy' at {path} line 44")
    assert lines["flipper_length_mm"] == "int, 2 missing of 344"
    assert lines["species"] == "string, 0 missing of 344"  # words only: nothing to name
    assert "column body_mass_g: string" in step.reason and "line 44" in step.reason
    assert "species" not in step.reason


def test_header_without_rows(tmp_path):
    header, _ = penguin_rows()
    write_csv(tmp_path / "in" / "a.csv", header, [])
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"))
    assert f"{tmp_path / 'in' / 'a.csv'} has a header but no rows" in error


def test_header_that_does_not_match(tmp_path):
    header, rows = penguin_rows()
    write_csv(tmp_path / "in" / "a.csv", header, rows[:50])
    renamed = ["mass_g" if name == "body_mass_g" else name for name in header]
    write_csv(tmp_path / "in" / "b.csv", renamed, rows[50:100])
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"))
    assert f"{tmp_path / 'in' / 'b.csv'} line 1: header" in error
    assert "'mass_g'" in error and f"does not match the header" in error
    assert str(tmp_path / "in" / "a.csv") in error


def test_malformed_row(tmp_path):
    header, rows = penguin_rows()
    rows = [r[:] for r in rows[:30]]
    rows[16].append("surplus")  # data row 17 is line 18 of the file
    write_csv(tmp_path / "in" / "p.csv", header, rows)
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"))
    assert f"{tmp_path / 'in' / 'p.csv'} line 18: expected 8 fields" in error
    assert "found 9" in error


def test_too_few_fields(tmp_path):
    header, rows = penguin_rows()
    rows = [r[:] for r in rows[:30]]
    del rows[9][-1]  # data row 10 is line 11 of the file
    write_csv(tmp_path / "in" / "p.csv", header, rows)
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"))
    assert f"{tmp_path / 'in' / 'p.csv'} line 11: expected 8 fields" in error
    assert "found 7" in error


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:  # exactly these characters, these line ends
        fh.write(text)
    return path


def test_quote_left_open_until_the_end_of_the_file(tmp_path):
    """The TFX report: the comment swallowed the next two lines, one example, two rows lost."""
    notes = _write_text(tmp_path / "in" / "notes.csv", 'id,comment\n1,"abc\n2,def\n3,ghi\n')
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"))
    assert f"{notes} line 2: unbalanced quotes" in error  # where the quote opened
    assert "never closed" in error


# A quoted field spanning lines 2-3 comes first where marked, so the line numbers of the
# error after it are checked too (physical lines, not records).
SPANNING = 'id,comment\n1,"first line\nsecond line"\n'


@pytest.mark.parametrize("text, line, words", [
    ('id,comment\n1,ab"c\n2,def\n', 2, "a quote inside unquoted field 2"),
    (SPANNING + '2,ok\n3,ab"c\n4,def\n', 5, "a quote inside unquoted field 2"),
    ('id,comment\n1, "abc"\n', 2, "a quote inside unquoted field 2"),  # a space before it
    ('id,comment\n1,"ab"c\n2,def\n', 2, "text after the closing quote of field 2;"),
    (SPANNING + '2,"ab"c\n', 4, "text after the closing quote of field 2;"),
    # Opened on line 2, "closed" by a stray quote on line 4: both lines are named.
    ('id,comment\n1,"abc\n2,def\n3,g"hi\n4,jkl\n', 4,
     "text after the closing quote of field 2, whose quote opened on line 2"),
    (SPANNING + '2,ok\n3,"abc\n4,def\n', 5, "the quote opening field 2 here is never closed"),
    ('id,"comment\n1,abc\n', 1, "the quote opening field 2 here is never closed"),  # header
    ('id,comment\r\n1,"a\r\nb"\r\n2,"ab"c\r\n', 4, "text after the closing quote"),
], ids=["stray", "stray-after-spanning", "space-then-quotes", "text-after-close",
        "text-after-close-after-spanning", "closed-by-a-stray-quote", "open-after-spanning",
        "open-in-header", "crlf"])
def test_malformed_quoting_fails_naming_the_line(tmp_path, text, line, words):
    path = _write_text(tmp_path / "in" / "notes.csv", text)
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"))
    assert f"{path} line {line}: unbalanced quotes: {words}" in error


def test_quote_left_open_in_a_large_file_names_where_it_opened(tmp_path):
    # Beyond csv's limit for one field (128 Ki characters) the open field fails before the
    # end of the file; the error still names the line of the quote, not where it gave up.
    rows = "".join(f"{i},a comment of some length for row {i}\n" for i in range(3, 9000))
    path = _write_text(tmp_path / "in" / "notes.csv", f'id,comment\n1,ok\n2,"abc\n{rows}')
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"))
    assert f"{path} line 3: unbalanced quotes: the quote opening field 2 here is not closed " \
           f"within 131072 characters" in error


def test_line_numbers_stay_right_after_fields_spanning_lines(tmp_path):
    path = _write_text(tmp_path / "in" / "notes.csv",
                       SPANNING + '2,"a\n\nb"\n3,ok\n\n4,too,many\n')
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"))
    assert f"{path} line 9: expected 2 fields (id,comment), found 3" in error
    # A record whose quoted field spans lines is named by its first line, and its span.
    path = _write_text(tmp_path / "in2" / "notes.csv", SPANNING + '2,"a\nb",extra\n')
    error = _example_gen_fails(tmp_path / "2", input_base=str(tmp_path / "in2"))
    assert f"{path} line 4 (a record over lines 4-5): expected 2 fields" in error
    # Errors raised per example (second pass) count lines the same way.
    path = _write_text(tmp_path / "in3" / "notes.csv", SPANNING + '2,"x\ny"\n3,NA\n')
    error = _example_gen_fails(tmp_path / "3", input_base=str(tmp_path / "in3"),
                               partition_feature="comment")
    assert f"{path} line 6: partition feature 'comment' is missing" in error


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    path = tmp_path / "in" / "p.csv"
    path.parent.mkdir()
    # Far enough in that the reader's buffered decoding would blame an earlier line.
    lines = [b"id,comment"] + [b"%d,fine" % i for i in range(1, 5000)] + [b"5000,caf\xe9"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"))
    assert f"{path} line 5001: cannot be read as UTF-8 CSV (byte 0xe9" in error


def test_corrupt_tfrecord_names_the_file_and_record(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.tfrecord").write_bytes(b"this is not a TFRecord file at all")
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"), input_format="tfrecord")
    assert f"{tmp_path / 'in' / 'data.tfrecord'} record 1" in error


@pytest.mark.parametrize("consumer", ["StatisticsGen", "Transform"])
def test_examples_cut_short_fail_the_step_naming_the_file(tmp_path, consumer):
    """ExampleGen's train shard cut short after it was published (a disk that filled, a
    partial copy), where TensorFlow's reader would take the cut for the file's end: the
    step reading it fails naming the file and publishes nothing, instead of computing
    statistics or a transform on part of the rows."""
    gen = ExampleGen(input_base=str(copy_penguins(tmp_path / "in").parent))
    if consumer == "StatisticsGen":
        step, output_type = StatisticsGen(examples=gen.outputs.examples), ExampleStatistics
    else:
        schema = ImportSchemaGen(schema_file=str(CURATED_SCHEMA))
        step = Transform(examples=gen.outputs.examples, schema=schema.outputs.schema,
                         module_file=str(PENGUIN_MODULE), splits_to_transform=["train"])
        output_type = TransformGraph
    pipeline = Pipeline("cut_short", [gen, step] + ([] if consumer == "StatisticsGen"
                                                     else [schema]))
    first = run_pipeline(pipeline, home=tmp_path / "home", until=["ExampleGen"])
    assert first.ok, first.failure
    [shard] = Path(first.steps["ExampleGen"].outputs["examples"].split_uri("train")).glob("*")
    cut_inside_a_record_header(str(shard))
    error = _fails_without_publishing(tmp_path, pipeline, consumer, output_type)
    assert f"{shard}: damaged TFRecord file (truncated: " in error


def test_a_split_of_empty_files_is_named_as_empty_not_as_missing(tmp_path):
    """An ExampleGen shard emptied after publication (0 bytes): StatisticsGen's error says
    the split's files are empty and names them, not that none exists."""
    gen = ExampleGen(input_base=str(copy_penguins(tmp_path / "in").parent))
    pipeline = Pipeline("emptied", [gen, StatisticsGen(examples=gen.outputs.examples)])
    first = run_pipeline(pipeline, home=tmp_path / "home", until=["ExampleGen"])
    assert first.ok, first.failure
    [shard] = Path(first.steps["ExampleGen"].outputs["examples"].split_uri("eval")).glob("*")
    shard.write_bytes(b"")
    error = _fails_without_publishing(tmp_path, pipeline, "StatisticsGen", ExampleStatistics)
    assert f"no examples for split 'eval': its files are empty (0 bytes): ['{shard}']" in error


def test_missing_partition_feature_names_the_row(tmp_path):
    header, rows = penguin_rows()
    write_csv(tmp_path / "in" / "p.csv", header, rows[:40])
    error = _example_gen_fails(tmp_path, input_base=str(tmp_path / "in"),
                               partition_feature="sex")
    line = 2 + next(i for i, r in enumerate(rows) if r[header.index("sex")] == "NA")
    assert line == 5  # data row 4, after the header line
    assert f"{tmp_path / 'in' / 'p.csv'} line {line}: partition feature 'sex' is missing" in error


def _bytes_typed(schema_text: str, feature: str) -> str:
    """The schema with `feature` typed BYTES (its int domain dropped), as SchemaGen infers
    it from a number column holding a word."""
    start = schema_text.index(f'  name: "{feature}"\n')
    end = schema_text.index("presence", start)
    return (schema_text[:start] + f'  name: "{feature}"\n  type: BYTES\n  '
            + schema_text[end:])


@pytest.mark.parametrize("case", ["type", "cast", "missing"])
def test_transform_failure_names_the_feature_and_the_op(tmp_path, case):
    """A real Transform (the penguin preprocessing_fn) on data whose column contradicts
    the schema: the error is a few lines naming the feature, its schema type and the op;
    the raw TFT/tfx_bsl error (Arrow schema, tensor names) is only in the step log.

    type:    a float in body_mass_g, which the curated schema types INT (decoding fails)
    cast:    issue 13 - body_mass_g holds a word and the schema (as SchemaGen inferred it)
             types it BYTES; preprocessing_fn's tf.cast to float fails in node Cast_1
    missing: the island column is absent; the schema makes it a required dense feature
    """
    schema_file = tmp_path / "schema.pbtxt"
    schema_text = CURATED_SCHEMA.read_text()
    if case == "type":
        path = _penguins_with(tmp_path, "body_mass_g", {10: "3750.5"})
    elif case == "cast":
        path = _penguins_with(tmp_path, "body_mass_g", {10: "heavy"})
        schema_text = _bytes_typed(schema_text, "body_mass_g")
    else:
        header, rows = penguin_rows()
        keep = [i for i, name in enumerate(header) if name != "island"]
        path = write_csv(tmp_path / "in" / "penguins.csv", [header[i] for i in keep],
                         [[r[i] for i in keep] for r in rows])
    schema_file.write_text(schema_text)
    gen = ExampleGen(input_base=str(path.parent))
    schema = ImportSchemaGen(schema_file=str(schema_file))
    transform = Transform(examples=gen.outputs.examples, schema=schema.outputs.schema,
                          module_file=str(PENGUIN_MODULE))
    pipeline = Pipeline("transform_feature", [gen, schema, transform])
    error = _fails_without_publishing(tmp_path, pipeline, "Transform", TransformGraph)

    message = error.split("step Transform failed: ", 1)[1].rsplit(" (log: ", 1)[0]
    expected = {
        "type": [f"TransformFeatureError: feature 'body_mass_g' does not match the schema: "
                 f"the examples hold floats (float_list) where the schema ({schema_file}) "
                 f"types it INT (int64_list)",
                 "op: decoding tf.Example with the schema (tfx_bsl), Beam stage Read[train]/"],
        "cast": [f"TransformFeatureError: feature 'body_mass_g' (BYTES in {schema_file}): "
                 f"preprocessing op 'CAST' (Cast string -> float32) failed: Cast string to "
                 f"float is not supported",
                 f"op defined at {PENGUIN_MODULE} line {_line_of('tf.cast(x.values')}, in "
                 f"_impute_with_mean, Beam stage Analyze/"],
        "missing": [f"TransformFeatureError: feature 'island' (BYTES) is absent from (or of "
                    f"another length in) some example(s), while the schema ({schema_file}) "
                    f"makes it a required dense feature of shape [1]",
                    "op: converting the feature to TensorSpec(shape=(None, 1), "
                    "dtype=tf.string, name=None) for preprocessing_fn, Beam stage Analyze/"],
    }[case]
    lines = message.splitlines()
    assert len(lines) == 2, message
    # The node's name is the graph's (Cast, Cast_1, ... in the order preprocessing_fn made
    # them); the test does not depend on how many casts come before.
    lines[0] = re.sub(r"preprocessing op 'Cast(_\d+)?'", "preprocessing op 'CAST'", lines[0])
    assert lines[0] == expected[0] and lines[1].startswith(expected[1]), message
    for dump in ("pyarrow", "large_list", "Fetching", "[[{{node", "INVALID_ARGUMENT"):
        assert dump not in error
    # The raw error is in the step log, after the short one.
    log = Path(result_log(tmp_path, "transform_feature", "Transform")).read_text()
    assert message.splitlines()[0] in log
    raw = {"type": 'found float_list for feature "body_mass_g"',
           "cast": "pyarrow.RecordBatch", "missing": "size mismatch"}[case]
    assert raw in log


def _line_of(code: str) -> int:
    """The line of the penguin module holding `code` (once)."""
    lines = PENGUIN_MODULE.read_text().splitlines()
    found = [number for number, line in enumerate(lines, 1) if code in line]
    assert len(found) == 1, found
    return found[0]


def result_log(tmp_path: Path, pipeline: str, step: str) -> str:
    logs = list((tmp_path / "home" / "logs" / pipeline).glob(f"*/{step}.log"))
    assert len(logs) == 1, logs
    return str(logs[0])


def test_invalid_schema_file_names_the_file_and_line(tmp_path):
    schema_file = tmp_path / "schema.pbtxt"
    lines = CURATED_SCHEMA.read_text().splitlines()
    broken_at = lines.index('  name: "island"') + 1
    lines[broken_at - 1] = '  name: "island'  # an unterminated string
    schema_file.write_text("\n".join(lines) + "\n")
    pipeline = Pipeline("bad_schema", [ImportSchemaGen(schema_file=str(schema_file))])
    error = _fails_without_publishing(tmp_path, pipeline, "ImportSchemaGen", Schema)
    assert f"{schema_file} line {broken_at}: not a valid tensorflow_metadata Schema" in error


def test_column_type_contradicting_the_curated_schema_halts_with_an_anomaly(tmp_path):
    header, rows = penguin_rows()
    rows = [r[:] for r in rows]
    rows[42][header.index("body_mass_g")] = "heavy"  # a string in an INT column
    write_csv(tmp_path / "in" / "penguins.csv", header, rows)
    components = data_half("typed", tmp_path / "in", with_schema_gen=True).components
    by_id = {c.id: c for c in components}
    downstream = by_id["SchemaGen"].after(by_id["ExampleValidator"])
    pipeline = Pipeline("typed", components)
    result = run_pipeline(pipeline, home=tmp_path / "home")

    validator = result.steps["ExampleValidator"]
    assert validator.outcome == "halted" and not result.ok
    assert "body_mass_g (Unexpected data type" in result.failure
    assert downstream.id in result.not_run  # nothing after the validator ran
    anomalies = validator.outputs["anomalies"]
    infos = {split: read_anomalies(anomalies, split).anomaly_info for split in anomalies.splits}
    assert any("body_mass_g" in info for info in infos.values())
    assert all(set(info) <= {"body_mass_g"} for info in infos.values())
    report = Path(anomalies.path("report.txt")).read_text()
    assert "body_mass_g: Unexpected data type" in report and "INT" in report


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "pipeline.py"
    path.write_text(
        "from components.base import Param\n"
        "from components.example_gen import ExampleGen\n"
        "from pipelines.pipeline import Pipeline\n\n"
        "def create_pipeline():\n"
        "    span_range = Param('span_range', list[int] | None, None)\n"
        f"    gen = ExampleGen(input_base={str(tmp_path_factory.getbasetemp())!r}, "
        "input_pattern='span-{SPAN}/*.csv', span_range=span_range)\n"
        "    return Pipeline('cli_data', [gen], parameters=[span_range])\n")
    return path


def _pipewright(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PIPEWRIGHT, "run", *args, "--home", str(home)],
                          capture_output=True, text=True, timeout=120)


def test_unknown_pipeline_through_the_cli(tmp_path):
    done = _pipewright("no_such_pipeline", home=tmp_path)
    assert done.returncode == 2
    assert "unknown pipeline 'no_such_pipeline'" in done.stderr


def test_unknown_and_mistyped_parameters_through_the_cli(pipeline_file, tmp_path):
    unknown = _pipewright(str(pipeline_file), "--param", "spans=1,2", home=tmp_path)
    assert unknown.returncode == 2
    assert "no parameter(s) ['spans']" in unknown.stderr and "['span_range']" in unknown.stderr
    mistyped = _pipewright(str(pipeline_file), "--param", "span_range=last", home=tmp_path)
    assert mistyped.returncode == 2
    assert "pipeline parameter 'span_range': 'last'" in mistyped.stderr


def test_a_pipeline_file_whose_create_pipeline_returns_no_pipeline(tmp_path):
    from pipelines import registry

    path = tmp_path / "pipeline.py"
    path.write_text("def create_pipeline():\n    return ['ExampleGen']\n")
    with pytest.raises(LookupError, match=r"create_pipeline\(\) in .*pipeline.py returned "
                                          r"list, not a pipelines.pipeline.Pipeline"):
        registry.load(str(path))
    other = tmp_path / "other" / "pipeline.py"
    other.parent.mkdir()
    other.write_text("create_pipeline = 3\n")
    with pytest.raises(LookupError, match="defines no create_pipeline"):
        registry.load(str(other))
