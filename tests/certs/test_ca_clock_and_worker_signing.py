"""The CA signs with its own clock, whether the event loop signs or worker processes do, and the
certificate carries what the caller asked for: its identity, for the validity it requested. A refused
caller hears every authenticator's reason; a CA without signing workers answers UNAVAILABLE."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509

from certs import metrics
from certs.authenticate import AuthenticationError, Caller, Credentials
from certs.authority import BACKDATE, Authority
from certs.ca import CertificateAuthority
from certs.service import CaError, CertificateService
from certs.signpool import SigningPool
from tests.certs.helpers import leaf_uris, make_csr, make_root, spiffe

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ME = spiffe("shop", "cart")


class Cart:
    name = "cart"

    async def authenticate(self, credentials: Credentials) -> Caller:
        return Caller(source=self.name, identities=(ME, spiffe("shop", "cart-v2")))


@pytest.fixture(params=["event-loop", "worker-process"])
async def service(request: pytest.FixtureRequest) -> AsyncIterator[CertificateService]:
    root = make_root(now=NOW - dt.timedelta(days=1))
    pool = None
    if request.param == "worker-process":
        pool = SigningPool(workers=1, authority=root)
        await pool.start()
    try:
        yield CertificateService(ca=CertificateAuthority(root), authenticators=[Cart()], pool=pool, clock=lambda: NOW)
    finally:
        if pool is not None:
            await pool.close()


async def test_the_leaf_is_valid_from_the_cas_clock_for_the_requested_time(service: CertificateService) -> None:
    csr, _ = make_csr(uris=[ME])
    chain = await service.create_certificate(csr=csr, validity_seconds=7200, credentials=Credentials(metadata={}))
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    assert leaf_uris(chain[0]) == [ME]  # the identity asked for, of the two the caller holds
    assert leaf.not_valid_before_utc == NOW - BACKDATE
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(seconds=7200)
    assert chain[-1] == service.ca.current.root_pem.decode()


class Refuses:
    def __init__(self, name: str, why: str) -> None:
        self.name, self.why = name, why

    async def authenticate(self, credentials: Credentials) -> Caller:
        raise AuthenticationError(self.why)


async def test_a_caller_every_authenticator_refuses_hears_every_reason() -> None:
    service = CertificateService(
        ca=CertificateAuthority(make_root()),
        authenticators=[Refuses("kube-jwt", "token expired"), Refuses("client-cert", "not issued by this mesh's CA")],
    )
    with pytest.raises(CaError) as refused:
        await service.authenticate(Credentials(metadata={}))
    assert (refused.value.code, str(refused.value)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "authentication failed (kube-jwt: token expired; client-cert: not issued by this mesh's CA)",
    )


async def test_signing_with_no_worker_left_is_unavailable_so_the_agent_retries() -> None:
    root = make_root()
    pool = SigningPool(workers=1, authority=root)
    await pool.start()
    await pool.close()
    service = CertificateService(ca=CertificateAuthority(root), authenticators=[Cart()], pool=pool)
    before = metrics.csr_sign_error_count.value(reason="worker_unavailable")
    with pytest.raises(CaError) as refused:
        await service.create_certificate(
            csr=make_csr(uris=[ME])[0], validity_seconds=0, credentials=Credentials(metadata={})
        )
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert str(refused.value).startswith("signing failed: ")
    assert metrics.csr_sign_error_count.value(reason="worker_unavailable") == before + 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class BrokenSigner(Authority):
    """A signer that fails as an external key store can (an unreachable HSM, say)."""

    def issue(self, **_: object) -> list[x509.Certificate]:
        raise RuntimeError("key store unreachable")


async def test_an_unexpected_signing_failure_is_internal_named_and_counted() -> None:
    root = make_root()
    broken = BrokenSigner(key=root.key, cert=root.cert, roots=root.roots)
    service = CertificateService(ca=CertificateAuthority(broken), authenticators=[Cart()])
    before = metrics.csr_sign_error_count.value(reason="signing_failed")
    with pytest.raises(CaError) as refused:
        await service.create_certificate(
            csr=make_csr(uris=[ME])[0], validity_seconds=0, credentials=Credentials(metadata={})
        )
    assert (refused.value.code, str(refused.value)) == (
        grpc.StatusCode.INTERNAL,
        "signing failed: key store unreachable",
    )
    assert metrics.csr_sign_error_count.value(reason="signing_failed") == before + 1
