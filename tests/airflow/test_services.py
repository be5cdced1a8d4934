"""The whole system as `make up` starts it: the real Airflow services on 127.0.0.1 and the
model server on the push directory, sharing one temporary home.

Two simulated nights run on the same services. Night 1: span 1 (a dated folder) arrives,
the penguin DAG is triggered over the REST API v2 with a conf, reaches success and pushes
version 1, which the model server answers for over REST and gRPC; the grid view of the run
is rendered by headless Chromium. Night 2: span 2 arrives, the run trains again, the
Evaluator compares the new model with the served one, Pusher pushes version 2, and the
server answers from it without a restart. A rollback then serves night 1's model again (as
version 3). Night 3: span 3 arrives and `down` stops everything while the InfraValidator
validates; after `up`, the next run judges the new model against night 1's model (the one
served) and pushes it. Finally `down` leaves no process behind."""
from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from components.artifacts import PushedModel
from pipelines import registry
from pipelines.airflow_adapter import pipewright_run_id
from pipelines.metadata import Metadata
from pipelines.services import Services
from tests.airflow.conftest import REPO_ROOT
from tests.airflow.system import SPAN_PATTERN, trigger, wait_for_run, write_span

RUN_TIMEOUT_S = 600
EXAMPLE = {"island": "Biscoe", "bill_length_mm": 48.6, "bill_depth_mm": 16.0,
           "flipper_length_mm": 230.0, "body_mass_g": 5800.0, "sex": "male"}
INT_FEATURES = {"flipper_length_mm", "body_mass_g"}  # INT in schemas/penguin/schema.pbtxt
SCREENSHOT = REPO_ROOT / "bench" / "out" / "airflow_grid_penguin.png"
CHROMIUM = "/usr/bin/chromium"


def finished(services: Services, run_id: str,
             every_task_succeeds: bool = False) -> tuple[dict, dict[str, str]]:
    run, states, other_logs = wait_for_run(services, "penguin", run_id, RUN_TIMEOUT_S)
    assert run["state"] == "success", \
        f"penguin run {run_id} is {run['state']}: {states}\n{other_logs}"
    if every_task_succeeds:
        assert set(states.values()) == {"success"}, f"{states}\n{other_logs}"
    return run, states


def wait_for_version(services: Services, version: int, timeout_s: float = 90) -> None:
    url = f"http://127.0.0.1:{services.rest_port}/v1/models/penguin"
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                status = json.loads(response.read())
            available = {int(v["version"]) for v in status["model_version_status"]
                         if v["state"] == "AVAILABLE"}
            if version in available:
                return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"model server did not load version {version}: {status}")


def predict_rest(services: Services) -> list[float]:
    body = json.dumps({"signature_name": "serving_raw", "instances": [EXAMPLE]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{services.rest_port}/v1/models/penguin:predict", data=body,
        method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        [answer] = json.loads(response.read())["predictions"]
    assert sorted(answer["classes"]) == ["Adelie", "Chinstrap", "Gentoo"], answer
    return answer["scores"]


def predict_grpc(services: Services) -> tuple[int, list[float]]:
    """The version that answered, and its scores."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "penguin"
    request.model_spec.signature_name = "serving_raw"
    for name, value in EXAMPLE.items():
        dtype = tf.string if isinstance(value, str) else tf.float32
        request.inputs[name].CopyFrom(tf.make_tensor_proto([value], dtype=dtype))
    with grpc.insecure_channel(f"127.0.0.1:{services.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=30)
    [scores] = tf.make_ndarray(response.outputs["scores"]).tolist()
    [classes] = tf.make_ndarray(response.outputs["classes"]).tolist()
    assert sorted(c.decode() for c in classes) == ["Adelie", "Chinstrap", "Gentoo"], classes
    return response.model_spec.version.value, scores


def classify_rest_and_grpc(services: Services) -> tuple[list, list]:
    """TF Serving's Classify API over REST (`:classify`, JSON examples) and gRPC
    (ClassificationRequest): each answer's (class name, score) pairs."""
    import grpc
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    # A tf.Example carries each feature in its schema type: the penguin schema's flipper
    # length and body mass are INT (JSON integers), the bill measures FLOAT.
    example = {name: int(value) if name in INT_FEATURES else value
               for name, value in EXAMPLE.items()}
    body = json.dumps({"signature_name": "classify", "examples": [example]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{services.rest_port}/v1/models/penguin:classify", data=body,
        method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        [rest] = json.loads(response.read())["results"]
    grpc_request = classification_pb2.ClassificationRequest()
    grpc_request.model_spec.name = "penguin"
    grpc_request.model_spec.signature_name = "classify"
    example = grpc_request.input.example_list.examples.add()
    for name, value in EXAMPLE.items():
        if isinstance(value, str):
            example.features.feature[name].bytes_list.value.append(value.encode())
        elif name in INT_FEATURES:
            example.features.feature[name].int64_list.value.append(int(value))
        else:
            example.features.feature[name].float_list.value.append(value)
    with grpc.insecure_channel(f"127.0.0.1:{services.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Classify(grpc_request, timeout=30)
    [classifications] = answer.result.classifications
    return ([tuple(pair) for pair in rest],
            [(c.label, c.score) for c in classifications.classes])


def versions(services: Services) -> list[str]:
    return sorted(v for v in os.listdir(services.model_base_path) if v.isdigit())


def assert_probabilities(scores: list[float]) -> None:
    assert len(scores) == 3, scores  # Adelie, Gentoo, Chinstrap
    assert all(0.0 <= s <= 1.0 for s in scores) and abs(sum(scores) - 1.0) < 1e-3, scores


def test_night_1_rest_trigger_with_conf_pushes_version_1_served_over_rest_and_grpc(
        system, night_1):
    conf, run_id = night_1
    run, states = finished(system, run_id, every_task_succeeds=True)
    assert run["conf"] == conf
    assert versions(system) == ["1"]

    wait_for_version(system, 1)
    assert_probabilities(predict_rest(system))
    version, scores = predict_grpc(system)
    assert version == 1
    assert_probabilities(scores)
    rest, grpc_answer = classify_rest_and_grpc(system)
    for pairs in (rest, grpc_answer):
        assert sorted(label for label, _ in pairs) == ["Adelie", "Chinstrap", "Gentoo"], pairs
        assert_probabilities([score for _, score in pairs])

    # The metadata store ties the run to Airflow's; the DAG's success callback (run by the
    # DAG processor, a little after the run) marks it succeeded.
    metadata = Metadata(system.home.metadata_uri)
    deadline = time.monotonic() + 60
    while True:
        [record] = [r for r in metadata.runs("penguin") if r["airflow_run_id"] == run_id]
        if record["state"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert record["orchestrator"] == "airflow" and record["run_id"] == pipewright_run_id(run_id)
    assert record["state"] == "succeeded"


def test_grid_view_of_the_run_shows_every_task(system, tmp_path):
    if not os.path.exists(CHROMIUM):
        subprocess.run("apt-get update && apt-get install -y chromium", shell=True, check=True,
                       capture_output=True, timeout=600)
    grid = f"{system.api_url}/dags/penguin"
    dom = headless_chromium(system, grid, ["--dump-dom"], tmp_path).stdout
    for task_id in [c.id for c in registry.load("penguin").components]:
        assert task_id in dom, f"{task_id} is not on the grid view"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    headless_chromium(system, grid, [f"--screenshot={SCREENSHOT}", "--window-size=1600,1000"],
                      tmp_path)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"grid view screenshot: {SCREENSHOT}")


def headless_chromium(services: Services, url: str, args: list[str], tmp_path: Path):
    """Opens `url` logged in: the UI keeps its JWT in the `_token` cookie, which a local
    redirect sets for 127.0.0.1 (cookies are not bound to a port) before the UI loads."""
    token = services.token()

    class LoginRedirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Set-Cookie", f"_token={token}; Path=/; SameSite=Lax")
            self.send_header("Location", url)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), LoginRedirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    try:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
             *args, f"http://127.0.0.1:{server.server_port}/"],
            capture_output=True, text=True, timeout=180)
    finally:
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_night_2_new_span_trains_again_and_the_server_moves_to_version_2(system):
    incoming = Path(system.home.root) / "incoming"
    write_span(incoming, "2026-03-02", keep=lambda i: True)
    # The scheduled run's settings: default training steps and accuracy threshold.
    # rollout=immediate: a canary's bake needs live traffic (tests/test_rollout_live.py).
    run, states = finished(system, trigger(system, "penguin", {"data_root": str(incoming),
                                                              "input_pattern": SPAN_PATTERN,
                                                              "rollout": "immediate"}),
                           every_task_succeeds=True)
    assert versions(system) == ["1", "2"]

    metadata = Metadata(system.home.metadata_uri)
    context = metadata.run_context("penguin", pipewright_run_id(run["dag_run_id"]))
    [record] = [r for r in metadata.runs("penguin") if r["airflow_run_id"] == run["dag_run_id"]]
    assert record["orchestrator"] == "airflow"

    def outputs(component_id):
        return metadata.outputs_of_execution(metadata.latest_in_run(context, component_id).id)

    # The newest span was read: the day 2026-03-02.
    day_2 = (dt.date(2026, 3, 2) - dt.date(1970, 1, 1)).days
    assert outputs("ExampleGen")["examples"].span == day_2
    # The new model was judged against the model being served (version 1), and won.
    [served] = [p for p in metadata.artifacts_of_type(PushedModel) if p.pushed_version == 1]
    blessing = outputs("Evaluator")["blessing"]
    assert blessing.blessed == 1 and blessing.baseline_model_id == served.model_id
    assert outputs("Pusher")["pushed_model"].pushed_version == 2

    wait_for_version(system, 2)
    version, scores = predict_grpc(system)
    assert version == 2
    assert_probabilities(scores)
    assert_probabilities(predict_rest(system))


def outputs_in_run(metadata: Metadata, airflow_run_id: str, component_id: str) -> dict:
    context = metadata.run_context("penguin", pipewright_run_id(airflow_run_id))
    record = metadata.latest_in_run(context, component_id)
    return metadata.outputs_of_execution(record.id) if record else {}


def sandbox_servers(services: Services) -> list[psutil.Process]:
    """The InfraValidator's sandbox model servers among the services' descendants."""
    found = []
    for pid in services.running().values():
        for process in psutil.Process(pid).children(recursive=True):
            try:
                if "infra-validation-" in " ".join(process.cmdline()):
                    found.append(process)
            except psutil.Error:
                continue
    return found


def test_the_pipewright_view_in_the_airflow_ui_shows_runs_reports_and_a_diff(system, night_1,
                                                                           tmp_path):
    """Nights 1 and 2 in the Pipewright view, served by Airflow's own API server (the
    plugin, listed by Airflow's plugin API with its navigation entry) and opened logged in
    with headless Chromium: the runs, night 2's run with a cached step, the evaluation
    report per slice, and the diff of the two nights; screenshots under bench/out/."""
    _, airflow_run_1 = night_1
    finished(system, airflow_run_1)
    deadline = time.monotonic() + 90  # the DAG's success callback records the state late
    while True:
        runs = [r for r in Metadata(system.home.metadata_uri).runs("penguin")
                if r["orchestrator"] == "airflow"]
        if runs[-1]["state"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(2)
    night_1_id, night_2_id = pipewright_run_id(airflow_run_1), runs[-1]["run_id"]
    assert night_2_id != night_1_id and runs[-1]["state"] == "succeeded"

    plugins = system.api("GET", "/api/v2/plugins")["plugins"]
    [plugin] = [p for p in plugins if p["name"] == "pipewright"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/pipewright"
    assert plugin["external_views"][0]["destination"] == "nav"

    def page(path: str, name: str) -> str:
        """The page as Chromium renders it (DOM), and its screenshot."""
        url = f"{system.api_url}/pipewright/{path}"
        dom = headless_chromium(system, url, ["--dump-dom"], tmp_path).stdout
        shot = REPO_ROOT / "bench" / "out" / f"pipewright_view_{name}.png"
        headless_chromium(system, url, [f"--screenshot={shot}", "--window-size=1400,1000"],
                          tmp_path)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return dom

    index = page("", "runs")
    row = index[index.index(f">{night_2_id}<"):].split("</tr>")[0]
    assert "succeeded" in row and "v2" in row and "sparse_categorical_accuracy=0." in row, row
    run = page(f"runs/penguin/{night_2_id}", "run")
    for component in registry.load("penguin").components:
        assert f"<a id=\"{component.id}\"></a>" in run, component.id
    schema_row = run[run.index('<a id="ImportSchemaGen">'):].split("</tr>")[0]
    assert '<span class="cached">cached</span>' in schema_row, schema_row
    evaluation = run[run.index('<a id="Evaluator">'):].split("</tr>")[0]
    artifact_id = evaluation.split('href="../../artifacts/')[1].split('"')[0]
    report = page(f"artifacts/{artifact_id}", "evaluation")
    assert "BLESSED" in report and "baseline model" in report
    assert "island=Biscoe" in report and "sparse_categorical_accuracy" in report
    diff = page(f"diff?a={night_1_id}&b={night_2_id}", "diff")
    assert f"A = {night_1_id}" in diff and "span" in diff and "as version 2" in diff

    # The grid's extra link on each task leads to its step on the run's page.
    links = system.api("GET", f"/api/v2/dags/penguin/dagRuns/"
                              f"{urllib.parse.quote(runs[-1]['airflow_run_id'], safe='')}"
                              f"/taskInstances/Evaluator/links")
    assert links["extra_links"]["Pipewright report"] == \
        f"{system.api_url}/pipewright/runs/penguin/{night_2_id}#Evaluator", links
    # Task logs end with the step's key numbers, without TensorFlow's CUDA start-up noise.
    path = f"/api/v2/dags/penguin/dagRuns/{urllib.parse.quote(runs[-1]['airflow_run_id'])}"
    logs = {task: json.dumps(system.api("GET", f"{path}/taskInstances/{task}/logs/1"))
            for task in ("ExampleGen", "Trainer", "Evaluator")}
    assert "examples (train " in logs["ExampleGen"]
    assert "TensorBoard: tensorboard --logdir" in logs["Trainer"]
    assert "sparse_categorical_accuracy 0." in logs["Evaluator"]
    for text in logs.values():
        assert "Unable to register" not in text and "cuda_dnn" not in text


def test_night_3_down_during_infra_validation_then_up_pushes_against_the_served_model(system):
    from pipelines.rollback import rollback

    metadata = Metadata(system.home.metadata_uri)
    [first] = [p for p in metadata.artifacts_of_type(PushedModel) if p.pushed_version == 1]
    rolled = rollback("penguin", system.home.root)
    assert (rolled.model_id, rolled.pushed_version) == (first.model_id, 3)
    wait_for_version(system, 3)

    incoming = Path(system.home.root) / "incoming"
    write_span(incoming, "2026-03-03", keep=lambda i: True)
    conf = {"data_root": str(incoming), "input_pattern": SPAN_PATTERN, "rollout": "immediate"}
    interrupted = trigger(system, "penguin", conf)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not sandbox_servers(system):
        assert time.monotonic() < deadline, "the InfraValidator never started its server"
        time.sleep(0.5)
    system.down(echo=lambda line: None)

    # The interrupted validation left no verdict: its execution failed, no blessing exists.
    assert outputs_in_run(metadata, interrupted, "InfraValidator") == {}
    assert versions(system) == ["1", "2", "3"]
    system.up(first_run=False, echo=lambda line: None)

    run, states = finished(system, trigger(system, "penguin", conf))
    assert set(states.values()) == {"success"}, states
    # Recorded failed by the task itself, or (if it was killed first) by the next run.
    context = metadata.run_context("penguin", pipewright_run_id(interrupted))
    killed = [r.state for r in metadata.executions_in_run(context)
              if r.component_id == "InfraValidator"]
    assert killed and set(killed) == {"failed"}, killed
    evaluator = outputs_in_run(metadata, run["dag_run_id"], "Evaluator")
    blessing = evaluator["blessing"]
    assert (blessing.baseline_model_id, blessing.baseline_version) == (first.model_id, 3)
    with open(evaluator["evaluation"].path("report.txt")) as fh:
        report = fh.read()
    assert f"baseline model {first.model_id}" in report and "version 3" in report, report[:400]
    infra = outputs_in_run(metadata, run["dag_run_id"], "InfraValidator")["blessing"]
    assert infra.blessed == 1 and infra.server == "pipewright"
    assert outputs_in_run(metadata, run["dag_run_id"], "Pusher")["pushed_model"].pushed_version == 4
    wait_for_version(system, 4)
    assert predict_grpc(system)[0] == 4


def test_every_service_listens_on_127_0_0_1_only(system):
    listening = set()
    for pid in system.running().values():
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                connections = process.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            listening |= {(c.laddr.ip, c.laddr.port) for c in connections
                          if c.status == psutil.CONN_LISTEN}
    ports = {port for _, port in listening}
    assert {system.api_port, system.rest_port, system.grpc_port} <= ports, listening
    # gRPC may bind an IPv6 socket to the IPv4-mapped ::ffff:127.0.0.1: the same address.
    addresses = {ipaddress.ip_address(ip) for ip, _ in listening}
    assert {getattr(a, "ipv4_mapped", None) or a for a in addresses} == \
        {ipaddress.ip_address("127.0.0.1")}, listening


def test_down_stops_every_process_it_started_even_with_a_task_running(system):
    run_id = trigger(system, "penguin", {})
    path = f"/api/v2/dags/penguin/dagRuns/{urllib.parse.quote(run_id)}/taskInstances"
    deadline = time.monotonic() + 60
    while not any(ti["state"] == "running" for ti in system.api("GET", path)["task_instances"]):
        assert time.monotonic() < deadline, "no task started"
        time.sleep(0.5)
    roots = [psutil.Process(pid) for pid in system.running().values()]
    assert len(roots) == 5, system.running()
    everything = {p.pid for root in roots for p in [root, *root.children(recursive=True)]}
    system.down()
    left = [pid for pid in everything if alive(pid)]
    assert left == [], f"still running after down: {left}"
    assert system.running() == {}
    assert not any(Path(system.state_dir).glob("*.pid"))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
