"""A signer (CA key + certificate), the chain above it, and the certificates it issues.

`Authority` is an immutable value: rotating the root or loading new key material produces a new
`Authority`, and `certs.ca.CertificateAuthority` swaps it in for everyone who signs or serves.
Where the key material lives (a directory, a Kubernetes Secret) is `certs.keystore`'s business.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.pem import PrivateKey, chain_pem

ROOT_LIFETIME = dt.timedelta(days=3650)
BACKDATE = dt.timedelta(minutes=2)
ORGANIZATION = "cluster.local"


class KeyMaterialError(RuntimeError):
    """The CA's key material exists but cannot be used; the message names the file or Secret and the problem."""


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def random_serial() -> int:
    """A random positive serial of up to 128 bits (RFC 5280 allows 20 octets)."""
    return secrets.randbits(128) or 1


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """SHA-384 for a P-384 (or larger) EC key, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_EMPTY_NAME = x509.Name([])
_LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def self_signed_root(
    key: PrivateKey,
    *,
    org: str,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta = ROOT_LIFETIME,
    subject: x509.Name | None = None,
) -> x509.Certificate:
    """A self-signed CA certificate for `key`, valid from `now - 2 min` for `lifetime`.

    `subject` defaults to `O=<org>`; root rotation passes the old root's subject so that
    certificates issued under either root chain to both.
    """
    now = now or now_utc()
    name = subject or x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signature_hash(key))
    )


def life_remaining(cert: x509.Certificate, *, now: dt.datetime) -> float:
    """The fraction of `cert`'s validity period still ahead at `now` (0 once expired, 1 before it starts)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    total = (end - start).total_seconds()
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, (end - now).total_seconds() / total))


@dataclass(frozen=True, kw_only=True)
class Authority:
    """A signer and the certificates above it.

    `chain` holds the signer's issuers up to and including the root (empty when the signer is the
    root itself); `roots` is the trust bundle handed to clients (during a root rotation it holds
    the new root and the old one). `plugin` is true for operator-supplied (`cacerts`) material,
    which meshplane never rotates.
    """

    key: PrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()
    roots: tuple[x509.Certificate, ...]
    plugin: bool = False

    @property
    def root_pem(self) -> bytes:
        """The trust bundle, PEM, newest root first."""
        return chain_pem(list(self.roots))

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    @property
    def self_signed(self) -> bool:
        return not self.chain and self.cert.issuer == self.cert.subject

    @functools.cached_property
    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())

    @functools.cached_property
    def _hash(self) -> hashes.SHA256 | hashes.SHA384:
        return signature_hash(self.key)

    @functools.cached_property
    def _leaf_template(self) -> x509.CertificateBuilder:
        """What every leaf this signer issues shares: names and constant extensions, in their order.

        Builders are immutable, so `issue` adds the per-leaf fields to this one without rebuilding it
        (a third of the Python time of an issuance)."""
        return (
            x509.CertificateBuilder()
            .subject_name(_EMPTY_NAME)
            .issuer_name(self.cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(_LEAF_EKU, critical=False)
            .add_extension(self._authority_key_id, critical=False)
        )

    @functools.cached_property
    def chain_tail_pem(self) -> tuple[str, ...]:
        """PEM of everything after the leaf in an issued chain: the signer, then up to the root."""
        return tuple(chain_pem([c]).decode("ascii") for c in (self.cert, *self.chain))

    def issue(
        self,
        *,
        public_key: CertificatePublicKeyTypes,
        ttl: dt.timedelta,
        dns_names: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        now: dt.datetime | None = None,
    ) -> list[x509.Certificate]:
        """Sign a leaf for `public_key` and return the chain, leaf first, root last.

        NotBefore is backdated 2 minutes for clock skew; NotAfter is `now + ttl` but never past
        the signer's NotAfter. EKU is serverAuth + clientAuth; the serial is 128 random bits.
        The SAN extension (critical, since the subject is empty) holds exactly the given names.
        Raises ValueError for an unparseable IP address.
        """
        now = now or now_utc()
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            self._leaf_template.public_key(public_key)
            .serial_number(random_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
        leaf = builder.sign(self.key, self._hash)
        return [leaf, self.cert, *self.chain]

    def with_rotated_root(self, *, now: dt.datetime, lifetime: dt.timedelta = ROOT_LIFETIME) -> Authority:
        """A new self-signed root from the same key and subject; the bundle keeps the unexpired old roots.

        Certificates issued under the old root keep verifying against the new bundle (and, since
        the key and subject are unchanged, against either root alone). Raises KeyMaterialError for
        plug-in or intermediate signers, which meshplane does not rotate.
        """
        if self.plugin or not self.self_signed:
            raise KeyMaterialError(
                "only a self-signed root is rotated by meshplane; plug-in CA certs are the operator's"
            )
        new_root = self_signed_root(self.key, org="", now=now, lifetime=lifetime, subject=self.cert.subject)
        old = tuple(r for r in self.roots if r.not_valid_after_utc > now and r != new_root)
        return Authority(key=self.key, cert=new_root, chain=(), roots=(new_root, *old))

    def without_expired_roots(self, *, now: dt.datetime) -> Authority:
        """The same signer with expired roots dropped from the bundle (the signer's own root is kept)."""
        keep = tuple(r for r in self.roots if r.not_valid_after_utc > now or r == self.root)
        if keep == self.roots:
            return self
        return Authority(key=self.key, cert=self.cert, chain=self.chain, roots=keep, plugin=self.plugin)

    @property
    def root(self) -> x509.Certificate:
        """The root this signer chains to (the signer itself when self-signed)."""
        return self.chain[-1] if self.chain else self.cert
