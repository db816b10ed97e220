"""Each authenticator on its own: local tokens, Kubernetes JWT via TokenReview, client certificates."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import pathlib
import stat
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authenticate import AuthenticationError, Credentials, NoCredentials
from certs.authenticate.clientcert import ClientCertAuthenticator
from certs.authenticate.kubejwt import KubeJwtAuthenticator, TokenReview
from certs.authenticate.localtoken import (
    KEY_FILE,
    LocalTokenAuthenticator,
    TokenKeyError,
    load_or_create_key,
    mint,
    parse_duration,
)
from certs.pem import cert_pem, generate_key
from tests.certs.fakes import FakeTokenReviewer, T
from tests.certs.helpers import make_root, spiffe

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def bearer(token: str, **extra: str) -> Credentials:
    return Credentials(metadata={"authorization": f"Bearer {token}", **extra})


# -- local tokens ---------------------------------------------------------------------------------


@pytest.fixture
def key(tmp_path: pathlib.Path) -> ec.EllipticCurvePrivateKey:
    return load_or_create_key(tmp_path)


def local(key: ec.EllipticCurvePrivateKey, *, now: dt.datetime = NOW) -> LocalTokenAuthenticator:
    return LocalTokenAuthenticator(public_key=key.public_key(), trust_domain="cluster.local", clock=lambda: now)


async def test_a_minted_token_authenticates_as_its_service_account(key: ec.EllipticCurvePrivateKey) -> None:
    token = mint(key=key, namespace="shop", service_account="cart", now=NOW)
    caller = await local(key).authenticate(bearer(token))
    assert caller.identities == (spiffe("shop", "cart"),)
    assert caller.source == "local-token"


def test_the_token_looks_like_a_projected_service_account_token(key: ec.EllipticCurvePrivateKey) -> None:
    token = mint(key=key, namespace="shop", service_account="cart", ttl=dt.timedelta(minutes=5), now=NOW)
    header, claims = (json.loads(base64.urlsafe_b64decode(p + "==")) for p in token.split(".")[:2])
    assert header["alg"] == "ES256"
    assert claims["aud"] == ["istio-ca"]
    assert claims["sub"] == "system:serviceaccount:shop:cart"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["kubernetes.io"] == {"namespace": "shop", "serviceaccount": {"name": "cart"}}


async def test_an_expired_token_is_rejected_with_its_expiry(key: ec.EllipticCurvePrivateKey) -> None:
    token = mint(key=key, namespace="shop", service_account="cart", ttl=dt.timedelta(minutes=1), now=NOW)
    with pytest.raises(AuthenticationError, match="token expired at 2030-01-01T00:01:00"):
        await local(key, now=NOW + dt.timedelta(minutes=1)).authenticate(bearer(token))


async def test_a_token_for_another_audience_is_rejected(key: ec.EllipticCurvePrivateKey) -> None:
    token = mint(key=key, namespace="shop", service_account="cart", audience="kubernetes", now=NOW)
    with pytest.raises(AuthenticationError, match=r"audience \['kubernetes'\] does not include 'istio-ca'"):
        await local(key).authenticate(bearer(token))


async def test_a_token_signed_by_another_key_is_rejected(
    key: ec.EllipticCurvePrivateKey, tmp_path: pathlib.Path
) -> None:
    other = load_or_create_key(tmp_path / "other")
    token = mint(key=other, namespace="shop", service_account="cart", now=NOW)
    with pytest.raises(AuthenticationError, match="signature does not verify"):
        await local(key).authenticate(bearer(token))


async def test_editing_the_claims_breaks_the_signature(key: ec.EllipticCurvePrivateKey) -> None:
    header, _, signature = mint(key=key, namespace="shop", service_account="cart", now=NOW).split(".")
    forged = {
        "iss": "meshplane-local",
        "aud": ["istio-ca"],
        "sub": "system:serviceaccount:kube-system:admin",
        "exp": 2**40,
    }
    payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthenticationError, match="signature does not verify"):
        await local(key).authenticate(bearer(f"{header}.{payload}.{signature}"))


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("abc", "not a JWT"),
        ("a.b.c", "not a JWT"),
        (
            base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=") + ".e30.",
            "algorithm 'none' is not accepted",
        ),
    ],
    ids=["one-part", "not-base64-json", "alg-none"],
)
async def test_malformed_tokens_are_rejected(key: ec.EllipticCurvePrivateKey, token: str, message: str) -> None:
    with pytest.raises(AuthenticationError, match=message):
        await local(key).authenticate(bearer(token))


async def test_no_bearer_header_means_no_credentials(key: ec.EllipticCurvePrivateKey) -> None:
    for creds in (Credentials(), Credentials(metadata={"authorization": "Basic dXNlcjpwYXNz"})):
        with pytest.raises(NoCredentials):
            await local(key).authenticate(creds)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"namespace": "Shop"}, "--namespace: 'Shop' is not a DNS-1123 label"),
        ({"service_account": "a:b"}, "--service-account: 'a:b' is not a DNS-1123 subdomain"),
        ({"ttl": dt.timedelta(0)}, "--ttl: 0 s must be positive"),
    ],
)
def test_minting_refuses_bad_input_naming_the_flag(
    key: ec.EllipticCurvePrivateKey, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"namespace": "shop", "service_account": "cart", **kwargs}
    with pytest.raises(ValueError, match=message):
        mint(key=key, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("1.5h", 5400), ("500ms", 0.5), ("2562047h", 9223369200)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text, field="--ttl") == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    [
        *("", "-5", "1d", "h", "5 m", "\u0669\u0660", "\u0669\u0660s"),  # ASCII digits only, as in Go
        *("2562048h", "9999999999999999999999h", "1" * 5000),  # longer than Go's ~292 years: no traceback
    ],
)
def test_bad_durations_name_the_field(text: str) -> None:
    with pytest.raises(ValueError, match=r"--ttl: .* is not a duration"):
        parse_duration(text, field="--ttl")


def test_a_negative_duration_is_refused() -> None:
    with pytest.raises(ValueError, match=r"--ttl: '-5s' must not be negative"):
        parse_duration("-5s", field="--ttl")


def test_the_signing_key_is_private_and_shared_by_concurrent_creators(tmp_path: pathlib.Path) -> None:
    keys: list[ec.EllipticCurvePrivateKey] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({k.private_numbers().private_value for k in keys}) == 1
    assert stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temp files left behind


def test_a_readable_signing_key_is_refused(tmp_path: pathlib.Path) -> None:
    load_or_create_key(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o640)
    with pytest.raises(TokenKeyError, match="mode 640"):
        load_or_create_key(tmp_path)


# -- Kubernetes JWT (TokenReview) -----------------------------------------------------------------


def kube(reviewer: FakeTokenReviewer) -> KubeJwtAuthenticator:
    return KubeJwtAuthenticator(reviewer=reviewer, trust_domain="cluster.local", cluster_id="Kubernetes")


async def test_a_reviewed_service_account_token_authenticates() -> None:
    reviewer = FakeTokenReviewer(
        reviews={
            T: TokenReview(authenticated=True, username="system:serviceaccount:shop:cart", audiences=("istio-ca",))
        }
    )
    caller = await kube(reviewer).authenticate(bearer(T, clusterid="Kubernetes"))
    assert caller.identities == (spiffe("shop", "cart"),)
    assert reviewer.asked == [(T, ("istio-ca",))]


async def test_tokenreview_saying_unauthenticated_is_rejected_with_its_reason() -> None:
    with pytest.raises(AuthenticationError, match="not authenticated: invalid bearer token"):
        await kube(FakeTokenReviewer()).authenticate(bearer(T))


async def test_a_reviewed_token_for_another_audience_is_rejected() -> None:
    reviewer = FakeTokenReviewer(
        reviews={T: TokenReview(authenticated=True, username="system:serviceaccount:a:b", audiences=("vault",))}
    )
    with pytest.raises(AuthenticationError, match="do not include 'istio-ca'"):
        await kube(reviewer).authenticate(bearer(T))


async def test_a_user_that_is_not_a_service_account_is_rejected() -> None:
    reviewer = FakeTokenReviewer(
        reviews={T: TokenReview(authenticated=True, username="alice", audiences=("istio-ca",))}
    )
    with pytest.raises(AuthenticationError, match="'alice' is not a service account"):
        await kube(reviewer).authenticate(bearer(T))


async def test_another_clusterid_is_rejected_without_asking_the_api() -> None:
    reviewer = FakeTokenReviewer()
    with pytest.raises(AuthenticationError, match="clusterid 'remote' is not this cluster"):
        await kube(reviewer).authenticate(bearer("t", clusterid="remote"))
    assert reviewer.asked == []


async def test_an_unreachable_api_is_reported_as_unavailable() -> None:
    with pytest.raises(AuthenticationError) as info:
        await kube(FakeTokenReviewer(down=True)).authenticate(bearer(T))
    assert info.value.unavailable


# -- client certificates --------------------------------------------------------------------------


async def test_a_mesh_issued_client_certificate_authenticates_by_its_spiffe_uri() -> None:
    authority = make_root()
    leaf = authority.issue(public_key=generate_key().public_key(), ttl=dt.timedelta(hours=1), uris=(spiffe("a", "b"),))[
        0
    ]
    auth = ClientCertAuthenticator(issuers=lambda: authority.roots)
    caller = await auth.authenticate(Credentials(peer_certificate_pem=cert_pem(leaf)))
    assert caller.identities == (spiffe("a", "b"),)


async def test_a_client_certificate_from_another_ca_is_rejected() -> None:
    ours, theirs = make_root(), make_root()
    leaf = theirs.issue(public_key=generate_key().public_key(), ttl=dt.timedelta(hours=1), uris=(spiffe("a", "b"),))[0]
    auth = ClientCertAuthenticator(issuers=lambda: ours.roots)
    with pytest.raises(AuthenticationError, match="not issued by this mesh's CA"):
        await auth.authenticate(Credentials(peer_certificate_pem=cert_pem(leaf)))


async def test_an_expired_client_certificate_is_rejected() -> None:
    authority = make_root()
    leaf = authority.issue(public_key=generate_key().public_key(), ttl=dt.timedelta(hours=1), uris=(spiffe("a", "b"),))[
        0
    ]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    auth = ClientCertAuthenticator(issuers=lambda: authority.roots, clock=lambda: later)
    with pytest.raises(AuthenticationError, match="not valid now"):
        await auth.authenticate(Credentials(peer_certificate_pem=cert_pem(leaf)))


async def test_a_client_certificate_without_spiffe_uri_is_rejected() -> None:
    authority = make_root()
    leaf = authority.issue(public_key=generate_key().public_key(), ttl=dt.timedelta(hours=1), dns_names=("x.example",))[
        0
    ]
    with pytest.raises(AuthenticationError, match="no spiffe:// URI SAN"):
        await ClientCertAuthenticator(issuers=lambda: authority.roots).authenticate(
            Credentials(peer_certificate_pem=cert_pem(leaf))
        )
