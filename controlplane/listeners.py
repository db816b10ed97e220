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
- aiohttp listeners are served by `CappedSite`, which closes a connection beyond its cap as soon as
  it is accepted (after the TLS handshake, for a TLS site, which must finish within
  `handshake_timeout`), counts it in `meshplane_connections_refused_total{listener}` and logs it
  at most once every 10 s per listener; the plaintext gRPC port is capped by gRPC itself
  (`grpc.max_allowed_incoming_connections`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
import time
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
    """Counts a listener's open connections against its cap; refusals are counted and logged sparingly."""

    def __init__(self, name: str, cap: int, refused: Callable[[], None] | None) -> None:
        self.name = name
        self.cap = cap
        self.open = 0
        self._refused = refused
        self._held_back = 0
        self._logged_at = -REFUSAL_LOG_INTERVAL

    def enter(self) -> bool:
        if self.open < self.cap:
            self.open += 1
            return True
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
        return False

    def leave(self) -> None:
        self.open -= 1


class _Gated(asyncio.Protocol):
    """Stands in front of aiohttp's per-connection protocol; creates it only for admitted connections."""

    def __init__(self, make: Callable[[], asyncio.Protocol], gate: _Gate) -> None:
        self._make = make
        self._gate = gate
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.enter():
            transport.close()
            return
        self._inner = self._make()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._gate.leave()
            self._inner.connection_lost(exc)
            self._inner = None

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class CappedSite(web.BaseSite):
    """A TCP(+TLS) site, as `web.TCPSite`, that holds at most `cap` connections open (see the module docstring)."""

    __slots__ = ("_gate", "_handshake_timeout", "_host", "_port", "_reuse_address")

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
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Gated(server, self._gate),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
        )
