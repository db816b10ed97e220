"""The plain-HTTP surfaces of the process: readiness and debug (:8080), metrics (:15014)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

ReadinessCheck = Callable[[], Mapping[str, bool]]
DebugHandler = Callable[[web.Request], Any]


def health_app(readiness: ReadinessCheck, debug: Mapping[str, DebugHandler]) -> web.Application:
    """`/ready` answers 200 when every check is true, else 503 naming what is not ready.

    `debug` maps a name to a handler returning JSON-able data, served at `/debug/<name>`.
    """

    async def ready(_: web.Request) -> web.Response:
        checks = readiness()
        waiting = sorted(name for name, ok in checks.items() if not ok)
        if waiting:
            return web.Response(status=503, text=f"not ready: {', '.join(waiting)}\n")
        return web.Response(text="ready\n")

    async def index(_: web.Request) -> web.Response:
        return web.json_response({"endpoints": ["/ready", *(f"/debug/{n}" for n in sorted(debug))]})

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/debug", index)
    app.router.add_get("/debug/", index)
    for name, handler in debug.items():
        app.router.add_get(f"/debug/{name}", _json_handler(handler))
    return app


def _json_handler(handler: DebugHandler) -> Callable[[web.Request], Any]:
    async def serve(request: web.Request) -> web.Response:
        data = handler(request)
        if hasattr(data, "__await__"):
            data = await data
        if isinstance(data, web.StreamResponse):
            return data  # type: ignore[return-value]
        return web.Response(text=json.dumps(data, indent=2, default=str) + "\n", content_type="application/json")

    return serve


def metrics_app() -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
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
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True
