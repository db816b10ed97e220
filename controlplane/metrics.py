"""Metrics of the process itself (its shared servers), declared once."""

from prometheus_client import Counter

tls_handshake_failures_total = Counter(
    "meshplane_secure_grpc_handshake_failures_total",
    "TLS handshakes on the secure gRPC port that failed, by reason "
    "(certificate: the client's certificate did not verify; timeout; other: protocol errors and resets)",
    ["reason"],
)
