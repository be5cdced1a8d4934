"""ExampleGen: input files in, split gzip TFRecords of tf.Example out."""
from __future__ import annotations

from typing import Any

from components.artifacts import Examples
from components.base import (Component, ComponentDefinitionError, Output, Param, Parameter,
                             Step)
from components.example_sources import FORMATS
from components.example_splits import check_splits
from components.source_fingerprint import with_modules
from components.spans import check_pattern, date_of_span, select_input

_HELPERS = ("components.spans", "components.csv_reading", "components.example_sources",
            "components.example_splits", "components.tfrecord_io")
DEFAULT_PATTERNS = {"csv": "*.csv", "tfrecord": "*.tfrecord*", "parquet": "*.parquet"}


class ExampleGen(Component):
    """Reads the CSV, TFRecord (tf.Example) or Parquet files matching `input_pattern` under
    `input_base` and writes them as gzip TFRecords of tf.Example, one directory per split.

    - The pattern may carry `{SPAN}`, `{VERSION}` or `{YYYY}{MM}{DD}`: the newest span is
      read (at its newest version), or every span in `span_range` ([first, last]).
      Without a pattern, the format's default is used: `*.csv`, `*.tfrecord*`, `*.parquet`.
    - Examples go to `splits` by a stable hash in the given ratios (train 2 : eval 1 by
      default); with `partition_feature`, by the hash of that feature's value, so examples
      sharing a value share a split.
    - The input is streamed one example at a time. Missing values stay missing: the
      feature is absent from that example.
    - CSV quoting is read as RFC 4180 writes it (a quoted field may hold delimiters, doubled
      quotes and line breaks). A quote left open, a quote inside an unquoted field, text
      after a closing quote or a row with too many or too few fields fails the step naming
      the file and line, rather than merging or altering rows.
    - The cache key includes the content of the files read, so changed input re-runs it.
    """

    examples: Output[Examples]
    input_base: Parameter[str]
    input_pattern: Parameter[str | None] = None
    input_format: Parameter[str] = "csv"
    splits: Parameter[dict[str, int]] = {"train": 2, "eval": 1}
    partition_feature: Parameter[str | None] = None
    span_range: Parameter[list[int] | None] = None

    def __init__(self, **wiring: Any):
        super().__init__(**wiring)
        try:
            _check_parameters({k: v for k, v in self.parameters.items()
                               if not isinstance(v, Param)})
        except ValueError as exc:
            raise ComponentDefinitionError(f"{self.id}: {exc}") from None

    def code_fingerprint(self) -> str:
        return with_modules(super().code_fingerprint(), __name__, *_HELPERS)

    def external_fingerprint(self, params: dict[str, Any]) -> str:
        try:
            selection = _select(params)
        except (OSError, ValueError) as exc:
            # The step itself fails with this error; a fingerprint must not raise.
            return f"unresolved input: {exc}"
        return f"spans={selection.spans} version={selection.version} {selection.fingerprint()}"

    def execute(self, step: Step) -> None:
        from components.example_sources import read_examples
        from components.example_splits import SplitAssigner
        from components.tfrecord_io import SplitWriter

        params = {name: getattr(step, name) for name in self.PARAMETERS}
        _check_parameters(params)
        selection = _select(params)
        step.log.info("reading %d %s file(s) of span(s) %s, version %s: %s", len(selection.files),
                      step.input_format, selection.spans, selection.version, selection.files)
        if "{YYYY}" in _pattern(params):
            step.log.info("span %d is the date %s", selection.span, date_of_span(selection.span))

        assigner = SplitAssigner(step.splits, step.partition_feature)
        split_names = list(step.splits)
        with SplitWriter(step.examples, split_names) as writer:
            for source in read_examples(step.input_format, selection.files):
                split = assigner.split_of(source.example, f"{source.path} {source.where}")
                writer.write(split, source.example.SerializeToString())
        empty = [name for name, count in writer.counts.items() if count == 0]
        if empty:
            raise ValueError(f"split(s) {empty} received no examples out of "
                             f"{sum(writer.counts.values())} read from {selection.files}; "
                             f"give more input or change the split ratios {step.splits}"
                             + (f" or the partition feature {step.partition_feature!r}"
                                if step.partition_feature else ""))
        step.log.info("examples per split: %s", writer.counts)
        step.examples.set(span=selection.span, version=selection.version, split_names=split_names,
                          input_fingerprint=selection.fingerprint(),
                          payload_format="FORMAT_TF_EXAMPLE")


def _pattern(params: dict[str, Any]) -> str:
    return params.get("input_pattern") or DEFAULT_PATTERNS.get(params.get("input_format"), "*")


def _select(params: dict[str, Any]):
    return select_input(params["input_base"], _pattern(params), params.get("span_range"))


def _check_parameters(params: dict[str, Any]) -> None:
    """Checks the values known so far (runtime parameters are checked when they resolve)."""
    if "input_format" in params and params["input_format"] not in FORMATS:
        raise ValueError(f"ExampleGen: input_format must be one of {FORMATS}, "
                         f"got {params['input_format']!r}")
    if params.get("input_pattern"):
        check_pattern(params["input_pattern"])
    if "splits" in params:
        check_splits(params["splits"])
    span_range = params.get("span_range")
    if span_range is not None and (len(span_range) != 2 or span_range[0] > span_range[1]):
        raise ValueError(f"ExampleGen: span_range must be [first, last] with first <= last, "
                         f"got {span_range}")
