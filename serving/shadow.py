"""Agreement between the stable answer and the candidate's answer to the same shadowed call.

compare(method, stable_response, candidate_response) -> Comparison(same, different,
distances), per row (example):

  - a classifier (a Predict `scores` output of shape [rows, classes], or a Classify result):
    the rows agree when the predicted class (argmax of the scores; for Classify, the label of
    the top-scoring class) is the same; `distances` holds each row's L-infinity distance
    between the two score vectors (0..1 for probabilities);
  - a regressor (a Regress result, or a Predict `outputs` output; else a Predict call's only
    output): the rows agree when |a - b| <= 1e-6 * max(1, |a|) (a = stable's value, the first
    value of the row); no distances;
  - answers of different shapes (rows, classes) count every row as different; other Predict
    outputs (no `scores`, no `outputs`, several outputs, strings) are not compared (0, 0).

These are the counts behind :pipewright:serving:shadow_comparison_count and
shadow_score_distance (serving/metrics.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.data_plane import CLASSIFY, PREDICT, REGRESS

REGRESSION_RTOL = 1e-6


@dataclass
class Comparison:
    same: int = 0
    different: int = 0
    distances: list = field(default_factory=list)


def _rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)


def _scores(stable: np.ndarray, candidate: np.ndarray, labels_a=None, labels_b=None) -> Comparison:
    if stable.shape != candidate.shape or stable.ndim != 2 or not stable.shape[1]:
        return Comparison(different=max(len(stable), len(candidate)))
    top_a, top_b = stable.argmax(axis=1), candidate.argmax(axis=1)
    if labels_a is not None and labels_b is not None:
        rows = np.arange(len(stable))
        agree = labels_a[rows, top_a] == labels_b[rows, top_b]
    else:
        agree = top_a == top_b
    same = int(agree.sum())
    distances = np.abs(stable.astype(np.float64) - candidate.astype(np.float64)).max(axis=1)
    return Comparison(same, len(agree) - same, distances.tolist())


def _values(stable: np.ndarray, candidate: np.ndarray) -> Comparison:
    a, b = _rows(stable)[:, 0].astype(np.float64), _rows(candidate)[:, 0].astype(np.float64)
    if a.shape != b.shape:
        return Comparison(different=max(len(a), len(b)))
    agree = np.abs(a - b) <= REGRESSION_RTOL * np.maximum(1.0, np.abs(a))
    same = int(agree.sum())
    return Comparison(same, len(agree) - same)


def compare(method: str, stable, candidate) -> Comparison:
    """Rows that agree and differ between two responses (tensorflow_serving protos) of
    `method` (PREDICT, CLASSIFY or REGRESS); see the module docstring."""
    if method == CLASSIFY:
        a, b = stable.result.classifications, candidate.result.classifications
        if len(a) != len(b) or any(len(x.classes) != len(y.classes) for x, y in zip(a, b)):
            return Comparison(different=max(len(a), len(b)))
        if not a or not a[0].classes:
            return Comparison()
        scores_a = np.array([[c.score for c in row.classes] for row in a], dtype=np.float64)
        scores_b = np.array([[c.score for c in row.classes] for row in b], dtype=np.float64)
        labels_a = np.array([[c.label for c in row.classes] for row in a], dtype=object)
        labels_b = np.array([[c.label for c in row.classes] for row in b], dtype=object)
        return _scores(scores_a, scores_b, labels_a, labels_b)
    if method == REGRESS:
        a = np.array([r.value for r in stable.result.regressions], dtype=np.float64)
        b = np.array([r.value for r in candidate.result.regressions], dtype=np.float64)
        return _values(a, b) if len(a) else Comparison()
    if method != PREDICT:
        return Comparison()
    from serving.tensor_proto import to_ndarray

    outputs_a, outputs_b = stable.outputs, candidate.outputs
    if "scores" in outputs_a and "scores" in outputs_b:
        return _scores(to_ndarray(outputs_a["scores"], "scores"),
                       to_ndarray(outputs_b["scores"], "scores"))
    alias = "outputs" if "outputs" in outputs_a else (
        next(iter(outputs_a)) if len(outputs_a) == 1 else None)
    if alias is None or alias not in outputs_b:
        return Comparison()
    a, b = to_ndarray(outputs_a[alias], alias), to_ndarray(outputs_b[alias], alias)
    if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        return Comparison()
    if not a.size or not b.size:
        return Comparison()
    return _values(a, b)
