"""A pipeline: components whose wiring forms a DAG, plus its runtime parameters."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from components.base import Component, ComponentDefinitionError, Param

DEFAULT_SCHEDULE = "0 2 * * *"  # nightly retraining, 02:00 UTC


@dataclass
class Pipeline:
    name: str
    components: list[Component]
    parameters: list[Param] = field(default_factory=list)
    beam_args: list[str] = field(default_factory=list)
    schedule: str | None = DEFAULT_SCHEDULE
    description: str = ""

    def __post_init__(self) -> None:
        self._check_ids()
        self._check_inputs_present()
        self.order = self._topological_order()
        self._check_parameters()

    # -- validation -------------------------------------------------------------------------
    def _check_ids(self) -> None:
        seen: dict[str, Component] = {}
        for component in self.components:
            if component.id in seen:
                raise ComponentDefinitionError(
                    f"pipeline {self.name!r}: duplicate component id {component.id!r} "
                    f"({seen[component.id]!r} and {component!r}); pass id=... to tell them apart")
            seen[component.id] = component

    def _check_inputs_present(self) -> None:
        members = {id(c) for c in self.components}
        for component in self.components:
            for key, channel in component.inputs.items():
                if channel is not None and id(channel.producer) not in members:
                    raise ComponentDefinitionError(
                        f"pipeline {self.name!r}: {component.id}.{key} reads {channel!r}, but "
                        f"{channel.producer.id!r} is not in the pipeline")
            for other in component.upstream_order:
                if id(other) not in members:
                    raise ComponentDefinitionError(
                        f"pipeline {self.name!r}: {component.id} runs after {other.id!r}, "
                        f"which is not in the pipeline")

    def _topological_order(self) -> list[Component]:
        order: list[Component] = []
        state: dict[int, str] = {}

        def visit(node: Component, path: list[Component]) -> None:
            mark = state.get(id(node))
            if mark == "done":
                return
            if mark == "active":
                cycle = path[path.index(node):] + [node]
                raise ComponentDefinitionError(
                    f"pipeline {self.name!r}: cycle " + " -> ".join(c.id for c in cycle))
            state[id(node)] = "active"
            for upstream in node.upstream:
                visit(upstream, path + [node])
            state[id(node)] = "done"
            order.append(node)

        for component in self.components:
            visit(component, [])
        return order

    def _check_parameters(self) -> None:
        declared = {p.name: p for p in self.parameters}
        if len(declared) != len(self.parameters):
            raise ComponentDefinitionError(f"pipeline {self.name!r}: duplicate parameter names")
        for component in self.components:
            for param in component.runtime_params():
                if param.name not in declared:
                    raise ComponentDefinitionError(
                        f"pipeline {self.name!r}: {component.id} uses parameter {param.name!r}, "
                        f"which the pipeline does not declare in parameters=[...]")

    # -- lookups ------------------------------------------------------------------------------
    def component(self, component_id: str) -> Component:
        for component in self.components:
            if component.id == component_id:
                return component
        raise KeyError(f"pipeline {self.name!r} has no component {component_id!r}; "
                       f"it has {[c.id for c in self.components]}")

    def downstream(self, component: Component) -> list[Component]:
        return [c for c in self.order if component in c.upstream]

    def upstream_closure(self, component_ids: list[str] | tuple[str, ...]) -> list[Component]:
        """The named steps and every step they depend on (through an input or `.after`),
        transitively, in pipeline order — TFX partial runs' `to_nodes` sweep
        (tfx/orchestration/portable/partial_run_utils.py, compute_nodes_to_run). Raises
        KeyError naming an unknown step and listing the pipeline's steps."""
        wanted: set[int] = set()
        stack = [self.component(cid) for cid in component_ids]
        while stack:
            node = stack.pop()
            if id(node) not in wanted:
                wanted.add(id(node))
                stack.extend(node.upstream)
        return [c for c in self.order if id(c) in wanted]

    def with_defaults(self, **defaults: Any) -> "Pipeline":
        """A copy of this pipeline whose runtime parameters default to `defaults` (each
        checked as a run's value would be) — for a DAG whose runs that nobody triggers by
        hand (the schedule, an asset event) should use other values than the pipeline's,
        e.g. `build_dag(registry.load("penguin").with_defaults(rollout="shadow"))`. The
        components are shared, not copied. Raises KeyError naming an unknown parameter,
        TypeError / ValueError for a value its Param refuses."""
        declared = {p.name for p in self.parameters}
        unknown = sorted(set(defaults) - declared)
        if unknown:
            raise KeyError(f"pipeline {self.name!r} has no parameter(s) {unknown}; "
                           f"its parameters are {sorted(declared)}")
        parameters = [dataclasses.replace(p, default=p.coerce(defaults[p.name]))
                      if p.name in defaults else p for p in self.parameters]
        return dataclasses.replace(self, parameters=parameters)

    def resolve_params(self, values: dict[str, Any] | None) -> dict[str, Any]:
        """The run's parameter values: defaults overridden by `values`, type-checked.
        An unknown name is an error that lists the known ones."""
        values = dict(values or {})
        declared = {p.name: p for p in self.parameters}
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise KeyError(f"pipeline {self.name!r} has no parameter(s) {unknown}; "
                           f"its parameters are {sorted(declared)}")
        return {name: p.coerce(values.get(name, p.default)) for name, p in declared.items()}
