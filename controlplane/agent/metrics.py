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
