"""ConfigMaps through `KubeApi`: the real `ConfigMapClient` behind the root-certificate distribution.

The contract is `certs.rootdist.ConfigMapClient` (duck-typed: this package never imports certs/,
so the caller hands in the two race exceptions). `update` reads the ConfigMap and writes it back
with the given data and labels and the read resourceVersion, so annotations survive and a
concurrent write is detected by the server rather than overwritten.

Errors: create raises `exists` on 409 AlreadyExists; update raises `missing` when the ConfigMap is
gone (404 on read or write); every other API error (a 409 Conflict from a concurrent write, a 403
in a terminating namespace, ...) propagates as KubeApiError, transport failures as aiohttp/OS
errors, for the caller's retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controlplane.kube.client import KubeApi, KubeApiError


class KubeConfigMaps:
    """create/update ConfigMaps over `api`; see the module docstring."""

    def __init__(self, api: KubeApi, *, exists: type[Exception], missing: type[Exception]) -> None:
        self.api = api
        self.exists = exists
        self.missing = missing

    @staticmethod
    def _path(namespace: str, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{namespace}/configmaps"
        return f"{base}/{name}" if name is not None else base

    async def create(self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "data": dict(data),
        }
        try:
            await self.api.request("POST", self._path(namespace), body=body)
        except KubeApiError as exc:
            if exc.status == 409:
                raise self.exists(f"ConfigMap {namespace}/{name} already exists") from None
            raise

    async def update(self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]) -> None:
        try:
            current = await self.api.request("GET", self._path(namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                raise self.missing(f"ConfigMap {namespace}/{name} does not exist") from None
            raise
        metadata: dict[str, Any] = {**(current.get("metadata") or {}), "labels": dict(labels)}
        metadata.pop("managedFields", None)
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": dict(data)}
        if current.get("immutable"):
            body["immutable"] = current["immutable"]  # the server refuses the write, naming the field
        try:
            await self.api.request("PUT", self._path(namespace, name), body=body)
        except KubeApiError as exc:
            if exc.status == 404:
                raise self.missing(f"ConfigMap {namespace}/{name} was deleted before the update") from None
            raise
