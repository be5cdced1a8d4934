"""The retraining decision and the delayed-label files, in-process and fast (no TensorFlow
beyond the TFRecord label file): what alerts, what the cooldown suppresses, and how bad
label files are named. The whole flow on the real model and request logs is in
tests/test_traffic_monitor.py; in Airflow in tests/airflow/test_retraining_dag.py."""
from __future__ import annotations

import os

import pytest

from components.retraining_alert import alert_reasons, decide, event_extra
from components.traffic_labels import label_files, normalized, read_labels

HOUR = 3600.0


def report(skew=(), drift=(), accuracy=None, verdict=None) -> dict:
    """A distances.json as TrafficMonitor writes it (components/traffic_monitor.py judge)."""
    features = {}
    for name in ("body_mass_g", "island", "sex"):
        side = {"distance": 0.5, "psi": 0.4}
        features[name] = {"kind": "numeric", "measure": "Jensen-Shannon", "threshold": 0.1,
                          "psi_threshold": 0.25,
                          "skew": {**side, "flagged": name in skew},
                          "drift": {**side, "flagged": name in drift},
                          "flagged": name in skew or name in drift}
    flagged = sorted(set(skew) | set(drift))
    result = {"verdict": verdict or ("drift" if flagged else "no drift"), "flagged": flagged,
              "features": features, "model_name": "penguin", "served_version": 3,
              "served_model_id": 17, "window_start": 0.0, "window_end": HOUR,
              "live_quality": None}
    if accuracy is not None:
        result["live_quality"] = {"threshold": 0.8, "min_labels": 10, "labels": 50,
                                  "joined": 40, "unjoined": 10, "versions": {
                                      "3": {"labeled": 40, "correct": int(40 * accuracy),
                                            "accuracy": accuracy, "judged": True,
                                            "below_threshold": accuracy < 0.8}}}
    return result


def test_no_alert_when_every_threshold_holds_so_nothing_is_emitted():
    decision = decide(report(accuracy=0.9), None, now=0.0, cooldown_seconds=6 * HOUR,
                      can_emit=True)
    assert decision["alert"] is False and decision["emit"] is False
    assert decision["suppressed"] is False
    assert decision["reason"] == "no alert: verdict no drift, every threshold held"


def test_skew_drift_and_live_accuracy_each_alert_and_say_why():
    assert alert_reasons(report(skew=["island"])) == ["skew: island"]
    assert alert_reasons(report(drift=["sex", "body_mass_g"])) == ["drift: body_mass_g, sex"]
    assert alert_reasons(report(accuracy=0.5)) == [
        "live accuracy of version 3: 0.5000 < 0.8 (40 labels)"]
    decision = decide(report(skew=["island"], accuracy=0.5), None, now=100.0,
                      cooldown_seconds=6 * HOUR, can_emit=True)
    assert decision["emit"] and decision["cooldown_until"] == 100.0 + 6 * HOUR
    assert decision["reason"] == ("alert emitted: skew: island; live accuracy of version 3: "
                                  "0.5000 < 0.8 (40 labels)")


def test_an_alert_within_the_cooldown_is_suppressed_and_names_the_alert_that_started_one():
    last = {"id": 41, "report_id": 40, "decided_at": 1_000_000.0,
            "cooldown_until": 1_000_000.0 + 6 * HOUR}
    inside = decide(report(drift=["island"]), last, now=1_000_000.0 + 5 * HOUR,
                    cooldown_seconds=6 * HOUR, can_emit=True)
    assert inside["alert"] and not inside["emit"] and inside["suppressed"]
    assert "alert suppressed by the cooldown: alert #41 (report #40)" in inside["reason"]
    assert "from 1970-01-12T19:46:40Z" in inside["reason"]  # 1_000_000 s + 6 h
    after = decide(report(drift=["island"]), last, now=1_000_000.0 + 6 * HOUR,
                   cooldown_seconds=6 * HOUR, can_emit=True)
    assert after["emit"] and not after["suppressed"]
    # A cooldown of 0 never suppresses.
    assert decide(report(drift=["island"]), last, now=1_000_000.0, cooldown_seconds=0,
                  can_emit=True)["emit"]


def test_without_an_asset_an_alert_is_reported_not_emitted():
    decision = decide(report(drift=["island"]), None, now=0.0, cooldown_seconds=6 * HOUR,
                      can_emit=False)
    assert decision["alert"] and not decision["emit"] and not decision["suppressed"]
    assert "no asset to emit to" in decision["reason"]


def test_the_event_extra_carries_report_version_flagged_features_and_distances():
    extra = event_extra(report(skew=["island"], accuracy=0.5), 52, ["skew: island"])
    assert extra["report_id"] == 52 and extra["model_version"] == 3
    assert extra["flagged_features"] == ["island"] and extra["reasons"] == ["skew: island"]
    assert extra["distances"]["island"]["skew"] == {"distance": 0.5, "psi": 0.4,
                                                    "flagged": True}
    assert extra["live_quality"]["versions"]["3"]["accuracy"] == 0.5


# -- label files ------------------------------------------------------------------------------
def test_csv_labels_with_optional_instance_column(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("request_id,label,instance\nr1,Adelie,\nr2,Gentoo,1\nr3,1.0,0\n")
    assert read_labels([str(path)]) == {("r1", 0): "Adelie", ("r2", 1): "Gentoo",
                                        ("r3", 0): "1"}
    assert normalized(b"1") == normalized(1) == normalized("1.0") == "1"


@pytest.mark.parametrize("text, message", [
    ("id,label\nr1,Adelie\n", "lacks column(s) ['request_id']"),
    ("request_id,label\nr1,Adelie\n,Gentoo\n", "labels.csv row 3: empty request_id"),
    ("request_id,label\nr1,\n", "labels.csv row 2: empty label"),
    ("request_id,label,instance\nr1,Adelie,first\n", "row 2: instance 'first' is not an integer"),
    ("request_id,label\nr1,Adelie\nr1,Gentoo\n",
     "row 3: request 'r1' instance 0 has label 'Gentoo', but"),
])
def test_bad_label_file_is_refused_naming_file_and_row(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        read_labels([str(path)])
    assert message in str(error.value) and str(path) in str(error.value)


def test_tfrecord_labels_and_a_record_without_label_named(tmp_path):
    import tensorflow as tf

    good, bad = str(tmp_path / "labels.tfrecord.gz"), str(tmp_path / "bad.tfrecord")

    def example(**features):
        out = tf.train.Example()
        for name, value in features.items():
            if isinstance(value, int):
                out.features.feature[name].int64_list.value.append(value)
            else:
                out.features.feature[name].bytes_list.value.append(value.encode())
        return out.SerializeToString()

    with tf.io.TFRecordWriter(good, options="GZIP") as writer:
        writer.write(example(request_id="a", label="Chinstrap"))
        writer.write(example(request_id="b", label=2, instance=3))
    assert read_labels([good]) == {("a", 0): "Chinstrap", ("b", 3): "2"}
    with tf.io.TFRecordWriter(bad) as writer:
        writer.write(example(request_id="a"))
    with pytest.raises(ValueError, match=f"{bad} record 0: no feature 'label'"):
        read_labels([bad])


def test_a_label_directory_yields_the_files_that_arrived_in_the_window(tmp_path):
    for name, when in (("old.csv", 100.0), ("new.csv", 200.0), ("later.csv", 300.0),
                       ("notes.txt", 200.0), (".partial.csv", 200.0)):
        path = tmp_path / name
        path.write_text("request_id,label\n")
        os.utime(path, (when, when))
    assert label_files(str(tmp_path), 150.0, 300.0) == [str(tmp_path / "new.csv")]
    assert label_files(str(tmp_path / "old.csv"), 150.0, 300.0) == [str(tmp_path / "old.csv")]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        label_files(str(tmp_path / "nowhere"), 0, 1)
    with pytest.raises(ValueError, match="notes.txt must end in one of"):
        label_files(str(tmp_path / "notes.txt"), 0, 1)


def test_pipewright_monitor_before_the_first_push_says_there_is_nothing_to_monitor(
        tmp_path, capsys, monkeypatch):
    from pipelines.monitor_cli import main

    monkeypatch.delenv("PIPEWRIGHT_SERVING_DIR", raising=False)
    assert main(["penguin", "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"pipewright monitor: no model is served from "
                           f"{tmp_path}/serving/penguin: nothing to monitor")
