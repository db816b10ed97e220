"""What the CA's certificates say about themselves: a leaf's IP addresses and that it is no CA, which
extensions are critical, and the signature hash that matches the signing key."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authority import self_signed_root
from certs.pem import generate_key
from tests.certs.helpers import make_root


def test_a_leaf_for_ip_addresses_names_them_and_cannot_sign_certificates() -> None:
    leaf = make_root().issue(
        public_key=generate_key().public_key(), ttl=dt.timedelta(hours=1), ips=("127.0.0.1", "::1"), dns_names=("a",)
    )[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (constraints.critical, constraints.value.ca) == (True, False)


def criticality(cert: x509.Certificate) -> dict[str, bool]:
    return {type(e.value).__name__: e.critical for e in cert.extensions}


def test_roots_and_leaves_mark_exactly_the_extensions_a_verifier_must_understand_as_critical() -> None:
    root = make_root()
    assert criticality(root.cert) == {"BasicConstraints": True, "KeyUsage": True, "SubjectKeyIdentifier": False}
    leaf = root.issue(
        public_key=generate_key().public_key(), ttl=dt.timedelta(hours=1), uris=("spiffe://td/ns/a/sa/b",)
    )[0]
    marks = criticality(leaf)
    # The subject is empty, so the identity lives in a critical subjectAltName (RFC 5280 4.2.1.6).
    assert (
        marks["BasicConstraints"],
        marks["KeyUsage"],
        marks["ExtendedKeyUsage"],
        marks["SubjectAlternativeName"],
    ) == (
        True,
        True,
        False,
        True,
    )


@pytest.mark.parametrize(
    ("key", "hash_name"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), "sha384"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "sha256"),
        (lambda: generate_key("rsa-2048"), "sha256"),
    ],
    ids=["p384", "p256", "rsa"],
)
def test_a_root_is_signed_with_the_hash_that_matches_its_key(key: object, hash_name: str) -> None:
    root = self_signed_root(key(), org="cluster.local")  # type: ignore[operator]
    assert root.signature_hash_algorithm is not None and root.signature_hash_algorithm.name == hash_name
