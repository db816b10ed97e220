"""The secure port: serving certificate, bearer-token authentication and the audit trail.

- `ServingCerts.generate(hosts=...)`: a self-signed CA and a serving certificate signed by it, with the
  API server's SANs (`kubernetes`, `kubernetes.default`, `kubernetes.default.svc`,
  `kubernetes.default.svc.cluster.local`, 10.96.0.1) plus every address it listens on; `ssl_context()` for
  the listeners, `ca_pem` for kubeconfigs and pods' `ca.crt`.
- `Authenticator`: a request's `Authorization: Bearer <token>` is either the admin token (user
  `kubernetes-admin`, group `system:masters`) or a service-account token a TokenRequest issued for the API
  server's audience, unexpired, whose service account (and bound object) still exist; anything else is
  `Unauthenticated` (401). `/version`, `/healthz`, `/readyz` and `/livez` may be asked anonymously.
- `request_info(method, path, query)`: the (verb, apiGroup, resource, subresource, namespace, name) the API
  server derives from a request, as RBAC sees it; `AuditRecord` is what `KubeSim.audit` keeps per request.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import ssl
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.kubesim import tokens

API_SERVER_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
API_SERVICE_IP = "10.96.0.1"
ADMIN_USER = "kubernetes-admin"
ANONYMOUS_PATHS = frozenset(("/version", "/healthz", "/readyz", "/livez"))
VALIDITY = datetime.timedelta(days=365)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, kw_only=True)
class ServingCerts:
    """A CA and the API server's serving certificate (PEM), ready for an `ssl.SSLContext`."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def generate(cls, *, hosts: Iterable[str]) -> ServingCerts:
        """Certificates valid for a year whose SANs are the API server's names and `hosts` (IPs or DNS names)."""
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubesim-ca")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in API_SERVER_NAMES]
        addresses = {API_SERVICE_IP, *hosts}
        for host in sorted(addresses):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(ca_pem=_pem(ca), cert_pem=_pem(cert), key_pem=key_pem)

    def ssl_context(self) -> ssl.SSLContext:
        """A server context with the serving certificate and chain (the key never stays on disk)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="kubesim-tls-") as folder:
            chain = os.path.join(folder, "tls.crt")
            key = os.path.join(folder, "tls.key")
            with open(chain, "wb") as out:
                out.write(self.cert_pem + self.ca_pem)
            with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as out:
                out.write(self.key_pem)
            context.load_cert_chain(chain, key)
        return context


@dataclass(frozen=True, kw_only=True)
class User:
    """Who made a request, as the API server's authenticators name them."""

    username: str
    groups: tuple[str, ...] = ()


class Unauthenticated(Exception):
    """The request carries no acceptable credentials: the API server answers 401 Unauthorized."""


# (kind, namespace, name) -> the current uid of that object, or None when it does not exist
Lookup = Callable[[str, str, str], str | None]


class Authenticator:
    """Bearer tokens: the admin token, or service-account tokens for the API server's audience."""

    def __init__(self, *, service_accounts: tokens.ServiceAccountTokens, lookup: Lookup) -> None:
        self.admin_token = secrets.token_urlsafe(32)
        self._service_accounts = service_accounts
        self._lookup = lookup

    def authenticate(self, headers: Mapping[str, str]) -> User:
        """The user behind the request's bearer token; `Unauthenticated` when there is none or it is invalid."""
        header = headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("no bearer token")
        if secrets.compare_digest(token, self.admin_token):
            return User(username=ADMIN_USER, groups=("system:masters", "system:authenticated"))
        try:
            claims, _ = self._service_accounts.review(token, audiences=(), lookup=self._lookup)
        except tokens.TokenInvalid as exc:
            raise Unauthenticated(str(exc)) from None
        namespace = claims["kubernetes.io"]["namespace"]
        groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")
        return User(username=str(claims["sub"]), groups=groups)


@dataclass(frozen=True, kw_only=True)
class RequestInfo:
    """What a resource request asks, in the API server's terms (verbs as RBAC names them)."""

    verb: str
    api_group: str
    resource: str
    subresource: str
    namespace: str
    name: str


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One authenticated resource request."""

    username: str
    verb: str
    api_group: str
    resource: str
    subresource: str
    namespace: str


_METHOD_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_NAMESPACE_SUBRESOURCES = ("status", "finalize")


def _list_or_watch(watch: str | None) -> str:
    """The verb of a collection GET: "watch" when `watch` is given with any value but "0" or "false" ("" included)."""
    return "list" if watch is None or watch.lower() in ("0", "false") else "watch"


def request_info(method: str, path: str, query: Mapping[str, str]) -> RequestInfo | None:
    """The resource request behind (method, path, query), or None for a non-resource request (discovery, ...)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return None
    verb = _METHOD_VERBS.get(method, method.lower())
    if rest[0] == "watch":
        verb, rest = "watch", rest[1:]
        if not rest:
            return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    if not name and verb == "get":
        verb = _list_or_watch(query.get("watch"))
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(
        verb=verb, api_group=group, resource=resource, subresource=subresource, namespace=namespace, name=name
    )
