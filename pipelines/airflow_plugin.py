"""The Pipewright view inside the Airflow 3 UI: an Airflow plugin (registered through the
`airflow.plugins` entry point in pyproject.toml) that mounts a FastAPI app on Airflow's own
API server at /pipewright and adds it to the UI's navigation (an external view, Airflow
3.1+'s plugin mechanism; airflow/plugins_manager.py), so no other web server runs.

Pages, read from the pipeline home's ML Metadata store and artifact files (the home is
$PIPEWRIGHT_HOME, which `make up` sets for every Airflow process):
  /pipewright/                          every pipeline's runs: state, steps, eval metric,
                                        blessing, pushed version, parameters
  /pipewright/runs/{pipeline}/{run_id}  one run: each step's status (executed, cached,
                                        skipped, halted, failed) and duration, and each
                                        output artifact linked to its report
  /pipewright/artifacts/{id}            an artifact's report (what `pipewright show`
                                        prints: statistics, schema, anomalies, evaluation
                                        per slice, the InfraValidator's server, the push)
                                        and its lineage; statistics link TFDV's facets view
  /pipewright/artifacts/{id}/files/{name}  a file of the artifact (statistics.html, ...)
  /pipewright/diff?a=RUN&b=RUN          `pipewright diff` of two runs
  /pipewright/dashboard/{model}         the model server, live, per version, and drift
                                        (pipelines/serving_dashboard.py, Chart.js)

The pages are read-only and, like every FastAPI plugin app, not behind Airflow's login:
the API server `make up` starts listens on 127.0.0.1 only.
"""
from __future__ import annotations

import contextlib
import html
import io
import os
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/pipewright"
STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#e8f0fe}pre{background:#f6f6f6;padding:1em;overflow:auto}
.failed,.halted{color:#b00}.cached{color:#666}.skipped{color:#a60}
</style>"""


def create_app(home: str | None = None):
    """The FastAPI app. `home`: the pipeline home (default: $PIPEWRIGHT_HOME, read per
    request, or .pipewright/). Pages answer 404 for an unknown run or artifact."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse

    app = FastAPI(title="Pipewright", docs_url=None, redoc_url=None)

    def metadata():
        from pipelines.inspect_cli import open_metadata
        try:
            return open_metadata(home)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None

    from pipelines import serving_dashboard
    serving_dashboard.add_routes(app, home, metadata)

    @app.get("/", response_class=HTMLResponse)
    def runs_page() -> str:
        from pipelines.inspect_cli import _key_results

        store = metadata()
        runs = store.runs()
        body = [f"<h1>Pipewright runs</h1><p>home {_e(_home_root(home))}</p>"]
        served = _served_models(home)
        if served:
            body.append("<p>serving dashboards: " + ", ".join(
                _link(f"dashboard/{m}", m) for m in served) + "</p>")
        for pipeline in sorted({r["pipeline_name"] for r in runs}):
            rows = []
            for run in reversed([r for r in runs if r["pipeline_name"] == pipeline]):
                try:
                    loss, metric, blessed, pushed = _key_results(store, run)
                except Exception as exc:  # one unreadable run does not take the page down
                    loss, metric, blessed, pushed = "?", f"cannot read: {exc}", "?", "?"
                steps = ", ".join(f"{n} {s}" for s, n in sorted(run["steps"].items()))
                rows.append([_link(f"runs/{pipeline}/{run['run_id']}", run["run_id"]),
                             _e(run.get("state", "?")), _e(steps), _e(loss), _e(metric),
                             _e(blessed), _e(pushed), _e(run.get("airflow_run_id") or "")])
            body.append(f"<h2>{_e(pipeline)}</h2>" + _table(
                ["run", "state", "steps", "train", "eval", "blessed", "pushed", "Airflow run"],
                rows))
        if not runs:
            body.append("<p>no runs recorded yet</p>")
        return _page("Pipewright", body)

    @app.get("/runs/{pipeline}/{run_id}", response_class=HTMLResponse)
    def run_page(pipeline: str, run_id: str) -> str:
        from pipelines.run_diff import RunNotFound, find_run, step_outputs

        store = metadata()
        try:
            run = find_run(store, run_id)
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        if run["pipeline_name"] != pipeline:
            raise HTTPException(404, f"run {run_id} is a run of {run['pipeline_name']}")
        rows = []
        for cid, (record, outputs) in step_outputs(store, run).items():
            status = _status(record)
            links = ", ".join(_link(f"../../artifacts/{a.id}", f"{key} #{a.id}")
                              for key, a in outputs.items())
            reason = record.outcome_reason or record.error.splitlines()[0] if (
                record.outcome_reason or record.error) else ""
            rows.append([f"<a id='{_e(cid)}'></a>{_e(cid)}", f"<span class='{status}'>"
                         f"{status}</span>", f"{record.duration_s:.1f}", links,
                         _e(reason[:300])])
        picture = _lineage_svg(store, step_outputs(store, run))
        ordered = [r["run_id"] for r in store.runs(pipeline)]  # oldest first
        earlier = ordered[:ordered.index(run_id)] if run_id in ordered else []
        diff = (f"<p>compare with the previous run: "
                f"{_link(f'../../diff?a={earlier[-1]}&b={run_id}', earlier[-1])}</p>"
                if earlier else "")
        return _page(f"{pipeline} {run_id}", [
            f"<h1>{_e(pipeline)} — run {_e(run_id)}</h1>",
            f"<p>{_e(run.get('state', '?'))}; parameters {_e(run.get('parameters') or '{}')}"
            f"</p>", diff,
            _table(["step", "status", "seconds", "outputs", "note"], rows),
            "<h2>Lineage</h2>", picture,
            f"<p>{_link('../..', 'all runs')}</p>"])

    @app.get("/artifacts/{artifact_id}", response_class=HTMLResponse)
    def artifact_page(artifact_id: int) -> str:
        from pipelines.inspect_cli import print_artifact, print_lineage

        store = metadata()
        try:
            artifact = store.artifact(artifact_id)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        report = _captured(print_artifact, home, str(artifact_id))
        lineage = _captured(print_lineage, home, str(artifact_id))
        files = sorted(_files(artifact.uri))
        file_links = " ".join(_link(f"{artifact_id}/files/{name}", name) for name in files
                              if name.endswith((".html", ".txt", ".json", ".pbtxt")))
        facets = (f"<p>{_link(f'{artifact_id}/files/statistics.html', 'TFDV facets view')}"
                  f"</p>" if "statistics.html" in files else "")
        return _page(f"artifact {artifact_id}", [
            f"<h1>{_e(type(artifact).__name__)} #{artifact_id}</h1>", facets,
            f"<pre>{_e(report)}</pre>", f"<h2>Lineage</h2><pre>{_e(lineage)}</pre>",
            f"<p>files: {file_links or 'none'}</p>"])

    @app.get("/artifacts/{artifact_id}/files/{name:path}")
    def artifact_file(artifact_id: int, name: str):
        store = metadata()
        try:
            artifact = store.artifact(artifact_id)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        root = os.path.realpath(artifact.uri)
        path = os.path.realpath(os.path.join(root, name))
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            raise HTTPException(404, f"artifact {artifact_id} has no file {name!r}")
        return FileResponse(path)

    @app.get("/diff", response_class=HTMLResponse)
    def diff_page(a: str, b: str) -> str:
        from pipelines.run_diff import RunNotFound, diff_runs

        try:
            lines = diff_runs(metadata(), a, b)
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        return _page(f"diff {a} {b}", [f"<h1>diff {_e(a)} → {_e(b)}</h1>",
                                       f"<pre>{_e(chr(10).join(lines))}</pre>"])

    return app


def _lineage_svg(store, steps: dict) -> str:
    """The run's steps as boxes in columns by depth, an arrow for each artifact one step
    consumed from another (inputs recorded in ML Metadata), labelled with the artifact's
    key and id. Inline SVG: no script, nothing fetched."""
    producer = {a.id: cid for cid, (_, outputs) in steps.items() for a in outputs.values()}
    edges = []
    for cid, (record, _) in steps.items():
        for key, artifact in store.inputs_of_execution(record.id).items():
            if artifact is not None and producer.get(artifact.id) not in (None, cid):
                edges.append((producer[artifact.id], cid, f"{key} #{artifact.id}"))
    depth: dict[str, int] = {}

    def level(cid: str, seen=()) -> int:
        if cid not in depth:
            parents = [a for a, b, _ in edges if b == cid and a not in seen]
            depth[cid] = 1 + max((level(p, seen + (cid,)) for p in parents), default=-1)
        return depth[cid]

    columns: dict[int, list[str]] = {}
    for cid in steps:
        columns.setdefault(level(cid), []).append(cid)
    width, height, gap_x, gap_y = 150, 34, 60, 22
    place = {cid: (20 + col * (width + gap_x), 20 + row * (height + gap_y))
             for col, cids in columns.items() for row, cid in enumerate(cids)}
    parts = []
    for a, b, label in edges:
        (xa, ya), (xb, yb) = place[a], place[b]
        x1, y1, x2, y2 = xa + width, ya + height / 2, xb, yb + height / 2
        parts.append(f"<line x1='{x1}' y1='{y1}' x2='{x2}' y2='{y2}' stroke='#888' "
                     f"marker-end='url(#arrow)'><title>{_e(label)}</title></line>")
    for cid, (x, y) in place.items():
        status = _status(steps[cid][0])
        fill = {"failed": "#fdd", "halted": "#fdd", "cached": "#eee",
                "skipped": "#ffe9c6"}.get(status, "#e8f0fe")
        parts.append(f"<a href='#{_e(cid)}'><rect x='{x}' y='{y}' width='{width}' "
                     f"height='{height}' rx='5' fill='{fill}' stroke='#557'/>"
                     f"<text x='{x + 8}' y='{y + 15}' font-size='12'>{_e(cid)}</text>"
                     f"<text x='{x + 8}' y='{y + 28}' font-size='10' fill='#555'>"
                     f"{_e(status)}</text></a>")
    size_x = 40 + max((len(columns)) * (width + gap_x), width)
    size_y = 40 + max(len(c) for c in columns.values()) * (height + gap_y) if columns else 60
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{size_x}' height='{size_y}'>"
            "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' "
            "markerWidth='6' markerHeight='6' orient='auto'><path d='M0,0L10,5L0,10z' "
            "fill='#888'/></marker></defs>" + "".join(parts) + "</svg>")


def _served_models(home: str | None) -> list[str]:
    """Model directories under the home's serving directory."""
    from pipelines.home import Home
    root = Home.resolve(home).serving_dir
    try:
        return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    except OSError:
        return []


def _home_root(home: str | None) -> str:
    from pipelines.home import Home
    return str(Home.resolve(home).root)


def _status(record) -> str:
    if record.state == "failed":
        return "failed"
    if record.outcome in ("skipped", "halted"):
        return record.outcome
    return {"complete": "executed", "cached": "cached"}.get(record.state, record.state)


def _files(root: str) -> list[str]:
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            found.append(os.path.relpath(os.path.join(directory, name), root))
    return found


def _captured(function, *args: Any) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            function(*args)
        except Exception as exc:  # a report that fails to render says why, in its place
            print(f"cannot show it: {type(exc).__name__}: {exc}")
    return out.getvalue()


def _e(text: Any) -> str:
    return html.escape(str(text))


def _link(href: str, text: str) -> str:
    return f"<a href='{_e(href)}'>{_e(text)}</a>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"{STYLE}</head><body>{''.join(parts)}</body></html>")


def _report_link():
    """The grid's link from each task to its step in the run page (registered here so the
    API server knows the link class)."""
    from pipelines.airflow_adapter import PipewrightReportLink
    return PipewrightReportLink()


class PipewrightPlugin(AirflowPlugin):
    """Registers the app at /pipewright and a "Pipewright" entry in the UI's navigation."""

    name = "pipewright"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Pipewright"}]
    external_views = [{"name": "Pipewright", "href": "pipewright/", "destination": "nav",
                       "url_route": "pipewright"}]
    operator_extra_links = [_report_link()]
