"""The cluster's service-account issuer keys, to tell a forged token from a real one without asking.

Every Kubernetes API server publishes the public keys that verify its service-account tokens, as a
JSON Web Key Set at `/openid/v1/jwks` (service-account issuer discovery; the default RBAC lets every
service account read it). `IssuerKeys.from_jwks` reads that document; `check(token)` says whether a
token's signature verifies with one of the keys:

- `VERIFIED`: signed by the cluster. The API server still has the last word (the token may be
  revoked, its pod deleted), so such a token goes on to a TokenReview.
- `BAD_SIGNATURE`: the key its `kid` names (or, without a `kid`, every key of its kind) does not
  verify it, or its `alg` does not fit that key: forged or damaged; refused without a review.
- `UNKNOWN_KEY`: no published key has its `kid`: forged, or signed by a key newer than this set
  (the caller fetches the set again before it decides).
- `UNCHECKED`: an algorithm this module does not verify; left to the review.

Algorithms: RS256/RS384/RS512 (RSA PKCS#1 v1.5) and ES256/ES384/ES512 (ECDSA, signature `r || s`),
which are what the API server signs service-account tokens with. `none` and the HMAC algorithms
(`HS*`) are never a service-account token's: `BAD_SIGNATURE`. Keys of other kinds in the set are
skipped (`skipped` says which and why). The token's shape was checked before (`kubejwt`).
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
# ES<n> pairs one hash with one curve (RFC 7518 3.4).
_ES_CURVE = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


class Verdict(enum.Enum):
    VERIFIED = "verified"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    UNCHECKED = "unchecked"


@dataclass(frozen=True, kw_only=True)
class Check:
    verdict: Verdict
    why: str = ""  # for a refusal: what did not fit, naming the kid and alg


def _decode(text: str) -> bytes:
    """Unpadded base64url; binascii.Error (a ValueError) for anything else."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} is not a base64url string")
    try:
        return _decode(text)
    except ValueError:
        raise ValueError(f"{what} is not base64url") from None


def _int(text: object, what: str) -> int:
    return int.from_bytes(_b64(text, what), "big")


def _key(jwk: Mapping[str, object]) -> PublicKey:
    """The public key of one JWK; ValueError naming what is wrong or unsupported."""
    kty = jwk.get("kty")
    if kty == "RSA":
        return rsa.RSAPublicNumbers(_int(jwk.get("e"), "e"), _int(jwk.get("n"), "n")).public_key()
    if kty == "EC":
        curve = _CURVES.get(str(jwk.get("crv")))
        if curve is None:
            raise ValueError(f"curve {jwk.get('crv')!r} is not P-256, P-384 or P-521")
        return ec.EllipticCurvePublicNumbers(_int(jwk.get("x"), "x"), _int(jwk.get("y"), "y"), curve).public_key()
    raise ValueError(f"kty {kty!r} is not RSA or EC")


class IssuerKeys:
    def __init__(self, keys: Sequence[tuple[str, PublicKey]], *, skipped: Sequence[str] = ()) -> None:
        """`keys`: (kid, key) pairs ("" for a key without a kid)."""
        self.keys = tuple(keys)
        self.skipped = tuple(skipped)
        self._by_kid = {kid: key for kid, key in self.keys if kid}

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_jwks(cls, document: object) -> IssuerKeys:
        """The keys of a JWK Set (`{"keys": [...]}`); ValueError if it is not one. Keys that cannot be
        used are skipped and named in `skipped`."""
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise ValueError('not a JSON Web Key Set: no "keys" list')
        keys: list[tuple[str, PublicKey]] = []
        skipped: list[str] = []
        for index, jwk in enumerate(document["keys"]):
            if not isinstance(jwk, Mapping):
                skipped.append(f"key {index}: not an object")
                continue
            kid = jwk.get("kid", "")
            name = f"key {kid!r}" if isinstance(kid, str) and kid else f"key {index}"
            if not isinstance(kid, str):
                skipped.append(f"{name}: kid is not a string")
                continue
            if jwk.get("use", "sig") != "sig":
                skipped.append(f"{name}: use {jwk.get('use')!r} is not sig")
                continue
            try:
                keys.append((kid, _key(jwk)))
            except ValueError as exc:
                skipped.append(f"{name}: {exc}")
        return cls(keys, skipped=skipped)

    def check(self, token: str) -> Check:
        """Whether `token` (a JWT: three base64url parts, header and payload JSON objects) verifies."""
        head, payload, signature_part = token.split(".")
        header = json.loads(_decode(head))
        alg, kid = header.get("alg"), header.get("kid")
        what = f"kid {kid!r}, alg {alg!r}" if kid else f"no kid, alg {alg!r}"
        if not isinstance(alg, str) or alg == "none" or alg.startswith("HS"):
            return Check(verdict=Verdict.BAD_SIGNATURE, why=f"{what}: never a service-account token's algorithm")
        if alg[:2] not in ("RS", "ES") or alg[2:] not in _HASHES:
            return Check(verdict=Verdict.UNCHECKED)
        if kid:
            key = self._by_kid.get(str(kid))
            if key is None:
                return Check(verdict=Verdict.UNKNOWN_KEY, why=f"{what}: the cluster publishes no such key")
            candidates: Sequence[PublicKey] = (key,)
        else:
            candidates = [key for _, key in self.keys]
        try:
            signature = _decode(signature_part)
        except ValueError:
            return Check(verdict=Verdict.BAD_SIGNATURE, why=f"{what}: the signature is not base64url")
        signed = f"{head}.{payload}".encode("ascii")
        if any(_verifies(key, alg, signature, signed) for key in candidates):
            return Check(verdict=Verdict.VERIFIED)
        return Check(verdict=Verdict.BAD_SIGNATURE, why=f"{what}: the signature does not verify")


def _verifies(key: PublicKey, alg: str, signature: bytes, signed: bytes) -> bool:
    digest = _HASHES[alg[2:]]()
    try:
        if alg.startswith("RS") and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), digest)
            return True
        if alg.startswith("ES") and isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _ES_CURVE[alg]:
            size = (key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:
                return False
            r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(digest))
            return True
    except InvalidSignature:
        return False
    return False
