"""Why the CA refuses a local-mode token, as the agent sees it: UNAUTHENTICATED with the first check the
token failed, named precisely (shape, encoding, signature, issuer, not-yet-valid)."""

from __future__ import annotations

import datetime as dt
import pathlib

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authenticate import Credentials
from certs.authenticate.localtoken import LocalTokenAuthenticator, load_or_create_key, mint
from certs.ca import CertificateAuthority
from certs.service import CaError, CertificateService
from tests.certs.helpers import ES256, make_root, part, signed

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
T = int(NOW.timestamp())


def claims(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "iss": "meshplane-local",
        "aud": ["istio-ca"],
        "sub": "system:serviceaccount:shop:cart",
        "iat": T,
        "nbf": T,
        "exp": T + 3600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def key(tmp_path: pathlib.Path) -> ec.EllipticCurvePrivateKey:
    return load_or_create_key(tmp_path)


async def refusal(key: ec.EllipticCurvePrivateKey, token: str) -> tuple[grpc.StatusCode, str]:
    authenticator = LocalTokenAuthenticator(
        public_key=key.public_key(), trust_domain="cluster.local", clock=lambda: NOW
    )
    service = CertificateService(ca=CertificateAuthority(make_root()), authenticators=[authenticator])
    with pytest.raises(CaError) as refused:
        await service.authenticate(Credentials(metadata={"authorization": f"Bearer {token}"}))
    return refused.value.code, str(refused.value)


def refused_because(why: str) -> tuple[grpc.StatusCode, str]:
    return grpc.StatusCode.UNAUTHENTICATED, f"authentication failed (local-token: {why})"


async def test_a_token_that_is_not_three_parts_is_not_a_jwt(key: ec.EllipticCurvePrivateKey) -> None:
    assert await refusal(key, "abc.def") == refused_because("token is not a JWT (expected header.payload.signature)")


async def test_a_token_part_that_is_not_base64url_json_is_not_a_jwt(key: ec.EllipticCurvePrivateKey) -> None:
    assert await refusal(key, f"{part(ES256)}.%%%.sig") == refused_because(
        "token is not a JWT (a part is not base64url-encoded JSON)"
    )


@pytest.mark.parametrize("which", ["header", "payload"])
async def test_a_header_or_payload_that_is_not_an_object_is_not_a_jwt(
    key: ec.EllipticCurvePrivateKey, which: str
) -> None:
    header, payload = ([], claims()) if which == "header" else (ES256, ["not", "an", "object"])
    assert await refusal(key, signed(key, header, payload)) == refused_because(
        "token is not a JWT (header or payload is not a JSON object)"
    )


async def test_a_signature_of_the_wrong_length_does_not_verify(key: ec.EllipticCurvePrivateKey) -> None:
    token = signed(key, ES256, claims())
    assert await refusal(key, token[:-10]) == refused_because(
        "token signature does not verify (wrong length for ES256)"
    )


async def test_a_token_signed_by_another_key_does_not_verify(key: ec.EllipticCurvePrivateKey) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    assert await refusal(key, signed(other, ES256, claims())) == refused_because(
        "token signature does not verify (forged, or signed by another key)"
    )


async def test_a_token_from_another_issuer_names_both_issuers(key: ec.EllipticCurvePrivateKey) -> None:
    token = mint(key=key, namespace="shop", service_account="cart", issuer="someone-else", now=NOW)
    assert await refusal(key, token) == refused_because("token issuer 'someone-else' is not 'meshplane-local'")


async def test_a_token_is_not_valid_before_its_nbf_even_when_issued_earlier(key: ec.EllipticCurvePrivateKey) -> None:
    token = signed(key, ES256, claims(iat=T, nbf=T + 600))
    assert await refusal(key, token) == refused_because("token not valid before 2030-01-01T00:10:00+00:00")


async def test_without_nbf_a_token_is_not_valid_before_it_was_issued(key: ec.EllipticCurvePrivateKey) -> None:
    token = signed(key, ES256, claims(iat=T + 600, nbf=None))
    assert await refusal(key, token) == refused_because("token not valid before 2030-01-01T00:10:00+00:00")


async def test_a_token_without_a_numeric_expiry_is_refused(key: ec.EllipticCurvePrivateKey) -> None:
    assert await refusal(key, signed(key, ES256, claims(exp="soon"))) == refused_because(
        "token has no numeric exp (expiry) claim"
    )


async def test_an_expired_token_names_its_expiry_in_utc(key: ec.EllipticCurvePrivateKey) -> None:
    token = signed(key, ES256, claims(iat=T - 7200, nbf=T - 7200, exp=T - 3600))
    assert await refusal(key, token) == refused_because("token expired at 2029-12-31T23:00:00+00:00")


async def test_a_token_whose_subject_is_not_a_string_names_no_subject(key: ec.EllipticCurvePrivateKey) -> None:
    assert await refusal(key, signed(key, ES256, claims(sub=42))) == refused_because(
        "token subject: username '' is not a service account (system:serviceaccount:<ns>:<sa>)"
    )


async def test_a_token_valid_from_exactly_the_allowed_clock_skew_ahead_is_accepted(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    authenticator = LocalTokenAuthenticator(
        public_key=key.public_key(), trust_domain="cluster.local", clock=lambda: NOW
    )
    token = signed(key, ES256, claims(iat=T + 60, nbf=T + 60))  # the CA's clock may be 60 s behind the minter's
    caller = await authenticator.authenticate(Credentials(metadata={"authorization": f"Bearer {token}"}))
    assert caller.identities == ("spiffe://cluster.local/ns/shop/sa/cart",)
