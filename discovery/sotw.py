"""State of the World ADS: one stream's requests and responses (`DiscoveryRequest/Response`).

Requests go through `should_respond`; responses are the concatenation of cached resource bytes and
a small per-response header (version, type, nonce), so nothing is serialized per stream. For the
wildcard types (CDS, LDS) every response carries the full set, and a push is not sent when that
set is exactly what the client last received and did not reject; for EDS and RDS a push may carry
only the changed resources (the others stay as they are on the client), and an EDS or RDS
subscription that grows is answered with the added resources alone (`AnswersAdded`).
"""

from __future__ import annotations

import time

from envoy.service.discovery.v3 import discovery_pb2

from discovery.connection import Decision, SotwRequest, Watched, reading, should_respond
from discovery.generators import Generated
from discovery.generators.base import answers_added
from discovery.metrics import HOOKS
from discovery.pushqueue import PushRequest
from discovery.stream import StreamBase, error_detail
from discovery.xdstypes import WILDCARD_TYPES


class SotwStream(StreamBase[discovery_pb2.DiscoveryRequest]):
    delta = False

    async def handle(self, request: discovery_pb2.DiscoveryRequest) -> None:
        conn = self.conn
        assert conn is not None
        type_url = request.type_url
        generator = self.generator_for(type_url)
        if generator is None:
            return
        await self.take_turn(reading(len(request.resource_names)))
        view = SotwRequest(
            type_url=type_url,
            version_info=request.version_info,
            response_nonce=request.response_nonce,
            resource_names=tuple(request.resource_names),
            error=error_detail(request),
        )
        previous = conn.watched.get(type_url)
        decision, state = should_respond(previous, view)
        if not self.record(type_url, decision, state):
            return
        added = state.names - previous.names if decision is Decision.NAMES_CHANGED and previous is not None else None
        if added and answers_added(generator) and type_url not in WILDCARD_TYPES:
            # The client keeps the resources it has: a grown subscription needs only the new ones.
            generated, version = await self.answer(generator, state, sorted(added))
        else:
            generated, version = await self.answer(generator, state)
        await self.send(type_url, generated, state, None, version=version)

    async def send(
        self, type_url: str, generated: Generated, watched: Watched, request: PushRequest | None, *, version: int
    ) -> bool:
        conn = self.conn
        assert conn is not None
        wildcard = type_url in WILDCARD_TYPES and generated.complete
        content = tuple(g.digest for g in generated.groups) if wildcard else ()
        if request is not None and content == watched.content and content and watched.error is None:
            # A push would repeat the last complete response of a wildcard type, which the client has
            # not rejected: it has that config already. (After a NACK a push sends again, as Istio does:
            # what was rejected may now be accepted, e.g. once a cluster it names exists.)
            HOOKS.unchanged(conn, type_url)
            return False
        started = time.perf_counter()
        snapshot_version = str(version)
        nonce = self.service.nonce()
        header = discovery_pb2.DiscoveryResponse(
            version_info=snapshot_version,
            type_url=type_url,
            nonce=nonce,
            control_plane=self.service.control_plane,
        ).SerializeToString()
        payload = b"".join(g.blob for g in generated.groups) + header
        await self.write(payload)
        conn.watched[type_url] = conn.watched[type_url].sent(nonce=nonce, version=snapshot_version, content=content)
        HOOKS.response(
            conn,
            type_url,
            size=len(payload),
            elapsed=time.perf_counter() - started,
            since=time.monotonic() - request.start if request is not None else None,
        )
        return True
