"""Authenticate by a Kubernetes service-account token (`authorization: Bearer <jwt>`).

The token is not decoded here: the API server decides, through a TokenReview with audience
`istio-ca`. A `clusterid` metadata value naming another cluster is refused (meshplane has no
remote clusters). The review's `status.audiences` must include `istio-ca`: an empty list means the
token is only good for the API server itself (a token without `aud`, or an authenticator that does
not check audiences), so it is refused. The reviewed username must be
`system:serviceaccount:<ns>:<sa>` with valid Kubernetes names.

A review is a request to the API server, so only a token that could pass one is sent: a
service-account token is a JWT (three base64url parts, the first two JSON objects) of at most
`MAX_TOKEN_BYTES`, and one whose `exp` passed more than `EXPIRY_LEEWAY_S` ago (the API server's
own leeway) would be refused there. Such tokens are refused here, naming what is wrong; the
signature is the API server's to check. What a client can still cause, with tokens of the right
shape, is bounded by `reviewgate.ReviewGate`: a client whose reviews keep failing gets
RESOURCE_EXHAUSTED instead of more reviews.

With the cluster's service-account issuer keys (`keys`, fetched by `controlplane.kube.issuerkeys`
from the API server's `/openid/v1/jwks`), a token whose signature does not verify, or whose `kid`
the cluster does not publish even after the keys are fetched again (`IssuerKeySource.refresh`, at
most every 30 s), is refused without a review: forged tokens then cost the API server nothing, from
any number of addresses. A token naming a key id the keys lack while they cannot be fetched again
(fetched within 30 s, or the fetch failed) is neither reviewed nor refused for good: the answer is
UNAVAILABLE, since a key the cluster began to sign with moments ago looks the same as a made-up
one until the next fetch. A verified token's claims are the cluster's, so two more refusals need
no review: an `aud` claim without `istio-ca` (the review would find no audience in common: a pod's
default token, which is for the API server, is the usual case), and a `sub` that is not
`system:serviceaccount:<ns>:<sa>` with valid names. A verified token that passes is still reviewed
(it may be revoked), and its service account joins its address in keying the review budget, so
workloads behind one address with different service accounts do not share it. Without the keys
(not fetched yet, or the API server does not serve them) every token of the right shape is reviewed,
as above, and budgeted by address alone.

A token the API server accepted is not reviewed again for `REVIEW_TTL_S` (10 s, as long as the API
server itself caches a successful authentication) nor past its `exp`: the accepted caller is kept
in a bounded `tokencache.TokenCache` keyed by the whole token. A workload that sends its valid token
with every request (or a compromised one that floods the CA with it) then costs one review per 10 s,
not one per request. The price: a token revoked meanwhile (its pod or service account deleted) is
accepted for at most 10 s more. Refusals are never cached; they spend the client's review budget.
Requests with a token whose review is in flight wait for that review instead of asking again, so a
workload's concurrent first requests (a CSR and an xDS stream) cost one review too.

Seam: `controlplane/kube` provides the real `TokenReviewer` (TokenReview through
kubernetes-asyncio); tests use an in-repo fake.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import functools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from certs import metrics
from certs.authenticate import AuthenticationError, AuthenticatorUnavailable, Caller, Credentials, NoCredentials
from certs.authenticate.issuerkeys import IssuerKeys, Verdict
from certs.authenticate.reviewgate import ReviewGate, ReviewRefused
from certs.authenticate.tokencache import TokenCache, VerifiedToken
from certs.identity import SERVICE_ACCOUNT_PREFIX, from_service_account_username, spiffe_id
from controlplane.jsontext import load_json

AUDIENCE = "istio-ca"
REVIEW_TTL_S = 10.0
MAX_TOKEN_BYTES = 16 * 1024  # service-account tokens are ~1 KB
MAX_CLAIMS_DEPTH = 20  # a service-account token's claims nest 3 deep
EXPIRY_LEEWAY_S = 60.0
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_CLAIM_CHARS = 100  # of a claim quoted in a refusal (a token may hold up to MAX_TOKEN_BYTES)
# system:serviceaccount:<namespace, a DNS-1123 label>:<name, a DNS-1123 subdomain>
_MAX_USERNAME = len(SERVICE_ACCOUNT_PREFIX) + 63 + 1 + 253


@dataclass(frozen=True, kw_only=True)
class TokenReview:
    """The API server's verdict (TokenReview `status`)."""

    authenticated: bool
    username: str = ""
    audiences: tuple[str, ...] = ()
    error: str = ""


class TokenReviewUnavailable(Exception):
    """The review could not be made (API unreachable, throttled, ...)."""


class TokenReviewer(Protocol):
    async def review(self, *, token: str, audiences: Sequence[str]) -> TokenReview:
        """Ask the API server about `token`; raise TokenReviewUnavailable when it cannot answer."""
        ...


class IssuerKeySource(Protocol):
    def current(self) -> IssuerKeys | None:
        """The keys last fetched; None before the first success."""
        ...

    async def refresh(self) -> IssuerKeys | None:
        """Fetch the keys again unless that was tried within the last 30 s; the keys then current: a new
        object after a successful fetch, the very object `current()` returned when none was made or it
        failed."""
        ...


class KubeJwtAuthenticator:
    name = "kubernetes-jwt"

    def __init__(
        self,
        *,
        reviewer: TokenReviewer,
        trust_domain: str,
        cluster_id: str,
        audience: str = AUDIENCE,
        gate: ReviewGate | None = None,
        keys: IssuerKeySource | None = None,
        cache: TokenCache | None = None,
        review_ttl_s: float = REVIEW_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` is Unix time (tokens' `exp`); `cache` keeps accepted tokens for `review_ttl_s` (0: none)."""
        self.reviewer = reviewer
        self.trust_domain = trust_domain
        self.cluster_id = cluster_id
        self.audience = audience
        self.gate = gate if gate is not None else ReviewGate()
        self.keys = keys
        self.cache = cache if cache is not None else TokenCache()
        self.review_ttl_s = review_ttl_s
        self.clock = clock
        self._cache_key = object()  # this authenticator's audience and reviewer vouched for the entries
        self._in_review: dict[str, asyncio.Future[Caller]] = {}  # token -> its review in flight

    async def authenticate(self, credentials: Credentials) -> Caller:
        token = credentials.bearer_token()
        if token is None:
            raise NoCredentials("no bearer token")
        cluster = credentials.metadata.get("clusterid", "")
        if cluster and cluster != self.cluster_id:
            raise AuthenticationError(
                f"clusterid {cluster!r} is not this cluster ({self.cluster_id!r}); remote clusters are not supported"
            )
        try:
            shaped = check_token_shape(token, now=self.clock())
        except AuthenticationError:
            metrics.token_reviews.labels(outcome="not_a_token").inc()
            raise
        cached = self.cache.lookup(token, key=self._cache_key, now=self.clock())
        if cached is not None:
            metrics.token_reviews.labels(outcome="cached").inc()
            return cached
        subject = ""  # whom the client's review budget is kept for besides its address: verified claims only
        if self.keys is not None and await self._check_signature(token, self.keys):
            try:
                subject = check_signed_claims(shaped, audience=self.audience)
            except AuthenticationError:
                metrics.token_reviews.labels(outcome="bad_claims").inc()
                raise
        try:
            async with self.gate.review(credentials.client, subject=subject):
                caller = await self._review_shared(token)
        except ReviewRefused as exc:
            metrics.token_reviews.labels(outcome=exc.outcome).inc()
            raise
        except AuthenticationError as exc:
            metrics.token_reviews.labels(outcome="review_unavailable" if exc.unavailable else "reviewed_refused").inc()
            raise
        metrics.token_reviews.labels(outcome="reviewed_ok").inc()
        if self.review_ttl_s > 0:
            until = self.clock() + self.review_ttl_s
            if shaped.expires is not None:
                until = min(until, shaped.expires)
            entry = VerifiedToken(caller=caller, expires=until, not_before=-math.inf)
            self.cache.store(token, entry, key=self._cache_key)
        return caller

    async def _check_signature(self, token: str, source: IssuerKeySource) -> bool:
        """Whether the cluster's keys verify `token` (False: no keys yet, or an algorithm left to the review);
        raises AuthenticationError if they show it is not the cluster's (module docstring)."""
        keys = source.current()
        if keys is None:
            return False
        check = keys.check(token)
        if check.verdict is Verdict.UNKNOWN_KEY:
            fetched = await source.refresh()
            if fetched is None or fetched is keys:
                # no newer keys to be had now: a key id made up, or one the cluster began to sign with
                # since the last fetch; which, the next fetch tells, so the client is asked to come back
                metrics.token_reviews.labels(outcome="unknown_key").inc()
                raise AuthenticatorUnavailable(
                    f"bearer token names an issuer key the cluster did not publish when its keys were last "
                    f"fetched ({check.why}); they are fetched again at most every 30 s: retry then"
                )
            keys, check = fetched, fetched.check(token)
        if check.verdict in (Verdict.BAD_SIGNATURE, Verdict.UNKNOWN_KEY):
            metrics.token_reviews.labels(outcome="bad_signature").inc()
            raise AuthenticationError(
                f"bearer token is not signed by this cluster's service-account issuer ({check.why})"
            )
        return check.verdict is Verdict.VERIFIED

    async def _review_shared(self, token: str) -> Caller:
        """`_review(token)`, joining the review of the same token already in flight, if any.

        Each caller still passes its own client's gate and is charged for a failure; only the API server
        is asked once. The review runs to its end even if every caller waiting for it goes away (and
        `asyncio.shield` then takes its outcome, so a failure nobody awaits is not reported as lost)."""
        running = self._in_review.get(token)
        if running is None:
            running = self._in_review[token] = asyncio.ensure_future(self._review(token))
            running.add_done_callback(functools.partial(self._review_done, token))
        return await asyncio.shield(running)

    def _review_done(self, token: str, review: asyncio.Future[Caller]) -> None:
        if self._in_review.get(token) is review:
            del self._in_review[token]

    async def _review(self, token: str) -> Caller:
        try:
            result = await self.reviewer.review(token=token, audiences=[self.audience])
        except TokenReviewUnavailable as exc:
            raise AuthenticatorUnavailable(f"TokenReview failed: {exc}") from None
        if not result.authenticated:
            raise AuthenticationError(f"TokenReview: token not authenticated: {result.error or 'no reason given'}")
        if self.audience not in result.audiences:
            raise AuthenticationError(
                f"TokenReview: token audiences {list(result.audiences)} do not include {self.audience!r}"
            )
        try:
            namespace, service_account = from_service_account_username(result.username)
        except ValueError as exc:
            raise AuthenticationError(f"TokenReview: {exc}") from None
        identity = spiffe_id(trust_domain=self.trust_domain, namespace=namespace, service_account=service_account)
        return Caller(source=self.name, identities=(identity,))


@dataclass(frozen=True, kw_only=True)
class ShapedToken:
    """What a token of the right shape claims; trusted only once its signature verified."""

    expires: float | None  # `exp`; None for a legacy Secret-based token, which never expires
    subject: object  # `sub` as written (any JSON value; None when absent)
    audiences: tuple[str, ...] | None  # `aud` as a list (RFC 7519 allows one string); None when absent


def check_token_shape(token: str, *, now: float) -> ShapedToken:
    """The token's claims; raises AuthenticationError unless `token` could be a live service-account
    token (module docstring)."""
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationError(
            f"bearer token is {len(token)} bytes, over {MAX_TOKEN_BYTES}: not a service-account token"
        )
    parts = token.split(".")
    if len(parts) != 3 or not all(_BASE64URL.fullmatch(part) for part in parts):
        raise AuthenticationError("bearer token is not a JWT (three base64url parts separated by dots)")
    header, claims = _json_part(parts[0], "header"), _json_part(parts[1], "payload")
    if not isinstance(header.get("alg"), str):
        raise AuthenticationError("bearer token is not a JWT: its header has no alg")
    audience = claims.get("aud")
    audiences: tuple[str, ...] | None = None
    if isinstance(audience, str):
        audiences = (audience,)
    elif isinstance(audience, list):
        audiences = tuple(a for a in audience if isinstance(a, str))
    shaped = ShapedToken(expires=None, subject=claims.get("sub"), audiences=audiences)
    expires = claims.get("exp")
    if expires is None:
        return shaped
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        raise AuthenticationError(f"bearer token's exp is not a number: {str(expires)[:40]!r}")
    if expires + EXPIRY_LEEWAY_S < now:
        try:
            when = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            when = f"exp {expires}"
        raise AuthenticationError(f"bearer token expired at {when}")
    return dataclasses.replace(shaped, expires=float(expires))


def check_signed_claims(shaped: ShapedToken, *, audience: str) -> str:
    """The service-account username a token the cluster signed names (`sub`); raises AuthenticationError
    when its claims show the API server would refuse it: `aud` present without `audience`, or `sub` not
    `system:serviceaccount:<ns>:<sa>` with valid names. Only for a verified signature: unsigned claims
    prove nothing."""
    if shaped.audiences is not None and audience not in shaped.audiences:
        shown = [a[:_CLAIM_CHARS] for a in shaped.audiences[:5]]
        raise AuthenticationError(
            f"bearer token's audiences {shown} do not include {audience!r}: a token for another audience (such "
            f"as the pod's default token, which is for the API server) is not accepted here; mount a projected "
            f"service-account token with audience {audience!r}"
        )
    subject = shaped.subject
    if not isinstance(subject, str) or len(subject) > _MAX_USERNAME:
        quoted = repr(subject)
        if len(quoted) > _CLAIM_CHARS:
            quoted = f"{quoted[:_CLAIM_CHARS]}... ({len(quoted)} characters)"
        raise AuthenticationError(f"bearer token's subject {quoted} is not a service account")
    try:
        from_service_account_username(subject)
    except ValueError as exc:
        raise AuthenticationError(f"bearer token's subject: {exc}") from None
    return subject


def _json_part(part: str, what: str) -> dict[str, object]:
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = load_json(data, max_depth=MAX_CLAIMS_DEPTH)  # as the API server reads JSON, never recursing deep
    except (binascii.Error, ValueError):
        value = None
    if not isinstance(value, dict):
        raise AuthenticationError(f"bearer token is not a JWT: its {what} is not a base64url JSON object")
    return value
