"""Local-mode tokens: what `meshplane token` mints and the CA accepts in place of a Kubernetes
service-account token.

A token is a JWT signed with ES256 by a P-256 key kept in the state dir (`token-key.pem`, mode
0600, created by whichever of `meshplane serve` / `meshplane token` runs first). Claims mirror a
projected service-account token: `iss` = `meshplane-local`, `aud` = [`istio-ca`],
`sub` = `system:serviceaccount:<ns>:<sa>`, `iat`/`nbf`/`exp`, and `kubernetes.io.namespace` /
`kubernetes.io.serviceaccount.name`. Verification checks the algorithm, the signature, the issuer,
the audience and the expiry, and names the first that fails.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from certs.authenticate import AuthenticationError, Caller, Credentials, NoCredentials
from certs.authenticate.tokencache import TokenCache, VerifiedToken
from certs.authority import KeyMaterialError
from certs.identity import (
    SERVICE_ACCOUNT_PREFIX,
    check_namespace,
    check_service_account,
    from_service_account_username,
    spiffe_id,
)
from controlplane.literals import duration

ISSUER = "meshplane-local"
AUDIENCE = "istio-ca"
KEY_FILE = "token-key.pem"
DEFAULT_TTL = dt.timedelta(hours=1)
MAX_TTL = dt.timedelta(days=365)
CLOCK_SKEW = dt.timedelta(seconds=60)
_ES256_SIG_BYTES = 64


class TokenKeyError(KeyMaterialError):
    """The token signing key exists but cannot be used; the message names the file."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _b64(hashlib.sha256(der).digest()[:12])


def load_or_create_key(state_dir: pathlib.Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 signing key in `<state_dir>/token-key.pem`, created (mode 0600) if missing.

    Creation is atomic and first-writer-wins, so `meshplane token` and `meshplane serve` racing on a
    fresh state dir agree on one key. Raises TokenKeyError for a key file that is readable by others,
    unparseable, or not a P-256 key.
    """
    path = state_dir / KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{KEY_FILE}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            os.link(tmp, path)  # fails if another process created it first; theirs wins
        except FileExistsError:
            pass
        finally:
            pathlib.Path(tmp).unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise TokenKeyError(
            f"{path} has mode {mode:o}; the token signing key must not be readable by others (chmod 600)"
        )
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise TokenKeyError(f"{path}: cannot parse the token signing key: {exc}") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise TokenKeyError(f"{path}: the token signing key must be an EC P-256 key")
    return loaded


def check_claims(*, namespace: str, service_account: str, ttl: dt.timedelta) -> None:
    """ValueError naming the flag when a token for these would be refused."""
    check_namespace(namespace, field="--namespace")
    check_service_account(service_account, field="--service-account")
    if ttl <= dt.timedelta(0):
        raise ValueError(f"--ttl: {int(ttl.total_seconds())} s must be positive")
    if ttl > MAX_TTL:
        raise ValueError(f"--ttl: {int(ttl.total_seconds())} s exceeds the maximum of {MAX_TTL.days} days")


def mint(
    *,
    key: ec.EllipticCurvePrivateKey,
    namespace: str,
    service_account: str,
    ttl: dt.timedelta = DEFAULT_TTL,
    audience: str = AUDIENCE,
    issuer: str = ISSUER,
    now: dt.datetime | None = None,
) -> str:
    """A signed token for `namespace`/`service_account`. Raises ValueError for a bad name or TTL (naming the field)."""
    check_claims(namespace=namespace, service_account=service_account, ttl=ttl)
    now = now or dt.datetime.now(dt.UTC)
    iat = int(now.timestamp())
    header = {"alg": "ES256", "typ": "JWT", "kid": key_id(key.public_key())}
    claims = {
        "iss": issuer,
        "aud": [audience],
        "sub": f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{service_account}",
        "iat": iat,
        "nbf": iat,
        "exp": iat + int(ttl.total_seconds()),
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account}},
    }
    encoded = [_b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)]
    signing_input = ".".join(encoded)
    r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckedToken:
    """A token that passed every check: whom it names and its validity window (Unix seconds)."""

    namespace: str
    service_account: str
    expires: int  # `exp`: refused from this instant on
    not_before: float  # `nbf` (else `iat`) less CLOCK_SKEW; -inf when the token has neither


def check_token(
    token: str,
    *,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    audience: str = AUDIENCE,
    issuer: str = ISSUER,
) -> CheckedToken:
    """Check a token: whom it names and the window in which it stays valid. Raises AuthenticationError naming
    the failed check."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthenticationError("token is not a JWT (expected header.payload.signature)")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise AuthenticationError("token is not a JWT (a part is not base64url-encoded JSON)") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthenticationError("token is not a JWT (header or payload is not a JSON object)")
    if header.get("alg") != "ES256":
        raise AuthenticationError(f"token algorithm {header.get('alg')!r} is not accepted (ES256 only)")
    if len(signature) != _ES256_SIG_BYTES:
        raise AuthenticationError("token signature does not verify (wrong length for ES256)")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public_key.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AuthenticationError("token signature does not verify (forged, or signed by another key)") from None
    if claims.get("iss") != issuer:
        raise AuthenticationError(f"token issuer {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if audience not in audiences:
        raise AuthenticationError(f"token audience {aud!r} does not include {audience!r}")
    exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
    if not isinstance(exp, int):
        raise AuthenticationError("token has no numeric exp (expiry) claim")
    if now.timestamp() >= exp:
        raise AuthenticationError(f"token expired at {dt.datetime.fromtimestamp(exp, dt.UTC).isoformat()}")
    if isinstance(nbf, int) and now.timestamp() + CLOCK_SKEW.total_seconds() < nbf:
        raise AuthenticationError(f"token not valid before {dt.datetime.fromtimestamp(nbf, dt.UTC).isoformat()}")
    sub = claims.get("sub")
    try:
        namespace, service_account = from_service_account_username(sub if isinstance(sub, str) else "")
    except ValueError as exc:
        raise AuthenticationError(f"token subject: {exc}") from None
    return CheckedToken(
        namespace=namespace,
        service_account=service_account,
        expires=exp,
        not_before=nbf - int(CLOCK_SKEW.total_seconds()) if isinstance(nbf, int) else -math.inf,
    )


class LocalTokenAuthenticator:
    """Accepts `meshplane token` tokens signed by `public_key`.

    A token whose signature verified is remembered (`certs.authenticate.tokencache`) until its `exp`,
    so an agent's repeated requests cost no signature check; assigning another `public_key` forgets
    every token the previous key verified.
    """

    name = "local-token"

    def __init__(
        self,
        *,
        public_key: ec.EllipticCurvePublicKey,
        trust_domain: str,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        audience: str = AUDIENCE,
        cache: TokenCache | None = None,
    ) -> None:
        self.public_key = public_key
        self.trust_domain = trust_domain
        self.clock = clock
        self.audience = audience
        self.cache = cache if cache is not None else TokenCache()

    async def authenticate(self, credentials: Credentials) -> Caller:
        token = credentials.bearer_token()
        if token is None:
            raise NoCredentials("no bearer token")
        now = self.clock()
        public_key = self.public_key
        caller = self.cache.lookup(token, key=public_key, now=now.timestamp())
        if caller is not None:
            return caller
        checked = check_token(token, public_key=public_key, now=now, audience=self.audience)
        identity = spiffe_id(
            trust_domain=self.trust_domain, namespace=checked.namespace, service_account=checked.service_account
        )
        caller = Caller(source=self.name, identities=(identity,))
        entry = VerifiedToken(caller=caller, expires=checked.expires, not_before=checked.not_before)
        self.cache.store(token, entry, key=public_key)
        return caller


def parse_duration(text: str, *, field: str) -> dt.timedelta:
    """`90`, `90s`, `15m`, `1h`, `1h30m` (any Go duration, or a number of seconds) -> timedelta.
    Raises ValueError naming `field` for anything else, a negative one, or one too long for Go."""
    seconds = duration(text.strip(), bare_seconds=True)
    if seconds is None:
        raise ValueError(f"{field}: {text!r} is not a duration (examples: 3600, 90s, 15m, 1h, 1h30m)")
    if seconds < 0:
        raise ValueError(f"{field}: {text!r} must not be negative")
    return dt.timedelta(seconds=seconds)
