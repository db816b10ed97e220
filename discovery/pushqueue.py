"""From model changes to pushes: mergeable push requests, the debouncer, and the push queue.

- `PushRequest` says what changed; two requests merge into one that covers both.
- `Debouncer` merges requests until the stream of changes has been quiet for `quiet` seconds,
  or `max_delay` seconds have passed since the first unpushed change; then it emits one request.
  Both are constructor parameters (100 ms / 10 s in production, 0 in tests).
- `PushQueue` holds at most one pending request per connection: a connection that is still busy
  with an earlier push gets later requests merged into its pending one. Whatever the rate of
  changes and however slow a client, the queue holds one entry per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from controlplane.model.registry import ConfigUpdate, ModelChange, UpdateKind

log = logging.getLogger(__name__)


_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True)
class PushRequest:
    updates: frozenset[ConfigUpdate]
    full: bool  # anything but endpoints changed: every type may need a push
    start: float  # time.monotonic() of the earliest change merged in
    merged: int = 1  # how many requests were merged into this one
    version: int = 0  # the newest model version merged in
    # Hosts whose endpoints changed which sidecars (tlsMode) or identities serve a port: proxyless
    # clusters choose mTLS from that, so it needs CDS as well as EDS for their clients.
    tls_changed: frozenset[str] = frozenset()

    @classmethod
    def from_change(cls, change: ModelChange, *, now: float | None = None) -> PushRequest:
        return cls(
            updates=change.updates,
            full=not change.endpoints_only,
            start=time.monotonic() if now is None else now,
            version=change.version,
        )

    @classmethod
    def everything(cls, *, now: float | None = None) -> PushRequest:
        """A full push with no particular update (e.g. forced by an operator)."""
        return cls(updates=frozenset(), full=True, start=time.monotonic() if now is None else now)

    def merge(self, other: PushRequest) -> PushRequest:
        return PushRequest(
            updates=self.updates | other.updates,
            full=self.full or other.full,
            start=min(self.start, other.start),
            merged=self.merged + other.merged,
            version=max(self.version, other.version),
            tls_changed=self.tls_changed | other.tls_changed,
        )

    def of_kind(self, kind: UpdateKind) -> frozenset[str]:
        return self._names.get(kind, _NONE)

    def has(self, *kinds: UpdateKind) -> bool:
        names = self._names
        return any(kind in names for kind in kinds)

    @functools.cached_property
    def _names(self) -> Mapping[UpdateKind, frozenset[str]]:
        """Worked out on first use: a push asks each stream's generators, and the request is shared by
        every stream it goes to. Kept by the request, so they are freed with it."""
        return _names_by_kind(self.updates)

    def __str__(self) -> str:
        shown = ", ".join(str(u) for u in heapq.nsmallest(5, self.updates, key=lambda u: u.sort_key))
        more = f" and {len(self.updates) - 5} more" if len(self.updates) > 5 else ""
        return f"{'full' if self.full else 'incremental'} push ({shown}{more})"


def _names_by_kind(updates: frozenset[ConfigUpdate]) -> Mapping[UpdateKind, frozenset[str]]:
    names: dict[UpdateKind, set[str]] = {}
    for update in updates:
        names.setdefault(update.kind, set()).add(update.name)
    return {kind: frozenset(found) for kind, found in names.items()}


class Debouncer:
    """Merges push requests that arrive close together. `add` is synchronous; `run` is a task."""

    def __init__(
        self,
        *,
        quiet: float,
        max_delay: float,
        emit: Callable[[PushRequest], None],
        observe: Callable[[float, PushRequest], None] | None = None,
    ) -> None:
        if quiet < 0 or max_delay < 0:
            raise ValueError("debounce times must not be negative")
        self.quiet = quiet
        self.max_delay = max_delay
        self._emit = emit
        self._observe = observe
        self._pending: PushRequest | None = None
        self._first = 0.0
        self._last = 0.0
        self._event = asyncio.Event()

    @property
    def pending(self) -> PushRequest | None:
        return self._pending

    def add(self, request: PushRequest) -> None:
        now = time.monotonic()
        if self._pending is None:
            self._pending = request
            self._first = now
        else:
            self._pending = self._pending.merge(request)
        self._last = now
        self._event.set()

    async def run(self) -> None:
        while True:
            await self._event.wait()
            while True:
                now = time.monotonic()
                wait = min(self._last + self.quiet - now, self._first + self.max_delay - now)
                if wait <= 0:
                    break
                self._event.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._event.wait()
            self._event.clear()
            request, self._pending = self._pending, None
            if request is None:
                continue
            try:
                if self._observe is not None:
                    self._observe(time.monotonic() - self._first, request)
                self._emit(request)
            except Exception:
                log.exception("push failed to start")


K = TypeVar("K", bound=Hashable)


class PushQueue(Generic[K]):
    """Connections waiting for a push, each at most once, in arrival order.

    A worker takes a connection with `dequeue()` and must call `done(conn)` when it finished; a
    request for a connection that is being worked on waits in a side slot (merged) and the
    connection rejoins the queue on `done`. `remove(conn)` forgets a closed connection.
    """

    def __init__(self) -> None:
        self._pending: OrderedDict[K, PushRequest] = OrderedDict()
        self._busy: set[K] = set()
        self._again: dict[K, PushRequest] = {}
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pending) + len(self._again)

    def enqueue(self, conn: K, request: PushRequest) -> None:
        if conn in self._busy:
            earlier = self._again.get(conn)
            self._again[conn] = earlier.merge(request) if earlier is not None else request
            return
        earlier = self._pending.get(conn)
        self._pending[conn] = earlier.merge(request) if earlier is not None else request
        self._ready.set()

    async def dequeue(self) -> tuple[K, PushRequest]:
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        conn, request = self._pending.popitem(last=False)
        self._busy.add(conn)
        return conn, request

    def done(self, conn: K) -> None:
        self._busy.discard(conn)
        later = self._again.pop(conn, None)
        if later is not None:
            self.enqueue(conn, later)

    def remove(self, conn: K) -> None:
        self._pending.pop(conn, None)
        self._again.pop(conn, None)
        self._busy.discard(conn)
