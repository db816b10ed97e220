"""In-memory fakes for the CA's seams: Secrets, ConfigMaps and TokenReview."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from certs.authenticate.kubejwt import TokenReview, TokenReviewUnavailable
from certs.kubestore import Secret, SecretConflict, SecretExists
from certs.rootdist import ConfigMapExists, ConfigMapMissing


@dataclass
class FakeSecrets:
    """Namespaced Secrets with resourceVersions; `calls` records (verb, namespace, name)."""

    secrets: dict[tuple[str, str], Secret] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    version: int = 0
    #: when set, the next `create` behaves as if another replica created this Secret just before us
    preempt_create: Mapping[str, bytes] | None = None

    def _next(self) -> str:
        self.version += 1
        return str(self.version)

    def put(self, namespace: str, name: str, data: Mapping[str, bytes]) -> Secret:
        secret = Secret(data=dict(data), resource_version=self._next())
        self.secrets[(namespace, name)] = secret
        return secret

    async def get(self, *, namespace: str, name: str) -> Secret | None:
        self.calls.append(("get", namespace, name))
        return self.secrets.get((namespace, name))

    async def create(self, *, namespace: str, name: str, data: Mapping[str, bytes], type: str) -> Secret:
        self.calls.append(("create", namespace, name))
        if self.preempt_create is not None:
            self.put(namespace, name, self.preempt_create)
            self.preempt_create = None
        if (namespace, name) in self.secrets:
            raise SecretExists(name)
        return self.put(namespace, name, data)

    async def replace(self, *, namespace: str, name: str, data: Mapping[str, bytes], resource_version: str) -> Secret:
        self.calls.append(("replace", namespace, name))
        current = self.secrets.get((namespace, name))
        if current is None or current.resource_version != resource_version:
            raise SecretConflict(name)
        return self.put(namespace, name, data)


@dataclass
class FakeConfigMaps:
    """ConfigMaps keyed by (namespace, name) -> (data, labels)."""

    items: dict[tuple[str, str], tuple[dict[str, str], dict[str, str]]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def create(self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]) -> None:
        self.calls.append(("create", namespace))
        if (namespace, name) in self.items:
            raise ConfigMapExists(name)
        self.items[(namespace, name)] = (dict(data), dict(labels))

    async def update(self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]) -> None:
        self.calls.append(("update", namespace))
        if (namespace, name) not in self.items:
            raise ConfigMapMissing(name)
        self.items[(namespace, name)] = (dict(data), dict(labels))


@dataclass
class FakeTokenReviewer:
    """Answers TokenReviews from a table token -> review; unknown tokens are unauthenticated."""

    reviews: dict[str, TokenReview] = field(default_factory=dict)
    down: bool = False
    asked: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    async def review(self, *, token: str, audiences: Sequence[str]) -> TokenReview:
        self.asked.append((token, tuple(audiences)))
        if self.down:
            raise TokenReviewUnavailable("connection refused")
        return self.reviews.get(token, TokenReview(authenticated=False, error="invalid bearer token"))


def shaped_token(subject: str, *, exp: float | None = None, kid: str = "fake") -> str:
    """A token with a JWT's shape (what `kubejwt` sends to review) but no valid signature."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    claims: dict[str, object] = {"sub": subject, **({"exp": exp} if exp is not None else {})}
    return f"{part({'alg': 'ES256', 'kid': kid})}.{part(claims)}.c2lnbmF0dXJl"


#: The token FakeTokenReviewer tables use in tests.
T = shaped_token("t")
