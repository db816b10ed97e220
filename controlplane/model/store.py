"""ConfigStore: the latest Kubernetes-shaped objects from a config source, and their change events.

Both config sources (a YAML directory in local mode, Kubernetes informers) write here through the
same two calls, so everything downstream sees one stream of `ConfigEvent`s whatever the source.
Objects are JSON-like mappings (plain dicts, or packed as the config sources hold them:
`controlplane.model.packed`); the store treats them as immutable once written.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

Object = Mapping[str, Any]

# A source writing many objects at once (a relist, a large config file) writes this many per batch
# and lets the event loop turn between batches: the model takes ~30 us per Pod, so 10,000 Pods in
# one batch held the webhook, the CA, xDS and /ready ~300 ms.
WRITE_STEP = 500


class ObjectKey(NamedTuple):
    """Which object: a tuple of three strings, hashed and compared in C (a key is hashed at every
    store, registry and config-file lookup: ~2x faster than a dataclass's Python `__hash__`)."""

    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    @classmethod
    def of(cls, obj: Object) -> ObjectKey:
        meta = obj.get("metadata") or {}
        return cls(
            kind=str(obj["kind"]),
            namespace=str(meta.get("namespace") or ""),
            name=str(meta["name"]),
        )


class EventType(enum.Enum):
    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"


@dataclass(frozen=True)
class ConfigEvent:
    type: EventType
    key: ObjectKey
    old: Object | None
    new: Object | None


Listener = Callable[[Sequence[ConfigEvent]], None]


class ConfigStore:
    """Objects by key plus synchronous fan-out of each batch of changes to listeners.

    Listeners run inline, in subscription order, and must be quick (typically: recompute a small
    derived view or enqueue a push request). A listener that raises is logged and does not stop
    the others or the writer.
    """

    def __init__(self) -> None:
        self._objects: dict[ObjectKey, Object] = {}
        self._listeners: list[Listener] = []
        self._synced = False
        self._on_synced: list[Callable[[], None]] = []

    # -- reading -----------------------------------------------------------------------------
    def get(self, key: ObjectKey) -> Object | None:
        return self._objects.get(key)

    def list(self, kind: str, *, namespace: str | None = None) -> list[Object]:
        found = [
            (key, obj)
            for key, obj in self._objects.items()
            if key.kind == kind and (namespace is None or key.namespace == namespace)
        ]
        return [obj for _, obj in sorted(found, key=lambda item: item[0])]

    def __len__(self) -> int:
        return len(self._objects)

    @property
    def synced(self) -> bool:
        """True once the source has delivered its first complete view."""
        return self._synced

    # -- writing (config sources only) -------------------------------------------------------
    def mark_synced(self) -> None:
        self._synced = True
        waiting, self._on_synced = self._on_synced, []
        for callback in waiting:
            callback()

    def when_synced(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the source has delivered its first complete view: now if it has."""
        if self._synced:
            callback()
        else:
            self._on_synced.append(callback)

    def apply(self, changes: Iterable[tuple[ObjectKey, Object | None]]) -> builtins.list[ConfigEvent]:
        """Set (or delete, with None) each key; notify listeners once with the real changes."""
        events: builtins.list[ConfigEvent] = []
        for key, new in changes:
            old = self._objects.get(key)
            if new is None:
                if old is None:
                    continue
                del self._objects[key]
                events.append(ConfigEvent(EventType.DELETED, key, old, None))
            elif old is None:
                self._objects[key] = new
                events.append(ConfigEvent(EventType.ADDED, key, None, new))
            elif old != new:
                self._objects[key] = new
                events.append(ConfigEvent(EventType.MODIFIED, key, old, new))
            else:
                # equal, no event; hold the source's newest copy so the old one is freed (a relist, or
                # a re-read file, would otherwise leave every unchanged object in memory twice)
                self._objects[key] = new
        if events:
            self._notify(events)
        return events

    async def apply_in_steps(self, changes: Sequence[tuple[ObjectKey, Object | None]]) -> int:
        """`apply` `WRITE_STEP` changes at a time with a turn of the event loop between; the number
        of real changes. Between steps the store holds some objects as written and the rest as they
        were, as during a run of watch events; listeners hear of each step as it is written."""
        changed = 0
        for start in range(0, len(changes), WRITE_STEP):
            if start:
                await asyncio.sleep(0)
            changed += len(self.apply(changes[start : start + WRITE_STEP]))
        return changed

    def replace_kind(self, kind: str, objects: Iterable[Object]) -> builtins.list[ConfigEvent]:
        """Make the store's objects of `kind` exactly `objects` (a relist)."""
        wanted = {ObjectKey.of(obj): obj for obj in objects}
        stale = [(key, None) for key in self._objects if key.kind == kind and key not in wanted]
        return self.apply([*stale, *wanted.items()])

    # -- events ------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, events: Sequence[ConfigEvent]) -> None:
        for listener in list(self._listeners):
            try:
                listener(events)
            except Exception:
                log.exception("config listener %r failed", listener)
