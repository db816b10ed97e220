"""The webhook's listener: aiohttp's TCP site plus a cap on open connections.

`WebhookSite(runner, host, port, ssl_context=...)` takes the same arguments as `web.TCPSite` for an
`AppRunner` of `webhook_app(...)`, and applies the app's `Limits`:
- at most `max_connections` TLS connections are open at once; a connection beyond that is closed
  as soon as its TLS handshake completes, without an HTTP answer (the API server retries or applies
  the webhook's failurePolicy), and counted in `sidecar_injection_connections_refused_total`;
- a TLS handshake must complete within `header_timeout`, so connections that never finish one are
  dropped too. (Until then a connection is not counted: time, not the cap, bounds those.)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from webhook import metrics
from webhook.app import WEBHOOK_LIMITS

log = logging.getLogger(__name__)


class _Gate:
    """Counts open connections against a cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0

    def enter(self) -> bool:
        if self.open >= self.cap:
            return False
        self.open += 1
        return True

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
            metrics.connections_refused_total.inc()
            log.debug("webhook connection refused: %d connections open", self._gate.open)
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


class WebhookSite(web.BaseSite):
    """A TCP(+TLS) site for the webhook app with its connection cap and handshake timeout."""

    __slots__ = ("_gate", "_host", "_limits", "_port", "_reuse_address")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
        reuse_address: bool | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_address = reuse_address
        self._limits = runner.app[WEBHOOK_LIMITS]
        self._gate = _Gate(self._limits.max_connections)

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
            ssl_handshake_timeout=self._limits.header_timeout if self._ssl_context else None,
        )
