"""Certificates, keys and kubeconfigs for the embedded cluster.

One CA signs the apiserver's serving certificate and every client
certificate (admin, scheduler, controller-manager, nodes). The
service-account key is RSA because every Kubernetes version accepts it for
both signing and verifying tokens. Files are written 0600 and never logged.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvtool import paths
from kvtool.errors import ConfigError

VALIDITY = dt.timedelta(days=3650)
SERVICE_IP = "10.96.0.1"


@dataclass(frozen=True)
class Identity:
    """A client certificate subject: the user name and groups RBAC sees."""

    file_stem: str
    common_name: str
    organizations: tuple[str, ...] = ()


ADMIN = Identity("admin", "kvtool-admin", ("system:masters",))
SCHEDULER = Identity("scheduler", "system:kube-scheduler")
CONTROLLER_MANAGER = Identity("controller-manager", "system:kube-controller-manager")
# Bound by Kubernetes' default ClusterRoleBinding system:node-proxier.
KUBE_PROXY = Identity("kube-proxy", "system:kube-proxy")
APISERVER_KUBELET_CLIENT = Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                    ("kubeadm:cluster-admins",))
# The cluster DNS (CoreDNS's kubernetes plugin); bound to kvtool.local.bootstrap.DNS_ROLE.
COREDNS = Identity("coredns", "system:kvtool-coredns")


def node_identity(node: str) -> Identity:
    return Identity(f"node-{node}", f"system:node:{node}", ("system:nodes",))


def _write(path: Path, data: bytes, private: bool) -> None:
    paths.write_atomic(path, data, 0o600 if private else 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class PKI:
    """The cluster's certificate authority and the files it signs, in one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def cert(self, stem: str) -> Path:
        return self.dir / f"{stem}.crt"

    def key(self, stem: str) -> Path:
        return self.dir / f"{stem}.key"

    def ensure(self, server_ips: tuple[str, ...] = ()) -> None:
        """Create whatever is missing; existing material is kept (and checked).

        server_ips: addresses the apiserver listens on besides loopback (the cluster bridge's);
        a serving certificate that lacks one is issued again.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if not self.ca_cert.exists() or not self.ca_key.exists():
            self._make_ca()
        self._check_ca()
        if not self.sa_key.exists() or not self.sa_pub.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write(self.sa_key, _key_pem(key), private=True)
            _write(self.sa_pub, key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), private=False)
        if not self.cert("apiserver").exists() or not self._serves(server_ips):
            self._issue("apiserver", "kube-apiserver", (), server=True,
                        dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                             "kubernetes.default.svc.cluster.local"),
                        ips=("127.0.0.1", SERVICE_IP, *server_ips))
        for ident in (ADMIN, SCHEDULER, CONTROLLER_MANAGER, KUBE_PROXY, APISERVER_KUBELET_CLIENT, COREDNS):
            self.ensure_client(ident)

    def _serves(self, ips: tuple[str, ...], stem: str = "apiserver") -> bool:
        try:
            cert = x509.load_pem_x509_certificate(self.cert(stem).read_bytes())
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, OSError, x509.ExtensionNotFound):
            return False
        have = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
        return set(ips) <= have

    def ensure_server(self, stem: str, cn: str, ip: str) -> tuple[Path, Path]:
        """A serving certificate for one address (issued again if it names another one)."""
        if not self.cert(stem).exists() or not self.key(stem).exists() or not self._serves((ip,), stem):
            self._issue(stem, cn, (), server=True, ips=(ip,))
        return self.cert(stem), self.key(stem)

    def ensure_client(self, ident: Identity) -> tuple[Path, Path]:
        if not self.cert(ident.file_stem).exists() or not self.key(ident.file_stem).exists():
            self._issue(ident.file_stem, ident.common_name, ident.organizations, server=False)
        return self.cert(ident.file_stem), self.key(ident.file_stem)

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvtool-ca")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write(self.ca_key, _key_pem(key), private=True)
        _write(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)

    def _check_ca(self) -> None:
        try:
            x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
            serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"the cluster CA in {self.dir} is unreadable ({exc})",
                              hint="run `kvtool cluster down --purge` to start afresh") from exc

    def _issue(self, stem: str, cn: str, orgs: tuple[str, ...], server: bool,
               dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> None:
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs)).issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if dns or ips:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        _write(self.key(stem), _key_pem(key), private=True)
        _write(self.cert(stem), cert.public_bytes(serialization.Encoding.PEM), private=False)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: PKI, user: str, *, cert: Path | None = None,
                     key: Path | None = None, token: str | None = None, namespace: str | None = None) -> Path:
    """A self-contained kubeconfig (certificates embedded), written 0600."""
    creds: dict[str, str] = {}
    if token is not None:
        creds["token"] = token
    else:
        assert cert is not None and key is not None
        creds["client-certificate-data"] = _b64(cert)
        creds["client-key-data"] = _b64(key)
    context: dict[str, str] = {"cluster": "kvtool", "user": user}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kvtool", "cluster": {"server": server,
                                                     "certificate-authority-data": _b64(pki.ca_cert)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "kvtool", "context": context}],
        "current-context": "kvtool",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, yaml.safe_dump(doc, sort_keys=False).encode(), private=True)
    return path
