"""Authenticate by a Kubernetes service-account token (`authorization: Bearer <jwt>`).

The token is not decoded here: the API server decides, through a TokenReview with audience
`istio-ca`. A `clusterid` metadata value naming another cluster is refused (meshplane has no
remote clusters). The review's `status.audiences` must include `istio-ca`: an empty list means the
token is only good for the API server itself (a token without `aud`, or an authenticator that does
not check audiences), so it is refused. The reviewed username must be
`system:serviceaccount:<ns>:<sa>` with valid Kubernetes names.

Seam: `controlplane/kube` provides the real `TokenReviewer` (TokenReview through
kubernetes-asyncio); tests use an in-repo fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from certs.authenticate import AuthenticationError, AuthenticatorUnavailable, Caller, Credentials, NoCredentials
from certs.identity import from_service_account_username, spiffe_id

AUDIENCE = "istio-ca"


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


class KubeJwtAuthenticator:
    name = "kubernetes-jwt"

    def __init__(
        self, *, reviewer: TokenReviewer, trust_domain: str, cluster_id: str, audience: str = AUDIENCE
    ) -> None:
        self.reviewer = reviewer
        self.trust_domain = trust_domain
        self.cluster_id = cluster_id
        self.audience = audience

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
