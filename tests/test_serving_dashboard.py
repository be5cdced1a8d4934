"""The serving dashboard (pipelines/serving_dashboard.py): a real model server serving the
session's penguin model, traffic over REST, the Pipewright app on uvicorn, and the page
rendered by headless Chromium — its charts must hold the test traffic."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.serving.serving_harness import ServerProcess, free_port
from tests.test_traffic_monitor import NUMERIC, STRINGS, penguin_rows

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[1] / "bench" / "out" / "serving_dashboard.png"


@pytest.fixture(scope="module")
def live(trained_penguin, tmp_path_factory):
    """(model server, dashboard URL, traffic thread's counters) while REST traffic flows."""
    import uvicorn

    from pipelines.airflow_plugin import create_app

    tmp = tmp_path_factory.mktemp("dashboard")
    monitoring = tmp / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    server = ServerProcess(["--model_name=penguin",
                            f"--model_base_path={trained_penguin.serving_base}",
                            f"--monitoring_config_file={monitoring}"], tmp, "dashboard-server")
    server.start()
    os.environ["PIPEWRIGHT_MODEL_SERVER_REST"] = server.rest
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(create_app(trained_penguin.home), host="127.0.0.1",
                                        port=port, log_level="warning"))
    threading.Thread(target=web.run, daemon=True).start()
    stop, sent = threading.Event(), {"ok": 0, "failed": 0}
    rows = [r for r in penguin_rows() if "NA" not in r.values()]

    def traffic():
        i = 0
        while not stop.is_set():
            row = rows[i % len(rows)]
            # every tenth row lacks its sex ("" is serving_raw's missing string), every
            # 25th comes from an island outside the schema's domain
            instance = {**{n: float(row[n]) for n in NUMERIC},
                        **{n: ("" if n == "sex" and i % 10 == 0 else row[n]) for n in STRINGS}}
            if i % 25 == 0:
                instance["island"] = "Atlantis"
            i += 1
            body = json.dumps({"signature_name": "serving_raw", "instances": [instance]})
            try:
                urllib.request.urlopen(urllib.request.Request(
                    f"{server.rest}/v1/models/penguin:predict", body.encode()), timeout=30).read()
                sent["ok"] += 1
            except Exception:
                sent["failed"] += 1
            time.sleep(0.01)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield server, f"http://127.0.0.1:{port}", sent
    finally:
        stop.set()
        thread.join(10)
        web.should_exit = True
        os.environ.pop("PIPEWRIGHT_MODEL_SERVER_REST", None)
        server.stop()


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def test_data_endpoint_reports_each_version_from_the_servers_metrics(live, trained_penguin):
    server, web, sent = live
    time.sleep(2)
    status, body = get(f"{web}/api/serving/penguin")
    data = json.loads(body)
    assert status == 200 and data["server_error"] == "", data
    version = data["versions"][str(trained_penguin.version)]
    assert version["requests"]["OK"] > 20 and sent["failed"] == 0
    assert set(version["classes"]) <= set(trained_penguin.labels) and sum(version["classes"].values()) > 20
    assert version["missing"].get("sex", 0) > 0 and version["rows"] > 20
    assert version["out_of_schema"].get("island", 0) > 0
    assert version["latency"]["+Inf"] == sum(version["requests"].values())


def test_dashboard_in_chromium_draws_charts_with_the_traffic(live, tmp_path):
    server, web, sent = live
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (tests/airflow/test_services.py installs it)")
    status, script = get(f"{web}/static/chart-3.9.1.min.js")
    assert status == 200 and b"Chart.js v3.9.1" in script[:200]
    url = f"{web}/dashboard/penguin?interval=2"
    profile = tmp_path / "profile"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=12000"]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    status = html[html.index('id="status"'):].split("</span>")[0]
    assert "⚠" not in status, status  # the server was read on every poll
    latest = html[html.index('id="latest"'):].split("</table>")[0]
    cells = [c.split(">", 1)[1].split("<", 1)[0] for c in latest.split("<td")[1:]]
    assert cells[0] == "1" and int(cells[1]) > 20, latest  # version 1 answered the traffic
    assert float(cells[3]) > 0, latest  # requests/s between two polls
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shot = subprocess.run(base + [f"--screenshot={SCREENSHOT}", "--window-size=1400,1300", url],
                          capture_output=True, text=True, timeout=180)
    assert shot.returncode == 0 and SCREENSHOT.stat().st_size > 20_000, shot.stderr[-2000:]
    shutil.rmtree(profile, ignore_errors=True)
    print(f"serving dashboard screenshot: {SCREENSHOT}")


def test_dashboard_says_when_the_server_cannot_be_read(live, trained_penguin):
    from pipelines.serving_dashboard import dashboard_data

    data = dashboard_data("penguin", os.path.dirname(trained_penguin.serving_base),
                          lambda: None, server_url=f"http://127.0.0.1:{free_port()}")
    assert data["versions"] == {} and "cannot read" in data["server_error"]


REPO = Path(__file__).resolve().parents[1]


def test_compose_prometheus_scrapes_both_servers_and_grafana_is_provisioned():
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    monitoring = (REPO / "serving/config/monitoring.config").read_text()
    for job in scrape["scrape_configs"]:
        assert f'path: "{job["metrics_path"]}"' in monitoring
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert host in services and port == "8501", target  # the servers' REST port
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    source = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])
    provider = yaml.safe_load((provisioning / "dashboards/pipewright.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert (REPO / mounts["/var/lib/grafana/dashboards"] / "pipewright-serving.json").is_file()
    front = services["pipewright-serving"]
    # The front door serves TF Serving's model (flags: tests/serving/test_serving_config.py).
    assert "--model_base_path=/models/penguin" in front["command"]


def test_grafana_panels_query_series_the_model_server_exports(live):
    """Every series a panel queries is in a live server's exposition, except the rollout
    series, which appear only under a rollout.json (tests/serving/test_serving_rollout.py)."""
    import re

    server, web, sent = live
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/pipewright-serving.json").read_text())
    queried = {re.sub(r"_bucket$", "", name) for panel in dashboard["panels"]
               for target in panel["targets"]
               for name in re.findall(r'__name__="([^"]+)"', target["expr"])}
    assert len(dashboard["panels"]) >= 8 and queried
    _, text = get(f"{server.rest}/monitoring/prometheus/metrics")
    exported = set(re.findall(r"^# TYPE (\S+) ", text.decode(), re.M))
    rollout_only = {":pipewright:serving:route_count", ":pipewright:serving:shadow_comparison_count"}
    assert queried - rollout_only <= exported, sorted(queried - rollout_only - exported)
    source = "".join(p.read_text() for p in (REPO / "serving").glob("*.py"))
    assert all(f'"{name}"' in source for name in rollout_only)
