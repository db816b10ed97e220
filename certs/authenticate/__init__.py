"""Who is asking for a certificate. One authenticator per module; the CA tries them in order and
the first that succeeds names the caller (ISTIO-FACTS.md: client certificate, then Kubernetes JWT).

An authenticator raises `NoCredentials` when the request carries nothing it understands (no client
certificate, no bearer token) and `AuthenticationError` when what it carries is wrong; the
service reports the specific failures when no authenticator succeeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, kw_only=True)
class Caller:
    """An authenticated caller: how it proved itself and the SPIFFE identities it holds."""

    source: str
    identities: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """What a request brings: its metadata (lower-case keys), the verified peer certificate if any, and
    the client it comes from (an address, `controlplane.peers.client_of_peer`; "" when unknown)."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    peer_certificate_pem: bytes | None = None
    client: str = ""

    def bearer_token(self) -> str | None:
        """The token of an `authorization: Bearer <token>` header; None when absent or not a bearer header."""
        header = self.metadata.get("authorization", "")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()


class AuthenticationError(Exception):
    """The credentials this authenticator understands are present but wrong; the message says why."""

    #: True when the failure is on our side (e.g. the TokenReview API is unreachable), so retrying may work.
    unavailable: bool = False
    #: True when this caller has used up what it may ask for now (`reviewgate`): retrying later may work.
    exhausted: bool = False


class AuthenticatorUnavailable(AuthenticationError):
    """Could not decide, e.g. the Kubernetes API did not answer."""

    unavailable = True


class NoCredentials(AuthenticationError):
    """The request carries nothing this authenticator understands."""


class Authenticator(Protocol):
    name: str

    async def authenticate(self, credentials: Credentials) -> Caller:
        """The caller, or raise NoCredentials / AuthenticationError / AuthenticatorUnavailable."""
        ...
