"""CA key material in Kubernetes Secrets (Kubernetes mode), written against a tiny `SecretClient`.

Precedence, as in Istio: the plug-in Secret `cacerts` (operator-supplied intermediate) when it
exists, else the self-signed Secret `istio-ca-secret`, created on first start. Several replicas may
start at once: the first `create` wins and the others load what it stored. A root rotation is an
optimistic update (resourceVersion); a replica that loses the race adopts the stored root.

Seam: `controlplane/kube` provides the real `SecretClient` (kubernetes-asyncio) and passes a
`KubeSecretKeyStore` to the CA wiring in Kubernetes mode; tests use an in-memory fake.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from certs.authority import ORGANIZATION, ROOT_LIFETIME, Authority, KeyMaterialError, now_utc, self_signed_root
from certs.keystore import check_key_matches, plugin_authority
from certs.pem import cert_pem, generate_key, key_pem, load_certificates, load_key

log = logging.getLogger(__name__)

SELF_SIGNED_SECRET = "istio-ca-secret"
PLUGIN_SECRET = "cacerts"
SECRET_TYPE = "istio.io/ca-root"


@dataclass(frozen=True, kw_only=True)
class Secret:
    data: Mapping[str, bytes] = field(default_factory=dict)
    resource_version: str = ""


class SecretExists(Exception):
    """`create` found a Secret of that name already (another replica created it first)."""


class SecretConflict(Exception):
    """`replace` was given a stale resourceVersion."""


class SecretClient(Protocol):
    """Get/create/replace one Secret. Other API errors propagate unchanged."""

    async def get(self, *, namespace: str, name: str) -> Secret | None:
        """The Secret, or None when it does not exist."""
        ...

    async def create(self, *, namespace: str, name: str, data: Mapping[str, bytes], type: str) -> Secret:
        """Create it; raises SecretExists when the name is taken."""
        ...

    async def replace(self, *, namespace: str, name: str, data: Mapping[str, bytes], resource_version: str) -> Secret:
        """Replace its data if `resource_version` is current; raises SecretConflict otherwise."""
        ...


class KubeSecretKeyStore:
    """Satisfies `certs.keystore.KeyStore` with Secrets in the control plane's namespace."""

    def __init__(
        self,
        client: SecretClient,
        *,
        namespace: str,
        org: str = ORGANIZATION,
        algorithm: str = "ecdsa-p256",
        lifetime: dt.timedelta | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.org = org
        self.algorithm = algorithm
        self.lifetime = lifetime
        self._resource_version = ""

    def _source(self, name: str) -> str:
        return f"Secret {self.namespace}/{name}"

    async def load_or_create(self) -> Authority:
        plugin = await self.client.get(namespace=self.namespace, name=PLUGIN_SECRET)
        if plugin is not None:
            return plugin_authority(plugin.data, source=self._source(PLUGIN_SECRET))
        existing = await self.client.get(namespace=self.namespace, name=SELF_SIGNED_SECRET)
        if existing is not None:
            return self._adopt(existing)
        key = generate_key(self.algorithm)
        cert = self_signed_root(key, org=self.org, lifetime=self.lifetime or ROOT_LIFETIME)
        authority = Authority(key=key, cert=cert, roots=(cert,))
        try:
            stored = await self.client.create(
                namespace=self.namespace, name=SELF_SIGNED_SECRET, data=_secret_data(authority), type=SECRET_TYPE
            )
        except SecretExists:
            log.info("another replica created %s first; loading it", SELF_SIGNED_SECRET)
            raced = await self.client.get(namespace=self.namespace, name=SELF_SIGNED_SECRET)
            if raced is None:
                raise KeyMaterialError(
                    f"{self._source(SELF_SIGNED_SECRET)} was created and deleted concurrently"
                ) from None
            return self._adopt(raced)
        self._resource_version = stored.resource_version
        log.info(
            "created self-signed root CA",
            extra={"secret": SELF_SIGNED_SECRET, "not_after": cert.not_valid_after_utc.isoformat()},
        )
        return authority

    async def save_rotated(self, *, previous: Authority, rotated: Authority) -> Authority:
        try:
            stored = await self.client.replace(
                namespace=self.namespace,
                name=SELF_SIGNED_SECRET,
                data=_secret_data(rotated),
                resource_version=self._resource_version,
            )
        except SecretConflict:
            current = await self.client.get(namespace=self.namespace, name=SELF_SIGNED_SECRET)
            if current is None:
                raise KeyMaterialError(f"{self._source(SELF_SIGNED_SECRET)} disappeared during root rotation") from None
            log.info("another replica rotated the root first; adopting it")
            return self._adopt(current)
        self._resource_version = stored.resource_version
        return rotated

    def _adopt(self, secret: Secret) -> Authority:
        source = self._source(SELF_SIGNED_SECRET)
        data = secret.data
        for name in ("ca-cert.pem", "ca-key.pem"):
            if not data.get(name):
                raise KeyMaterialError(f"{source}: key {name} is missing or empty")
        try:
            key = load_key(data["ca-key.pem"])
        except ValueError as exc:
            raise KeyMaterialError(f"{source}: ca-key.pem: cannot parse the CA key: {exc}") from None
        try:
            cert = load_certificates(data["ca-cert.pem"], source=f"{source}: ca-cert.pem")[0]
            bundle = (
                load_certificates(data["root-cert.pem"], source=f"{source}: root-cert.pem")
                if data.get("root-cert.pem")
                else []
            )
        except ValueError as exc:
            raise KeyMaterialError(str(exc)) from None
        check_key_matches(key, cert, source=f"{source}: ca-cert.pem")
        now = now_utc()
        roots = (cert, *(r for r in bundle if r != cert and r.not_valid_after_utc > now))
        self._resource_version = secret.resource_version
        return Authority(key=key, cert=cert, roots=roots)


def _secret_data(authority: Authority) -> dict[str, bytes]:
    """Istio's `istio-ca-secret` layout; `root-cert.pem` carries the whole trust bundle."""
    return {
        "ca-cert.pem": cert_pem(authority.cert),
        "ca-key.pem": key_pem(authority.key),
        "cert-chain.pem": b"",
        "root-cert.pem": authority.root_pem,
    }
