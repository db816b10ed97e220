"""The garbage collector: ownerReferences, propagationPolicy and the orphan/foregroundDeletion finalizers.

As upstream's `pkg/controller/garbagecollector`, over every resource discovery lists as
listable, watchable and deletable:
- a dependent all of whose owners are gone (absent, or present with another uid, checked with a
  live GET before acting on a cache miss) is deleted; owners still there but others gone: the
  dangling references are removed instead;
- an owner being deleted with the `orphan` finalizer (propagationPolicy Orphan) has its dependents'
  references to it removed, then the finalizer;
- an owner being deleted with `foregroundDeletion` (Foreground) has its dependents deleted (in the
  foreground themselves when they have dependents), and loses the finalizer once no dependent with
  `blockOwnerDeletion: true` is left, so the API server removes it.
Background deletion (the default) needs nothing more: the owner goes at once and the first rule
deletes what it owned.

An owner is looked up where its dependent can name it (`isDangling`): a namespaced owner in the
dependent's namespace, so a dependent whose owner is in another namespace is collected as one whose
owner is gone. A cluster-scoped dependent cannot name a namespaced owner at all: the collector gives up
on it and leaves it alone (`namespacedOwnerOfClusterScopedObjectErr`), whatever becomes of that owner.
When a dependent's reference meets an owner seen in another namespace (either one seen first), the
collector reports it on the dependent (`reportInvalidNamespaceOwnerRef`): a Warning
`OwnerRefInvalidNamespace`, `ownerRef [v1/ConfigMap, namespace: , name: owner, uid: ...] does not exist in
namespace ""`, kept in the event log as kubesim's controllers keep their Events. Events themselves
(`events`, `events.k8s.io`) are neither owners it watches nor dependents it collects (the collector's
`DefaultIgnoredResources`); kubesim serves neither, so this only matters once it does.

Not modelled: the collector's virtual nodes (an owner referenced before it is seen) and its cache of
absent owners: an owner not seen is looked up live each time; the report is made on any owner seen in
another namespace, where the real collector skips it when the first dependent to name that owner named
it in the owner's own namespace.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.kube.client import KubeApi, KubeApiError
from controlplane.kube.watching import Resource
from tests.kubesim.ctl_base import Controller, EventLog, Informer, Obj, object_path, uid_of

ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
IGNORED = frozenset({("", "events"), ("events.k8s.io", "events")})  # (group, resource) the collector never watches
INVALID_NAMESPACE = "OwnerRefInvalidNamespace"


class OwnerOutOfScope(Exception):
    """A cluster-scoped dependent names a namespaced owner: it cannot be looked up, and never will be."""


@dataclass(frozen=True)
class Node:
    """What the collector knows of one object."""

    resource: Resource
    namespace: str
    name: str
    owners: tuple[Mapping[str, Any], ...]
    finalizers: tuple[str, ...]
    deleting: bool


async def discover(api: KubeApi) -> list[Resource]:
    """Every resource (preferred version of each group) that can be listed, watched and deleted
    (`GetDeletableResources`); the collector itself leaves out the ones it ignores (`IGNORED`)."""
    found: list[Resource] = []
    versions = [("", "v1")]
    groups = await api.request("GET", "/apis")
    for group in groups.get("groups") or []:
        preferred = (group.get("preferredVersion") or {}).get("version")
        if preferred:
            versions.append((str(group["name"]), str(preferred)))
    for group_name, version in versions:
        path = f"/apis/{group_name}/{version}" if group_name else f"/api/{version}"
        listing = await api.request("GET", path)
        for entry in listing.get("resources") or []:
            verbs = set(entry.get("verbs") or [])
            if "/" in entry["name"] or not {"list", "watch", "delete"} <= verbs:
                continue
            found.append(
                Resource(
                    group=group_name,
                    version=version,
                    plural=entry["name"],
                    kind=entry["kind"],
                    namespaced=bool(entry.get("namespaced")),
                )
            )
    return found


class GarbageCollector(Controller):
    """Keys are object uids; `sync(uid)` looks at that object as a dependent and as an owner.

    Every resource discovered maps an owner's apiVersion and kind (`kinds`, the collector's REST mapper); the
    ignored ones (`IGNORED`) are not watched.
    """

    name = "garbage-collector"

    def __init__(self, *, api: KubeApi, informers: list[Informer], events: EventLog) -> None:
        watched = [i for i in informers if (i.resource.group, i.resource.plural) not in IGNORED]
        super().__init__(api=api, informers=watched, events=events)
        self.nodes: dict[str, Node] = {}
        self.dependents: dict[str, set[str]] = {}
        self.kinds = {(i.resource.api_version, i.resource.kind): i.resource for i in informers}
        for informer in watched:
            informer.subscribe(functools.partial(self._on_change, informer.resource))

    def _on_change(self, resource: Resource, old: Obj | None, new: Obj | None) -> None:
        obj = new if new is not None else old
        if obj is None:
            return
        uid = uid_of(obj)
        previous = self.nodes.pop(uid, None)
        for owner in previous.owners if previous else ():
            self.dependents.get(str(owner.get("uid")), set()).discard(uid)
        if new is None:
            for dependent in self.dependents.pop(uid, set()):
                self.queue.add(dependent)  # their owner is gone
            for owner in previous.owners if previous else ():
                self.queue.add(str(owner.get("uid")))  # a foreground owner may be free to go
            return
        meta = new["metadata"]
        node = Node(
            resource,
            str(meta.get("namespace") or ""),
            str(meta["name"]),
            tuple(meta.get("ownerReferences") or ()),
            tuple(meta.get("finalizers") or ()),
            bool(meta.get("deletionTimestamp")),
        )
        self.nodes[uid] = node
        for owner in node.owners:
            self.dependents.setdefault(str(owner.get("uid")), set()).add(uid)
        known = {str(owner.get("uid")) for owner in previous.owners} if previous else set()
        self._check_namespaces(node, [ref for ref in node.owners if str(ref.get("uid")) not in known])
        if previous is None and node.namespace:
            self._check_dependents_namespaces(uid, node)
        if node.owners:
            self.queue.add(uid)
            if node.deleting:
                for owner in node.owners:
                    self.queue.add(str(owner.get("uid")))
        if node.deleting and (ORPHAN in node.finalizers or FOREGROUND in node.finalizers):
            self.queue.add(uid)

    async def sync(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None:
            return
        if node.deleting and ORPHAN in node.finalizers:
            await self._orphan(key, node)
        elif node.deleting and FOREGROUND in node.finalizers:
            await self._delete_dependents(key, node)
        elif node.owners and not node.deleting:
            await self._check_owners(key, node)

    def _check_namespaces(self, node: Node, refs: list[Mapping[str, Any]]) -> None:
        """Report the first of a dependent's new references that meets an owner seen in another namespace
        (`addDependentToOwners`); a reference that meets a known owner at other coordinates ends the check."""
        for ref in refs:
            owner = self.nodes.get(str(ref.get("uid")))
            if owner is None:
                continue
            if owner.namespace and owner.namespace != node.namespace:
                self._report_invalid_namespace(node, ref)
                return
            if (owner.name, owner.resource.api_version, owner.resource.kind) != (
                ref.get("name"),
                ref.get("apiVersion"),
                ref.get("kind"),
            ):
                return

    def _check_dependents_namespaces(self, uid: str, owner: Node) -> None:
        """A namespaced owner seen for the first time: report the dependents already seen in another namespace
        (`processGraphChanges`, a virtual node observed) and look at them again."""
        for dependent_uid in sorted(self.dependents.get(uid, set())):
            dependent = self.nodes.get(dependent_uid)
            if dependent is None or dependent.namespace == owner.namespace:
                continue
            ref = next((r for r in dependent.owners if str(r.get("uid")) == uid), None)
            if ref is not None:
                self._report_invalid_namespace(dependent, ref)
            self.queue.add(dependent_uid)

    def _report_invalid_namespace(self, node: Node, ref: Mapping[str, Any]) -> None:
        """The Warning the collector records on a dependent whose owner is in another namespace
        (`reportInvalidNamespaceOwnerRef`): the owner's coordinates in the dependent's namespace."""
        where = (
            f"[{ref.get('apiVersion', '')}/{ref.get('kind', '')}, namespace: {node.namespace}, "
            f"name: {ref.get('name', '')}, uid: {ref.get('uid', '')}]"
        )
        self.events.record(
            {"metadata": {"namespace": node.namespace, "name": node.name}},
            kind=node.resource.kind,
            type="Warning",
            reason=INVALID_NAMESPACE,
            message=f'ownerRef {where} does not exist in namespace "{node.namespace}"',
        )

    async def _owner_state(self, node: Node, ref: Mapping[str, Any]) -> str:
        """ "solid", "dangling" or "waiting" (the owner is being deleted in the foreground), as `isDangling` and
        `classifyReferences` find it: the owner at its name, in the dependent's namespace if its kind is
        namespaced; from the informers' cache when it is there at those coordinates, else by a live GET.
        Raises `OwnerOutOfScope` for a namespaced owner of a cluster-scoped dependent."""
        uid, name = str(ref.get("uid")), str(ref.get("name"))
        cached = self.nodes.get(uid)
        resource = self.kinds.get((str(ref.get("apiVersion")), str(ref.get("kind"))))
        if resource is None and cached is not None and cached.resource.kind == ref.get("kind"):
            resource = cached.resource
        if resource is None:
            raise KubeApiError(status=404, reason="NotFound", message=f"no resource serves the owner kind {ref}")
        if resource.namespaced and not node.namespace:
            raise OwnerOutOfScope(f"{node.resource.kind} {node.name} is cluster-scoped; its owner {ref} is not")
        namespace = node.namespace if resource.namespaced else ""
        if cached is not None and (cached.name, cached.namespace) == (name, namespace):
            return "waiting" if cached.deleting and FOREGROUND in cached.finalizers else "solid"
        try:
            live = await self.api.request("GET", object_path(resource, namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return "dangling"
            raise
        if uid_of(live) != uid:
            return "dangling"
        meta = live.get("metadata") or {}
        return "waiting" if meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or []) else "solid"

    async def _check_owners(self, uid: str, node: Node) -> None:
        try:
            states = {str(ref.get("uid")): await self._owner_state(node, ref) for ref in node.owners}
        except OwnerOutOfScope:
            return  # left alone: no retry will find that owner
        if "solid" in states.values():
            gone = {u for u, state in states.items() if state != "solid"}
            if gone:
                kept = [ref for ref in node.owners if str(ref.get("uid")) not in gone]
                await self._patch(node, {"ownerReferences": kept}, uid)
            return
        policy = "Background"
        if ORPHAN in node.finalizers:
            policy = "Orphan"
        elif FOREGROUND in node.finalizers or ("waiting" in states.values() and self.dependents.get(uid)):
            policy = "Foreground"
        body = {"propagationPolicy": policy, "preconditions": {"uid": uid}}
        try:
            await self.api.request("DELETE", object_path(node.resource, node.namespace, node.name), body=body)
        except KubeApiError as exc:
            if exc.status not in (404, 409):
                raise

    async def _orphan(self, uid: str, node: Node) -> None:
        for dependent_uid in sorted(self.dependents.get(uid, set())):
            dependent = self.nodes.get(dependent_uid)
            if dependent is not None:
                kept = [ref for ref in dependent.owners if str(ref.get("uid")) != uid]
                await self._patch(dependent, {"ownerReferences": kept}, dependent_uid)
        await self._patch(node, {"finalizers": [f for f in node.finalizers if f != ORPHAN]}, uid)

    async def _delete_dependents(self, uid: str, node: Node) -> None:
        blocking = []
        for dependent_uid in sorted(self.dependents.get(uid, set())):
            dependent = self.nodes.get(dependent_uid)
            if dependent is None:
                continue
            ref = next(r for r in dependent.owners if str(r.get("uid")) == uid)
            if ref.get("blockOwnerDeletion"):
                blocking.append(dependent_uid)
            if not dependent.deleting:
                self.queue.add(dependent_uid)
        if not blocking:
            await self._patch(node, {"finalizers": [f for f in node.finalizers if f != FOREGROUND]}, uid)

    async def _patch(self, node: Node, metadata: Obj, uid: str) -> None:
        """Set metadata fields, only if the object is still the one with `uid` (a failed test: nothing to do)."""
        path = object_path(node.resource, node.namespace, node.name)
        patch = [{"op": "test", "path": "/metadata/uid", "value": uid}]
        patch.extend({"op": "add", "path": f"/metadata/{field}", "value": value} for field, value in metadata.items())
        try:
            await self.api.request("PATCH", path, body=patch, content_type="application/json-patch+json")
        except KubeApiError as exc:
            if exc.status not in (404, 409, 422):
                raise
