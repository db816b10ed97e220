"""CSRs whose key the CA cannot or will not use: refused as INVALID_ARGUMENT with a message naming the
key and the `citadel_server_csr_sign_error_count` reason `unsupported_key`, never signed."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from certs import metrics
from certs.authenticate import Caller, Credentials
from certs.ca import CertificateAuthority
from certs.service import CaError, CertificateService
from tests.certs.helpers import make_root, spiffe

SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])


class Cart:
    name = "cart"

    async def authenticate(self, credentials: Credentials) -> Caller:
        return Caller(source=self.name, identities=(spiffe("shop", "cart"),))


def to_pem(der: bytes) -> str:
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{base64.encodebytes(der).decode()}-----END CERTIFICATE REQUEST-----\n"


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    size = (
        bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8)
    )
    return bytes([tag]) + size + body


def _integer(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1))


def oversized_rsa_csr(bits: int, *, exponent: int = 65537) -> str:
    """A CSR carrying an RSA public key of `bits` bits (its signature is junk: the key is checked first)."""
    modulus = (1 << (bits - 1)) | 1  # the right size; nobody holds its private key, nobody needs it
    rsa_encryption = _tlv(0x30, bytes.fromhex("06092a864886f70d0101010500"))
    spki = _tlv(0x30, rsa_encryption + _tlv(0x03, b"\x00" + _tlv(0x30, _integer(modulus) + _integer(exponent))))
    info = _tlv(0x30, b"\x02\x01\x00" + SUBJECT.public_bytes() + spki + b"\xa0\x00")
    sha256_with_rsa = _tlv(0x30, bytes.fromhex("06092a864886f70d01010b0500"))
    return to_pem(_tlv(0x30, info + sha256_with_rsa + _tlv(0x03, b"\x00" + bytes(bits // 8))))


def ed25519_csr() -> str:
    csr = x509.CertificateSigningRequestBuilder().subject_name(SUBJECT).sign(ed25519.Ed25519PrivateKey.generate(), None)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def off_curve_csr() -> str:
    """A P-256 CSR whose public point was flipped by one bit, so it is no point of the curve."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = x509.CertificateSigningRequestBuilder().subject_name(SUBJECT).sign(key, hashes.SHA256())
    der_bytes = der.public_bytes(serialization.Encoding.DER)
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return to_pem(der_bytes.replace(point, point[:-1] + bytes([point[-1] ^ 1])))


def unknown_algorithm_csr() -> str:
    """A P-256 CSR whose key's algorithm OID (id-ecPublicKey) was changed into one no library knows."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = x509.CertificateSigningRequestBuilder().subject_name(SUBJECT).sign(key, hashes.SHA256())
    id_ec_public_key = bytes.fromhex("06072a8648ce3d0201")
    der_bytes = der.public_bytes(serialization.Encoding.DER)
    assert der_bytes.count(id_ec_public_key) == 1
    return to_pem(der_bytes.replace(id_ec_public_key, bytes.fromhex("06072a8648ce3d027f")))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: oversized_rsa_csr(8200), "csr: RSA key of 8200 bits exceeds the 8192-bit maximum"),
        (
            lambda: oversized_rsa_csr(3072, exponent=(1 << 3000) + 1),
            "csr: RSA public exponent of 3001 bits is not supported; Envoy (BoringSSL) uses odd exponents"
            " of 2 to 33 bits, such as 65537",
        ),
        (
            lambda: oversized_rsa_csr(2048, exponent=(1 << 33) + 1),
            "csr: RSA public exponent of 34 bits is not supported; Envoy (BoringSSL) uses odd exponents"
            " of 2 to 33 bits, such as 65537",
        ),
        (
            lambda: oversized_rsa_csr(2048, exponent=65538),
            "csr: unsupported public key: e must be odd.",
        ),
        (
            lambda: oversized_rsa_csr(2048, exponent=1),
            "csr: unsupported public key: e must be >= 3 and < n.",
        ),
        (ed25519_csr, "csr: Ed25519PublicKey keys are not supported; use ECDSA P-256/P-384 or RSA >= 2048"),
        (off_curve_csr, "csr: unsupported public key: Invalid key"),
        (unknown_algorithm_csr, "csr: unsupported public key: Unknown key type: 1.2.840.10045.2.127"),
    ],
    ids=[
        "rsa-over-8192-bits",
        "rsa-3001-bit-exponent",
        "rsa-34-bit-exponent",
        "rsa-even-exponent",
        "rsa-exponent-1",
        "ed25519",
        "ec-point-off-the-curve",
        "unknown-key-algorithm",
    ],
)
async def test_a_csr_with_a_key_the_ca_does_not_use_is_refused_by_name(build: object, message: str) -> None:
    service = CertificateService(ca=CertificateAuthority(make_root()), authenticators=[Cart()])
    before = metrics.csr_sign_error_count.value(reason="unsupported_key")
    with pytest.raises(CaError) as refused:
        await service.create_certificate(csr=build(), validity_seconds=0, credentials=Credentials(metadata={}))  # type: ignore[operator]
    assert (refused.value.code.name, str(refused.value)) == ("INVALID_ARGUMENT", message)
    assert metrics.csr_sign_error_count.value(reason="unsupported_key") == before + 1


async def test_an_rsa_key_of_exactly_8192_bits_is_within_the_limit() -> None:
    service = CertificateService(ca=CertificateAuthority(make_root()), authenticators=[Cart()])
    with pytest.raises(CaError) as refused:  # its junk signature is the next check, and the only reason
        await service.create_certificate(
            csr=oversized_rsa_csr(8192), validity_seconds=0, credentials=Credentials(metadata={})
        )
    assert str(refused.value) == "csr: signature does not verify with the CSR's own public key"


async def test_an_rsa_exponent_of_exactly_33_bits_is_within_the_limit() -> None:
    service = CertificateService(ca=CertificateAuthority(make_root()), authenticators=[Cart()])
    with pytest.raises(CaError) as refused:  # its junk signature is the next check, and the only reason
        await service.create_certificate(
            csr=oversized_rsa_csr(2048, exponent=(1 << 32) + 1),
            validity_seconds=0,
            credentials=Credentials(metadata={}),
        )
    assert str(refused.value) == "csr: signature does not verify with the CSR's own public key"
