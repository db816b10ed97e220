"""How the CA's client-certificate authenticator answers, as the caller reads it: each refusal named,
and a certificate accepted from the first to the last instant of its validity (RFC 5280: both ends)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.authenticate import AuthenticationError, Credentials, NoCredentials
from certs.authenticate.clientcert import ClientCertAuthenticator
from certs.pem import generate_key
from tests.certs.helpers import make_root, spiffe

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ME = spiffe("shop", "cart")
ROOT = make_root(now=NOW - dt.timedelta(days=1))


def leaf_pem(*, uris: tuple[str, ...] = (ME,), authority: object = ROOT) -> bytes:
    leaf = authority.issue(public_key=generate_key().public_key(), ttl=dt.timedelta(hours=1), uris=uris, now=NOW)[0]  # type: ignore[attr-defined]
    return leaf.public_bytes(serialization.Encoding.PEM)  # type: ignore[no-any-return]


async def authenticate(pem: bytes | None, *, at: dt.datetime = NOW) -> object:
    authenticator = ClientCertAuthenticator(issuers=lambda: [ROOT.cert], clock=lambda: at)
    return await authenticator.authenticate(Credentials(metadata={}, peer_certificate_pem=pem))


async def test_a_caller_without_a_client_certificate_presented_none() -> None:
    with pytest.raises(NoCredentials) as absent:
        await authenticate(None)
    assert str(absent.value) == "no client certificate presented"


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (
            lambda: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "client certificate does not parse: ",
        ),
        (lambda: leaf_pem(authority=make_root(now=NOW)), "client certificate was not issued by this mesh's CA"),
        (lambda: leaf_pem(uris=()), "client certificate has no subjectAltName"),
        (lambda: leaf_pem(uris=("https://shop.example/cart",)), "client certificate has no spiffe:// URI SAN"),
    ],
    ids=["garbage", "another-ca", "no-san", "no-spiffe-uri"],
)
async def test_a_client_certificate_the_mesh_cannot_use_is_refused_by_name(pem: object, message: str) -> None:
    with pytest.raises(AuthenticationError) as refused:
        await authenticate(pem())  # type: ignore[operator]
    assert str(refused.value).startswith(message)
    assert message.endswith(": ") or str(refused.value) == message


async def test_a_client_certificate_is_valid_at_both_ends_of_its_validity() -> None:
    pem = leaf_pem()
    leaf = x509.load_pem_x509_certificate(pem)
    for instant in (leaf.not_valid_before_utc, leaf.not_valid_after_utc):
        caller = await authenticate(pem, at=instant)
        assert (caller.source, caller.identities) == ("client-certificate", (ME,))  # type: ignore[attr-defined]
