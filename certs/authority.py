"""The CA's key material and the certificates it issues directly.

Local mode keeps the self-signed root in the state dir: `ca-key.pem` (mode 0600), `ca-cert.pem`,
and `root-cert.pem` (the trust bundle clients verify against). The same files are reused on
restart, so certificates issued before a restart keep verifying.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import pathlib
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.pem import PrivateKey, cert_pem, generate_key, key_pem, load_key, write_atomic

log = logging.getLogger(__name__)

ROOT_LIFETIME = dt.timedelta(days=3650)
BACKDATE = dt.timedelta(minutes=2)
ORGANIZATION = "cluster.local"


class KeyMaterialError(RuntimeError):
    """The CA's files exist but cannot be used; the message names the file and the problem."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _serial() -> int:
    return secrets.randbits(127) | 1  # positive, non-zero, 128-bit-sized


def _sig_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    return hashes.SHA256()


def self_signed_root(
    key: PrivateKey,
    *,
    org: str,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta = ROOT_LIFETIME,
) -> x509.Certificate:
    now = now or _now()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _sig_hash(key))
    )


@dataclass
class Authority:
    """A signer (key + certificate) and the chain from it up to the root, root last."""

    key: PrivateKey
    cert: x509.Certificate
    chain: list[x509.Certificate]  # signer's issuers, not including `cert`; empty for a root signer
    roots: list[x509.Certificate]  # the trust bundle

    @property
    def root_pem(self) -> bytes:
        return b"".join(cert_pem(c) for c in self.roots)

    def issue(
        self,
        *,
        public_key: object,
        ttl: dt.timedelta,
        dns_names: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        now: dt.datetime | None = None,
    ) -> list[x509.Certificate]:
        """Sign a leaf for `public_key` and return the chain, leaf first, root last.

        NotBefore is backdated 2 minutes for clock skew; NotAfter never passes the signer's.
        """
        import ipaddress

        now = now or _now()
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
        leaf = builder.sign(self.key, _sig_hash(self.key))
        return [leaf, self.cert, *self.chain]


class FileKeyStore:
    """Self-signed root persisted in a directory (local mode)."""

    def __init__(self, directory: pathlib.Path, *, org: str = ORGANIZATION, algorithm: str = "ecdsa-p256") -> None:
        self.directory = directory
        self.org = org
        self.algorithm = algorithm

    @property
    def root_cert_path(self) -> pathlib.Path:
        return self.directory / "root-cert.pem"

    def load_or_create(self) -> Authority:
        key_path = self.directory / "ca-key.pem"
        cert_path = self.directory / "ca-cert.pem"
        if key_path.exists() or cert_path.exists():
            return self._load(key_path, cert_path)
        self.directory.mkdir(parents=True, exist_ok=True)
        key = generate_key(self.algorithm)
        cert = self_signed_root(key, org=self.org)
        write_atomic(key_path, key_pem(key), mode=0o600)
        write_atomic(cert_path, cert_pem(cert))
        write_atomic(self.root_cert_path, cert_pem(cert))
        log.info(
            "created self-signed root CA",
            extra={"dir": str(self.directory), "not_after": cert.not_valid_after_utc.isoformat()},
        )
        return Authority(key=key, cert=cert, chain=[], roots=[cert])

    def _load(self, key_path: pathlib.Path, cert_path: pathlib.Path) -> Authority:
        for path in (key_path, cert_path):
            if not path.exists():
                raise KeyMaterialError(
                    f"{path} is missing but its pair exists; restore it or remove both to start a new CA"
                )
        mode = os.stat(key_path).st_mode & 0o777
        if mode & 0o077:
            raise KeyMaterialError(
                f"{key_path} has mode {mode:o}; the CA key must not be readable by others (chmod 600)"
            )
        try:
            key = load_key(key_path.read_bytes())
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as exc:
            raise KeyMaterialError(f"{self.directory}: cannot parse CA key material: {exc}") from exc
        if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
            raise KeyMaterialError(f"{cert_path} does not match {key_path}")
        if not self.root_cert_path.exists():
            write_atomic(self.root_cert_path, cert_pem(cert))
        log.info(
            "loaded root CA",
            extra={"dir": str(self.directory), "not_after": cert.not_valid_after_utc.isoformat()},
        )
        return Authority(key=key, cert=cert, chain=[], roots=[cert])
