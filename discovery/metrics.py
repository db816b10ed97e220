"""The xDS server's metrics (Istio's names), and the stream hooks that update them and log.

Counters keep Istio's exposed names (`pilot_xds_pushes{type="cds"}`, no `_total` suffix, which
dashboards written for Istio query), so they are exported as untyped samples; histograms and
gauges are regular prometheus_client metrics.

Streams call `HOOKS` at open, close, request, response, NACK and unknown type; transport code does
no logging or counting of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Gauge, Histogram
from prometheus_client.core import Metric

from discovery.xdstypes import short

if TYPE_CHECKING:
    from discovery.connection import Connection, Decision

log = logging.getLogger("discovery")


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
REGISTRY.register(_Collector(pushes, rejects, unknown_types))

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
    """Called by the ADS streams at each step; counts and logs."""

    def opened(self, conn: Connection) -> None:
        connections.inc()
        log.info(
            "xDS stream opened",
            extra={"proxy": conn.proxy.id, "conn": conn.id, "peer": conn.peer, "delta": conn.delta},
        )

    def closed(self, conn: Connection) -> None:
        connections.dec()
        log.info("xDS stream closed", extra={"proxy": conn.proxy.id, "conn": conn.id})

    def request(self, conn: Connection, type_url: str, decision: Decision) -> None:
        log.debug("xDS request", extra={"conn": conn.id, "type": short(type_url), "decision": decision.value})

    def nack(self, conn: Connection, type_url: str, error: str) -> None:
        rejects.inc(short(type_url).lower())
        log.warning(
            "xDS response rejected by proxy; it keeps its last good config",
            extra={"proxy": conn.proxy.id, "type": short(type_url), "error": error},
        )

    def unknown_type(self, conn: Connection, type_url: str) -> None:
        unknown_types.inc(type_url)
        log.warning("xDS request for an unknown type; ignored", extra={"proxy": conn.proxy.id, "type": type_url})

    def response(self, conn: Connection, type_url: str, *, size: int, elapsed: float, since: float | None) -> None:
        kind = short(type_url).lower()
        pushes.inc(kind)
        push_time.labels(kind).observe(elapsed)
        config_size.labels(kind).observe(size)
        if since is not None:
            convergence_time.observe(since)

    def rejected_stream(self, peer: str, reason: str) -> None:
        log.warning("xDS stream refused", extra={"peer": peer, "reason": reason})

    def slow(self, conn: Connection, seconds: float) -> None:
        log.warning("xDS push is slow; later changes are merged", extra={"proxy": conn.proxy.id, "seconds": seconds})


HOOKS = StreamHooks()
