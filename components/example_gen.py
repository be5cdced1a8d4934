"""ExampleGen: input files in, split gzip TFRecords of tf.Example out."""
from __future__ import annotations

import os
from typing import Any

from components.artifacts import Examples
from components.base import (Component, ComponentDefinitionError, Output, Param, Parameter,
                             Step)
from components.csv_reading import DEFAULT_MISSING_VALUE_TOKENS
from components.example_sources import FORMATS
from components.example_splits import check_splits
from components.progress import Progress
from components.spans import (DATE_PARTS, InputSelection, check_pattern, check_range,
                              date_of_span, select_input)

DEFAULT_PATTERNS = {"csv": "*.csv", "tfrecord": "*.tfrecord*", "parquet": "*.parquet"}


class ExampleGen(Component):
    """Reads the CSV, TFRecord (tf.Example) or Parquet files matching `input_pattern` under
    `input_base` and writes them as gzip TFRecords of tf.Example, one directory per split.

    - The pattern may carry `{SPAN}`, `{VERSION}` or `{YYYY}{MM}{DD}`: the newest span is
      read (at its newest version), or every span in `span_range` ([first, last], TFX's
      RangeConfig.static_range), or with `rolling_num_spans` N the rolling window of span
      numbers [newest - N + 1, newest] (TFX's RangeConfig.rolling_range.num_spans; for a
      date pattern, the last N days): its spans are merged into one Examples artifact whose
      `span` is the newest, `spans` every span read and `span_range` [first, last] of them.
      A span of the window without files is left out and named in the log and the step's
      note. Without a pattern, the format's default is used: `*.csv`, `*.tfrecord*`,
      `*.parquet`.
    - Examples go to `splits` by a stable hash in the given ratios (train 2 : eval 1 by
      default); with `partition_feature`, by the hash of that feature's value, so examples
      sharing a value share a split.
    - The input is streamed one example at a time, or for CSV files the vectorized reader
      can read exactly as the strict one (no quotes, blank lines, lone carriage returns or
      byte-order mark; see components/csv_vectorized.py), a block of rows at a time, with
      byte-for-byte the same examples and splits. The log names each file's reader; a file
      read by the strict reader is noted with the reason. Missing values stay missing: the
      feature is absent from that example. In CSV an empty field and the
      `missing_value_tokens` (NA, NaN, nan, null, NULL, N/A by default; `[]` turns them
      off) are missing, so "NaN" in a number column does not make it a string column.
    - CSV column types are inferred as tfx_bsl's CSV decoder (TFX's CsvExampleGen) infers
      them: int < float < string, the widest kind of a column's values. The step log has
      one line per column (name, type, missing count); a string column that also holds
      numbers names its first non-numeric value with file and line, in the log and in the
      step's note, since it is most likely a number column with a stray word.
    - CSV quoting is read as RFC 4180 writes it (a quoted field may hold delimiters, doubled
      quotes and line breaks). A quote left open, a quote inside an unquoted field, text
      after a closing quote or a row with too many or too few fields fails the step naming
      the file and line, rather than merging or altering rows.
    - The cache key includes the content of the files read, so changed input re-runs it.
    """

    imports_tensorflow = True

    examples: Output[Examples]
    input_base: Parameter[str]
    input_pattern: Parameter[str | None] = None
    input_format: Parameter[str] = "csv"
    splits: Parameter[dict[str, int]] = {"train": 2, "eval": 1}
    partition_feature: Parameter[str | None] = None
    span_range: Parameter[list[int] | None] = None
    rolling_num_spans: Parameter[int | None] = None
    missing_value_tokens: Parameter[list[str]] = list(DEFAULT_MISSING_VALUE_TOKENS)

    def __init__(self, **wiring: Any):
        super().__init__(**wiring)
        try:
            _check_parameters({k: v for k, v in self.parameters.items()
                               if not isinstance(v, Param)})
        except ValueError as exc:
            raise ComponentDefinitionError(f"{self.id}: {exc}") from None

    def external_fingerprint(self, params: dict[str, Any]) -> str:
        try:
            selection = _select(params)
        except (OSError, ValueError) as exc:
            # The step itself fails with this error; a fingerprint must not raise.
            return f"unresolved input: {exc}"
        return f"spans={selection.spans} version={selection.version} {selection.fingerprint()}"

    def execute(self, step: Step) -> None:
        from components.csv_vectorized import EncodedBatch
        from components.example_sources import read_examples
        from components.example_splits import SplitAssigner
        from components.tfrecord_io import SplitWriter

        params = {name: getattr(step, name) for name in self.PARAMETERS}
        _check_parameters(params)
        selection = _select(params)
        step.log.info("reading %d %s file(s) of span(s) %s, version %s: %s", len(selection.files),
                      step.input_format, selection.spans, selection.version, selection.files)
        is_date = DATE_PARTS[0] in _pattern(params)
        if is_date:
            step.log.info("span %d is the date %s", selection.span, date_of_span(selection.span))
        if step.rolling_num_spans is not None:
            step.note(_window_note(selection, step.rolling_num_spans, is_date))

        readers: dict[tuple[str, str | None], list[str]] = {}

        def log_reader(path: str, reader: str, reason: str | None) -> None:
            step.log.info("csv reader: %s for %s%s", reader, path,
                          f": {reason}" if reason else "")
            readers.setdefault((reader, reason), []).append(path)

        def note_readers() -> None:
            # The strict reader is the slow one: when it reads a file, the step says why.
            for (reader, reason), paths in readers.items():
                if reason is None:
                    continue
                shown = ", ".join(os.path.basename(path) for path in paths[:3])
                more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
                step.note(f"csv reader: {reader} for {len(paths)} file(s) ({shown}{more}): "
                          f"{reason}")
            readers.clear()

        def log_layout(layout) -> None:
            note_readers()
            step.log.info("CSV columns (name: type, missing count; missing-value tokens %s "
                          "and the empty field):", step.missing_value_tokens)
            for line in layout.type_lines():
                step.log.info("  column %s", line)
            for line in layout.mixed_columns():
                step.note(f"column {line}")

        assigner = SplitAssigner(step.splits, step.partition_feature)
        split_names = list(step.splits)
        progress = Progress(step.log, "rows")
        with SplitWriter(step.examples, split_names) as writer:
            try:
                for source in read_examples(step.input_format, selection.files,
                                            missing_value_tokens=step.missing_value_tokens,
                                            on_layout=log_layout, on_reader=log_reader):
                    if isinstance(source, EncodedBatch):
                        records = source.records
                        for split, rows in assigner.rows_by_split(source).items():
                            writer.write_many(split, [records[row] for row in rows])
                        progress.tick(len(records))
                        continue
                    split = assigner.split_of(source.example, f"{source.path} {source.where}")
                    writer.write(split, source.example.SerializeToString())
                    progress.tick()
            finally:
                note_readers()  # also when a file fails: which reader raised the error
        empty = [name for name, count in writer.counts.items() if count == 0]
        if empty:
            raise ValueError(f"split(s) {empty} received no examples out of "
                             f"{sum(writer.counts.values())} read from {selection.files}; "
                             f"give more input or change the split ratios {step.splits}"
                             + (f" or the partition feature {step.partition_feature!r}"
                                if step.partition_feature else ""))
        step.log.info("examples per split: %s", writer.counts)
        step.note(f"{sum(writer.counts.values())} examples ("
                  + ", ".join(f"{split} {n}" for split, n in writer.counts.items()) + ")")
        step.examples.set(span=selection.span, version=selection.version, split_names=split_names,
                          spans=selection.spans, input_files=list(selection.files),
                          span_range=[selection.spans[0], selection.spans[-1]],
                          input_fingerprint=selection.fingerprint(),
                          payload_format="FORMAT_TF_EXAMPLE")


def _pattern(params: dict[str, Any]) -> str:
    return params.get("input_pattern") or DEFAULT_PATTERNS.get(params.get("input_format"), "*")


def _select(params: dict[str, Any]) -> InputSelection:
    return select_input(params["input_base"], _pattern(params), params.get("span_range"),
                        params.get("rolling_num_spans"))


def _window_note(selection: InputSelection, num_spans: int, is_date: bool) -> str:
    """"rolling window of 3 span(s) 19754..19756 (2024-02-01..2024-02-03): read 2, absent
    19755 (2024-02-02)" - what a rolling range resolved to, dates spelled out."""
    def name(span: int) -> str:
        return f"{span} ({date_of_span(span)})" if is_date else str(span)

    first, last = selection.window
    dates = f" ({date_of_span(first)}..{date_of_span(last)})" if is_date else ""
    text = (f"rolling window of {num_spans} span(s) {first}..{last}{dates}: read "
            f"{len(selection.spans)}")
    if selection.absent:
        shown = ", ".join(name(span) for span in selection.absent[:5])
        more = f" and {len(selection.absent) - 5} more" if len(selection.absent) > 5 else ""
        text += f", absent {shown}{more}"
    return text


def _check_parameters(params: dict[str, Any]) -> None:
    """Checks the values known so far (runtime parameters are checked when they resolve)."""
    if "input_format" in params and params["input_format"] not in FORMATS:
        raise ValueError(f"ExampleGen: input_format must be one of {FORMATS}, "
                         f"got {params['input_format']!r}")
    if params.get("input_pattern"):
        check_pattern(params["input_pattern"])
    if "splits" in params:
        check_splits(params["splits"])
    # A runtime input pattern is checked against the range when it resolves.
    known = "input_pattern" in params and "input_format" in params
    pattern = _pattern(params) if known else "{SPAN}"
    check_range(pattern, params.get("span_range"), params.get("rolling_num_spans"))
