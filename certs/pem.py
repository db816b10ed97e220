"""Small helpers around `cryptography` for PEM encoding and key generation."""

from __future__ import annotations

import os
import pathlib
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


KEY_ALGORITHMS = ("ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096")


def key_algorithm(key: PrivateKey) -> str:
    """The name `generate_key` would use for a key like `key` (e.g. `rsa-2048`, `ecdsa-p256`)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(key.curve.name, f"ecdsa-{key.curve.name}")


def generate_key(algorithm: str = "ecdsa-p256") -> PrivateKey:
    """`ecdsa-p256` (default), `rsa-2048`, `rsa-3072` or `rsa-4096`."""
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm.startswith("rsa-") and algorithm[4:] in {"2048", "3072", "4096"}:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[4:]))
    raise ValueError(f"key algorithm {algorithm!r} is not one of ecdsa-p256, rsa-2048, rsa-3072, rsa-4096")


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError(f"unsupported CA key type {type(key).__name__}; use ECDSA or RSA")
    return key


def write_atomic(path: pathlib.Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write via a temp file and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def chain_pem(certs: list[x509.Certificate]) -> bytes:
    """Concatenated PEM of `certs`, in order."""
    return b"".join(cert_pem(c) for c in certs)


def load_certificates(data: bytes, *, source: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order.

    Raises ValueError naming `source` when the data holds no certificate or one does not parse.
    """
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{source}: not a PEM certificate bundle: {exc}") from None
    if not certs:
        raise ValueError(f"{source}: holds no certificate")
    return certs
