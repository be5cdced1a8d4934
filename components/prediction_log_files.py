"""The model server's request-log layout, for components that write PredictionLogs in it
(the BulkInferrer), so the TrafficMonitor's reader (components/traffic_logs.py) reads batch
predictions exactly as it reads the server's request log. Components never import serving/;
this mirrors serving/log_files.py (names) and serving/protos.py (RequestLogFields), and
tests/test_bulk_inferrer.py checks that the two agree.

Layout: `<log dir>/<model dir name>/<version>/<prefix>-<UTC %Y%m%dT%H%M%S><microseconds>Z-
<seq, 6+ digits>.tfrecord.gz`, gzip TFRecord of serialized tensorflow.serving.PredictionLog.
"""
from __future__ import annotations

import time
import urllib.parse

SUFFIX = ".tfrecord.gz"
# pipewright's fields on tensorflow.serving.LogMetadata (serving/protos.py RequestLogFields):
# field numbers TF Serving does not use, kept by TF Serving's protos as unknown fields.
REQUEST_ID_FIELD = 1000
TRANSPORT_FIELD = 1001


def model_dir_name(name: str) -> str:
    """A model name as one safe path component, as serving.log_files.model_dir_name ("demo"
    stays "demo"; "/" and a leading "." are percent-quoted)."""
    quoted = urllib.parse.quote(name, safe="") or "%00"
    return "%2E" + quoted[1:] if quoted.startswith(".") else quoted


def file_stem(prefix: str, opened: float) -> str:
    """`<prefix>-<UTC time with microseconds>Z`: a log file name before `-<seq><SUFFIX>`."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(opened)) + "%06dZ" % int(opened % 1 * 1e6)
    return f"{prefix}-{stamp}"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string_field(number: int, text: str) -> bytes:
    data = text.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def request_log_fields(request_id: str, transport: str) -> bytes:
    """RequestLogFields(request_id, transport) wire bytes, to MergeFromString into a
    PredictionLog's log_metadata (where serving.request_log.request_log_fields reads them)."""
    return _string_field(REQUEST_ID_FIELD, request_id) + _string_field(TRANSPORT_FIELD, transport)
