"""Admission: bearer-token authentication and per-client rate limits, before anything else.

One object, owned by the DataPlane (serving/data_plane.py DataPlane.admit) and called by both
transports first thing for every request — before a body is parsed, a model looked up or a
request metric counted — so an unauthenticated or throttled client costs about 3 µs (a digest
and a bucket) and learns nothing about the models. TF Serving has neither feature (it expects
a proxy in front); the codes are the canonical ones it would map: UNAUTHENTICATED (HTTP 401)
and RESOURCE_EXHAUSTED (HTTP 429).

Endpoints: API (inference, metadata, config reloads), HEALTH (grpc.health.v1.Health,
ModelService/GetModelStatus and REST GET /v1/models/<name>[/versions/<v>|/labels/<l>], the
readiness probes TF Serving documents), METRICS (the Prometheus path) and PREFLIGHT (REST CORS
OPTIONS: browsers send it without credentials, and it answers nothing). Exempt endpoints
(--auth_exempt, default "health") skip both checks: a probe must never be throttled into a
restart.

Tokens: --auth_token_file, one per line, '#' starts a comment line. Compared in constant
time (SHA-256 digests, hmac.compare_digest against every token, so neither which token matched
nor a prefix leaks). Tokens are never logged, nor kept in clear: the server holds their
digests. With --auth_token_file_poll_wait_seconds the file is re-read when it changes (token
rotation without a restart); a bad new file is logged and the last good tokens stay.

Rate limits: a token bucket per client (RFC 6585 429 semantics; the classic bucket of
--rate_limit_burst tokens refilled at --rate_limit_requests_per_second). The client is the
token (its digest) when authentication is on, else the peer's IP address (no port; proxies'
X-Forwarded-For is not trusted). At most --rate_limit_max_clients buckets are kept; the least
recently seen client's bucket is dropped first (it restarts full: a client idle long enough to
be evicted would have refilled anyway unless the table is flooded).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from typing import Callable

from serving import errors
from serving.errors import INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAUTHENTICATED, ServingError

log = logging.getLogger(__name__)

API, HEALTH, METRICS, PREFLIGHT = "api", "health", "metrics", "preflight"
EXEMPTIBLE = (HEALTH, METRICS)
REALM = "pipewright-serving"
MIN_TOKEN_CHARS = 16
# RFC 6750 b64token.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *")


class AdmissionDenied(ServingError):
    """UNAUTHENTICATED or RESOURCE_EXHAUSTED, with what the transports send besides the
    status: challenge (the WWW-Authenticate value) and retry_after (whole seconds)."""

    def __init__(self, code: int, message: str, *, reason: str, challenge: str | None = None,
                 retry_after: int | None = None):
        super().__init__(code, message)
        self.reason = reason  # "unauthenticated" | "rate_limited" (metrics label)
        self.challenge = challenge
        self.retry_after = retry_after


def read_token_file(path: str) -> list[str]:
    """The tokens of --auth_token_file in file order. Raises ServingError naming the file:
    unreadable (the errno's code), no tokens, or (INVALID_ARGUMENT, naming the line, never
    the token) a line that is not an RFC 6750 token or is shorter than 16 characters."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise errors.io_error(f"--auth_token_file {path}", e.errno) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ServingError(INVALID_ARGUMENT, f"--auth_token_file {path}: not ASCII text") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not _TOKEN.fullmatch(line):
            raise ServingError(INVALID_ARGUMENT, f"--auth_token_file {path}:{number}: not a bearer "
                               "token (RFC 6750: letters, digits, -._~+/ then any '='; one per line)")
        if len(line) < MIN_TOKEN_CHARS:
            raise ServingError(INVALID_ARGUMENT, f"--auth_token_file {path}:{number}: token shorter "
                               f"than {MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`)")
        tokens.append(line)
    if not tokens:
        raise ServingError(INVALID_ARGUMENT, f"--auth_token_file {path}: no tokens (one per line; "
                           "'#' starts a comment)")
    return tokens


def parse_exempt(text: str) -> frozenset[str]:
    """--auth_exempt: comma separated subset of health, metrics ("" exempts nothing)."""
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(EXEMPTIBLE))
    if unknown:
        raise ServingError(INVALID_ARGUMENT, f"--auth_exempt: unknown endpoint {unknown[0]!r}; "
                           f"known: {', '.join(EXEMPTIBLE)}")
    return names


class RateLimiter:
    """Token buckets per client key: `burst` requests at once, refilled at `rate` per second.
    Thread-safe (REST and gRPC run on different event loops). clock: seconds, monotonic."""

    def __init__(self, rate: float, burst: int, max_clients: int,
                 clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate > 0, burst >= 1 and max_clients >= 1 are required")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, stamp]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float:
        """Take one request from key's bucket: 0.0 when admitted, else the seconds until one
        is available (the request is not admitted and takes nothing)."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = [float(self.burst), now]
                if len(self._buckets) > self.max_clients:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
                bucket[1] = now
            if bucket[0] >= 1.0:
                bucket[0] -= 1.0
                return 0.0
            return (1.0 - bucket[0]) / self.rate


class Admission:
    """Decides, per request, before anything else: admitted, or AdmissionDenied.

    tokens: accepted bearer tokens (empty: no authentication). exempt: endpoints that skip both
    checks. rate / burst / max_clients: per-client rate limit (rate 0: none; burst 0: the rate
    rounded up, at least 1).
    """

    def __init__(self, tokens=(), *, exempt=frozenset({HEALTH}), rate: float = 0.0,
                 burst: int = 0, max_clients: int = 10000,
                 clock: Callable[[], float] = time.monotonic):
        self._digests = _digests(tokens)
        self.exempt = frozenset(exempt)
        self.limiter = None
        if rate > 0:
            self.limiter = RateLimiter(rate, burst or max(1, math.ceil(rate)), max_clients, clock)

    def set_tokens(self, tokens) -> None:
        """Replace the accepted tokens (rotation; a client keeps its bucket while its token
        stays). Turning authentication on or off this way is refused:
        ValueError."""
        digests = _digests(tokens)
        if bool(digests) != bool(self._digests):
            raise ValueError("tokens can be rotated, not turned on or off, while serving")
        self._digests = digests  # one assignment: admit() sees the old list or the new one

    @property
    def token_count(self) -> int:
        return len(self._digests)

    @property
    def authenticating(self) -> bool:
        return bool(self._digests)

    @property
    def enabled(self) -> bool:
        return self.authenticating or self.limiter is not None

    def admit(self, authorization: str | None, peer: str, endpoint: str = API) -> None:
        """authorization: the Authorization header / metadata value (None when absent); peer:
        the client's IP address. Raises AdmissionDenied: UNAUTHENTICATED without a valid
        bearer token, RESOURCE_EXHAUSTED past the client's rate."""
        if endpoint in self.exempt:
            return
        client = f"peer:{peer}"
        if self._digests and endpoint != PREFLIGHT:
            client = "token:" + self._match(authorization).hex()
        if self.limiter is not None:
            wait = self.limiter.acquire(client)
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                raise AdmissionDenied(
                    RESOURCE_EXHAUSTED,
                    f"Rate limit exceeded: {self.limiter.rate:g} requests per second per client "
                    f"(burst {self.limiter.burst}); retry after {retry_after} s",
                    reason="rate_limited", retry_after=retry_after)

    def _match(self, authorization: str | None) -> bytes:
        """The matching token's digest; raises AdmissionDenied UNAUTHENTICATED."""
        match = _BEARER.fullmatch(authorization) if authorization else None
        if match is None:
            raise AdmissionDenied(
                UNAUTHENTICATED, "Missing bearer token: send `Authorization: Bearer <token>` "
                "(REST header; gRPC metadata key `authorization`)",
                reason="unauthenticated", challenge=f'Bearer realm="{REALM}"')
        given = hashlib.sha256(match.group(1).encode("utf-8", "surrogateescape")).digest()
        found = None
        for digest in self._digests:  # every token, whatever matches
            if hmac.compare_digest(given, digest):
                found = digest
        if found is None:
            raise AdmissionDenied(
                UNAUTHENTICATED, "Invalid bearer token", reason="unauthenticated",
                challenge=f'Bearer realm="{REALM}", error="invalid_token"')
        return found


def file_stamp(path: str):
    """(mtime ns, size, inode) of path, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class TokenFileWatcher:
    """Re-reads --auth_token_file into an Admission when the file changes (modification time,
    size or inode: an atomic replace counts). A file that fails read_token_file is logged
    once per change, naming the file and line, and the last good tokens stay in force."""

    def __init__(self, path: str, admission: Admission, stamp=None):
        """stamp: file_stamp(path) taken before the admission's tokens were read (so a change
        in between is not missed); now when None."""
        self.path = path
        self.admission = admission
        self._stamp = file_stamp(path) if stamp is None else stamp

    def poll(self) -> bool:
        """True when new tokens were loaded."""
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            tokens = read_token_file(self.path)
        except ServingError as e:
            log.error("Keeping the last good bearer tokens: %s", e.message)
            return False
        self.admission.set_tokens(tokens)
        log.info("Reloaded %d bearer tokens from --auth_token_file %s", len(tokens), self.path)
        return True


def _digests(tokens) -> list[bytes]:
    return [hashlib.sha256(t.encode("ascii")).digest() for t in tokens]


def from_options(options) -> Admission:
    """The Admission the flags describe (ServerOptions auth_token_file, auth_exempt,
    rate_limit_*); reads the token file. Raises ServingError naming the flag or file."""
    from serving.tls import warn_if_world_readable

    tokens = []
    if options.auth_token_file:
        tokens = read_token_file(options.auth_token_file)
        warn_if_world_readable(options.auth_token_file, "--auth_token_file")
    return Admission(tokens, exempt=parse_exempt(options.auth_exempt),
                     rate=options.rate_limit_requests_per_second,
                     burst=options.rate_limit_burst, max_clients=options.rate_limit_max_clients)


def describe(admission: Admission) -> str:
    """One log line of what is on (no secrets)."""
    parts = [f"bearer tokens: {admission.token_count}" if admission.authenticating
             else "no authentication"]
    if admission.limiter is not None:
        parts.append(f"rate limit {admission.limiter.rate:g}/s burst {admission.limiter.burst} "
                     f"per client (at most {admission.limiter.max_clients} clients tracked)")
    else:
        parts.append("no rate limit")
    parts.append(f"exempt: {', '.join(sorted(admission.exempt)) or 'nothing'}")
    return "; ".join(parts)

