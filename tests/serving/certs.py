"""A throwaway PKI for the TLS tests, generated at test time with `cryptography`: one CA, a
server certificate for 127.0.0.1 / localhost, and client certificates (one signed by the CA,
one by a stranger CA). PEM bytes only; nothing touches the network."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyCert:
    key: bytes   # PEM, PKCS#8, unencrypted
    cert: bytes  # PEM


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def make_ca(common_name: str = "pipewright test CA") -> tuple[object, KeyCert]:
    key = _key()
    cert = (_builder(common_name, _name(common_name), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return (key, cert), KeyCert(_pem_key(key), cert.public_bytes(serialization.Encoding.PEM))


def issue(ca, common_name: str, *, server: bool) -> KeyCert:
    ca_key, ca_cert = ca
    key = _key()
    builder = _builder(common_name, ca_cert.subject, key.public_key()).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyCert(_pem_key(key), cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Pki:
    ca: KeyCert
    server: KeyCert
    client: KeyCert           # signed by ca
    stranger_client: KeyCert  # signed by another CA


def make_pki() -> Pki:
    ca, ca_pem = make_ca()
    stranger, _ = make_ca("stranger CA")
    return Pki(ca=ca_pem, server=issue(ca, "localhost", server=True),
               client=issue(ca, "client", server=False),
               stranger_client=issue(stranger, "stranger", server=False))


def ssl_config_text(pki: Pki, *, client_verify: bool) -> str:
    """A tensorflow.serving.SSLConfig text proto, PEM inline as TF Serving reads it."""
    def quoted(pem: bytes) -> str:
        return '"' + pem.decode().replace("\n", "\\n") + '"'
    return (f"server_key: {quoted(pki.server.key)}\nserver_cert: {quoted(pki.server.cert)}\n"
            f"custom_ca: {quoted(pki.ca.cert)}\nclient_verify: {'true' if client_verify else 'false'}\n")
