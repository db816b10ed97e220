"""Kubernetes mode's config source: keeps the ConfigStore equal to the cluster.

Each watched kind is one `WatchedKind` table entry: which resource, in which scope (cluster-scoped,
every namespace, or only the control plane's namespace) and with which selectors. `KubeSource`
runs one watch loop (`controlplane.kube.watching.infinite_watch`) per entry:

- a (re)list replaces what that entry put in the store: objects that disappeared while the watch
  was down are deleted, the rest set (for an entry that is the only one of its kind this is
  exactly `ConfigStore.replace_kind`);
- each watch event is applied as it arrives (DELETED removes the key);
- the store is marked synced once every entry has listed once;
- an `optional` entry (an Istio CRD that may not be installed) whose resource answers 404 counts
  as listed with no objects, and is probed again every `probe_interval` seconds; when its CRD is
  deleted later, its objects leave the store and probing resumes.

More kinds (Services, EndpointSlices, Pods, ...) are one more entry each; their `kind` must be a
kind the model reads (`controlplane.sources.kinds`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.kube.client import JsonObject, KubeApi
from controlplane.kube.watching import Backoff, Resource, Selection, infinite_watch
from controlplane.model.store import ConfigStore, Object, ObjectKey

log = logging.getLogger(__name__)

NAMESPACES = Resource(group="", version="v1", plural="namespaces", kind="Namespace", namespaced=False)
CONFIGMAPS = Resource(group="", version="v1", plural="configmaps", kind="ConfigMap", namespaced=True)
SERVICES = Resource(group="", version="v1", plural="services", kind="Service", namespaced=True)
PODS = Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
ENDPOINTSLICES = Resource(
    group="discovery.k8s.io", version="v1", plural="endpointslices", kind="EndpointSlice", namespaced=True
)
PEER_AUTHENTICATIONS = Resource(
    group="security.istio.io", version="v1", plural="peerauthentications", kind="PeerAuthentication", namespaced=True
)


class Scope(enum.Enum):
    CLUSTER = "cluster"  # a cluster-scoped resource
    ALL_NAMESPACES = "all-namespaces"  # a namespaced resource, in every namespace
    CONTROL_PLANE = "control-plane"  # a namespaced resource, only in the control plane's namespace


@dataclass(frozen=True, kw_only=True)
class WatchedKind:
    resource: Resource
    scope: Scope
    label_selector: str = ""
    field_selector: str = ""
    optional: bool = False  # a CRD that may be absent: a 404 is an empty list, probed again later

    def selection(self, *, control_plane_namespace: str) -> Selection:
        if self.scope is Scope.CLUSTER and self.resource.namespaced:
            raise ValueError(f"{self.resource} is namespaced; use Scope.ALL_NAMESPACES or Scope.CONTROL_PLANE")
        if self.scope is not Scope.CLUSTER and not self.resource.namespaced:
            raise ValueError(f"{self.resource} is cluster-scoped; use Scope.CLUSTER")
        namespace = control_plane_namespace if self.scope is Scope.CONTROL_PLANE else None
        return Selection(namespace=namespace, label_selector=self.label_selector, field_selector=self.field_selector)

    @property
    def name(self) -> str:
        selectors = ",".join(s for s in (self.label_selector, self.field_selector) if s)
        return f"{self.resource}@{self.scope.value}" + (f"[{selectors}]" if selectors else "")


# The trust-bundle ConfigMap the CA keeps in every namespace (Istio's name; certs.rootdist owns it).
ROOT_CONFIGMAP = "istio-ca-root-cert"

# What the control plane reads: namespace labels (injection policy), its own ConfigMaps (injector
# and mesh config), every namespace's `istio-ca-root-cert` (so the CA can restore it when deleted or
# edited), the service registry (Services, EndpointSlices, Pods) for xDS, and PeerAuthentication
# (an Istio CRD, optional: a cluster without Istio's CRDs still becomes ready). The two ConfigMap
# entries never select the same object, so each object has one owner.
DEFAULT_KINDS: tuple[WatchedKind, ...] = (
    WatchedKind(resource=NAMESPACES, scope=Scope.CLUSTER),
    WatchedKind(resource=CONFIGMAPS, scope=Scope.CONTROL_PLANE, field_selector=f"metadata.name!={ROOT_CONFIGMAP}"),
    WatchedKind(resource=CONFIGMAPS, scope=Scope.ALL_NAMESPACES, field_selector=f"metadata.name={ROOT_CONFIGMAP}"),
    WatchedKind(resource=SERVICES, scope=Scope.ALL_NAMESPACES),
    WatchedKind(resource=ENDPOINTSLICES, scope=Scope.ALL_NAMESPACES),
    WatchedKind(resource=PODS, scope=Scope.ALL_NAMESPACES),
    WatchedKind(resource=PEER_AUTHENTICATIONS, scope=Scope.ALL_NAMESPACES, optional=True),
)


def _storable(obj: JsonObject) -> Object:
    """The object as the store keeps it: managedFields dropped (large, and nothing reads them)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


class _KindMirror:
    """The WatchHandler of one table entry: mirrors its objects into the store."""

    def __init__(self, entry: WatchedKind, store: ConfigStore, on_first_list: Callable[[], None]) -> None:
        self.entry = entry
        self.store = store
        self.owned: set[ObjectKey] = set()
        self.lists = 0
        self.events = 0
        self._on_first_list = on_first_list

    def on_list(self, objects: Sequence[JsonObject]) -> None:
        wanted: dict[ObjectKey, Object] = {}
        for obj in objects:
            key = self._key(obj)
            if key is not None:
                wanted[key] = _storable(obj)
        stale = [(key, None) for key in self.owned if key not in wanted]
        changes = self.store.apply([*stale, *wanted.items()])
        self.owned = set(wanted)
        self.lists += 1
        log.info(
            "listed %s: %d objects, %d changes",
            self.entry.name,
            len(wanted),
            len(changes),
            extra={"kind": self.entry.resource.kind},
        )
        if self.lists == 1:
            self._on_first_list()

    def on_event(self, event_type: str, obj: JsonObject) -> None:
        key = self._key(obj)
        if key is None:
            return
        self.events += 1
        if event_type == "DELETED":
            self.owned.discard(key)
            self.store.apply([(key, None)])
        else:
            self.owned.add(key)
            self.store.apply([(key, _storable(obj))])

    def _key(self, obj: JsonObject) -> ObjectKey | None:
        try:
            return ObjectKey.of(obj)
        except (KeyError, TypeError):
            log.warning("ignoring a %s without metadata.name", self.entry.resource.kind)
            return None


class KubeSource:
    """Keeps `store` equal to the cluster for every entry of `kinds`. `await run()` until cancelled."""

    def __init__(
        self,
        api: KubeApi,
        store: ConfigStore,
        *,
        namespace: str,
        kinds: Sequence[WatchedKind] = DEFAULT_KINDS,
        backoff: Callable[[], Backoff] = Backoff,
        timeout_seconds: int | None = None,
        probe_interval: float = 30.0,
    ) -> None:
        """`probe_interval`: seconds between looks at an optional resource the server does not serve."""
        names = [entry.name for entry in kinds]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate watched kinds: {names}")
        self.api = api
        self.store = store
        self.namespace = namespace
        self.kinds = tuple(kinds)
        self._backoff = backoff
        self._timeout_seconds = timeout_seconds
        self._probe_interval = probe_interval
        self._mirrors = {entry.name: _KindMirror(entry, store, self._check_synced) for entry in self.kinds}
        self._selections = {entry.name: entry.selection(control_plane_namespace=namespace) for entry in self.kinds}

    @property
    def synced(self) -> bool:
        """True once every entry has listed at least once."""
        return all(m.lists > 0 for m in self._mirrors.values())

    def _check_synced(self) -> None:
        if self.synced and not self.store.synced:
            self.store.mark_synced()
            log.info("kubernetes config source synced", extra={"kinds": len(self.kinds)})

    async def run(self) -> None:
        """Watch every entry until cancelled (a watch loop only ends by cancellation)."""
        async with asyncio.TaskGroup() as group:
            for entry in self.kinds:
                group.create_task(
                    infinite_watch(
                        self.api,
                        entry.resource,
                        self._selections[entry.name],
                        self._mirrors[entry.name],
                        backoff=self._backoff(),
                        timeout_seconds=self._timeout_seconds,
                        optional=entry.optional,
                        probe_interval=self._probe_interval,
                    ),
                    name=f"watch {entry.name}",
                )

    def describe(self) -> dict[str, Any]:
        """Per entry: selection, lists so far, events applied, objects held (for /debug)."""
        return {
            name: {
                "selection": str(self._selections[name]),
                "lists": mirror.lists,
                "events": mirror.events,
                "objects": len(mirror.owned),
            }
            for name, mirror in self._mirrors.items()
        }
