"""The agent's status server (port 15020): readiness, application probes, merged metrics, certificates.

Routes (GET; anything else is 404):
- `/healthz/ready`: 200 `ready` when the wiring's `ready()` says so, else 503 with its reason.
- `/app-health/<container>/<readyz|livez|startupz>`: runs the application probe registered under
  exactly that path (see `probes`): 200 when it passed, 500 when it failed, the detail as text;
  404 naming the path when no probe is registered there.
- `/stats/prometheus`: the agent's own registry, then Envoy's stats, then the application's metrics
  (each target `ISTIO_PROMETHEUS_ANNOTATIONS` names, see `appmetrics`, in its order), concatenated
  with a newline between sources, as Prometheus text format 0.0.4. All sources are scraped at once;
  one that fails, times out or answers more than `max_app_metrics_bytes` (an application target) is
  left out, logged and counted in `istio_agent_scrape_failures_total{type="envoy"|"application"|
  "agent"}`; the scrape still answers 200. An OpenMetrics answer loses its `# EOF`, except with
  several targets that all answered OpenMetrics (of one version): then the merge is served as
  OpenMetrics, ending in exactly one `# EOF` (Istio's rule).
- `/debug/certs`: the wiring's `cert_info()` as JSON.
- `POST /drain` (the native sidecar's preStop hook, `pilot-agent request POST drain`): runs the
  wiring's `drain()` and answers 200 `OK`, or 500 with the reason it failed. Only from this host
  (403 otherwise); other methods get 405.

The port is open to every pod, and the agent's file descriptors are shared with its SDS and xDS
connections: at most `MAX_CONNECTIONS` connections are open at once (further ones are closed as
they are accepted, counted in `meshplane_agent_connections_refused_total`), and a connection must
send its request headers within `HEADER_TIMEOUT` of being accepted or of its last answer.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from controlplane.agent.appmetrics import ScrapeTarget, read_prometheus_env
from controlplane.agent.metrics import ScrapeMetrics
from controlplane.agent.probes import Prober, run_probe
from controlplane.listeners import CappedSite
from controlplane.literals import decimal

log = logging.getLogger(__name__)

STATUS_PORT = 15020
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text"
SCRAPE_TIMEOUT = 5.0
MAX_CONNECTIONS = 256  # kubelet probes, a scraper and an operator need a few
HEADER_TIMEOUT = 10.0
MAX_APP_METRICS_BYTES = 10 * 1024 * 1024  # per target; a larger answer is dropped (Istio's cap)
# Request headers never forwarded to an application probe: they describe the kubelet's connection.
_HOP_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept-encoding",
    }
)


class StatusError(Exception):
    """The status server cannot listen; the message names the address."""


@dataclass(frozen=True, kw_only=True)
class ReadyState:
    ready: bool
    reason: str = ""


def app_metrics_urls(text: str, *, host: str, status_port: int = STATUS_PORT) -> list[tuple[ScrapeTarget, str]]:
    """Each application target `ISTIO_PROMETHEUS_ANNOTATIONS` names, with its URL on `host`, in order.

    Empty when the pod's application metrics are not merged; raises ValueError as
    `appmetrics.read_prometheus_env` does.
    """
    targets = read_prometheus_env(text, status_port=status_port)
    return [(target, f"http://{_join(host, target.port)}{target.path}") for target in targets]


class StatusServer:
    """The HTTP server on the status port. Use `async with` or `start()` / `stop()`.

    Args:
        ready: says whether the proxy is ready and why not; an exception counts as not ready.
        probers: application probes by path, from `probes.parse_probers`.
        app_host: the application's address (the pod IP): probes without a host, and its metrics.
        source_address: local address for connections to the application (None: the kernel's choice).
        envoy_stats_url: Envoy's Prometheus endpoint; None when there is no Envoy (proxyless).
        prometheus_annotations: the text of `ISTIO_PROMETHEUS_ANNOTATIONS` (see `app_metrics_urls`).
        max_app_metrics_bytes: the largest answer kept from one application target (10 MiB).
        registry: the agent's own metrics; the scrape counters are registered in it, so one status
            server per registry.
        cert_info: the `/debug/certs` document.
        drain: starts the graceful drain for `POST /drain`; raises to report that it failed.

    Raises ValueError for bad `prometheus_annotations`; `start()` raises StatusError when the
    address cannot be bound (port in use, address not local).
    """

    def __init__(
        self,
        *,
        ready: Callable[[], Awaitable[ReadyState]],
        probers: Mapping[str, Prober],
        app_host: str,
        registry: CollectorRegistry,
        cert_info: Callable[[], Mapping[str, Any]],
        drain: Callable[[], Awaitable[None]] | None = None,
        envoy_stats_url: str | None = None,
        prometheus_annotations: str = "",
        source_address: str | None = None,
        bind_address: str = "0.0.0.0",
        port: int = STATUS_PORT,
        scrape_timeout: float = SCRAPE_TIMEOUT,
        max_app_metrics_bytes: int = MAX_APP_METRICS_BYTES,
    ) -> None:
        self._ready = ready
        self._probers = dict(probers)
        self._app_host = app_host
        self._source = source_address
        self._registry = registry
        self._cert_info = cert_info
        self._drain = drain
        self._envoy_url = envoy_stats_url
        self._app_targets = app_metrics_urls(prometheus_annotations, host=app_host, status_port=port or STATUS_PORT)
        self._max_app_bytes = max_app_metrics_bytes
        self._bind = bind_address
        self._port = port
        self._scrape_timeout = scrape_timeout
        self._metrics = ScrapeMetrics(registry)
        self._was_ready: bool | None = None
        self._runner: web.AppRunner | None = None
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0). Only valid once started."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the status server is not running")
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        """Listen on (bind_address, port). Raises StatusError naming the address when that fails."""
        app = web.Application(
            client_max_size=64 * 1024,
            handler_args={"keepalive_timeout": HEADER_TIMEOUT, "max_line_size": 8190, "max_field_size": 8190},
        )
        app.router.add_get("/healthz/ready", self._handle_ready)
        app.router.add_get("/app-health/{container}/{kind}", self._handle_probe)
        app.router.add_get("/app-lifecycle/{container}/{kind}", self._handle_probe)
        app.router.add_get("/stats/prometheus", self._handle_stats)
        app.router.add_get("/debug/certs", self._handle_certs)
        app.router.add_post("/drain", self._handle_drain)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = CappedSite(
                runner,
                self._bind,
                self._port,
                listener="status",
                cap=MAX_CONNECTIONS,
                refused=self._metrics.refused.inc,
            )
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno == errno.EADDRINUSE:
                hint = "another process holds the port: stop it or choose another status port"
            else:
                hint = "check the bind address: it must be an address of this host"
            where = _join(self._bind, self._port)
            raise StatusError(f"status server cannot listen on {where}: {reason} ({hint})") from None
        local = (self._source, 0) if self._source else None
        self._sessions = {
            "envoy": aiohttp.ClientSession(),
            "application": aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=local)),
        }
        self._runner = runner
        log.info("status server listening on %s", _join(self._bind, self.port))

    async def stop(self) -> None:
        """Stop listening and close every connection; requests still running get 1 s. Idempotent."""
        runner, sessions = self._runner, self._sessions
        self._runner, self._sessions = None, {}
        if runner is not None:
            await runner.cleanup()
        for session in sessions.values():
            await session.close()

    async def __aenter__(self) -> StatusServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # -- handlers ---------------------------------------------------------------------------------

    async def _handle_ready(self, _: web.Request) -> web.Response:
        try:
            state = await self._ready()
        except Exception as exc:
            log.exception("readiness check failed")
            state = ReadyState(ready=False, reason=f"readiness check failed: {exc}")
        if state.ready != self._was_ready:
            if state.ready:
                log.info("proxy is ready")
            else:
                log.warning("proxy is not ready: %s", state.reason)
            self._was_ready = state.ready
        if state.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"{state.reason or 'not ready'}\n")

    async def _handle_probe(self, request: web.Request) -> web.Response:
        prober = self._probers.get(request.path)
        if prober is None:
            known = ", ".join(sorted(self._probers)) or "none"
            text = f"no application probe is registered for {request.path} (registered: {known})\n"
            return web.Response(status=404, text=text)
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_HEADERS}
        result = await run_probe(prober, default_host=self._app_host, source_address=self._source, headers=headers)
        if not result.ok:
            log.info("application probe %s failed: %s", request.path, result.detail)
        return web.Response(status=200 if result.ok else 500, text=result.detail + "\n")

    async def _handle_drain(self, request: web.Request) -> web.Response:
        if not _from_this_host(request):
            return web.Response(status=403, text="Only requests from localhost are allowed\n")
        if self._drain is None:
            return web.Response(status=501, text="this agent has nothing to drain\n")
        log.info("handling /drain, starting drain")
        try:
            await self._drain()
        except Exception as exc:
            log.warning("drain failed: %s", exc)
            return web.Response(status=500, text=f"drain failed: {exc}\n")
        return web.Response(text="OK")

    async def _handle_certs(self, _: web.Request) -> web.Response:
        try:
            info = dict(self._cert_info())
        except Exception as exc:
            log.exception("certificate information failed")
            return web.Response(status=500, text=f"certificate information is unavailable: {exc}\n")
        return web.json_response(info, dumps=partial(json.dumps, indent=2, sort_keys=True, default=str))

    async def _handle_stats(self, request: web.Request) -> web.Response:
        self._metrics.scrapes.inc()
        timeout = self._scrape_timeout
        asked = decimal(request.headers.get("X-Prometheus-Scrape-Timeout-Seconds", ""))
        if asked is not None and asked > 0:  # absent, not a number or not positive: the default applies
            timeout = min(timeout, asked)
        forward = {k: v for k in ("User-Agent", "X-Prometheus-Scrape-Timeout-Seconds") if (v := request.headers.get(k))}
        envoy_url = self._envoy_url
        if envoy_url and request.query_string:
            envoy_url = f"{envoy_url}?{request.query_string}"
        envoy, *apps = await asyncio.gather(
            self._scrape("envoy", envoy_url, headers=forward, seconds=timeout, limit=None),
            *(
                self._scrape("application", url, headers=forward, seconds=timeout, limit=self._max_app_bytes, target=t)
                for t, url in self._app_targets
            ),
        )
        try:
            own = generate_latest(self._registry)
        except Exception:
            log.exception("the agent's own metrics could not be rendered")
            self._metrics.failures.labels(type="agent").inc()
            own = b""
        content_type, app_parts = _merge_apps(apps, several=len(self._app_targets) > 1)
        parts = (own, envoy.without_eof() if envoy else b"", *app_parts)
        body = b"".join(_terminated(part) for part in parts if part)
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    async def _scrape(
        self,
        kind: str,
        url: str | None,
        *,
        headers: Mapping[str, str],
        seconds: float,
        limit: int | None,
        target: ScrapeTarget | None = None,
    ) -> _Answer | None:
        """One source's answer, or None (logged and counted once) when it cannot be had."""
        session = self._sessions.get(kind)
        if url is None or session is None:
            return None
        try:
            async with asyncio.timeout(seconds):
                accept = {"Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1"}
                async with session.get(url, headers={**headers, **accept}) as response:
                    if response.status != 200:
                        raise _ScrapeFailed(f"status {response.status}")
                    chunks, size = [], 0
                    async for chunk in response.content.iter_chunked(65536):
                        size += len(chunk)
                        if limit is not None and size > limit:
                            raise _ScrapeFailed(f"the answer is larger than {limit} bytes")
                        chunks.append(chunk)
                    return _Answer(b"".join(chunks), response.headers.get("Content-Type", ""))
        except TimeoutError:
            reason = f"no answer within {seconds:g} s"
        except aiohttp.ClientConnectorError as exc:
            reason = os.strerror(exc.os_error.errno) if exc.os_error.errno else str(exc)
        except (_ScrapeFailed, aiohttp.ClientError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        # a target is quoted as JSON quotes it: a path from an annotation cannot forge log lines
        source = url if target is None else f"target {json.dumps(str(target))}"
        log.warning("scraping %s metrics from %s failed: %s", kind, source, reason)
        self._metrics.failures.labels(type=kind).inc()
        return None


class _ScrapeFailed(Exception):
    pass


@dataclass(frozen=True)
class _Answer:
    body: bytes
    content_type: str

    @property
    def openmetrics(self) -> str | None:
        """The OpenMetrics version the Content-Type declares (unversioned: 0.0.1); None: not OpenMetrics."""
        media_type, *params = (item.strip() for item in self.content_type.split(";"))
        if media_type.lower() != OPENMETRICS:
            return None
        values = dict(param.partition("=")[::2] for param in params)
        return "1.0.0" if values.get("version", "").strip() == "1.0.0" else "0.0.1"

    def without_eof(self) -> bytes:
        return _strip_eof(self.body) if self.openmetrics else self.body


def _merge_apps(answers: list[_Answer | None], *, several: bool) -> tuple[str, list[bytes]]:
    """The merged Content-Type and the application parts to append, in target order.

    One target (Istio's prometheus.io/port and path): text, its `# EOF` removed. Several: each
    `# EOF` removed; when every answer that came was OpenMetrics of one version, the merge is
    OpenMetrics of that version and gets one `# EOF` at the very end; otherwise text.
    """
    kept = [answer for answer in answers if answer is not None]
    if not several:
        return TEXT_FORMAT, [answer.without_eof() for answer in kept]
    parts = [_strip_eof(answer.body) for answer in kept]
    versions = {answer.openmetrics for answer in kept}
    if len(versions) == 1 and None not in versions:
        return f"{OPENMETRICS}; version={versions.pop()}; charset=utf-8", [*parts, b"# EOF\n"]
    return TEXT_FORMAT, parts


def _terminated(part: bytes) -> bytes:
    return part if part.endswith(b"\n") else part + b"\n"


def _strip_eof(body: bytes) -> bytes:
    """OpenMetrics ends with `# EOF`; inside a merged text exposition that line must go."""
    trimmed = body.rstrip()
    return trimmed[: -len(b"# EOF")] if trimmed.endswith(b"# EOF") else body


def _from_this_host(request: web.Request) -> bool:
    """The peer is a loopback address, or the address it connected to (a local address of this host)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    local = request.transport.get_extra_info("sockname") if request.transport else None
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    if address.is_loopback or (local and peer[0] == local[0]):
        return True
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(mapped is not None and mapped.is_loopback)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
