"""TLS for both transports from TF Serving's `--ssl_config_file` (a text tensorflow.serving.SSLConfig).

TF Serving (model_servers/server.cc BuildServerCredentialsFromSSLConfigFile) reads the PEM
text of server_key, server_cert and custom_ca from the proto itself (not file paths) and builds
gRPC SSL server credentials: client_verify requests and requires a client certificate, verified
against custom_ca. Pipewright uses the same credentials for gRPC, and — a pipewright extension:
TF Serving's REST port is always plain HTTP — the same certificate for HTTPS on the REST port.

Differences, each refused at start with a message naming the file and field rather than
served with a surprise: client_verify without custom_ca (gRPC would fall back to the system's
public roots, i.e. accept a certificate any public CA signed); a key that does not match the
certificate; PEM that does not parse. Everything is checked with the ssl module before the
server binds a port (and before TensorFlow is imported), so a bad config stops the server at
start.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
import tempfile
from dataclasses import dataclass

from serving.errors import INVALID_ARGUMENT, ServingError

log = logging.getLogger(__name__)

_PEM_BEGIN = "-----BEGIN "


@dataclass(frozen=True)
class TlsConfig:
    """A checked SSLConfig: PEM bytes and whether clients must present a certificate."""

    path: str
    server_key: bytes
    server_cert: bytes
    custom_ca: bytes   # b"" when unset
    client_verify: bool

    def grpc_credentials(self):
        """grpc.ServerCredentials as server.cc builds them (force_client_auth = client_verify)."""
        import grpc

        return grpc.ssl_server_credentials(
            [(self.server_key, self.server_cert)], root_certificates=self.custom_ca or None,
            require_client_auth=self.client_verify)

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side SSLContext (TLS 1.2 or newer) for the REST port: the same key and
        certificate; with client_verify, CERT_REQUIRED against custom_ca."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_key_cert(context, self)
        if self.client_verify:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=self.custom_ca.decode("ascii"))
        return context


def _error(path: str, field: str, problem: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, f"--ssl_config_file {path}: {field}: {problem}")


def _pem(path: str, config, field: str, required: bool) -> bytes:
    text = getattr(config, field)
    if not text:
        if required:
            raise _error(path, field, "missing (it holds the PEM text itself, as in TF Serving)")
        return b""
    if _PEM_BEGIN not in text:
        hint = " (a file path? the field holds the PEM text itself, as in TF Serving)" \
            if os.path.exists(text.strip()) or "/" in text else ""
        raise _error(path, field, f"not PEM text: no '{_PEM_BEGIN}' line{hint}")
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise _error(path, field, "PEM text must be ASCII") from None


def _load_key_cert(context: ssl.SSLContext, config: TlsConfig) -> None:
    # SSLContext loads a key and certificate from files only: a private temporary directory,
    # removed before returning.
    with tempfile.TemporaryDirectory(prefix="pipewright-tls-") as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for name, data in ((cert_path, config.server_cert), (key_path, config.server_key)):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        def encrypted():  # instead of OpenSSL's prompt on the terminal, which would hang
            raise _error(config.path, "server_key", "encrypted private keys are not supported "
                         "(TF Serving's gRPC credentials take none either)")

        context.load_cert_chain(cert_path, key_path, password=encrypted)


def load_tls_config(path: str) -> TlsConfig:
    """Parse and check --ssl_config_file. Raises ServingError: the file unreadable (its errno's
    code, "<path>; <strerror>"), not a text SSLConfig (INVALID_ARGUMENT "Invalid protobuf
    file"), or INVALID_ARGUMENT naming the field: server_key / server_cert missing or not PEM,
    a key that does not match the certificate, custom_ca not PEM certificates, client_verify
    without custom_ca."""
    from serving import config as config_lib
    from serving.protos import SSLConfig

    proto = config_lib.parse_text_proto(path, SSLConfig())
    key = _pem(path, proto, "server_key", required=True)
    cert = _pem(path, proto, "server_cert", required=True)
    ca = _pem(path, proto, "custom_ca", required=False)
    if proto.client_verify and not ca:
        raise _error(path, "client_verify", "true needs custom_ca, the CA that signs the client "
                     "certificates (gRPC would otherwise accept any publicly signed certificate)")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_verify_locations(cadata=cert.decode("ascii"))
    except ssl.SSLError as e:
        raise _error(path, "server_cert", f"not a PEM certificate ({e})") from None
    if ca:
        try:
            probe.load_verify_locations(cadata=ca.decode("ascii"))
        except ssl.SSLError as e:
            raise _error(path, "custom_ca", f"not PEM certificates ({e})") from None
    config = TlsConfig(path, key, cert, ca, proto.client_verify)
    try:
        _load_key_cert(probe, config)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise _error(path, "server_key", "does not match server_cert") from None
        raise _error(path, "server_key", f"not a usable unencrypted PEM private key ({e})") from None
    warn_if_world_readable(path, "--ssl_config_file")
    return config


def warn_if_world_readable(path: str, flag: str) -> None:
    """A secret readable by every local user is logged (not refused: containers often mount
    secrets 0644)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & stat.S_IROTH:
        log.warning("%s %s is readable by every user (mode %o); it holds a secret: chmod 600",
                    flag, path, stat.S_IMODE(mode))
