"""CSR checks, TTL rules and the shape of issued certificates (pure functions, no transport)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.signing import (
    Refusal,
    SigningPolicy,
    SigningRefused,
    check_csr,
    choose_identities,
    resolve_ttl,
    sign,
)
from tests.certs.helpers import make_csr, make_root, rsa_key, spiffe, tamper_signature

POLICY = SigningPolicy()
ME = spiffe("default", "app")


def refused(pem: str) -> SigningRefused:
    with pytest.raises(SigningRefused) as info:
        check_csr(pem, policy=POLICY)
    return info.value


def test_a_p256_csr_asking_for_one_identity_is_accepted() -> None:
    pem, _ = make_csr(uris=[ME])
    assert check_csr(pem, policy=POLICY).requested_identity == ME


def test_a_csr_without_identity_asks_for_none() -> None:
    pem, _ = make_csr(dns=["ignored.example"])
    assert check_csr(pem, policy=POLICY).requested_identity is None


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP384R1()), rsa_key(2048)], ids=["p384", "rsa2048"])
def test_p384_and_rsa2048_keys_are_accepted(key: object) -> None:
    pem, _ = make_csr(key=key)  # type: ignore[arg-type]
    check_csr(pem, policy=POLICY)


@pytest.mark.parametrize(
    ("text", "reason", "needle"),
    [
        ("", "malformed_csr", "empty"),
        ("hello", "malformed_csr", "not PEM"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "malformed_csr",
            "cannot parse",
        ),
    ],
    ids=["empty", "not-pem", "bad-der"],
)
def test_malformed_pem_is_invalid(text: str, reason: str, needle: str) -> None:
    exc = refused(text)
    assert (exc.refusal, exc.reason) == (Refusal.INVALID, reason)
    assert needle in str(exc) and str(exc).startswith("csr:")


def test_a_csr_with_a_bad_signature_is_invalid() -> None:
    pem, _ = make_csr(uris=[ME])
    exc = refused(tamper_signature(pem))
    assert exc.reason == "bad_signature"
    assert "signature does not verify" in str(exc)


def test_rsa_1024_is_too_weak() -> None:
    pem, _ = make_csr(key=rsa_key(1024))
    exc = refused(pem)
    assert exc.reason == "weak_key"
    assert "1024 bits" in str(exc)


def test_an_unsupported_curve_is_refused_by_name() -> None:
    pem, _ = make_csr(key=ec.generate_private_key(ec.SECP521R1()))
    exc = refused(pem)
    assert exc.reason == "unsupported_key"
    assert "secp521r1" in str(exc)


def test_ed25519_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "t")]))
        .sign(key, None)
    )
    from cryptography.hazmat.primitives import serialization

    exc = refused(csr.public_bytes(serialization.Encoding.PEM).decode())
    assert exc.reason == "unsupported_key"
    assert "Ed25519" in str(exc)


def test_several_uri_sans_are_invalid_and_listed() -> None:
    other = spiffe("default", "other")
    pem, _ = make_csr(uris=[ME, other])
    exc = refused(pem)
    assert exc.reason == "multiple_identities"
    assert ME in str(exc) and other in str(exc)


def test_a_csr_over_64_kib_is_invalid_before_parsing() -> None:
    pem, _ = make_csr(uris=[ME])
    padded = pem + "#" * (64 * 1024)
    exc = refused(padded)
    assert exc.reason == "csr_too_large"
    assert "65536" in str(exc)


def test_a_csr_of_exactly_the_limit_is_not_refused_for_size() -> None:
    pem, _ = make_csr(uris=[ME])
    policy = SigningPolicy(max_csr_bytes=len(pem))
    check_csr(pem, policy=policy)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, dt.timedelta(hours=24)), (1, dt.timedelta(seconds=1)), (90 * 86400, dt.timedelta(days=90))],
)
def test_ttl_zero_is_the_default_and_up_to_90_days_is_allowed(seconds: int, expected: dt.timedelta) -> None:
    assert resolve_ttl(seconds, policy=POLICY) == expected


@pytest.mark.parametrize("seconds", [-1, -(2**63), 90 * 86400 + 1, 2**63 - 1])
def test_negative_or_above_maximum_ttl_is_invalid_not_clamped(seconds: int) -> None:
    with pytest.raises(SigningRefused) as info:
        resolve_ttl(seconds, policy=POLICY)
    assert info.value.reason == "invalid_ttl"
    assert str(info.value).startswith("validity_duration:")


def test_the_maximum_ttl_is_configurable() -> None:
    policy = SigningPolicy(max_ttl=dt.timedelta(hours=1))
    with pytest.raises(SigningRefused, match="maximum of 3600 s"):
        resolve_ttl(3601, policy=policy)


def test_asking_for_another_identity_is_forbidden_naming_both() -> None:
    other = spiffe("prod", "db")
    with pytest.raises(SigningRefused) as info:
        choose_identities(other, caller_identities=(ME,))
    assert info.value.refusal is Refusal.FORBIDDEN
    assert other in str(info.value) and ME in str(info.value)


def test_no_requested_identity_gets_the_callers() -> None:
    assert choose_identities(None, caller_identities=(ME,)) == (ME,)


def test_issued_leaf_has_istios_shape() -> None:
    authority = make_root()
    pem, key = make_csr(uris=[ME])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    chain = sign(authority, check_csr(pem, policy=POLICY), identities=(ME,), ttl=dt.timedelta(hours=24), now=now)
    leaf = chain[0]
    assert chain[-1] == authority.cert
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert leaf.not_valid_before_utc == now - dt.timedelta(minutes=2)
    assert leaf.not_valid_after_utc == now + dt.timedelta(hours=24)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [ME]
    assert san.value.get_values_for_type(x509.DNSName) == []
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(authority.cert)


def test_leaf_never_outlives_its_signer() -> None:
    authority = make_root(lifetime=dt.timedelta(hours=1))
    pem, _ = make_csr()
    chain = sign(authority, check_csr(pem, policy=POLICY), identities=(ME,), ttl=dt.timedelta(days=30))
    assert chain[0].not_valid_after_utc == authority.cert.not_valid_after_utc


def test_serials_are_random_and_distinct() -> None:
    authority = make_root()
    pem, _ = make_csr()
    checked = check_csr(pem, policy=POLICY)
    serials = {
        sign(authority, checked, identities=(ME,), ttl=dt.timedelta(hours=1))[0].serial_number for _ in range(50)
    }
    assert len(serials) == 50
    assert max(s.bit_length() for s in serials) > 100  # 128 random bits, not a counter
