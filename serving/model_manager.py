"""Model versions on disk -> loaded servables, with TF Serving's lifecycle rules.

- Each model's base path is polled; children whose name parses as an int64 are versions,
  anything else (".tmp-*" directories a Pusher is still writing, numbers beyond int64) is
  ignored, so a version only appears once its directory is renamed into place, complete.
- The version policy (latest N, all, specific) picks the aspired versions.
- AvailabilityPreservingPolicy: a new version is loaded (and warmed up) before an old one is
  unloaded; an old version is unloaded only once an aspired version serves, or when nothing is
  aspired at all. A version that fails to load is retried (--max_num_load_retries) and then
  reported as END with its error, while the versions already serving go on serving.
- Labels are resolved when a config is applied, and may only name AVAILABLE versions (unless
  --allow_version_labels_for_unavailable_models), as in ServerCore.
- The serving map is an immutable snapshot swapped atomically, so request threads never lock.
- A model's `<base path>/rollout.json` (serving/rollout.py), read with each poll, replaces the
  version policy: the aspired versions are its stable, candidate and held versions, labels
  "stable" and "canary" name the first two, and unpinned calls are routed by its Routes
  (published atomically beside the serving map). A file that fails validation is logged with
  its path and field and the last good policy stays in effect; a file that disappears ends
  the rollout (the version policy applies again).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from serving import errors
from serving.config import validate_model_config_list
from serving.errors import ServingError
from serving.ints import safe_strto64
from serving.rollout import ROLLOUT_FILE, RolloutError, Routes, build_routes, read_policy

log = logging.getLogger(__name__)

# ModelVersionStatus.State
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50
STATE_NAMES = {0: "UNKNOWN", START: "START", LOADING: "LOADING", AVAILABLE: "AVAILABLE",
               UNLOADING: "UNLOADING", END: "END"}


@dataclass
class VersionRecord:
    version: int
    path: str
    state: int = START
    error: ServingError | None = None
    servable: object = None
    aspired: bool = True
    attempts: int = 0
    retry_at: float = 0.0

    @property
    def managed(self) -> bool:
        return self.state != END


@dataclass
class ModelState:
    config: object  # ModelConfig proto
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    rollout: object = None          # the RolloutPolicy in effect (the last good one), or None
    rollout_seen: tuple | None = None  # what the file looked like when last read
    rollout_error: str | None = None   # why the file's current contents were rejected
    rollout_rejected: int = 0          # rejected contents so far


class ModelManager:
    def __init__(self, *, loader: Callable[[str, int, str], object],
                 warmup: Callable[[object], None] | None = None,
                 poll_wait_seconds: float = 1.0, max_num_load_retries: int = 5,
                 load_retry_interval_micros: int = 60_000_000,
                 allow_version_labels_for_unavailable_models: bool = False):
        self._loader = loader
        self._warmup = warmup
        self._poll_wait = poll_wait_seconds
        self._max_retries = max(0, max_num_load_retries)
        self._retry_interval = load_retry_interval_micros / 1e6
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._models: dict[str, ModelState] = {}
        self._active: set[str] = set()
        self._labels: dict[str, dict[str, int]] = {}
        self._serving: dict[str, dict[int, object]] = {}   # snapshot, replaced not mutated
        self._routes: dict[str, Routes] = {}                # snapshot, replaced not mutated
        self._lock = threading.RLock()                     # config changes, polls, loads
        self._said: dict[str, str] = {}  # model -> the base-path warning last logged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------ config

    def apply_config(self, server_config) -> None:
        """ServerCore::ReloadConfig: validate, resolve labels, add/remove models, load and wait."""
        which = server_config.WhichOneof("config")
        if which is None:
            return
        if which != "model_config_list":
            raise ServingError(errors.INVALID_ARGUMENT, "ServerModelConfig type not supported by "
                               "HandleReloadConfigRequest. Only ModelConfigList is currently supported")
        config_list = server_config.model_config_list
        validate_model_config_list(config_list)
        with self._lock:
            self._labels = self._resolve_labels(config_list)
            wanted = {c.name: c for c in config_list.config}
            for name in self._active - set(wanted):
                # Removed models are unloaded; their END records keep answering status calls.
                for record in self._models[name].versions.values():
                    record.aspired = False
                self._apply_policy(self._models[name], force_unload=True)
            for name, config in wanted.items():
                if name in self._models:
                    self._models[name].config = config
                else:
                    self._models[name] = ModelState(config)
            self._active = set(wanted)
            self._poll_locked(self._active)
        self._publish()

    def _resolve_labels(self, config_list) -> dict[str, dict[str, int]]:
        labels: dict[str, dict[str, int]] = {}
        for config in config_list.config:
            available = set(self._serving.get(config.name, {}))
            for label, version in config.version_labels.items():
                allowed = version in available
                if not allowed and self._allow_unavailable_labels:
                    existing = self._labels.get(config.name, {}).get(label)
                    allowed = existing is None or existing == version
                if not allowed:
                    raise ServingError(errors.FAILED_PRECONDITION,
                                       f"Request to assign label to version {version} of model "
                                       f"{config.name}, which is not currently available for inference")
                labels.setdefault(config.name, {})[label] = version
        return labels

    # ------------------------------------------------------------ polling

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll_loop, name="model-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _poll_loop(self) -> None:
        wait = self._poll_wait if self._poll_wait > 0 else None
        while not self._stop.wait(wait if wait is not None else 3600):
            if wait is None:
                continue
            try:
                self.poll()
            except Exception:
                log.exception("model poll failed")

    def poll(self) -> None:
        with self._lock:
            changed = self._poll_locked(self._active)
        if changed:
            self._publish()

    def _say_once(self, name: str, message: str, *args) -> None:
        """A base-path warning, logged when it starts to hold rather than at every poll
        (TF Serving repeats it every poll; before the first push that is a line a second)."""
        text = message % args
        if self._said.get(name) != text:
            self._said[name] = text
            log.warning("%s (said once until it changes)", text)

    def _poll_locked(self, names: set[str]) -> bool:
        changed = False
        for name in sorted(names):
            model = self._models.get(name)
            if model is None:
                continue
            on_disk = _versions_on_disk(model.config.base_path)
            if on_disk is None:
                self._say_once(name, "base path %s of model %s does not exist",
                               model.config.base_path, name)
                continue
            changed |= self._read_rollout(name, model, on_disk)
            if model.rollout is not None:
                aspired = set(model.rollout.aspired_versions) & set(on_disk)
            else:
                aspired = _aspired_versions(model.config, on_disk)
            if not on_disk:
                self._say_once(name, "No versions of servable %s found under base path %s",
                               name, model.config.base_path)
            else:
                self._said.pop(name, None)
            previously_aspired = {v for v, r in model.versions.items() if r.aspired}
            for version, record in model.versions.items():
                record.aspired = version in aspired
            for version in aspired:
                record = model.versions.get(version)
                # A version that ended after being unaspired (unloaded, or a rollback target)
                # is loaded afresh; one that failed while aspired is not retried.
                if record is None or (not record.managed and version not in previously_aspired):
                    model.versions[version] = VersionRecord(version, on_disk[version])
                    changed = True
            changed |= self._apply_policy(model)
        return changed

    def _read_rollout(self, name: str, model: ModelState, on_disk: dict[int, str]) -> bool:
        """Re-read <base path>/rollout.json when it (or the set of versions on disk) changed;
        True when the policy in effect changed."""
        path = os.path.join(model.config.base_path, ROLLOUT_FILE)
        try:
            st = os.stat(path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size, frozenset(on_disk))
        except FileNotFoundError:
            seen = None
        except (OSError, ValueError):
            seen = ("unstatable", frozenset(on_disk))
        if seen == model.rollout_seen:
            return False
        model.rollout_seen = seen
        try:
            policy = read_policy(model.config.base_path, set(on_disk))
        except RolloutError as e:
            model.rollout_error = str(e)
            model.rollout_rejected += 1
            kept = (f"keeping generation {model.rollout.generation} ({model.rollout.strategy}, "
                    f"stable {model.rollout.stable_version})" if model.rollout is not None
                    else "no rollout in effect: the version policy applies")
            log.error("rollout config of model %s rejected: %s; %s", name, e, kept)
            return True  # nothing to load, but listeners count the rejection
        model.rollout_error = None
        if policy is not None:
            if policy.candidate_percent > 0 and policy.strategy != "canary":
                log.warning("rollout of model %s: candidate_percent %g is ignored: strategy %s "
                            "routes unpinned requests to stable", name, policy.candidate_percent,
                            policy.strategy)
            missing = sorted(set(policy.hold_versions) - set(on_disk))
            if missing:
                log.warning("rollout of model %s: hold_versions %s have no directory in %s; "
                            "they are not loaded", name, missing, model.config.base_path)
        if policy == model.rollout:
            return False
        if policy is None:
            log.info("rollout of model %s ended: %s is gone; the version policy applies", name, path)
        else:
            log.info("rollout of model %s: generation %d, strategy %s, stable %d, candidate %s "
                     "at %g %% (shadow %g %%), hold %s", name, policy.generation, policy.strategy,
                     policy.stable_version, policy.candidate_version, policy.candidate_percent,
                     policy.shadow_percent, list(policy.hold_versions))
        model.rollout = policy
        self._update_routes(name, model)
        return True

    def _update_routes(self, name: str, model: ModelState) -> None:
        routes = dict(self._routes)
        previous = routes.get(name)
        new = None
        if model.rollout is not None and name in self._active:
            new = build_routes(model.rollout, self._serving.get(name, {}), previous)
        if new is None:
            routes.pop(name, None)
        else:
            routes[name] = new
            if new.fallback and (previous is None or previous.fallback != new.fallback):
                log.warning("rollout of model %s: %s", name, new.fallback)
        self._routes = routes

    # ------------------------------------------------------------ lifecycle

    def _apply_policy(self, model: ModelState, force_unload: bool = False) -> bool:
        changed = False
        while True:
            action = self._next_action(model, force_unload)
            if action is None:
                return changed
            kind, record = action
            changed = True
            if kind == "unload":
                self._unload(model, record)
            elif kind == "cancel":
                record.state = END
                record.error = record.error or ServingError(errors.CANCELLED,
                                                            "Loading of servable cancelled")
            else:
                if not self._load(model, record):
                    return changed

    def _next_action(self, model: ModelState, force_unload: bool):
        managed = [r for r in model.versions.values() if r.managed]
        for record in managed:
            if not record.aspired and record.state in (START, LOADING):
                return "cancel", record
        # A version that failed while aspired still counts as aspired (TF Serving keeps its
        # harness in kError), so it never lets the serving version be unloaded.
        has_aspired = any(r.aspired and (r.managed or r.error is not None)
                          for r in model.versions.values())
        aspired_serving = any(r.aspired and r.state == AVAILABLE for r in managed)
        if model.rollout is not None:
            # Under a rollout only the stable version may replace what serves: a candidate
            # (which may get 0 % of traffic) serving does not let the previous stable go.
            stable = model.versions.get(model.rollout.stable_version)
            aspired_serving = stable is not None and stable.managed and stable.state == AVAILABLE
        unaspired_serving = [r for r in managed if not r.aspired and r.state == AVAILABLE]
        if unaspired_serving and (force_unload or not has_aspired or aspired_serving
                                  or len(unaspired_serving) > 1):
            return "unload", min(unaspired_serving, key=lambda r: r.version)
        now = time.monotonic()
        pending = [r for r in managed if r.aspired and (r.state == START or
                   (r.state == LOADING and r.retry_at <= now))]
        if pending:
            # The rollout's stable version first: a candidate that fails must not delay it.
            stable = model.rollout.stable_version if model.rollout is not None else None
            return "load", max(pending, key=lambda r: (r.version == stable, r.version))
        return None

    def _load(self, model: ModelState, record: VersionRecord) -> bool:
        name = model.config.name
        record.state = LOADING
        self._publish()
        record.attempts += 1
        log.info("Loading servable version {name: %s version: %d}", name, record.version)
        try:
            servable = self._loader(name, record.version, record.path)
            if self._warmup is not None:
                self._warmup(servable)
        except Exception as e:
            error = e if isinstance(e, ServingError) else errors.from_tf_error(e)
            log.error("Loading servable: {name: %s version: %d} failed: %s", name, record.version,
                      error.status_string())
            record.error = error
            if record.attempts <= self._max_retries:
                record.retry_at = time.monotonic() + self._retry_interval
            else:
                record.state = END
            return False
        record.servable = servable
        record.error = None
        record.state = AVAILABLE
        self._update_serving(name, model)
        log.info("Successfully loaded servable version {name: %s version: %d}", name, record.version)
        return True

    def _unload(self, model: ModelState, record: VersionRecord) -> None:
        record.state = UNLOADING
        self._update_serving(model.config.name, model)
        # In-flight requests hold their own reference to the servable; it is freed after them.
        record.servable = None
        record.state = END
        log.info("Unloaded servable version {name: %s version: %d}", model.config.name, record.version)

    def _update_serving(self, name: str, model: ModelState) -> None:
        serving = dict(self._serving)
        versions = {v: r.servable for v, r in model.versions.items() if r.state == AVAILABLE}
        if versions:
            serving[name] = versions
        else:
            serving.pop(name, None)
        self._serving = serving
        self._update_routes(name, model)

    def _publish(self) -> None:
        for listener in self.listeners:
            try:
                listener()
            except Exception:
                log.exception("model state listener failed")

    # ------------------------------------------------------------ queries

    def servable(self, name: str, version: int | None = None, label: str | None = None):
        """ServerCore::GetServableHandle."""
        if not name:
            raise ServingError(errors.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        routes = self._routes.get(name)
        if label is not None:
            version = routes.policy.labels.get(label) if routes is not None else None
            if version is None:
                version = self._labels.get(name, {}).get(label)
            if version is None:
                raise ServingError(errors.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {label}")
        versions = self._serving.get(name)
        if version is None:
            if routes is not None:
                return routes.stable
            if versions:
                return versions[max(versions)]
            raise ServingError(errors.NOT_FOUND, f"Servable not found for request: Latest({name})")
        servable = versions.get(version) if versions else None
        if servable is None:
            raise ServingError(errors.NOT_FOUND,
                               f"Servable not found for request: Specific({name}, {version})")
        return servable

    def route(self, name: str, key: str | None = None):
        """An unpinned call's (servable, route, shadow servable or None): by the model's
        rollout policy (serving/rollout.py Routes.route; key: the client's request key, or
        None), else the newest version with route None. Raises ServingError NOT_FOUND as
        servable() does."""
        routes = self._routes.get(name)
        if routes is None:
            return self.servable(name), None, None
        return routes.route(key)

    def has_rollout(self, name: str) -> bool:
        """Whether unpinned calls of the model are routed by a rollout policy."""
        return name in self._routes

    def rollout_status(self) -> dict[str, dict]:
        """{model name: {"policy": RolloutPolicy or None, "error": str or None, "rejected":
        int, "fallback": str or None}} for the models whose base path has (or had) a
        rollout.json (lock-free snapshot)."""
        status = {}
        routes = self._routes
        for name, model in list(self._models.items()):
            if model.rollout is None and model.rollout_error is None and not model.rollout_rejected:
                continue
            current = routes.get(name)
            status[name] = {"policy": model.rollout, "error": model.rollout_error,
                            "rejected": model.rollout_rejected,
                            "fallback": current.fallback if current is not None else None}
        return status

    def version_status(self, name: str, version: int | None = None) -> list[tuple[int, int, ServingError | None]]:
        """GetModelStatusImpl: [(version, state, error)] newest first."""
        # Lock-free: a load may hold the lock for seconds; dict() copies atomically.
        model = self._models.get(name)
        records = dict(model.versions) if model else {}
        snapshot = [(v, r.state, r.error) for v, r in records.items()]
        if version is not None:
            for v, state, error in snapshot:
                if v == version:
                    return [(v, state, error)]
            raise ServingError(errors.NOT_FOUND, f"Could not find version {version} of model {name}")
        if not snapshot:
            raise ServingError(errors.NOT_FOUND, f"Could not find any versions of model {name}")
        return sorted(snapshot, key=lambda item: -item[0])

    def kept_versions(self) -> list[tuple[object, list[int], dict[str, int]]]:
        """[(ModelConfig, versions, labels)] per model of the current config (lock-free
        snapshot): the versions this manager aspires to or still holds (START, LOADING,
        AVAILABLE; a version unaspired but still serving until its successor is AVAILABLE
        included), and the version labels (the config's, overridden by the rollout's "stable"
        and "canary") that name one of them. What a forwarding front door asks the upstream
        model server to load (serving/upstream.py)."""
        models, active, labels = self._models, self._active, self._labels
        plan = []
        for name in sorted(active):
            model = models.get(name)
            if model is None:
                continue
            records = dict(model.versions)
            versions = sorted(v for v, r in records.items()
                              if r.state in (START, LOADING, AVAILABLE))
            named = dict(labels.get(name, {}))
            if model.rollout is not None:
                named.update(model.rollout.labels)
            plan.append((model.config, versions,
                         {label: v for label, v in named.items() if v in versions}))
        return plan

    def model_configs(self) -> list:
        """The ModelConfig of each model in the current config, by name (lock-free snapshot)."""
        models, active = self._models, self._active
        return [models[name].config for name in sorted(active) if name in models]

    def loaded_versions(self) -> dict[str, list[int]]:
        return {name: sorted(versions) for name, versions in self._serving.items()}

    def model_names(self) -> list[str]:
        return sorted(self._models)


def _versions_on_disk(base_path: str) -> dict[int, str] | None:
    try:
        entries = os.listdir(base_path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        log.warning("cannot list %s: %s", base_path, e)
        return None
    # FileSystemStoragePathSource: a child is a version iff its whole name parses as an int64
    # (strings::safe_strto64: "-3" and "007" do, "99999999999999999999" and "1.0" do not).
    # Children are visited in sorted order, so of two names for one number ("7", "07") the
    # later one wins, as in IndexChildrenByVersion.
    versions = {}
    for entry in sorted(entries):
        version = safe_strto64(entry)
        if version is None:
            continue
        path = os.path.join(base_path, entry)
        if os.path.isdir(path):
            versions[version] = path
    return versions


def _aspired_versions(config, on_disk: dict[int, str]) -> set[int]:
    policy = config.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return set(on_disk)
    if which == "specific":
        return set(policy.specific.versions) & set(on_disk)
    count = policy.latest.num_versions if which == "latest" else 1
    return set(sorted(on_disk, reverse=True)[:max(1, count)])
