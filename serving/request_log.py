"""Request logging as TF Serving configures it: a model's `logging_config`.

Configuration (tensorflow_serving/config/logging_config.proto, in a ModelConfig of the
--model_config_file, or made from --request_log_sampling_rate for the single-model command
line):

    logging_config {
      log_collector_config { type: "tfrecord"  filename_prefix: "requests" }
      sampling_config { sampling_rate: 0.25 }
    }

type "" or "tfrecord" (any other fails at start-up, as TF Serving fails for a type without a
registered LogCollector factory); filename_prefix names the files, under --request_log_dir, or,
when it contains a "/", is an absolute path whose directory replaces --request_log_dir (TF
Serving's prefixes are paths). The open-source TF Serving binary refuses a non-empty
logging_config at start-up; this server implements it.

What is logged: each Predict / Classify / Regress / MultiInference call (over REST or gRPC:
REST requests are logged as the very protos the data plane answered) of a model with a
sampling_rate > 0 is kept with probability sampling_rate and written as one
tensorflow.serving.PredictionLog (tensorflow_serving/apis/prediction_log.proto): predict_log /
classify_log / regress_log / multi_inference_log {request, response}, and log_metadata with
model_spec (name, signature, the version that answered), the model's sampling_config, the
saved_model_tags, timestamp_secs, plus protos.RequestLogFields (request_id, transport,
error_code, error_message, route) under pipewright's field numbers.

Rollouts (serving/rollout.py): route is "stable", "canary" or "pinned" for a call of a model
with a rollout policy ("" otherwise), and "shadow" for the candidate's answer to a shadowed
call. That answer is logged exactly when the client call was (not sampled again), with the
same request_id and the candidate's version, so the pair can be joined.

Failed requests: PredictionLog has no error field. A failed call that reached the data plane is
sampled and logged like any other, with its request, no response, and error_code/error_message
set in the RequestLogFields; a request the REST transport could not even parse into a proto
(malformed JSON, ...) has nothing to log. Every failed request of a logged model, sampled or
not, counts in :pipewright:serving:request_log_failed_requests{model_name,version,status}
(version "unresolved" when none was chosen).

Logging never blocks or fails a request: the data plane's observer only samples and puts the
call on a bounded queue (--request_log_queue_size records); when it is full the record is
dropped and counted (request_log_dropped). One writer thread builds, serializes and writes the
records (serving/log_files.py: rotation, temporary names, byte budget); its errors are counted
(request_log_write_errors) and logged, never raised. stop() writes what is queued and closes
every file.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass

from serving import errors
from serving.data_plane import CLASSIFY, MULTI_INFERENCE, PREDICT, REGRESS, CallRecord
from serving.errors import ServingError
from serving.log_files import UNRESOLVED_VERSION, LogFiles
from serving.servable import DEFAULT_SIGNATURE

log = logging.getLogger(__name__)

TFRECORD = "tfrecord"
SUPPORTED_TYPES = ("", TFRECORD)
DEFAULT_PREFIX = "requests"
LOG_FIELDS = {PREDICT: "predict_log", CLASSIFY: "classify_log", REGRESS: "regress_log",
              MULTI_INFERENCE: "multi_inference_log"}


@dataclass(frozen=True)
class LogPolicy:
    """One model's logging: sampling_rate in (0, 1], the SamplingConfig proto to record, the
    root directory and the file name prefix."""

    sampling_rate: float
    sampling_config: object
    root: str
    prefix: str


def policy_for(model_config, log_dir: str) -> LogPolicy | None:
    """A ModelConfig's logging_config as a LogPolicy; None when it logs nothing (no
    logging_config, or sampling_rate 0). Raises ServingError: NOT_FOUND for an unsupported
    collector type (log_collector.cc's message), INVALID_ARGUMENT for a rate outside [0, 1] or
    no directory to write to."""
    if not model_config.HasField("logging_config"):
        return None
    config = model_config.logging_config
    kind = config.log_collector_config.type
    if kind not in SUPPORTED_TYPES:
        raise ServingError(errors.NOT_FOUND, f"Cannot find LogCollector::Factory for type: {kind}")
    rate = config.sampling_config.sampling_rate
    if not 0.0 <= rate <= 1.0:
        raise ServingError(errors.INVALID_ARGUMENT,
                           f"sampling_rate of model {model_config.name} must be in [0, 1], got {rate}")
    if rate == 0.0:
        return None
    prefix = config.log_collector_config.filename_prefix or DEFAULT_PREFIX
    root = log_dir
    if "/" in prefix:
        if not os.path.isabs(prefix) or prefix.endswith("/"):
            raise ServingError(errors.INVALID_ARGUMENT,
                               f"filename_prefix of model {model_config.name} must be a file name "
                               f"or an absolute path ending in a file name, got {prefix!r}")
        root, prefix = os.path.split(prefix)
    elif not log_dir:
        raise ServingError(errors.INVALID_ARGUMENT,
                           f"Model {model_config.name} has a logging_config but --request_log_dir "
                           "is not set (nor is its filename_prefix an absolute path)")
    return LogPolicy(rate, config.sampling_config, root, prefix)


def policies(model_configs, log_dir: str) -> dict[str, LogPolicy]:
    """{model name: LogPolicy} for the models that log; raises as policy_for does."""
    result = {}
    for config in model_configs:
        policy = policy_for(config, log_dir)
        if policy is not None:
            result[config.name] = policy
    return result


def request_log_fields(entry):
    """The protos.RequestLogFields (request_id, transport, error_code, error_message) of a
    PredictionLog written by this module."""
    from serving.protos import RequestLogFields

    return RequestLogFields.FromString(entry.log_metadata.SerializeToString())


def _version_label(version: int | None) -> str:
    return UNRESOLVED_VERSION if version is None else str(version)


class RequestLogger:
    """A DataPlane observer (call it with a CallRecord) plus the thread writing its records.

    hold: test hook; when given, the writer thread waits for it to be set before it takes
    each record (a stalled disk), and stop() sets it.
    """

    def __init__(self, *, log_dir: str, metrics, max_file_bytes: int = 64 << 20,
                 max_file_age_seconds: float = 300, max_total_bytes: int = 1 << 30,
                 queue_size: int = 1024, saved_model_tags=("serve",),
                 hold: threading.Event | None = None):
        self.log_dir = log_dir
        self.metrics = metrics
        self.saved_model_tags = sorted(saved_model_tags)
        self.files = LogFiles(max_file_bytes=max_file_bytes, max_file_age_seconds=max_file_age_seconds,
                              max_total_bytes=max_total_bytes, on_removed=self._removed)
        self._tick = max(0.01, min(1.0, max_file_age_seconds))
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._policies: dict[str, LogPolicy] = {}
        self._hold = hold
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ config

    def configure(self, model_configs) -> None:
        """Take the models' logging_configs (on start and on every config change). A model
        whose logging_config is invalid stops logging, with an error in the log (start-up
        validates the config, so only a reload can bring one)."""
        new = {}
        for config in model_configs:
            try:
                policy = policy_for(config, self.log_dir)
            except ServingError as e:
                log.error("request logging off for model %s: %s", config.name, e.message)
                continue
            if policy is not None:
                new[config.name] = policy
        self._policies = new  # swapped whole: the observer reads it without a lock

    # ------------------------------------------------------------ the observer (event loops)

    def __call__(self, record: CallRecord) -> None:
        policy = self._policies.get(record.model_name)
        if policy is None:
            return
        field = LOG_FIELDS.get(record.method)
        if field is None:
            return
        if record.error is not None:
            self.metrics.count(self.metrics.request_log_failed_requests, record.model_name,
                               _version_label(record.version), record.error.code_name)
        if record.request is None:
            return
        if record.shadow:
            if record.ctx.parent is None or not record.ctx.parent.logged:
                return
        elif policy.sampling_rate < 1.0 and random.random() >= policy.sampling_rate:
            return
        if self._stopping.is_set():
            self.metrics.count(self.metrics.request_log_dropped, record.model_name)
            return
        try:
            self._queue.put_nowait((policy, field, record, time.time()))
        except queue.Full:
            self.metrics.count(self.metrics.request_log_dropped, record.model_name)
            return
        record.ctx.logged = True

    # ------------------------------------------------------------ the writer thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Write what is queued, close (rename) every file, end the thread."""
        self._stopping.set()
        if self._hold is not None:
            self._hold.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("request log writer did not finish within %s s", timeout)

    def _run(self) -> None:
        while True:
            if self._hold is not None:
                self._hold.wait()
            try:
                item = self._queue.get(timeout=self._tick)
            except queue.Empty:
                item = None
            if item is not None:
                self._write(*item)
            elif self._stopping.is_set():
                break
            try:
                self.files.rotate_old()
            except Exception:
                log.exception("request log: rotation failed")
        try:
            self.files.close_all()
        except Exception:
            log.exception("request log: closing files failed")

    def _write(self, policy: LogPolicy, field: str, record: CallRecord, when: float) -> None:
        try:
            data = self.prediction_log(policy, field, record, when).SerializeToString()
            self.files.write(policy.root, record.model_name, record.version, policy.prefix, data)
        except Exception:
            log.exception("request log: could not write a record of model %s", record.model_name)
            self.metrics.count(self.metrics.request_log_write_errors, record.model_name)
            return
        version = _version_label(record.version)
        self.metrics.count(self.metrics.request_log_records, record.model_name, version)
        self.metrics.count(self.metrics.request_log_bytes, record.model_name, version, amount=len(data))

    def prediction_log(self, policy: LogPolicy, field: str, record: CallRecord, when: float):
        """The tensorflow.serving.PredictionLog of one call (see the module docstring)."""
        from tensorflow_serving.apis import prediction_log_pb2

        from serving.protos import RequestLogFields

        entry = prediction_log_pb2.PredictionLog()
        meta = entry.log_metadata
        request = record.request
        spec = (request.tasks[0].model_spec if field == "multi_inference_log" and request.tasks
                else getattr(request, "model_spec", None))
        meta.model_spec.name = record.model_name
        if spec is not None and field != "multi_inference_log":
            meta.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
        if record.version is not None:
            meta.model_spec.version.value = record.version
        meta.sampling_config.CopyFrom(policy.sampling_config)
        meta.saved_model_tags.extend(self.saved_model_tags)
        meta.timestamp_secs = int(when)
        extra = RequestLogFields(request_id=record.ctx.request_id, transport=record.ctx.transport,
                                 route=record.ctx.route or "")
        if record.error is not None:
            extra.error_code = record.error.code
            extra.error_message = record.error.message
        meta.MergeFromString(extra.SerializeToString())
        body = getattr(entry, field)
        body.request.CopyFrom(request)
        if record.response is not None:
            body.response.CopyFrom(record.response)
        return entry

    def _removed(self, files: int, size: int) -> None:
        self.metrics.count(self.metrics.request_log_removed_files, amount=files)
        self.metrics.count(self.metrics.request_log_removed_bytes, amount=size)
