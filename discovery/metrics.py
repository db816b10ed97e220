"""The xDS server's metrics (Istio's names), and the stream hooks that update them and log.

Counters keep Istio's exposed names (`pilot_xds_pushes{type="cds"}`, no `_total` suffix, which
dashboards written for Istio query), so they are exported as untyped samples; histograms and
gauges are regular prometheus_client metrics.

Streams call `HOOKS` at open, close, request, response, NACK and unknown type; transport code does
no logging or counting of its own.

Nothing a client chooses becomes a label value as is: types are `cds`/`eds`/`lds`/`rds` (else
`other`), and unknown type URLs are counted under the URL only when it is a well-known xDS type
(else `other`), so the number of series stays fixed. Client text in logs (node ids, NACK messages,
type URLs) is cut to `TEXT_LIMIT` characters, and repeated warnings are throttled per stream (one
line per key every 10 s, with the count of lines held back), refused streams per status.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import grpc
from prometheus_client import REGISTRY, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from controlplane.model.services import ConflictKind, Conflicts
from discovery.connection import LogThrottle
from discovery.xdstypes import SHORT, short

if TYPE_CHECKING:
    from controlplane.model.registry import Registry
    from discovery.connection import Connection, Decision

log = logging.getLogger("discovery")

TEXT_LIMIT = 1024
OTHER = "other"
# Type URLs of xDS resources that clients may ask for and this server does not serve (a closed set).
WELL_KNOWN_TYPES = frozenset(
    "type.googleapis.com/" + name
    for name in (
        "envoy.config.route.v3.ScopedRouteConfiguration",
        "envoy.config.route.v3.VirtualHost",
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        "envoy.service.runtime.v3.Runtime",
        "envoy.config.core.v3.TypedExtensionConfig",
        "istio.workload.Address",
        "istio.security.Authorization",
    )
)


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text`, cut to `limit` characters with a note of how much was dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def kind(type_url: str) -> str:
    """The `type` label of a served type: cds, eds, lds, rds, else `other`."""
    return SHORT[type_url].lower() if type_url in SHORT else OTHER


def unknown_label(type_url: str) -> str:
    """The label of a type URL nobody serves: the URL if it is a well-known xDS type, else `other`."""
    return type_url if type_url in WELL_KNOWN_TYPES or type_url in SHORT else OTHER


class _LabeledCounter:
    """A counter by one label, exported under its exact name."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.values: dict[str, float] = {}

    def inc(self, value: str, amount: float = 1.0) -> None:
        self.values[value] = self.values.get(value, 0.0) + amount

    def get(self, value: str) -> float:
        return self.values.get(value, 0.0)

    def metric(self) -> Metric:
        metric = Metric(self.name, self.documentation, "unknown")
        for value, count in sorted(self.values.items()):
            metric.add_sample(self.name, {self.label: value}, count)
        return metric


class _Collector:
    def __init__(self, *counters: _LabeledCounter) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        for counter in self.counters:
            yield counter.metric()

    def describe(self) -> list[Metric]:
        return []


pushes = _LabeledCounter("pilot_xds_pushes", "xDS responses sent, by type (cds, eds, lds, rds).", "type")
rejects = _LabeledCounter("pilot_total_xds_rejects", "xDS responses rejected (NACKed) by proxies, by type.", "type")
unknown_types = _LabeledCounter("pilot_xds_unknown_type", "Requests for a type URL no generator serves.", "type")
unchanged = _LabeledCounter(
    "meshplane_xds_pushes_unchanged",
    "xDS pushes not sent because the client already has exactly that config, by type (State of the World: "
    "cds, lds; Delta: any type, when no resource changed or went).",
    "type",
)
refused_streams = _LabeledCounter(
    "meshplane_xds_streams_refused",
    "xDS streams ended before or at their first request, by gRPC status (UNAUTHENTICATED: no identity, "
    "PERMISSION_DENIED: an identity other than the node's, RESOURCE_EXHAUSTED: a client over a limit, ...).",
    "code",
)
REGISTRY.register(_Collector(pushes, rejects, unknown_types, unchanged, refused_streams))


class _ConflictGauges:
    """Service ports that lost a conflict, by kind (Istio's gauge names; the reserved-port gauge is
    meshplane's, as Istio only logs that case). Read at scrape time from the registry the discovery
    service follows (`follow`), so a conflict shows whether or not a proxy asked for config. The
    registry is held weakly: following it does not keep it (and its store) alive."""

    NAMES = {
        ConflictKind.TCP_OVER_TCP: "pilot_conflict_outbound_listener_tcp_over_current_tcp",
        ConflictKind.TCP_OVER_HTTP: "pilot_conflict_outbound_listener_tcp_over_current_http",
        ConflictKind.HTTP_OVER_TCP: "pilot_conflict_outbound_listener_http_over_current_tcp",
        ConflictKind.DUPLICATE_DOMAIN: "pilot_vservice_dup_domain",
        ConflictKind.RESERVED_PORT: "pilot_conflict_outbound_listener_reserved_port",
    }

    def __init__(self) -> None:
        self._registry: Callable[[], Registry | None] = lambda: None

    def follow(self, registry: Registry) -> None:
        """Read the conflicts from `registry` at each scrape, for as long as it exists (none after)."""
        self._registry = weakref.ref(registry)

    def collect(self) -> Iterator[Metric]:
        registry = self._registry()
        current = registry.snapshot().conflicts if registry is not None else Conflicts()
        for conflict_kind, name in self.NAMES.items():
            count = current.count(conflict_kind)
            yield GaugeMetricFamily(name, f"Service ports that lost a conflict: {conflict_kind.value}.", count)

    def describe(self) -> list[Metric]:
        return []


conflicts = _ConflictGauges()
REGISTRY.register(conflicts)

connections = Gauge("pilot_xds", "Connected xDS clients.")
push_time = Histogram(
    "pilot_xds_push_time",
    "Time to generate and send one xDS response, by type.",
    ["type"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 3, 5, 10),
)
convergence_time = Histogram(
    "pilot_proxy_convergence_time",
    "Time from the first config change of a push until the proxy was sent the result.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30),
)
config_size = Histogram(
    "pilot_xds_config_size_bytes",
    "Size of one xDS response, by type.",
    ["type"],
    buckets=(1_000, 10_000, 100_000, 1_000_000, 10_000_000, 40_000_000),
)
debounce_time = Histogram(
    "pilot_debounce_time",
    "Time from the first change to the start of its push (the debounce delay).",
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 3, 5, 10, 20),
)


class StreamHooks:
    """Called by the ADS streams at each step; counts and logs.

    Refused streams are logged once per status every 10 s (with the count held back): a client that
    opens streams in a loop must not flood the log any more than one that sends NACKs."""

    def __init__(self) -> None:
        self.refusals = LogThrottle()

    def opened(self, conn: Connection) -> None:
        connections.inc()
        log.info(
            "xDS stream opened",
            extra={"proxy": clip(conn.proxy.id), "conn": clip(conn.id), "peer": conn.peer, "delta": conn.delta},
        )

    def closed(self, conn: Connection) -> None:
        connections.dec()
        extra: dict[str, object] = {"proxy": clip(conn.proxy.id), "conn": clip(conn.id)}
        held = conn.throttle.held() if conn.throttle is not None else 0
        if held:
            extra["suppressed_warnings"] = held
        log.info("xDS stream closed", extra=extra)

    def request(self, conn: Connection, type_url: str, decision: Decision) -> None:
        log.debug("xDS request", extra={"conn": clip(conn.id), "type": kind(type_url), "decision": decision.value})

    def nack(self, conn: Connection, type_url: str, error: str) -> None:
        rejects.inc(kind(type_url))
        held = conn.warnings().allow(f"nack {kind(type_url)}")
        if held is None:
            return
        log.warning(
            "xDS response rejected by proxy; it keeps its last good config",
            extra={"proxy": clip(conn.proxy.id), "type": short(type_url), "error": clip(error), "suppressed": held},
        )

    def unknown_type(self, conn: Connection, type_url: str) -> None:
        unknown_types.inc(unknown_label(type_url))
        held = conn.warnings().allow("unknown type")
        if held is None:
            return
        log.warning(
            "xDS request for an unknown type; ignored",
            extra={"proxy": clip(conn.proxy.id), "type": clip(type_url), "suppressed": held},
        )

    def response(self, conn: Connection, type_url: str, *, size: int, elapsed: float, since: float | None) -> None:
        label = kind(type_url)
        pushes.inc(label)
        push_time.labels(label).observe(elapsed)
        config_size.labels(label).observe(size)
        if since is not None:
            convergence_time.observe(since)

    def unchanged(self, conn: Connection, type_url: str) -> None:
        unchanged.inc(kind(type_url))

    def rejected_stream(self, peer: str, code: grpc.StatusCode, reason: str) -> None:
        refused_streams.inc(code.name)
        held = self.refusals.allow(code.name)
        if held is None:
            return
        log.warning(
            "xDS stream refused",
            extra={"peer": clip(peer), "code": code.name, "reason": clip(reason), "suppressed": held},
        )

    def slow(self, conn: Connection, seconds: float) -> None:
        log.warning(
            "xDS push is slow; later changes are merged", extra={"proxy": clip(conn.proxy.id), "seconds": seconds}
        )


HOOKS = StreamHooks()
