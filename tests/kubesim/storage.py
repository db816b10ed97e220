"""Objects, one global resourceVersion, a bounded window of past events, and live watchers.

Like etcd behind the API server: every write gets the next resourceVersion; the last `window`
events are retained so watches and paginated lists can start from a past resourceVersion;
anything older is compacted and answers `410 Gone` (reason Expired). What is written is what the
API server encodes: a built-in object as its Go type writes it (`decoding.stored_form`), whoever
wrote it.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.kubesim import decoding
from tests.kubesim.resources import ResourceType
from tests.kubesim.selectors import FieldSelector, LabelSelector
from tests.kubesim.status import expired

Obj = dict[str, Any]
Key = tuple[str, str, str]  # resource key, namespace ("" if cluster-scoped), name


@dataclass(frozen=True)
class Event:
    rv: int
    resource: ResourceType
    type: str  # ADDED, MODIFIED, DELETED
    old: Obj | None
    new: Obj | None  # for DELETED: the object as deleted (its resourceVersion is the deletion's)


@dataclass(eq=False)
class Watcher:
    """One watch stream's filter and queue. `None` in the queue ends the stream."""

    resource: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj, self.resource.field_getters())

    def translate(self, event: Event) -> tuple[str, Obj] | None:
        """The event this watcher sees: selector transitions turn into ADDED/DELETED."""
        if event.resource.key != self.resource.key:
            return None
        old_in = self.matches(event.old) if event.type != "ADDED" else False
        new = event.new if self.matches(event.new) else None  # None also when it does not match
        if event.type == "DELETED":
            return ("DELETED", copy.deepcopy(new)) if new is not None else None
        if new is not None:
            return ("MODIFIED" if old_in else "ADDED", copy.deepcopy(new))
        if old_in and event.old is not None:
            gone = copy.deepcopy(event.old)
            gone["metadata"]["resourceVersion"] = str(event.rv)
            return ("DELETED", gone)
        return None

    def close(self) -> None:
        self.queue.put_nowait(None)


class Storage:
    def __init__(self, *, window: int) -> None:
        if window < 1:
            raise ValueError("window must be at least 1 event")
        self.window = window
        self.rv = 0
        self.objects: dict[Key, Obj] = {}
        self.events: deque[Event] = deque()
        self.compacted_rv = 0  # events at or below this resourceVersion may be gone
        self.watchers: set[Watcher] = set()

    # -- reading ------------------------------------------------------------------------------
    def get(self, resource: ResourceType, namespace: str, name: str) -> Obj | None:
        return self.objects.get((resource.key, namespace, name))

    def items(self, resource: ResourceType, namespace: str | None = None) -> list[Obj]:
        """Current objects in key order (namespace, then name).

        Selected before they are sorted: admission lists the webhook configurations on every write, and
        sorting the whole store each time made a write cost ~5 ms with 10,000 objects stored."""
        wanted = resource.key
        found = [
            (key, obj)
            for key, obj in self.objects.items()
            if key[0] == wanted and (namespace is None or key[1] == namespace)
        ]
        found.sort(key=lambda kv: kv[0])
        return [obj for _, obj in found]

    def namespaced_keys(self, namespace: str) -> Iterator[Key]:
        return iter([key for key in self.objects if key[1] == namespace])

    def snapshot(self, resource: ResourceType, namespace: str | None, rv: int) -> list[Obj]:
        """The objects as they were at resourceVersion `rv`; 410 Expired if it was compacted."""
        if rv < self.compacted_rv:
            raise expired(f"too old resource version: {rv} ({self.compacted_rv})")
        state = {
            key: obj
            for key, obj in self.objects.items()
            if key[0] == resource.key and (namespace is None or key[1] == namespace)
        }
        for event in reversed(self.events):
            if event.rv <= rv:
                break
            if event.resource.key != resource.key:
                continue
            ref = event.new if event.new is not None else event.old
            assert ref is not None
            meta = ref["metadata"]
            key = (resource.key, meta.get("namespace", ""), meta["name"])
            if namespace is not None and key[1] != namespace:
                continue
            if event.type == "ADDED":
                state.pop(key, None)
            else:
                assert event.old is not None
                state[key] = event.old
        return [state[key] for key in sorted(state)]

    # -- writing ------------------------------------------------------------------------------
    def write(self, resource: ResourceType, obj: Obj, *, event_type: str) -> Obj:
        """Store `obj` (ADDED or MODIFIED) with the next resourceVersion; return the stored copy, a built-in object
        as its Go type encodes it (`decoding.stored_form`)."""
        self.rv += 1
        versioned = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        stored: Obj = decoding.stored_form(resource, versioned)  # resourceVersion in its place in ObjectMeta
        meta = stored["metadata"]
        key = (resource.key, meta.get("namespace", ""), meta["name"])
        old = self.objects.get(key)
        self.objects[key] = stored
        self._record(Event(self.rv, resource, event_type, old, stored))
        return stored

    def delete(self, resource: ResourceType, namespace: str, name: str) -> Obj:
        """Remove an object; the DELETED event carries it with the deletion's resourceVersion."""
        key = (resource.key, namespace, name)
        old = self.objects.pop(key)
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._record(Event(self.rv, resource, "DELETED", old, gone))
        return gone

    def _record(self, event: Event) -> None:
        self.events.append(event)
        while len(self.events) > self.window:
            self.compacted_rv = self.events.popleft().rv
        for watcher in list(self.watchers):
            translated = watcher.translate(event)
            if translated is not None:
                watcher.queue.put_nowait(translated)

    def compact(self) -> None:
        """Forget every retained event: any older resourceVersion now answers 410 Expired."""
        self.events.clear()
        self.compacted_rv = self.rv

    # -- watching -----------------------------------------------------------------------------
    def watch(self, watcher: Watcher, *, since: int | None) -> None:
        """Register `watcher`, first queueing what it missed after `since` (None: current state as ADDED).

        Raises 410 Expired when `since` is older than the retained window.
        """
        if since is None:
            for obj in self.items(watcher.resource, watcher.namespace):
                if watcher.matches(obj):
                    watcher.queue.put_nowait(("ADDED", copy.deepcopy(obj)))
        else:
            if since < self.compacted_rv:
                raise expired(f"too old resource version: {since} ({self.compacted_rv})")
            for event in self.events:
                if event.rv > since:
                    translated = watcher.translate(event)
                    if translated is not None:
                        watcher.queue.put_nowait(translated)
        self.watchers.add(watcher)

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def close_watches(self) -> None:
        for watcher in list(self.watchers):
            watcher.close()
