"""Assembles the CA for `meshplane serve`: key material, the shared `CertificateAuthority`, the
serving certificate, the gRPC service, trust-bundle distribution and the rotation tasks.

`controlplane.server` calls `local_ca(...)` (local mode) and then registers `runtime.service` on
the secure gRPC server and starts `runtime.tasks()`. Kubernetes mode will build the same
`CaRuntime` from a `KubeSecretKeyStore`, a `KubeJwtAuthenticator` and the root ConfigMap
reconciler (certs.rootdist), all through the seams documented in those modules.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import pathlib
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from certs.authenticate import Authenticator
from certs.authenticate.clientcert import ClientCertAuthenticator
from certs.authenticate.localtoken import LocalTokenAuthenticator, load_or_create_key
from certs.ca import CertificateAuthority
from certs.keystore import KeyStore, local_keystore
from certs.rootdist import LocalRootFile
from certs.rotation import RootRotator, ServingRotator
from certs.service import CertificateService
from certs.serving import ServingCertificate
from certs.signing import MAX_TTL, SigningPolicy


@dataclass(frozen=True, kw_only=True)
class CaRuntime:
    ca: CertificateAuthority
    store: KeyStore
    serving: ServingCertificate
    service: CertificateService
    root_rotator: RootRotator
    serving_rotator: ServingRotator

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """Named background tasks to start: root rotation and serving-certificate rotation."""
        return {"ca-root-rotation": self.root_rotator.run(), "serving-cert-rotation": self.serving_rotator.run()}


async def build_ca(
    *,
    store: KeyStore,
    serving_hosts: tuple[str, ...],
    authenticators: Sequence[Authenticator],
    max_ttl: dt.timedelta = MAX_TTL,
    executor: concurrent.futures.Executor | None = None,
) -> CaRuntime:
    """Load (or create) the key material and assemble everything around it.

    `authenticators` may be empty when a `ClientCertAuthenticator` is the only one wanted; it is always
    tried first. Raises KeyMaterialError for unusable stored material.
    """
    authority = await store.load_or_create()
    ca = CertificateAuthority(authority)
    serving = ServingCertificate(authority, hosts=serving_hosts)
    service = CertificateService(
        ca=ca,
        authenticators=[ClientCertAuthenticator(issuers=ca.trusted_issuers), *authenticators],
        policy=SigningPolicy(max_ttl=max_ttl),
        executor=executor,
    )
    return CaRuntime(
        ca=ca,
        store=store,
        serving=serving,
        service=service,
        root_rotator=RootRotator(ca=ca, store=store),
        serving_rotator=ServingRotator(serving=serving, ca=ca),
    )


async def local_ca(
    *,
    state_dir: pathlib.Path,
    trust_domain: str,
    serving_hosts: tuple[str, ...],
    max_ttl: dt.timedelta = MAX_TTL,
    executor: concurrent.futures.Executor | None = None,
) -> CaRuntime:
    """Local mode: key material in `state_dir` (`cacerts/` plug-in or `ca/` self-signed), the trust
    bundle published to `<state_dir>/root-cert.pem`, and `meshplane token` tokens accepted.

    Raises KeyMaterialError (including TokenKeyError) for unusable files, naming them.
    """
    token_key = load_or_create_key(state_dir)
    runtime = await build_ca(
        store=local_keystore(state_dir, org=trust_domain),
        serving_hosts=serving_hosts,
        authenticators=[LocalTokenAuthenticator(public_key=token_key.public_key(), trust_domain=trust_domain)],
        max_ttl=max_ttl,
        executor=executor,
    )
    root_file = LocalRootFile(state_dir / "root-cert.pem")
    root_file.publish(runtime.ca.current.root_pem)
    runtime.ca.subscribe(lambda authority: root_file.publish(authority.root_pem))
    return runtime
