"""The plain-HTTP surfaces of the process: readiness and debug (:8080), metrics (:15014)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from controlplane.aio import HEAVY_WORK

#: Both listeners answer GETs only. A connection must send its request headers within
#: `HEADER_TIMEOUT` of being accepted or of its last answer (aiohttp's keep-alive timer, which also
#: runs before the first request), else it is closed: with the listener's cap
#: (`controlplane.listeners`), slow clients cannot hold what others need.
HEADER_TIMEOUT = 10.0
_HANDLER_ARGS = {
    "keepalive_timeout": HEADER_TIMEOUT,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 64,
    "read_bufsize": 16 * 1024,
}
_MAX_BODY = 64 * 1024

ReadinessCheck = Callable[[], Mapping[str, bool]]
DebugHandler = Callable[[web.Request], Any]


@dataclass(frozen=True)
class OffLoop:
    """Debug data built away from the event loop: `build` runs in a worker thread.

    `build` may read only what the event loop does not change while it runs: an immutable
    snapshot, or a copy taken when the handler was called.
    """

    build: Callable[[], Any]


def health_app(readiness: ReadinessCheck, debug: Mapping[str, DebugHandler]) -> web.Application:
    """`/ready` answers 200 when every check is true, else 503 naming what is not ready.

    `debug` maps a name to a handler returning JSON-able data, or an `OffLoop` building it, served
    at `/debug/<name>`. What the handler returns must not be changed by the event loop afterwards:
    the data is encoded in a worker thread, because a debug answer for a large mesh (a proxy's
    config dump is megabytes of JSON) would otherwise hold the loop, and with it every proxy, CSR
    and webhook call, for as long as the encoding takes. Debug requests are answered one at a time,
    so many at once neither crowd the event loop out of the interpreter nor hold many answers'
    data in memory.
    """
    encoding = asyncio.Lock()

    async def ready(_: web.Request) -> web.Response:
        checks = readiness()
        waiting = sorted(name for name, ok in checks.items() if not ok)
        if waiting:
            return web.Response(status=503, text=f"not ready: {', '.join(waiting)}\n")
        return web.Response(text="ready\n")

    async def index(_: web.Request) -> web.Response:
        return web.json_response({"endpoints": ["/ready", *(f"/debug/{n}" for n in sorted(debug))]})

    app = web.Application(client_max_size=_MAX_BODY, handler_args=_HANDLER_ARGS)
    app.router.add_get("/ready", ready)
    app.router.add_get("/debug", index)
    app.router.add_get("/debug/", index)
    for name, handler in debug.items():
        app.router.add_get(f"/debug/{name}", _json_handler(handler, encoding))
    return app


def _encode(build: Callable[[], Any]) -> str:
    """In a worker thread, the collector paused: an answer's objects all die once it is encoded."""
    with HEAVY_WORK:
        return json.dumps(build(), indent=2, default=str) + "\n"


def _json_handler(handler: DebugHandler, encoding: asyncio.Lock) -> Callable[[web.Request], Any]:
    async def serve(request: web.Request) -> web.StreamResponse:
        async with encoding:  # waiting requests hold nothing yet: one answer's data at a time
            data = handler(request)
            if hasattr(data, "__await__"):
                data = await data
            if isinstance(data, web.StreamResponse):
                return data
            build: Callable[[], Any] = data.build if isinstance(data, OffLoop) else lambda: data
            text = await asyncio.to_thread(_encode, build)
        return web.Response(text=text, content_type="application/json")

    return serve


def metrics_app() -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=_MAX_BODY, handler_args=_HANDLER_ARGS)
    app.router.add_get("/metrics", metrics)
    return app


class InflightTracker:
    """Counts requests between "headers received" and "response sent", across apps.

    aiohttp stops reading from a connection as soon as its shutdown begins, which would drop a
    request whose body is still arriving. Stopping the listeners, then waiting for this count to
    reach zero, then cleaning up, lets every request that had started finish.
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self, *, within: float) -> bool:
        """True if every in-flight request finished within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
