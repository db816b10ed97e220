"""The aiohttp HTTPS app: reads the body safely, calls `review`, counts the outcome."""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web

from webhook import metrics
from webhook.review import error_body, review
from webhook.service import Injector

log = logging.getLogger(__name__)

MAX_BODY = 3 * 1024 * 1024  # the API server's own request limit for a pod is 3 MiB


def _json(status: int, body: dict[str, object]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")), content_type="application/json")


def webhook_app(injector: Injector) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        started = time.perf_counter()
        metrics.requests_total.inc()
        try:
            return await _handle(request)
        finally:
            metrics.time_seconds.observe(time.perf_counter() - started)

    async def _handle(request: web.Request) -> web.Response:
        cluster = request.match_info.get("cluster")
        network = request.match_info.get("network")
        if request.content_type != "application/json":
            metrics.failure_total.labels(reason="content_type").inc()
            message = f"Content-Type {request.content_type!r} is not supported; send application/json"
            return _json(415, error_body(message, code=415))
        if request.content_length is not None and request.content_length > MAX_BODY:
            metrics.failure_total.labels(reason="too_large").inc()
            return _json(
                413,
                error_body(f"body of {request.content_length} bytes exceeds {MAX_BODY}", code=413),
            )
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_BODY:
                metrics.failure_total.labels(reason="too_large").inc()
                return _json(413, error_body(f"body exceeds {MAX_BODY} bytes", code=413))
        outcome = review(bytes(body), injector=injector, cluster=cluster, network=network)
        if outcome.result == "success":
            metrics.success_total.inc()
        elif outcome.result == "skip":
            metrics.skip_total.inc()
        else:
            metrics.failure_total.labels(reason=outcome.reason).inc()
            log.info("admission rejected", extra={"reason": outcome.reason, "status": outcome.status})
        return _json(outcome.status, outcome.body)

    app = web.Application(client_max_size=MAX_BODY + 1)
    app.router.add_post("/inject", handle)
    app.router.add_post("/inject/cluster/{cluster}/net/{network}", handle)
    app.router.add_post("/inject/", handle)
    return app
