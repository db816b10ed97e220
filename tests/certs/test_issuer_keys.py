"""The cluster's service-account issuer keys (`certs.authenticate.issuerkeys`) and what the CA does with them.

Forged tokens are refused without a TokenReview once the keys are known; a token the keys verify is
still reviewed; a token naming a key the cluster does not publish makes the CA fetch the keys again
(at most every 30 s) before it refuses.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from prometheus_client import REGISTRY

from certs.authenticate import AuthenticationError, AuthenticatorUnavailable, Credentials
from certs.authenticate.issuerkeys import IssuerKeys, Verdict
from certs.authenticate.kubejwt import KubeJwtAuthenticator, TokenReview
from certs.authenticate.reviewgate import ReviewGate, ReviewRefused
from tests.certs.fakes import FakeTokenReviewer

NOW = 1_800_000_000.0
GRANTED = TokenReview(authenticated=True, username="system:serviceaccount:shop:cart", audiences=("istio-ca",))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64int(value: int, size: int) -> str:
    return b64(value.to_bytes(size, "big"))


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
    return {"kty": "EC", "crv": crv, "kid": kid, "x": b64int(numbers.x, size), "y": b64int(numbers.y, size), **extra}


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "use": "sig", "n": b64int(numbers.n, 256), "e": b64int(numbers.e, 3)}


def jwt(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None, *, alg: str, kid: str | None = None, **claim: Any
) -> str:
    """A JWT signed with `key`; `claim` replaces claims (None: leave it out)."""
    header: dict[str, Any] = {"alg": alg, **({"kid": kid} if kid is not None else {})}
    claims = {"sub": "system:serviceaccount:shop:cart", "aud": ["istio-ca"], "exp": int(NOW) + 3600} | claim
    claims = {name: value for name, value in claims.items() if value is not None}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}.get(alg[2:], hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(digest)))
        size = (key.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), digest)
    else:
        signature = b"not a signature"
    return f"{signing_input}.{b64(signature)}"


P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = ec.generate_private_key(ec.SECP256R1())
JWKS = {"keys": [ec_jwk(P256, "p256"), ec_jwk(P384, "p384"), rsa_jwk(RSA, "rsa")]}


def cluster_keys() -> IssuerKeys:
    """The set, parsed when a test runs (not at import, so the parsing is the code under test)."""
    return IssuerKeys.from_jwks(JWKS)


@pytest.mark.parametrize(
    ("token", "verdict"),
    [
        (jwt(P256, alg="ES256", kid="p256"), Verdict.VERIFIED),
        (jwt(P384, alg="ES384", kid="p384"), Verdict.VERIFIED),
        (jwt(RSA, alg="RS256", kid="rsa"), Verdict.VERIFIED),
        (jwt(RSA, alg="RS512", kid="rsa"), Verdict.VERIFIED),
        (jwt(P256, alg="ES256"), Verdict.VERIFIED),  # no kid: any key of the set
        (jwt(OTHER, alg="ES256", kid="p256"), Verdict.BAD_SIGNATURE),  # forged with another key
        (jwt(OTHER, alg="ES256"), Verdict.BAD_SIGNATURE),
        (jwt(P256, alg="ES384", kid="p256"), Verdict.BAD_SIGNATURE),  # ES384 is P-384's
        (jwt(RSA, alg="RS256", kid="p256"), Verdict.BAD_SIGNATURE),  # an RSA signature for an EC key
        (jwt(P256, alg="ES256", kid="rotated-in"), Verdict.UNKNOWN_KEY),
        (jwt(None, alg="none", kid="p256"), Verdict.BAD_SIGNATURE),
        (jwt(None, alg="HS256", kid="p256"), Verdict.BAD_SIGNATURE),
        (jwt(None, alg="PS256", kid="p256"), Verdict.UNCHECKED),
        (jwt(None, alg="EdDSA", kid="p256"), Verdict.UNCHECKED),
    ],
)
def test_a_tokens_signature_is_judged_by_the_key_its_kid_names(token: str, verdict: Verdict) -> None:
    assert cluster_keys().check(token).verdict is verdict


def test_a_damaged_signature_does_not_verify() -> None:
    head, payload, signature = jwt(P256, alg="ES256", kid="p256").split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    assert cluster_keys().check(f"{head}.{payload}.{flipped}").verdict is Verdict.BAD_SIGNATURE
    assert cluster_keys().check(f"{head}.{payload}.{signature[:40]}").verdict is Verdict.BAD_SIGNATURE  # too short
    check = cluster_keys().check(f"{head}.{payload}.%%%")
    assert (check.verdict, check.why) == (
        Verdict.BAD_SIGNATURE,
        "kid 'p256', alg 'ES256': the signature is not base64url",
    )


def test_refusals_say_which_key_and_algorithm() -> None:
    keys = cluster_keys()
    forged, unknown = jwt(OTHER, alg="ES256", kid="p256"), jwt(P256, alg="ES256", kid="new")
    assert keys.check(forged).why == "kid 'p256', alg 'ES256': the signature does not verify"
    assert keys.check(unknown).why == "kid 'new', alg 'ES256': the cluster publishes no such key"
    assert keys.check(jwt(None, alg="none")).why == "no kid, alg 'none': never a service-account token's algorithm"


def test_keys_it_cannot_use_are_skipped_naming_why() -> None:
    no_kid = {k: v for k, v in ec_jwk(OTHER, "").items() if k != "kid"}
    keys = IssuerKeys.from_jwks(
        {
            "keys": [
                "not an object",
                {**ec_jwk(P256, ""), "kid": 7},
                {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
                {**ec_jwk(P256, "enc"), "use": "enc"},
                {**ec_jwk(P256, "k1"), "crv": "secp256k1"},
                {**ec_jwk(P256, "bad-x"), "x": "!!"},
                {**ec_jwk(P256, "off-curve"), "y": b64int(5, 32)},
                {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
                {"kty": "RSA", "kid": "empty-n", "e": "AQAB", "n": ""},
                {"kty": "RSA", "e": "AQAB"},
                {"kty": "RSA", "kid": "bad-e", "e": "", "n": "AQAB"},
                {**ec_jwk(P256, "bad-y"), "y": ""},
                ec_jwk(P256, "good"),
                no_kid,
            ]
        }
    )
    assert len(keys) == 2
    assert keys.check(jwt(P256, alg="ES256", kid="good")).verdict is Verdict.VERIFIED
    assert keys.check(jwt(OTHER, alg="ES256")).verdict is Verdict.VERIFIED  # no kid: the key without one
    assert keys.check(jwt(OTHER, alg="ES256", kid="good")).verdict is Verdict.BAD_SIGNATURE
    assert keys.skipped[:5] == (
        "key 0: not an object",
        "key 1: kid is not a string",
        "key 'hmac': kty 'oct' is not RSA or EC",
        "key 'enc': use 'enc' is not sig",
        "key 'k1': curve 'secp256k1' is not P-256, P-384 or P-521",
    )
    assert keys.skipped[5] == "key 'bad-x': x is not base64url"
    assert keys.skipped[6].startswith("key 'off-curve': ")
    assert keys.skipped[7:] == (
        "key 'no-n': n is not a base64url string",
        "key 'empty-n': n is not a base64url string",
        "key 9: n is not a base64url string",
        "key 'bad-e': e is not a base64url string",
        "key 'bad-y': y is not a base64url string",
    )


@pytest.mark.parametrize("document", [None, [], {"keys": {}}, {"kty": "EC"}])
def test_a_document_that_is_no_key_set_is_refused(document: object) -> None:
    with pytest.raises(ValueError) as refused:
        IssuerKeys.from_jwks(document)
    assert str(refused.value) == 'not a JSON Web Key Set: no "keys" list'


# -- the CA's authenticator with the keys -------------------------------------------------------------------


class Source:
    """Keys as `controlplane.kube.issuerkeys` serves them: `refresh()` gives the next set, a new object as
    after a fetch, if there is one; else the same object, as when no fetch could be made."""

    def __init__(self, keys: IssuerKeys | None, *, after_refresh: IssuerKeys | None = None) -> None:
        self.keys = keys
        self.after_refresh = after_refresh
        self.refreshes = 0

    def current(self) -> IssuerKeys | None:
        return self.keys

    async def refresh(self) -> IssuerKeys | None:
        self.refreshes += 1
        if self.after_refresh is not None:
            self.keys = self.after_refresh
        return self.keys


def kube(reviewer: FakeTokenReviewer, source: Source) -> KubeJwtAuthenticator:
    return KubeJwtAuthenticator(
        reviewer=reviewer, keys=source, trust_domain="cluster.local", cluster_id="Kubernetes", clock=lambda: NOW
    )


def bearer(token: str, client: str = "10.0.0.1") -> Credentials:
    return Credentials(metadata={"authorization": f"Bearer {token}"}, client=client)


def bad_signatures() -> float:
    return REGISTRY.get_sample_value("meshplane_ca_token_reviews_total", {"outcome": "bad_signature"}) or 0.0


async def test_a_forged_token_is_refused_without_a_review_and_counted() -> None:
    reviewer, before = FakeTokenReviewer(), bad_signatures()
    auth = kube(reviewer, Source(cluster_keys()))
    with pytest.raises(AuthenticationError) as refused:
        await auth.authenticate(bearer(jwt(OTHER, alg="ES256", kid="p256")))
    assert str(refused.value) == (
        "bearer token is not signed by this cluster's service-account issuer "
        "(kid 'p256', alg 'ES256': the signature does not verify)"
    )
    assert reviewer.asked == [] and bad_signatures() - before == 1


async def test_a_token_the_keys_verify_is_still_reviewed() -> None:
    token = jwt(P256, alg="ES256", kid="p256")
    reviewer = FakeTokenReviewer(reviews={token: GRANTED})
    caller = await kube(reviewer, Source(cluster_keys())).authenticate(bearer(token))
    assert caller.identities == ("spiffe://cluster.local/ns/shop/sa/cart",) and len(reviewer.asked) == 1
    revoked = jwt(P256, alg="ES256", kid="p256")  # signed by the cluster, but its pod is gone
    with pytest.raises(AuthenticationError, match="invalid bearer token"):
        await kube(reviewer, Source(cluster_keys())).authenticate(bearer(revoked))


async def test_an_unknown_kid_fetches_the_keys_again_and_a_rotated_in_key_is_accepted() -> None:
    token = jwt(OTHER, alg="ES256", kid="rotated-in")
    reviewer = FakeTokenReviewer(reviews={token: GRANTED})
    rotated = IssuerKeys.from_jwks({"keys": [ec_jwk(P256, "p256"), ec_jwk(OTHER, "rotated-in")]})
    source = Source(cluster_keys(), after_refresh=rotated)
    await kube(reviewer, source).authenticate(bearer(token))
    assert source.refreshes == 1 and len(reviewer.asked) == 1


async def test_a_kid_still_unknown_after_fetching_again_is_refused_without_a_review() -> None:
    reviewer, source = FakeTokenReviewer(), Source(cluster_keys(), after_refresh=cluster_keys())
    with pytest.raises(AuthenticationError, match="kid 'made-up', alg 'ES256': the cluster publishes no such key") as e:
        await kube(reviewer, source).authenticate(bearer(jwt(OTHER, alg="ES256", kid="made-up")))
    assert not isinstance(e.value, AuthenticatorUnavailable)
    assert source.refreshes == 1 and reviewer.asked == []


def unknown_keys() -> float:
    return REGISTRY.get_sample_value("meshplane_ca_token_reviews_total", {"outcome": "unknown_key"}) or 0.0


async def test_an_unknown_kid_while_the_keys_cannot_be_fetched_again_is_unavailable_then_accepted() -> None:
    """Within 30 s of the last fetch (or while fetches fail) a key id the keys lack may be one the cluster
    began to sign with since: the client is asked to retry, not refused for good, and nothing is reviewed."""
    token = jwt(OTHER, alg="ES256", kid="rotated-in")
    reviewer, before = FakeTokenReviewer(reviews={token: GRANTED}), unknown_keys()
    source = Source(cluster_keys())
    auth = kube(reviewer, source)
    with pytest.raises(AuthenticatorUnavailable) as retry:
        await auth.authenticate(bearer(token))
    assert str(retry.value) == (
        "bearer token names an issuer key the cluster did not publish when its keys were last fetched "
        "(kid 'rotated-in', alg 'ES256': the cluster publishes no such key); "
        "they are fetched again at most every 30 s: retry then"
    )
    assert reviewer.asked == [] and unknown_keys() - before == 1 and source.refreshes == 1
    source.after_refresh = IssuerKeys.from_jwks({"keys": [ec_jwk(P256, "p256"), ec_jwk(OTHER, "rotated-in")]})
    caller = await auth.authenticate(bearer(token))
    assert caller.identities == ("spiffe://cluster.local/ns/shop/sa/cart",) and len(reviewer.asked) == 1


async def test_without_keys_every_token_is_reviewed() -> None:
    token = jwt(OTHER, alg="ES256", kid="p256")
    reviewer = FakeTokenReviewer()
    with pytest.raises(AuthenticationError, match="invalid bearer token"):
        await kube(reviewer, Source(None)).authenticate(bearer(token))
    assert len(reviewer.asked) == 1


async def test_unchecked_algorithms_are_left_to_the_review() -> None:
    token = jwt(None, alg="PS256", kid="p256")
    reviewer = FakeTokenReviewer(reviews={token: GRANTED})
    await kube(reviewer, Source(cluster_keys())).authenticate(bearer(token))
    assert len(reviewer.asked) == 1


def bad_claims() -> float:
    return REGISTRY.get_sample_value("meshplane_ca_token_reviews_total", {"outcome": "bad_claims"}) or 0.0


async def test_a_signed_token_for_another_audience_is_refused_without_a_review() -> None:
    """The pod's default token is signed by the cluster but is for the API server: the review could only
    say no, so the CA says why at once and costs the API server nothing."""
    token = jwt(P256, alg="ES256", kid="p256", aud=["https://kubernetes.default.svc.cluster.local"])
    reviewer, before = FakeTokenReviewer(reviews={token: GRANTED}), bad_claims()
    with pytest.raises(AuthenticationError) as refused:
        await kube(reviewer, Source(cluster_keys())).authenticate(bearer(token))
    assert str(refused.value) == (
        "bearer token's audiences ['https://kubernetes.default.svc.cluster.local'] do not include 'istio-ca': a "
        "token for another audience (such as the pod's default token, which is for the API server) is not "
        "accepted here; mount a projected service-account token with audience 'istio-ca'"
    )
    assert not refused.value.unavailable and reviewer.asked == [] and bad_claims() - before == 1
    many = jwt(P256, alg="ES256", kid="p256", aud=[f"aud-{n}" for n in range(8)])
    with pytest.raises(AuthenticationError, match=r"audiences \['aud-0', 'aud-1', 'aud-2', 'aud-3', 'aud-4'\] do"):
        await kube(reviewer, Source(cluster_keys())).authenticate(bearer(many))
    other = jwt(P256, alg="ES256", kid="p256", aud="other")  # RFC 7519: one audience may be a string
    with pytest.raises(AuthenticationError, match=r"audiences \['other'\] do not include 'istio-ca'"):
        await kube(reviewer, Source(cluster_keys())).authenticate(bearer(other))
    assert reviewer.asked == []
    one = jwt(P256, alg="ES256", kid="p256", aud="istio-ca")
    reviewer.reviews[one] = GRANTED
    assert (await kube(reviewer, Source(cluster_keys())).authenticate(bearer(one))).identities


@pytest.mark.parametrize(
    ("sub", "why"),
    [
        ("system:node:worker-1", "username 'system:node:worker-1' is not a service account"),
        ("system:serviceaccount:shop\n:cart", "namespace"),
        ("system:serviceaccount:shop:cart:extra", "is not system:serviceaccount:<ns>:<sa>"),
        (None, "bearer token's subject None is not a service account"),
        (["system:serviceaccount:shop:cart"], "bearer token's subject ['system:serviceaccount:shop:cart'] is not a"),
        (["x" * 96], f"bearer token's subject ['{'x' * 96}'] is not a service account"),  # 100 characters: whole
        (
            "system:serviceaccount:shop:" + "c" * 5000,
            f"bearer token's subject 'system:serviceaccount:shop:{'c' * 72}... (5029 characters) is not a service",
        ),
        # the longest username a service account can have, one character too long
        (
            f"system:serviceaccount:{'n' * 63}:{'s' * 254}",
            f"subject 'system:serviceaccount:{'n' * 63}:{'s' * 13}... (342 characters) is",
        ),
        (f"system:serviceaccount:{'n' * 64}:s", "namespace"),
    ],
)
async def test_a_signed_token_whose_subject_is_no_service_account_is_refused_without_a_review(
    sub: object, why: str
) -> None:
    token = jwt(P256, alg="ES256", kid="p256", sub=sub)
    reviewer = FakeTokenReviewer(reviews={token: GRANTED})
    with pytest.raises(AuthenticationError, match="bearer token's subject") as refused:
        await kube(reviewer, Source(cluster_keys())).authenticate(bearer(token))
    assert why in str(refused.value) and len(str(refused.value)) < 500
    assert reviewer.asked == []


async def test_a_signed_token_of_the_longest_service_account_name_is_reviewed() -> None:
    longest = f"system:serviceaccount:{'n' * 63}:{'s' * 253}"
    token = jwt(P256, alg="ES256", kid="p256", sub=longest)
    reviewer = FakeTokenReviewer(
        reviews={token: TokenReview(authenticated=True, username=longest, audiences=("istio-ca",))}
    )
    caller = await kube(reviewer, Source(cluster_keys())).authenticate(bearer(token))
    assert caller.identities == (f"spiffe://cluster.local/ns/{'n' * 63}/sa/{'s' * 253}",) and len(reviewer.asked) == 1


async def test_a_signed_token_without_aud_is_left_to_the_review() -> None:
    """A legacy Secret-based token has no `aud`; only the API server knows whether it is good here."""
    token = jwt(RSA, alg="RS256", kid="rsa", aud=None, exp=None)
    reviewer = FakeTokenReviewer(reviews={token: GRANTED})
    await kube(reviewer, Source(cluster_keys())).authenticate(bearer(token))
    assert len(reviewer.asked) == 1


def service_account_token(sa: str) -> str:
    """A token the cluster signed for shop/`sa`; a new one every call (ECDSA signatures differ)."""
    return jwt(P256, alg="ES256", kid="p256", sub=f"system:serviceaccount:shop:{sa}")


async def spend_budget(auth: KubeJwtAuthenticator, sa: str, client: str) -> int:
    """Send revoked tokens of `sa` from `client` until one is refused unreviewed; how many were reviewed."""
    for n in range(100):
        try:
            await auth.authenticate(bearer(service_account_token(sa), client))
        except ReviewRefused:
            return n
        except AuthenticationError:
            continue
    raise AssertionError(f"{sa} at {client} was never refused")


@pytest.mark.parametrize("verified", [True, False])
async def test_behind_one_address_a_failing_service_account_spends_only_its_own_review_budget(verified: bool) -> None:
    """Pods behind SNAT (or host-network pods) share an address. One whose tokens keep failing review (its
    pod deleted) must not get its neighbours of other service accounts refused: with the cluster's keys
    each service account has its own budget. Without them the token's `sub` is unverified, the client's to
    choose, so the address alone counts."""
    reviewer = FakeTokenReviewer()
    auth = KubeJwtAuthenticator(
        reviewer=reviewer,
        keys=Source(cluster_keys() if verified else None),
        trust_domain="cluster.local",
        cluster_id="Kubernetes",
        gate=ReviewGate(burst=3, clock=lambda: 0.0),
        review_ttl_s=0.0,
        clock=lambda: NOW,
    )
    assert await spend_budget(auth, "ghost", "192.0.2.1") == 3
    with pytest.raises(ReviewRefused) as refused:
        await auth.authenticate(bearer(service_account_token("ghost"), "192.0.2.1"))
    owner = "192.0.2.1 as system:serviceaccount:shop:ghost" if verified else "192.0.2.1"
    assert f"too many failed token reviews from client {owner} (at most 3" in str(refused.value)
    good = service_account_token("cart")
    reviewer.reviews[good] = GRANTED
    if verified:
        caller = await auth.authenticate(bearer(good, "192.0.2.1"))
        assert caller.identities == ("spiffe://cluster.local/ns/shop/sa/cart",)
    else:
        with pytest.raises(ReviewRefused):
            await auth.authenticate(bearer(good, "192.0.2.1"))
    # Another address is untouched either way.
    assert (await auth.authenticate(bearer(good, "192.0.2.2"))).identities
