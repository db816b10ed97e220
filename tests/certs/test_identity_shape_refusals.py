"""Identity shapes the CA must refuse, and say why: a SPIFFE ID with `ns` but not `sa`, a bad service
account name in a CSR, a TokenReview username with too many parts; and a bearer header with two
spaces, which some clients send and which must still authenticate."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authenticate import AuthenticationError, Credentials
from certs.authenticate.kubejwt import KubeJwtAuthenticator, TokenReview
from certs.authenticate.localtoken import LocalTokenAuthenticator, mint
from certs.signing import Refusal, SigningPolicy, SigningRefused, check_csr
from tests.certs.fakes import FakeTokenReviewer, T
from tests.certs.helpers import make_csr, spiffe


def refused(uri: str) -> SigningRefused:
    with pytest.raises(SigningRefused) as caught:
        check_csr(make_csr(uris=[uri])[0], policy=SigningPolicy())
    return caught.value


def test_a_spiffe_id_naming_a_namespace_but_no_service_account_segment_is_invalid() -> None:
    error = refused("spiffe://cluster.local/ns/shop/xx/web")
    assert (error.refusal, error.reason) == (Refusal.INVALID, "invalid_identity")
    assert str(error) == (
        "csr: URI SAN: 'spiffe://cluster.local/ns/shop/xx/web' is not "
        "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )


def test_a_bad_service_account_name_in_a_csr_is_named_as_the_uri_sans_service_account() -> None:
    error = refused(spiffe("shop", "Web_Frontend"))
    assert error.reason == "invalid_identity"
    assert str(error).startswith("csr: URI SAN service account: 'Web_Frontend'"), str(error)


async def test_a_reviewed_username_with_too_many_parts_is_refused_naming_it() -> None:
    username = "system:serviceaccount:shop:cart:extra"
    reviewer = FakeTokenReviewer(
        reviews={T: TokenReview(authenticated=True, username=username, audiences=("istio-ca",))}
    )
    authenticator = KubeJwtAuthenticator(reviewer=reviewer, trust_domain="cluster.local", cluster_id="Kubernetes")
    with pytest.raises(AuthenticationError) as caught:
        await authenticator.authenticate(Credentials(metadata={"authorization": f"Bearer {T}"}))
    assert f"username {username!r} is not system:serviceaccount:<ns>:<sa>" in str(caught.value)


@pytest.mark.parametrize("header", ["Bearer  {t}", "bearer {t}", "  Bearer {t}  "])
async def test_a_bearer_header_with_extra_spaces_or_lower_case_still_authenticates(header: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    token = mint(key=key, namespace="shop", service_account="cart", ttl=dt.timedelta(hours=1), now=now)
    authenticator = LocalTokenAuthenticator(public_key=key.public_key(), trust_domain="cluster.local")
    caller = await authenticator.authenticate(Credentials(metadata={"authorization": header.format(t=token)}))
    assert caller.identities == (spiffe("shop", "cart"),)
