"""The root-CA publisher of kube-controller-manager: `kube-root-ca.crt` in every namespace.

Every pod's service-account volume (`kube-api-access-*`, added by the API server) projects the
`ca.crt` key of ConfigMap `kube-root-ca.crt` in the pod's namespace, so the kubelet cannot start a
pod until it exists. `RootCaPublisher(kubeconfig=..., ca_pem=...)` watches namespaces and creates the
ConfigMap in each (or puts `ca.crt` back when someone changes it), as the real controller does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from collections.abc import Sequence

from controlplane.kube.client import KubeApi, KubeApiError
from controlplane.kube.watching import Kept, Resource, Selection, infinite_watch

log = logging.getLogger(__name__)

NAME = "kube-root-ca.crt"
NAMESPACES = Resource(group="", version="v1", plural="namespaces", kind="Namespace", namespaced=False)


class RootCaPublisher:
    """See the module docstring. `start()` returns once every existing namespace has the ConfigMap."""

    def __init__(self, *, kubeconfig: pathlib.Path, ca_pem: bytes) -> None:
        self.kubeconfig = kubeconfig
        self.ca = ca_pem.decode()
        self._api: KubeApi | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._api = await KubeApi.connect(kubeconfig=self.kubeconfig)
        listed = asyncio.Event()
        publisher = self

        class Handler:
            async def on_list(self, objects: Sequence[Kept]) -> None:
                for obj in objects:
                    publisher._pending.put_nowait(obj["metadata"]["name"])
                listed.set()

            def on_event(self, event_type: str, obj: Kept) -> None:
                if event_type in ("ADDED", "MODIFIED") and not obj["metadata"].get("deletionTimestamp"):
                    publisher._pending.put_nowait(obj["metadata"]["name"])

        self._worker = asyncio.create_task(self._work())
        self._task = asyncio.create_task(infinite_watch(self._api, NAMESPACES, Selection(), Handler()))
        await asyncio.wait_for(listed.wait(), 30)
        await self._pending.join()

    async def _work(self) -> None:
        while True:
            namespace = await self._pending.get()
            try:
                await self._ensure(namespace)
            except (KubeApiError, OSError) as exc:
                log.warning("kube-root-ca.crt in %s: %s; retrying", namespace, exc)
                await asyncio.sleep(0.5)
                self._pending.put_nowait(namespace)
            finally:
                self._pending.task_done()

    async def _ensure(self, namespace: str) -> None:
        assert self._api is not None
        path = f"/api/v1/namespaces/{namespace}/configmaps"
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": NAME}, "data": {"ca.crt": self.ca}}
        try:
            current = await self._api.request("GET", f"{path}/{NAME}")
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            try:
                await self._api.request("POST", path, body=body)
            except KubeApiError as create_error:
                if create_error.status not in (403, 409):  # 403: the namespace is terminating
                    raise
            return
        if (current.get("data") or {}).get("ca.crt") != self.ca:
            patch = {"data": {"ca.crt": self.ca}}
            await self._api.request("PATCH", f"{path}/{NAME}", body=patch, content_type="application/merge-patch+json")

    async def stop(self) -> None:
        for task in (self._task, self._worker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._worker = None
        if self._api is not None:
            await self._api.close()
            self._api = None
