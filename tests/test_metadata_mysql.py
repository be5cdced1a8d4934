"""The metadata store on a real MariaDB server (MySQL protocol, ML Metadata's own client) and
on SQLite, with the same test bodies: caching, lineage, run listing, a failed step,
rollback bookkeeping and concurrent writers from several processes. MariaDB-only: a lost
connection and a lock wait timeout are retried, an unreachable server fails with the
password masked. The store URIs given to `connection_config` are checked first."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from components.artifacts import Model, PushedModel
from components.pusher import push, serving_base
from pipelines.home import Home
from pipelines.local_runner import run_pipeline
from pipelines.metadata import Metadata, MetadataStoreUnavailable, connection_config, redact_uri
from pipelines.rollback import RollbackError, rollback
from tests import core_pipelines
from tests.core_pipelines import Numbers

REPO = Path(__file__).resolve().parents[1]
PIPEWRIGHT = [sys.executable, "-m", "pipelines.cli"]
PIPELINE_FILE = str(Path(core_pipelines.__file__))
QUIET = {"echo": lambda line: None}


@pytest.fixture(params=["sqlite", "mariadb"])
def store(request, tmp_path, monkeypatch) -> str:
    """PIPEWRIGHT_METADATA for this test: a SQLite URI in tmp_path, or a fresh database on
    the session's MariaDB server (ML Metadata creates it and its tables)."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path}/store/metadata.sqlite"  # sqlite:////abs/path
    else:
        uri = request.getfixturevalue("mariadb").uri_for(f"mlmd_{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("PIPEWRIGHT_METADATA", uri)
    monkeypatch.delenv("PIPEWRIGHT_SERVING_DIR", raising=False)
    return uri


@pytest.fixture
def mysql(mariadb, monkeypatch):
    """A fresh database on the MariaDB server, as PIPEWRIGHT_METADATA."""
    uri = mariadb.uri_for(f"mlmd_{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("PIPEWRIGHT_METADATA", uri)
    return uri


def _read(artifact) -> list[int]:
    return [int(x) for x in Path(artifact.path("numbers.txt")).read_text().split()]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(PIPEWRIGHT + list(args), cwd=REPO, capture_output=True, text=True,
                          timeout=180, env=dict(os.environ))


# -- the store URI ---------------------------------------------------------------------------

def test_store_uris_that_work_and_the_ones_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mysql = connection_config("mysql://ml%40team:s%3Acret@DB.Internal:3307/Mlmd_1").mysql
    assert (mysql.host, mysql.port, mysql.database) == ("db.internal", 3307, "Mlmd_1")
    assert (mysql.user, mysql.password) == ("ml@team", "s:cret")
    assert connection_config("MySQL://u:p@h/db").mysql.port == 3306  # RFC 3986: any case
    via_socket = connection_config("mysql://u:p@/db?unix_socket=/run/mysqld.sock").mysql
    assert (via_socket.socket, via_socket.host, via_socket.port) == ("/run/mysqld.sock", "", 0)
    assert connection_config("sqlite:///rel/m.sqlite").sqlite.filename_uri == \
        str(tmp_path / "rel" / "m.sqlite")
    assert connection_config(f"sqlite:///{tmp_path}/abs.sqlite").sqlite.filename_uri == \
        str(tmp_path / "abs.sqlite")
    assert connection_config("plain/m.sqlite").sqlite.filename_uri == \
        str(tmp_path / "plain" / "m.sqlite")

    for uri, message in [
        ("postgresql://u:hunter2@h/db", r"unsupported scheme 'postgresql'; use mysql://"),
        ("mysql+pymysql://u:hunter2@h/db", r"unsupported scheme 'mysql\+pymysql'.*no '\+driver'"),
        ("mysql://u:hunter2@h:3306/", r"no database"),
        ("mysql://u:hunter2@h:3306/my-db", r"database 'my-db' must be letters"),
        ("mysql://u:hunter2@h:99999/db", r"port is not a number in 1-65535"),
        ("mysql://u:hunter2@h:0/db", r"port is not a number in 1-65535"),
        ("mysql://u:hunter2@/db", r"no host"),
        ("mysql://u:hunter2@h/db?ssl=1", r"unknown query parameter\(s\) \['ssl'\]"),
        ("mysql://u:hunter2@h:3306/db?unix_socket=/s", r"takes no host or port"),
        ("sqlite://", r"sqlite:///relative/path or sqlite:////absolute/path"),
        ("sqlite://host/x.sqlite", r"sqlite:///relative/path"),
    ]:
        with pytest.raises(ValueError, match=message) as raised:
            connection_config(uri)
        assert "hunter2" not in str(raised.value), uri
    assert not (tmp_path / "postgresql:").exists()  # it used to become a SQLite directory
    assert redact_uri("mysql://u:hunter2@h:3306/db") == "mysql://u:***@h:3306/db"
    assert redact_uri("/x/metadata.sqlite") == "/x/metadata.sqlite"


# -- the same behaviours on SQLite and MariaDB -----------------------------------------------

def test_rerun_is_fully_cached_and_a_changed_parameter_reruns_dependents(store, tmp_path):
    pipeline = core_pipelines.create_pipeline()
    first = run_pipeline(pipeline, home=tmp_path, **QUIET)
    assert first.ok and first.executed() == ["MakeNumbers", "Scale", "Total"]
    again = run_pipeline(pipeline, home=tmp_path, **QUIET)
    assert again.executed() == [] and {s.status for s in again.steps.values()} == {"cached"}
    assert again.steps["Total"].outputs["total"].id == first.steps["Total"].outputs["total"].id
    changed = run_pipeline(pipeline, home=tmp_path, params={"factor": 10}, **QUIET)
    assert changed.executed() == ["Scale", "Total"]
    assert _read(changed.steps["Total"].outputs["total"]) == [3 + 30]
    assert Metadata(store).uri == redact_uri(store)


def test_lineage_through_the_cli_and_runs_listing(store, tmp_path):
    result = run_pipeline(core_pipelines.create_pipeline(), home=tmp_path, **QUIET)
    scaled = result.steps["Scale"].outputs["scaled"]
    graph = Metadata(store).lineage(scaled)
    [producer] = graph["producers"]
    assert producer["execution"].component_id == "Scale"
    assert producer["inputs"]["numbers"].id == result.steps["MakeNumbers"].outputs["numbers"].id
    assert [c["execution"].component_id for c in graph["consumers"]] == ["Total"]

    lineage = _cli("lineage", scaled.uri, "--home", str(tmp_path))  # reads PIPEWRIGHT_METADATA
    assert lineage.returncode == 0, lineage.stderr
    assert "produced by Scale" in lineage.stdout and "consumed by Total" in lineage.stdout
    [run] = Metadata(store).runs("numbers")
    assert (run["run_id"], run["state"], run["steps"]) == (result.run_id, "succeeded",
                                                          {"complete": 3})


def test_failed_step_is_recorded_and_the_next_run_redoes_it(store, tmp_path):
    pipeline = core_pipelines.create_pipeline()
    failed = run_pipeline(pipeline, home=tmp_path, params={"fail": True}, **QUIET)
    assert not failed.ok and "injected failure" in failed.failure
    metadata = Metadata(store)
    [run] = metadata.runs("numbers")
    assert run["state"] == "failed" and run["steps"] == {"complete": 1, "failed": 1}
    [scale] = [r for r in metadata.executions_in_run(
        metadata.run_context("numbers", failed.run_id)) if r.component_id == "Scale"]
    assert scale.state == "failed" and "RuntimeError: injected failure" in scale.error
    assert not [a for a in metadata.artifacts_of_type(Numbers) if a.name.startswith("Scale.")]
    fixed = run_pipeline(pipeline, home=tmp_path, **QUIET)
    assert fixed.ok and fixed.executed() == ["Scale", "Total"]
    assert [r["state"] for r in Metadata(store).runs("numbers")] == ["failed", "succeeded"]


@pytest.fixture(scope="session")
def tiny_saved_model(tmp_path_factory) -> str:
    """A real, loadable SavedModel: one MetaGraph tagged `serve` whose graph computes
    y = 2 * x (float32[None]) with signature `serving_default` — TF1 SavedModel format as
    tf.compat.v1.saved_model.Builder writes it (saved_model.proto: schema version 1, the
    meta graphs; no variables). Built from TensorBoard's copies of TensorFlow's protos so
    the test needs no TensorFlow import (a minute on a loaded machine); rollback only
    copies it, and `tf.saved_model.load` / TF Serving load it."""
    from tensorboard.compat.proto import attr_value_pb2, meta_graph_pb2, types_pb2

    graph = meta_graph_pb2.MetaGraphDef()
    graph.meta_info_def.tags.append("serve")
    graph.meta_info_def.tensorflow_version = "2.16.1"
    x = graph.graph_def.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = types_pb2.DT_FLOAT
    x.attr["shape"].shape.dim.add(size=-1)
    two = graph.graph_def.node.add(name="two", op="Const")
    two.attr["dtype"].type = types_pb2.DT_FLOAT
    two.attr["value"].tensor.dtype = types_pb2.DT_FLOAT
    two.attr["value"].tensor.float_val.append(2.0)
    two.attr["value"].tensor.tensor_shape.SetInParent()
    y = graph.graph_def.node.add(name="y", op="Mul", input=["x", "two"])
    y.attr["T"].CopyFrom(attr_value_pb2.AttrValue(type=types_pb2.DT_FLOAT))
    signature = graph.signature_def["serving_default"]
    signature.method_name = "tensorflow/serving/predict"
    for key, name in (("x", "x:0"), ("y", "y:0")):
        info = (signature.inputs if key == "x" else signature.outputs)[key]
        info.name, info.dtype = name, types_pb2.DT_FLOAT
        info.tensor_shape.dim.add(size=-1)
    body = graph.SerializeToString()
    # SavedModel { int64 saved_model_schema_version = 1; repeated MetaGraphDef meta_graphs = 2; }
    saved_model = b"\x08\x01\x12" + _varint(len(body)) + body
    out = tmp_path_factory.mktemp("tiny-model") / "saved_model"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(saved_model)
    return str(out)


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def _trained_and_pushed(metadata: Metadata, home: Home, destination: str, saved_model: str,
                        number: int) -> Model:
    """Records a Trainer execution whose Model is `saved_model`, then a Pusher execution
    that pushed it to `destination`, as the real components record them."""
    run = metadata.run_context("numbers", f"night-{number}")
    trainer = metadata.begin_execution(type_name="Trainer", component_id="Trainer",
                                       pipeline_name="numbers", run=run, inputs={},
                                       cache_key=f"trainer-{number}", parameters={}, log_path="")
    model = Model(uri=home.artifact_dir("numbers", "Trainer", "model", trainer),
                  name="Trainer.model")
    shutil.copytree(saved_model, model.serving_dir)
    metadata.publish_execution(trainer, pipeline_name="numbers", run=run,
                               outputs={"model": model}, outcome="ok", outcome_reason="",
                               duration_s=0.1)
    _pushed(metadata, home, destination, model, run, f"pusher-{number}")
    metadata.finish_run(run, "succeeded")
    return model


def test_rollback_bookkeeping(store, tmp_path, tiny_saved_model):
    home = Home.resolve(tmp_path)
    destination = os.path.abspath(serving_base(home.serving_dir, "", "numbers"))
    metadata = Metadata(store)
    first = _trained_and_pushed(metadata, home, destination, tiny_saved_model, 1)
    second = _trained_and_pushed(metadata, home, destination, tiny_saved_model, 2)

    rolled = rollback("numbers", str(tmp_path))
    assert (rolled.pushed_version, rolled.model_id) == (3, first.id)
    assert os.path.isfile(os.path.join(destination, "3", "saved_model.pb"))
    fresh = Metadata(store)  # what another process reads back
    pushes = {p.pushed_version: p for p in fresh.artifacts_of_type(PushedModel)}
    assert sorted(pushes) == [1, 2, 3]
    assert pushes[2].model_id == second.id and pushes[2].rolled_back == 1
    assert not pushes[1].rolled_back and not pushes[3].rolled_back
    [producer] = fresh.lineage(pushes[3])["producers"]
    assert producer["execution"].component_id == "rollback"
    assert producer["inputs"]["model"].id == first.id
    rollback_runs = [r for r in fresh.runs("numbers") if r["orchestrator"] == "rollback"]
    assert [(r["state"], r["steps"]) for r in rollback_runs] == [("succeeded", {"complete": 1})]

    # Version 3 serves the first model, and the only earlier version of another model (2)
    # was rolled back: nothing to go back to.
    with pytest.raises(RollbackError, match="nothing to roll back to"):
        rollback("numbers", str(tmp_path))


def _pushed_again(metadata: Metadata, home: Home, destination: str, model, number: int) -> int:
    """A Pusher run pushing an existing model again (an equally good model re-blessed)."""
    return _pushed(metadata, home, destination, model,
                   metadata.run_context("numbers", f"again-{number}"), f"again-{number}")


def _pushed(metadata: Metadata, home: Home, destination: str, model, run, key: str) -> int:
    """A Pusher execution in `run` that pushed `model`, recorded as the Pusher records it."""
    pusher = metadata.begin_execution(type_name="Pusher", component_id="Pusher",
                                      pipeline_name="numbers", run=run, inputs={"model": model},
                                      cache_key=key, parameters={}, log_path="")
    version = push(model.serving_dir, destination, metadata)
    pushed = PushedModel(uri=home.artifact_dir("numbers", "Pusher", "pushed_model", pusher),
                         name="Pusher.pushed_model")
    os.makedirs(pushed.uri)
    pushed.set(pushed=1, pushed_version=version, pushed_destination=destination,
               model_id=model.id, model_name="numbers")
    metadata.publish_execution(pusher, pipeline_name="numbers", run=run,
                               outputs={"pushed_model": pushed}, outcome="ok",
                               outcome_reason="", duration_s=0.1)
    return version


def test_rollback_follows_the_serving_history_not_the_model_ids(store, tmp_path,
                                                                tiny_saved_model):
    home = Home.resolve(tmp_path)
    destination = os.path.abspath(serving_base(home.serving_dir, "", "numbers"))
    metadata = Metadata(store)
    a = _trained_and_pushed(metadata, home, destination, tiny_saved_model, 1)  # v1
    b = _trained_and_pushed(metadata, home, destination, tiny_saved_model, 2)  # v2
    assert _pushed_again(metadata, home, destination, a, 3) == 3  # A serves again as v3

    # The model served before v3 is B (v2), though A was trained first.
    rolled = rollback("numbers", str(tmp_path))
    assert (rolled.model_id, rolled.pushed_version) == (b.id, 4)
    pushes = {p.pushed_version: p for p in Metadata(store).artifacts_of_type(PushedModel)}
    assert pushes[4].model_id == b.id and pushes[3].rolled_back == 1
    # From v4 (B): v3 was rolled back, so A as served by v1 comes back.
    assert rollback("numbers", str(tmp_path)).model_id == a.id
    pushes = {p.pushed_version: p for p in Metadata(store).artifacts_of_type(PushedModel)}
    assert pushes[5].model_id == a.id and pushes[4].rolled_back == 1
    # A rolled-back push never comes back: from v5 (A) the candidates are v2 (B) only.
    assert rollback("numbers", str(tmp_path)).model_id == b.id


def _write_runs(uri: str, tag: str, count: int) -> None:
    """A writer process: `count` runs, each with one published execution and its output."""
    metadata = Metadata(uri)
    for i in range(count):
        run = metadata.run_context("writers", f"{tag}-{i}")
        execution = metadata.begin_execution(
            type_name="Writer", component_id="Writer", pipeline_name="writers", run=run,
            inputs={}, cache_key=f"{tag}-{i}", parameters={"i": i}, log_path="")
        numbers = Numbers(uri=f"/nonexistent/{tag}/{i}", name="Writer.numbers")
        numbers.set(count=i)
        metadata.publish_execution(execution, pipeline_name="writers", run=run,
                                   outputs={"numbers": numbers}, outcome="ok",
                                   outcome_reason="", duration_s=0.0)
        metadata.finish_run(run, "succeeded")


def _writer(uri: str, tag: str, home: str) -> None:
    """A writer process: `pipewright run` of the core pipeline in `home` (shared with the
    other writer) and 15 runs of one execution each."""
    from pipelines import cli

    assert cli.main(["run", PIPELINE_FILE, "--home", home]) == 0
    _write_runs(uri, tag, 15)


def test_concurrent_writers_from_two_processes(store, tmp_path):
    # Both start on a store nobody opened yet: they race to create its tables, too.
    # The CLI reuses the imported tests.core_pipelines, so its classes (and cache keys) are
    # those of this process.
    code = "import sys; from tests.test_metadata_mysql import _writer; _writer(*sys.argv[1:])"
    writers = [subprocess.Popen([sys.executable, "-c", code, store, tag, str(tmp_path)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for tag in ("a", "b")]
    for process in writers:
        output = process.communicate(timeout=180)[0]
        assert process.returncode == 0, output[-3000:]
    metadata = Metadata(store)
    writes = metadata.runs("writers")
    assert len(writes) == 30 and {r["state"] for r in writes} == {"succeeded"}
    assert all(r["steps"] == {"complete": 1} for r in writes)
    assert len({a.id for a in metadata.artifacts_of_type(Numbers)
                if a.name == "Writer.numbers"}) == 30
    numbers_runs = metadata.runs("numbers")
    assert len(numbers_runs) == 2 and {r["state"] for r in numbers_runs} == {"succeeded"}
    assert [sum(r["steps"].values()) for r in numbers_runs] == [3, 3]
    after = run_pipeline(core_pipelines.create_pipeline(), home=tmp_path, **QUIET)
    assert after.executed() == []  # whichever process executed a step, it is cached now


# -- MariaDB only: what a network database adds ----------------------------------------------

def test_unreachable_mysql_names_the_store_with_the_password_masked(mariadb):
    from pipelines.mariadb_server import _free_port

    closed = f"mysql://pipewright:{mariadb.password}@127.0.0.1:{_free_port()}/mlmd"
    started = time.monotonic()
    with pytest.raises(MetadataStoreUnavailable) as raised:
        Metadata(closed, connect_timeout_s=1.5)
    assert time.monotonic() - started >= 1.5  # retried for the whole budget
    message = str(raised.value)
    assert mariadb.password not in message and redact_uri(closed) in message
    assert "pipewright:***@127.0.0.1:" in message and "nothing accepts connections" in message
    assert isinstance(raised.value, ConnectionError)  # Airflow retries the task

    wrong = mariadb.uri.replace(mariadb.password, "not-the-password")
    with pytest.raises(MetadataStoreUnavailable, match="refused the login") as raised:
        Metadata(wrong)
    assert "not-the-password" not in str(raised.value)


def test_unix_socket_uri_reaches_the_same_store(mariadb, mysql, tmp_path):
    result = run_pipeline(core_pipelines.create_pipeline(), home=tmp_path, **QUIET)
    database = mysql.rsplit("/", 1)[1]
    via_socket = f"mysql://{mariadb.user}:{mariadb.password}@/{database}" \
                 f"?unix_socket={mariadb.socket}"
    metadata = Metadata(via_socket)
    assert metadata.uri == f"mysql://{mariadb.user}:***@/{database}?unix_socket={mariadb.socket}"
    assert [r["run_id"] for r in metadata.runs("numbers")] == [result.run_id]


def test_lost_connection_is_retried_on_a_new_connection(mariadb, mysql, tmp_path):
    result = run_pipeline(core_pipelines.create_pipeline(), home=tmp_path, **QUIET)
    metadata = Metadata(mysql)
    assert len(metadata.runs("numbers")) == 1
    mariadb.stop()  # the store's connection is now broken, and nothing listens
    answer: dict = {}

    def read_runs():
        started = time.monotonic()
        answer["runs"] = metadata.runs("numbers")
        answer["seconds"] = time.monotonic() - started

    reader = threading.Thread(target=read_runs)
    try:
        reader.start()
        time.sleep(1.5)
        assert reader.is_alive(), answer  # still retrying: the server is down
    finally:
        mariadb.restart()
    reader.join(timeout=60)
    assert [r["run_id"] for r in answer["runs"]] == [result.run_id]
    assert answer["seconds"] >= 1.5
    again = run_pipeline(core_pipelines.create_pipeline(), home=tmp_path, **QUIET)
    assert again.executed() == []


def test_lock_wait_timeout_is_retried(mariadb, mysql):
    from pipelines.mariadb_server import binaries

    metadata = Metadata(mysql)
    run = metadata.run_context("numbers", "locked")
    database = mysql.rsplit("/", 1)[1]
    mariadb.sql("SET GLOBAL innodb_lock_wait_timeout = 1", as_root=True)
    holder = None
    try:
        writer = Metadata(mysql)  # connects after the change: a 1 s lock wait
        holder = subprocess.Popen(
            [binaries()["mariadb"], "--no-defaults", "--user=root", f"--socket={mariadb.socket}",
             "--batch", "--skip-column-names", "--unbuffered", database],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        holder.stdin.write(f"START TRANSACTION;\nSELECT id FROM Context WHERE id = {run.id} "
                           f"FOR UPDATE;\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == str(run.id)  # the row is locked now

        def release():
            time.sleep(2.5)
            holder.stdin.write("COMMIT;\n")
            holder.stdin.close()

        releaser = threading.Thread(target=release)
        releaser.start()
        started = time.monotonic()
        writer.finish_run(run, "succeeded")  # waits, times out, retries until released
        waited = time.monotonic() - started
        releaser.join()
    finally:
        mariadb.sql("SET GLOBAL innodb_lock_wait_timeout = 50", as_root=True)
        if holder is not None and holder.poll() is None:
            holder.kill()
    assert waited >= 2.0
    assert Metadata(mysql).runs("numbers")[0]["state"] == "succeeded"
