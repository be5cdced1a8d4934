"""The component contract: a typed spec (inputs, outputs, parameters) and an executor.

A component class declares its spec with annotations and implements `execute`:

    class StatisticsGen(Component):
        \"\"\"Computes TFDV statistics for every split of the examples.\"\"\"

        examples: Input[Examples]
        schema: OptionalInput[Schema]
        statistics: Output[ExampleStatistics]
        exclude_splits: Parameter[list[str]] = []

        def execute(self, step: Step) -> None:
            import tensorflow_data_validation as tfdv   # heavy imports live here only
            ...

An instance wires it into a pipeline: `StatisticsGen(examples=gen.outputs.examples)`.
Parameters are plain typed Python values (or a pipeline's runtime `Param`), never JSON.
The executor sees everything through `step`: `step.examples` is the input artifact,
`step.statistics` the output artifact (already pointing at its staging directory),
`step.exclude_splits` the resolved parameter value.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from components.artifacts import Artifact

A = TypeVar("A", bound=Artifact)
T = TypeVar("T")
QUEUE_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


class Input(Generic[A]):
    """A required input artifact."""


class OptionalInput(Generic[A]):
    """An input artifact that may be left unconnected (the executor then sees None)."""


class Output(Generic[A]):
    """An output artifact, written by the executor into its staging directory."""


class Parameter(Generic[T]):
    """An execution parameter: a typed value, part of the cache key."""


class ExternalPath(str):
    """A parameter type for a file or directory outside the pipeline (a user module, a
    curated schema). The cache key uses its content, so an edit re-runs the step."""


class ComponentDefinitionError(ValueError):
    """A component or pipeline is wired wrongly; raised when it is defined, not run."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: type[Artifact]
    optional: bool


@dataclass(frozen=True)
class OutputSpec:
    name: str
    type: type[Artifact]


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    type: Any
    default: Any
    required: bool


@dataclass(frozen=True)
class Channel:
    """A component's output, used as another component's input."""

    producer: "Component"
    key: str
    type: type[Artifact]

    def __repr__(self) -> str:
        return f"{self.producer.id}.outputs.{self.key} ({self.type.__name__})"


@dataclass(frozen=True)
class Param:
    """A pipeline runtime parameter: set from the CLI (--param), Airflow's trigger form, or
    the REST API, under the same name. Pass it as a component parameter's value.
    `minimum`, `maximum` and `choices` bound it, here and in Airflow's form alike."""

    name: str
    type: type
    default: Any
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None

    def coerce(self, value: Any) -> Any:
        what = f"pipeline parameter {self.name!r}"
        value = coerce_value(value, self.type, what)
        if self.minimum is not None and value is not None and value < self.minimum:
            raise ValueError(f"{what}: {value!r} is below its minimum {self.minimum!r}")
        if self.maximum is not None and value is not None and value > self.maximum:
            raise ValueError(f"{what}: {value!r} is above its maximum {self.maximum!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{what}: {value!r} is not one of {list(self.choices)}")
        return value


def coerce_value(value: Any, expected: Any, what: str) -> Any:
    """Checks (and for text from a command line, converts) a value to a parameter type."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(expected):
            return None
        errors = []
        for option in typing.get_args(expected):
            if option is type(None):
                continue
            try:
                return coerce_value(value, option, what)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError(f"{what}: {value!r} matches none of {expected}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{what}: expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(expected) or (Any,)
        return [coerce_value(v, item_type, what) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{what}: expected a mapping, got {value!r}")
        return dict(value)
    if expected is Any or expected is None:
        return value
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TypeError(f"{what}: expected true or false, got {value!r}")
    if expected is int:
        number = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value)
            except ValueError:
                pass
        if number is None:
            raise TypeError(f"{what}: expected an integer, got {value!r}")
        if not -2**63 <= number < 2**63:  # what ML Metadata and TF can hold (int64)
            raise ValueError(f"{what}: {number} is outside the 64-bit integer range")
        return number
    if expected is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise TypeError(f"{what}: expected a number, got {value!r}")
        if not math.isfinite(number):  # NaN passes every bound check; inf no threshold means
            raise ValueError(f"{what}: {value!r} is not a finite number")
        return number
    if isinstance(expected, type) and issubclass(expected, str):
        if not isinstance(value, str):
            raise TypeError(f"{what}: expected text, got {value!r}")
        return expected(value)
    if isinstance(expected, type) and not isinstance(value, expected):
        raise TypeError(f"{what}: expected {expected.__name__}, got {value!r}")
    return value


def _spec_of(cls: type) -> tuple[dict[str, InputSpec], dict[str, OutputSpec], dict[str, ParameterSpec]]:
    inputs, outputs, params = {}, {}, {}
    hints = typing.get_type_hints(cls)
    for name, hint in hints.items():
        origin = typing.get_origin(hint)
        if origin in (Input, OptionalInput):
            (artifact_type,) = typing.get_args(hint)
            inputs[name] = InputSpec(name, artifact_type, optional=origin is OptionalInput)
        elif origin is Output:
            (artifact_type,) = typing.get_args(hint)
            outputs[name] = OutputSpec(name, artifact_type)
        elif origin is Parameter:
            (value_type,) = typing.get_args(hint)
            has_default = name in cls.__dict__ or any(name in base.__dict__ for base in cls.__mro__)
            default = getattr(cls, name, None)
            params[name] = ParameterSpec(name, value_type, default, required=not has_default)
    return inputs, outputs, params


class _Outputs:
    def __init__(self, channels: dict[str, Channel]):
        self._channels = channels

    def __getattr__(self, key: str) -> Channel:
        try:
            return self.__dict__["_channels"][key]
        except KeyError:
            raise AttributeError(f"no output {key!r}; outputs are {sorted(self._channels)}") from None

    def __iter__(self):
        return iter(self._channels.values())


class Component:
    """Base class of every component. See the module docstring for how to write one."""

    INPUTS: ClassVar[dict[str, InputSpec]] = {}
    OUTPUTS: ClassVar[dict[str, OutputSpec]] = {}
    PARAMETERS: ClassVar[dict[str, ParameterSpec]] = {}
    # True for components whose executor imports TensorFlow: the launcher imports it first,
    # with its start-up noise sent to the step's log (pipelines/quiet_import.py).
    imports_tensorflow: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.INPUTS, cls.OUTPUTS, cls.PARAMETERS = _spec_of(cls)
        overlap = set(cls.INPUTS) & set(cls.OUTPUTS)
        if overlap:
            raise ComponentDefinitionError(f"{cls.__name__}: {sorted(overlap)} both input and output")
        for name in [*cls.INPUTS, *cls.OUTPUTS, *cls.PARAMETERS]:
            clash = reserved_name_clash(name)
            if clash:
                raise ComponentDefinitionError(
                    f"{cls.__name__}: {name!r} cannot name an input, output or parameter: it "
                    f"is {clash}; choose another name (e.g. {cls.__name__.lower()}_{name})")

    def __init__(self, *, id: str | None = None, enable_cache: bool = True, **wiring: Any):
        self.id = id or type(self).__name__
        self.enable_cache = enable_cache
        self.queue: str | None = None
        self.inputs: dict[str, Channel | None] = {}
        self.parameters: dict[str, Any] = {}
        self.upstream_order: list[Component] = []
        cls = type(self)
        unknown = set(wiring) - set(cls.INPUTS) - set(cls.PARAMETERS)
        if unknown:
            raise ComponentDefinitionError(
                f"{self.id}: unknown argument(s) {sorted(unknown)}; inputs are "
                f"{sorted(cls.INPUTS)}, parameters are {sorted(cls.PARAMETERS)}")
        for name, spec in cls.INPUTS.items():
            channel = wiring.get(name)
            if channel is None:
                if not spec.optional:
                    raise ComponentDefinitionError(f"{self.id}: required input {name!r} "
                                                   f"({spec.type.__name__}) is not connected")
                self.inputs[name] = None
                continue
            if not isinstance(channel, Channel):
                raise ComponentDefinitionError(
                    f"{self.id}: input {name!r} must be another component's output "
                    f"(e.g. gen.outputs.examples), got {channel!r}")
            if not issubclass(channel.type, spec.type):
                raise ComponentDefinitionError(
                    f"{self.id}: input {name!r} expects {spec.type.__name__} but "
                    f"{channel.producer.id}.outputs.{channel.key} is {channel.type.__name__}")
            self.inputs[name] = channel
        for name, spec in cls.PARAMETERS.items():
            if name in wiring:
                value = wiring[name]
                if not isinstance(value, Param):
                    value = coerce_value(value, spec.type, f"{self.id}: parameter {name!r}")
                self.parameters[name] = value
            elif spec.required:
                raise ComponentDefinitionError(f"{self.id}: parameter {name!r} is required")
            else:
                self.parameters[name] = spec.default
        self.outputs = _Outputs({name: Channel(self, name, spec.type)
                                 for name, spec in cls.OUTPUTS.items()})

    def after(self, *others: "Component") -> "Component":
        """Orders this step after others without passing data (e.g. after validation)."""
        self.upstream_order.extend(others)
        return self

    def with_queue(self, queue: str) -> "Component":
        """Runs this step on the workers that serve `queue` (Airflow's operator `queue`,
        CeleryExecutor: `airflow celery worker --queues heavy`). Scheduling only: not part
        of the cache key. Raises ComponentDefinitionError for a name Celery cannot use."""
        if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
            raise ComponentDefinitionError(
                f"{self.id}: queue {queue!r} must be 1-200 letters, digits, '.', '_' or '-'")
        self.queue = queue
        return self

    @property
    def upstream(self) -> list["Component"]:
        producers = [c.producer for c in self.inputs.values() if c is not None]
        return list(dict.fromkeys(producers + self.upstream_order))

    def runtime_params(self) -> list[Param]:
        return [v for v in self.parameters.values() if isinstance(v, Param)]

    def resolve_parameters(self, values: dict[str, Any]) -> dict[str, Any]:
        """Parameter values for one run: runtime `Param`s take the run's value or default."""
        resolved = {}
        for name, value in self.parameters.items():
            if isinstance(value, Param):
                raw = values.get(value.name, value.default)
                value = coerce_value(raw, self.PARAMETERS[name].type,
                                     f"{self.id}: parameter {name!r} (from {value.name!r})")
            resolved[name] = value
        return resolved

    # -- the executor -------------------------------------------------------------------
    def pending(self, params: dict[str, Any], serving_dir: str,
                home_root: str = "") -> float | None:
        """Seconds to wait before this step can run to its end (an external process it
        watches, e.g. a rollout's bake window), or None (the default) to run now. Called by
        orchestrators that can wait without holding a worker (Airflow defers the task and
        calls it again); it may advance external state, never the metadata store. The local
        runner does not call it: the step's own `execute` waits."""
        return None

    def execute(self, step: "Step") -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement execute()")

    # -- caching --------------------------------------------------------------------------
    def code_fingerprint(self) -> str:
        """Changes when the code that runs this component changes: the source file of its
        class and of every base class (up to Component), with every module of the project
        those files import, transitively (see components.source_fingerprint). The project
        is this repository and the directory the class's top-level package lives in. A
        class with no source file (defined in a REPL) falls back to its qualified name."""
        from components.source_fingerprint import fingerprint_sources

        digest = hashlib.sha256()
        for qualname, path, search_dirs in self._class_sources():
            digest.update(qualname.encode())
            if path is not None:
                digest.update(fingerprint_sources(path, search_dirs).encode())
        return digest.hexdigest()

    def _class_sources(self) -> list[tuple[str, str | None, list[str]]]:
        """(qualified name, source file or None, import search dirs) of the class and its
        bases up to Component."""
        from components.source_fingerprint import PROJECT_ROOT

        found = []
        for cls in type(self).__mro__:
            if cls in (Component, Resolver, object):
                break
            try:
                path = inspect.getfile(cls)
            except TypeError:
                path = None
            if path is None or not os.path.isfile(path):
                found.append((cls.__qualname__, None, []))
                continue
            # Absolute imports resolve where the class's top-level package lives.
            import_root = os.path.dirname(os.path.abspath(path))
            for _ in range(cls.__module__.count(".")):
                import_root = os.path.dirname(import_root)
            found.append((cls.__qualname__, path, [PROJECT_ROOT, import_root]))
        return found

    def source_files(self, params: dict[str, Any]) -> list[str]:
        """Every file the cache key reads (code_fingerprint's and external_fingerprint's),
        so that a change during a step can be named. A directory parameter counts as
        itself."""
        from components.source_fingerprint import source_closure

        files: set[str] = set()
        for _, path, search_dirs in self._class_sources():
            if path is not None:
                files.update(source_closure(path, search_dirs))
        for name, spec in self.PARAMETERS.items():
            value = params.get(name)
            if spec.type is ExternalPath and value:
                if str(value).endswith(".py") and os.path.isfile(value):
                    files.update(source_closure(value, [os.path.dirname(os.path.abspath(value))]))
                else:
                    files.add(os.path.abspath(value))
        return sorted(files)

    def external_fingerprint(self, params: dict[str, Any]) -> str:
        """Fingerprint of what the step reads from outside the pipeline: the content of
        every ExternalPath parameter — for a Python file (a user module), with the modules
        it imports from its own directory, transitively. Components reading other files
        override this."""
        digest = hashlib.sha256()
        for name, spec in sorted(self.PARAMETERS.items()):
            if spec.type is ExternalPath and params.get(name):
                digest.update(name.encode())
                digest.update(fingerprint_external(params[name]).encode())
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"


def reserved_name_clash(name: str) -> str:
    """What a spec name would shadow (a field or method of Step, which executors read
    inputs, outputs and parameters through, or an attribute of Component), or ""."""
    import dataclasses

    step_fields = {f.name for f in dataclasses.fields(Step)}
    if name in step_fields or (hasattr(Step, name) and not name.startswith("__")):
        return f"a field of Step (step.{name} is the framework's)"
    component_attrs = {"id", "enable_cache", "queue", "inputs", "outputs", "parameters",
                       "upstream_order", "imports_tensorflow"}
    if name in component_attrs or (name in dir(Resolver) and not name.startswith("__")):
        return f"an attribute of Component"
    return ""


class Resolver(Component):
    """A node that picks existing artifacts from the metadata store instead of making new
    ones (e.g. the latest blessed model). It runs every time, imports nothing heavy, and is
    not cached: its answer is what the next steps' cache keys see."""

    def resolve(self, step: "Step") -> dict[str, Artifact | None]:
        raise NotImplementedError


def fingerprint_external(path: str) -> str:
    """A user module with its local imports (see components.source_fingerprint), or any
    other file or directory by content (fingerprint_path)."""
    if path.endswith(".py") and os.path.isfile(path):
        from components.source_fingerprint import fingerprint_sources

        return fingerprint_sources(path, [os.path.dirname(os.path.abspath(path))])
    return fingerprint_path(path)


def fingerprint_path(path: str) -> str:
    """Content hash of a file, or of every file below a directory (names and bytes)."""
    digest = hashlib.sha256()
    if not os.path.exists(path):
        return "missing:" + path
    if os.path.isfile(path):
        files = [path]
        root = os.path.dirname(path)
    else:
        root = path
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                       if "__pycache__" not in d)
    for file in files:
        digest.update(os.path.relpath(file, root).encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class Step:
    """What an executor sees: its inputs, outputs and parameters by name, and the run."""

    component: Component
    values: dict[str, Any]
    pipeline_name: str
    run_id: str
    home: str
    tmp_dir: str
    log: logging.Logger
    beam_args: list[str] = field(default_factory=list)
    serving_dir: str = ""  # the home's serving directory: <serving_dir>/<model>/<version>/
    metadata: Any = None  # pipelines.metadata.Metadata, for resolvers and history lookups
    outcome: str = "ok"
    outcome_reason: str = ""
    notes: list[str] = field(default_factory=list)
    started_at: float = 0.0  # time.monotonic() when the launcher started the step

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"{self.__dict__.get('component')!r} has no input, output or "
                             f"parameter {name!r}")

    def note(self, text: str) -> None:
        """Adds a key fact to the step's one-line summary (console line, run summary, Airflow
        XCom), e.g. "validated by pipewright". Kept with the execution, so a cached reuse
        shows it too."""
        self.notes.append(text)
        self.log.info("%s", text)

    def check_not_interrupted(self) -> None:
        """Raises StepInterrupted if a termination signal arrived since the step started:
        call it before an effect outside the staging directory (e.g. a push)."""
        from components.interruption import check_not_interrupted

        check_not_interrupted(self.started_at, "its effect outside the staging directory")

    def skip(self, reason: str) -> None:
        """Marks the step skipped (e.g. Pusher without a blessing); outputs still publish."""
        self.outcome, self.outcome_reason = "skipped", reason
        self.log.info("skipped: %s", reason)

    def halt(self, reason: str) -> None:
        """Publishes the outputs, then stops the run before anything downstream."""
        self.outcome, self.outcome_reason = "halted", reason
