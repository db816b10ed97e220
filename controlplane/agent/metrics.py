"""The agent's own metrics, declared once, in a registry of their own (merged into 15020's /stats/prometheus)."""

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)

CERT_EXPIRY = Gauge(
    "istio_agent_cert_expiry_timestamp",
    "When the workload certificate the agent serves expires (Unix seconds)",
    registry=REGISTRY,
)
ROTATIONS = Counter(
    "meshplane_agent_certificates_total",
    "Workload certificates obtained from the CA (the first one and every rotation)",
    registry=REGISTRY,
)
CA_ERRORS = Counter(
    "meshplane_agent_ca_errors_total",
    "Failed certificate requests, by gRPC status code (BAD_RESPONSE: the answer was not usable)",
    ["code"],
    registry=REGISTRY,
)
SDS_PUSHES = Counter(
    "meshplane_agent_sds_pushes_total",
    "Secrets sent to Envoy over SDS, by secret name",
    ["secret"],
    registry=REGISTRY,
)
ENVOY_RESTARTS = Counter(
    "meshplane_agent_envoy_restarts_total",
    "Times the agent restarted Envoy after it exited unexpectedly",
    registry=REGISTRY,
)


class ScrapeMetrics:
    """The counters of the merged `/stats/prometheus` endpoint, in the registry it merges.

    They live in the registry the status server is given (not `REGISTRY` itself), so that each
    status server counts its own scrapes; hence one status server per registry.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.scrapes = Counter("istio_agent_scrapes_total", "Scrapes of the merged metrics", registry=registry)
        self.refused = Counter(
            "meshplane_agent_connections_refused_total",
            "Status port connections closed as they were accepted, because the most were open",
            registry=registry,
        )
        self.failures = Counter(
            "istio_agent_scrape_failures_total",
            "Sources left out of a merged scrape, by type (envoy, application: one per scrape target, agent)",
            ["type"],
            registry=registry,
        )
