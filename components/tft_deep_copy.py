"""tf.Transform's deep copy (`tft_beam.Context(use_deep_copy_optimization=True)`) on Beam 2.72.

With the optimization, tf.Transform re-reads its input for each analyzer phase after the
first instead of having the runner keep it: a phase's input waits for the previous phase's
results (a side input), and a PCollection read that late is buffered whole by Beam's
FnApiRunner, in memory. A preprocessing_fn whose analyzers depend on others (scale_to_z_score
of a value imputed with tft.mean, as the penguin module does) thus holds the whole training
split in memory without it (tensorflow_transform/beam/impl.py, `_RunMetaGraphDoFn` phases).

tf.Transform 1.16's copy (tensorflow_transform/beam/deep_copy.py) builds
`apache_beam.pipeline.AppliedPTransform(parent, transform, full_label, main_inputs)`, the
constructor of Beam before 2.53; Beam 2.72's also takes `environment_id` and `annotations`
(passed as None and the enclosing annotations by Beam's own Pipeline.apply), so the copy
fails with "TypeError: AppliedPTransform.__init__() missing 2 required positional
arguments". `enable()` gives the copy a constructor taking the four arguments, passing
`environment_id=None` and no annotations as Pipeline.apply does outside an annotations
context; nothing else of tf.Transform or Beam changes.
"""
from __future__ import annotations

import types

_enabled = False


def enable() -> None:
    """Makes tensorflow_transform.beam.deep_copy construct copies Beam 2.72 accepts.
    Idempotent; a no-op when the installed Beam takes the four-argument constructor."""
    global _enabled
    if _enabled:
        return
    import inspect

    from apache_beam import pipeline as beam_pipeline
    from tensorflow_transform.beam import deep_copy

    applied = beam_pipeline.AppliedPTransform
    if "environment_id" not in inspect.signature(applied.__init__).parameters:
        _enabled = True
        return

    class OriginalsToo(type(applied)):
        # The copy tells transforms from PCollections with isinstance(item,
        # beam_pipeline.AppliedPTransform): the pipeline's own nodes must pass it.
        def __instancecheck__(cls, instance):
            return isinstance(instance, applied)

    class AppliedPTransform(applied, metaclass=OriginalsToo):
        def __init__(self, parent, transform, full_label, main_inputs, environment_id=None,
                     annotations=None):
            super().__init__(parent, transform, full_label, main_inputs, environment_id,
                             annotations or {})

    # The copy reaches Beam's pipeline module as `deep_copy.beam_pipeline`: a view of it
    # with this one class replaced.
    view = types.ModuleType(beam_pipeline.__name__)
    view.__dict__.update(vars(beam_pipeline))
    view.AppliedPTransform = AppliedPTransform
    deep_copy.beam_pipeline = view
    _enabled = True
