"""The rollout controller's decisions, one bake window at a time, on Prometheus text as the
model server writes it (the end-to-end test with a real server is test_rollout_live.py)."""
from __future__ import annotations

import json
import os

import pytest

from components.rollout_controller import Settings, advance, history
from components.rollout_evidence import parse_metrics
from components.rollout_policy import (CANARY, LOADING, RolloutConfigError, RolloutPolicy,
                                       parse_policy, read_policy, write_policy)


class Server:
    """Counters a model server would export, grown by `traffic`; rendered as Prometheus text
    and read back through the real parser."""

    def __init__(self, model="penguin"):
        self.model = model
        self.requests = {}  # (version, status) -> n
        self.classes = {}  # (version, class) -> n
        self.latency = {}  # version -> n (all in the 1000 us bucket)
        self.loaded = set()

    def traffic(self, version, n, classes, errors=0):
        self.requests[(version, "OK")] = self.requests.get((version, "OK"), 0) + n - errors
        if errors:
            key = (version, "INVALID_ARGUMENT")
            self.requests[key] = self.requests.get(key, 0) + errors
        for name, share in classes.items():
            self.classes[(version, name)] = self.classes.get((version, name), 0) + round(n * share)
        self.latency[version] = self.latency.get(version, 0) + n

    def text(self):
        m = self.model
        lines = ["# TYPE :pipewright:serving:version_request_count counter"]
        lines += [f':pipewright:serving:version_request_count{{model_name="{m}",version="{v}",'
                  f'status="{s}"}} {n}' for (v, s), n in self.requests.items()]
        lines.append("# TYPE :pipewright:serving:prediction_class_count counter")
        lines += [f':pipewright:serving:prediction_class_count{{model_name="{m}",version="{v}",'
                  f'class="{c}"}} {n}' for (v, c), n in self.classes.items()]
        lines.append("# TYPE :pipewright:serving:version_request_latency histogram")
        for v, n in self.latency.items():
            lab = f'model_name="{m}",version="{v}"'
            lines += [f':pipewright:serving:version_request_latency_bucket{{{lab},le="1000"}} {n}',
                      f':pipewright:serving:version_request_latency_bucket{{{lab},le="+Inf"}} {n}',
                      f':pipewright:serving:version_request_latency_sum{{{lab}}} {n * 900}',
                      f':pipewright:serving:version_request_latency_count{{{lab}}} {n}']
        lines.append("# TYPE :pipewright:serving:shadow_comparison_count counter")
        lines += [f':pipewright:serving:shadow_comparison_count{{model_name="{m}",version="2",'
                  f'agreement="{a}"}} {n}' for a, n in getattr(self, "shadow", {}).items()]
        return "\n".join(lines) + "\n"

    def snapshot(self, model_name):
        return parse_metrics(self.text(), model_name)

    def available(self, model_name, version):
        return version in self.loaded

    def __str__(self):
        return "test server"


SPECIES = {"Adelie": 0.45, "Gentoo": 0.35, "Chinstrap": 0.20}


@pytest.fixture
def base(tmp_path):
    for version in (1, 2):
        os.makedirs(tmp_path / str(version))
    write_policy(str(tmp_path), RolloutPolicy(
        strategy=CANARY, stable_version=1, candidate_version=2, state=LOADING,
        steps_percent=[10, 50, 100], bake_seconds=60,
        guards={"max_prediction_distance": 0.2, "max_error_rate_ratio": 2.0,
                "max_latency_p99_ratio": 2.0}, window={"loading_since": 1000.0}))
    return str(tmp_path)


def test_good_candidate_goes_through_every_step_to_promotion(base):
    server = Server()
    settings = Settings(min_requests=20)
    assert advance(base, "penguin", server, settings, now=1001).event == "waiting"  # loading
    server.loaded.add(2)
    started = advance(base, "penguin", server, settings, now=1002)
    assert (started.event, read_policy(base).candidate_percent) == ("started", 10)
    assert advance(base, "penguin", server, settings, now=1030).event == "waiting"
    shares = []
    now = 1002
    for share in (10, 50):  # the 100 % step is the promotion itself
        shares.append(read_policy(base).candidate_percent)
        server.traffic(1, round(1000 * (100 - share) / 100), SPECIES)
        server.traffic(2, round(1000 * share / 100), SPECIES)
        now += 61
        decision = advance(base, "penguin", server, settings, now=now)
        assert all(g.passed for g in decision.guards), decision.guards
    assert shares == [10, 50]
    policy = read_policy(base)
    assert (decision.event, policy.state, policy.stable_version, policy.candidate_version) == \
        ("promoted", "promoted", 2, None)
    events = [e["event"] for e in history(base, 2)]
    assert events == ["started", "advanced", "promoted"]


def test_bad_candidate_is_rolled_back_in_its_first_window_naming_the_guard(base):
    server = Server()
    server.loaded.add(2)
    advance(base, "penguin", server, now=1002)
    server.traffic(1, 900, SPECIES)
    server.traffic(2, 100, {"Adelie": 1.0})  # predicts one class only
    decision = advance(base, "penguin", server, now=1063)
    policy = read_policy(base)
    assert (decision.event, policy.state, policy.candidate_version, policy.candidate_percent) == \
        ("rolled_back", "rolled_back", None, 0)
    assert "max_prediction_distance 0.55" in policy.reason, policy.reason
    assert policy.stable_version == 1


def test_errors_and_latency_guards_compare_with_stable(base):
    server = Server()
    server.loaded.add(2)
    advance(base, "penguin", server, now=1002)
    server.traffic(1, 900, SPECIES, errors=9)
    server.traffic(2, 100, SPECIES, errors=10)  # 10 % vs 1 %
    decision = advance(base, "penguin", server, now=1063)
    assert decision.event == "rolled_back"
    failed = {g.name for g in decision.guards if g.passed is False}
    assert failed == {"max_error_rate_ratio"}


def test_no_traffic_extends_the_window_then_rolls_back_without_promoting(base):
    server = Server()
    server.loaded.add(2)
    advance(base, "penguin", server, now=1002)
    now = 1002
    events = []
    for _ in range(3):
        server.traffic(2, 3, SPECIES)
        now += 61
        events.append(advance(base, "penguin", server, Settings(max_inconclusive=3), now=now).event)
    assert events == ["extended", "extended", "rolled_back"]
    assert "no evidence in 3 windows" in read_policy(base).reason


def test_a_server_restart_in_the_window_is_not_evidence(base):
    server = Server()
    server.loaded.add(2)
    server.traffic(1, 500, SPECIES)
    advance(base, "penguin", server, now=1002)
    server.requests.clear()
    server.classes.clear()
    server.latency.clear()  # restarted: counters start again at 0
    server.traffic(1, 10, SPECIES)
    decision = advance(base, "penguin", server, now=1063)
    assert decision.event == "extended" and "restarted" in decision.reason


def test_a_candidate_that_never_loads_is_rolled_back_after_the_timeout(base):
    server = Server()
    assert advance(base, "penguin", server, Settings(load_timeout_s=30), now=1010).event == "waiting"
    decision = advance(base, "penguin", server, Settings(load_timeout_s=30), now=1031)
    assert decision.event == "rolled_back" and "did not become AVAILABLE" in decision.reason


@pytest.mark.parametrize("change, message", [
    ({"steps_percent": [5, 5, 50]}, "steps_percent[1] = 5.0: steps must increase"),
    ({"candidate_percent": 120}, "candidate_percent = 120.0: must be in [0, 100]"),
    ({"guards": {"max_p50": 1}}, "guards.max_p50: unknown guard"),
    ({"stable_version": -1}, "stable_version: expected a version number"),
    ({"colour": "blue"}, "unknown field 'colour'"),
    ({"strategy": "linear"}, "unknown strategy 'linear'"),
])
def test_bad_rollout_files_are_rejected_naming_the_field(base, change, message):
    raw = json.loads(open(os.path.join(base, "rollout.json")).read())
    raw.update(change)
    with open(os.path.join(base, "rollout.json"), "w") as fh:
        json.dump(raw, fh)
    with pytest.raises(RolloutConfigError) as info:
        read_policy(base)
    assert message in str(info.value) and "rollout.json" in str(info.value)
    with pytest.raises(RolloutConfigError, match=message.split(":")[0].replace("[", r"\[")
                       .replace("]", r"\]").replace(".", r"\.")):
        parse_policy(raw)


def test_a_policy_naming_a_missing_version_is_not_written(base):
    with pytest.raises(RolloutConfigError, match="candidate_version = 7: no such version"):
        write_policy(base, RolloutPolicy(strategy=CANARY, stable_version=1, candidate_version=7))
    assert read_policy(base).candidate_version == 2  # the last good file stays


def test_shadow_is_judged_on_agreement_and_promoted_at_once_keeping_stable_loaded(tmp_path):
    for version in (1, 2):
        os.makedirs(tmp_path / str(version))
    base = str(tmp_path)
    write_policy(base, RolloutPolicy(
        strategy="shadow", stable_version=1, candidate_version=2, state=LOADING,
        shadow_percent=100, bake_seconds=60,
        guards={"min_shadow_agreement": 0.9, "max_error_rate_ratio": 2.0,
                "max_prediction_distance": 0.2}, window={"loading_since": 1000.0}))
    server = Server()
    server.loaded.add(2)
    assert advance(base, "penguin", server, now=1001).event == "started"
    server.traffic(1, 400, SPECIES)
    for name, share in SPECIES.items():  # the candidate's shadow answers
        server.classes[(2, name)] = round(400 * share)
    server.shadow = {"same": 380, "different": 20}
    decision = advance(base, "penguin", server, now=1062)
    judged = {g.name: g.passed for g in decision.guards}
    assert judged == {"min_shadow_agreement": True, "max_error_rate_ratio": None,
                      "max_prediction_distance": True}, decision.guards
    policy = read_policy(base)
    assert (decision.event, policy.stable_version, policy.hold_versions) == ("promoted", 2, [1])


def test_blue_green_measures_stable_alone_then_switches_and_reverts_on_a_bad_window(tmp_path):
    for version in (1, 2):
        os.makedirs(tmp_path / str(version))
    base = str(tmp_path)
    write_policy(base, RolloutPolicy(strategy="blue_green", stable_version=1, candidate_version=2,
                                     state=LOADING, bake_seconds=60,
                                     guards={"max_prediction_distance": 0.2},
                                     window={"loading_since": 1000.0}))
    server = Server()
    server.loaded.add(2)
    advance(base, "penguin", server, now=1001)
    assert read_policy(base).candidate_percent == 0  # the reference window: stable alone
    server.traffic(1, 300, SPECIES)
    switched = advance(base, "penguin", server, now=1062)
    policy = read_policy(base)
    assert (switched.event, policy.stable_version, policy.hold_versions) == ("switched", 2, [1])
    server.traffic(2, 300, {"Gentoo": 1.0})  # the new version answers everything, badly
    decision = advance(base, "penguin", server, now=1123)
    policy = read_policy(base)
    assert decision.event == "rolled_back" and "max_prediction_distance" in policy.reason
    assert (policy.stable_version, policy.hold_versions) == (1, [])  # reverted at once
    assert "rolled back version 2" in policy.reason


def test_rollout_cli_status_promote_and_abort_rewrite_the_policy(base, tmp_path, capsys):
    from pipelines.rollout_cli import main

    home = tmp_path / "home"
    serving = home / "serving"
    serving.mkdir(parents=True)
    os.symlink(base, serving / "penguin")
    args = ["--home", str(home)]
    assert main(["status", "penguin", *args]) == 0
    assert "candidate version 2" in capsys.readouterr().out
    assert main(["promote", "penguin", *args]) == 1  # still loading: maybe it never loads
    assert "has not been seen AVAILABLE" in capsys.readouterr().err
    policy = read_policy(base)
    policy.state = "baking"
    write_policy(base, policy)
    assert main(["promote", "penguin", *args]) == 0
    policy = read_policy(base)
    assert (policy.state, policy.stable_version, policy.hold_versions) == ("promoted", 2, [1])
    assert main(["abort", "penguin", *args]) == 1  # nothing in progress any more
    assert "no rollout in progress" in capsys.readouterr().err
    write_policy(base, RolloutPolicy(strategy=CANARY, stable_version=1, candidate_version=2,
                                     state="baking", candidate_percent=25))
    assert main(["abort", "penguin", *args]) == 0
    policy = read_policy(base)
    assert (policy.state, policy.stable_version, policy.candidate_version) == ("aborted", 1, None)
    assert [e["event"] for e in history(base)][-2:] == ["promoted", "aborted"]  # audit trail
    os.remove(os.path.join(base, "rollout.json"))
    assert main(["status", "penguin", *args]) == 1
    assert "no rollout.json" in capsys.readouterr().err
    assert main(["status", "nosuch", *args]) == 1
    assert "does not exist: nothing was pushed" in capsys.readouterr().err


def test_bad_shapes_deep_nesting_and_a_bom_in_rollout_files(base):
    path = os.path.join(base, "rollout.json")
    for text, message in (('{"strategy": "canary", "stable_version": 1, "steps_percent": 10}',
                           "steps_percent: expected a list"),
                          ('{"strategy": "immediate", "stable_version": 1, "reason": '
                           + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
                          ('{"strategy": "immediate", "stable_version": 1, '
                           '"candidate_percent": 5}', "there is no candidate_version"),
                          ('{"strategy": "immediate", "stable_version": 1, "stable_version": 2}',
                           "key 'stable_version' appears twice")):
        with open(path, "w") as fh:
            fh.write(text)
        with pytest.raises(RolloutConfigError, match=message):
            read_policy(base)
    with open(path, "w", encoding="utf-8-sig") as fh:  # a Windows editor's BOM
        fh.write('{"strategy": "immediate", "stable_version": 1}')
    assert read_policy(base).stable_version == 1


def test_pusher_checks_runtime_params_by_their_default_and_choices():
    from components.base import Param
    from components.pusher import Pusher

    with pytest.raises(RolloutConfigError, match="unknown strategy 'yolo'"):
        Pusher.check_rollout({"rollout": Param("strategy", str, "yolo").default})
    from tests.test_rollout_live import canary_pipeline  # a wiring to reuse

    pipeline = canary_pipeline("http://127.0.0.1:1")
    trainer = pipeline.component("Trainer")
    with pytest.raises(RolloutConfigError, match="bake_seconds = -5.0"):
        Pusher(model=trainer.outputs.model,
               model_blessing=pipeline.component("Evaluator").outputs.blessing,
               model_name="penguin", bake_seconds=Param("bake", float, -5.0))
    with pytest.raises(RolloutConfigError, match="unknown strategy 'linear'"):
        Pusher(model=trainer.outputs.model,
               model_blessing=pipeline.component("Evaluator").outputs.blessing,
               model_name="penguin",
               rollout=Param("rollout", str, "canary", choices=("canary", "linear")))


def test_min_live_accuracy_judges_the_candidates_own_labeled_answers_once_labels_arrive(
        base, tmp_path):
    """Delayed labels through the real request-log writers: a shadowed request was answered
    by both versions under one request id; each version is judged on its own answer. Before
    labels arrive the guard is not judged (the canary advances); once they do, a candidate
    right on half of them is rolled back by this guard alone."""
    from components.rollout_labels import DelayedLabels
    from tests.test_traffic_monitor import (ROTATED, LogWriter, penguin_rows, raw_request,
                                            write_labels)
    from tensorflow_serving.apis import predict_pb2
    import numpy as np
    import tensorflow as tf

    def answer(species):
        response = predict_pb2.PredictResponse()
        response.outputs["classes"].CopyFrom(tf.make_tensor_proto(np.array([species.encode()])))
        return response

    policy = read_policy(base)
    policy.guards["min_live_accuracy"] = 0.7
    write_policy(base, policy)
    rows = [r for r in penguin_rows() if r["species"] in ROTATED][:40]
    log_dir, labels_dir = tmp_path / "logs", tmp_path / "labels"
    labels_dir.mkdir()
    server, labels = Server(), DelayedLabels(str(labels_dir), str(log_dir))
    server.loaded.add(2)
    advance(base, "penguin", server, now=1002, labels=labels)
    server.traffic(1, 900, SPECIES)
    server.traffic(2, 100, SPECIES)
    decision = advance(base, "penguin", server, now=1063, labels=labels)
    live = next(g for g in decision.guards if g.name == "min_live_accuracy")
    assert (decision.event, live.passed) == ("advanced", None), decision
    assert "0 of version 2's answers labeled so far (judged from 10)" in live.detail

    for version in (1, 2):  # stable answered each client; the candidate, in the shadow, too
        writer = LogWriter(str(log_dir), version)
        for i, row in enumerate(rows):
            wrong = version == 2 and i % 2 == 1
            writer.log(raw_request(row), request_id=f"r-{i}",
                       response=answer(ROTATED[row["species"]] if wrong else row["species"]))
        writer.close()
    write_labels(labels_dir, "day1.csv", {f"r-{i}": row["species"] for i, row in
                                          enumerate(rows)}, arrived=1100)
    assert labels.counts("penguin") == {1: (40, 40), 2: (40, 20)}
    server.traffic(1, 500, SPECIES)
    server.traffic(2, 500, SPECIES)
    decision = advance(base, "penguin", server, now=1124, labels=labels)
    policy = read_policy(base)
    assert (decision.event, policy.stable_version, policy.candidate_version) == \
        ("rolled_back", 1, None)
    assert policy.reason.endswith(
        "min_live_accuracy 0.5 beyond 0.7 (20 of 40 labeled answers of version 2 right)"), \
        policy.reason


@pytest.mark.parametrize("min_labels", [0, -3])
def test_min_labels_below_one_is_refused_not_divided_by(min_labels):
    """min_labels 0 once judged a candidate with no labeled answer: ZeroDivisionError."""
    with pytest.raises(ValueError, match=f"min_labels must be >= 1 .*got {min_labels}"):
        Settings(min_labels=min_labels)


def test_label_csvs_with_a_bom_bad_bytes_or_extra_fields(tmp_path):
    """An Excel BOM is read; a file that is not UTF-8 and a row with more fields than the
    header (an unquoted comma in a label) are refused naming the file and row."""
    from components.traffic_labels import read_labels

    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfrequest_id,label\nr-1,Adelie\n")
    assert read_labels([str(bom)]) == {("r-1", 0): "Adelie"}
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"request_id,label\nr-1,Adelie\nr-2,G\xe9ntoo\n")
    with pytest.raises(ValueError, match=f"^{latin} row 3: not UTF-8 text"):
        read_labels([str(latin)])
    extra = tmp_path / "extra.csv"
    extra.write_text('request_id,label\nr-1,"Adelie, male"\nr-2,Adelie, male\n')
    with pytest.raises(ValueError, match=rf"^{extra} row 3: 3 fields, the header has 2"):
        read_labels([str(extra)])


def test_labels_that_join_no_logged_request_are_said_naming_the_log_dir(tmp_path, caplog):
    """A log_dir that is wrong (or not written yet) leaves min_live_accuracy unjudged while
    the rollout goes on: the labels that did not join are logged, naming the directory."""
    import logging

    from components.rollout_labels import DelayedLabels
    from tests.test_traffic_monitor import write_labels

    labels_dir, log_dir = tmp_path / "labels", tmp_path / "no-such-logs"
    write_labels(labels_dir, "day1.csv", {"r-1": "Adelie", "r-2": "Gentoo"}, arrived=1100)
    labels = DelayedLabels(str(labels_dir), str(log_dir), logging.getLogger("rollout-test"))
    with caplog.at_level(logging.WARNING, logger="rollout-test"):
        assert labels.counts("penguin") == {}
    [record] = caplog.records
    assert record.getMessage() == (
        f"min_live_accuracy: 2 of 2 delayed labels in {labels_dir} did not join the request "
        f"logs of model penguin in {log_dir} (no closed request-log file of the model there "
        f"yet; e.g. r-1, r-2)")


def test_damaged_tfrecord_label_files_are_named_with_the_record(tmp_path):
    """TF's DataLossError named neither the file nor the record."""
    import tensorflow as tf

    from components.traffic_labels import read_labels

    junk, junk_gz, not_example = (tmp_path / "junk.tfrecord", tmp_path / "junk.tfrecord.gz",
                                  tmp_path / "other.tfrecord")
    junk.write_bytes(b"\x00\x01 this is no TFRecord file at all \x02" * 4)
    junk_gz.write_bytes(b"not gzip")
    with tf.io.TFRecordWriter(str(not_example)) as writer:
        example = tf.train.Example()
        example.features.feature["request_id"].bytes_list.value.append(b"r-1")
        example.features.feature["label"].bytes_list.value.append(b"Adelie")
        writer.write(example.SerializeToString())
        writer.write(b"\xff\xff\xff")
    for path, message in ((junk, "record 0: not a readable TFRecord file: "),
                          (junk_gz, "record 0: not a readable gzip TFRecord file: "),
                          (not_example, "record 1: not a tf.Example")):
        with pytest.raises(ValueError) as info:
            read_labels([str(path)])
        assert str(info.value).startswith(f"{path} {message}"), info.value
