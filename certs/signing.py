"""Checking a workload's CSR and turning it into a certificate chain.

Pure functions over `cryptography` objects; the gRPC service maps `SigningRefused` to a status:
`Refusal.INVALID` -> INVALID_ARGUMENT (the request is wrong whoever sends it) and
`Refusal.FORBIDDEN` -> PERMISSION_DENIED (this caller may not have what it asks for).

Rules (ISTIO-FACTS.md, "Certificate authority"):
- the CSR is PEM PKCS#10, at most 64 KiB, self-signed by the key it carries;
- keys: ECDSA P-256 or P-384, RSA 2048-8192 bits; anything else is refused;
- the CSR may ask for no identity or exactly one URI SAN that is one of the caller's identities; that
  URI must be `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` with valid Kubernetes
  names (INVALID otherwise, before the caller's identities are looked at);
  its other SANs and its subject are ignored: the certificate names only the caller's identity;
- TTL: 0 means the default (24 h); negative or above the maximum (90 days) is refused, not clamped.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs.authority import Authority
from certs.identity import parse_spiffe_id

MAX_CSR_BYTES = 64 * 1024
DEFAULT_TTL = dt.timedelta(hours=24)
MAX_TTL = dt.timedelta(days=90)
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
MAX_RSA_EXPONENT_BITS = 33  # BoringSSL's bound
ALLOWED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
_PEM_HEADER = "-----BEGIN CERTIFICATE REQUEST-----"


class Refusal(enum.Enum):
    INVALID = "invalid"  # INVALID_ARGUMENT
    FORBIDDEN = "forbidden"  # PERMISSION_DENIED


class SigningRefused(Exception):
    """A request the CA will not sign. `reason` is a short metric label; `str()` is the precise message."""

    def __init__(self, refusal: Refusal, reason: str, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class SigningPolicy:
    default_ttl: dt.timedelta = DEFAULT_TTL
    max_ttl: dt.timedelta = MAX_TTL
    max_csr_bytes: int = MAX_CSR_BYTES


@dataclass(frozen=True, kw_only=True)
class CheckedCsr:
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    requested_identity: str | None


def _invalid(reason: str, message: str) -> SigningRefused:
    return SigningRefused(Refusal.INVALID, reason, message)


def check_csr(pem: str, *, policy: SigningPolicy) -> CheckedCsr:
    """Parse and check a CSR; raise SigningRefused(INVALID) naming the problem.

    Checks, in order: size, PEM framing, DER structure, self-signature, key type and size,
    number of URI SANs, shape and names of the requested SPIFFE identity.
    """
    data = pem.encode("utf-8", "surrogatepass")
    size = len(data)
    if size > policy.max_csr_bytes:
        raise _invalid("csr_too_large", f"csr: {size} bytes exceeds the limit of {policy.max_csr_bytes} bytes")
    if not pem.strip():
        raise _invalid("malformed_csr", "csr: empty; expected a PEM CERTIFICATE REQUEST")
    if _PEM_HEADER not in pem:
        raise _invalid("malformed_csr", f"csr: not PEM: no {_PEM_HEADER!r} block")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise _invalid("malformed_csr", f"csr: cannot parse the CERTIFICATE REQUEST: {exc}") from None
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # the last: a key algorithm OID it does not know
        raise _invalid("unsupported_key", f"csr: unsupported public key: {exc}") from None
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ALLOWED_CURVES:
            raise _invalid(
                "unsupported_key", f"csr: EC curve {public_key.curve.name} is not supported; use P-256 or P-384"
            )
    elif isinstance(public_key, rsa.RSAPublicKey):
        bits = public_key.key_size
        if bits < MIN_RSA_BITS:
            raise _invalid("weak_key", f"csr: RSA key of {bits} bits is too weak; at least {MIN_RSA_BITS} required")
        if bits > MAX_RSA_BITS:
            raise _invalid("unsupported_key", f"csr: RSA key of {bits} bits exceeds the {MAX_RSA_BITS}-bit maximum")
        exponent_bits = public_key.public_numbers().e.bit_length()
        if exponent_bits > MAX_RSA_EXPONENT_BITS:  # a large one makes each signature check a private-key's work
            raise _invalid(
                "unsupported_key",
                f"csr: RSA public exponent of {exponent_bits} bits is not supported; Envoy (BoringSSL) uses odd"
                f" exponents of 2 to {MAX_RSA_EXPONENT_BITS} bits, such as 65537",
            )
    else:
        raise _invalid(
            "unsupported_key",
            f"csr: {type(public_key).__name__.removeprefix('_')} keys are not supported; "
            "use ECDSA P-256/P-384 or RSA >= 2048",
        )
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # e.g. an unsupported signature hash
        raise _invalid("bad_signature", f"csr: cannot verify its signature: {exc}") from None
    if not valid:
        raise _invalid("bad_signature", "csr: signature does not verify with the CSR's own public key")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except ValueError as exc:
        raise _invalid("malformed_csr", f"csr: cannot parse its extensions: {exc}") from None
    if len(uris) > 1:
        raise _invalid(
            "multiple_identities", f"csr: asks for {len(uris)} URI SANs ({', '.join(uris)}); at most one is allowed"
        )
    if uris:
        try:
            parse_spiffe_id(uris[0], field="csr: URI SAN")
        except ValueError as exc:
            raise _invalid("invalid_identity", str(exc)) from None
    return CheckedCsr(public_key=public_key, requested_identity=uris[0] if uris else None)


def resolve_ttl(validity_seconds: int, *, policy: SigningPolicy) -> dt.timedelta:
    """`validity_duration` in seconds -> TTL; 0 means the default. Refuses negative or above-maximum values."""
    if validity_seconds == 0:
        return policy.default_ttl
    max_seconds = int(policy.max_ttl.total_seconds())
    if validity_seconds < 0:
        raise _invalid("invalid_ttl", f"validity_duration: {validity_seconds} s is negative")
    if validity_seconds > max_seconds:
        raise _invalid(
            "invalid_ttl",
            f"validity_duration: {validity_seconds} s exceeds the maximum of {max_seconds} s "
            f"({policy.max_ttl.days} days)",
        )
    return dt.timedelta(seconds=validity_seconds)


def choose_identities(requested: str | None, *, caller_identities: tuple[str, ...]) -> tuple[str, ...]:
    """The identities the certificate will carry: the requested one if the caller has it, else all the caller's.

    Raises SigningRefused(FORBIDDEN) naming both when the CSR asks for an identity the caller lacks.
    """
    if not caller_identities:
        raise SigningRefused(Refusal.FORBIDDEN, "no_identity", "the caller is authenticated but has no identity")
    if requested is None:
        return caller_identities
    if requested not in caller_identities:
        raise SigningRefused(
            Refusal.FORBIDDEN,
            "identity_mismatch",
            f"csr asks for identity {requested} but the caller is authenticated as {', '.join(caller_identities)}",
        )
    return (requested,)


def sign(
    authority: Authority,
    csr: CheckedCsr,
    *,
    identities: tuple[str, ...],
    ttl: dt.timedelta,
    now: dt.datetime | None = None,
) -> list[x509.Certificate]:
    """Issue the leaf for `csr`'s key naming exactly `identities`; chain leaf first, root last."""
    return authority.issue(public_key=csr.public_key, ttl=ttl, uris=identities, now=now)
