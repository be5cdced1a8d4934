"""Small pipelines of custom components for the framework-core tests. Each component is a
real one: it writes files, reads its inputs, and goes through the real launcher and MLMD."""
from __future__ import annotations

import os
import time

from components.artifacts import Artifact
from components.base import Component, Input, OptionalInput, Output, Parameter, Param, Step
from pipelines.pipeline import Pipeline


class Numbers(Artifact):
    """A text file of integers."""

    PROPERTIES = {"count": int}


class MakeNumbers(Component):
    """Writes the integers 0..count-1 to numbers.txt."""

    numbers: Output[Numbers]
    count: Parameter[int] = 3

    def execute(self, step: Step) -> None:
        with open(step.numbers.path("numbers.txt"), "w") as fh:
            fh.write("\n".join(str(i) for i in range(step.count)))
        step.numbers.set(count=step.count)


class Scale(Component):
    """Multiplies every number by a factor. Set PIPEWRIGHT_TEST_SLOW_SCALE=<marker file>
    to make it write half its output, touch the marker, and hang (to be killed)."""

    numbers: Input[Numbers]
    scaled: Output[Numbers]
    factor: Parameter[int] = 2
    fail: Parameter[bool] = False

    def execute(self, step: Step) -> None:
        with open(step.numbers.path("numbers.txt")) as fh:
            values = [int(x) * step.factor for x in fh.read().split()]
        with open(step.scaled.path("numbers.txt"), "w") as out:
            out.write(str(values[0]))  # a partial result, as a crash mid-way would leave
            out.flush()
            marker = os.environ.get("PIPEWRIGHT_TEST_SLOW_SCALE")
            if marker:
                open(marker, "w").close()
                time.sleep(600)
            if step.fail:
                raise RuntimeError("injected failure after a partial write")
            out.write("\n" + "\n".join(str(v) for v in values[1:]))
        step.scaled.set(count=len(values))


class Total(Component):
    """Adds up the numbers (and an optional second list)."""

    numbers: Input[Numbers]
    more: OptionalInput[Numbers]
    total: Output[Numbers]

    def execute(self, step: Step) -> None:
        total = 0
        for artifact in (step.numbers, step.more):
            if artifact is not None:
                with open(artifact.path("numbers.txt")) as fh:
                    total += sum(int(x) for x in fh.read().split())
        with open(step.total.path("numbers.txt"), "w") as fh:
            fh.write(str(total))
        step.total.set(count=1)


def create_pipeline() -> Pipeline:
    count, factor, fail = Param("count", int, 3), Param("factor", int, 2), Param("fail", bool, False)
    make = MakeNumbers(count=count)
    scale = Scale(numbers=make.outputs.numbers, factor=factor, fail=fail)
    total = Total(numbers=make.outputs.numbers, more=scale.outputs.scaled)
    return Pipeline("numbers", [make, scale, total], parameters=[count, factor, fail])
