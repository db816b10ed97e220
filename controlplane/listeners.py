"""File descriptors, which every listener of the process shares, and the caps that keep one port from taking them.

Each accepted connection holds a file descriptor, and the process has `RLIMIT_NOFILE` of them for
everything: connections on every port, the config files it reads, the pipes to its CA workers, its
connections to the API server and to the TLS front end. Without caps, ~20,000 connections opened to
the unauthenticated monitoring port took them all: no port could accept, and the config-dir watch
failed on `EMFILE`, which stopped the control plane. So:

- at start the soft limit is raised to the hard one (`raise_open_files_limit`), as Go programs such
  as istiod do;
- `ConnectionBudget.plan` gives each listener a cap and keeps `RESERVED_FILES` for the process's own
  work, refusing to start (exit 2, naming the numbers) when the limit cannot hold them;
- aiohttp listeners are served by `CappedSite`, which counts a connection from its accept (for a TLS
  site, whose handshake must start and finish within `handshake_timeout`, before it), closes one
  beyond its cap as soon as it is accepted, counts that in `meshplane_connections_refused_total{listener}`
  and logs it at most once every 10 s per listener; a full site gives a new connection the place of
  one that has not yet sent a whole request head, of the client that holds the most such (`_Gate`);
  the plaintext gRPC port is capped by gRPC itself (`grpc.max_allowed_incoming_connections`), the
  secure one by its Envoy.

A TLS handshake costs the event loop ~1 ms (the key exchange and the signature, and the kernel's
loopback send), and asyncio runs, in one turn, the handshake of every connection whose first flight
arrived: a flood of 1,100 handshakes a second on the webhook port held `/ready` (and the CA and
xDS) 290-390 ms. A TLS `CappedSite` therefore accepts its connections itself and starts at most
`HANDSHAKES_PER_TURN` handshakes a turn (`_Handshakes`), taking connections whose hello arrived in
turn by client address, so one client's flood does not keep another's connection behind it.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import resource
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import Counter

from controlplane.settings import SettingsError

log = logging.getLogger(__name__)

#: File descriptors kept for the process's own work, beyond what its listeners may take.
RESERVED_FILES = 1024
#: Connections the `/ready` + `/debug` listener and the `/metrics` listener take each (a prober, a
#: scraper and an operator need a few).
SMALL_LISTENER_CAP = 64
#: The plaintext xDS port's cap when the open-files limit allows it (one connection per proxy).
DEFAULT_XDS_CONNECTIONS = 16384
REFUSAL_LOG_INTERVAL = 10.0
#: Connections the kernel queues for a listener before it accepts them (capped by net.core.somaxconn).
#: aiohttp's 128 overflows in a burst, and a client whose SYN is dropped waits a second to retry: a
#: burst of 4,096 connections to a capped port took 16-26 s to open, though each is refused at once.
LISTEN_BACKLOG = 1024
#: TLS handshakes a listener starts in one turn of the event loop: each costs it ~1 ms. Under a flood
#: of 1,300 handshakes a second, 16 a turn let `/ready` wait 88-94 ms, 8 47-49 ms and 4 26-28 ms, and
#: the flood went no faster with more.
HANDSHAKES_PER_TURN = 8
#: Connections accepted in one turn of the loop (accepting costs ~20 us; handshakes wait for their turn).
ACCEPTS_PER_TURN = 128
#: asyncio's own wait before accepting again after the process ran out of descriptors.
ACCEPT_RETRY_DELAY = 1.0
#: asyncio's default time for a TLS handshake, for a site that sets none.
DEFAULT_HANDSHAKE_TIMEOUT = 60.0

connections_refused_total = Counter(
    "meshplane_connections_refused",
    "Connections closed as soon as they were accepted, because the listener had its most open",
    ["listener"],
)


def open_files_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one: (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return soft, hard
    return soft, soft


def open_files_note(before: int, after: int) -> str:
    """`raise_open_files_limit`'s result as a start-up log says it: "20000 (raised from 1024)", or "20000"."""
    return f"{after} (raised from {before})" if after != before else str(after)


@dataclass(frozen=True, kw_only=True)
class ConnectionBudget:
    """How many connections each listener may hold open at once, within the open-files limit."""

    open_files: int
    webhook: int
    http: int
    monitoring: int
    xds: int

    @classmethod
    def plan(cls, open_files: int, *, webhook: int, xds: int | None) -> ConnectionBudget:
        """Caps for a process with `open_files` descriptors: `xds` None takes `DEFAULT_XDS_CONNECTIONS`,
        or what is left when that is less. Raises SettingsError naming the numbers when they do not fit."""
        fixed = RESERVED_FILES + webhook + 2 * SMALL_LISTENER_CAP
        room = open_files - fixed
        explain = (
            f"{RESERVED_FILES} kept for the process, {webhook} for the webhook (MESHPLANE_WEBHOOK_MAX_CONNECTIONS) "
            f"and {SMALL_LISTENER_CAP} each for /ready and /metrics"
        )
        if xds is None:
            if room < 1:
                raise SettingsError(
                    f"the open-files limit ({open_files}) leaves no room for xDS connections after {explain}: "
                    "raise it (ulimit -n, or the container runtime's limit)"
                )
            xds = min(DEFAULT_XDS_CONNECTIONS, room)
        elif xds > room:
            raise SettingsError(
                f"--max-xds-connections: {xds} do not fit in the open-files limit ({open_files}) after {explain}; "
                f"at most {max(room, 0)} do: raise the limit (ulimit -n) or lower the flag"
            )
        return cls(
            open_files=open_files, webhook=webhook, http=SMALL_LISTENER_CAP, monitoring=SMALL_LISTENER_CAP, xds=xds
        )


class _Gate:
    """Counts a listener's open connections against its cap; refusals are counted and logged sparingly.

    A connection that has not yet sent a whole request head (nothing, or headers without the blank
    line that ends them; for a TLS listener, also one whose handshake has not started) is *waiting*,
    and registers how to close it. When the listener is full, a new connection takes the place of
    the oldest waiting one of the client address that has the most waiting, if that address has at
    least two more than the new connection's: a client that opens connections and stays silent
    loses them to the others (the kubelet's probe, the API server's review), and clients competing
    for the places end up with equal shares."""

    def __init__(self, name: str, cap: int, refused: Callable[[], None] | None) -> None:
        self.name = name
        self.cap = cap
        self.open = 0
        self._refused = refused
        self._held_back = 0
        self._logged_at = -REFUSAL_LOG_INTERVAL
        self._waiting: dict[str, dict[object, Callable[[], None]]] = {}  # by client address, oldest first

    def admit(self, address: str) -> bool:
        """Take a place for a new connection from `address`, if need be a waiting one's (which is closed
        here; it gives its place back as it goes); False when there is none: close the connection."""
        if self.open >= self.cap and not self._evict_for(address):
            self._refuse()
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1

    def waiting(self, address: str, key: object, close: Callable[[], None]) -> None:
        self._waiting.setdefault(address, {})[key] = close

    def heard(self, address: str, key: object) -> None:
        """`key` is no longer waiting (it sent something, or it is closing)."""
        waiting = self._waiting.get(address)
        if waiting is not None and waiting.pop(key, None) is not None and not waiting:
            del self._waiting[address]

    def _evict_for(self, address: str) -> bool:
        heaviest = max(self._waiting, key=lambda a: len(self._waiting[a]), default=None)
        if heaviest is None or len(self._waiting[heaviest]) < len(self._waiting.get(address, ())) + 2:
            return False
        key, close = next(iter(self._waiting[heaviest].items()))
        self.heard(heaviest, key)
        close()
        return True

    def _refuse(self) -> None:
        connections_refused_total.labels(listener=self.name).inc()
        if self._refused is not None:
            self._refused()
        now = time.monotonic()
        if now - self._logged_at < REFUSAL_LOG_INTERVAL:
            self._held_back += 1
        else:
            log.warning(
                "%s listener refused a connection: %d open, the most it takes (%d more refused since the last warning)",
                self.name,
                self.open,
                self._held_back,
                extra={"listener": self.name, "open": self.open, "suppressed": self._held_back},
            )
            self._logged_at, self._held_back = now, 0


HEAD_END = b"\r\n\r\n"  # the blank line that ends an HTTP/1 request's headers


def _client_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class _Gated(asyncio.Protocol):
    """Stands in front of aiohttp's per-connection protocol; creates it only for admitted connections,
    and tells the gate when the connection stops waiting (its first request head is complete: a client
    that trickles its headers, as one that sends nothing, can be made to give up its place).

    `admitted`: the connection took its place in the gate when it was accepted (`_Handshakes`, before
    its TLS handshake); it gives the place back when it closes."""

    def __init__(self, make: Callable[[], asyncio.Protocol], gate: _Gate, *, admitted: bool = False) -> None:
        self._make = make
        self._gate = gate
        self._admitted = admitted
        self._inner: asyncio.Protocol | None = None
        self._waiting_as: str | None = None  # the client address until the first request head is complete
        self._tail = b""  # the last bytes received while waiting, for a head's end split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = _client_address(transport)
        if not self._admitted and not self._gate.admit(address):
            transport.close()
            return
        self._waiting_as = address
        self._gate.waiting(address, self, transport.close)
        self._inner = self._make()
        self._inner.connection_made(transport)

    def _heard(self) -> None:
        if self._waiting_as is not None:
            self._gate.heard(self._waiting_as, self)
            self._waiting_as = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._heard()
            self._gate.leave()
            self._inner.connection_lost(exc)
            self._inner = None

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            if self._waiting_as is not None:
                seen = self._tail + data
                if HEAD_END in seen:
                    self._heard()
                else:
                    self._tail = seen[-len(HEAD_END) + 1 :]
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _Handshakes:
    """Accepts a TLS listener's connections and starts at most `per_turn` handshakes a turn of the loop.

    An accepted connection takes its place in the listener's gate at once (waiting, see `_Gate`), and
    is watched until its first bytes (the client's hello) arrive; then it waits for its turn, taken
    in turn by client address (one client's flood does not keep another's connection behind it), and
    its handshake starts. A connection silent for `timeout` is closed, as one whose handshake does
    not finish within `timeout` is. Silent connections cost no turn, so a client holding many open
    does not hold back the others' handshakes. A connection counts from its accept: 3,000 silent
    ones, counted only once their handshake had finished, took every descriptor of the process."""

    def __init__(
        self,
        listening: socket.socket,
        protocol: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        gate: _Gate,
        *,
        timeout: float,
        per_turn: int = HANDSHAKES_PER_TURN,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._listening = listening
        self._protocol = protocol
        self._context = context
        self._gate = gate
        self._timeout = timeout
        self._per_turn = per_turn
        self._waiting: dict[socket.socket, tuple[str, asyncio.TimerHandle]] = {}  # until the handshake starts
        self._silent: set[socket.socket] = set()  # watched for their first bytes
        self._ready: dict[str, deque[socket.socket]] = {}  # heard, by client address, in the order heard
        self._pumping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._loop.add_reader(listening.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, peer = self._listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.error("cannot accept a connection (%s); accepting again in %.0f s", exc, ACCEPT_RETRY_DELAY)
                self._loop.remove_reader(self._listening.fileno())
                self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                return
            address = str(peer[0])
            if not self._gate.admit(address):
                conn.close()
                continue
            conn.setblocking(False)
            self._waiting[conn] = (address, self._loop.call_later(self._timeout, self._drop, conn))
            self._silent.add(conn)
            self._gate.waiting(address, conn, functools.partial(self._drop, conn))
            self._loop.add_reader(conn.fileno(), self._heard, conn, address)

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._listening.fileno(), self._accept)

    def _heard(self, conn: socket.socket, address: str) -> None:
        self._loop.remove_reader(conn.fileno())
        self._silent.discard(conn)
        self._ready.setdefault(address, deque()).append(conn)
        if not self._pumping:
            self._pumping = True
            self._loop.call_soon(self._pump)  # runs in the next turn, with the other hellos heard in this one

    def _forget(self, conn: socket.socket) -> bool:
        """Stop waiting on `conn`; whether it was waiting."""
        entry = self._waiting.pop(conn, None)
        if entry is None:
            return False
        address, expiry = entry
        expiry.cancel()
        if conn in self._silent:
            self._silent.discard(conn)
            self._loop.remove_reader(conn.fileno())
        self._gate.heard(address, conn)
        return True

    def _drop(self, conn: socket.socket) -> None:
        """Close a waiting connection (expired or evicted) and give back its place; one in `_ready`
        is skipped when its turn comes."""
        if self._forget(conn):
            conn.close()
            self._gate.leave()

    def _pump(self) -> None:
        self._pumping = False
        started = 0
        while started < self._per_turn and self._ready:
            address = next(iter(self._ready))
            ready = self._ready.pop(address)
            conn = ready.popleft()
            if ready:
                self._ready[address] = ready  # to the back: addresses take turns
            if not self._forget(conn):  # expired or evicted while waiting
                continue
            task = self._loop.create_task(self._handshake(conn))  # with its own timeout
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        if self._ready and not self._closed:
            self._pumping = True
            self._loop.call_soon(self._pump)

    async def _handshake(self, conn: socket.socket) -> None:
        """Once the handshake succeeds the connection's protocol (`_Gated`, admitted) holds its place."""
        try:
            await self._loop.connect_accepted_socket(
                self._protocol, conn, ssl=self._context, ssl_handshake_timeout=self._timeout
            )
        except OSError as exc:  # ssl.SSLError, ConnectionError and TimeoutError are OSErrors
            log.debug("TLS handshake failed: %s", exc)
            conn.close()
            self._gate.leave()

    def close(self) -> None:
        """Stop accepting; close the connections whose handshake has not started; stop those under way."""
        self._closed = True
        self._loop.remove_reader(self._listening.fileno())
        for conn in list(self._waiting):
            self._drop(conn)
        self._ready.clear()
        for task in self._tasks:
            task.cancel()


class CappedSite(web.BaseSite):
    """A TCP(+TLS) site, as `web.TCPSite`, that holds at most `cap` connections open (see the module docstring)."""

    __slots__ = ("_gate", "_handshake_timeout", "_handshakes", "_host", "_port", "_reuse_address")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str | None,
        port: int,
        *,
        listener: str,
        cap: int,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
        refused: Callable[[], None] | None = None,
        backlog: int = LISTEN_BACKLOG,
        reuse_address: bool | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_address = reuse_address
        self._handshake_timeout = handshake_timeout
        self._gate = _Gate(listener, cap, refused)
        self._handshakes: _Handshakes | None = None

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host or '0.0.0.0'}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port once started (useful with port 0), else the requested one."""
        if self._server is not None and isinstance(self._server, asyncio.Server) and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def open_connections(self) -> int:
        return self._gate.open

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # BaseSite's constructor checked that the runner is set up
        loop = asyncio.get_running_loop()
        if self._ssl_context is None:
            self._server = await loop.create_server(
                lambda: _Gated(server, self._gate),
                self._host,
                self._port,
                backlog=self._backlog,
                reuse_address=self._reuse_address,
            )
            return
        # TLS: `_Handshakes` accepts on the socket and starts a few handshakes a turn; the server only
        # holds the socket (and closes it when the site stops).
        if self._host is None and socket.has_dualstack_ipv6():  # every address, as asyncio binds without a host
            listening = socket.create_server(("", self._port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            family = socket.AF_INET6 if self._host and ":" in self._host else socket.AF_INET
            listening = socket.create_server((self._host or "", self._port), family=family)
        listening.listen(self._backlog)
        listening.setblocking(False)
        self._server = await loop.create_server(asyncio.Protocol, sock=listening, start_serving=False)
        self._handshakes = _Handshakes(
            listening,
            lambda: _Gated(server, self._gate, admitted=True),
            self._ssl_context,
            self._gate,
            timeout=self._handshake_timeout or DEFAULT_HANDSHAKE_TIMEOUT,
        )

    async def stop(self) -> None:
        if self._handshakes is not None:
            self._handshakes.close()
            self._handshakes = None
        await super().stop()
