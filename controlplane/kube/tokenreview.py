"""TokenReview through `KubeApi`: the real `TokenReviewer` behind the CA's Kubernetes JWT authenticator.

The contract is `certs.authenticate.kubejwt.TokenReviewer` (duck-typed: this package never imports
certs/, so the caller hands in how to build its verdict type and which exception means "cannot
review now"). One review is `POST /apis/authentication.k8s.io/v1/tokenreviews` with the token and
the audiences the caller wants; the verdict is the answer's `status`.

Errors: every failure to get a verdict (API unreachable or timing out, an error status such as 403
for missing RBAC or 429/5xx, an answer without a status) raises `unavailable` with the reason; a
verdict of "not authenticated" is a normal answer, not an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import aiohttp

from controlplane.kube.client import KubeApi, KubeApiError

T = TypeVar("T")
PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
REVIEW_TIMEOUT = 10.0  # seconds; a CSR waits on this, so fail well before a client's deadline


class KubeTokenReviewer(Generic[T]):
    """`review(token=..., audiences=...)` asks the API server; see the module docstring.

    `make(authenticated=, username=, audiences=, error=)` builds the verdict (keyword arguments).
    """

    def __init__(
        self,
        api: KubeApi,
        *,
        make: Callable[..., T],
        unavailable: type[Exception],
        timeout: float = REVIEW_TIMEOUT,
    ) -> None:
        self.api = api
        self.make = make
        self.unavailable = unavailable
        self.timeout = timeout

    async def review(self, *, token: str, audiences: Sequence[str]) -> T:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(audiences)},
        }
        try:
            answer = await self.api.request("POST", PATH, body=body, request_timeout=self.timeout)
        except KubeApiError as exc:
            raise self.unavailable(f"TokenReview answered {exc}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise self.unavailable(f"API server {self.api.host} unreachable: {reason}") from None
        status = answer.get("status")
        if not isinstance(status, dict):
            raise self.unavailable("TokenReview answer has no status")
        user = status.get("user") or {}
        raw_audiences = status.get("audiences") or []
        return self.make(
            authenticated=status.get("authenticated") is True,
            username=str(user.get("username") or "") if isinstance(user, dict) else "",
            audiences=tuple(str(a) for a in raw_audiences) if isinstance(raw_audiences, list) else (),
            error=str(status.get("error") or ""),
        )
