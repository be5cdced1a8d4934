"""The serving dashboard in the Pipewright view (/pipewright/dashboard/{model}): what the model
server is doing now, per version, and how the served traffic drifts, drawn with Chart.js
(pipelines/static/, vendored).

Data (JSON, /pipewright/api/serving/{model}):
  server    the model server's Prometheus text (its REST address: $PIPEWRIGHT_MODEL_SERVER_REST,
            which `make up` sets), read through components.rollout_evidence's parser: per
            version, counters since the server started — requests by status, the latency
            histogram (microseconds), predicted classes, rows checked, missing and
            out-of-schema counts per feature
  rollout   the model's rollout.json (components/rollout_policy.py), when there is one
  monitor   the newest TrafficReport's history.json (`pipewright monitor`): per window, every
            feature's skew and drift distance and its threshold
The page polls it every `interval` seconds (5 by default) and charts rates between polls:
requests/s and latency p50/p99 per version, error rate, missing and out-of-schema rates per
feature, the prediction distribution per version, and drift/skew distances per window with
their thresholds. The same panels, over Prometheus' history, are in Grafana under
docker-compose (deploy/grafana/). A server that cannot be read is said on the page (and in
the JSON's `server_error`), never drawn as zeros.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

SERVER_ENV = "PIPEWRIGHT_MODEL_SERVER_REST"
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
CHART_JS = "chart-3.9.1.min.js"
_SERIES = {
    ":pipewright:serving:version_request_count": "requests",
    ":pipewright:serving:version_request_latency_bucket": "latency",
    ":pipewright:serving:prediction_class_count": "classes",
    ":pipewright:serving:data_quality_rows": "rows",
    ":pipewright:serving:feature_missing_count": "missing",
    ":pipewright:serving:feature_out_of_schema_count": "out_of_schema",
}


def server_metrics(text: str, model_name: str) -> dict:
    """{version: {"requests": {status: n}, "latency": {le: cumulative n}, "classes": {class: n},
    "rows": n, "missing": {feature: n}, "out_of_schema": {feature: n}}} from Prometheus text;
    counts since the server started."""
    from prometheus_client.parser import text_string_to_metric_families

    versions: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if family.type == "counter" and name.endswith("_total"):
                name = name[: -len("_total")]
            series = _SERIES.get(name)
            labels = sample.labels
            if series is None or labels.get("model_name") != model_name or "version" not in labels:
                continue
            entry = versions.setdefault(labels["version"], {
                "requests": {}, "latency": {}, "classes": {}, "rows": 0, "missing": {},
                "out_of_schema": {}})
            key = {"requests": labels.get("status"), "latency": labels.get("le"),
                   "classes": labels.get("class"), "missing": labels.get("feature"),
                   "out_of_schema": labels.get("feature")}.get(series)
            if series == "rows":
                entry["rows"] += sample.value
            else:
                entry[series][key] = entry[series].get(key, 0) + sample.value
    return versions


def dashboard_data(model_name: str, serving_dir: str, metadata_factory,
                   server_url: str | None = None) -> dict:
    """The JSON the page polls (see the module docstring)."""
    from components.rollout_policy import RolloutConfigError, read_policy

    url = (server_url if server_url is not None else os.environ.get(SERVER_ENV, "")).rstrip("/")
    data: dict = {"model": model_name, "server": url, "versions": {}, "server_error": "",
                  "rollout": None, "monitor": [], "monitor_error": ""}
    if not url:
        data["server_error"] = f"no model server address (${SERVER_ENV} is not set)"
    else:
        try:
            with urllib.request.urlopen(f"{url}/monitoring/prometheus/metrics", timeout=5) as r:
                data["versions"] = server_metrics(r.read().decode("utf-8", "replace"), model_name)
        except Exception as exc:  # refused, not HTTP (a gRPC port), bad URL, cut short...
            data["server_error"] = (f"cannot read {url}/monitoring/prometheus/metrics: "
                                    f"{type(exc).__name__}: {exc}")
    try:
        policy = read_policy(os.path.join(serving_dir, model_name))
        data["rollout"] = json.loads(policy.to_json()) if policy else None
    except (RolloutConfigError, ValueError) as exc:
        data["rollout"] = {"error": str(exc)}
    try:
        data["monitor"] = monitor_history(metadata_factory(), model_name)
    except Exception as exc:  # no store yet, or an unreadable report: said, not fatal
        data["monitor_error"] = f"{type(exc).__name__}: {exc}"
    return data


def monitor_history(metadata, pipeline_name: str) -> list[dict]:
    """Per window of `pipewright monitor PIPELINE`, oldest first: {"window_end", "features":
    {name: {"skew", "drift", "threshold"}}} from the newest TrafficReport's history.json."""
    from components.traffic_monitor import HISTORY_FILE, TrafficReport

    reports = metadata.artifacts_in_pipeline(f"{pipeline_name}-monitor", TrafficReport)
    if not reports:
        return []
    newest = max(reports, key=lambda a: (a.span or 0, a.id))
    try:
        with open(newest.path(HISTORY_FILE), encoding="utf-8") as fh:
            windows = json.load(fh)
    except FileNotFoundError:
        return []
    history = []
    for window in windows:
        features = {}
        for name, feature in (window.get("features") or {}).items():
            features[name] = {
                "skew": (feature.get("skew") or {}).get("distance"),
                "drift": (feature.get("drift") or {}).get("distance"),
                "threshold": feature.get("threshold")}
        history.append({"window_end": window.get("window_end"), "features": features})
    return history


PAGE = """<h1>Serving: {model}</h1>
<p>model server <code id="server">{server}</code>, polled every {interval} s
(<a href="../api/serving/{model}">data</a>). <span id="status"></span></p>
<p id="rollout"></p>
<div class="grid">
<div><h3>requests/s per version</h3><canvas id="rps"></canvas></div>
<div><h3>latency p50 / p99 per version (ms)</h3><canvas id="latency"></canvas></div>
<div><h3>error rate per version</h3><canvas id="errors"></canvas></div>
<div><h3>predicted classes per version (since the server started)</h3><canvas id="classes"></canvas></div>
<div><h3>missing-value rate per feature</h3><canvas id="missing"></canvas></div>
<div><h3>out-of-schema rate per feature</h3><canvas id="oos"></canvas></div>
<div class="wide"><h3>skew (solid) and drift (dashed) per feature and monitor window, with thresholds</h3>
<canvas id="drift"></canvas><p id="drift-note"></p></div>
</div>
<h3>latest sample</h3><table id="latest"><tr><th>version</th><th>requests</th><th>errors</th>
<th>requests/s</th><th>p50 ms</th><th>p99 ms</th></tr></table>
<script src="../static/{chart_js}"></script>
<script>
const MODEL = {model_json}, INTERVAL = {interval} * 1000, KEEP = 120;
const COLORS = ["#1f77b4","#d62728","#2ca02c","#ff7f0e","#9467bd","#8c564b","#e377c2","#17becf"];
const color = i => COLORS[i % COLORS.length];
const line = (id, yTitle, extra) => new Chart(document.getElementById(id), {{type: "line",
  data: {{labels: [], datasets: []}}, options: Object.assign({{animation: false,
  scales: {{y: {{beginAtZero: true, title: {{display: true, text: yTitle}}}}}}}}, extra || {{}})}});
const charts = {{rps: line("rps", "requests/s"), latency: line("latency", "ms"),
  errors: line("errors", "share of requests"), missing: line("missing", "share of rows"),
  oos: line("oos", "share of rows"), drift: line("drift", "distance"),
  classes: new Chart(document.getElementById("classes"), {{type: "bar",
    data: {{labels: [], datasets: []}}, options: {{animation: false}}}})}};
let previous = null;
function series(chart, label, i, dash) {{
  let ds = chart.data.datasets.find(d => d.label === label);
  if (!ds) {{ ds = {{label, data: [], borderColor: color(i), backgroundColor: color(i),
    borderDash: dash ? [6, 3] : [], pointRadius: 1}}; chart.data.datasets.push(ds); }}
  return ds;
}}
function push(chart, t, values) {{
  chart.data.labels.push(t);
  Object.entries(values).forEach(([label, v], i) => {{
    const ds = series(chart, label, i);
    while (ds.data.length < chart.data.labels.length - 1) ds.data.push(null);
    ds.data.push(v);
  }});
  if (chart.data.labels.length > KEEP) {{ chart.data.labels.shift();
    chart.data.datasets.forEach(d => d.data.shift()); }}
  chart.update();
}}
const sum = o => Object.values(o || {{}}).reduce((a, b) => a + b, 0);
function quantile(cum, q) {{
  const rows = Object.entries(cum).map(([le, n]) => [le === "+Inf" ? Infinity : +le, n])
    .sort((a, b) => a[0] - b[0]);
  if (!rows.length || rows[rows.length - 1][1] <= 0) return null;
  const target = q * rows[rows.length - 1][1];
  for (const [le, n] of rows) if (n >= target) return isFinite(le) ? le / 1000 : null;
  return null;
}}
function delta(now, before) {{
  const out = {{}};
  for (const [k, v] of Object.entries(now || {{}})) out[k] = v - ((before || {{}})[k] || 0);
  return out;
}}
function draw(data) {{
  document.getElementById("status").textContent = data.server_error ? "⚠ " + data.server_error : "";
  const r = data.rollout;
  document.getElementById("rollout").textContent = !r ? "rollout: none (newest version serves)"
    : r.error ? "rollout.json: " + r.error
    : `rollout: ${{r.strategy}}, ${{r.state}}; stable v${{r.stable_version}}` +
      (r.candidate_version != null ? `, candidate v${{r.candidate_version}} at ${{r.candidate_percent}} %` : "") +
      ` — ${{r.reason}}`;
  const t = new Date().toLocaleTimeString();
  const versions = data.versions, table = document.getElementById("latest");
  while (table.rows.length > 1) table.deleteRow(1);
  if (previous && !data.server_error) {{
    const seconds = (Date.now() - previous.at) / 1000, rps = {{}}, p50 = {{}}, err = {{}},
      missing = {{}}, oos = {{}};
    for (const [v, now] of Object.entries(versions)) {{
      const before = previous.data.versions[v] || {{}};
      const req = delta(now.requests, before.requests), n = sum(req);
      const bad = n - (req.OK || 0), lat = delta(now.latency, before.latency);
      rps["v" + v] = n / seconds;
      err["v" + v] = n ? bad / n : 0;
      p50["v" + v + " p50"] = quantile(lat, 0.5); p50["v" + v + " p99"] = quantile(lat, 0.99);
      const rows = (now.rows || 0) - (before.rows || 0);
      for (const [f, c] of Object.entries(delta(now.missing, before.missing)))
        missing[f] = (missing[f] || 0) + (rows ? c / rows : 0);
      for (const [f, c] of Object.entries(delta(now.out_of_schema, before.out_of_schema)))
        oos[f] = (oos[f] || 0) + (rows ? c / rows : 0);
      const cells = [v, sum(now.requests), sum(now.requests) - (now.requests.OK || 0),
        (n / seconds).toFixed(1), p50["v" + v + " p50"], p50["v" + v + " p99"]];
      const tr = table.insertRow();
      cells.forEach(c => {{ tr.insertCell().textContent = c == null ? "-" : c; }});
    }}
    push(charts.rps, t, rps); push(charts.latency, t, p50); push(charts.errors, t, err);
    push(charts.missing, t, missing); push(charts.oos, t, oos);
  }}
  const classes = [...new Set(Object.values(versions).flatMap(v => Object.keys(v.classes)))].sort();
  charts.classes.data.labels = classes;
  charts.classes.data.datasets = Object.entries(versions).map(([v, e], i) => {{
    const total = sum(e.classes) || 1;
    return {{label: "v" + v, data: classes.map(c => (e.classes[c] || 0) / total),
      backgroundColor: color(i)}};
  }});
  charts.classes.update();
  const windows = data.monitor || [];
  charts.drift.data.labels = windows.map(w => w.window_end);
  const features = [...new Set(windows.flatMap(w => Object.keys(w.features)))].sort();
  charts.drift.data.datasets = features.flatMap((f, i) => [
    {{label: f + " skew", data: windows.map(w => (w.features[f] || {{}}).skew), borderColor: color(i)}},
    {{label: f + " drift", data: windows.map(w => (w.features[f] || {{}}).drift), borderColor: color(i),
      borderDash: [6, 3]}},
    {{label: f + " threshold", data: windows.map(w => (w.features[f] || {{}}).threshold),
      borderColor: color(i), borderWidth: 1, pointRadius: 0, borderDash: [1, 2]}}]);
  charts.drift.update();
  document.getElementById("drift-note").textContent = data.monitor_error ? data.monitor_error
    : windows.length ? "" : "no monitor windows yet (pipewright monitor " + MODEL + ")";
  previous = {{at: Date.now(), data}};
}}
async function poll() {{
  try {{ draw(await (await fetch("../api/serving/" + MODEL)).json()); }}
  catch (e) {{ document.getElementById("status").textContent = "⚠ " + e; }}
}}
poll(); setInterval(poll, INTERVAL);
</script>"""

DASHBOARD_STYLE = """<style>.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.grid>div{border:1px solid #ddd;padding:.5em}.wide{grid-column:1/3}canvas{max-height:260px}</style>"""


def add_routes(app, home: str | None, metadata_factory) -> None:
    """Adds /dashboard/{model}, /api/serving/{model} and /static/{file} to the FastAPI app."""
    from fastapi import HTTPException
    from fastapi.responses import FileResponse, HTMLResponse

    @app.get("/dashboard/{model}", response_class=HTMLResponse)
    def dashboard(model: str, interval: float = 5.0) -> str:
        import html

        from pipelines.airflow_plugin import STYLE
        server = os.environ.get(SERVER_ENV, "") or "(not set)"
        body = PAGE.format(model=html.escape(model), model_json=json.dumps(model),
                           server=html.escape(server), interval=max(1.0, min(interval, 3600.0)),
                           chart_js=CHART_JS)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(model)}"
                f" serving</title>{STYLE}{DASHBOARD_STYLE}</head><body>{body}</body></html>")

    @app.get("/api/serving/{model}")
    def serving_data(model: str) -> dict:
        from pipelines.home import Home
        serving_dir = Home.resolve(home).serving_dir
        return dashboard_data(model, serving_dir, metadata_factory)

    @app.get("/static/{name}")
    def static(name: str):
        path = os.path.join(STATIC_DIR, os.path.basename(name))
        if name != os.path.basename(name) or not name.endswith(".js") or not os.path.isfile(path):
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(path, media_type="text/javascript")
