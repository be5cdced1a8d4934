"""`pipewright serve` latency and throughput over REST and gRPC, against the server's own call path.

The reference is what the server itself runs for a :predict: `SignatureRunner.run` (serving/
servable.py) on a servable loaded by `load_servable` in this process, fed the very arrays the
server's REST parser makes of the request body (checked equal to what its gRPC path makes of the
TensorProtos). So "server p50 - reference p50" is the cost of the protocol and the server, not
of TensorFlow's structured-call binding. With batching on, the reference for concurrency 8 and
64 is the same runner on batches of the mean size the server formed during that very point (read
from its Prometheus batch-size histogram), so the throughput ratio measures the server, not
batching.

Points are interleaved: per round, for each concurrency, the reference, REST and gRPC run back
to back (with batching: REST, its batched reference, gRPC, its batched reference), and the
figures are medians over rounds (overheads and ratios are medians of the per-round pairs).
Error responses are excluded from latency and throughput and counted; more than
ERROR_BOUND of the requests failing, a server dying, a wrong answer or a hung point is a broken
benchmark (exit 1). A missed target is reported, not an exit status.

Model: the penguin pipeline's model (signature serving_raw), trained once by the real pipeline
(80-200 s on 2 cores, once) and cached under $SERVING_BENCH_CACHE (default ~/.cache/pipewright/
serving-bench) keyed by the source of the penguin user module; SERVING_BENCH_MODEL_DIR=<SavedModel dir>
uses a given penguin SavedModel, SERVING_BENCH_MODEL=demo the tiny demo model.

Targets: at concurrency 1 without batching, p50 within 1 ms of the reference for REST and gRPC;
at concurrency 64 with batching, throughput at least 1x the in-process batched reference.
Routing overhead (rollout.json, serving/rollout.py): a third server, without batching, serves
two models from one --model_config_file, each with the model as versions 1 and 2 (copies):
one with an "immediate" rollout.json (stable 1, no candidate), one with a "canary" one
(stable 1, candidate 2 at 10 %, so the routing draw, the candidate's answers, the per-version
and route metrics all run). Each point (REST, then gRPC, concurrency 1) alternates its requests
between the two models, so both policies meet the same machine load at the same moments; the
figures are medians over SERVING_BENCH_ROUTING_ROUNDS rounds of the canary / immediate ratios
of p50 (the target: <= 1.10) and p99 (info). A canary policy whose candidate got no request,
or an immediate one whose candidate got any, is a broken benchmark.

Loopback only. With a cached model the run takes 3-5 minutes: SERVING_BENCH_SECONDS per server
point (1.5; half that per reference point), SERVING_BENCH_ROUNDS (4), SERVING_BENCH_BUDGET
(225 s from the model being ready to the batching report: a round that would overrun it is
skipped, at least one round runs per mode), and SERVING_BENCH_ROUTING_ROUNDS (8) for the
routing points. Request-logging overhead (serving/request_log.py): a fourth server, without
batching, serves three models (the same SavedModel) from one --model_config_file: without a
logging_config, with sampling_rate 0.1 and with 1.0; each point alternates its requests among
them (REST, then gRPC, concurrency 1), and the figures are medians over the same number of
rounds of the on / off ratios of p50, p99 and mean latency (at c=1 on one connection the
throughput cost, off / on, is the mean-latency ratio); target: at 100 % sampling, p50 and
throughput within 10 % of logging off. A model logging records it should not, or a sampled
count outside 5 standard deviations of rate x requests, is a broken benchmark.
`--only routing` / `--only logging` runs those points alone. `--json PATH` writes every
round's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

CONCURRENCY = (1, 8, 64)
# Short points, many rounds: on a shared 2-core machine load swings over seconds, and a median
# over finely interleaved rounds follows it better than a few long points.
SECONDS = float(os.environ.get("SERVING_BENCH_SECONDS", "1.5"))  # per server point
REF_SECONDS = SECONDS / 2  # in-process points: thousands of calls, half the time is plenty
ROUNDS = int(os.environ.get("SERVING_BENCH_ROUNDS", "4"))
BUDGET = float(os.environ.get("SERVING_BENCH_BUDGET", "225"))  # seconds from model ready to report
WARM_SECONDS = 0.3
MAX_REQUESTS_PER_POINT = 200_000  # bounds every loop by count as well as by time
POINT_TIMEOUT = 60.0  # a point still running this long after its deadline is a hung server
ERROR_BOUND = 0.001  # more failed requests than this fraction: the benchmark is broken
P50_OVERHEAD_TARGET_MS = 1.0
BATCHED_RATIO_TARGET = 1.0
ROUTING_ROUNDS = int(os.environ.get("SERVING_BENCH_ROUTING_ROUNDS", "8"))
ROUTING_RATIO_TARGET = 1.10  # canary p50 / immediate p50
CANARY_PERCENT = 10
METRICS_PATH = "/monitoring/prometheus/metrics"

DEMO_INSTANCE = {"x": [1.0, 2.0, 3.0], "count": 2, "tag": "a"}
PENGUIN_INSTANCE = {"bill_length_mm": 39.1, "bill_depth_mm": 18.7, "flipper_length_mm": 181.0,
                    "body_mass_g": 3750.0, "island": "Torgersen", "sex": "male"}


class BenchBroken(RuntimeError):
    """The benchmark itself failed (not a missed target)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summarize(latencies: list[float], elapsed: float, rows: int = 1, errors: int = 0) -> dict:
    """Latency percentiles and throughput (rows/s) of the successful calls only."""
    if not latencies:
        return {"p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "rps": 0.0,
                "n": 0, "errors": errors}
    values = np.sort(np.asarray(latencies))
    return {"p50": float(values[len(values) // 2]) * 1e3,
            "p99": float(values[min(len(values) - 1, int(len(values) * 0.99))]) * 1e3,
            "mean": float(values.mean()) * 1e3,
            "rps": len(values) * rows / elapsed, "n": len(values), "errors": errors}


# ---------------------------------------------------------------- the model


@dataclass
class Model:
    description: str
    name: str        # served model name
    base: Path       # the base path the server polls (a private copy, version 1)
    signature: str
    instance: dict


def model_source_key() -> str:
    """The user module defines the model and its signatures; the pipeline's wiring does not
    change what is served, so it is not part of the key (it changes often)."""
    return hashlib.sha256((REPO / "pipelines/penguin/penguin_module.py").read_bytes()).hexdigest()[:12]


def cache_root() -> Path:
    if os.environ.get("SERVING_BENCH_CACHE"):
        return Path(os.environ["SERVING_BENCH_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "pipewright" / "serving-bench"


def train_penguin(workdir: Path, target: Path) -> bool:
    """One run of the real penguin pipeline (as tests/conftest.py does) in a scratch home; the
    pushed SavedModel is copied to `target`. False if it was not pushed (not blessed)."""
    home = workdir / "penguin-home"
    log_path = workdir / "penguin-train.log"
    print(f"training the penguin model once with the penguin pipeline (~80 s on 2 cores; "
          f"log {log_path}), cached in {target}", flush=True)
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        code = ("import sys; from pipelines.cli import main; "
                f"sys.exit(main(['run', 'penguin', '--home', {str(home)!r}]))")
        try:
            result = subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=log, stderr=log,
                                    env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=400)
        except subprocess.TimeoutExpired:
            print("penguin pipeline did not finish in 400 s", flush=True)
            return False
    serving = home / "serving" / "penguin"
    versions = sorted(int(p.name) for p in serving.iterdir() if p.name.isdigit()) if serving.is_dir() else []
    if result.returncode != 0 or not versions:
        print(f"penguin pipeline exit {result.returncode}, pushed versions {versions}", flush=True)
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.copytree(serving / str(versions[-1]), staging)
    try:
        os.rename(staging, target)
    except OSError:  # another run cached it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    print(f"penguin model trained in {time.perf_counter() - start:.0f} s", flush=True)
    return True


def prepare_model(workdir: Path) -> Model:
    choice = os.environ.get("SERVING_BENCH_MODEL", "penguin")
    if choice == "penguin":
        given = os.environ.get("SERVING_BENCH_MODEL_DIR")
        source = Path(given) if given else cache_root() / f"penguin-{model_source_key()}"
        if given and not (source / "saved_model.pb").exists():
            raise BenchBroken(f"SERVING_BENCH_MODEL_DIR={given} holds no saved_model.pb")
        if (source / "saved_model.pb").exists() or train_penguin(workdir, source):
            base = workdir / "penguin"
            shutil.copytree(source, base / "1")
            how = "given" if given else "penguin pipeline, cached"
            return Model(f"penguin pipeline model ({how}: {source})", "penguin", base,
                         "serving_raw", PENGUIN_INSTANCE)
        print("no penguin model: falling back to the demo model", flush=True)
    elif choice != "demo":
        raise BenchBroken(f"SERVING_BENCH_MODEL={choice}: expected penguin or demo")
    from serving.demo_model import write_demo_model

    base = workdir / "demo"
    write_demo_model(base / "1")
    return Model("tiny demo model (serving/demo_model.py)", "demo", base, "serving_default",
                 DEMO_INSTANCE)


# ---------------------------------------------------------------- requests and the reference


@dataclass
class Requests:
    rest_body: bytes
    grpc_request: object
    inputs: dict         # alias -> ndarray, as the server parses the request
    expected: dict       # runner.run(inputs)


def build_requests(model: Model, runner) -> Requests:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving import jsontext, tensors
    from serving.tensor_proto import to_ndarray

    body = json.dumps({"signature_name": model.signature, "instances": [model.instance]}).encode()
    doc = jsontext.loads(body)
    _, inputs = tensors.predict_inputs(doc, runner.input_dtypes, model.signature)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model.name
    request.model_spec.signature_name = model.signature
    for alias, array in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(array))
    for alias, array in inputs.items():  # the gRPC path must see the same arrays
        other = to_ndarray(request.inputs[alias], alias)
        if other.dtype != array.dtype or other.shape != array.shape or not np.array_equal(other, array):
            raise BenchBroken(f"input {alias}: REST gives {array!r}, gRPC gives {other!r}")
    return Requests(body, request, inputs, runner.run(inputs))


def check_answers(model: Model, requests: Requests, rest_port: int, grpc_port: int) -> None:
    """The server answers the bench's request with what the in-process runner computes."""
    from serving.tensor_proto import to_ndarray

    req = urllib.request.Request(f"http://127.0.0.1:{rest_port}/v1/models/{model.name}:predict",
                                 data=requests.rest_body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as response:
        predictions = json.loads(response.read())["predictions"]
    row = predictions[0]
    rest_out = row if isinstance(row, dict) else {next(iter(requests.expected)): row}

    async def grpc_call():
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            return await stub.Predict(requests.grpc_request, timeout=30)

    grpc_out = asyncio.run(grpc_call()).outputs
    for alias, want in requests.expected.items():
        got_grpc = to_ndarray(grpc_out[alias], alias)
        got_rest = np.asarray(rest_out[alias])
        if want.dtype.kind in "fc":
            ok = np.allclose(got_grpc, want, rtol=1e-5) and np.allclose(got_rest, want[0], rtol=1e-5)
        else:
            ok = np.array_equal(got_grpc, want)
        if not ok:
            raise BenchBroken(f"output {alias}: in-process {want!r}, gRPC {got_grpc!r}, REST {got_rest!r}")


def reference_point(call, concurrency: int, seconds: float, rows: int = 1) -> dict:
    """`call()` from `concurrency` threads for `seconds` (bounded by count too)."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = max(1, MAX_REQUESTS_PER_POINT // concurrency)
    stop = time.perf_counter() + seconds

    def worker():
        local = []
        while time.perf_counter() < stop and len(local) < per_thread:
            t = time.perf_counter()
            call()
            local.append(time.perf_counter() - t)
        with lock:
            latencies.extend(local)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(latencies, time.perf_counter() - start, rows=rows)


# ---------------------------------------------------------------- clients


def scrape_batches(rest_port: int, signature: str) -> tuple[float, float]:
    """(rows, batches) the server has run for `signature`, from its batch-size histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}{METRICS_PATH}", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for kind in ("sum", "count"):
        m = re.search(r'^:pipewright:serving:batch_size_%s\{signature="%s"\} (\S+)$'
                      % (kind, re.escape(signature)), text, re.M)
        values[kind] = float(m.group(1)) if m else 0.0
    return values["sum"], values["count"]


async def _measured(run_phase, concurrency: int, seconds: float, scrape) -> dict:
    """Warm up, then measure; `scrape` (or None) brackets the measured phase."""
    warm_errors = await asyncio.wait_for(run_phase(concurrency, WARM_SECONDS, None),
                                         WARM_SECONDS + POINT_TIMEOUT)
    before = scrape() if scrape else None
    latencies: list[float] = []
    start = time.perf_counter()
    errors = await asyncio.wait_for(run_phase(concurrency, seconds, latencies), seconds + POINT_TIMEOUT)
    result = summarize(latencies, time.perf_counter() - start, errors=errors + warm_errors)
    if scrape:
        rows, batches = (a - b for a, b in zip(scrape(), before))
        result["batch_rows"] = rows / batches if batches else float("nan")
    return result


async def rest_load(port: int, model: Model, body: bytes, concurrency: int, seconds: float, scrape=None) -> dict:
    request = (f"POST /v1/models/{model.name}:predict HTTP/1.1\r\nHost: bench\r\n"
               "Content-Type: application/json\r\n").encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body
    per_connection = max(1, MAX_REQUESTS_PER_POINT // concurrency)

    async def phase(concurrency, seconds, latencies):
        errors = 0
        deadline = time.perf_counter() + seconds

        async def connection():
            nonlocal errors
            done = 0
            while time.perf_counter() < deadline and done < per_connection and errors < 1000:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    errors += 1
                    await asyncio.sleep(0.01)
                    continue
                try:
                    while time.perf_counter() < deadline and done < per_connection:
                        t = time.perf_counter()
                        writer.write(request)
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
                        payload = await reader.readexactly(length)
                        elapsed = time.perf_counter() - t
                        done += 1
                        if head.startswith(b"HTTP/1.1 200") and b'"predictions"' in payload:
                            if latencies is not None:
                                latencies.append(elapsed)
                        else:
                            errors += 1
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError, ValueError):
                    errors += 1  # the connection broke: count it and reconnect
                finally:
                    writer.close()

        await asyncio.gather(*(connection() for _ in range(concurrency)))
        return errors

    return await _measured(phase, concurrency, seconds, scrape)


async def grpc_load(port: int, request, output: str, concurrency: int, seconds: float, scrape=None) -> dict:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    per_worker = max(1, MAX_REQUESTS_PER_POINT // concurrency)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def phase(concurrency, seconds, latencies):
            errors = 0
            deadline = time.perf_counter() + seconds

            async def worker():
                nonlocal errors
                done = 0
                while time.perf_counter() < deadline and done < per_worker and errors < 1000:
                    t = time.perf_counter()
                    try:
                        response = await stub.Predict(request, timeout=30)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    finally:
                        done += 1
                    elapsed = time.perf_counter() - t
                    if output in response.outputs:
                        if latencies is not None:
                            latencies.append(elapsed)
                    else:
                        errors += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return errors

        return await _measured(phase, concurrency, seconds, scrape)


# ---------------------------------------------------------------- servers


def start_server(model: Model, workdir: Path, batching: bool, base: Path | None = None,
                 extra_args=()) -> tuple[subprocess.Popen, int, int, Path]:
    grpc_port, rest_port = free_port(), free_port()
    monitoring = workdir / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    args = [sys.executable, "-m", "serving", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
            f"--model_name={model.name}", f"--model_base_path={base or model.base}",
            f"--monitoring_config_file={monitoring}", *extra_args]
    if batching:
        config = workdir / "batching.config"
        # Throughput-oriented, as TF Serving's batching guide tunes it: a batch waits up to
        # 2 ms to fill, and one batch thread leaves the other core to the protocol (Python's
        # GIL makes a second thread contend rather than help). With a 0 timeout gRPC batches
        # stayed at 1-3 rows. The c=1 rows with batching show the latency this costs.
        config.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 2000 }\n"
                          "max_enqueued_batches { value: 1000 }\nnum_batch_threads { value: 1 }\n")
        args += ["--enable_batching=true", f"--batching_parameters_file={config}"]
    log_path = workdir / f"server-{'batching' if batching else 'plain'}{'-routing' if base else ''}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=log,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if b"ready" in line:
            return proc, grpc_port, rest_port, log_path
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise BenchBroken(f"server failed to start: {tail(log_path)}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- the run


def run_mode(batching: bool, model: Model, requests: Requests, runner, public_call, workdir: Path,
             results: dict, end: float, modes_left: int) -> dict:
    """Interleaved rounds against one server, within this mode's share of the time left before
    `end` (a later mode is assumed to start as slowly as this one); returns the startup time
    and the round durations."""
    started = time.perf_counter()
    proc, grpc_port, rest_port, log_path = start_server(model, workdir, batching)
    now = time.perf_counter()
    timing = {"startup": now - started, "rounds": []}
    deadline = now + (end - now - timing["startup"] * (modes_left - 1)) / modes_left
    mode = "on" if batching else "off"
    output = next(iter(requests.expected))
    single = lambda: runner.run(requests.inputs)  # noqa: E731

    def add(key, result):
        results.setdefault((mode,) + key, []).append(result)

    def alive():
        if proc.poll() is not None:
            raise BenchBroken(f"server (batching {mode}) died with exit {proc.returncode}: {tail(log_path)}")

    def batched_reference(rows: float) -> dict:
        size = max(1, int(round(rows))) if rows == rows else 1
        batch = {k: np.repeat(v, size, axis=0) for k, v in requests.inputs.items()}
        result = reference_point(lambda: runner.run(batch), 1, REF_SECONDS, rows=size)
        result["batch_rows"] = size
        return result

    try:
        check_answers(model, requests, rest_port, grpc_port)
        for _ in range(20):  # settle the reference call path too
            single()
        rounds = 0
        while rounds < ROUNDS:
            started = time.perf_counter()
            if rounds and started + max(timing["rounds"]) > deadline:
                break
            for c in CONCURRENCY:
                scrape = (lambda: scrape_batches(rest_port, model.signature)) if batching and c > 1 else None
                if scrape is None:
                    add((c, "ref"), reference_point(single, c, REF_SECONDS))
                    if public_call is not None and c == 1 and not batching:
                        add((c, "public"), reference_point(public_call, 1, REF_SECONDS))
                rest = asyncio.run(rest_load(rest_port, model, requests.rest_body, c, SECONDS, scrape))
                alive()
                add((c, "REST"), rest)
                if scrape is not None:
                    add((c, "ref@REST"), batched_reference(rest["batch_rows"]))
                grpc_result = asyncio.run(grpc_load(grpc_port, requests.grpc_request, output, c, SECONDS, scrape))
                alive()
                add((c, "gRPC"), grpc_result)
                if scrape is not None:
                    add((c, "ref@gRPC"), batched_reference(grpc_result["batch_rows"]))
            rounds += 1
            timing["rounds"].append(time.perf_counter() - started)
        return timing
    except asyncio.TimeoutError:
        raise BenchBroken(f"a point against the server (batching {mode}) hung for "
                          f"{POINT_TIMEOUT:.0f} s past its end: {tail(log_path)}") from None
    finally:
        stop_server(proc)


# ---------------------------------------------------------------- routing overhead


def scrape_text(rest_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}{METRICS_PATH}", timeout=10) as r:
        return r.read().decode()


def scrape_value(text: str, series: str) -> float:
    m = re.search(r"^%s (\S+)$" % re.escape(series), text, re.M)
    return float(m.group(1)) if m else 0.0


def write_policy(base: Path, canary: bool) -> None:
    """What the Pusher does: rollout.json through a temp file and os.replace."""
    policy = {"strategy": "immediate", "stable_version": 1, "generation": 1}
    if canary:
        policy.update(strategy="canary", candidate_version=2, candidate_percent=CANARY_PERCENT)
    tmp = base / ".rollout.json.tmp"
    tmp.write_text(json.dumps(policy))
    os.replace(tmp, base / "rollout.json")


POLICIES = ("immediate", "canary")


async def alternating_rest(port: int, paths: dict, body: bytes, seconds: float) -> dict:
    """One connection, requests alternating between the variants' models (the keys of
    `paths`, in order): {variant: latencies}, plus "errors"."""
    variants = list(paths)
    out = {variant: [] for variant in variants}
    out["errors"], out["sent"] = 0, dict.fromkeys(variants, 0)
    messages = {policy: (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                         ).encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body
                for policy, path in paths.items()}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        warm_until = time.perf_counter() + WARM_SECONDS
        deadline = warm_until + seconds
        i = 0
        while time.perf_counter() < deadline and i < MAX_REQUESTS_PER_POINT:
            policy = variants[i % len(variants)]
            i += 1
            t = time.perf_counter()
            out["sent"][policy] += 1
            writer.write(messages[policy])
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            payload = await reader.readexactly(length)
            elapsed = time.perf_counter() - t
            if not (head.startswith(b"HTTP/1.1 200") and b'"predictions"' in payload):
                out["errors"] += 1
            elif t >= warm_until:
                out[policy].append(elapsed)
    finally:
        writer.close()
    return out


async def alternating_grpc(port: int, grpc_requests: dict, output: str, seconds: float) -> dict:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    variants = list(grpc_requests)
    out = {variant: [] for variant in variants}
    out["errors"], out["sent"] = 0, dict.fromkeys(variants, 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        warm_until = time.perf_counter() + WARM_SECONDS
        deadline = warm_until + seconds
        i = 0
        while time.perf_counter() < deadline and i < MAX_REQUESTS_PER_POINT:
            policy = variants[i % len(variants)]
            i += 1
            t = time.perf_counter()
            out["sent"][policy] += 1
            try:
                response = await stub.Predict(grpc_requests[policy], timeout=30)
            except grpc.aio.AioRpcError:
                out["errors"] += 1
                continue
            elapsed = time.perf_counter() - t
            if output not in response.outputs:
                out["errors"] += 1
            elif t >= warm_until:
                out[policy].append(elapsed)
    return out


def requests_per_model(requests: Requests, names: dict) -> tuple[dict, dict]:
    """The REST path and the gRPC PredictRequest of each variant's model ({variant: name})."""
    paths = {variant: f"/v1/models/{name}:predict" for variant, name in names.items()}
    grpc_requests = {}
    for variant, name in names.items():
        grpc_requests[variant] = type(requests.grpc_request)()
        grpc_requests[variant].CopyFrom(requests.grpc_request)
        grpc_requests[variant].model_spec.name = name
    return paths, grpc_requests


def run_routing(model: Model, requests: Requests, workdir: Path, results: dict) -> dict:
    """Immediate vs canary policy on one server (see the module docstring): two models in one
    --model_config_file, the same SavedModel as versions 1 and 2 of each, one with an
    immediate rollout.json and one with a canary one; each point alternates its requests
    between them, so both policies see the same machine at the same moments."""
    root = workdir / "routing"
    names = {policy: f"{model.name}-{policy}" for policy in POLICIES}
    entries = []
    for policy, name in names.items():
        base = root / name
        shutil.copytree(model.base / "1", base / "1")
        shutil.copytree(model.base / "1", base / "2")
        write_policy(base, canary=policy == "canary")
        entries.append(f'  config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" }}')
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    started = time.perf_counter()
    proc, grpc_port, rest_port, log_path = start_server(
        model, workdir, False, base=root, extra_args=[f"--model_config_file={config}"])
    timing = {"startup": time.perf_counter() - started, "rounds": []}
    output = next(iter(requests.expected))
    paths, grpc_requests = requests_per_model(requests, names)
    try:
        # Both versions of both models answer, and are warm (TensorFlow's first runs of a
        # loaded function are not routing).
        for name in names.values():
            for version in (1, 2):
                url = f"http://127.0.0.1:{rest_port}/v1/models/{name}/versions/{version}:predict"
                for _ in range(30):
                    try:
                        with urllib.request.urlopen(urllib.request.Request(
                                url, data=requests.rest_body, method="POST"), timeout=30) as r:
                            r.read()
                    except urllib.error.HTTPError as e:
                        if not (name == names["immediate"] and version == 2 and e.code == 404):
                            raise BenchBroken(f"{url}: HTTP {e.code} {e.read()[:300]!r}") from None
                        break  # the immediate policy does not load version 2
        for _ in range(ROUTING_ROUNDS):
            started = time.perf_counter()
            for api in ("REST", "gRPC"):
                if api == "REST":
                    point = asyncio.run(alternating_rest(rest_port, paths, requests.rest_body, SECONDS))
                else:
                    point = asyncio.run(alternating_grpc(grpc_port, grpc_requests, output, SECONDS))
                if proc.poll() is not None:
                    raise BenchBroken(f"the routing server died: {tail(log_path)}")
                for policy in POLICIES:
                    result = summarize(point[policy], SECONDS / 2, errors=point["errors"] // 2)
                    results.setdefault(("routing", policy, api), []).append(result)
            timing["rounds"].append(time.perf_counter() - started)
        text = scrape_text(rest_port)
        for policy, name in names.items():
            routed = scrape_value(text, f':pipewright:serving:route_count{{model_name="{name}",'
                                        f'version="2",route="canary"}}')
            if (policy == "canary") != (routed > 0):
                raise BenchBroken(f"the {policy} policy routed {routed:.0f} requests to the candidate")
            timing[f"{policy}_to_candidate"] = routed
        return timing
    finally:
        stop_server(proc)


def report_routing(results: dict, timing: dict) -> None:
    print()
    print(f"routing (rollout.json, no batching, c=1, requests alternating between a model with a "
          f"10 % canary policy and one with an immediate policy, same SavedModel): server up in "
          f"{timing['startup']:.1f} s, {len(timing['rounds'])} rounds of "
          f"{', '.join(f'{r:.0f}' for r in timing['rounds'])} s; "
          f"{timing['canary_to_candidate']:.0f} canary requests answered by the candidate")
    for api in ("REST", "gRPC"):
        canary, immediate = results[("routing", "canary", api)], results[("routing", "immediate", api)]
        p50 = [c["p50"] / i["p50"] for c, i in zip(canary, immediate)]
        p99 = [c["p99"] / i["p99"] for c, i in zip(canary, immediate)]
        print(f"  {api:<4} p50 immediate {med(i['p50'] for i in immediate):.3f} ms, canary "
              f"{med(c['p50'] for c in canary):.3f} ms: ratio {med(p50):.3f} {spread(p50, '.3f')}; "
              f"target <= {ROUTING_RATIO_TARGET:.2f}: {verdict(med(p50) <= ROUTING_RATIO_TARGET)}")
        print(f"  {api:<4} p99 immediate {med(i['p99'] for i in immediate):.3f} ms, canary "
              f"{med(c['p99'] for c in canary):.3f} ms: ratio {med(p99):.3f} {spread(p99, '.3f')} "
              f"(info)")


SAMPLING = {"off": None, "10%": 0.1, "100%": 1.0}
LOGGING_TARGET = 1.10  # 100 % sampling: p50 and 1/throughput at most 10 % above logging off


def run_logging(model: Model, requests: Requests, workdir: Path, results: dict) -> dict:
    """Request logging off, at 10 % and at 100 % sampling on one server: three models in one
    --model_config_file (the same SavedModel), two with TF Serving's `logging_config`
    (serving/request_log.py), each point alternating its requests among the three, so every
    sampling rate meets the same machine at the same moments. Broken: a model logging records
    it should not, or 100 % logging fewer records than it answered."""
    root = workdir / "logging"
    log_dir = root / "request_logs"
    names = {variant: f"{model.name}-log{variant.rstrip('%')}" for variant in SAMPLING}
    entries = []
    for variant, name in names.items():
        shutil.copytree(model.base / "1", root / name / "1")
        rate = SAMPLING[variant]
        logging = ("" if rate is None else
                   f' logging_config {{ log_collector_config {{ type: "tfrecord" '
                   f'filename_prefix: "requests" }} sampling_config {{ sampling_rate: {rate} }} }}')
        entries.append(f'  config {{ name: "{name}" base_path: "{root / name}" '
                       f'model_platform: "tensorflow"{logging} }}')
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    started = time.perf_counter()
    proc, grpc_port, rest_port, log_path = start_server(
        model, workdir, False, base=root,
        extra_args=[f"--model_config_file={config}", f"--request_log_dir={log_dir}"])
    timing = {"startup": time.perf_counter() - started, "rounds": []}
    output = next(iter(requests.expected))
    paths, grpc_requests = requests_per_model(requests, names)
    answered = dict.fromkeys(SAMPLING, 0)
    try:
        for path in paths.values():  # warm: TensorFlow's first runs of a function
            for _ in range(30):
                with urllib.request.urlopen(urllib.request.Request(
                        f"http://127.0.0.1:{rest_port}{path}", data=requests.rest_body,
                        method="POST"), timeout=30) as r:
                    r.read()
        for variant in SAMPLING:
            answered[variant] += 30
        for _ in range(ROUTING_ROUNDS):
            started = time.perf_counter()
            for api in ("REST", "gRPC"):
                if api == "REST":
                    point = asyncio.run(alternating_rest(rest_port, paths, requests.rest_body,
                                                         SECONDS))
                else:
                    point = asyncio.run(alternating_grpc(grpc_port, grpc_requests, output,
                                                         SECONDS))
                if proc.poll() is not None:
                    raise BenchBroken(f"the logging server died: {tail(log_path)}")
                for variant in SAMPLING:
                    answered[variant] += point["sent"][variant]
                    result = summarize(point[variant], SECONDS / len(SAMPLING),
                                       errors=point["errors"] // len(SAMPLING))
                    results.setdefault(("logging", variant, api), []).append(result)
            timing["rounds"].append(time.perf_counter() - started)
        time.sleep(1.0)  # the writer thread drains its queue
        text = scrape_text(rest_port)
        for variant, name in names.items():
            logged = scrape_value(text, f':pipewright:serving:request_log_records{{model_name='
                                        f'"{name}",version="1"}}')
            dropped = scrape_value(text, f':pipewright:serving:request_log_dropped{{model_name='
                                         f'"{name}"}}')
            timing[variant] = {"answered": answered[variant], "logged": logged,
                               "dropped": dropped}
            rate, n = SAMPLING[variant], answered[variant]
            if rate is None and logged:
                raise BenchBroken(f"{name} has no logging_config but logged {logged:.0f} records")
            if rate is not None:
                expected, sd = n * rate, (n * rate * (1 - rate)) ** 0.5
                if abs(logged + dropped - expected) > 5 * sd + 1:
                    raise BenchBroken(f"{name} logged {logged:.0f} (+{dropped:.0f} dropped) of "
                                      f"{n} requests at sampling rate {rate}")
        return timing
    finally:
        stop_server(proc)


def report_logging(results: dict, timing: dict) -> None:
    print()
    print(f"request logging (no batching, c=1, requests alternating among three models of one "
          f"server, the same SavedModel: logging off, sampling 10 %, sampling 100 %): server up "
          f"in {timing['startup']:.1f} s, {len(timing['rounds'])} rounds of "
          f"{', '.join(f'{r:.0f}' for r in timing['rounds'])} s; records logged / requests: "
          + ", ".join(f"{v} {timing[v]['logged']:.0f}/{timing[v]['answered']} "
                      f"({timing[v]['dropped']:.0f} dropped)" for v in SAMPLING))
    for api in ("REST", "gRPC"):
        off = results[("logging", "off", api)]
        for variant in ("10%", "100%"):
            on = results[("logging", variant, api)]
            p50 = [o["p50"] / f["p50"] for o, f in zip(on, off)]
            p99 = [o["p99"] / f["p99"] for o, f in zip(on, off)]
            # c=1 on one connection: throughput is 1 / mean latency, so the cost in
            # throughput (off / on) is the ratio of mean latencies
            cost = [o["mean"] / f["mean"] for o, f in zip(on, off)]
            target = variant == "100%"
            print(f"  {api:<4} {variant:>4}: p50 {med(o['p50'] for o in on):.3f} ms vs off "
                  f"{med(f['p50'] for f in off):.3f} ms, ratio {med(p50):.3f} {spread(p50, '.3f')}; "
                  f"p99 ratio {med(p99):.3f}; throughput off/on {med(cost):.3f}"
                  + (f"; target <= {LOGGING_TARGET:.2f}: "
                     f"{verdict(max(med(p50), med(cost)) <= LOGGING_TARGET)}" if target
                     else " (info)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write every round's figures here")
    parser.add_argument("--only", choices=["routing", "logging"], help="run only these points")
    args = parser.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    try:
        return run(workdir, args.json, args.only)
    except BenchBroken as e:
        print(f"\nBENCHMARK BROKEN: {e}", flush=True)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(workdir: Path, json_path: str | None, only: str | None = None) -> int:
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    model = prepare_model(workdir)
    model_ready = time.perf_counter()  # a one-off training of the penguin model is not budgeted
    import tensorflow as tf

    from serving.servable import load_servable

    servable = load_servable(model.name, 1, str(model.base / "1"), {"serve"})
    runner = servable.runners[model.signature]
    fast = getattr(runner, "_call", None) != getattr(runner, "_public_call", None)
    requests = build_requests(model, runner)
    public_fn = tf.saved_model.load(str(model.base / "1")).signatures[model.signature]
    public_call = lambda: {k: v.numpy() for k, v in public_fn(**requests.inputs).items()}  # noqa: E731
    print(f"serving bench: {model.description}, signature {model.signature}, single-row :predict; "
          f"{SECONDS:g} s per server point, {REF_SECONDS:g} s per reference point, up to {ROUNDS} interleaved rounds; {os.cpu_count()} CPUs, "
          f"loopback; load average {load_before[0]:.2f}", flush=True)
    print(f"reference: SignatureRunner.run in this process ({'fast path' if fast else 'PUBLIC-CALL FALLBACK'}), "
          f"same servable files and the arrays the server parses from the request", flush=True)

    results: dict = {}
    end = model_ready + BUDGET
    timings = {}
    if only is None:
        for i, batching in enumerate((False, True)):
            # Each mode gets its share of what is left of the budget.
            timings["on" if batching else "off"] = run_mode(batching, model, requests, runner,
                                                           public_call, workdir, results, end, 2 - i)
    routing_timing = (run_routing(model, requests, workdir, results)
                      if only in (None, "routing") else None)
    logging_timing = (run_logging(model, requests, workdir, results)
                      if only in (None, "logging") else None)
    if only is None:
        report(model, {k: v for k, v in results.items() if k[0] not in ("routing", "logging")},
               timings, time.perf_counter() - t0, load_before, os.getloadavg())
    if routing_timing is not None:
        report_routing(results, routing_timing)
    if logging_timing is not None:
        report_logging(results, logging_timing)
    if json_path:
        Path(json_path).write_text(json.dumps(
            {"model": model.description, "seconds": SECONDS,
             "timings": dict(timings, routing=routing_timing, logging=logging_timing),
             "points": [{"batching": k[0], "c": k[1], "kind": k[2], "rounds": v} for k, v in results.items()]},
            indent=1))
    requests_total = sum(r["n"] + r["errors"] for k, v in results.items() if k[2] in ("REST", "gRPC") for r in v)
    errors_total = sum(r["errors"] for k, v in results.items() if k[2] in ("REST", "gRPC") for r in v)
    if errors_total > ERROR_BOUND * requests_total:
        raise BenchBroken(f"{errors_total} failed requests of {requests_total} "
                          f"(bound {ERROR_BOUND:.1%})")
    return 0


# ---------------------------------------------------------------- report


def med(values) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def spread(values, fmt: str) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    return f"[{format(min(values), fmt)}..{format(max(values), fmt)}]"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(model: Model, results: dict, timings: dict, total: float, load_before, load_after) -> None:
    print()
    for mode, timing in timings.items():
        print(f"batching {mode}: server up in {timing['startup']:.1f} s, {len(timing['rounds'])} rounds of "
              f"{', '.join(f'{r:.0f}' for r in timing['rounds'])} s")
    print(f"whole run {total:.0f} s; load average (1 min) {load_before[0]:.2f} -> {load_after[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    print("medians over rounds; [min..max] over rounds; 'ref' = SignatureRunner.run in-process "
          "(c threads, 1 row; with batching at c>1: 1 thread on batches of the size the server formed)")
    header = (f"{'batching':<9}{'c':>3} {'api':<5}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>8}{'errors':>7}"
              f"{'ref p50':>8}{'ref rows/s':>11}{'batch':>6}{'p50-ref ms':>11}{'rps/ref':>8}  target")
    print(header)
    print("-" * len(header))
    for (mode, c, kind), values in results.items():
        if kind not in ("REST", "gRPC"):
            continue
        ref_key = (mode, c, f"ref@{kind}") if (mode, c, f"ref@{kind}") in results else (mode, c, "ref")
        refs = results[ref_key]
        gaps = [s["p50"] - r["p50"] for s, r in zip(values, refs)]
        ratios = [s["rps"] / r["rps"] for s, r in zip(values, refs)]
        batch = med([r.get("batch_rows", 1) for r in refs])
        gap, ratio = med(gaps), med(ratios)
        if mode == "off" and c == 1:
            target = f"p50-ref <= {P50_OVERHEAD_TARGET_MS:g} ms: {verdict(gap <= P50_OVERHEAD_TARGET_MS)}"
        elif mode == "on" and c == 64:
            target = f"rps/ref >= {BATCHED_RATIO_TARGET:g}x: {verdict(ratio >= BATCHED_RATIO_TARGET)}"
        else:
            target = "no target (info)"
        print(f"{mode:<9}{c:>3} {kind:<5}{med(v['p50'] for v in values):8.3f}{med(v['p99'] for v in values):8.3f}"
              f"{med(v['rps'] for v in values):8.0f}{sum(v['errors'] for v in values):7d}"
              f"{med(r['p50'] for r in refs):8.3f}{med(r['rps'] for r in refs):11.0f}{batch:6.0f}"
              f"{gap:+11.3f}{ratio:8.2f}  {target}")
    print()
    print("targets (medians of per-round pairs, [min..max] over rounds):")
    for api in ("REST", "gRPC"):
        values, refs = results[("off", 1, api)], results[("off", 1, "ref")]
        gaps = [s["p50"] - r["p50"] for s, r in zip(values, refs)]
        print(f"  {api:<4} c=1, no batching: p50 - in-process runner p50 = {med(gaps):+.3f} ms "
              f"{spread(gaps, '+.3f')}; target <= {P50_OVERHEAD_TARGET_MS:g} ms: "
              f"{verdict(med(gaps) <= P50_OVERHEAD_TARGET_MS)}")
    for api in ("REST", "gRPC"):
        values, refs = results[("on", 64, api)], results[("on", 64, f"ref@{api}")]
        ratios = [s["rps"] / r["rps"] for s, r in zip(values, refs)]
        batch = med([r["batch_rows"] for r in refs])
        print(f"  {api:<4} c=64, batching: throughput / in-process runner on {batch:.0f}-row batches = "
              f"{med(ratios):.3f}x {spread(ratios, '.3f')}; target >= {BATCHED_RATIO_TARGET:g}x: "
              f"{verdict(med(ratios) >= BATCHED_RATIO_TARGET)}")
    print("for comparison with earlier figures (no target, info):")
    public, refs = results.get(("off", 1, "public"), []), results[("off", 1, "ref")]
    if public:
        print(f"  public structured call p50 {med(p['p50'] for p in public):.3f} ms vs runner "
              f"{med(r['p50'] for r in refs):.3f} ms (the old reference was "
              f"{med([p['p50'] - r['p50'] for p, r in zip(public, refs)]):+.3f} ms slower)")
    single_rate = med(r["rps"] for r in refs)
    for api in ("REST", "gRPC"):
        ratios = [s["rps"] / single_rate for s in results[("on", 64, api)]]
        print(f"  {api:<4} c=64 batched throughput / in-process single-row rate {single_rate:.0f}/s = "
              f"{med(ratios):.2f}x (the old README ratio; it credits batching to the server)")
    requests_total = sum(r["n"] + r["errors"] for k, v in results.items() if k[2] in ("REST", "gRPC") for r in v)
    errors_total = sum(r["errors"] for k, v in results.items() if k[2] in ("REST", "gRPC") for r in v)
    print(f"errors: {errors_total} of {requests_total} requests (excluded from latency and throughput; "
          f"bound {ERROR_BOUND:.1%}): {'ok' if errors_total <= ERROR_BOUND * requests_total else 'BROKEN'}")


if __name__ == "__main__":
    sys.exit(main())
