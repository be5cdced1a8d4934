"""Two tiny real classifiers that disagree on a known share of inputs, for the rollout tests.

Each SavedModel's serving_default takes x float32[-1] and returns scores float32[-1, 2] =
[1 - p, p] with p = sigmoid(STEEPNESS * (x - threshold)); the predicted class is x > threshold.
Stable (version 1) has threshold 0.5 and the candidate (version 2) 0.6, so on the grid
GRID = [0.00, 0.01, ..., 0.99] they predict different classes exactly for x in (0.5, 0.6]:
10 of 100 points (DISAGREEING_SHARE). Their scores differ at every x, so an answer tells which
version gave it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STEEPNESS = 50.0
STABLE_THRESHOLD, CANDIDATE_THRESHOLD = 0.5, 0.6
GRID = [round(i / 100, 2) for i in range(100)]
DISAGREEING_SHARE = 0.10


def expected_scores(x, threshold: float) -> np.ndarray:
    """The model's scores computed with numpy: [rows, 2] float32."""
    x = np.asarray(x, dtype=np.float32)
    p = 1.0 / (1.0 + np.exp(-STEEPNESS * (x - np.float32(threshold))))
    return np.stack([1.0 - p, p], axis=-1).astype(np.float32)


def write_classifier(export_dir: Path, threshold: float) -> Path:
    import tensorflow as tf

    class Classifier(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serving_default(self, x):
            p = tf.sigmoid(STEEPNESS * (x - threshold))
            return {"scores": tf.stack([1.0 - p, p], axis=-1)}

    module = Classifier()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serving_default})
    return Path(export_dir)


def write_broken_version(export_dir: Path) -> Path:
    """A version directory whose saved_model.pb does not parse (fails to load: DATA_LOSS)."""
    export_dir.mkdir(parents=True)
    (export_dir / "saved_model.pb").write_bytes(b"not a SavedModel")
    return export_dir
