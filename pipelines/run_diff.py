"""`pipewright diff RUN_A RUN_B`: what changed between two runs of one pipeline.

Read from ML Metadata and the artifacts' files with the tensorflow-metadata protos alone (no
TensorFlow): the parameters; each step's status, cache key and outputs (the same artifact
means the step was cached, a new one that it executed); the schemas, feature by feature; the
statistics, per split and feature (examples, missing fraction, mean and standard deviation
of numbers, and for strings the L-infinity distance between the two value distributions —
the measure of TFDV's categorical drift comparator, tensorflow_data_validation's
`infinity_norm`); the Evaluator's metrics per slice side by side (its `metrics.json`); the
blessing and the pushed version.
"""
from __future__ import annotations

import json
import os
from typing import Any

from components.artifacts import Artifact

MISSING_FILES = "(files gone)"


class RunNotFound(LookupError):
    """A run id that the store does not have, or runs of two pipelines."""


def find_run(metadata, run_id: str) -> dict[str, Any]:
    """The recorded run `run_id` (its context properties). Raises RunNotFound naming the
    newest runs when there is none."""
    runs = metadata.runs()
    found = [r for r in runs if r.get("run_id") == run_id]
    if not found:
        recent = ", ".join(f"{r['run_id']} ({r.get('pipeline_name')})" for r in runs[-5:])
        raise RunNotFound(f"no run {run_id!r} in this home's metadata store; newest runs: "
                          f"{recent or 'none'}")
    if len(found) > 1:
        names = sorted({r.get("pipeline_name") for r in found})
        raise RunNotFound(f"run id {run_id!r} is a run of several pipelines {names}")
    return found[0]


def step_outputs(metadata, run: dict[str, Any]) -> dict[str, tuple[Any, dict[str, Artifact]]]:
    """component id -> (its latest execution record in the run, its outputs)."""
    context = metadata.run_context(run["pipeline_name"], run["run_id"])
    steps = {}
    for record in sorted(metadata.executions_in_run(context), key=lambda r: r.id):
        steps[record.component_id] = (record, metadata.outputs_of_execution(record.id))
    return steps


def diff_runs(metadata, run_a: str, run_b: str) -> list[str]:
    """The lines `pipewright diff` prints. Raises RunNotFound for an unknown run or runs of
    two pipelines."""
    a, b = find_run(metadata, run_a), find_run(metadata, run_b)
    if a["pipeline_name"] != b["pipeline_name"]:
        raise RunNotFound(f"{run_a} is a run of {a['pipeline_name']!r} and {run_b} of "
                          f"{b['pipeline_name']!r}: only runs of one pipeline compare")
    steps_a, steps_b = step_outputs(metadata, a), step_outputs(metadata, b)
    lines = [f"pipeline {a['pipeline_name']}: A = {run_a} ({a.get('state', '?')}), "
             f"B = {run_b} ({b.get('state', '?')})"]
    lines += _parameters(a, b)
    lines += _steps(steps_a, steps_b)
    pairs = _paired_outputs(steps_a, steps_b)
    for kind, section in (("Schema", _schemas), ("ExampleStatistics", _statistics),
                          ("ModelEvaluation", _evaluations)):
        for name, (art_a, art_b) in pairs.get(kind, {}).items():
            try:
                lines += section(name, art_a, art_b)
            except Exception as exc:  # files deleted or damaged: say so, compare the rest
                lines.append(f"{kind} {name}: #{art_a.id} -> #{art_b.id}: cannot read "
                             f"({type(exc).__name__}: {exc})")
    lines += _verdicts(pairs)
    return lines


def _parameters(a: dict, b: dict) -> list[str]:
    params_a = json.loads(a.get("parameters") or "{}")
    params_b = json.loads(b.get("parameters") or "{}")
    changed = [f"  {k}: {params_a.get(k, '(default)')!r} -> {params_b.get(k, '(default)')!r}"
               for k in sorted(set(params_a) | set(params_b))
               if params_a.get(k) != params_b.get(k)]
    return ["parameters:"] + (changed or ["  the same"])


def _steps(steps_a: dict, steps_b: dict) -> list[str]:
    lines = ["steps (A -> B):"]
    for cid in list(dict.fromkeys(list(steps_a) + list(steps_b))):
        rec_a, out_a = steps_a.get(cid, (None, {}))
        rec_b, out_b = steps_b.get(cid, (None, {}))
        state = f"{_state(rec_a)} -> {_state(rec_b)}"
        if rec_a is None or rec_b is None:
            same = ""
        elif out_a and {k: v.id for k, v in out_a.items()} == {k: v.id for k, v in out_b.items()}:
            same = "same outputs"
        elif rec_a.cache_key and rec_a.cache_key == rec_b.cache_key:
            same = "same cache key"
        elif rec_a.cache_key and rec_b.cache_key:
            same = "cache key changed (code, parameters or inputs)"
        else:
            same = ""
        lines.append(f"  {cid:<20} {state:<24} {same}".rstrip())
    return lines


def _state(record) -> str:
    if record is None:
        return "absent"
    if record.outcome and record.outcome != "ok":
        return record.outcome
    return record.state


def _paired_outputs(steps_a: dict, steps_b: dict) -> dict[str, dict[str, tuple]]:
    """artifact type name -> {"Component.output": (artifact of A, artifact of B)} for the
    outputs both runs have."""
    pairs: dict[str, dict[str, tuple]] = {}
    for cid, (_, out_a) in steps_a.items():
        out_b = steps_b.get(cid, (None, {}))[1]
        for key, art_a in out_a.items():
            if key in out_b:
                pairs.setdefault(type(art_a).__name__, {})[f"{cid}.{key}"] = (art_a, out_b[key])
    return pairs


def _schemas(name: str, a, b) -> list[str]:
    from components.tfmd_files import read_schema

    if not (os.path.isfile(a.file) and os.path.isfile(b.file)):
        return [f"schema {name}: {MISSING_FILES}"]
    if a.id == b.id:
        return [f"schema {name}: the same artifact #{a.id}"]
    fa = {f.name: f for f in read_schema(a.file).feature}
    fb = {f.name: f for f in read_schema(b.file).feature}
    lines = []
    for feature in sorted(set(fa) | set(fb)):
        if feature not in fa:
            lines.append(f"  + {feature} {_feature_text(fb[feature])}")
        elif feature not in fb:
            lines.append(f"  - {feature} {_feature_text(fa[feature])}")
        elif _feature_text(fa[feature]) != _feature_text(fb[feature]):
            lines.append(f"  ~ {feature}: {_feature_text(fa[feature])} -> "
                         f"{_feature_text(fb[feature])}")
        elif fa[feature] != fb[feature]:
            lines.append(f"  ~ {feature}: domain or constraints changed")
    return [f"schema {name}: #{a.id} -> #{b.id}"] + (lines or ["  no feature differs"])


def _feature_text(feature) -> str:
    from tensorflow_metadata.proto.v0 import schema_pb2

    required = "required" if feature.presence.min_fraction >= 1 else "optional"
    return f"{schema_pb2.FeatureType.Name(feature.type)} {required}"


def _statistics(name: str, a, b) -> list[str]:
    from components.tfmd_files import read_statistics

    if a.id == b.id:
        return [f"statistics {name}: the same artifact #{a.id}"]
    lines = [f"statistics {name}: #{a.id} (span {a.span}) -> #{b.id} (span {b.span})"]
    for split in [s for s in a.splits if s in b.splits]:
        try:
            [da], [db] = read_statistics(a, split).datasets, read_statistics(b, split).datasets
        except (OSError, ValueError):
            lines.append(f"  split {split}: {MISSING_FILES}")
            continue
        lines.append(f"  split {split}: {da.num_examples} -> {db.num_examples} examples")
        by_a, by_b = _features(da), _features(db)
        for feature in sorted(set(by_a) | set(by_b)):
            lines.append("    " + _feature_change(feature, by_a.get(feature), by_b.get(feature),
                                                   da.num_examples, db.num_examples))
    return lines


def _features(dataset) -> dict[str, Any]:
    return {".".join(f.path.step) or f.name: f for f in dataset.features}


def _feature_change(name: str, fa, fb, rows_a: int, rows_b: int) -> str:
    if fa is None or fb is None:
        return f"{name:<20} {'only in B' if fa is None else 'only in A'}"
    kind_a, kind_b = fa.WhichOneof("stats"), fb.WhichOneof("stats")
    if kind_a != kind_b:
        return f"{name:<20} {_kind(kind_a)} -> {_kind(kind_b)}"
    sa, sb = getattr(fa, kind_a), getattr(fb, kind_b)
    missing = (f"missing {_fraction(sa.common_stats.num_missing, rows_a)} -> "
               f"{_fraction(sb.common_stats.num_missing, rows_b)}")
    if kind_a == "num_stats":
        return (f"{name:<20} numeric  {missing}  mean {sa.mean:.4g} -> {sb.mean:.4g}  "
                f"std {sa.std_dev:.4g} -> {sb.std_dev:.4g}")
    if kind_a == "string_stats":
        return (f"{name:<20} string   {missing}  unique {sa.unique} -> {sb.unique}  "
                f"L-infinity {_linf(sa, sb):.4f}")
    return f"{name:<20} {_kind(kind_a)}  {missing}"


def _kind(stats_field: str | None) -> str:
    return {"num_stats": "numeric", "string_stats": "string"}.get(stats_field or "",
                                                                   stats_field or "no stats")


def _fraction(count: int, total: int) -> str:
    return f"{100.0 * count / total:.1f}%" if total else "n/a"


def _linf(sa, sb) -> float:
    """Largest difference of one value's share between the two distributions (TFDV's
    infinity_norm over the rank histogram, or the top values when there is none)."""
    def shares(stats):
        buckets = stats.rank_histogram.buckets or stats.top_values
        counts = {(getattr(v, "label", "") or getattr(v, "value", "")):
                  (v.sample_count if hasattr(v, "sample_count") else v.frequency)
                  for v in buckets}
        total = sum(counts.values()) or 1.0
        return {k: c / total for k, c in counts.items()}

    pa, pb = shares(sa), shares(sb)
    return max((abs(pa.get(k, 0.0) - pb.get(k, 0.0)) for k in set(pa) | set(pb)), default=0.0)


def _evaluations(name: str, a, b) -> list[str]:
    from components.evaluator import METRICS_FILE

    if a.id == b.id:
        return [f"evaluation {name}: the same artifact #{a.id}"]
    paths = [x.path(METRICS_FILE) for x in (a, b)]
    if not all(os.path.isfile(p) for p in paths):
        return [f"evaluation {name}: #{a.id} -> #{b.id}: no metrics.json "
                f"(evaluated before it was written, or {MISSING_FILES})"]
    ma, mb = (_read_json(p) for p in paths)
    lines = [f"evaluation {name}: #{a.id} -> #{b.id} (candidate model's metrics, A | B | B - A)"]
    sa, sb = ma.get("slices", {}), mb.get("slices", {})
    for where in sorted(set(sa) | set(sb), key=lambda s: (s != "Overall", s)):
        for metric in sorted(set(sa.get(where, {})) | set(sb.get(where, {}))):
            va = (sa.get(where, {}).get(metric) or {}).get("candidate")
            vb = (sb.get(where, {}).get(metric) or {}).get("candidate")
            change = f"{vb - va:+.4f}" if va is not None and vb is not None else ""
            lines.append(f"  {where:<22} {metric:<22} {_num(va):>10} {_num(vb):>10} {change:>9}")
    return lines


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


def _verdicts(pairs: dict) -> list[str]:
    lines = []
    for name, (a, b) in pairs.get("ModelBlessing", {}).items():
        lines.append(f"blessing {name}: {_blessed(a)} -> {_blessed(b)}")
    for name, (a, b) in pairs.get("PushedModel", {}).items():
        lines.append(f"push {name}: {_pushed(a)} -> {_pushed(b)}")
    return lines


def _blessed(blessing) -> str:
    verdict = "blessed" if blessing.blessed else "NOT blessed"
    return f"{verdict} (model {blessing.model_id})"


def _pushed(push) -> str:
    if not push.pushed:
        return "not pushed"
    return f"model {push.model_id} as version {push.pushed_version}"
