"""Delta (incremental) ADS: one stream's `DeltaDiscoveryRequest/Response`s.

The stream remembers, per type, the version of every resource the client has (`Watched.known`,
seeded from `initial_resource_versions` on reconnect). A response carries only resources whose
version differs, plus `removed_resources`: names the client has that no longer exist (wildcard
subscriptions), or subscribed names that do not exist. Subscription changes are honoured even
on a request with a stale nonce; unsubscribing needs no response.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType

from envoy.service.discovery.v3 import discovery_pb2

from discovery.cache import Resource
from discovery.connection import Decision, DeltaRequest, Watched, reading, should_respond_delta
from discovery.generators import Generated
from discovery.metrics import HOOKS
from discovery.pushqueue import PushRequest
from discovery.stream import StreamBase, error_detail


class DeltaStream(StreamBase[discovery_pb2.DeltaDiscoveryRequest]):
    delta = True

    async def handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        conn = self.conn
        assert conn is not None
        type_url = request.type_url
        generator = self.generator_for(type_url)
        if generator is None:
            return
        await self.take_turn(
            reading(
                len(request.resource_names_subscribe)
                + len(request.resource_names_unsubscribe)
                + len(request.initial_resource_versions)
            )
        )
        view = DeltaRequest(
            type_url=type_url,
            response_nonce=request.response_nonce,
            subscribe=tuple(request.resource_names_subscribe),
            unsubscribe=tuple(request.resource_names_unsubscribe),
            initial_versions=dict(request.initial_resource_versions),
            error=error_detail(request),
        )
        decision, state, added = should_respond_delta(conn.watched.get(type_url), view)
        if not self.record(type_url, decision, state):
            return
        generated, version = await self.answer(generator, state)
        force = decision is not Decision.NAMES_CHANGED
        await self._send(type_url, generated, state, None, version=version, force=force, added=added)

    async def send(
        self, type_url: str, generated: Generated, watched: Watched, request: PushRequest | None, *, version: int
    ) -> bool:
        return await self._send(type_url, generated, watched, request, version=version, force=False, added=frozenset())

    async def _send(
        self,
        type_url: str,
        generated: Generated,
        watched: Watched,
        request: PushRequest | None,
        *,
        version: int,
        force: bool,
        added: frozenset[str],
    ) -> bool:
        conn = self.conn
        assert conn is not None
        started = time.perf_counter()
        known = watched.known
        resources: list[Resource] = [
            r
            for g in generated.groups
            for r in g.resources
            if known.get(r.name) != r.version and (watched.wildcard or r.name in watched.names)
        ]
        removed = _removed(watched, generated, added)
        if not resources and not removed and not force:
            if request is not None:  # a push whose every resource the client has at this version
                HOOKS.unchanged(conn, type_url)
            return False
        nonce = self.service.nonce()
        header = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=str(version),
            type_url=type_url,
            nonce=nonce,
            removed_resources=sorted(removed),
            control_plane=self.service.control_plane,
        ).SerializeToString()
        payload = b"".join(r.delta_field for r in resources) + header
        await self.write(payload)
        sent = conn.watched[type_url].sent(nonce=nonce, version=str(version))
        conn.watched[type_url] = replace(sent, known=self.service.known_versions.after(known, resources, removed))
        HOOKS.response(
            conn,
            type_url,
            size=len(payload),
            elapsed=time.perf_counter() - started,
            since=time.monotonic() - request.start if request is not None else None,
        )
        return True


_Key = tuple[int, tuple[tuple[str, str], ...], frozenset[str]]  # id of the map before, (name, version) sent, removed


class KnownVersions:
    """What a client knows after a response, shared by the streams that got there the same way.

    A Delta stream keeps, per type, the version of every resource the client has: with 1,000 services,
    two maps of 1,000 names per proxy. Proxies in the same state that are sent the same resources
    reach the same map, so `after` hands them one object: the previous map (by identity) and what the
    response added and removed determine the next. Recent transitions are remembered up to
    `max_bytes` (an estimate: ~100 bytes per name held), so a client cannot grow the table.
    """

    NAME_BYTES = 100

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._bytes = 0
        self._after: OrderedDict[_Key, tuple[Mapping[str, str], Mapping[str, str], int]] = OrderedDict()

    def after(
        self, known: Mapping[str, str], resources: Sequence[Resource], removed: Iterable[str]
    ) -> Mapping[str, str]:
        """`known` without `removed`, with each of `resources` at its version."""
        added = tuple((r.name, r.version) for r in resources)
        key = (id(known), added, frozenset(removed))
        hit = self._after.get(key)  # an entry keeps its map alive, so no other map can have its id
        if hit is not None:
            self._after.move_to_end(key)
            return hit[1]
        now = {name: version for name, version in known.items() if name not in key[2]}
        now.update(added)
        result: Mapping[str, str] = MappingProxyType(now)
        size = (len(known) + len(now) + len(added)) * self.NAME_BYTES
        if size <= self.max_bytes:
            self._after[key] = (known, result, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._forget(next(iter(self._after)))
        return result

    def _forget(self, key: _Key) -> None:
        self._bytes -= self._after.pop(key)[2]

    def __len__(self) -> int:
        return len(self._after)


def _removed(watched: Watched, generated: Generated, added: Iterable[str]) -> set[str]:
    """Names to announce as removed: known but gone, or newly subscribed but not existing."""
    if not generated.complete:
        return set()
    exists = generated.names
    removed = {name for name in watched.known if name not in exists and (watched.wildcard or name in watched.names)}
    removed |= {name for name in added if name != "*" and name not in exists and name in watched.names}
    return removed
