"""`<model base path>/rollout.json`: how the model server splits traffic between the stable
model and a candidate, written by the Pusher, the Rollout step and `pipewright rollout`.

The file sits beside the numeric version directories (its name is no number, so TF Serving's
file-system source ignores it) and is replaced atomically (temp file, then os.replace), so the
model server, which polls it with the base path, reads either the old or the new policy. The
server's reading is serving/rollout.py; docs/rollout.md describes every field. TF Serving
itself has only version labels (model_server_config.proto `version_labels`; a weighted split
was declined upstream), so the split is this project's extension; the labels `stable` and
`canary` name the two versions for clients that pin one.

Errors: RolloutConfigError (a ValueError) names the field and the file.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

from serving.rollout import unique_keys  # the server's JSON rule, so writer and server agree

ROLLOUT_FILE = "rollout.json"
IMMEDIATE, SHADOW, CANARY, BLUE_GREEN = "immediate", "shadow", "canary", "blue_green"
STRATEGIES = (IMMEDIATE, SHADOW, CANARY, BLUE_GREEN)
LOADING, BAKING, PROMOTED, ROLLED_BACK, ABORTED = (
    "loading", "baking", "promoted", "rolled_back", "aborted")
FINAL_STATES = (PROMOTED, ROLLED_BACK, ABORTED)
# Guard name -> (direction, what it compares); serving/rollout.py accepts the same names.
GUARDS = {
    "max_error_rate_ratio": "candidate error rate / stable error rate (each at least 1 %)",
    "max_latency_p99_ratio": "candidate latency p99 / stable latency p99",
    "max_prediction_distance": "L-infinity distance between the predicted-class shares",
    "min_shadow_agreement": "share of shadowed rows where both predict the same class",
    "min_live_accuracy": "candidate accuracy on delayed labels (when any arrived)",
}
DEFAULT_GUARDS = {"max_error_rate_ratio": 2.0, "max_latency_p99_ratio": 2.0,
                  "max_prediction_distance": 0.25}
DEFAULT_STEPS = (5.0, 25.0, 50.0, 100.0)


class RolloutConfigError(ValueError):
    """A rollout setting or file is invalid; the message names the field."""


@dataclass
class RolloutPolicy:
    """One rollout.json. Versions are TF Serving version numbers (int64); shares are percent
    of requests in [0, 100]; seconds are wall-clock seconds. See docs/rollout.md."""

    strategy: str
    stable_version: int
    candidate_version: int | None = None
    candidate_percent: float = 0.0
    shadow_percent: float = 0.0
    hold_versions: list[int] = field(default_factory=list)
    steps_percent: list[float] = field(default_factory=lambda: list(DEFAULT_STEPS))
    bake_seconds: float = 600.0
    guards: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GUARDS))
    state: str = PROMOTED
    generation: int = 0
    step_index: int = 0
    reason: str = ""
    updated_at: float = 0.0
    window: dict = field(default_factory=dict)

    @property
    def in_progress(self) -> bool:
        """A candidate is being rolled out (or a blue-green switch is baking)."""
        return self.state not in FINAL_STATES and (
            self.candidate_version is not None or self.window.get("phase") == "switched")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise RolloutConfigError(f"rollout: unknown strategy {strategy!r}; one of "
                                 f"{', '.join(STRATEGIES)}")
    return strategy


def check_steps(steps, where: str = "steps_percent") -> list[float]:
    """Strictly increasing shares in (0, 100]; raises RolloutConfigError naming `where`."""
    if not isinstance(steps, (list, tuple)):
        raise RolloutConfigError(f"{where}: expected a list of shares, got {steps!r}")
    values = [_number(v, f"{where}[{i}]") for i, v in enumerate(steps)]
    if not values:
        raise RolloutConfigError(f"{where}: at least one step is needed")
    for i, value in enumerate(values):
        if not 0 < value <= 100:
            raise RolloutConfigError(f"{where}[{i}] = {value}: a share must be in (0, 100]")
        if i and value <= values[i - 1]:
            raise RolloutConfigError(f"{where}[{i}] = {value}: steps must increase "
                                     f"(after {values[i - 1]})")
    return values


def check_guards(guards: dict, where: str = "guards") -> dict[str, float]:
    if not isinstance(guards, dict):
        raise RolloutConfigError(f"{where}: expected an object of guard -> threshold")
    checked = {}
    for name, threshold in guards.items():
        if name not in GUARDS:
            raise RolloutConfigError(f"{where}.{name}: unknown guard; known: "
                                     f"{', '.join(sorted(GUARDS))}")
        value = _number(threshold, f"{where}.{name}")
        if value < 0 or (name.startswith("min_") and value > 1):
            raise RolloutConfigError(f"{where}.{name} = {value}: out of range")
        checked[name] = value
    return checked


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
            or value in (float("inf"), float("-inf")):
        raise RolloutConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _version(value, where: str, required: bool = True) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise RolloutConfigError(f"{where}: expected a version number (int64 >= 0), "
                                 f"got {value!r}")
    return value


def policy_path(base_path: str) -> str:
    return os.path.join(base_path, ROLLOUT_FILE)


def read_policy(base_path: str) -> RolloutPolicy | None:
    """The policy in `<base_path>/rollout.json`, or None when there is none. Raises
    RolloutConfigError naming the file and field when it does not parse or validate."""
    path = policy_path(base_path)
    try:
        with open(path, encoding="utf-8-sig") as fh:  # a BOM, as the server, is fine
            raw = json.load(fh, object_pairs_hook=unique_keys)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise RolloutConfigError(f"{path}: is a directory, not a rollout file") from None
    except (OSError, ValueError) as exc:
        raise RolloutConfigError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise RolloutConfigError(f"{path}: not valid JSON: nested too deeply") from None
    try:
        return parse_policy(raw)
    except RolloutConfigError as exc:
        raise RolloutConfigError(f"{path}: {exc}") from None


def parse_policy(raw) -> RolloutPolicy:
    if not isinstance(raw, dict):
        raise RolloutConfigError("expected a JSON object")
    known = {f for f in RolloutPolicy.__dataclass_fields__}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RolloutConfigError(f"unknown field {unknown[0]!r}")
    if "strategy" not in raw or "stable_version" not in raw:
        raise RolloutConfigError("strategy and stable_version are required")
    policy = RolloutPolicy(strategy=check_strategy(raw["strategy"]),
                           stable_version=_version(raw["stable_version"], "stable_version"))
    policy.candidate_version = _version(raw.get("candidate_version"), "candidate_version",
                                        required=False)
    if policy.candidate_version == policy.stable_version:
        raise RolloutConfigError("candidate_version: equals stable_version")
    for name in ("candidate_percent", "shadow_percent"):
        value = _number(raw.get(name, 0.0), name)
        if not 0 <= value <= 100:
            raise RolloutConfigError(f"{name} = {value}: must be in [0, 100]")
        setattr(policy, name, value)
    if policy.candidate_version is None and policy.candidate_percent + policy.shadow_percent > 0:
        raise RolloutConfigError("candidate_percent / shadow_percent: set, but there is no "
                                 "candidate_version")
    if policy.strategy == SHADOW and policy.candidate_percent > 0:
        raise RolloutConfigError("candidate_percent: strategy shadow routes no request to the "
                                 "candidate (use shadow_percent)")
    holds = raw.get("hold_versions", [])
    if not isinstance(holds, list):
        raise RolloutConfigError("hold_versions: expected a list of versions")
    policy.hold_versions = [_version(v, f"hold_versions[{i}]") for i, v in enumerate(holds)]
    policy.steps_percent = check_steps(raw.get("steps_percent", list(DEFAULT_STEPS)))
    policy.bake_seconds = _number(raw.get("bake_seconds", 600.0), "bake_seconds")
    if policy.bake_seconds <= 0:
        raise RolloutConfigError(f"bake_seconds = {policy.bake_seconds}: must be > 0")
    policy.guards = check_guards(raw.get("guards", dict(DEFAULT_GUARDS)))
    state = raw.get("state", PROMOTED)
    if state not in (LOADING, BAKING) + FINAL_STATES:
        raise RolloutConfigError(f"state: unknown {state!r}")
    policy.state = state
    for name in ("generation", "step_index"):
        value = raw.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RolloutConfigError(f"{name}: expected an int >= 0, got {value!r}")
        setattr(policy, name, value)
    if policy.step_index >= len(policy.steps_percent):
        raise RolloutConfigError(f"step_index = {policy.step_index}: only "
                                 f"{len(policy.steps_percent)} steps")
    policy.reason = str(raw.get("reason", ""))
    policy.updated_at = _number(raw.get("updated_at", 0.0), "updated_at")
    window = raw.get("window", {})
    if not isinstance(window, dict):
        raise RolloutConfigError("window: expected an object")
    policy.window = window
    return policy


def write_policy(base_path: str, policy: RolloutPolicy) -> RolloutPolicy:
    """Writes the policy atomically with the next generation and the time; returns it.
    The versions it names must be directories under `base_path` (RolloutConfigError)."""
    for name, version in (("stable_version", policy.stable_version),
                          ("candidate_version", policy.candidate_version),
                          *((f"hold_versions[{i}]", v)
                            for i, v in enumerate(policy.hold_versions))):
        if version is not None and not os.path.isdir(os.path.join(base_path, str(version))):
            raise RolloutConfigError(f"{policy_path(base_path)}: {name} = {version}: no "
                                     f"such version directory in {base_path}")
    policy.generation += 1
    policy.updated_at = time.time()
    parse_policy(json.loads(policy.to_json()))  # what the server will read must validate
    path = policy_path(base_path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(policy.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return policy


def served_version(base_path: str, versions_on_disk: list[int]) -> int | None:
    """The version serving unpinned traffic: the policy's stable version when a rollout.json
    exists, else the highest version on disk (TF Serving's default policy), else None."""
    policy = read_policy(base_path)
    if policy is not None:
        return policy.stable_version
    return versions_on_disk[-1] if versions_on_disk else None
