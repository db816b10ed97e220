"""Assembles the CA for `meshplane serve`: key material, the shared `CertificateAuthority`, the
serving certificate, the gRPC service, trust-bundle distribution and the rotation tasks.

`controlplane.server` calls `local_ca(...)` (local mode) or `kube_ca(...)` (Kubernetes mode) and then
registers `runtime.service` on the secure gRPC server and starts `runtime.tasks()`. Kubernetes mode
builds the same `CaRuntime` from a `KubeSecretKeyStore` and a `KubeJwtAuthenticator`, given the
`SecretClient` and `TokenReviewer` that `controlplane.kube` implements; the root ConfigMaps
(certs.rootdist) are kept by a controller the server starts beside it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from certs.authenticate import Authenticator
from certs.authenticate.clientcert import ClientCertAuthenticator
from certs.authenticate.kubejwt import IssuerKeySource, KubeJwtAuthenticator, TokenReviewer
from certs.authenticate.localtoken import LocalTokenAuthenticator, load_or_create_key
from certs.ca import CertificateAuthority
from certs.keystore import KeyStore, check_state_dir, local_keystore
from certs.kubestore import KubeSecretKeyStore, SecretClient
from certs.rootdist import LocalRootFile
from certs.rotation import RootRotator, ServingRotator
from certs.service import CertificateService
from certs.serving import ServingCertificate
from certs.signing import MAX_TTL, SigningPolicy
from certs.signpool import SigningPool, default_workers


@dataclass(frozen=True, kw_only=True)
class CaRuntime:
    ca: CertificateAuthority
    store: KeyStore
    serving: ServingCertificate
    service: CertificateService
    root_rotator: RootRotator
    serving_rotator: ServingRotator
    pool: SigningPool | None = None

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """Named background tasks to start: root rotation, serving-certificate rotation and, with signing
        workers, one that stops them when cancelled."""
        tasks = {"ca-root-rotation": self.root_rotator.run(), "serving-cert-rotation": self.serving_rotator.run()}
        if self.pool is not None:
            tasks["ca-signing-workers"] = _close_on_cancel(self.pool)
        return tasks


async def _close_on_cancel(pool: SigningPool) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await pool.close()


async def build_ca(
    *,
    store: KeyStore,
    serving_hosts: tuple[str, ...],
    authenticators: Sequence[Authenticator],
    max_ttl: dt.timedelta = MAX_TTL,
    workers: int | None = 0,
) -> CaRuntime:
    """Load (or create) the key material and assemble everything around it.

    `authenticators` may be empty when a `ClientCertAuthenticator` is the only one wanted; it is always
    tried first. `workers` signing processes are started (None: `default_workers()`; 0: the event loop
    signs) and follow every change of the CA's authority; the runtime's tasks stop them. Raises
    KeyMaterialError for unusable stored material, ValueError for a negative `workers`, OSError when a
    worker cannot be started.
    """
    if workers is None:
        workers = default_workers()
    if workers < 0:
        raise ValueError(f"workers: {workers} must not be negative")
    authority = await store.load_or_create()
    ca = CertificateAuthority(authority)
    serving = ServingCertificate(authority, hosts=serving_hosts)
    pool = None
    if workers:
        pool = SigningPool(workers=workers, authority=authority)
        await pool.start()
        ca.subscribe(pool.set_authority)
    service = CertificateService(
        ca=ca,
        authenticators=[ClientCertAuthenticator(issuers=ca.trusted_issuers), *authenticators],
        policy=SigningPolicy(max_ttl=max_ttl),
        pool=pool,
    )
    return CaRuntime(
        ca=ca,
        store=store,
        serving=serving,
        service=service,
        root_rotator=RootRotator(ca=ca, store=store),
        serving_rotator=ServingRotator(serving=serving, ca=ca),
        pool=pool,
    )


async def local_ca(
    *,
    state_dir: pathlib.Path,
    trust_domain: str,
    serving_hosts: tuple[str, ...],
    max_ttl: dt.timedelta = MAX_TTL,
    workers: int | None = 0,
    key_algorithm: str = "ecdsa-p256",
    allow_new_root: bool = False,
) -> CaRuntime:
    """Local mode: key material in `state_dir` (`cacerts/` plug-in or `ca/` self-signed), the trust
    bundle published to `<state_dir>/root-cert.pem`, and `meshplane token` tokens accepted.

    `workers` as in `build_ca`; `key_algorithm` is used when a new self-signed root is created, and
    `allow_new_root` lets one be created although a trust bundle exists without its key.
    Raises KeyMaterialError (including TokenKeyError) for unusable files, naming them, and for an
    unwritable `state_dir`.
    """
    check_state_dir(state_dir)
    token_key = load_or_create_key(state_dir)
    runtime = await build_ca(
        store=local_keystore(state_dir, org=trust_domain, algorithm=key_algorithm, allow_new_root=allow_new_root),
        serving_hosts=serving_hosts,
        authenticators=[LocalTokenAuthenticator(public_key=token_key.public_key(), trust_domain=trust_domain)],
        max_ttl=max_ttl,
        workers=workers,
    )
    root_file = LocalRootFile(state_dir / "root-cert.pem")
    root_file.publish(runtime.ca.current.root_pem)
    runtime.ca.subscribe(lambda authority: root_file.publish(authority.root_pem))
    return runtime


async def kube_ca(
    *,
    secrets: SecretClient,
    reviewer: TokenReviewer,
    issuer_keys: IssuerKeySource | None = None,
    namespace: str,
    trust_domain: str,
    cluster_id: str,
    serving_hosts: tuple[str, ...],
    state_dir: pathlib.Path | None,
    max_ttl: dt.timedelta = MAX_TTL,
    workers: int | None = 0,
    key_algorithm: str = "ecdsa-p256",
) -> CaRuntime:
    """Kubernetes mode: key material in Secrets of `namespace` (`cacerts` plug-in, else
    `istio-ca-secret`, created on first start), callers authenticated by client certificate, then by
    service-account token through `reviewer` (audience `istio-ca`, `clusterid` must be `cluster_id`);
    with `issuer_keys`, tokens the cluster did not sign are refused without a review.

    The trust bundle is also written to `<state_dir>/root-cert.pem` when `state_dir` is given, so an
    operator (or a script) on the control plane's host can verify what it issues; workloads get it from
    the `istio-ca-root-cert` ConfigMaps. `workers` and `key_algorithm` as in `local_ca`.
    Raises KeyMaterialError for unusable Secrets, naming them; API errors from `secrets` propagate.
    """
    runtime = await build_ca(
        store=KubeSecretKeyStore(secrets, namespace=namespace, org=trust_domain, algorithm=key_algorithm),
        serving_hosts=serving_hosts,
        authenticators=[
            KubeJwtAuthenticator(reviewer=reviewer, keys=issuer_keys, trust_domain=trust_domain, cluster_id=cluster_id)
        ],
        max_ttl=max_ttl,
        workers=workers,
    )
    if state_dir is not None:
        root_file = LocalRootFile(state_dir / "root-cert.pem")
        root_file.publish(runtime.ca.current.root_pem)
        runtime.ca.subscribe(lambda authority: root_file.publish(authority.root_pem))
    return runtime
