"""Live data quality per version (serving/data_quality.py), scraped from the running server's
Prometheus endpoint: versions 1 and 2 of the demo model carry a schema
(assets.extra/schema.pbtxt, as the Pusher places it), version 3 has none; all three serve at
once (model_version_policy all)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import requests

from serving_harness import ServerProcess

SCHEMA = """
feature { name: "x" type: FLOAT float_domain { min: -10 max: 10 } }
feature { name: "count" type: INT int_domain { min: 0 max: 5 } }
feature { name: "tag" type: BYTES domain: "tag" }
string_domain { name: "tag" value: "a" value: "b" }
"""
DQ_SERIES = (":pipewright:serving:data_quality_rows", ":pipewright:serving:feature_missing_count",
             ":pipewright:serving:feature_out_of_schema_count")
_LINE = re.compile(r'^(?P<name>[^{ ]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


@pytest.fixture(scope="module")
def server(demo_model_dir, log_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("data_quality")
    base = root / "demo"
    for version in (1, 2, 3):
        shutil.copytree(demo_model_dir / "1", base / str(version))
    for version in (1, 2):
        (base / str(version) / "assets.extra" / "schema.pbtxt").write_text(SCHEMA)
    (root / "models.config").write_text(
        'model_config_list { config { name: "demo" base_path: "%s" model_platform: "tensorflow" '
        "model_version_policy { all {} } } }\n" % base)
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    proc = ServerProcess([f"--model_config_file={root / 'models.config'}",
                          f"--monitoring_config_file={root / 'monitoring.config'}"],
                         log_dir, "data_quality").start()
    yield proc
    proc.stop()


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """{(metric name, frozenset of label pairs): value} over HTTP."""
    text = requests.get(f"{server.rest}/monitoring/prometheus/metrics", timeout=10).text
    series = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            series[(match["name"], labels)] = float(match["value"])
    return series


def of_version(series, version: str, names) -> dict:
    """{(name, {label: value} without model_name/version as sorted tuple): value}."""
    found = {}
    for (name, labels), value in series.items():
        pairs = dict(labels)
        if name in names and pairs.get("model_name") == "demo" and pairs.get("version") == version:
            rest = tuple(sorted((k, v) for k, v in pairs.items() if k not in ("model_name", "version")))
            found[(name, rest)] = value
    return found


def post(server, version: int, verb: str, body: dict) -> requests.Response:
    """REST :verb on a version; the body may hold NaN (TF Serving's JSON parser takes it)."""
    return requests.post(f"{server.rest}/v1/models/demo/versions/{version}:{verb}",
                         data=json.dumps(body), timeout=30)


def test_feature_counts_are_exact_and_kept_apart_per_version(server):
    # Version 1: serving_default by name, a NaN x, an empty tag, a tag and a count outside
    # the domain; classify Examples without tag (the schema serves it), one with a feature
    # the schema lacks, one with a count outside the domain.
    r = post(server, 1, "predict", {"instances": [
        {"x": [1.0, 2.0, 3.0], "count": 2, "tag": "a"},
        {"x": [float("nan"), 0.0, 0.0], "count": 7, "tag": "zz"},
        {"x": [0.5, 0.5, 0.5], "count": 1, "tag": ""}]})
    assert r.status_code == 200, r.text
    r = post(server, 1, "classify", {"signature_name": "classify", "examples": [
        {"x": [1.0, 2.0, 3.0], "count": 2, "color": "red"},
        {"x": [0.5, -1.0, 0.25], "count": 9}]})
    assert r.status_code == 200, r.text
    # Version 2 at the same time: one row, a tag outside the domain.
    r = post(server, 2, "predict", {"instances": [{"x": [1.0, 1.0, 1.0], "count": 0, "tag": "c"}]})
    assert r.status_code == 200, r.text

    series = scrape(server)
    rows, missing, schema = DQ_SERIES
    assert of_version(series, "1", DQ_SERIES) == {
        (rows, ()): 5,
        (missing, (("feature", "x"),)): 1,
        (missing, (("feature", "tag"),)): 1 + 2,
        (schema, (("feature", "tag"), ("reason", "out_of_domain"))): 1,
        (schema, (("feature", "count"), ("reason", "out_of_domain"))): 1 + 1,
        (schema, (("feature", "color"), ("reason", "not_in_schema"))): 1,
    }
    assert of_version(series, "2", DQ_SERIES) == {
        (rows, ()): 1,
        (schema, (("feature", "tag"), ("reason", "out_of_domain"))): 1,
    }
    gauge = ":pipewright:serving:data_quality_schema_loaded"
    assert series[(gauge, frozenset({("model_name", "demo"), ("version", "1")}))] == 1
    # Beside TF Serving's own series, on the same endpoint.
    assert any(name == ":tensorflow:serving:request_count" for name, _ in series)


def test_prediction_distribution_adds_up_to_the_predicted_rows(server):
    before = scrape(server)
    r = post(server, 2, "predict", {"instances": [
        {"x": [1.0, 2.0, 3.0], "count": 2, "tag": "a"}, {"x": [0.5, -1.0, 0.25], "count": 7, "tag": "b"},
        {"x": [-3.0, 3.0, 0.0], "count": 1, "tag": "a"}, {"x": [float("nan"), 0, 0], "count": 1, "tag": "a"}]})
    assert r.status_code == 200, r.text
    r = post(server, 2, "classify", {"signature_name": "classify", "examples": [
        {"x": [1.0, 2.0, 3.0], "count": 2}, {"x": [0.5, -1.0, 0.25], "count": 7}]})
    assert r.status_code == 200, r.text
    r = post(server, 2, "regress", {"signature_name": "regress", "examples": [
        {"x": [1.0, 2.0, 3.0], "count": 2}, {"x": [0.25, 0.25, 0.0], "count": 0},
        {"x": [100.0, 0.0, 0.0], "count": 0}]})
    assert r.status_code == 200, r.text
    after = scrape(server)

    def delta(names):
        now, then = of_version(after, "2", names), of_version(before, "2", names)
        return {k: v - then.get(k, 0) for k, v in now.items() if v - then.get(k, 0)}

    classes = delta({":pipewright:serving:prediction_class_count"})
    nan_rows = delta({":pipewright:serving:output_invalid_count"})
    # serving_default's scores have no class names (index); classify's are neg / pos.
    assert {dict(k[1])["class"] for k in classes} <= {"0", "1", "neg", "pos"}
    assert sum(v for k, v in classes.items() if dict(k[1])["class"] in "01") + \
        nan_rows[(":pipewright:serving:output_invalid_count",
                  (("output", "scores"), ("reason", "nan")))] == 4
    assert sum(v for k, v in classes.items() if dict(k[1])["class"] in ("neg", "pos")) == 2
    values = delta({":pipewright:serving:prediction_value_count",
                    ":pipewright:serving:prediction_value_bucket"})
    assert values[(":pipewright:serving:prediction_value_count", ())] == 3
    # 8.0 and 0.5 and 100.0: the 0.5 bucket holds one, the 10 bucket two, the 100 bucket three.
    le = {dict(k[1])["le"]: v for k, v in values.items() if k[0].endswith("_bucket")}
    assert (le["0.5"], le["10"], le["100"]) == (1, 2, 3)


def test_a_version_without_a_schema_keeps_no_feature_counts_and_says_so(server):
    r = post(server, 3, "predict", {"instances": [
        {"x": [float("nan"), 2.0, 3.0], "count": 99, "tag": "zz"},
        {"x": [1.0, 2.0, 3.0], "count": 2, "tag": ""}]})
    assert r.status_code == 200, r.text
    series = scrape(server)
    assert of_version(series, "3", DQ_SERIES) == {}
    gauge = ":pipewright:serving:data_quality_schema_loaded"
    assert series[(gauge, frozenset({("model_name", "demo"), ("version", "3")}))] == 0
    log = server.log_path.read_text()
    assert re.search(r"data quality: model demo version 3 has no schema .*feature counters are off",
                     log), log[-2000:]
    # The outputs are still watched: one row's scores were NaN, one row was predicted.
    classes = of_version(series, "3", {":pipewright:serving:prediction_class_count"})
    assert sum(classes.values()) == 1


def test_the_make_up_model_server_exposes_prometheus(demo_model_dir, log_dir, tmp_path):
    """pipelines/services.py's model-server command (what `make up` runs), on free ports."""
    from pipelines.home import Home
    from pipelines.services import MODEL_SERVER, Services
    from serving_harness import free_port

    services = Services(Home.resolve(str(tmp_path / "home")), grpc_port=free_port(),
                        rest_port=free_port(), model_name="demo")
    command = services.commands()[MODEL_SERVER]
    assert command[1] == "serve"
    shutil.copytree(demo_model_dir / "1", Path(services.model_base_path) / "1")
    proc = ServerProcess(command[2:], log_dir, "make_up")  # the command's ports come last: win
    proc.rest_port = services.rest_port
    proc.start()
    try:
        r = requests.get(f"{proc.rest}/monitoring/prometheus/metrics", timeout=10)
        assert r.status_code == 200, r.text
        assert ':pipewright:serving:data_quality_schema_loaded{model_name="demo",version="1"} 0' \
            in r.text
    finally:
        proc.stop()
