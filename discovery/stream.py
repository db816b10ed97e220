"""What SotW and Delta streams share: the request inbox, the push slot, and the serving loop.

One task per stream runs `serve()`: it reads the first request (which must carry the node), then
handles requests and pushes one at a time, so a stream's state is only touched by its own task.
A reader task moves client requests into an inbox bounded by count and bytes (a client that
floods requests is slowed by gRPC flow control, not buffered). Pushes arrive through `push()`,
which merges into a single pending slot: however many changes happen while the stream is busy
writing to a slow client, it holds at most one pending request, and the next push is generated
from the newest snapshot.

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
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

from controlplane.model.registry import MeshSnapshot
from discovery.connection import Connection, Decision, StreamLimits, Watched
from discovery.generators import GenContext, Generated, Generator, ProxyView, table_for
from discovery.metrics import HOOKS, clip
from discovery.proxy import NodeError, Proxy, parse_node
from discovery.pushqueue import PushRequest
from discovery.xdstypes import PUSH_ORDER, short

if TYPE_CHECKING:
    from discovery.service import DiscoveryService

R = TypeVar("R")
INBOX_LIMIT = 64
_EOF = object()


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


Write = Callable[[bytes], Awaitable[None]]
Authorize = Callable[[Proxy], Awaitable[str | None]]  # raises StreamRefused; returns the caller identity if any


class StreamBase(Generic[R]):
    delta = False

    def __init__(
        self,
        service: DiscoveryService,
        *,
        requests: AsyncIterator[R],
        write: Write,
        peer: str,
        authorize: Authorize,
    ) -> None:
        self.service = service
        self._requests = requests
        self._write = write
        self.peer = peer
        self._authorize = authorize
        self.limits: StreamLimits = service.limits
        self._inbox: deque[Any] = deque()
        self._inbox_bytes = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._pending: PushRequest | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._view: ProxyView | None = None
        self._view_key: tuple[tuple[int, int, int], tuple[Any, ...]] | None = None
        self.conn: Connection | None = None
        self.table: Mapping[str, Generator] = {}
        self.closed = False

    # -- hooks for subclasses ----------------------------------------------------------------------
    def node_of(self, request: R) -> Any:
        return request.node if request.HasField("node") else None  # type: ignore[attr-defined]

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

    async def send(self, type_url: str, generated: Generated, watched: Watched, request: PushRequest | None) -> bool:
        """Send `generated` for `type_url`; False if nothing was sent (the client already has it)."""
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Run the stream until the client goes away.

        Raises `StreamRefused` for a bad first request and for a request over the stream's limits."""
        proxy = await self._open()
        if proxy is None:
            return
        identity = await self._authorize(proxy)
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
        reader = asyncio.create_task(self._read(), name=f"xds-read-{self.conn.id}")
        try:
            await self._loop()
        finally:
            self.closed = True
            reader.cancel()
            self.service.unregister(self)
            self._release_waiters()
            self._inbox.clear()
            self._pending = self._view = self._view_key = None
            HOOKS.closed(self.conn)

    async def _open(self) -> Proxy | None:
        """Read the first request, check and parse its node, and queue the request; None if the client left."""
        try:
            first = await anext(self._requests)
        except StopAsyncIteration:
            return None
        if isinstance(first, StreamRefused):
            raise first
        node = self.node_of(first)
        check_node_size(node, self.limits)
        try:
            proxy = parse_node(node)
        except NodeError as exc:
            raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        self._queue(first)
        return proxy

    def _queue(self, request: Any) -> None:
        if request is not _EOF and not isinstance(request, StreamRefused):
            self._inbox_bytes += request.ByteSize()
        self._inbox.append(request)
        self._wake.set()

    def _full(self) -> bool:
        return bool(self._inbox) and (len(self._inbox) >= INBOX_LIMIT or self._inbox_bytes >= self.limits.inbox_bytes)

    async def _read(self) -> None:
        try:
            async for request in self._requests:
                while self._full():
                    self._space.clear()
                    await self._space.wait()
                self._queue(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            pass  # the stream broke; the loop ends below
        self._queue(_EOF)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._inbox:
                request = self._inbox.popleft()
                if request is _EOF:
                    return
                if isinstance(request, StreamRefused):  # over a limit, so never parsed (`discovery.wire`)
                    raise request
                self._inbox_bytes -= request.ByteSize()
                self._space.set()
                await self.handle(request)
                del request
            if self._pending is not None:
                request, self._pending = self._pending, None
                waiters, self._waiters = self._waiters, []
                try:
                    await self._push(request)
                finally:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)

    def _release_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters = []

    # -- pushes ----------------------------------------------------------------------------------------
    def push(self, request: PushRequest) -> asyncio.Future[None]:
        """Merge `request` into the pending push; the future resolves when it has been sent."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.closed:
            waiter.set_result(None)
            return waiter
        self._pending = request if self._pending is None else self._pending.merge(request)
        self._waiters.append(waiter)
        self._wake.set()
        return waiter

    def view(self, snapshot: MeshSnapshot) -> ProxyView:
        """The proxy's view, rebuilt only when something it reads changed (not on endpoint changes)."""
        assert self.conn is not None
        proxy = self.conn.proxy
        workloads = tuple(snapshot.workloads_by_ip.get(ip) for ip in proxy.ip_addresses)
        key = (snapshot.services_version, snapshot.policy_version, snapshot.mesh_version)
        cached = self._view_key
        if (
            self._view is None
            or cached is None
            or cached[0] != key
            or any(a is not b for a, b in zip(cached[1], workloads, strict=True))
        ):
            self._view = ProxyView.build(proxy, snapshot)
            self._view_key = (key, workloads)
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
            if await self.send(type_url, generator.generate(ctx, watched), watched, request):
                pushed = True
        if pushed:
            self.conn.pushes += 1

    async def write(self, payload: bytes) -> None:
        await self._write(payload)
