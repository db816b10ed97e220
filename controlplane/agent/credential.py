"""The workload's key material: key and CSR generation, and the certificate the CA returned.

A `Credential` is immutable; rotation replaces it whole, so a reader never sees a new
certificate with an old key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CredentialError(ValueError):
    """What the CA returned is not a usable certificate for this workload; the message says why."""


def generate_key(algorithm: str) -> PrivateKey:
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key algorithm {algorithm!r}")


def make_csr(key: PrivateKey, identity: str) -> str:
    """A PEM CSR asking for `identity` as its one URI SAN (Istio's agent does the same)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: PrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def load_roots(pem: bytes, *, source: str) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM bundle. Raises CredentialError naming `source` when there is none."""
    try:
        roots = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise CredentialError(f"{source}: not a PEM certificate bundle ({exc})") from None
    if not roots:
        raise CredentialError(f"{source}: holds no certificate")
    return roots


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class Credential:
    key_pem: bytes
    chain_pem: bytes  # leaf first, then intermediates; the root is not included
    leaf: x509.Certificate
    received: dt.datetime

    @property
    def serial(self) -> str:
        return format(self.leaf.serial_number, "x")

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    def renew_at(self, jitter: float) -> dt.datetime:
        """Half-way through the usable life, `jitter` (0-0.1 of it) earlier.

        The usable life starts when the certificate was received: the CA backdates NotBefore by a few
        minutes, which would make a short-lived certificate look half-spent on arrival.
        """
        start = max(self.not_before, self.received)
        life = self.not_after - start
        return start + life * (0.5 - jitter)


def credential_from_chain(
    chain: list[str], *, key: PrivateKey, identity: str, roots: tuple[x509.Certificate, ...], now: dt.datetime
) -> tuple[Credential, tuple[x509.Certificate, ...]]:
    """Check the CA's answer: the leaf carries our key and identity and chains to a trusted root.

    Returns the credential and the roots the response ended with (the CA's view of the bundle). Raises
    CredentialError: a certificate for the wrong identity or key is never served.
    """
    if not chain:
        raise CredentialError("the CA returned an empty certificate chain")
    try:
        certs = [c for pem in chain for c in x509.load_pem_x509_certificates(pem.encode())]
    except ValueError as exc:
        raise CredentialError(f"the CA returned a chain that is not PEM ({exc})") from None
    if not certs:
        raise CredentialError("the CA returned no certificate")
    leaf = certs[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise CredentialError("the CA returned a certificate for another key")
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris != [identity]:
        raise CredentialError(f"the CA returned a certificate for {uris or 'no identity'}, not {identity}")
    if leaf.not_valid_after_utc <= now:
        raise CredentialError(f"the CA returned a certificate that expired at {leaf.not_valid_after_utc.isoformat()}")
    issuers = certs[1:] + list(roots)
    if not _chains(leaf, issuers, roots):
        raise CredentialError("the CA returned a certificate that does not chain to the trusted root")
    tail = tuple(c for c in certs[1:] if c.issuer == c.subject)
    middle = [c for c in certs if c.issuer != c.subject]
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in middle)
    return Credential(key_pem=key_pem(key), chain_pem=pem, leaf=leaf, received=now), tail


def _chains(cert: x509.Certificate, issuers: list[x509.Certificate], roots: tuple[x509.Certificate, ...]) -> bool:
    """Whether `cert` leads to one of `roots` through `issuers` (signatures checked)."""
    current = cert
    for _ in range(len(issuers) + 1):
        if any(_signed_by(current, root) for root in roots):
            return True
        parent = next((i for i in issuers if i.subject == current.issuer and _signed_by(current, i)), None)
        if parent is None or parent == current:
            return False
        current = parent
    return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _spki(public_key: Any) -> bytes:
    der = serialization.Encoding.DER
    return bytes(public_key.public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo))
