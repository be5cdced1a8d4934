"""Fixtures: a demo SavedModel built once per session and `pipewright serve` subprocesses.

Swapping in another model: override `served_model` (e.g. in a conftest closer to the tests or
via the lead's session fixture) with a ServedModel naming its base path and valid requests;
the protocol tests only use what ServedModel carries. Tests that need the demo model's exact
signatures use `demo_model` directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from serving_harness import ServedModel


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> Path:
    """A base path holding version 1 of the demo model (built once, shared read-only)."""
    from serving.demo_model import write_demo_model

    base = tmp_path_factory.mktemp("demo_models") / "demo"
    write_demo_model(base / "1", warmup_records=3)
    return base


@pytest.fixture(scope="session")
def demo_model(demo_model_dir) -> ServedModel:
    from serving import demo_model as dm

    return ServedModel(
        name="demo", base_path=demo_model_dir, version=1, instances=dm.SAMPLE_INSTANCES,
        classify={"signature_name": "classify", "examples": dm.SAMPLE_EXAMPLES},
        regress={"signature_name": "regress", "examples": dm.SAMPLE_EXAMPLES})


@pytest.fixture(scope="session")
def served_model(demo_model) -> ServedModel:
    """The model the generic protocol tests run against (swap point for other models)."""
    return demo_model


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server_logs")


@pytest.fixture(scope="session")
def data_plane(demo_model):
    """An in-process DataPlane over the demo model, no sockets. Tests add and remove their own
    observers (data_plane.observers) and read their own metrics."""
    from tensorflow_serving.config import model_server_config_pb2

    from serving.data_plane import DataPlane
    from serving.inference import InferenceService
    from serving.metrics import ServingMetrics
    from serving.model_manager import ModelManager
    from serving.servable import load_servable

    manager = ModelManager(loader=lambda name, version, path: load_servable(name, version, path,
                                                                             {"serve"}))
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=demo_model.name, base_path=str(demo_model.base_path),
                                        model_platform="tensorflow")
    manager.apply_config(config)  # loads before returning
    metrics = ServingMetrics()
    plane = DataPlane(InferenceService(manager, metrics), metrics=metrics, max_threads=2)
    yield plane
    plane.stop()
    manager.stop()


@pytest.fixture(scope="session")
def rollout_models(tmp_path_factory) -> Path:
    """Versions 1 (stable) and 2 (candidate) of the two classifiers in
    tests/serving/rollout_models.py (built once, shared read-only: copy before changing)."""
    from rollout_models import CANDIDATE_THRESHOLD, STABLE_THRESHOLD, write_classifier

    base = tmp_path_factory.mktemp("rollout_models") / "clf"
    write_classifier(base / "1", STABLE_THRESHOLD)
    write_classifier(base / "2", CANDIDATE_THRESHOLD)
    return base
