"""Exact answers and TF Serving's byte layout on the demo model, plus a fuzz of REST bodies."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from serving import demo_model as dm
from serving_harness import ServerProcess


@pytest.fixture(scope="module")
def server(demo_model, log_dir):
    proc = ServerProcess([f"--model_name={demo_model.name}",
                          f"--model_base_path={demo_model.base_path}"], log_dir, "demo").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def url(server):
    return f"{server.rest}/v1/models/demo"


def post(url, body):
    return requests.post(url, data=body if isinstance(body, (bytes, str)) else json.dumps(body),
                         timeout=30)


def test_predict_values_match_the_model(url):
    rows = post(f"{url}:predict", {"instances": dm.SAMPLE_INSTANCES}).json()["predictions"]
    expected = dm.expected_outputs([i["x"] for i in dm.SAMPLE_INSTANCES],
                                   [i["count"] for i in dm.SAMPLE_INSTANCES],
                                   [i["tag"] for i in dm.SAMPLE_INSTANCES])
    for i, row in enumerate(rows):
        np.testing.assert_allclose(row["scores"], expected["scores"][i], rtol=1e-6)
        assert row["total"] == float(expected["total"][i])
        assert row["doubled"] == int(expected["doubled"][i])
        assert base64.b64decode(row["tag_bytes"]["b64"]) == expected["tag_bytes"][i]


def test_row_response_layout_and_float_text(url):
    r = post(f"{url}:predict", {"instances": [dm.SAMPLE_INSTANCES[0]]})
    assert r.text == (
        '{\n    "predictions": [\n        {\n            "doubled": 4,\n'
        '            "scores": [0.0163024925, 0.983697474],\n'
        '            "tag_bytes": {\n                "b64": "YSE="\n            },\n'
        '            "total": 8.0\n        }\n    ]\n}')


def test_single_input_signature_formats(url):
    r = post(f"{url}:predict", {"signature_name": "single", "instances": [[1, 2, 3], [0.1, 0.2, 0.3]]})
    assert r.text == '{\n    "predictions": [6.0, 0.6\n    ]\n}'
    r = post(f"{url}:predict", {"signature_name": "single", "inputs": [[1, 2, 3]]})
    assert r.text == '{\n    "outputs": [\n        6.0\n    ]\n}'


def test_b64_and_nan_inputs(url):
    instance = {"x": [float("nan"), 1.0, 2.0], "count": 1, "tag": {"b64": base64.b64encode(b"\xff").decode()}}
    body = json.dumps({"instances": [instance]})  # json writes NaN as the bare token
    r = post(f"{url}:predict", body)
    assert r.status_code == 200, r.text
    assert '"total": NaN' in r.text
    assert base64.b64decode(json.loads(r.text.replace("NaN", "null"))["predictions"][0]["tag_bytes"]["b64"]) == b"\xff!"


@pytest.mark.parametrize("instance, message", [
    ({"x": [1, 2, 3], "count": 1.5, "tag": "a"},
     "Failed to process element: 0 key: count of 'instances' list. Error: INVALID_ARGUMENT: "
     "JSON Value: 1.5 Type: Number is not of expected type: int64"),
    ({"x": [1, True, 3], "count": 1, "tag": "a"},
     "Failed to process element: 0 key: x of 'instances' list. Error: INVALID_ARGUMENT: "
     "JSON Value: true Type: True is not of expected type: float"),
    ({"x": [1, 2, 3], "count": 1, "tag": 5},
     "Failed to process element: 0 key: tag of 'instances' list. Error: INVALID_ARGUMENT: "
     "JSON Value: 5 Type: Number is not of expected type: string"),
    ({"x": [1, 2, 3], "count": 1, "tag": {"b64": "!!"}},
     "Failed to process element: 0 key: tag of 'instances' list. Error: INVALID_ARGUMENT: "
     "Unable to base64 decode"),
    ({"x": [1, 2, 3], "count": 1, "tag": "a", "extra": 1},
     "Failed to process element: 0 key: extra of 'instances' list. Error: INVALID_ARGUMENT: "
     "JSON object: does not have named input: extra"),
    ({"x": [1, 2, 3], "count": 1},
     "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"x\": [\n        1,\n"
     "        2,\n        3\n    ],\n    \"count\": 1\n} keys must be equal to: count,tag,x"),
    ({"x": [[1], 2, 3], "count": 1, "tag": "a"},
     "Failed to process element: 0 key: x of 'instances' list. Error: INVALID_ARGUMENT: "
     "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
])
def test_instance_errors(url, instance, message):
    r = post(f"{url}:predict", {"instances": [instance]})
    assert r.status_code == 400
    assert r.json()["error"] == message


def test_inconsistent_instances_and_shape_errors(url):
    good = dm.SAMPLE_INSTANCES[0]
    r = post(f"{url}:predict", {"instances": [good, dict(good, x=[1.0, 2.0])]})
    assert r.json()["error"] == ("Failed to process element: 1 key: x of 'instances' list. Error: "
                                 "INVALID_ARGUMENT: Expecting tensor size: 3 but got: 2")
    r = post(f"{url}:predict", {"instances": [dict(good, x=[1.0, 2.0])]})
    assert r.status_code == 400
    assert r.json()["error"] == ("Input tensor alias: x has shape [1,2], which is incompatible "
                                 "with the signature's shape [-1,3]")
    r = post(f"{url}:predict", {"instances": [1, 2]})
    assert r.json()["error"] == ("instances is a plain list, but expecting list of objects as "
                                 "multiple input tensors required as per tensorinfo_map")
    r = post(f"{url}:predict", {"inputs": {"x": [[1, 2, 3]], "count": [1]}})
    assert r.json()["error"] == "Missing named input: tag in 'inputs' object."


def test_classify_and_regress_values(url):
    r = post(f"{url}:classify", {"signature_name": "classify", "examples": dm.SAMPLE_EXAMPLES})
    expected = dm.expected_outputs([e["x"] for e in dm.SAMPLE_EXAMPLES],
                                   [e["count"] for e in dm.SAMPLE_EXAMPLES], ["", ""])["scores"]
    results = r.json()["results"]
    assert [[label for label, _ in row] for row in results] == [["neg", "pos"], ["neg", "pos"]]
    np.testing.assert_allclose([[s for _, s in row] for row in results], expected, rtol=1e-6)
    assert r.text.startswith('{\n    "results": [[["neg", 0.0163024925], ["pos", 0.983697474]], [[')
    r = post(f"{url}:regress", {"signature_name": "regress", "context": {"count": 2},
                                 "examples": [{"x": [1.0, 2.0, 3.0]}, {"x": [0.5, -1.0, 0.25]}]})
    assert r.text == '{\n    "results": [8.0, 1.75]\n}'
    r = post(f"{url}:classify", {"signature_name": "single", "examples": [{"x": 1.0}]})
    assert r.status_code == 400
    assert r.json()["error"].startswith("No classification inputs found in SignatureDef: inputs {")


# ------------------------------------------------------------------ fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["x", "count", "tag", "b64", "instances", "inputs", "signature_name",
                         "examples", "context", "zz"]), children, max_size=4),
    max_leaves=20)


def _body(draw_value, raw):
    return raw if raw is not None else json.dumps(draw_value).encode()


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=json_values, raw=st.none() | st.binary(max_size=64),
       api=st.sampled_from(["predict", "classify", "regress"]))
def test_fuzzed_bodies_never_break_the_server(url, value, raw, api):
    wrapped = value
    if raw is None and isinstance(value, dict) and api == "predict" and "instances" not in value:
        wrapped = {"instances": [value]}
    r = post(f"{url}:{api}", _body(wrapped, raw))
    assert r.status_code in (200, 400, 404, 501), (r.status_code, r.text)
    body = json.loads(r.text.replace("NaN", "null").replace("-Infinity", "null").replace("Infinity", "null")) \
        if r.status_code == 200 else r.json()
    assert ("error" in body) == (r.status_code != 200)


def test_server_survived_the_fuzz(server, url):
    assert server.alive()
    assert post(f"{url}:predict", {"instances": dm.SAMPLE_INSTANCES}).status_code == 200
