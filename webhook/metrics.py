"""Injection metrics, Istio's names."""

from prometheus_client import Counter, Histogram

requests_total = Counter("sidecar_injection_requests_total", "Admission requests received by the injection webhook")
success_total = Counter("sidecar_injection_success_total", "Pods injected successfully")
skip_total = Counter("sidecar_injection_skip_total", "Pods admitted without injection (policy said no)")
failure_total = Counter(
    "sidecar_injection_failure_total", "Admission requests that failed or were rejected", ["reason"]
)
time_seconds = Histogram(
    "sidecar_injection_time_seconds",
    "Time to handle one admission request",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
connections_refused_total = Counter(
    "sidecar_injection_connections_refused_total", "Webhook connections closed because too many were open"
)
