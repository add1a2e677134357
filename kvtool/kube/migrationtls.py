"""TLS between handlers for live migration: one CA and one handler certificate, kept in a Secret.

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


def make_material() -> dict[str, str]:
    """A fresh CA and a handler certificate it signs (server and client use), as PEM strings."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvtool-migration-ca")])
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
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PEER_NAME)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(PEER_NAME)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem(c: x509.Certificate) -> str:
        return c.public_bytes(serialization.Encoding.PEM).decode()

    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {"ca.crt": pem(ca), "tls.crt": pem(cert), "tls.key": key_pem}


def ensure(res: Resources, namespace: str, field_manager: str) -> None:
    """Create the Secret unless it exists (a second controller racing us loses with 409: fine)."""
    if res.get(SECRET, namespace, SECRET_NAME) is not None:
        return
    body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SECRET_NAME, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "kvtool"}},
            "stringData": make_material()}
    try:
        res.create(SECRET, body, field_manager)
    except KubeError as exc:
        if exc.status != 409:
            raise


def material(secret: dict[str, Any]) -> dict[str, str]:
    data = secret.get("data") or {}
    missing = [k for k in ("ca.crt", "tls.crt", "tls.key") if k not in data]
    if missing:
        raise ValueError(f"Secret {SECRET_NAME} lacks {', '.join(missing)}")
    return {k: base64.b64decode(data[k]).decode() for k in ("ca.crt", "tls.crt", "tls.key")}


def contexts(pems: dict[str, str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: TLS 1.3, each end presents the handler certificate and verifies the other's."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with tempfile.TemporaryDirectory(prefix="kvtool-tls-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_text(pems["tls.crt"])
        key.touch(mode=0o600)
        key.write_text(pems["tls.key"])
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.load_cert_chain(cert, key)
            ctx.load_verify_locations(cadata=pems["ca.crt"])
            ctx.verify_mode = ssl.CERT_REQUIRED
    client.check_hostname = True
    return server, client
