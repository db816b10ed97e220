"""Kubernetes mode's config source: keeps the ConfigStore equal to the cluster.

Each watched kind is one `WatchedKind` table entry: which resource, in which scope (cluster-scoped,
every namespace, or only the control plane's namespace) and with which selectors. `KubeSource`
runs one watch loop (`controlplane.kube.watching.infinite_watch`) per entry:

- a (re)list replaces what that entry put in the store: objects that disappeared while the watch
  was down are deleted, the rest set (for an entry that is the only one of its kind this is
  exactly `ConfigStore.replace_kind`);
- each watch event is applied as it arrives (DELETED removes the key);
- the store is marked synced once every entry has listed once;
- a `discovery` entry (Services, EndpointSlices, Pods, PeerAuthentications) is filtered by
  `meshConfig.discoverySelectors` (see below);
- an `optional` entry (an Istio CRD that may not be installed) whose resource answers 404 counts
  as listed with no objects, and is probed again every `probe_interval` seconds; when its CRD is
  deleted later, its objects leave the store and probing resumes.

More kinds are one more entry each; their `kind` must be a kind the model reads
(`controlplane.sources.kinds`).

Discovery scope (Istio's discovery namespaces filter): the mesh ConfigMap (`istio[-<rev>]` in the
control plane's namespace, key `mesh`) names label selectors of namespaces; only objects of
selected namespaces reach the store from `discovery` entries. No selectors select every
namespace (even one not listed yet). Each mirror holds everything its watch delivered, so a
namespace relabelled into or out of scope, a deleted namespace, or an edited selector list adds
or removes exactly the affected objects at once, in one store batch, without a relist. Nothing
reaches the store from a `discovery` entry before the Namespaces and the control plane's
ConfigMaps have been listed. A mesh config that fails to parse keeps the last good selectors (the
registry reports the error). Namespaces and the control plane's ConfigMaps are never filtered.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.kube.client import JsonObject, KubeApi
from controlplane.kube.watching import Backoff, Kept, Resource, Selection, infinite_watch
from controlplane.model.fields import ObjectError
from controlplane.model.meshconfig import MeshConfig, NamespaceSelector, selects
from controlplane.model.packed import pack
from controlplane.model.store import WRITE_STEP, ConfigStore, Object, ObjectKey
from controlplane.model.workloads import pod_fields_read

log = logging.getLogger(__name__)

LIST_STEP = WRITE_STEP  # objects of a list written to the store between two turns of the event loop

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
    discovery: bool = False  # only objects of namespaces in the discovery scope reach the store

    def selection(self, *, control_plane_namespace: str) -> Selection:
        if self.scope is Scope.CLUSTER and self.resource.namespaced:
            raise ValueError(f"{self.resource} is namespaced; use Scope.ALL_NAMESPACES or Scope.CONTROL_PLANE")
        if self.scope is not Scope.CLUSTER and not self.resource.namespaced:
            raise ValueError(f"{self.resource} is cluster-scoped; use Scope.CLUSTER")
        if self.discovery and self.scope is not Scope.ALL_NAMESPACES:
            raise ValueError(f"{self.resource}: only an every-namespace entry can be filtered by discovery scope")
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
# (an Istio CRD, optional: a cluster without Istio's CRDs still becomes ready), the last four within
# the discovery scope. The two ConfigMap entries never select the same object, so each object has
# one owner.
DEFAULT_KINDS: tuple[WatchedKind, ...] = (
    WatchedKind(resource=NAMESPACES, scope=Scope.CLUSTER),
    WatchedKind(resource=CONFIGMAPS, scope=Scope.CONTROL_PLANE, field_selector=f"metadata.name!={ROOT_CONFIGMAP}"),
    WatchedKind(resource=CONFIGMAPS, scope=Scope.ALL_NAMESPACES, field_selector=f"metadata.name={ROOT_CONFIGMAP}"),
    WatchedKind(resource=SERVICES, scope=Scope.ALL_NAMESPACES, discovery=True),
    WatchedKind(resource=ENDPOINTSLICES, scope=Scope.ALL_NAMESPACES, discovery=True),
    WatchedKind(resource=PODS, scope=Scope.ALL_NAMESPACES, discovery=True),
    WatchedKind(resource=PEER_AUTHENTICATIONS, scope=Scope.ALL_NAMESPACES, optional=True, discovery=True),
)


def storable(obj: JsonObject) -> Kept:
    """The object as the store keeps it, made so as each list page or watch event arrives (the watches'
    `keep`): of a Pod what the model reads (`pod_fields_read`); of the others all but managedFields
    (large, and nothing reads them); packed (`controlplane.model.packed`): one object to the garbage
    collector, however large. Packed as its page arrives, a relist of 30,000 Pods is 30,000 objects
    to the collector until the mirror has taken it, not ~300,000 (each full pass walks them all)."""
    if obj.get("kind") == "Pod":
        return pack(pod_fields_read(obj))
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return pack(obj)


@dataclass(frozen=True, kw_only=True)
class DiscoveryScope:
    """Which namespaces `discovery` entries may put in the store. `known` is False until it can be decided."""

    known: bool = False
    selectors: tuple[NamespaceSelector, ...] = ()
    selected: frozenset[str] = frozenset()  # namespaces the selectors match (unused without selectors)

    def includes(self, namespace: str) -> bool:
        if not self.known:
            return False
        return not self.selectors or namespace in self.selected


def _keeping_unchanged(before: dict[ObjectKey, Object], listed: dict[ObjectKey, Object]) -> dict[ObjectKey, Object]:
    """`listed`, where each object equal to the one `before` holds under its key is that one, under that
    key instance: the unchanged objects first, then the rest."""
    kept = {key: obj for key, obj in before.items() if listed.get(key) == obj}
    kept.update((key, obj) for key, obj in listed.items() if key not in kept)
    return kept


class _KindMirror:
    """The WatchHandler of one table entry: holds what its watch delivered and mirrors it into the store.

    `held` is everything the watch says exists (by namespace); `owned` the keys this mirror put in
    the store, which for a `discovery` entry are the held ones in scope. `on_change` runs after
    every list or event (after the store was written), before the synced check.
    """

    def __init__(
        self,
        entry: WatchedKind,
        store: ConfigStore,
        *,
        scope: Callable[[], DiscoveryScope],
        on_change: Callable[[], None],
        on_first_list: Callable[[], None],
    ) -> None:
        self.entry = entry
        self.store = store
        self.held: dict[str, dict[ObjectKey, Object]] = {}
        self.owned: set[ObjectKey] = set()
        self.lists = 0
        self.events = 0
        self._scope = scope
        self._on_change = on_change
        self._on_first_list = on_first_list

    def in_scope(self, namespace: str) -> bool:
        return not self.entry.discovery or self._scope().includes(namespace)

    async def on_list(self, objects: Sequence[Kept]) -> None:
        """Replace what this entry holds and owns, writing the store LIST_STEP objects at a time.

        A relist of a large cluster (after a watch expired, or the first list) is tens of thousands
        of objects, each compared with what the store holds and turned into the model: seconds of
        work. Done in one go it would hold the event loop, and with it the webhook, the CA, xDS and
        `/ready`, for all that time. Between steps the store holds some objects as listed and the
        rest as they were, as during a run of watch events. Each step writes what the mirror wants
        *then* (`desired`), so a discovery scope changed between two steps is not undone.

        An object the list brings unchanged is kept as the one held before, under the same key: the
        store's first complete view is frozen out of the garbage collector's passes
        (`ConfigStore.when_synced`), and a relist of 30,000 unchanged Pods would otherwise put 60,000
        new objects back in every full pass."""
        held: dict[str, dict[ObjectKey, Object]] = {}
        for index, obj in enumerate(objects, 1):
            key = self._key(obj)
            if key is not None:
                held.setdefault(key.namespace, {})[key] = obj
            if index % LIST_STEP == 0:
                await asyncio.sleep(0)
        for namespace, items in held.items():
            before = self.held.get(namespace)
            if before:
                held[namespace] = _keeping_unchanged(before, items)
                await asyncio.sleep(0)
        self.held = held
        wanted = [key for ns, items in held.items() if self.in_scope(ns) for key in items]
        owned, self.owned = self.owned, set(wanted)
        keys = [key for key in owned if key not in self.owned]  # deleted (or out of scope) first
        keys.extend(wanted)
        changes = 0
        for start in range(0, len(keys), LIST_STEP):
            if start:
                await asyncio.sleep(0)
            changes += len(self.store.apply([(key, self.desired(key)) for key in keys[start : start + LIST_STEP]]))
        self.lists += 1
        log.info(
            "listed %s: %d objects, %d in scope, %d changes",
            self.entry.name,
            sum(len(items) for items in held.values()),
            len(wanted),
            changes,
            extra={"kind": self.entry.resource.kind},
        )
        self._on_change()
        if self.lists == 1:
            self._on_first_list()

    def desired(self, key: ObjectKey) -> Object | None:
        """What the store should hold for `key` now: the held object if this mirror owns it, else nothing."""
        return self.held.get(key.namespace, {}).get(key) if key in self.owned else None

    def on_event(self, event_type: str, obj: Kept) -> None:
        key = self._key(obj)
        if key is None:
            return
        self.events += 1
        items = self.held.setdefault(key.namespace, {})
        if event_type == "DELETED":
            items.pop(key, None)
            if not items:
                del self.held[key.namespace]
        else:
            items[key] = obj
        if event_type != "DELETED" and self.in_scope(key.namespace):
            self.owned.add(key)
            self.store.apply([(key, items[key])])
        elif key in self.owned:
            self.owned.discard(key)
            self.store.apply([(key, None)])
        self._on_change()

    def rescope(self, old: DiscoveryScope, new: DiscoveryScope) -> list[ObjectKey]:
        """The keys that move in or out of the store when the scope goes from `old` to `new` (`owned`
        updated); the store gets each as `desired` says when it is written."""
        if not self.entry.discovery:
            return []
        moved: list[ObjectKey] = []
        for namespace, items in self.held.items():
            was, now = old.includes(namespace), new.includes(namespace)
            if now and not was:
                moved.extend(items)
                self.owned.update(items)
            elif was and not now:
                moved.extend(items)
                self.owned.difference_update(items)
        return moved

    def held_count(self) -> int:
        return sum(len(items) for items in self.held.values())

    def _key(self, obj: Kept) -> ObjectKey | None:
        try:
            return ObjectKey.of(obj)
        except (KeyError, TypeError):
            log.warning("ignoring a %s without metadata.name", self.entry.resource.kind)
            return None


class KubeSource:
    """Keeps `store` equal to the cluster for every entry of `kinds`. `await run()` until cancelled.

    `mesh_configmap` names the revision's mesh ConfigMap in `namespace` (its `discoverySelectors`
    scope the `discovery` entries). Raises ValueError for duplicate entries, or for `discovery`
    entries without a Namespace entry to evaluate the selectors against.
    """

    def __init__(
        self,
        api: KubeApi,
        store: ConfigStore,
        *,
        namespace: str,
        mesh_configmap: str = "istio",
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
        self._mesh_key = ObjectKey("ConfigMap", namespace, mesh_configmap)
        self._scope = DiscoveryScope()
        self._mesh_seen: Object | None = None
        self._selectors: tuple[NamespaceSelector, ...] = ()
        self._moved: collections.deque[tuple[_KindMirror, ObjectKey]] = collections.deque()  # for _write_moved
        self._moved_waiting = asyncio.Event()
        self._mirrors = {
            entry.name: _KindMirror(
                entry,
                store,
                scope=lambda: self._scope,
                on_change=self._rescope if self._decides_scope(entry) else _nothing,
                on_first_list=self._check_synced,
            )
            for entry in self.kinds
        }
        self._selections = {entry.name: entry.selection(control_plane_namespace=namespace) for entry in self.kinds}
        self._namespaces = [m for m in self._mirrors.values() if m.entry.resource == NAMESPACES]
        self._mesh_sources = [
            m for m in self._mirrors.values() if self._decides_scope(m.entry) and m not in self._namespaces
        ]
        if any(entry.discovery for entry in self.kinds) and not self._namespaces:
            raise ValueError("entries filtered by discovery scope need the Namespace kind watched too")

    @staticmethod
    def _decides_scope(entry: WatchedKind) -> bool:
        """Namespaces and the control plane's ConfigMaps (the mesh config) decide the discovery scope."""
        return entry.resource == NAMESPACES or (entry.resource == CONFIGMAPS and entry.scope is Scope.CONTROL_PLANE)

    @property
    def synced(self) -> bool:
        """True once every entry has listed at least once."""
        return all(m.lists > 0 for m in self._mirrors.values())

    @property
    def scope(self) -> DiscoveryScope:
        """The discovery scope in force."""
        return self._scope

    def _check_synced(self) -> None:
        """Mark the store synced once every entry has listed and what a rescope moved is written."""
        if self.synced and not self._moved and not self.store.synced:
            self.store.mark_synced()
            log.info("kubernetes config source synced", extra={"kinds": len(self.kinds)})

    def _rescope(self) -> None:
        """Re-decide the scope; write what moves in or out of it to the store, the first LIST_STEP
        objects at once and the rest in steps (`_write_moved`), so a namespace of thousands of pods
        relabelled into the selection does not hold the event loop."""
        new = self._decide()
        old, self._scope = self._scope, new
        if new == old:
            return
        moved = [(mirror, key) for mirror in self._mirrors.values() for key in mirror.rescope(old, new)]
        self.store.apply([(key, mirror.desired(key)) for mirror, key in moved[:LIST_STEP]])
        if len(moved) > LIST_STEP:
            self._moved.extend(moved[LIST_STEP:])
            self._moved_waiting.set()
        if not new.selectors:
            log.info("discovery scope: every namespace (no discoverySelectors); %d objects move", len(moved))
        else:
            log.info(
                "discovery scope: %d namespaces selected (added %s, removed %s); %d objects move",
                len(new.selected),
                sorted(new.selected - old.selected),
                sorted(old.selected - new.selected),
                len(moved),
            )

    async def _write_moved(self) -> None:
        """Write the objects a rescope moved beyond its first step, LIST_STEP at a time, each as its
        mirror wants it when written (a watch event for it meanwhile is not undone)."""
        while True:
            await self._moved_waiting.wait()
            while self._moved:
                step = [self._moved.popleft() for _ in range(min(LIST_STEP, len(self._moved)))]
                self.store.apply([(key, mirror.desired(key)) for mirror, key in step])
                await asyncio.sleep(0)
            self._moved_waiting.clear()
            self._check_synced()

    def _decide(self) -> DiscoveryScope:
        if not all(m.lists for m in (*self._namespaces, *self._mesh_sources)):
            return DiscoveryScope()
        mesh = next(
            (
                m.held[self.namespace][self._mesh_key]
                for m in self._mesh_sources
                if self._mesh_key in m.held.get(self.namespace, {})
            ),
            None,
        )
        if mesh is not self._mesh_seen:
            self._mesh_seen = mesh
            try:
                self._selectors = MeshConfig.from_configmap(mesh).discovery_selectors if mesh is not None else ()
            except ObjectError as exc:
                log.warning(
                    "ConfigMap %s/%s: %s; the discovery scope keeps the last good selectors",
                    self._mesh_key.namespace,
                    self._mesh_key.name,
                    exc,
                )
        if not self._selectors:
            return DiscoveryScope(known=True)
        selected = frozenset(
            key.name
            for mirror in self._namespaces
            for key, obj in mirror.held.get("", {}).items()
            if selects(self._selectors, (obj.get("metadata") or {}).get("labels") or {})
        )
        return DiscoveryScope(known=True, selectors=self._selectors, selected=selected)

    async def run(self) -> None:
        """Watch every entry until cancelled (a watch loop only ends by cancellation)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._write_moved(), name="write rescoped objects")
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
                        keep=storable,
                    ),
                    name=f"watch {entry.name}",
                )

    def describe(self) -> dict[str, Any]:
        """Per entry: selection, lists so far, events taken, objects held and objects in the store (for /debug)."""
        return {
            name: {
                "selection": str(self._selections[name]) + (" (discovery scope)" if mirror.entry.discovery else ""),
                "lists": mirror.lists,
                "events": mirror.events,
                "held": mirror.held_count(),
                "objects": len(mirror.owned),
            }
            for name, mirror in self._mirrors.items()
        }


def _nothing() -> None:
    """The change hook of entries that do not decide the discovery scope."""
