"""TLS between handlers for live migration (and for the eviction webhook): a CA and a certificate, in a Secret.

KubeVirt's virt-handlers prove themselves to each other with certificates of the cluster's own CA
before any guest memory crosses the network; kvtool's do the same. The controller makes the Secret
once (`ensure`); each handler reads it and builds both ends of a mutually authenticated connection.
The key never leaves the Secret and the handlers' memory.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvtool.api.types import SECRET
from kvtool.kube.resources import KubeError, Resources

SECRET_NAME = "kvtool-migration-tls"
PEER_NAME = "kvtool-handler"  # the name both ends check (handlers have no stable DNS names of their own)
VALIDITY = dt.timedelta(days=3650)


def make_material(ca_cn: str = "kvtool-migration-ca", cn: str = PEER_NAME,
                  dns: tuple[str, ...] = (PEER_NAME,)) -> dict[str, str]:
    """A fresh CA and a certificate it signs (server and client use) for `dns`, as PEM strings."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_cn)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + VALIDITY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem(c: x509.Certificate) -> str:
        return c.public_bytes(serialization.Encoding.PEM).decode()

    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {"ca.crt": pem(ca), "tls.crt": pem(cert), "tls.key": key_pem}


def ensure(res: Resources, namespace: str, field_manager: str, name: str = SECRET_NAME,
           make: Callable[[], dict[str, str]] = make_material) -> dict[str, str]:
    """The Secret's PEMs, creating it first unless it exists (a second controller racing us loses with 409 and
    reads the winner's)."""
    secret = res.get(SECRET, namespace, name)
    if secret is None:
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/managed-by": "kvtool"}},
                "stringData": make()}
        try:
            res.create(SECRET, body, field_manager)
        except KubeError as exc:
            if exc.status != 409:
                raise
        secret = res.get(SECRET, namespace, name)
        if secret is None:
            raise KubeError(f"Secret {namespace}/{name} vanished right after it was made", 404)
    return material(secret)


def material(secret: dict[str, Any]) -> dict[str, str]:
    data = secret.get("data") or {}
    missing = [k for k in ("ca.crt", "tls.crt", "tls.key") if k not in data]
    if missing:
        raise ValueError(f"Secret {secret['metadata']['name']} lacks {', '.join(missing)}")
    return {k: base64.b64decode(data[k]).decode() for k in ("ca.crt", "tls.crt", "tls.key")}


def _load_chain(pems: dict[str, str], *contexts: ssl.SSLContext) -> None:
    """The certificate and key into each context: ssl reads them only from files, which live a moment, 0600."""
    with tempfile.TemporaryDirectory(prefix="kvtool-tls-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_text(pems["tls.crt"])
        key.touch(mode=0o600)
        key.write_text(pems["tls.key"])
        for ctx in contexts:
            ctx.load_cert_chain(cert, key)


def server_context(pems: dict[str, str]) -> ssl.SSLContext:
    """A plain TLS server context (no client certificates): the eviction webhook's, which the API server calls."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(pems, ctx)
    return ctx


def contexts(pems: dict[str, str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: TLS 1.3, each end presents the handler certificate and verifies the other's."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _load_chain(pems, server, client)
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cadata=pems["ca.crt"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    client.check_hostname = True
    return server, client
