"""The aiohttp HTTPS app: reads the body safely, calls `review`, counts the outcome.

Per connection (see `webhook.limits.Limits`, read from the environment unless given): the request
headers must be complete within `header_timeout` of the connection or of the previous response,
else the connection is closed (aiohttp's keep-alive timer, which also runs before the first
request); the body must arrive within `body_timeout`, else the answer is 408 and the connection is
closed. Request lines and header fields are capped at 8 KiB, headers at 64, and reads are buffered
in 32 KiB. A review's cost is counted as its body's bytes plus the bytes an injection adds under the
current config (`Injector.injection_bytes`: ~5.5 KB with Istio's templates, far more when the mesh
config's `defaultConfig` is large, since it is rendered into every pod). Reviews costing over
`OFFLOAD_BYTES` are parsed, injected and answered in a worker thread, one at a time, with
automatic garbage collection paused and a shorter GIL switch interval (`controlplane.aio.HeavyWork`), so that one
large request does not stall the others: a 1.9 MB pod costs ~0.5 s of Python, during
which `/ready` waited up to 590 ms when it ran on the event loop, and up to ~150 ms now. Cheaper
ones are reviewed on the event loop, a turn's worth at a time (`INLINE_BYTES_PER_TURN`, with
`controlplane.aio.TurnBudget`): 150 bodies of 53 KB completing at once held `/ready` 2.7 s when all
were reviewed in the same turn; one at a time, up to 166-226 ms while each review took 20 ms, and
106-147 ms since the patch aligns only elements that are unchanged (12 ms: `webhook.patch`). Each
review on the loop runs with automatic garbage collection paused too (`controlplane.aio.CollectorPause`): a
review's objects die with it, and collections started meanwhile walked the whole registry. The
connection cap needs the listener's help: serve the app with `webhook.listener.WebhookSite`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

from aiohttp import web

from controlplane.aio import COLLECTOR_PAUSE, HEAVY_WORK, TurnBudget
from webhook import metrics
from webhook.limits import Limits
from webhook.review import Outcome, answer, error_body, parse_review
from webhook.service import Injector

log = logging.getLogger(__name__)

MAX_BODY = 3 * 1024 * 1024  # the API server's own request limit for a pod is 3 MiB
OFFLOAD_BYTES = 64 * 1024
# Reviews run on the event loop start at most this many body bytes per turn of the loop (a review
# costs ~0.26 us per byte: ~8 ms), so many bodies completing at once do not hold it for all of them.
INLINE_BYTES_PER_TURN = 32 * 1024
LINGER_SECONDS = 1.0  # after an early answer (413, 408), how long unread body is drained before closing
WEBHOOK_LIMITS = web.AppKey("webhook_limits", Limits)


def _encode(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _response(status: int, encoded: bytes) -> web.Response:
    return web.Response(status=status, body=encoded, content_type="application/json", charset="utf-8")


def _json(status: int, body: dict[str, object]) -> web.Response:
    return _response(status, _encode(body))


def webhook_app(injector: Injector, *, limits: Limits | None = None) -> web.Application:
    """The webhook's routes. `limits` defaults to `Limits.from_env(os.environ)` (SettingsError when
    malformed); they are also stored as `app[WEBHOOK_LIMITS]` for the listener."""
    limits = limits or Limits.from_env(os.environ)
    one_large = asyncio.Lock()  # large reviews one at a time: `_heavy_work` lasts one review at most
    small_turns = TurnBudget(INLINE_BYTES_PER_TURN)  # small ones on the loop, a turn's worth at a time

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
        try:
            async with asyncio.timeout(limits.body_timeout):
                async for chunk in request.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_BODY:
                        metrics.failure_total.labels(reason="too_large").inc()
                        return _json(413, error_body(f"body exceeds {MAX_BODY} bytes", code=413))
        except TimeoutError:
            metrics.failure_total.labels(reason="body_timeout").inc()
            message = f"the body did not arrive within {limits.body_timeout:g}s ({len(body)} bytes received)"
            response = _json(408, error_body(message, code=408))
            response.force_close()
            return response

        def review() -> tuple[Outcome, bytes]:
            parsed = parse_review(bytes(body))
            if not isinstance(parsed, Outcome):
                parsed = answer(parsed, injector=injector, cluster=cluster, network=network)
            return parsed, _encode(parsed.body)  # the answer can be larger than the pod: encoded here too

        def review_heavy() -> tuple[Outcome, bytes]:
            with HEAVY_WORK:
                return review()

        cost = len(body) + injector.injection_bytes()  # the pod, and what injecting it adds
        if cost <= OFFLOAD_BYTES:
            await small_turns.take(cost)
            with COLLECTOR_PAUSE:
                outcome, encoded = review()
        else:  # injection costs about as much as the pod is large: keep it off the event loop
            async with one_large:
                outcome, encoded = await asyncio.to_thread(review_heavy)
        if outcome.result == "success":
            metrics.success_total.inc()
        elif outcome.result == "skip":
            metrics.skip_total.inc()
        else:
            metrics.failure_total.labels(reason=outcome.reason).inc()
            log.info("admission rejected", extra={"reason": outcome.reason, "status": outcome.status})
        return _response(outcome.status, encoded)

    app = web.Application(
        client_max_size=MAX_BODY + 1,
        handler_args={
            "keepalive_timeout": limits.header_timeout,
            "lingering_time": LINGER_SECONDS,
            "max_line_size": 8190,
            "max_field_size": 8190,
            "max_headers": 64,
            "read_bufsize": 32 * 1024,
            "handler_cancellation": True,  # a client that hangs up stops its request's work
        },
    )
    app[WEBHOOK_LIMITS] = limits
    app.router.add_post("/inject", handle)
    app.router.add_post("/inject/cluster/{cluster}/net/{network}", handle)
    app.router.add_post("/inject/", handle)
    return app
