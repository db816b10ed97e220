"""Secrets through `KubeApi`: the real `SecretClient` behind the CA's `KubeSecretKeyStore`.

The contract is `certs.kubestore.SecretClient` (duck-typed here: this package never imports
certs/, so the return values are plain `SecretData` and the two race exceptions are raised by
classes the caller hands in). Secret data crosses the wire base64-encoded, as the API requires;
callers see bytes.

Errors: get answers None on 404; create raises `exists` on 409 AlreadyExists; replace raises
`conflict` on 409 Conflict (stale resourceVersion) or when the Secret is gone; every other API
error propagates as KubeApiError, transport failures as aiohttp/OS errors.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from controlplane.kube.client import JsonObject, KubeApi, KubeApiError

T = TypeVar("T")


def encode_data(data: Mapping[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode("ascii") for key, value in data.items()}


def decode_data(secret: JsonObject, *, where: str) -> dict[str, bytes]:
    """The Secret's `data` as bytes; KubeApiError(BadResponse) naming the key that is not base64."""
    raw = secret.get("data") or {}
    if not isinstance(raw, dict):
        raise KubeApiError(status=200, reason="BadResponse", message=f"{where}: data is not an object")
    out: dict[str, bytes] = {}
    for key, value in raw.items():
        try:
            out[str(key)] = base64.b64decode(str(value or ""), validate=True)
        except (binascii.Error, ValueError):
            raise KubeApiError(
                status=200, reason="BadResponse", message=f"{where}: data.{key} is not valid base64"
            ) from None
    return out


def _resource_version(secret: JsonObject) -> str:
    return str((secret.get("metadata") or {}).get("resourceVersion") or "")


class KubeSecrets(Generic[T]):
    """Get/create/replace Secrets over `api`.

    `make(data, resource_version)` builds the caller's value type; `exists` and `conflict` are the
    exception classes to raise for the two races (see the module docstring).
    """

    def __init__(
        self,
        api: KubeApi,
        *,
        make: Callable[[dict[str, bytes], str], T],
        exists: type[Exception],
        conflict: type[Exception],
    ) -> None:
        self.api = api
        self.make = make
        self.exists = exists
        self.conflict = conflict

    @staticmethod
    def _path(namespace: str, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{namespace}/secrets"
        return f"{base}/{name}" if name is not None else base

    def _value(self, secret: JsonObject, *, namespace: str, name: str) -> T:
        data = decode_data(secret, where=f"Secret {namespace}/{name}")
        return self.make(data, _resource_version(secret))

    async def get(self, *, namespace: str, name: str) -> T | None:
        """The Secret, or None when it does not exist."""
        try:
            secret = await self.api.request("GET", self._path(namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise
        return self._value(secret, namespace=namespace, name=name)

    async def create(self, *, namespace: str, name: str, data: Mapping[str, bytes], type: str) -> T:
        """Create it; raises `exists` when the name is taken."""
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": type,
            "data": encode_data(data),
        }
        try:
            secret = await self.api.request("POST", self._path(namespace), body=body)
        except KubeApiError as exc:
            if exc.status == 409:
                raise self.exists(f"Secret {namespace}/{name} already exists") from None
            raise
        return self._value(secret, namespace=namespace, name=name)

    async def replace(self, *, namespace: str, name: str, data: Mapping[str, bytes], resource_version: str) -> T:
        """Replace its data (type, labels and annotations are kept) if `resource_version` is current.

        Raises `conflict` when the stored resourceVersion differs or the Secret no longer exists. The
        server checks the precondition (PUT with metadata.resourceVersion), so a write between the
        read and the PUT is a conflict too.
        """
        try:
            current = await self.api.request("GET", self._path(namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                raise self.conflict(f"Secret {namespace}/{name} no longer exists") from None
            raise
        if _resource_version(current) != resource_version:
            raise self.conflict(
                f"Secret {namespace}/{name} is at resourceVersion {_resource_version(current)}, not {resource_version}"
            )
        metadata = {**(current.get("metadata") or {}), "resourceVersion": resource_version}
        metadata.pop("managedFields", None)
        body = {**current, "metadata": metadata, "data": encode_data(data)}
        body.pop("stringData", None)
        try:
            secret = await self.api.request("PUT", self._path(namespace, name), body=body)
        except KubeApiError as exc:
            if exc.status in (404, 409):
                raise self.conflict(f"Secret {namespace}/{name}: {exc.message}") from None
            raise
        return self._value(secret, namespace=namespace, name=name)
