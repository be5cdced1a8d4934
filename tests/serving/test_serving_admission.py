"""serving/admission.py alone, in process, on a fake clock: tokens, exemptions, buckets, the
bounded client table, the token file, and the flags that build it. No sockets, no TensorFlow."""

from __future__ import annotations

import pytest

from serving import admission as adm
from serving import config as config_lib
from serving.admission import API, HEALTH, METRICS, PREFLIGHT, Admission, AdmissionDenied
from serving.errors import INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAUTHENTICATED, ServingError

ALICE, BOB = "alice-" + "a" * 20, "bob-" + "b" * 20


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def denied(admission, authorization, peer="10.0.0.1", endpoint=API) -> AdmissionDenied:
    with pytest.raises(AdmissionDenied) as info:
        admission.admit(authorization, peer, endpoint)
    return info.value


def test_tokens_missing_wrong_and_right():
    door = Admission([ALICE, BOB])
    missing = denied(door, None)
    assert (missing.code, missing.http_status, missing.reason) == (UNAUTHENTICATED, 401, "unauthenticated")
    assert missing.challenge == 'Bearer realm="pipewright-serving"'
    for header in ("Bearer", "Basic " + ALICE, ALICE, f"Bearer {ALICE}x", f"Bearer {ALICE[:-1]}",
                   f"Bearer {ALICE} {BOB}"):
        error = denied(door, header)
        assert error.code == UNAUTHENTICATED, header
    wrong = denied(door, "Bearer nope")
    assert wrong.challenge.endswith('error="invalid_token"') and wrong.message == "Invalid bearer token"
    for header in (f"Bearer {ALICE}", f"bearer {BOB}", f"BEARER  {ALICE} "):
        door.admit(header, "10.0.0.1")  # no exception


def test_exemptions_default_to_health():
    door = Admission([ALICE])
    door.admit(None, "10.0.0.1", HEALTH)
    door.admit(None, "10.0.0.1", PREFLIGHT)  # browsers send no credentials on preflight
    assert denied(door, None, endpoint=METRICS).code == UNAUTHENTICATED
    assert denied(door, None, endpoint=API).code == UNAUTHENTICATED
    both = Admission([ALICE], exempt=adm.parse_exempt("health, metrics"))
    both.admit(None, "10.0.0.1", METRICS)
    none = Admission([ALICE], exempt=adm.parse_exempt(""))
    assert denied(none, None, endpoint=HEALTH).code == UNAUTHENTICATED
    with pytest.raises(ServingError, match="--auth_exempt: unknown endpoint 'predict'"):
        adm.parse_exempt("health,predict")


def test_bucket_burst_refill_and_retry_after():
    clock = Clock()
    door = Admission(rate=2, burst=3, clock=clock)
    for _ in range(3):
        door.admit(None, "10.0.0.1")
    over = denied(door, None)
    assert (over.code, over.http_status, over.reason) == (RESOURCE_EXHAUSTED, 429, "rate_limited")
    assert over.retry_after == 1 and "2 requests per second per client (burst 3)" in over.message
    door.admit(None, "10.0.0.2")  # another client is not affected
    clock.now += 0.25  # half a request refilled: still no
    assert denied(door, None).retry_after == 1
    clock.now += 0.25
    door.admit(None, "10.0.0.1")
    assert denied(door, None).code == RESOURCE_EXHAUSTED
    clock.now += 3600  # refills up to the burst, never beyond
    for _ in range(3):
        door.admit(None, "10.0.0.1")
    assert denied(door, None).code == RESOURCE_EXHAUSTED


def test_slow_rate_retry_after_rounds_up_and_burst_defaults_to_rate():
    clock = Clock()
    slow = Admission(rate=0.1, clock=clock)
    assert slow.limiter.burst == 1
    slow.admit(None, "p")
    assert denied(slow, None, "p").retry_after == 10
    assert Admission(rate=2.5).limiter.burst == 3


def test_client_is_the_token_when_authenticating():
    clock = Clock()
    door = Admission([ALICE, BOB], rate=1, burst=1, clock=clock)
    door.admit(f"Bearer {ALICE}", "10.0.0.1")
    # Same token from another address: the same client.
    assert denied(door, f"Bearer {ALICE}", "10.0.0.2").code == RESOURCE_EXHAUSTED
    door.admit(f"Bearer {BOB}", "10.0.0.1")  # same address, other token: another client
    # Authentication comes first: a wrong token is 401, never 429, and takes no bucket.
    assert denied(door, "Bearer wrong-token-0123456789", "10.0.0.1").code == UNAUTHENTICATED
    assert len(door.limiter) == 2


def test_client_table_is_bounded_least_recently_seen_first():
    clock = Clock()
    door = Admission(rate=1, burst=1, max_clients=3, clock=clock)
    for peer in ("a", "b", "c"):
        door.admit(None, peer)
    assert denied(door, None, "a").code == RESOURCE_EXHAUSTED  # a is now the most recent
    for i in range(1000):
        door.admit(None, f"flood-{i}")
        assert len(door.limiter) <= 3
    assert len(door.limiter) == 3
    door.admit(None, "a")  # evicted: starts again with a full bucket


def test_exempt_endpoints_are_not_rate_limited():
    door = Admission(rate=1, burst=1, clock=Clock())
    for _ in range(10):
        door.admit(None, "p", HEALTH)
    door.admit(None, "p", API)
    assert denied(door, None, "p", API).code == RESOURCE_EXHAUSTED


def test_token_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# clients\n\n  {ALICE}  \n# {BOB}\n{BOB}\n")
    assert adm.read_token_file(str(path)) == [ALICE, BOB]

    cases = {"": f"--auth_token_file {path}: no tokens",
             "# only a comment\n\n": f"--auth_token_file {path}: no tokens",
             f"{ALICE}\nshort-secret\n": f"--auth_token_file {path}:2: token shorter than 16",
             f"# x\n{ALICE} {BOB}\n": f"--auth_token_file {path}:2: not a bearer token"}
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ServingError) as info:
            adm.read_token_file(str(path))
        assert info.value.code == INVALID_ARGUMENT and info.value.message.startswith(message)
        assert "short-secret" not in info.value.message and BOB not in info.value.message
    with pytest.raises(ServingError) as info:
        adm.read_token_file(str(tmp_path / "absent"))
    assert info.value.code == NOT_FOUND
    assert info.value.message == f"--auth_token_file {tmp_path / 'absent'}; No such file or directory"


def test_flags_build_the_admission(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(ALICE + "\n")
    options = config_lib.parse_args([
        "--model_base_path=/m", f"--auth_token_file={tokens}", "--auth_exempt=health,metrics",
        "--rate_limit_requests_per_second=2.5", "--rate_limit_burst=7",
        "--rate_limit_max_clients=50", "--ssl_config_file=/s/ssl.config"])
    assert (options.auth_token_file, options.auth_exempt, options.ssl_config_file) == (
        str(tokens), "health,metrics", "/s/ssl.config")
    config_lib.validate_options(options)
    door = adm.from_options(options)
    assert door.authenticating and door.exempt == {HEALTH, METRICS}
    assert (door.limiter.rate, door.limiter.burst, door.limiter.max_clients) == (2.5, 7, 50)
    assert adm.describe(door) == ("bearer tokens: 1; rate limit 2.5/s burst 7 per client (at "
                                  "most 50 clients tracked); exempt: health, metrics")
    assert ALICE not in adm.describe(door)

    defaults = config_lib.parse_args(["--model_base_path=/m"])
    assert not adm.from_options(defaults).enabled
    assert defaults.auth_exempt == "health" and defaults.rest_host == "127.0.0.1"
    for flags, message in ((["--rate_limit_burst=3"], "--rate_limit_burst is set without"),
                           (["--rate_limit_requests_per_second=-1"], "must be >= 0"),
                           (["--rate_limit_max_clients=0"], "must be positive"),
                           (["--auth_token_file_poll_wait_seconds=5"],
                            "--auth_token_file_poll_wait_seconds is set without --auth_token_file")):
        with pytest.raises(ServingError, match=message):
            config_lib.validate_options(config_lib.parse_args(["--model_base_path=/m", *flags]))


def test_token_rotation_keeps_the_last_good_tokens(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text(ALICE + "\n")
    stamp = adm.file_stamp(str(path))
    door = Admission(adm.read_token_file(str(path)), rate=1, burst=1, clock=Clock())
    watcher = adm.TokenFileWatcher(str(path), door, stamp)
    assert not watcher.poll()  # unchanged
    door.admit(f"Bearer {ALICE}", "p")

    def replace(text):
        temp = tmp_path / "tokens.new"
        temp.write_text(text)
        temp.replace(path)

    replace(f"{ALICE}\n{BOB}\n")
    assert watcher.poll() and door.token_count == 2
    # Alice's bucket survives the rotation (she stays): still empty.
    assert denied(door, f"Bearer {ALICE}").code == RESOURCE_EXHAUSTED
    door.admit(f"Bearer {BOB}", "p")
    replace(f"{BOB}\n")
    assert watcher.poll()
    assert denied(door, f"Bearer {ALICE}").code == UNAUTHENTICATED  # revoked

    caplog.set_level("ERROR", logger="serving.admission")
    replace("# all revoked by mistake\n")
    assert not watcher.poll()
    assert f"Keeping the last good bearer tokens: --auth_token_file {path}: no tokens" in caplog.text
    assert door.token_count == 1 and denied(door, f"Bearer {BOB}").code == RESOURCE_EXHAUSTED
    assert not watcher.poll()  # logged once per change, not once per poll
    assert caplog.text.count("Keeping the last good") == 1
    path.unlink()
    assert not watcher.poll() and door.token_count == 1
    with pytest.raises(ValueError):
        door.set_tokens([])
