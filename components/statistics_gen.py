"""StatisticsGen: TFDV statistics for every split of the examples."""
from __future__ import annotations

from typing import Any

from components.artifacts import Examples, ExampleStatistics, Schema
from components.beam_options import beam_pipeline
from components.example_batches import ReadExampleBatches, why_no_example_files
from components.base import Component, Input, OptionalInput, Output, Parameter, Step
from components.split_names import included_splits
from components.tfmd_files import read_schema, read_statistics, statistics_path


# Rows per RecordBatch read. TFDV computes a batch as soon as it holds desired_batch_size
# (default 1000) rows, so a larger batch read is computed whole: fewer passes of its per-batch,
# per-feature Python. On bench/make_scale_data.py's 337k rows (bench/bench_data_half.py, one
# machine, minutes apart): 28.4 s with 1,000-row batches, 22.1 s with 10,000.
READ_BATCH_SIZE = 10_000


class StatisticsGen(Component):
    """Computes TFDV statistics of each split of `examples` (except `exclude_splits`) in one
    Beam pipeline (components/beam_options.py: the FnApiRunner unless the pipeline's beam_args
    name a runner; examples read by TensorFlow's C++ reader, components/example_batches.py),
    guided by the optional `schema` (e.g. which integer features are categorical). Writes
    `Split-<name>/FeatureStats.pb` and `statistics.html`, a Facets view of the statistics
    (the first split against the second, when there are two or more).

    `stats_options` are keyword arguments of `tfdv.StatsOptions` (as TFX's StatisticsGen
    takes a StatsOptions), e.g. `{"experimental_use_sketch_based_topk_uniques": True}`:
    TFDV counts each string feature's distinct values exactly by default, which holds a
    table of every value (memory and time grow with a near-unique column such as a
    timestamp string); the sketches (Misra-Gries for top values, KMV for the unique count)
    keep both bounded, exact for features of few values, approximate for the rest. On
    bench/make_scale_data.py's 225k training rows, side by side: 3.3x faster, the same
    statistics for every numeric feature and every string feature of up to 300 values,
    `order_time`'s unique count +0.7 % and its top-value frequencies overstated.
    `desired_batch_size` is also the number of rows read per batch (default
    READ_BATCH_SIZE). `schema` comes from the input, not from here. Raises ValueError naming an argument StatsOptions
    does not take."""

    imports_tensorflow = True

    examples: Input[Examples]
    schema: OptionalInput[Schema]
    statistics: Output[ExampleStatistics]
    exclude_splits: Parameter[list[str]] = []
    stats_options: Parameter[dict[str, Any]] = {}

    def execute(self, step: Step) -> None:
        import tensorflow_data_validation as tfdv

        splits = included_splits(step.examples, step.exclude_splits, step.log)
        schema = read_schema(step.schema.file) if step.schema is not None else None
        options = _stats_options(step.stats_options, schema)
        for split in splits:
            _check_has_example_files(step.examples, split)
        step.log.info("computing statistics of splits %s with beam args %s", splits,
                      step.beam_args)
        with beam_pipeline(step) as pipeline:
            for split in splits:
                # Decoded without the schema: a feature whose type contradicts the schema
                # must reach ExampleValidator as an anomaly, not fail decoding here.
                _ = (pipeline
                     | f"Read[{split}]" >> ReadExampleBatches(
                         step.examples.file_pattern(split),
                         batch_size=options.desired_batch_size or READ_BATCH_SIZE)
                     | f"Statistics[{split}]" >> tfdv.GenerateStatistics(options)
                     | f"Write[{split}]" >> tfdv.WriteStatisticsToBinaryFile(
                         statistics_path(step.statistics, split)))
        step.statistics.set(span=step.examples.span, split_names=splits,
                            input_files=step.examples.input_files)

        per_split = [read_statistics(step.statistics, split) for split in splits]
        for split, stats in zip(splits, per_split):
            step.log.info("split %s: %d examples", split,
                          sum(d.num_examples for d in stats.datasets))
        html = tfdv.get_statistics_html(
            per_split[0], per_split[1] if len(per_split) > 1 else None,
            lhs_name=splits[0], rhs_name=splits[1] if len(splits) > 1 else "rhs_statistics")
        with open(step.statistics.path("statistics.html"), "w", encoding="utf-8") as fh:
            fh.write(html)


def _check_has_example_files(examples: Examples, split: str) -> None:
    """Raises FileNotFoundError naming the split's files when all are 0 bytes (no records),
    or its pattern when no file matches."""
    why = why_no_example_files(examples.file_pattern(split))
    if why:
        raise FileNotFoundError(f"examples {examples.uri} have no examples for split "
                                f"{split!r}: {why}")


def _stats_options(arguments: dict[str, Any], schema):
    """tfdv.StatsOptions(schema=schema, **arguments); ValueError naming what it refuses."""
    import inspect

    import tensorflow_data_validation as tfdv

    accepted = set(inspect.signature(tfdv.StatsOptions.__init__).parameters) - {"self"}
    unknown = sorted(set(arguments) - accepted)
    if unknown or "schema" in arguments:
        raise ValueError(f"StatisticsGen stats_options: {unknown or ['schema']} "
                         + ("is not an argument of tfdv.StatsOptions"
                            if unknown else "comes from the schema input")
                         + f"; it takes {sorted(accepted - {'schema'})}")
    try:
        return tfdv.StatsOptions(schema=schema, **arguments)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"StatisticsGen stats_options {arguments}: {exc}") from None

