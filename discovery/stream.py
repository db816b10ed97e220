"""What SotW and Delta streams share: the request inbox, the push slot, and the serving loop.

One task per stream runs `serve()`: it reads the first request (which must carry the node), then
handles requests and pushes one at a time, so a stream's state is only touched by its own task.
A reader task moves client requests into a bounded inbox (a client that floods requests is slowed
by gRPC flow control, not buffered). Pushes arrive through `push()`, which merges into a single
pending slot: however many changes happen while the stream is busy writing to a slow client, it
holds at most one pending request, and the next push is generated from the newest snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

from controlplane.model.registry import MeshSnapshot
from discovery.connection import Connection, Decision, Watched
from discovery.generators import GenContext, Generated, Generator, ProxyView, table_for
from discovery.metrics import HOOKS
from discovery.proxy import NodeError, Proxy, parse_node
from discovery.pushqueue import PushRequest
from discovery.xdstypes import PUSH_ORDER

if TYPE_CHECKING:
    from discovery.service import DiscoveryService

R = TypeVar("R")
INBOX_LIMIT = 64
_EOF = object()


def error_detail(request: Any) -> str | None:
    """The NACK message of a request, or None for an ACK or a first request."""
    if not request.HasField("error_detail"):
        return None
    return str(request.error_detail.message or f"code {request.error_detail.code}")


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
        self._inbox: deque[Any] = deque()
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
        """Store the new per-type state, count the request (and a NACK); True if a response is due."""
        conn = self.conn
        assert conn is not None
        conn.watched[type_url] = state
        HOOKS.request(conn, type_url, decision)
        if decision is Decision.NACK:
            conn.nacks += 1
            HOOKS.nack(conn, type_url, state.error or "")
        return bool(decision.respond)

    async def handle(self, request: R) -> None:
        raise NotImplementedError

    async def send(self, type_url: str, generated: Generated, watched: Watched, request: PushRequest | None) -> None:
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Run the stream until the client goes away. Raises `StreamRefused` for a bad first request."""
        try:
            first = await anext(self._requests)
        except StopAsyncIteration:
            return
        try:
            proxy = parse_node(self.node_of(first))
        except NodeError as exc:
            raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
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
            await self.handle(first)
            await self._loop()
        finally:
            self.closed = True
            reader.cancel()
            self.service.unregister(self)
            self._release_waiters()
            HOOKS.closed(self.conn)

    async def _read(self) -> None:
        try:
            async for request in self._requests:
                while len(self._inbox) >= INBOX_LIMIT:
                    self._space.clear()
                    await self._space.wait()
                self._inbox.append(request)
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            pass  # the stream broke; the loop ends below
        self._inbox.append(_EOF)
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._inbox:
                request = self._inbox.popleft()
                self._space.set()
                if request is _EOF:
                    return
                await self.handle(request)
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
            await self.send(type_url, generator.generate(ctx, watched), watched, request)
            pushed = True
        if pushed:
            self.conn.pushes += 1

    async def write(self, payload: bytes) -> None:
        await self._write(payload)
