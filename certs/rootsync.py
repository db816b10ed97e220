"""Kubernetes mode's root-certificate distribution: keeps `istio-ca-root-cert` right in every namespace.

`RootConfigMapController.run()` reconciles (certs.rootdist) whenever something it depends on changes:
a Namespace or an `istio-ca-root-cert` ConfigMap in the ConfigStore (the Kubernetes source mirrors
both, so a deleted or edited ConfigMap comes back within one watch event), or the CA's trust bundle
(root rotation). It waits for the store's first complete view, so it never recreates ConfigMaps it
simply has not seen yet. A failed pass (API error, namespace being deleted, write conflict) is logged
and retried after an exponential backoff; the loop ends only by cancellation.

Single writer: the process runs `run()` only while it holds its revision's leader Lease
(controlplane.kube.leader), and cancels it at once when it loses the Lease. Each `run()` starts
with a full pass, so a new leader repairs whatever changed while nobody was leading.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from certs.authority import Authority
from certs.ca import CertificateAuthority
from certs.rootdist import ROOT_CONFIGMAP, ConfigMapView, NamespaceView, RootConfigMapReconciler
from controlplane.model.store import ConfigEvent, ConfigStore, Object

log = logging.getLogger(__name__)


def namespace_view(obj: Object) -> NamespaceView:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    terminating = bool(meta.get("deletionTimestamp")) or status.get("phase") == "Terminating"
    return NamespaceView(name=str(meta.get("name", "")), terminating=terminating)


def configmap_view(obj: Object) -> ConfigMapView:
    meta = obj.get("metadata") or {}
    return ConfigMapView(
        namespace=str(meta.get("namespace", "")),
        data={str(k): str(v) for k, v in (obj.get("data") or {}).items()},
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
    )


class RootConfigMapController:
    """See the module docstring. Construct (it subscribes at once), then `await run()` as a task."""

    def __init__(
        self,
        *,
        store: ConfigStore,
        ca: CertificateAuthority,
        reconciler: RootConfigMapReconciler,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
    ) -> None:
        self.store = store
        self.ca = ca
        self.reconciler = reconciler
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.passes = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self._wake.set()
        store.subscribe(self._on_events)
        store.when_synced(self._wake.set)
        ca.subscribe(self._on_authority)

    def _on_events(self, events: Sequence[ConfigEvent]) -> None:
        for event in events:
            if event.key.kind == "Namespace" or (event.key.kind == "ConfigMap" and event.key.name == ROOT_CONFIGMAP):
                self._wake.set()
                return

    def _on_authority(self, _: Authority) -> None:
        self._wake.set()

    async def reconcile_once(self) -> int:
        """One pass over the store's current view; the number of ConfigMaps written. Client errors propagate."""
        namespaces = [namespace_view(obj) for obj in self.store.list("Namespace")]
        existing = {
            view.namespace: view
            for view in (
                configmap_view(obj)
                for obj in self.store.list("ConfigMap")
                if (obj.get("metadata") or {}).get("name") == ROOT_CONFIGMAP
            )
        }
        actions = await self.reconciler.reconcile(
            root_pem=self.ca.current.root_pem.decode(), namespaces=namespaces, existing=existing
        )
        for action in actions:
            log.info("%s ConfigMap %s/%s", action.verb, action.namespace, ROOT_CONFIGMAP)
        return len(actions)

    async def run(self) -> None:
        """A full pass, then one on every relevant change, until cancelled."""
        self._wake.set()
        delay = self.retry_base
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.store.synced:
                continue  # woken again once the first full view is in
            self.passes += 1
            try:
                await self.reconcile_once()
            except Exception as exc:  # any client failure is retried: the loop must not die
                self.failures += 1
                log.warning(
                    "root ConfigMap reconcile failed: %s; retrying in %.1fs", str(exc) or type(exc).__name__, delay
                )
                await asyncio.sleep(delay)
                delay = min(self.retry_cap, delay * 2)
                self._wake.set()
            else:
                delay = self.retry_base
