"""docker-compose.yml and the TF Serving config files it mounts; `pipewright serve` flags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import config as config_lib
from serving import protos
from serving.batching import BatchOptions
from serving.errors import ServingError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def service():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return compose["services"]["serving"]


def _mounts(service) -> dict[str, Path]:
    mounts = {}
    for volume in service["volumes"]:
        host, container = re.split(r":(?![^{]*\})", volume)[:2]  # ${VAR:-default} holds colons
        mounts[container] = host
    return mounts


def _flags(service) -> dict[str, str]:
    return dict(arg.lstrip("-").split("=", 1) for arg in service["command"])


def test_compose_runs_tf_serving_on_8500_and_8501(service):
    assert service["image"] == "tensorflow/serving:2.16.1"
    container_ports = {p.rsplit(":", 1)[1] for p in service["ports"]}
    assert container_ports == {"8500", "8501"}


def test_compose_config_files_exist_and_parse(service):
    mounts = _mounts(service)
    config_dir = REPO / mounts["/config"]
    flags = _flags(service)
    files = {}
    for flag in ("model_config_file", "monitoring_config_file", "batching_parameters_file"):
        container_path = flags[flag]
        assert container_path.startswith("/config/")
        files[flag] = config_dir / container_path[len("/config/"):]
        assert files[flag].is_file(), files[flag]

    models = text_format.Parse(files["model_config_file"].read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (penguin,) = models.model_config_list.config
    assert (penguin.name, penguin.model_platform) == ("penguin", "tensorflow")
    assert penguin.base_path.startswith("/models/")
    assert "/models" in mounts
    config_lib.validate_model_config_list(models.model_config_list)

    monitoring = text_format.Parse(files["monitoring_config_file"].read_text(), protos.MonitoringConfig())
    assert monitoring.prometheus_config.enable
    assert config_lib.prometheus_path(monitoring) == "/monitoring/prometheus/metrics"

    batching = text_format.Parse(files["batching_parameters_file"].read_text(), protos.BatchingParameters())
    assert batching.max_batch_size.value > 0
    BatchOptions(batching)  # allowed_batch_sizes must end at max_batch_size
    assert flags["enable_batching"] == "true"


def test_compose_front_door_forwards_to_tf_serving_with_flags_our_server_accepts(service):
    """pipewright-serving's command parses with `pipewright serve`'s own flag parser and passes
    its start-up checks; it forwards to the serving service's gRPC port, reads the model TF
    Serving loads from the same directory at the same path, and TF Serving does not re-read
    its config file (which would undo the versions and labels the front door sets)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    front = compose["services"]["pipewright-serving"]
    assert front["entrypoint"] == ["pipewright", "serve"]
    options = config_lib.parse_args(front["command"])
    config_lib.validate_options(options)

    host, port = options.upstream_grpc_address.rsplit(":", 1)
    assert host == "serving" and host in compose["services"]
    assert port == "8500" and any(p.endswith(":8500") for p in service["ports"])
    assert "serving" in front["depends_on"]

    front_mounts, tf_mounts = _mounts(front), _mounts(service)
    assert front_mounts["/models"] == tf_mounts["/models"]  # the same push directory
    models = text_format.Parse((REPO / tf_mounts["/config"] / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    front_config = config_lib.model_server_config(options)
    assert [(c.name, c.base_path) for c in front_config.model_config_list.config] == \
        [(c.name, c.base_path) for c in models.model_config_list.config]
    assert options.monitoring_config_file.startswith("/config/") and \
        front_mounts["/config"] == tf_mounts["/config"]
    assert int(_flags(service).get("model_config_file_poll_wait_seconds", "0")) == 0


def test_compose_clients_and_the_rollout_step_reach_the_front_door_not_tf_serving(service):
    """Clients' usual ports (8500/8501 on the host) are the front door's; the Airflow
    containers' Rollout step reads the front door's evidence (without
    PIPEWRIGHT_MODEL_SERVER_REST a canary is promoted unobserved)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    front = compose["services"]["pipewright-serving"]
    published = {p.split(":")[1]: p.split(":")[2] for p in front["ports"]}
    assert published == {"8500": "8500", "8501": "8501"}, front["ports"]
    assert not {p.split(":")[1] for p in service["ports"]} & {"8500", "8501"}
    options = config_lib.parse_args(front["command"])
    env = compose["x-airflow"]["environment"]
    assert env["PIPEWRIGHT_MODEL_SERVER_REST"] == \
        f"http://pipewright-serving:{options.rest_api_port}"


def test_upstream_flags():
    options = config_lib.parse_args(["--model_base_path=/x", "--upstream_grpc_address=serving:8500",
                                     "--upstream_load_timeout_seconds=30"])
    assert (options.upstream_grpc_address, options.upstream_load_timeout_seconds) == ("serving:8500", 30)
    config_lib.validate_options(options)
    for address in ("[::1]:8501", "127.0.0.1:8501", "serving:8500"):
        config_lib.validate_options(config_lib.parse_args(
            ["--model_base_path=/x", f"--upstream_grpc_address={address}"]))
    help_text = config_lib.build_parser().format_help()
    assert "--upstream_grpc_address" in help_text and "HandleReloadConfigRequest" in help_text


@pytest.mark.parametrize("argv, message", [
    (["--upstream_grpc_address=serving"], "--upstream_grpc_address must be HOST:PORT, got 'serving'"),
    (["--upstream_grpc_address=serving:http"], "--upstream_grpc_address must be HOST:PORT"),
    (["--upstream_grpc_address=serving:8500", "--enable_batching"],
     "--enable_batching has no effect with --upstream_grpc_address"),
    (["--upstream_load_timeout_seconds=0"], "--upstream_load_timeout_seconds must be positive"),
    (["--upstream_load_timeout_seconds=-5"], "--upstream_load_timeout_seconds must be positive"),
    (["--upstream_load_timeout_seconds=nan"], "--upstream_load_timeout_seconds must be positive"),
    (["--upstream_grpc_address=serving:0"], "--upstream_grpc_address must be HOST:PORT"),
    (["--upstream_grpc_address=:8500"], "--upstream_grpc_address must be HOST:PORT"),
    (["--port=8600", "--upstream_grpc_address=localhost:8600"],
     "--upstream_grpc_address localhost:8600 is this server's own --port"),
    (["--rest_api_port=8601", "--upstream_grpc_address=127.0.0.1:8601"],
     "--upstream_grpc_address 127.0.0.1:8601 is this server's own --rest_api_port"),
    (["--upstream_grpc_address=::1:8500"],
     "--upstream_grpc_address must be HOST:PORT with an IPv6 address in brackets"),
])
def test_invalid_upstream_flags(argv, message):
    with pytest.raises(ServingError) as info:
        config_lib.validate_options(config_lib.parse_args(["--model_base_path=/x", *argv]))
    assert info.value.message.startswith(message)


def test_our_protos_match_tf_serving_wire_format():
    batching = protos.BatchingParameters()
    batching.max_batch_size.value = 64
    batching.allowed_batch_sizes.extend([8, 64])
    # field 1 (Int64Value{value=64}), field 6 packed int64s
    assert batching.SerializeToString() == b"\x0a\x02\x08\x40\x32\x02\x08\x40"
    monitoring = protos.MonitoringConfig()
    monitoring.prometheus_config.enable = True
    assert monitoring.SerializeToString() == b"\x0a\x02\x08\x01"


def test_tf_serving_style_flags():
    options = config_lib.parse_args([
        "--port=9000", "--rest_api_port", "9001", "--model_name=penguin",
        "--model_base_path=/srv/penguin", "--enable_batching", "--file_system_poll_wait_seconds=2",
        "-monitoring_config_file=/m.config", "--enable_model_warmup=false"])
    assert (options.grpc_port, options.rest_api_port, options.model_name) == (9000, 9001, "penguin")
    assert options.enable_batching and not options.enable_model_warmup
    assert options.monitoring_config_file == "/m.config"
    assert options.grpc_host == options.rest_host == "127.0.0.1"
    options = config_lib.parse_args(["--model_base_path=/x", "--host=0.0.0.0"])
    assert options.grpc_host == "0.0.0.0"
    config = config_lib.model_server_config(options)
    assert config.model_config_list.config[0].name == "default"


@pytest.mark.parametrize("argv, message", [
    (["--port=0", "--model_base_path=/x"], "At least one of server_options.grpc_port"),
    ([], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
    (["--model_base_path=/x", "--batching_parameters_file=/b"],
     "server_options.batching_parameters_file is set without setting"),
])
def test_invalid_flag_combinations(argv, message):
    with pytest.raises(ServingError) as info:
        config_lib.validate_options(config_lib.parse_args(argv))
    assert info.value.message.startswith(message)


def test_cli_exits_non_zero_on_bad_config(tmp_path, capsys):
    from serving.cli import main

    bad = tmp_path / "models.config"
    bad.write_text("model_config_list { config { name: 1 ")
    assert main([f"--model_config_file={bad}"]) == 1
    # util/proto_util.h ParseProtoTextFile's status; the parser's details go to the log.
    assert f"INVALID_ARGUMENT: Invalid protobuf file: '{bad}'" in capsys.readouterr().err
