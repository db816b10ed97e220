"""What the CA answers, word for word, when it refuses: the status, the message a workload's agent
logs, and the `citadel_server_csr_sign_error_count` reason an operator alerts on."""

from __future__ import annotations

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from certs import metrics
from certs.authenticate import Caller, Credentials
from certs.ca import CertificateAuthority
from certs.service import CaError, CertificateService
from tests.certs.helpers import make_csr, make_root, spiffe, tamper_signature


class IdentitylessAuthenticator:
    """An authenticator that accepts a caller without naming any identity (a plug-in could)."""

    name = "identityless"

    async def authenticate(self, credentials: Credentials) -> Caller:
        return Caller(source=self.name, identities=())


def service() -> CertificateService:
    return CertificateService(ca=CertificateAuthority(make_root()), authenticators=[IdentitylessAuthenticator()])


async def refusal(csr: str) -> tuple[grpc.StatusCode, str, dict[str, float]]:
    reasons = ("no_identity", "malformed_csr", "invalid_identity", "bad_signature", "multiple_identities")
    before = {r: metrics.csr_sign_error_count.value(reason=r) for r in reasons}
    with pytest.raises(CaError) as refused:
        await service().create_certificate(csr=csr, validity_seconds=0, credentials=Credentials(metadata={}))
    counted = {r: metrics.csr_sign_error_count.value(reason=r) - before[r] for r in reasons}
    return refused.value.code, str(refused.value), {r: n for r, n in counted.items() if n}


async def test_a_caller_authenticated_without_any_identity_gets_no_certificate() -> None:
    csr, _ = make_csr()
    assert await refusal(csr) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "the caller is authenticated but has no identity",
        {"no_identity": 1},
    )


async def test_an_empty_csr_is_refused_naming_what_was_expected() -> None:
    assert await refusal("  \n") == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "csr: empty; expected a PEM CERTIFICATE REQUEST",
        {"malformed_csr": 1},
    )


async def test_a_csr_for_a_bad_trust_domain_is_refused_naming_the_allowed_characters() -> None:
    csr, _ = make_csr(uris=["spiffe://Cluster.Local/ns/shop/sa/cart"])
    assert await refusal(csr) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "csr: URI SAN: trust domain 'Cluster.Local' of 'spiffe://Cluster.Local/ns/shop/sa/cart' is not a SPIFFE "
        "trust domain (lowercase letters, digits, '.', '-' and '_')",
        {"invalid_identity": 1},
    )


async def test_a_csr_whose_signature_does_not_verify_is_refused_saying_so() -> None:
    csr, _ = make_csr()
    assert await refusal(tamper_signature(csr)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "csr: signature does not verify with the CSR's own public key",
        {"bad_signature": 1},
    )


async def test_a_csr_with_an_unparseable_extension_is_malformed() -> None:
    junk_san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\x01\x01\xff")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]))
        .add_extension(junk_san, critical=False)
        .sign(key, hashes.SHA256())
    )
    code, message, counted = await refusal(csr.public_bytes(serialization.Encoding.PEM).decode())
    assert (code, counted) == (grpc.StatusCode.INVALID_ARGUMENT, {"malformed_csr": 1})
    assert message.startswith("csr: cannot parse its extensions: ")


async def test_a_csr_asking_for_two_identities_is_refused_listing_both() -> None:
    csr, _ = make_csr(uris=[spiffe("shop", "cart"), spiffe("shop", "admin")])
    assert await refusal(csr) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "csr: asks for 2 URI SANs (spiffe://cluster.local/ns/shop/sa/cart, spiffe://cluster.local/ns/shop/sa/admin); "
        "at most one is allowed",
        {"multiple_identities": 1},
    )
