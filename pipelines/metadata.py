"""ML Metadata (MLMD): runs, executions, artifacts and the events between them.

The store is a SQLite file by default, or a MySQL/MariaDB database
(`mysql://user:password@host:port/database`); `connection_config` documents the URIs.
Every public method is safe to call from several threads. Processes (Airflow tasks) sharing
one SQLite file are serialized by SQLite, and a locked database is retried; on MySQL a
deadlock or a lock wait timeout is retried, and a lost connection or a server that is not
(yet) reachable is retried on a fresh connection for `CONNECT_TIMEOUT_S` seconds before
`MetadataStoreUnavailable` names the store, its password masked.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterable

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2 as pb

from components.artifacts import Artifact, artifact_class

PIPELINE_CONTEXT = "pipeline"
RUN_CONTEXT = "pipeline_run"
EXECUTION_PROPERTIES = {
    "component_id": pb.STRING, "pipeline_name": pb.STRING, "run_id": pb.STRING,
    "cache_key": pb.STRING, "outcome": pb.STRING, "outcome_reason": pb.STRING,
    "error": pb.STRING, "parameters": pb.STRING, "log_path": pb.STRING,
    "pid": pb.INT, "host": pb.STRING, "pid_start": pb.INT, "duration_s": pb.DOUBLE,
}
RUN_PROPERTIES = {
    "pipeline_name": pb.STRING, "run_id": pb.STRING, "started_at": pb.DOUBLE,
    "parameters": pb.STRING, "orchestrator": pb.STRING, "airflow_run_id": pb.STRING,
    "state": pb.STRING, "triggered_by": pb.STRING,
    # The local runner's process (see _this_host, _start_ticks): a dead one ends its run.
    "pid": pb.INT, "host": pb.STRING, "pid_start": pb.INT,
}
_KINDS = {int: pb.INT, float: pb.DOUBLE, str: pb.STRING, list: pb.STRING}
STATE_NAMES = {pb.Execution.RUNNING: "running", pb.Execution.COMPLETE: "complete",
               pb.Execution.FAILED: "failed", pb.Execution.CACHED: "cached",
               pb.Execution.CANCELED: "canceled", pb.Execution.NEW: "new"}

CONNECT_TIMEOUT_S = 30.0  # how long an unreachable MySQL server is retried
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MYSQL_NAME = re.compile(r"^[A-Za-z0-9_$]+$")  # an unquoted MySQL identifier
# What MLMD's MySQL source reports (mysql_metadata_source.cc: "mysql_query failed: errno:
# ..., error: <client message>") for a broken connection: CR_SERVER_LOST (2013) and
# CR_SERVER_GONE_ERROR (2006); a failed (re)connect is "mysql_real_connect failed".
_CONNECTION_LOST = ("lost connection to", "server has gone away", "mysql_real_connect failed",
                    "can't connect to", "connection refused")
# InnoDB rolled the transaction back (ER_LOCK_DEADLOCK 1213, ER_LOCK_WAIT_TIMEOUT 1205 —
# MLMD's MySqlMetadataSource::RunQuery returns exactly these two as AbortedError "mysql_query
# aborted: ...", every other server error as InternalError), or another connection was
# creating the schema (ER_TABLE_DEF_CHANGED 1412, an InternalError): the same call can
# simply be made again. RunQuery itself reconnects only for 2006 on START TRANSACTION.
_MYSQL_CONFLICT = ("deadlock found", "lock wait timeout exceeded",
                   "table definition has changed")
# MLMD's Python client retries AbortedError itself, 5 attempts with random pauses of 2 s
# on average (metadata_store.py `_call`), while this store's lock is held. On MySQL we make
# it attempt once (`retry_options.max_num_retries = 1`; 0 would retry forever) so that
# `Metadata._retry` is the one retry policy. SQLite keeps MLMD's default.
_MLMD_ATTEMPTS = 1
# Two processes opening an empty MySQL database both create MLMD's tables; the loser gets
# "There are a subset of tables in MLMD instance. This may be due to concurrent connection
# to the empty database. Please retry the connection." (metadata_store.cc), or finds a
# table missing: connect again.
_SCHEMA_RACE = ("concurrent connection to the empty database", "doesn't exist",
                "concurrent writes aborted")
_SQLITE_BUSY = ("locked", "busy")


class MetadataStoreUnavailable(ConnectionError):
    """The MySQL metadata store could not be reached (or lost its connection) for longer
    than the retry budget. Transient by nature: an Airflow task raising it is retried
    (Airflow retries every task exception but AirflowFailException / skip / sensor
    timeout). The message names the store with its password masked."""


def redact_uri(uri: str) -> str:
    """The URI with its password replaced by `***` (`mysql://user:***@host:3306/db`), for
    messages and logs; a URI without a password, or a file path, is returned as it is."""
    match = _URI.match(uri)
    if not match:
        return uri
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def connection_config(uri: str) -> pb.ConnectionConfig:
    """The MLMD ConnectionConfig for a metadata store URI.

    - `mysql://user:password@host:port/database` (port 3306 when omitted), or
      `mysql://user:password@/database?unix_socket=/path/mysqld.sock` (no host: MLMD takes
      exactly one of host or socket). User and password are percent-decoded, as in any URL
      (`%40` for `@`). The database must be an unquoted MySQL identifier (letters, digits,
      `_`, `$`) because MLMD's MySQL source interpolates it into `CREATE DATABASE IF NOT
      EXISTS <database>`; MLMD creates it when missing. MariaDB speaks the same protocol.
    - `sqlite:///relative/path.sqlite` or `sqlite:////absolute/path.sqlite` — SQLAlchemy's
      (and so Airflow's `sql_alchemy_conn`) convention: the path is what follows the third
      slash — or a plain file path. Its directory is created.

    The scheme is matched case-insensitively (RFC 3986 section 3.1; `urllib.parse` lowers
    it too, unlike SQLAlchemy, whose URL pattern only accepts lower case); host names are
    case-insensitive, while user, password, database and paths keep their case (MySQL
    database names are case-sensitive on Linux). MLMD has its own MySQL client, so a
    SQLAlchemy driver suffix (`mysql+pymysql://`) means nothing here and is refused.

    Raises ValueError, naming the URI (password masked), the part at fault and the
    schemes that work, for any other scheme (`postgresql://`, ...), an in-memory
    `sqlite://`, a missing database, a bad port, or an unknown query parameter — MLMD
    itself aborts the whole process (a C++ CHECK) on some of these.
    """
    shown = redact_uri(uri)
    match = _URI.match(uri)
    if not uri.strip():
        raise ValueError("the metadata store URI is empty; give a SQLite file path, "
                         "sqlite:///path or mysql://user:password@host:3306/database")
    scheme = match.group(1).lower() if match else ""
    if scheme == "mysql":
        return _mysql_config(uri, shown)
    if scheme == "sqlite":
        rest = uri[match.end():]
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"metadata store {shown}: a SQLite URI is sqlite:///relative/path "
                             f"or sqlite:////absolute/path (no host; an in-memory store would "
                             f"vanish with each process)")
        path = rest[1:]
    elif match:
        raise ValueError(f"metadata store {shown}: unsupported scheme {match.group(1)!r}; use "
                         f"mysql://user:password@host:3306/database (MySQL or MariaDB, through "
                         f"ML Metadata's own client: no '+driver'), sqlite:///path or a plain "
                         f"SQLite file path")
    else:
        path = uri
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


def _mysql_config(uri: str, shown: str) -> pb.ConnectionConfig:
    parts = urllib.parse.urlsplit(uri)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"unix_socket"})
    if unknown or parts.fragment:
        raise ValueError(f"metadata store {shown}: unknown query parameter(s) "
                         f"{unknown or ['#' + parts.fragment]}; only ?unix_socket=/path is "
                         f"understood")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:  # urlsplit takes 0, which MLMD reads as 3306
        raise ValueError(f"metadata store {shown}: the port is not a number in 1-65535")
    database = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not database:
        raise ValueError(f"metadata store {shown}: no database; mysql://user:password@host:"
                         f"3306/<database>")
    if not _MYSQL_NAME.match(database):
        raise ValueError(f"metadata store {shown}: database {database!r} must be letters, "
                         f"digits, '_' or '$' (ML Metadata does not quote it)")
    config = pb.ConnectionConfig()
    mysql = config.mysql
    mysql.database = database
    mysql.user = urllib.parse.unquote(parts.username or "")
    mysql.password = urllib.parse.unquote(parts.password or "")
    sockets = query.get("unix_socket", [])
    if sockets:
        if len(sockets) != 1 or not sockets[0]:
            raise ValueError(f"metadata store {shown}: give one ?unix_socket=/path")
        if (parts.hostname or "localhost") != "localhost" or port is not None:
            raise ValueError(f"metadata store {shown}: a unix_socket connection takes no "
                             f"host or port (mysql://user:password@/database?unix_socket=...)")
        mysql.socket = sockets[0]
    else:
        if not parts.hostname:
            raise ValueError(f"metadata store {shown}: no host; mysql://user:password@host:"
                             f"3306/database, or ?unix_socket=/path")
        mysql.host = parts.hostname
        mysql.port = port or 3306
    config.retry_options.max_num_retries = _MLMD_ATTEMPTS
    return config


def _reachability(config: pb.ConnectionConfig) -> str:
    """Why a MySQL connection failed, as far as a plain socket can tell: MLMD's own
    message ("mysql_real_connect failed: errno: , error: ") names no cause."""
    mysql = config.mysql
    family, address = ((socket.AF_UNIX, mysql.socket) if mysql.socket
                       else (socket.AF_INET, (mysql.host, mysql.port)))
    where = mysql.socket or f"{mysql.host}:{mysql.port}"
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            probe.connect(address)
            greeting = probe.recv(128)  # a MySQL server speaks first (its handshake)
    except OSError as exc:
        return f"nothing accepts connections at {where} ({exc.strerror or exc})"
    if greeting[4:5] == b"\xff":  # an error packet instead of a handshake
        return f"the server at {where} refuses connections: {greeting[7:].decode(errors='replace')}"
    return (f"a server answers at {where} but refused the login or the database (check the "
            f"user, the password and its GRANTs)")


@dataclass
class ExecutionRecord:
    id: int
    component_id: str
    type_name: str
    state: str
    outcome: str
    outcome_reason: str
    error: str
    cache_key: str
    run_id: str
    log_path: str
    duration_s: float
    created_ms: int


def _value(message: pb.Value) -> Any:
    kind = message.WhichOneof("value")
    return getattr(message, kind) if kind else None


class Metadata:
    """One MLMD store. `uri` is the store's URI with its password masked (for messages).
    Raises ValueError for a URI `connection_config` refuses, MetadataStoreUnavailable
    when a MySQL server cannot be reached for `connect_timeout_s` seconds."""

    def __init__(self, uri: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self._config = connection_config(uri)
        self.uri = redact_uri(uri)
        self._mysql = self._config.HasField("mysql")
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()
        self._store: mlmd.MetadataStore | None = None
        self._type_ids: dict[tuple[str, str], int] = {}
        self._retry(lambda: None)  # connects (and creates or upgrades the schema)

    # -- plumbing ---------------------------------------------------------------------------
    def _connect(self) -> None:
        self._store = mlmd.MetadataStore(self._config, enable_upgrade_migration=True)

    def _retry(self, call, attempts: int = 60):
        """`call()` under the lock, connected. SQLite busy/locked, MySQL deadlock / lock
        wait timeout (MLMD's AbortedError) and the schema race of processes opening an
        empty database (SQLite or MySQL: the first Airflow tasks of a new home start
        together) are retried `attempts` times with a growing pause. A lost or
        refused MySQL connection is retried on a new connection (MLMD's broken one is
        dropped: calling it again after its own reconnect failed crashes the process with
        SIGSEGV) until `connect_timeout_s` has passed, then MetadataStoreUnavailable.
        A write whose connection broke while it committed may have been committed; MLMD
        cannot tell, and its retry then records it a second time."""
        first_failure = None
        attempt = 0
        while True:
            try:
                with self._lock:
                    if self._store is None:
                        self._connect()
                    return call()
            except (mlmd.errors.StatusError, RuntimeError) as exc:
                message = str(exc).lower()
                if self._store is None and any(m in message for m in _SCHEMA_RACE) and \
                        attempt < attempts - 1:
                    time.sleep(0.05 * (attempt + 1))
                    attempt += 1
                    continue
                if self._mysql and any(m in message for m in _CONNECTION_LOST):
                    now = time.monotonic()
                    first_failure = first_failure or now
                    with self._lock:
                        self._store = None  # reconnect; never reuse a broken MLMD source
                    refused_login = "refused the login" in (
                        diagnosis := _reachability(self._config))
                    # A server that answers but refuses us will not change its mind soon.
                    if now - first_failure >= self._connect_timeout_s or (
                            refused_login and attempt >= 2):
                        raise MetadataStoreUnavailable(
                            f"ML Metadata store {self.uri} is unavailable after "
                            f"{attempt + 1} attempt(s) in {now - first_failure:.1f} s: "
                            f"{diagnosis} (ML Metadata: {str(exc).strip()})") from None
                    time.sleep(min(0.2 * (attempt + 1), 2.0))
                    attempt += 1
                    continue
                if not isinstance(exc, mlmd.errors.StatusError):
                    raise
                transient = any(m in message for m in (
                    _MYSQL_CONFLICT if self._mysql else _SQLITE_BUSY)) or (
                    self._mysql and isinstance(exc, mlmd.errors.AbortedError))
                if not transient or attempt >= attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
                attempt += 1

    def _artifact_type_id(self, cls: type[Artifact]) -> int:
        key = ("artifact", cls.type_name())
        if key not in self._type_ids:
            artifact_type = pb.ArtifactType(name=cls.type_name())
            for name, kind in cls.PROPERTIES.items():
                artifact_type.properties[name] = _KINDS[kind]
            self._type_ids[key] = self._retry(lambda: self._store.put_artifact_type(
                artifact_type, can_add_fields=True))
        return self._type_ids[key]

    def _execution_type_id(self, type_name: str) -> int:
        key = ("execution", type_name)
        if key not in self._type_ids:
            execution_type = pb.ExecutionType(name=type_name)
            for name, kind in EXECUTION_PROPERTIES.items():
                execution_type.properties[name] = kind
            self._type_ids[key] = self._retry(lambda: self._store.put_execution_type(
                execution_type, can_add_fields=True))
        return self._type_ids[key]

    def _context_type_id(self, name: str) -> int:
        key = ("context", name)
        if key not in self._type_ids:
            context_type = pb.ContextType(name=name)
            if name == RUN_CONTEXT:
                for prop, kind in RUN_PROPERTIES.items():
                    context_type.properties[prop] = kind
            self._type_ids[key] = self._retry(lambda: self._store.put_context_type(
                context_type, can_add_fields=True))
        return self._type_ids[key]

    # -- artifacts --------------------------------------------------------------------------
    def _to_proto(self, artifact: Artifact) -> pb.Artifact:
        cls = type(artifact)
        proto = pb.Artifact(type_id=self._artifact_type_id(cls), uri=artifact.uri,
                            state=pb.Artifact.LIVE)
        if artifact.id is not None:
            proto.id = artifact.id
        if artifact.name:
            proto.custom_properties["name"].string_value = artifact.name
        for name, value in artifact.properties.items():
            if value is None:
                continue
            kind = cls.PROPERTIES.get(name)
            target = proto.properties[name] if kind else proto.custom_properties[name]
            if kind is list or isinstance(value, (list, tuple)):
                target.string_value = json.dumps(list(value))
            elif kind is int or (kind is None and isinstance(value, (bool, int))):
                target.int_value = int(value)
            elif kind is float or (kind is None and isinstance(value, float)):
                target.double_value = float(value)
            else:
                target.string_value = str(value)
        return proto

    def _from_proto(self, proto: pb.Artifact, type_name: str | None = None) -> Artifact:
        if type_name is None:
            type_name = self._retry(lambda: self._store.get_artifact_types_by_id(
                [proto.type_id]))[0].name
        cls = artifact_class(type_name)
        properties: dict[str, Any] = {}
        for name, value in proto.properties.items():
            raw = _value(value)
            properties[name] = json.loads(raw) if cls.PROPERTIES.get(name) is list else raw
        for name, value in proto.custom_properties.items():
            if name != "name":
                properties[name] = _value(value)
        name = proto.custom_properties["name"].string_value if "name" in proto.custom_properties else ""
        return cls(uri=proto.uri, properties=properties, id=proto.id, name=name)

    def update_artifact(self, artifact: Artifact) -> None:
        """Writes a recorded artifact's properties again (e.g. a push marked rolled back);
        its URI and id stay as they are."""
        if artifact.id is None:
            raise ValueError(f"{artifact!r} is not recorded in the metadata store")
        self._retry(lambda: self._store.put_artifacts([self._to_proto(artifact)]))

    def artifacts_by_id(self, ids: Iterable[int]) -> list[Artifact]:
        ids = list(ids)
        if not ids:
            return []
        protos = self._retry(lambda: self._store.get_artifacts_by_id(ids))
        type_names = {t.id: t.name for t in self._retry(lambda: self._store.get_artifact_types())}
        by_id = {p.id: self._from_proto(p, type_names[p.type_id]) for p in protos}
        return [by_id[i] for i in ids if i in by_id]

    def artifact(self, ref: str | int) -> Artifact:
        """An artifact by id, or by (a prefix-free) URI."""
        if isinstance(ref, int) or str(ref).isdigit():
            found = self.artifacts_by_id([int(ref)])
        else:
            uri = os.path.abspath(str(ref)).rstrip("/")
            protos = self._retry(lambda: self._store.get_artifacts_by_uri(uri))
            found = [self._from_proto(p) for p in protos]
        if not found:
            raise KeyError(f"no artifact {ref!r} in the metadata store {self.uri}")
        return found[-1]

    def artifacts_of_type(self, cls: type[Artifact]) -> list[Artifact]:
        protos = self._retry(lambda: self._store.get_artifacts_by_type(cls.type_name()))
        return [self._from_proto(p, cls.type_name()) for p in protos
                if p.state == pb.Artifact.LIVE]

    def artifacts_in_pipeline(self, pipeline_name: str, cls: type[Artifact]) -> list[Artifact]:
        """LIVE artifacts of a type that a pipeline's executions produced or used, by id."""
        context = self._retry(lambda: self._store.get_context_by_type_and_name(
            PIPELINE_CONTEXT, pipeline_name))
        if context is None:
            return []
        type_id = self._artifact_type_id(cls)
        protos = self._retry(lambda: self._store.get_artifacts_by_context(context.id))
        return sorted((self._from_proto(p, cls.type_name()) for p in protos
                       if p.type_id == type_id and p.state == pb.Artifact.LIVE),
                      key=lambda a: a.id)

    # -- runs -------------------------------------------------------------------------------
    def _pipeline_context(self, pipeline_name: str) -> pb.Context:
        type_id = self._context_type_id(PIPELINE_CONTEXT)
        found = self._retry(lambda: self._store.get_context_by_type_and_name(
            PIPELINE_CONTEXT, pipeline_name))
        if found:
            return found
        context = pb.Context(type_id=type_id, name=pipeline_name)
        try:
            [context.id] = self._retry(lambda: self._store.put_contexts([context]))
        except mlmd.errors.AlreadyExistsError:  # another process made it first
            return self._retry(lambda: self._store.get_context_by_type_and_name(
                PIPELINE_CONTEXT, pipeline_name))
        return context

    def run_context(self, pipeline_name: str, run_id: str, *, parameters: dict | None = None,
                    orchestrator: str = "local", airflow_run_id: str = "",
                    triggered_by: list[dict] | None = None) -> pb.Context:
        """The run's context, created on first use (Airflow tasks of one run share it).
        triggered_by: what started the run besides a clock or a person — the retraining
        alerts (asset events) of an asset-triggered Airflow run, each {"asset",
        "report_id", "source_dag_id", "source_run_id", "timestamp", "extra"}; kept as JSON
        in the context's `triggered_by` property."""
        name = f"{pipeline_name}.{run_id}"
        found = self._retry(lambda: self._store.get_context_by_type_and_name(RUN_CONTEXT, name))
        if found:
            return found
        context = pb.Context(type_id=self._context_type_id(RUN_CONTEXT), name=name)
        context.properties["pipeline_name"].string_value = pipeline_name
        context.properties["run_id"].string_value = run_id
        context.properties["started_at"].double_value = time.time()
        context.properties["parameters"].string_value = json.dumps(parameters or {}, sort_keys=True)
        context.properties["orchestrator"].string_value = orchestrator
        context.properties["airflow_run_id"].string_value = airflow_run_id
        context.properties["state"].string_value = "running"
        if orchestrator == "local":
            context.properties["pid"].int_value = os.getpid()
            context.properties["pid_start"].int_value = _start_ticks(os.getpid())
            context.properties["host"].string_value = _this_host()
        if triggered_by:
            context.properties["triggered_by"].string_value = json.dumps(triggered_by,
                                                                        sort_keys=True)
        try:
            [context.id] = self._retry(lambda: self._store.put_contexts([context]))
        except mlmd.errors.AlreadyExistsError:
            return self._retry(lambda: self._store.get_context_by_type_and_name(RUN_CONTEXT,
                                                                                name))
        pipeline = self._pipeline_context(pipeline_name)
        self._retry(lambda: self._store.put_parent_contexts(
            [pb.ParentContext(child_id=context.id, parent_id=pipeline.id)]))
        return context

    def finish_run(self, context: pb.Context, state: str) -> None:
        context.properties["state"].string_value = state
        self._retry(lambda: self._store.put_contexts([context]))

    def abandon_dead_runs(self, pipeline_name: str) -> list[str]:
        """Marks failed the local runs of this host still "running" whose runner process is
        gone (a second Ctrl-C ends it at once); returns their run ids."""
        abandoned = []
        for context in self._retry(lambda: self._store.get_contexts_by_type(RUN_CONTEXT)):
            props = {k: _value(v) for k, v in context.properties.items()}
            if props.get("pipeline_name") == pipeline_name and _runner_died(props):
                self.finish_run(context, "failed")
                abandoned.append(props["run_id"])
        return abandoned

    def runs(self, pipeline_name: str | None = None) -> list[dict[str, Any]]:
        """One dict per run (its context's properties, `context_id`, and `steps`: execution
        count per state), oldest first. A local run still recorded "running" whose runner
        process is gone is reported "failed", and so are its running steps (recorded so by
        the next run of its pipeline)."""
        contexts = self._retry(lambda: self._store.get_contexts_by_type(RUN_CONTEXT))
        rows = []
        for context in contexts:
            props = {k: _value(v) for k, v in context.properties.items()}
            if pipeline_name and props.get("pipeline_name") != pipeline_name:
                continue
            died = _runner_died(props)
            executions = self.executions_in_run(context)
            states = ["failed" if died and e.state == "running" else e.state for e in executions]
            if died:
                props["state"] = "failed"
            props["context_id"] = context.id
            props["steps"] = {state: states.count(state) for state in set(states)}
            rows.append(props)
        return sorted(rows, key=lambda r: r.get("started_at") or 0)

    # -- executions -------------------------------------------------------------------------
    def _record(self, proto: pb.Execution, type_name: str = "") -> ExecutionRecord:
        props = {k: _value(v) for k, v in proto.properties.items()}
        return ExecutionRecord(
            id=proto.id, component_id=props.get("component_id", ""), type_name=type_name,
            state=STATE_NAMES.get(proto.last_known_state, "unknown"),
            outcome=props.get("outcome", ""), outcome_reason=props.get("outcome_reason", ""),
            error=props.get("error", ""), cache_key=props.get("cache_key", ""),
            run_id=props.get("run_id", ""), log_path=props.get("log_path", ""),
            duration_s=props.get("duration_s", 0.0) or 0.0,
            created_ms=proto.create_time_since_epoch)

    def _contexts_for(self, pipeline_name: str, run: pb.Context) -> list[pb.Context]:
        return [self._pipeline_context(pipeline_name), run]

    @staticmethod
    def _event(kind: int, key: str, index: int) -> pb.Event:
        event = pb.Event(type=kind)
        event.path.steps.add().key = key
        event.path.steps.add().index = index
        return event

    def _input_events(self, inputs: dict[str, Artifact | None]):
        pairs = []
        for key, artifact in inputs.items():
            if artifact is not None:
                pairs.append((self._to_proto(artifact), self._event(pb.Event.INPUT, key, 0)))
        return pairs

    def _new_execution(self, state: int, *, type_name: str, component_id: str,
                       pipeline_name: str, run: pb.Context, cache_key: str,
                       **strings: str) -> pb.Execution:
        execution = pb.Execution(type_id=self._execution_type_id(type_name),
                                 last_known_state=state)
        props = execution.properties
        props["component_id"].string_value = component_id
        props["pipeline_name"].string_value = pipeline_name
        props["run_id"].string_value = run.properties["run_id"].string_value
        props["cache_key"].string_value = cache_key
        for name, value in strings.items():
            props[name].string_value = value
        return execution

    def begin_execution(self, *, type_name: str, component_id: str, pipeline_name: str,
                        run: pb.Context, inputs: dict[str, Artifact | None], cache_key: str,
                        parameters: dict[str, Any], log_path: str) -> int:
        execution = self._new_execution(
            pb.Execution.RUNNING, type_name=type_name, component_id=component_id,
            pipeline_name=pipeline_name, run=run, cache_key=cache_key, log_path=log_path,
            parameters=json.dumps(parameters, sort_keys=True, default=str),
            host=_this_host())
        execution.properties["pid"].int_value = os.getpid()
        execution.properties["pid_start"].int_value = _start_ticks(os.getpid())
        execution_id, _, _ = self._retry(lambda: self._store.put_execution(
            execution, self._input_events(inputs), self._contexts_for(pipeline_name, run),
            reuse_context_if_already_exist=True))
        return execution_id

    def _execution(self, execution_id: int) -> pb.Execution:
        [execution] = self._retry(lambda: self._store.get_executions_by_id([execution_id]))
        return execution

    def publish_execution(self, execution_id: int, *, pipeline_name: str, run: pb.Context,
                          outputs: dict[str, Artifact], outcome: str, outcome_reason: str,
                          duration_s: float) -> dict[str, Artifact]:
        """Registers the outputs as LIVE and completes the execution, in one transaction."""
        execution = self._execution(execution_id)
        execution.last_known_state = pb.Execution.COMPLETE
        execution.properties["outcome"].string_value = outcome
        execution.properties["outcome_reason"].string_value = outcome_reason
        execution.properties["duration_s"].double_value = duration_s
        pairs = [(self._to_proto(a), self._event(pb.Event.OUTPUT, key, 0))
                 for key, a in outputs.items()]
        _, artifact_ids, _ = self._retry(lambda: self._store.put_execution(
            execution, pairs, self._contexts_for(pipeline_name, run),
            reuse_context_if_already_exist=True))
        for artifact, artifact_id in zip(outputs.values(), artifact_ids):
            artifact.id = artifact_id
        return outputs

    def fail_execution(self, execution_id: int, error: str, duration_s: float = 0.0) -> None:
        execution = self._execution(execution_id)
        execution.last_known_state = pb.Execution.FAILED
        execution.properties["error"].string_value = error[-4000:]
        execution.properties["duration_s"].double_value = duration_s
        self._retry(lambda: self._store.put_executions([execution]))

    def record_cached(self, *, type_name: str, component_id: str, pipeline_name: str,
                      run: pb.Context, inputs: dict[str, Artifact | None], cache_key: str,
                      outputs: dict[str, Artifact], source: ExecutionRecord) -> int:
        """A CACHED execution in this run, linked to the earlier execution's outputs."""
        execution = self._new_execution(
            pb.Execution.CACHED, type_name=type_name, component_id=component_id,
            pipeline_name=pipeline_name, run=run, cache_key=cache_key, outcome=source.outcome,
            outcome_reason=source.outcome_reason, log_path=source.log_path)
        pairs = self._input_events(inputs) + [
            (self._to_proto(a), self._event(pb.Event.OUTPUT, key, 0)) for key, a in outputs.items()]
        execution_id, _, _ = self._retry(lambda: self._store.put_execution(
            execution, pairs, self._contexts_for(pipeline_name, run),
            reuse_context_if_already_exist=True))
        return execution_id

    def outputs_of_execution(self, execution_id: int) -> dict[str, Artifact]:
        events = self._retry(lambda: self._store.get_events_by_execution_ids([execution_id]))
        outputs = [(e.path.steps[0].key, e.artifact_id) for e in events
                   if e.type == pb.Event.OUTPUT]
        artifacts = {a.id: a for a in self.artifacts_by_id([i for _, i in outputs])}
        return {key: artifacts[i] for key, i in outputs if i in artifacts}

    def inputs_of_execution(self, execution_id: int) -> dict[str, Artifact]:
        events = self._retry(lambda: self._store.get_events_by_execution_ids([execution_id]))
        inputs = [(e.path.steps[0].key, e.artifact_id) for e in events if e.type == pb.Event.INPUT]
        artifacts = {a.id: a for a in self.artifacts_by_id([i for _, i in inputs])}
        return {key: artifacts[i] for key, i in inputs if i in artifacts}

    def find_cached(self, cache_key: str) -> tuple[ExecutionRecord, dict[str, Artifact]] | None:
        """The newest successful execution with this cache key whose outputs still exist."""
        options = mlmd.ListOptions(
            filter_query=f"properties.cache_key.string_value = '{cache_key}' AND "
                         f"last_known_state = COMPLETE",
            order_by=mlmd.OrderByField.ID, is_asc=False, limit=5)
        for proto in self._retry(lambda: self._store.get_executions(list_options=options)):
            outputs = self.outputs_of_execution(proto.id)
            if outputs and all(os.path.isdir(a.uri) for a in outputs.values()):
                return self._record(proto), outputs
        return None

    def executions_in_run(self, run: pb.Context) -> list[ExecutionRecord]:
        protos = self._retry(lambda: self._store.get_executions_by_context(run.id))
        return [self._record(p) for p in protos]

    def latest_in_run(self, run: pb.Context, component_id: str) -> ExecutionRecord | None:
        records = [r for r in self.executions_in_run(run) if r.component_id == component_id]
        return max(records, key=lambda r: r.id) if records else None

    def abandon_dead_executions(self, pipeline_name: str) -> list[ExecutionRecord]:
        """Marks FAILED the RUNNING executions of this host whose process is gone (killed)."""
        options = mlmd.ListOptions(
            filter_query=f"last_known_state = RUNNING AND "
                         f"properties.pipeline_name.string_value = '{pipeline_name}'")
        abandoned = []
        for proto in self._retry(lambda: self._store.get_executions(list_options=options)):
            props = proto.properties
            if _died(props["host"].string_value, props["pid"].int_value,
                     props["pid_start"].int_value):
                pid = props["pid"].int_value
                self.fail_execution(proto.id, f"process {pid} died before the step finished")
                abandoned.append(self._record(proto))
        return abandoned

    # -- lineage ----------------------------------------------------------------------------
    def lineage(self, artifact: Artifact) -> dict[str, Any]:
        """What produced the artifact (and from which inputs) and what consumed it."""
        events = self._retry(lambda: self._store.get_events_by_artifact_ids([artifact.id]))
        producer_ids = sorted({e.execution_id for e in events if e.type == pb.Event.OUTPUT})
        consumer_ids = sorted({e.execution_id for e in events if e.type == pb.Event.INPUT})
        ids = producer_ids + consumer_ids
        protos = {p.id: p for p in self._retry(lambda: self._store.get_executions_by_id(ids))}
        type_names = {t.id: t.name for t in self._retry(lambda: self._store.get_execution_types())}

        def describe(execution_id: int) -> dict[str, Any]:
            record = self._record(protos[execution_id], type_names[protos[execution_id].type_id])
            return {"execution": record, "inputs": self.inputs_of_execution(execution_id)}

        producers = [describe(i) for i in producer_ids if i in protos]
        # The first producer really made it; later ones are cached reuses in other runs.
        return {"artifact": artifact, "producers": producers,
                "consumers": [describe(i) for i in consumer_ids if i in protos]}

    def execution_type_name(self, execution_id: int) -> str:
        proto = self._execution(execution_id)
        return self._retry(lambda: self._store.get_execution_types_by_id([proto.type_id]))[0].name


def _runner_died(run: dict[str, Any]) -> bool:
    """A local run recorded "running" whose runner process on this host is gone."""
    return (run.get("state") == "running" and run.get("orchestrator") == "local"
            and _died(run.get("host") or "", run.get("pid") or 0, run.get("pid_start") or 0))


def _this_host() -> str:
    """This host and PID namespace: a PID means one process only within both (containers
    can share a host name, and a home, with their own PID namespaces)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()} pid-ns {namespace}"


def _start_ticks(pid: int) -> int:
    """When process `pid` started (clock ticks since boot, proc(5) /proc/PID/stat field
    22), or 0 when unknown: with the PID, it tells a process from a later one reusing it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _died(host: str, pid: int, pid_start: int) -> bool:
    """Whether the process recorded as (host, pid, pid_start) is known to be gone. Records
    from another host or PID namespace are never judged (their process cannot be seen)."""
    if host != _this_host() or not pid:
        return False
    if not _process_alive(pid):
        return True
    return bool(pid_start) and _start_ticks(pid) not in (0, pid_start)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is as dead as it gets for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True
