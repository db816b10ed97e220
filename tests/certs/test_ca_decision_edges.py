"""CA edges: the trust bundle after roots expire, and who the secure xDS port thinks a caller is."""

from __future__ import annotations

import datetime as dt
import pathlib
from collections.abc import Mapping, Sequence

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from certs.authenticate import AuthenticationError, Credentials
from certs.authenticate.kubejwt import KubeJwtAuthenticator, TokenReview
from certs.authenticate.localtoken import LocalTokenAuthenticator, load_or_create_key, mint
from certs.authority import BACKDATE, Authority, KeyMaterialError, life_remaining, self_signed_root
from certs.ca import CertificateAuthority
from certs.pem import generate_key
from certs.service import CaError, CertificateService
from certs.signing import SigningPolicy, SigningRefused, check_csr, choose_identities, sign
from tests.certs.fakes import FakeTokenReviewer, T
from tests.certs.helpers import make_csr, make_root, spiffe

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def intermediate_under(root: Authority) -> Authority:
    """An operator-supplied (plug-in) intermediate signer under `root`, as `cacerts` provides."""
    key = generate_key("ecdsa-p256")
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "intermediate")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    expired = make_root(lifetime=dt.timedelta(days=1), now=NOW - dt.timedelta(days=3)).cert
    other = make_root(now=NOW - dt.timedelta(days=1)).cert
    return Authority(key=key, cert=cert, chain=(root.cert,), roots=(root.cert, expired, other), plugin=True)


def test_dropping_expired_roots_keeps_the_signer_its_chain_and_every_unexpired_root() -> None:
    root = make_root(now=NOW - dt.timedelta(days=1))
    signer = intermediate_under(root)
    pruned = signer.without_expired_roots(now=NOW)
    assert pruned.roots == (signer.roots[0], signer.roots[2])  # the expired one alone is gone, order kept
    assert pruned.plugin and pruned.cert == signer.cert and pruned.chain == signer.chain
    leaf, *tail = pruned.issue(public_key=generate_key().public_key(), ttl=dt.timedelta(hours=1), now=NOW)
    assert tail == [signer.cert, root.cert]
    leaf.verify_directly_issued_by(signer.cert)  # still signed with the intermediate's key


def bearer(token: str) -> Credentials:
    return Credentials(metadata={"authorization": f"Bearer {token}"})


class FakeContext:
    """The two things CertificateService reads from a gRPC call: its metadata and its TLS peer."""

    def __init__(self, metadata: Mapping[str, str]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return list(self._metadata.items())

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        return {}

    def peer(self) -> str:
        return "ipv4:10.1.2.3:40000"


async def test_the_secure_port_learns_the_callers_identity_or_nothing(tmp_path: pathlib.Path) -> None:
    key = load_or_create_key(tmp_path)
    service = CertificateService(
        ca=CertificateAuthority(make_root()),
        authenticators=[LocalTokenAuthenticator(public_key=key.public_key(), trust_domain="cluster.local")],
    )
    token = mint(key=key, namespace="shop", service_account="cart")
    good = FakeContext({"Authorization": f"Bearer {token}"})
    assert await service.identities_of(good) == [spiffe("shop", "cart")]
    assert service.credentials_of(good) == Credentials(metadata={"authorization": f"Bearer {token}"}, client="10.1.2.3")
    forged = FakeContext({"authorization": f"Bearer {token[:-4]}AAAA"})
    assert await service.identities_of(forged) == []


def test_a_plug_in_root_is_never_rotated_even_when_self_signed() -> None:
    root = make_root(now=NOW)
    plugin = Authority(key=root.key, cert=root.cert, roots=root.roots, plugin=True)
    with pytest.raises(KeyMaterialError) as refused:
        plugin.with_rotated_root(now=NOW)
    # the whole message, as the rotation loop logs it to the operator
    assert str(refused.value) == "only a self-signed root is rotated by meshplane; plug-in CA certs are the operator's"


def test_a_rotated_root_starts_at_the_rotation_time_and_drops_expired_roots() -> None:
    current = make_root(now=NOW - dt.timedelta(days=1))
    expired = make_root(lifetime=dt.timedelta(days=1), now=NOW - dt.timedelta(days=3)).cert
    aged = Authority(key=current.key, cert=current.cert, roots=(current.cert, expired))
    rotated = aged.with_rotated_root(now=NOW, lifetime=dt.timedelta(days=30))
    assert rotated.cert.not_valid_before_utc == NOW - BACKDATE
    assert rotated.cert.not_valid_after_utc == NOW + dt.timedelta(days=30)
    assert rotated.roots == (rotated.cert, current.cert)


def test_life_remaining_is_a_fraction_between_0_and_1() -> None:
    root = make_root(now=NOW, lifetime=dt.timedelta(days=10))
    start = root.cert.not_valid_before_utc
    assert life_remaining(root.cert, now=start - dt.timedelta(days=1)) == 1.0  # not yet valid
    assert life_remaining(root.cert, now=NOW + dt.timedelta(days=20)) == 0.0  # expired
    instant = self_signed_root(root.key, org="o", now=NOW, lifetime=-BACKDATE)  # NotBefore == NotAfter
    assert life_remaining(instant, now=NOW - BACKDATE) == 0.0


async def test_with_no_credentials_at_all_each_authenticator_says_what_it_missed(tmp_path: pathlib.Path) -> None:
    key = load_or_create_key(tmp_path)
    service = CertificateService(
        ca=CertificateAuthority(make_root()),
        authenticators=[
            LocalTokenAuthenticator(public_key=key.public_key(), trust_domain="cluster.local"),
            KubeJwtAuthenticator(reviewer=FakeTokenReviewer(), trust_domain="cluster.local", cluster_id="Kubernetes"),
        ],
    )
    with pytest.raises(CaError) as refused:
        await service.authenticate(Credentials())
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert str(refused.value) == "no credentials (local-token: no bearer token; kubernetes-jwt: no bearer token)"


def kube(reviewer: FakeTokenReviewer) -> KubeJwtAuthenticator:
    return KubeJwtAuthenticator(reviewer=reviewer, trust_domain="cluster.local", cluster_id="Kubernetes")


async def test_a_kubernetes_token_caller_is_named_with_how_it_proved_itself() -> None:
    review = TokenReview(authenticated=True, username="system:serviceaccount:shop:cart", audiences=("istio-ca",))
    caller = await kube(FakeTokenReviewer(reviews={T: review})).authenticate(bearer(T))
    assert (caller.source, caller.identities) == ("kubernetes-jwt", (spiffe("shop", "cart"),))


async def test_tokenreview_failures_say_why() -> None:
    with pytest.raises(AuthenticationError, match=r"^TokenReview failed: connection refused$"):
        await kube(FakeTokenReviewer(down=True)).authenticate(bearer(T))
    silent = FakeTokenReviewer(reviews={T: TokenReview(authenticated=False)})
    with pytest.raises(AuthenticationError, match=r"token not authenticated: no reason given$"):
        await kube(silent).authenticate(bearer(T))


def test_a_signed_leaf_starts_at_the_signing_time_and_a_refusal_lists_every_caller_identity() -> None:
    authority = make_root(now=NOW - dt.timedelta(days=1))
    csr = check_csr(make_csr(uris=[spiffe("shop", "admin")])[0], policy=SigningPolicy())
    [leaf, _] = sign(authority, csr, identities=(spiffe("shop", "cart"),), ttl=dt.timedelta(hours=1), now=NOW)
    assert leaf.not_valid_before_utc == NOW - BACKDATE
    mine = (spiffe("shop", "cart"), spiffe("shop", "web"))
    with pytest.raises(SigningRefused) as refused:
        choose_identities(csr.requested_identity, caller_identities=mine)
    assert str(refused.value).endswith(f"authenticated as {mine[0]}, {mine[1]}")
