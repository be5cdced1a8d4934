"""A model's rollout policy (`<base path>/rollout.json`) and the routing it implies.

The Pusher, the rollout controller and `pipewright rollout` write the file atomically (temp
file + os.replace) beside the numeric version directories; the model manager reads it with each
poll of the base path (serving/model_manager.py). Without the file nothing changes: the newest
version serves every request. docs/rollout.md gives the contract; in short:

    {"strategy": "canary", "stable_version": 1, "candidate_version": 2,
     "candidate_percent": 10, "shadow_percent": 0, "hold_versions": [],
     "steps_percent": [10, 50, 100], "bake_seconds": 600,
     "guards": {"max_error_rate_ratio": 1.5}, "state": "baking", "generation": 3}

parse_policy validates it into an immutable RolloutPolicy; an invalid file raises RolloutError
naming the file and the field, and the manager keeps the last good policy. Routes is what the
manager publishes per model once versions are loaded: the servables the policy routes to,
swapped whole (like the serving map) so request threads never lock. route() is the one routing
decision, for unpinned Predict / Classify / Regress calls:

  - strategy canary: the candidate with probability candidate_percent / 100, else stable;
    every other strategy: stable (a candidate_percent there is ignored, and the model manager
    says so in its log);
  - shadow_percent: of the requests routed to stable, this share is ALSO run on the candidate
    (the client gets the stable answer only);
  - both draws are deterministic in the client's request key (REST header X-Request-Key, gRPC
    metadata x-request-key) when one is sent: the key is hashed (BLAKE2b, one salt per draw)
    to a point of [0, 100), so one key always lands on the same side, and a key routed to the
    candidate at 10 % still is at 25 %; without a key the draws are random;
  - only an AVAILABLE candidate (loaded and warmed up) is routed to; until then, or when it
    failed to load, stable serves 100 %.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from types import MappingProxyType

log = logging.getLogger(__name__)

ROLLOUT_FILE = "rollout.json"
REQUEST_KEY = "x-request-key"  # REST header X-Request-Key, gRPC metadata key x-request-key

IMMEDIATE, SHADOW, CANARY, BLUE_GREEN = "immediate", "shadow", "canary", "blue_green"
STRATEGIES = (IMMEDIATE, SHADOW, CANARY, BLUE_GREEN)
STATES = ("loading", "baking", "promoted", "rolled_back", "aborted")
GUARDS = frozenset({"max_error_rate_ratio", "max_latency_p99_ratio", "max_prediction_distance",
                    "min_shadow_agreement", "min_live_accuracy"})
# The controller's bookkeeping: accepted and ignored by the server.
BOOKKEEPING = frozenset({"step_index", "reason", "updated_at", "window"})
FIELDS = frozenset({"strategy", "stable_version", "candidate_version", "candidate_percent",
                    "shadow_percent", "hold_versions", "steps_percent", "bake_seconds", "guards",
                    "state", "generation"})

# Version labels naming the policy's versions (ModelSpec.version_label).
STABLE_LABEL, CANARY_LABEL = "stable", "canary"
# route label values (:pipewright:serving:route_count{route}).
ROUTE_STABLE, ROUTE_CANARY, ROUTE_PINNED, ROUTE_SHADOW = "stable", "canary", "pinned", "shadow"

_CANARY_SALT, _SHADOW_SALT = b"canary", b"shadow"


class RolloutError(ValueError):
    """An invalid rollout file: path (the file), field (the top-level key at fault, None for
    the file as a whole) and problem; str() reads "<path>: field '<field>': <problem>"."""

    def __init__(self, path: str, field_name: str | None, problem: str):
        self.path, self.field, self.problem = path, field_name, problem
        where = f"field '{field_name}': " if field_name else ""
        super().__init__(f"{path}: {where}{problem}")


@dataclass(frozen=True)
class RolloutPolicy:
    """A validated rollout.json. Percentages are floats in [0, 100]; versions are ints;
    guards a read-only {name: threshold}."""

    strategy: str
    stable_version: int
    candidate_version: int | None = None
    candidate_percent: float = 0.0
    shadow_percent: float = 0.0
    hold_versions: tuple[int, ...] = ()
    steps_percent: tuple[float, ...] = ()
    bake_seconds: float | None = None
    guards: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    state: str | None = None
    generation: int = 0

    @property
    def aspired_versions(self) -> frozenset[int]:
        """The versions to keep loaded: stable, candidate and the held ones."""
        versions = {self.stable_version, *self.hold_versions}
        if self.candidate_version is not None:
            versions.add(self.candidate_version)
        return frozenset(versions)

    @property
    def labels(self) -> dict[str, int]:
        """{"stable": stable_version, "canary": candidate_version (when there is one)}."""
        labels = {STABLE_LABEL: self.stable_version}
        if self.candidate_version is not None:
            labels[CANARY_LABEL] = self.candidate_version
        return labels


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def parse_policy(data, path: str, versions_on_disk=None) -> RolloutPolicy:
    """A decoded rollout.json (data) -> RolloutPolicy. path names the file in errors;
    versions_on_disk (a set of ints, None: unchecked) are the version directories that exist.
    Raises RolloutError for a missing or ill-typed field, a share outside [0, 100], steps not
    strictly increasing in (0, 100], an unknown guard or top-level key, or a stable/candidate
    version that is not on disk."""
    def fail(name, problem):
        raise RolloutError(path, name, problem)

    if not isinstance(data, dict):
        fail(None, f"expected a JSON object, got {type(data).__name__}")
    for key in data:
        if key not in FIELDS and key not in BOOKKEEPING:
            fail(key, f"unknown key (known: {', '.join(sorted(FIELDS | BOOKKEEPING))})")
    for required in ("strategy", "stable_version"):
        if required not in data:
            fail(required, "missing (required)")

    strategy = data["strategy"]
    if strategy not in STRATEGIES:
        fail("strategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}")

    def version(name):
        value = data.get(name)
        if not _is_int(value) or value < 0:
            fail(name, f"expected an integer >= 0, got {value!r}")
        if versions_on_disk is not None and value not in versions_on_disk:
            fail(name, f"version {value} has no directory in {os.path.dirname(path) or '.'}")
        return value

    stable = version("stable_version")
    candidate = None
    if data.get("candidate_version") is not None:
        candidate = version("candidate_version")
        if candidate == stable:
            fail("candidate_version", f"equals stable_version ({stable})")

    def percent(name):
        value = data.get(name, 0)
        if not _is_number(value) or not 0 <= value <= 100:
            fail(name, f"expected a number in [0, 100], got {value!r}")
        return float(value)

    candidate_percent = percent("candidate_percent")
    shadow_percent = percent("shadow_percent")
    if candidate is None and candidate_percent > 0:
        fail("candidate_percent", f"is {candidate_percent:g} but there is no candidate_version")
    if strategy == SHADOW and candidate_percent > 0:
        fail("candidate_percent", f"is {candidate_percent:g} but strategy shadow routes no "
                                  "request to the candidate (use shadow_percent)")
    if candidate is None and shadow_percent > 0:
        fail("shadow_percent", f"is {shadow_percent:g} but there is no candidate_version")

    holds = data.get("hold_versions", [])
    if not isinstance(holds, list) or not all(_is_int(v) and v >= 0 for v in holds):
        fail("hold_versions", f"expected a list of integers >= 0, got {holds!r}")

    steps = data.get("steps_percent", [])
    if not isinstance(steps, list) or not all(_is_number(v) and 0 < v <= 100 for v in steps):
        fail("steps_percent", f"expected a list of numbers in (0, 100], got {steps!r}")
    for before, after in zip(steps, steps[1:]):
        if after <= before:
            fail("steps_percent", f"not strictly increasing: {before:g} then {after:g}")

    bake = data.get("bake_seconds")
    if bake is not None and (not _is_number(bake) or bake <= 0):
        fail("bake_seconds", f"expected a number > 0, got {bake!r}")

    guards = data.get("guards", {})
    if not isinstance(guards, dict):
        fail("guards", f"expected an object of guard name -> threshold, got {guards!r}")
    for name, threshold in guards.items():
        if name not in GUARDS:
            fail("guards", f"unknown guard {name!r} (known: {', '.join(sorted(GUARDS))})")
        if not _is_number(threshold):
            fail("guards", f"threshold of {name} must be a number, got {threshold!r}")
        if threshold < 0 or (name.startswith("min_") and threshold > 1):
            fail("guards", f"threshold of {name} is {threshold!r}: a guard that can never pass "
                           f"(ratios and distances are >= 0, shares <= 1)")

    state = data.get("state")
    if state is not None and state not in STATES:
        fail("state", f"{state!r} is not one of {', '.join(STATES)}")
    generation = data.get("generation", 0)
    if not _is_int(generation) or generation < 0:
        fail("generation", f"expected an integer >= 0, got {generation!r}")

    return RolloutPolicy(
        strategy=strategy, stable_version=stable, candidate_version=candidate,
        candidate_percent=candidate_percent, shadow_percent=shadow_percent,
        hold_versions=tuple(dict.fromkeys(holds)), steps_percent=tuple(float(s) for s in steps),
        bake_seconds=None if bake is None else float(bake),
        guards=MappingProxyType({k: float(v) for k, v in guards.items()}),
        state=state, generation=generation)


def read_policy(base_path: str, versions_on_disk=None) -> RolloutPolicy | None:
    """`<base_path>/rollout.json` -> RolloutPolicy; None when there is no such file. Raises
    RolloutError (unreadable, not JSON, or invalid as parse_policy says)."""
    path = os.path.join(base_path, ROLLOUT_FILE)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RolloutError(path, None, f"cannot be read: {e.strerror}") from None
    try:
        data = json.loads(raw, object_pairs_hook=unique_keys)
    except (ValueError, UnicodeDecodeError) as e:
        raise RolloutError(path, None, f"not valid JSON: {e}") from None
    except RecursionError:
        raise RolloutError(path, None, "not valid JSON: nested too deeply") from None
    return parse_policy(data, path, versions_on_disk)


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object_pairs_hook: a key given twice is an error (json keeps the last silently,
    so a hand-edited file could say `candidate_percent` twice and mean the first)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def key_point(key: str, salt: bytes) -> float:
    """A request key's point of [0, 100): BLAKE2b-64 of salt + key, scaled. The same key and
    salt give the same point in every process and run."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8,
                             person=salt).digest()
    return int.from_bytes(digest, "big") * (100.0 / 2 ** 64)


@dataclass(frozen=True)
class Routes:
    """What unpinned calls of one model are routed to, given what is loaded now.

    policy: the policy in effect; stable: the servable unpinned calls get (policy.stable_version
    when it is AVAILABLE, else `fallback` says which version serves instead and why);
    candidate: the candidate's servable when AVAILABLE, else None (then stable serves 100 %).
    """

    policy: RolloutPolicy
    stable: object
    candidate: object | None = None
    fallback: str | None = None

    def route(self, key: str | None):
        """(servable, route label, shadow servable or None) for one unpinned call."""
        policy, candidate = self.policy, self.candidate
        if candidate is None:
            return self.stable, ROUTE_STABLE, None
        if policy.candidate_percent > 0 and policy.strategy == CANARY:
            point = random.random() * 100 if key is None else key_point(key, _CANARY_SALT)
            if point < policy.candidate_percent:
                return candidate, ROUTE_CANARY, None
        if policy.shadow_percent > 0:
            point = random.random() * 100 if key is None else key_point(key, _SHADOW_SALT)
            if point < policy.shadow_percent:
                return self.stable, ROUTE_STABLE, candidate
        return self.stable, ROUTE_STABLE, None


def build_routes(policy: RolloutPolicy, available: dict, previous: Routes | None) -> Routes | None:
    """Routes for policy over the available servables ({version: servable}); None when nothing
    is available. When policy.stable_version is not AVAILABLE (still loading, or it failed),
    stable falls back to the previous stable if still loaded, else the newest available version
    other than the candidate, else the candidate; the fallback is named in Routes.fallback."""
    if not available:
        return None
    stable = available.get(policy.stable_version)
    candidate_version = policy.candidate_version
    candidate = available.get(candidate_version) if candidate_version is not None else None
    fallback = None
    if stable is None:
        prior = previous.stable if previous is not None else None
        if prior is not None and available.get(prior.version) is prior and \
                prior.version != candidate_version:
            stable = prior
        else:
            others = [v for v in available if v != candidate_version]
            stable = available[max(others)] if others else candidate
        fallback = (f"stable_version {policy.stable_version} is not available; version "
                    f"{stable.version} serves unpinned requests")
    if candidate is stable:
        candidate = None
    return Routes(policy, stable, candidate, fallback)
