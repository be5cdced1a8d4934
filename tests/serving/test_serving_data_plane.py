"""The data plane without sockets: REST and gRPC call these very methods with these protos."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving_harness import ServedModel


@pytest.fixture
def plane(data_plane):
    """The shared in-process data plane with a recording observer of this test's own."""
    records = []
    data_plane.observers.append(records.append)
    yield data_plane, records, data_plane.metrics
    data_plane.observers.remove(records.append)


def predict_request(model: ServedModel, instances):
    from tensorflow_serving.apis import predict_pb2

    from serving.tensor_proto import from_ndarray

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model.name
    from_ndarray(np.array([i["x"] for i in instances], np.float32), request.inputs["x"])
    from_ndarray(np.array([i["count"] for i in instances], np.int64), request.inputs["count"])
    tags = np.empty(len(instances), dtype=object)
    tags[:] = [i["tag"].encode() for i in instances]
    from_ndarray(tags, request.inputs["tag"])
    return request


def test_data_plane_predict_status_metadata_and_errors_without_sockets(plane, demo_model):
    from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                         get_model_status_pb2)

    from serving import demo_model as dm
    from serving.data_plane import RequestContext
    from serving.errors import ServingError
    from serving.inference import input_from_features
    from serving.tensor_proto import to_ndarray
    from serving.tensors import examples_from_json

    data_plane, records, metrics = plane
    before = {key: metrics.requests_by_api.values.get(key, 0) for key in [
        ("demo", "Predict", "GRPC", "OK"), ("nope", "predict", "REST", "NOT_FOUND"),
        ("demo", "GetModelStatus", "REST", "OK"), ("demo", "GetModelMetadata", "GRPC", "OK")]}

    async def scenario():
        ctx = RequestContext("GRPC", {"x-request-id": "client-id-1"})
        response = await data_plane.predict(predict_request(demo_model, dm.SAMPLE_INSTANCES), ctx)
        expected = dm.expected_outputs([i["x"] for i in dm.SAMPLE_INSTANCES],
                                       [i["count"] for i in dm.SAMPLE_INSTANCES],
                                       [i["tag"] for i in dm.SAMPLE_INSTANCES])
        np.testing.assert_allclose(to_ndarray(response.outputs["scores"], "scores"),
                                   expected["scores"], rtol=1e-6)
        assert response.model_spec.version.value == demo_model.version
        assert (ctx.request_id, ctx.version, ctx.method) == ("client-id-1", demo_model.version, "Predict")

        request = classification_pb2.ClassificationRequest()
        request.model_spec.name, request.model_spec.signature_name = demo_model.name, "classify"
        input_from_features(*examples_from_json({"examples": dm.SAMPLE_EXAMPLES}), request.input)
        result = await data_plane.classify(request, RequestContext("REST"))
        assert len(result.result.classifications) == len(dm.SAMPLE_EXAMPLES)

        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = demo_model.name
        status = await data_plane.model_status(status, RequestContext("REST"))
        assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [
            (demo_model.version, 30, 0)]

        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = demo_model.name
        metadata = await data_plane.model_metadata(metadata, RequestContext("GRPC"))
        signatures = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(signatures)
        assert {"serving_default", "classify", "regress"} <= set(signatures.signature_def)

        missing = predict_request(demo_model, dm.SAMPLE_INSTANCES)
        missing.model_spec.name = "nope"
        with pytest.raises(ServingError) as error:
            await data_plane.predict(missing, RequestContext("REST", api_label="predict"))
        assert (error.value.code_name, error.value.message) == (
            "NOT_FOUND", "Servable not found for request: Latest(nope)")
        bad = predict_request(demo_model, dm.SAMPLE_INSTANCES)
        del bad.inputs["tag"]
        with pytest.raises(ServingError) as error:
            await data_plane.predict(bad, RequestContext("GRPC"))
        assert error.value.code_name == "INVALID_ARGUMENT"

    asyncio.run(scenario())
    # One record per call, through the one place every future feature hooks into.
    summary = [(r.method, r.ctx.transport, r.model_name, r.version,
                r.error.code_name if r.error else "OK", r.response is not None) for r in records]
    assert summary == [
        ("Predict", "GRPC", "demo", 1, "OK", True),
        ("Classify", "REST", "demo", 1, "OK", True),
        ("GetModelStatus", "REST", "demo", None, "OK", True),
        ("GetModelMetadata", "GRPC", "demo", 1, "OK", True),
        ("Predict", "REST", "nope", None, "NOT_FOUND", False),
        ("Predict", "GRPC", "demo", 1, "INVALID_ARGUMENT", False),
    ]
    assert all(len(r.ctx.request_id) == 32 for r in records[1:])  # generated: uuid4 hex
    counts = {key: metrics.requests_by_api.values.get(key, 0) - before[key] for key in before}
    assert counts == {("demo", "Predict", "GRPC", "OK"): 1, ("nope", "predict", "REST", "NOT_FOUND"): 1,
                      ("demo", "GetModelStatus", "REST", "OK"): 1,
                      # gRPC counts only the inference RPCs, as TF Serving does.
                      ("demo", "GetModelMetadata", "GRPC", "OK"): 0}
