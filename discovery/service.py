"""The discovery service: connected streams, the push pipeline, and what each proxy was sent.

`DiscoveryService` subscribes to the registry. Each model change becomes a `PushRequest` for the
debouncer; a debounced request is queued for every connected stream (`PushQueue`, at most one
entry per stream) and `push_concurrency` workers hand them to the streams, waiting up to
`send_timeout` seconds for each before moving on (a stuck client keeps its merged pending push
and costs nothing more). Generated resources live in one `XdsCache` shared by all streams.

`run()` is the long-running task; the gRPC transport (`discovery.server`) creates streams.

Endpoint changes are compared with the endpoints seen at the previous change: a host whose
sidecars (tlsMode) or identities per port changed is named in the request's `tls_changed`, which
proxyless clients' CDS depends on. Comparing at every change (not at push time) keeps a change that
flips and flips back within one debounce window visible to a client that read the middle state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import any_pb2, json_format

from controlplane.aio import TurnBudget
from controlplane.literals import duration
from controlplane.model.endpoints import ServiceEndpoints
from controlplane.model.registry import MeshSnapshot, ModelChange, Registry, UpdateKind
from discovery import metrics
from discovery.cache import XdsCache
from discovery.clients import OpenStreams
from discovery.connection import REQUEST_UNITS_PER_TURN, StreamLimits, Watched, sync_status
from discovery.delta import KnownVersions
from discovery.generators import ProxyView, table_for
from discovery.generators.base import GenContext
from discovery.generators.grpc import tls_facts
from discovery.proxy import Proxy
from discovery.pushqueue import Debouncer, PushQueue, PushRequest
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, WILDCARD_TYPES, short

if TYPE_CHECKING:
    from discovery.stream import StreamBase

log = logging.getLogger(__name__)


def default_concurrency() -> int:
    """Istio's push throttle: min(15 + 5 x cores, 100)."""
    return min(15 + 5 * (os.cpu_count() or 1), 100)


class DiscoveryService:
    def __init__(
        self,
        registry: Registry,
        *,
        debounce_quiet: float = 0.1,
        debounce_max: float = 10.0,
        push_concurrency: int | None = None,
        send_timeout: float = 10.0,
        control_plane_id: str = "meshplane",
        version: str = "",
        cache: XdsCache | None = None,
        limits: StreamLimits | None = None,
    ) -> None:
        """`limits` bounds what one client may make a stream hold, and how many streams it may have open
        (default `StreamLimits()`)."""
        self.registry = registry
        metrics.conflicts.follow(registry)
        self.cache = cache or XdsCache()
        self.known_versions = KnownVersions()  # Delta streams in the same state share what their clients know
        self.limits = limits or StreamLimits()
        self.open_streams = OpenStreams(self.limits.streams_per_client)
        # Requests are handled a turn's worth at a time (`StreamBase.serve`), so a burst of large ones
        # from many streams cannot hold the event loop that also answers /ready and the CA.
        self.request_turns = TurnBudget(REQUEST_UNITS_PER_TURN)
        self.control_plane_id = control_plane_id
        self.control_plane = base_pb2.ControlPlane(
            identifier=json.dumps({"Component": "istiod", "ID": control_plane_id, "info": {"version": version}})
        )
        self.send_timeout = send_timeout
        self.push_concurrency = push_concurrency or default_concurrency()
        self.streams: dict[str, StreamBase[Any]] = {}
        self.queue: PushQueue[str] = PushQueue()
        self.debouncer = Debouncer(
            quiet=debounce_quiet,
            max_delay=debounce_max,
            emit=self.start_push,
            observe=lambda delay, _req: metrics.debounce_time.observe(delay),
        )
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._nonce_prefix = secrets.token_hex(3)
        self.pushes_started = 0
        # The endpoints of each service as the last change left them (immutable objects the registry
        # shares): what an endpoints change is compared with, with no snapshot built per change.
        self._endpoints_seen: dict[str, ServiceEndpoints] = dict(registry.snapshot().endpoints)
        registry.subscribe(self._on_change)

    # -- streams -------------------------------------------------------------------------------
    def snapshot(self) -> MeshSnapshot:
        return self.registry.snapshot()

    def connection_id(self, proxy: Proxy) -> str:
        return f"{proxy.name}-{next(self._ids)}"

    def nonce(self) -> str:
        return f"{self._nonce_prefix}-{next(self._nonces):x}"

    def register(self, stream: StreamBase[Any]) -> None:
        assert stream.conn is not None
        self.streams[stream.conn.id] = stream

    def unregister(self, stream: StreamBase[Any]) -> None:
        if stream.conn is not None:
            self.streams.pop(stream.conn.id, None)
            self.queue.remove(stream.conn.id)

    # -- pushes --------------------------------------------------------------------------------
    def _on_change(self, change: ModelChange) -> None:
        self.cache.advance(change.version)
        request = PushRequest.from_change(change)
        hosts = request.of_kind(UpdateKind.ENDPOINTS)
        if hosts:
            changed = frozenset(host for host in hosts if self._tls_changed(host))
            if changed:
                request = dataclasses.replace(request, tls_changed=changed)
        self.debouncer.add(request)

    def _tls_changed(self, host: str) -> bool:
        """Whether what proxyless clients read from `host`'s endpoints changed since its last change."""
        after = self.registry.endpoints_now(host)
        before = self._endpoints_seen.pop(host, None)
        if not after.empty:
            self._endpoints_seen[host] = after
        return tls_facts(before or ServiceEndpoints.none_for(host)) != tls_facts(after)

    def start_push(self, request: PushRequest) -> None:
        """Queue `request` for every connected stream (the debouncer calls this)."""
        self.pushes_started += 1
        if log.isEnabledFor(logging.DEBUG):  # naming a request of 40,000 updates takes ~10 ms
            log.debug("push", extra={"request": str(request), "streams": len(self.streams)})
        for conn_id in self.streams:
            self.queue.enqueue(conn_id, request)

    async def run(self) -> None:
        """The debouncer and the push workers, until cancelled."""
        tasks = [asyncio.create_task(self.debouncer.run(), name="xds-debounce")]
        tasks += [
            asyncio.create_task(self._worker(), name=f"xds-push-{index}") for index in range(self.push_concurrency)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _worker(self) -> None:
        while True:
            conn_id, request = await self.queue.dequeue()
            try:
                stream = self.streams.get(conn_id)
                if stream is None:
                    continue
                started = time.monotonic()
                try:
                    async with asyncio.timeout(self.send_timeout):
                        await asyncio.shield(stream.push(request))
                except TimeoutError:
                    if stream.conn is not None:
                        metrics.HOOKS.slow(stream.conn, time.monotonic() - started)
            except Exception:
                log.exception("push to %s failed", conn_id)
            finally:
                self.queue.done(conn_id)

    # -- status and debugging ----------------------------------------------------------------------
    def syncz(self) -> list[dict[str, Any]]:
        """Per proxy, per type: SYNCED / NOT SENT / STALE / NACKED, with nonces and the last error."""
        out = []
        for stream in sorted(self.streams.values(), key=lambda s: s.conn.id if s.conn else ""):
            conn = stream.conn
            if conn is None:
                continue
            types: dict[str, Any] = {}
            for type_url in [*PUSH_ORDER, *sorted(set(conn.watched) - set(PUSH_ORDER))]:
                watched = conn.watched.get(type_url)
                if watched is None:
                    continue
                types[short(type_url)] = {
                    "type_url": type_url,
                    "status": sync_status(watched).value,
                    "subscribed": "*" if watched.wildcard else len(watched.names),
                    "version_sent": watched.version_sent,
                    "nonce_sent": watched.nonce_sent,
                    "version_acked": watched.version_acked,
                    "nonce_acked": watched.nonce_acked,
                    "error": watched.error,
                }
            out.append(
                {
                    "proxy": conn.proxy.name,
                    "id": conn.proxy.id,
                    "connection": conn.id,
                    "cluster_id": conn.proxy.cluster_id,
                    "istio_version": conn.proxy.istio_version,
                    "istiod": self.control_plane_id,
                    "delta": conn.delta,
                    "generator": conn.proxy.generator or conn.proxy.type,  # grpc, sidecar or router
                    "interception_mode": conn.proxy.interception_mode.value,
                    "peer": conn.peer,
                    "identity": conn.identity,
                    "connected_at": conn.connected_at,
                    "pushes": conn.pushes,
                    "nacks": conn.nacks,
                    "types": types,
                }
            )
        return out

    def find(self, proxy_id: str) -> StreamBase[Any] | None:
        """The newest stream of a proxy named `<pod>.<namespace>`, or with that full node id."""
        found = [s for s in self.streams.values() if s.conn and proxy_id in (s.conn.proxy.name, s.conn.proxy.id)]
        return max(found, key=lambda s: s.conn.connected_at if s.conn else 0.0) if found else None

    def config_dump(self, proxy_id: str) -> Callable[[], dict[str, Any]] | None:
        """Envoy-style config dump of what the proxy would be sent now (None if not connected).

        Generating reads the shared cache, so it runs now, on the event loop (and costs little: what
        a connected proxy was sent is cached); the returned function turns the result into JSON-able
        data, which for a large mesh is the costly part, and may run outside the event loop.
        """
        stream = self.find(proxy_id)
        if stream is None or stream.conn is None:
            return None
        conn = stream.conn
        snapshot = self.snapshot()
        ctx = GenContext(snapshot=snapshot, view=ProxyView.build(conn.proxy, snapshot), cache=self.cache, request=None)
        table = table_for(conn.proxy)
        version = str(snapshot.version)
        resources: dict[str, list[any_pb2.Any]] = {}
        for type_url in PUSH_ORDER:
            generator = table.get(type_url)
            watched = conn.watched.get(type_url) or Watched(type_url=type_url, wildcard=type_url in WILDCARD_TYPES)
            if generator is None:
                continue
            resources[type_url] = [r.to_any() for g in generator.generate(ctx, watched).groups for r in g.resources]
        dump = config_dump_pb2.ConfigDump()
        clusters = config_dump_shared_pb2.ClustersConfigDump(
            version_info=version,
            dynamic_active_clusters=[
                config_dump_shared_pb2.ClustersConfigDump.DynamicCluster(version_info=version, cluster=a)
                for a in resources.get(CLUSTER, [])
            ],
        )
        listeners = config_dump_shared_pb2.ListenersConfigDump(
            version_info=version,
            dynamic_listeners=[
                config_dump_shared_pb2.ListenersConfigDump.DynamicListener(
                    name=_name(a),
                    active_state=config_dump_shared_pb2.ListenersConfigDump.DynamicListenerState(
                        version_info=version, listener=a
                    ),
                )
                for a in resources.get(LISTENER, [])
            ],
        )
        routes = config_dump_shared_pb2.RoutesConfigDump(
            dynamic_route_configs=[
                config_dump_shared_pb2.RoutesConfigDump.DynamicRouteConfig(version_info=version, route_config=a)
                for a in resources.get(ROUTE, [])
            ]
        )
        endpoints = config_dump_shared_pb2.EndpointsConfigDump(
            dynamic_endpoint_configs=[
                config_dump_shared_pb2.EndpointsConfigDump.DynamicEndpointConfig(
                    version_info=version, endpoint_config=a
                )
                for a in resources.get(ENDPOINT, [])
            ]
        )
        for section in (clusters, listeners, routes, endpoints):
            dump.configs.add().Pack(section)
        return lambda: dict(json_format.MessageToDict(dump))

    def registryz(self) -> Callable[[], dict[str, Any]]:
        """The registry for `/debug/registryz`: what is cheap is read now, the rest by the returned
        function, from an immutable snapshot, so it may run outside the event loop."""
        snapshot = self.snapshot()
        problems = [str(p) for p in self.registry.problems]
        cache = self.cache.stats()
        return lambda: self._describe_registry(snapshot, problems, cache)

    @staticmethod
    def _describe_registry(snapshot: MeshSnapshot, problems: list[str], cache: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": snapshot.version,
            "services": [
                {
                    "hostname": svc.hostname,
                    "namespace": svc.namespace,
                    "cluster_ip": svc.cluster_ip,
                    "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol.value} for p in svc.ports],
                    "endpoints": [
                        {
                            "address": e.address,
                            "port": e.port,
                            "port_name": e.port_name,
                            "health": e.health.value,
                            "zone": e.zone,
                            "pod": e.pod,
                            "service_account": e.service_account,
                            "sidecar": e.sidecar,
                        }
                        for e in snapshot.endpoints_for(svc.hostname).endpoints
                    ],
                }
                for svc in snapshot.services.values()
            ],
            "workloads": len(snapshot.workloads),
            "peer_authentications": [f"{p.namespace}/{p.name}" for p in snapshot.peer_authentications],
            "problems": problems,
            "cache": cache,
        }


def _name(packed: any_pb2.Any) -> str:
    message = listener_pb2.Listener()
    packed.Unpack(message)
    return str(message.name)


def _seconds(text: str, *, name: str) -> float:
    value = duration(text)  # Istio reads these with Go's time.ParseDuration
    if value is None:
        raise ValueError(f"{name}: {text!r} is not a duration like 100ms or 10s")
    if value < 0:
        raise ValueError(f"{name}: {text!r} must not be negative")
    return value


def debounce_from_env(environ: Mapping[str, str]) -> tuple[float, float]:
    """(quiet, max) debounce seconds from Istio's `PILOT_DEBOUNCE_AFTER` / `PILOT_DEBOUNCE_MAX`
    (defaults 100ms and 10s). Raises ValueError naming the variable for a malformed value."""
    quiet = _seconds(environ.get("PILOT_DEBOUNCE_AFTER", "100ms"), name="PILOT_DEBOUNCE_AFTER")
    most = _seconds(environ.get("PILOT_DEBOUNCE_MAX", "10s"), name="PILOT_DEBOUNCE_MAX")
    return quiet, most
