"""Service-account tokens: what TokenRequest issues and TokenReview checks.

Tokens are JWTs shaped like the API server's bound service-account tokens: ES256 with a key this
kubesim generates at start (`kid` = SHA-256 of the public key), claims `iss`, `sub`
(`system:serviceaccount:<ns>:<sa>`), `aud` (a list), `iat`/`nbf`/`exp`, `jti` and `kubernetes.io`
(namespace, service account name and uid). A review checks, like the real authenticator, the
format, the signature (and algorithm and key id), the issuer, the time window, that the token's
audiences intersect the wanted ones, that the service account still exists with the same uid and,
for a token bound to an object (a Pod or a Secret: claim `kubernetes.io.pod` / `.secret`), that the
object still exists with the same uid. Each failure is `authenticated: false` with an error string
saying which check failed. The public key is published as the API server's service-account issuer
discovery does: `jwks()` (`/openid/v1/jwks`) and `openid_configuration()`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from tests.kubesim.resources import ResourceType

API_VERSION = "authentication.k8s.io/v1"
# Only for error messages: TokenRequest is a subresource (serviceaccounts/token), never stored.
TOKEN_REQUESTS = ResourceType("authentication.k8s.io", "v1", "tokenrequests", "", "TokenRequest", namespaced=True)
ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = (ISSUER,)  # what the API server itself accepts; the default audience of a TokenRequest
DEFAULT_EXPIRATION = 3600
MIN_EXPIRATION = 600
MAX_EXPIRATION = 1 << 32
LEEWAY = datetime.timedelta(seconds=60)  # clock skew the real validator tolerates on nbf/exp


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


BOUND_KINDS = ("Pod", "Secret")  # what a TokenRequest's boundObjectRef may name


@dataclass(frozen=True, kw_only=True)
class Bound:
    """The object a token is bound to (in the service account's namespace): the token dies with it."""

    kind: str  # one of BOUND_KINDS
    name: str
    uid: str


@dataclass(frozen=True, kw_only=True)
class Account:
    """A service account as the token names it, and the object the token is bound to, if any."""

    namespace: str
    name: str
    uid: str
    bound: Bound | None = None


# (kind, namespace, name) -> the current uid of that object (kind ServiceAccount, Pod or Secret); None: absent
Lookup = Callable[[str, str, str], str | None]


@dataclass(frozen=True, kw_only=True)
class Issued:
    token: str
    expires: datetime.datetime


class TokenInvalid(Exception):
    """Why a review says `authenticated: false` (the message is the TokenReview's `status.error`)."""


class ServiceAccountTokens:
    """Issues and reviews tokens with one generated P-256 key."""

    def __init__(self, *, clock: Callable[[], datetime.datetime]) -> None:
        self.clock = clock
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = _b64(hashlib.sha256(der).digest())

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set the API server publishes at `/openid/v1/jwks`: the public key that verifies
        its tokens."""
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "use": "sig",
                    "kty": "EC",
                    "kid": self.kid,
                    "crv": "P-256",
                    "alg": "ES256",
                    "x": _b64(numbers.x.to_bytes(32, "big")),
                    "y": _b64(numbers.y.to_bytes(32, "big")),
                }
            ]
        }

    @staticmethod
    def openid_configuration() -> dict[str, Any]:
        """`/.well-known/openid-configuration`: the issuer and where its keys are."""
        return {
            "issuer": ISSUER,
            "jwks_uri": f"{ISSUER}/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }

    def issue(self, account: Account, *, audiences: Sequence[str], expiration_seconds: int) -> Issued:
        now = self.clock().replace(microsecond=0)
        expires = now + datetime.timedelta(seconds=expiration_seconds)
        private: dict[str, Any] = {
            "namespace": account.namespace,
            "serviceaccount": {"name": account.name, "uid": account.uid},
        }
        if account.bound is not None:
            private[account.bound.kind.lower()] = {"name": account.bound.name, "uid": account.bound.uid}
        claims = {
            "aud": list(audiences),
            "exp": int(expires.timestamp()),
            "iat": int(now.timestamp()),
            "iss": ISSUER,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": private,
            "nbf": int(now.timestamp()),
            "sub": f"system:serviceaccount:{account.namespace}:{account.name}",
        }
        header = {"alg": "ES256", "kid": self.kid}
        signing_input = f"{_b64(_compact(header))}.{_b64(_compact(claims))}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return Issued(token=f"{signing_input}.{_b64(signature)}", expires=expires)

    def review(self, token: str, *, audiences: Sequence[str], lookup: Lookup) -> tuple[dict[str, Any], list[str]]:
        """(the token's claims, the audiences granted), or TokenInvalid.

        `audiences` empty means the API server's own; `lookup(kind, namespace, name)` gives the current uid
        of the service account or of the object the token is bound to (None: it does not exist).
        """
        wanted = list(audiences) or list(API_AUDIENCES)
        claims = self._verified_claims(token)
        now = self.clock()
        try:
            exp = datetime.datetime.fromtimestamp(int(claims["exp"]), datetime.UTC)
            nbf = datetime.datetime.fromtimestamp(int(claims.get("nbf", claims["iat"])), datetime.UTC)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise TokenInvalid("invalid bearer token, token has malformed time claims") from None
        if now > exp + LEEWAY:
            raise TokenInvalid("invalid bearer token, service account token has expired")
        if now < nbf - LEEWAY:
            raise TokenInvalid("invalid bearer token, service account token is not valid yet")
        token_audiences = claims.get("aud")
        if isinstance(token_audiences, str):
            token_audiences = [token_audiences]
        if not isinstance(token_audiences, list):
            token_audiences = []
        granted = [a for a in wanted if a in token_audiences]
        if not granted:
            raise TokenInvalid(
                f"invalid bearer token, token audiences {json.dumps(token_audiences)} is invalid for the target "
                f"audiences {json.dumps(wanted)}"
            )
        private = claims.get("kubernetes.io")
        account = private.get("serviceaccount") if isinstance(private, dict) else None
        if not isinstance(private, dict) or not isinstance(account, dict):
            raise TokenInvalid("invalid bearer token, token has no kubernetes.io service account claims")
        namespace, name, uid = str(private.get("namespace")), str(account.get("name")), str(account.get("uid"))
        if claims.get("sub") != f"system:serviceaccount:{namespace}:{name}":
            raise TokenInvalid("invalid bearer token, sub does not match the kubernetes.io claims")
        current = lookup("ServiceAccount", namespace, name)
        if current is None:
            raise TokenInvalid(f"invalid bearer token, service account {namespace}/{name} has been deleted")
        if current != uid:
            raise TokenInvalid(
                f"invalid bearer token, service account UID ({uid}) does not match the current one ({current})"
            )
        for kind in BOUND_KINDS:
            ref = private.get(kind.lower())
            if ref is None:
                continue
            if not isinstance(ref, dict) or lookup(kind, namespace, str(ref.get("name"))) != ref.get("uid"):
                raise TokenInvalid("invalid bearer token, service account token has been invalidated")
        return claims, granted

    def _verified_claims(self, token: str) -> dict[str, Any]:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenInvalid("invalid bearer token, not a JWT (want three dot-separated parts)")
        try:
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except (ValueError, binascii.Error):
            raise TokenInvalid("invalid bearer token, the JWT is not base64url-encoded JSON") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenInvalid("invalid bearer token, the JWT header or claims are not JSON objects")
        if claims.get("iss") != ISSUER:
            raise TokenInvalid(f"invalid bearer token, unknown issuer {claims.get('iss')!r}")
        if header.get("alg") != "ES256" or header.get("kid") != self.kid or len(signature) != 64:
            raise TokenInvalid("invalid bearer token, square/go-jose: error in cryptographic primitive")
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        try:
            self.key.public_key().verify(der, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise TokenInvalid("invalid bearer token, square/go-jose: error in cryptographic primitive") from None
        return claims
