"""The user module convention: a pipeline names a Python file that defines the model code.

    preprocessing_fn(inputs) -> outputs      used by Transform (tf.Transform)
    run_fn(fn_args)                          used by Trainer: trains, exports a SavedModel
    tuner_fn(fn_args) -> TunerFnResult       used by Tuner (optional)

What a module may call from the framework:

    components.signatures.export_serving_model(model, fn_args, tf_transform_output,
                                               label_key=..., class_vocabulary=... |
                                               class_names=[...])
        at the end of run_fn: saves the Keras model to fn_args.serving_model_dir with the
        signatures the Evaluator (serving_default, transform_label), the InfraValidator
        (serving_default) and JSON clients (serving_raw, classify) use.
    components.signatures.read_class_names(saved_model_dir)
        a classifier's class names, in the order of its scores.
    components.user_module.FnArgs, TunerFnResult
        what run_fn / tuner_fn receive and what tuner_fn returns.

The module is imported from its file path (no packaging); its directory is put on
sys.path while it loads so it may import its own helpers. Components declare the file as
`module_file: Parameter[ExternalPath]`, so an edit to it invalidates their cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Callable

_load_lock = threading.Lock()


class UserModuleError(ValueError):
    """The user module is missing, fails to import, or lacks a required function."""


@dataclass
class FnArgs:
    """What `run_fn` and `tuner_fn` receive."""

    train_files: list[str]
    eval_files: list[str]
    transform_output: str | None  # the TransformGraph directory (tft.TFTransformOutput)
    schema_file: str | None  # schema.pbtxt of the raw data
    serving_model_dir: str  # run_fn exports its SavedModel here
    model_run_dir: str  # TensorBoard logs
    train_steps: int
    eval_steps: int
    hyperparameters: dict[str, Any] | None = None  # best values found by the Tuner
    base_model: str | None = None  # a SavedModel to warm-start from
    custom_config: dict[str, Any] = field(default_factory=dict)
    data_accessor: Any = None  # reserved; the penguin module reads TFRecords directly
    working_dir: str = ""  # scratch space for the Tuner's trials


@dataclass
class TunerFnResult:
    """What `tuner_fn` returns: a KerasTuner tuner and the keyword arguments for search()."""

    tuner: Any
    fit_kwargs: dict[str, Any]


def load(path: str, required: tuple[str, ...] = ()) -> types.ModuleType:
    """Imports the module at `path` and checks that it defines each `required` callable."""
    path = os.path.abspath(str(path))
    if not os.path.isfile(path):
        raise UserModuleError(f"user module {path} does not exist")
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:12]
    # A name per content: an edited module is imported afresh, never served from sys.modules.
    name = f"pipewright_user_module_{os.path.splitext(os.path.basename(path))[0]}_{digest}"
    with _load_lock:
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            directory = os.path.dirname(path)
            sys.path.insert(0, directory)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                raise UserModuleError(f"user module {path} failed to import: "
                                      f"{type(exc).__name__}: {exc}") from exc
            finally:
                sys.path.remove(directory)
            sys.modules[name] = module
    for function in required:
        if not callable(getattr(module, function, None)):
            defined = sorted(n for n, v in vars(module).items()
                             if callable(v) and n.endswith("_fn"))
            raise UserModuleError(f"user module {path} defines no function {function!r} "
                                  f"(it defines {defined or 'no *_fn functions'})")
    return module


def pickle_by_value(path: str) -> types.ModuleType:
    """The module at `path` (load), registered with Beam's pickler (its vendored cloudpickle)
    to travel by value, with the modules it imported from its own directory: `load` imports
    it under a made-up name that a Beam worker process cannot import
    (`--direct_running_mode=multi_processing`, a remote runner), so pickling its functions
    by reference would fail there with ModuleNotFoundError."""
    from apache_beam.internal.cloudpickle import cloudpickle

    module = load(path)
    directory = os.path.dirname(os.path.abspath(path))
    helpers = [m for name, m in list(sys.modules.items())
               if "." not in name and getattr(m, "__file__", None)
               and os.path.dirname(os.path.abspath(m.__file__)) == directory]
    for each in {id(m): m for m in [module, *helpers]}.values():
        cloudpickle.register_pickle_by_value(each)
    return module


def function(path: str, name: str) -> Callable[..., Any]:
    """The named function of the user module at `path`."""
    return getattr(load(path, required=(name,)), name)
