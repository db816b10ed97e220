"""What SotW and Delta streams share: reading requests, the push slot, and whose turn it is.

The gRPC handler's task runs `serve()`: it reads the first request (which must carry the node), then
reads and handles one request at a time, reading the next only when the last is handled (a client
that floods requests is slowed by gRPC flow control, not buffered). Pushes arrive through `push()`,
which merges into a single pending slot: however many changes happen while the stream is busy
writing to a slow client, it holds at most one pending request, and the next push is generated
from the newest snapshot. A pending push is sent by a task that exists only while pushes are
pending. Handling a request and sending a push take turns (`_turn`, first come first served), so a
stream's state is only touched by one of them at a time. Work on a request's names (reading them,
then generating what they ask for) first takes its share of the service's `request_turns`
(`take_turn`, by the names; clients, by address, take turns), so a burst of large requests from many
streams is handled over several turns of the event loop instead of in one, and one client's backlog
delays another client's request by one of its requests; an answer of many names is generated in
pieces, each taking its turn (`answer`). An ACK generates nothing, and reading its
names costs an eighth of generating for them.

A stream at rest is a few objects (the stream, its connection and per-type state, gRPC's own call
state): no task of its own and no queues, so that what the collector walks grows as little as it
can with the number of proxies (`bench/xds` reports tracked objects per stream).

What a client can make a stream hold is bounded (`StreamLimits`, from the service): names per
request (checked before the request is parsed, `discovery.wire`, which hands the stream the
`StreamRefused` in the request's place) and per stream (RESOURCE_EXHAUSTED naming the limit), and
the node's id and metadata size (INVALID_ARGUMENT). The NACK message kept for /debug/syncz is
cut to `metrics.TEXT_LIMIT` characters. When the stream ends, the service forgets it and nothing
else keeps its subscriptions (caches keep only what they are bounded to).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import grpc

from controlplane.model.registry import MeshSnapshot
from controlplane.model.workloads import Workload
from controlplane.peers import client_of_peer
from discovery.cache import ResourceGroup
from discovery.connection import (
    PIECE_NAMES,
    REQUEST_UNITS_PER_TURN,
    Connection,
    Decision,
    StreamLimits,
    Watched,
    generating,
    reading,
    units_of,
)
from discovery.generators import GenContext, Generated, Generator, ProxyView, table_for
from discovery.generators.base import answers_added, builds_in_pieces
from discovery.metrics import HOOKS, clip
from discovery.proxy import NodeError, Proxy, parse_node
from discovery.pushqueue import PushRequest
from discovery.xdstypes import PUSH_ORDER, short

if TYPE_CHECKING:
    from discovery.service import DiscoveryService

R = TypeVar("R")
NO_IDENTITY = "the secure xDS port needs a client certificate with a SPIFFE identity"


def error_detail(request: Any) -> str | None:
    """The NACK message of a request (cut to `metrics.TEXT_LIMIT`), or None for an ACK or a first request."""
    if not request.HasField("error_detail"):
        return None
    return clip(str(request.error_detail.message or f"code {request.error_detail.code}"))


def check_node_size(node: Any, limits: StreamLimits) -> None:
    """Raise `StreamRefused(INVALID_ARGUMENT)` if the node's id or metadata is over its limit.

    Runs before the node's fields are read (`parse_node`); the request was parsed only with a node of
    at most `discovery.wire.NODE_BYTES`."""
    if node is None:
        return
    if len(node.id) > limits.node_id_bytes:
        raise StreamRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"node.id is {len(node.id)} characters; the limit is {limits.node_id_bytes}",
        )
    size = node.metadata.ByteSize() if node.HasField("metadata") else 0
    if size > limits.node_metadata_bytes:
        raise StreamRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"node.metadata is {size} bytes serialized; the limit is {limits.node_metadata_bytes} bytes "
            "(send only the Istio metadata keys the control plane reads)",
        )


class StreamRefused(Exception):
    """The stream must end with a gRPC status: `code` is a `grpc.StatusCode`, `details` says why."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def check_identity(proxy: Proxy, identities: Sequence[str]) -> str:
    """The caller identity that matches the proxy's namespace and service account; raises
    `StreamRefused` (UNAUTHENTICATED without one, else PERMISSION_DENIED) if none does."""
    if not identities:
        raise StreamRefused(grpc.StatusCode.UNAUTHENTICATED, NO_IDENTITY)
    if not proxy.service_account:
        raise StreamRefused(
            grpc.StatusCode.PERMISSION_DENIED, "node.metadata.SERVICE_ACCOUNT is required on the secure xDS port"
        )
    for identity in identities:
        parts = identity.removeprefix("spiffe://").split("/")
        claimed = (proxy.namespace, proxy.service_account)
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" and (parts[2], parts[4]) == claimed:
            return identity
    raise StreamRefused(
        grpc.StatusCode.PERMISSION_DENIED,
        f"client certificate identity {', '.join(identities)} does not match the node's namespace "
        f"{proxy.namespace!r} and service account {proxy.service_account!r}",
    )


class Transport(Protocol):
    """One gRPC call as a stream uses it (a `grpc.aio.ServicerContext`): `read()` returns the next
    request (or the `StreamRefused` that `discovery.wire` put in its place), or `grpc.aio.EOF`."""

    async def read(self) -> Any: ...

    async def write(self, message: Any) -> None: ...


class StreamBase(Generic[R]):
    delta = False

    def __init__(self, service: DiscoveryService, *, transport: Transport, peer: str) -> None:
        self.service = service
        self._transport = transport
        self.peer = peer
        self.limits: StreamLimits = service.limits
        self._turn = asyncio.Lock()
        self._pending: PushRequest | None = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._failure: Exception | None = None  # what ended the pusher; `serve` raises it
        self._task: asyncio.Task[Any] | None = None
        self._view: ProxyView | None = None
        self._view_versions: tuple[int, int, int] | None = None
        self._view_workloads: tuple[Workload | None, ...] = ()
        self.conn: Connection | None = None
        self.table: Mapping[str, Generator] = {}
        self.closed = False

    # -- hooks for subclasses ----------------------------------------------------------------------
    def node_of(self, request: R) -> Any:
        return request.node if request.HasField("node") else None  # type: ignore[attr-defined]

    async def take_turn(self, units: int, *, resume: bool = False) -> None:
        """Wait, if need be, for a turn of the event loop with room for `units` of work (`reading` or
        `generating` names) in the service's `request_turns`, shared by all streams, clients by address
        taking turns. No units, no wait. `resume`: the next piece of an answer already started (it goes
        before the client's new work)."""
        if units:
            await self.service.request_turns.take(units, client_of_peer(self.peer), resume=resume)

    async def build_in_pieces(self, generator: Generator, ctx: GenContext) -> None:
        """Before a `BuildsInPieces` generator's `generate`: what it would build at once goes into the
        cache a piece per turn of the loop, each piece a turn's work alone."""
        if builds_in_pieces(generator):
            for _ in generator.pieces(ctx):
                await self.take_turn(REQUEST_UNITS_PER_TURN, resume=True)

    async def answer(
        self, generator: Generator, watched: Watched, added: Sequence[str] | None = None
    ) -> tuple[Generated, int]:
        """The answer to the client's own request, and the version of the snapshot it was generated
        from: everything `watched` subscribes to, or (`added`, for an `AnswersAdded` generator) those
        names alone. The work takes its turn first (`take_turn`), by the names.

        An answer of more than `PIECE_NAMES` names of an `AnswersAdded` generator is generated in pieces
        of that many names, all from one snapshot, each taking its turn at the most a piece before it
        took (a first piece not cached warns of the rest): building 10,000 endpoint assignments the
        cache does not hold takes ~100 ms, and one such request in a turn held the event loop past
        250 ms. A whole answer the cache keeps (the proxies
        of a large mesh subscribe to the same names) is taken as it is, also when another stream put it
        together while this one was between pieces; an answer put together here is kept for the next."""
        count = len(watched.names) if added is None else len(added)
        if not answers_added(generator) or watched.wildcard or count <= PIECE_NAMES:
            await self.take_turn(generating(count))  # then generated from the newest snapshot
            whole = self.context(self.service.snapshot(), None)
            await self.build_in_pieces(generator, whole)
            if added is None:
                return generator.generate(whole, watched), whole.snapshot.version
            assert answers_added(generator)
            return generator.only(whole, added), whole.snapshot.version
        units = generating(PIECE_NAMES)
        await self.take_turn(units)
        ctx = self.context(self.service.snapshot(), None)
        kept = generator.kept(ctx, watched) if added is None else None
        if kept is not None:
            return kept, ctx.snapshot.version
        names = sorted(watched.names) if added is None else added
        groups: list[ResourceGroup] = []
        for start in range(0, count, PIECE_NAMES):
            if start:
                await self.take_turn(units, resume=True)
                kept = generator.kept(ctx, watched) if added is None else None
                if kept is not None:  # another stream put the same answer together meanwhile
                    return kept, ctx.snapshot.version
            began = time.perf_counter()
            groups.extend(generator.only(ctx, names[start : start + PIECE_NAMES]).groups)
            units = max(units, units_of(time.perf_counter() - began))
        if added is not None:
            return Generated(groups=tuple(groups), complete=False), ctx.snapshot.version
        await self.take_turn(reading(count), resume=True)  # joining the pieces' bytes
        return generator.keep(ctx, watched, [r for g in groups for r in g.resources]), ctx.snapshot.version

    def generator_for(self, type_url: str) -> Any:
        """The generator for `type_url`, or None (counted and logged; the stream stays open)."""
        assert self.conn is not None
        generator = self.table.get(type_url)
        if generator is None:
            HOOKS.unknown_type(self.conn, type_url)
        return generator

    def record(self, type_url: str, decision: Decision, state: Watched) -> bool:
        """Store the new per-type state, count the request (and a NACK); True if a response is due.

        Raises `StreamRefused(RESOURCE_EXHAUSTED)` if the stream would hold more names than its limit."""
        conn = self.conn
        assert conn is not None
        held = len(state.names) + sum(len(w.names) for t, w in conn.watched.items() if t != type_url)
        if held > self.limits.names_per_stream:
            raise StreamRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{short(type_url)} subscription: the stream would hold {held} resource names, over the limit of "
                f"{self.limits.names_per_stream} names per stream; split the subscriptions over several streams",
            )
        conn.watched[type_url] = state
        HOOKS.request(conn, type_url, decision)
        if decision is Decision.NACK:
            conn.nacks += 1
            HOOKS.nack(conn, type_url, state.error or "")
        return bool(decision.respond)

    async def handle(self, request: R) -> None:
        raise NotImplementedError

    async def send(
        self, type_url: str, generated: Generated, watched: Watched, request: PushRequest | None, *, version: int
    ) -> bool:
        """Send `generated`, generated from the snapshot of `version`, for `type_url`; False if nothing
        was sent (the client already has it)."""
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------------
    async def serve(self, identities: Sequence[str] | None = None) -> None:
        """Run the stream until the client goes away. `identities`: the caller's verified identities on
        the secure port, one of which must match the node (`check_identity`); None where no port
        authenticates.

        Raises `StreamRefused` for a bad first request, a caller the node does not match, and a
        request over the stream's limits."""
        first = await self._read()
        if first is None:
            return
        proxy = self._open(first)
        identity = None if identities is None else check_identity(proxy, identities)
        del identities  # not kept alive for the stream's life by this frame
        self.conn = Connection(
            id=self.service.connection_id(proxy),
            proxy=proxy,
            peer=self.peer,
            connected_at=time.time(),
            delta=self.delta,
            identity=identity,
        )
        self.table = table_for(proxy)
        self.service.register(self)
        HOOKS.opened(self.conn)
        self._task = asyncio.current_task()
        request: R | None = first
        del first
        try:
            while request is not None:
                async with self._turn:
                    await self.handle(request)
                request = None  # not kept while the next is awaited
                request = await self._read()
        except asyncio.CancelledError:
            if self._failure is not None:  # the pusher failed and ended the stream
                raise self._failure from None
            raise
        finally:
            self.closed = True
            if self._pusher is not None:
                self._pusher.cancel()
            self.service.unregister(self)
            self._release(self._waiters)
            self._pending = self._waiters = self._view = self._view_versions = self._task = None
            self._view_workloads = ()
            HOOKS.closed(self.conn)

    async def _read(self) -> R | None:
        """The next request, or None once the client is done or the call broke. Raises the
        `StreamRefused` that a request over a limit earned (it was never parsed: `discovery.wire`)."""
        try:
            request = await self._transport.read()
        except asyncio.CancelledError:
            raise
        except Exception:
            return None  # the call broke; the stream ends
        if request is grpc.aio.EOF:  # type: ignore[attr-defined]  # (not in the type stubs)
            return None
        if isinstance(request, StreamRefused):
            raise request
        return request  # type: ignore[no-any-return]

    def _open(self, first: R) -> Proxy:
        """Check and parse the first request's node."""
        node = self.node_of(first)
        check_node_size(node, self.limits)
        try:
            return parse_node(node)
        except NodeError as exc:
            raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    @staticmethod
    def _release(waiters: list[asyncio.Future[None]] | None) -> None:
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    # -- pushes ----------------------------------------------------------------------------------------
    def push(self, request: PushRequest) -> asyncio.Future[None]:
        """Merge `request` into the pending push; the future resolves when it has been sent."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.closed:
            waiter.set_result(None)
            return waiter
        self._pending = request if self._pending is None else self._pending.merge(request)
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        if self._pusher is None:
            assert self.conn is not None  # a stream is pushed to once registered, which it is once open
            self._pusher = asyncio.create_task(self._push_pending(), name=f"xds-push-{self.conn.id}")
        return waiter

    async def _push_pending(self) -> None:
        """Send pending pushes, each in its turn, until none is pending. A push that fails ends the
        stream: `serve` raises what it raised."""
        try:
            while self._pending is not None:
                async with self._turn:
                    request, self._pending = self._pending, None
                    waiters, self._waiters = self._waiters, None
                    try:
                        if request is not None:
                            await self._push(request)
                    finally:
                        self._release(waiters)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failure = exc
            if self._task is not None:
                self._task.cancel()
        finally:
            self._pusher = None

    def view(self, snapshot: MeshSnapshot) -> ProxyView:
        """The proxy's view, rebuilt only when something it reads changed (not on endpoint changes)."""
        assert self.conn is not None
        proxy = self.conn.proxy
        workloads = tuple(snapshot.workloads_by_ip.get(ip) for ip in proxy.ip_addresses)
        versions = (snapshot.services_version, snapshot.policy_version, snapshot.mesh_version)
        if (
            self._view is None
            or self._view_versions != versions
            or any(a is not b for a, b in zip(self._view_workloads, workloads, strict=True))
        ):
            self._view = ProxyView.build(proxy, snapshot)
            self._view_versions, self._view_workloads = versions, workloads
        return self._view

    def context(self, snapshot: MeshSnapshot, request: PushRequest | None) -> GenContext:
        return GenContext(snapshot=snapshot, view=self.view(snapshot), cache=self.service.cache, request=request)

    async def _push(self, request: PushRequest) -> None:
        assert self.conn is not None
        snapshot = self.service.snapshot()
        ctx = self.context(snapshot, request)
        order = [*PUSH_ORDER, *sorted(set(self.conn.watched) - set(PUSH_ORDER))]
        pushed = False
        for type_url in order:
            watched = self.conn.watched.get(type_url)
            generator = self.table.get(type_url)
            if watched is None or generator is None or not watched.nonce_sent:
                continue
            if not generator.needs_push(request, ctx.view, watched):
                continue
            # Pushes to many streams start at once: each takes its turn by the names, as an answer does
            # (20 proxies' pushes of 4,000 assignments each in one turn held the event loop 650 ms).
            await self.take_turn(generating(len(watched.names)))
            await self.build_in_pieces(generator, ctx)
            if await self.send(type_url, generator.generate(ctx, watched), watched, request, version=snapshot.version):
                pushed = True
        if pushed:
            self.conn.pushes += 1

    async def write(self, payload: bytes) -> None:
        await self._transport.write(payload)
