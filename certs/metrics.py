"""CA metrics, under Istio's exact names.

Istio exports its counters without Prometheus' `_total` suffix (`citadel_server_csr_count`), and
dashboards query those names. prometheus_client always appends `_total` to a counter, so these
counters are exposed through a small collector as untyped samples with the exact name; they only
ever increase and reset on restart, like any counter.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.registry import Collector


class IstioCounter(Collector):
    """A monotonic counter with optional labels, exposed as `<name>` (no `_total`)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}
        self._lock = threading.Lock()
        REGISTRY.register(self)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` (must not be negative) to the series named by `labels` (exactly the label names)."""
        if amount < 0:
            raise ValueError(f"{self.name}: counters only increase (got {amount})")
        key = self._key(labels) if labels or self.labelnames else ()
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """The current value of one series (0 when never incremented)."""
        return self._values.get(self._key(labels), 0.0)

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labelnames)}")
        return tuple(labels[n] for n in self.labelnames)

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "unknown")
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            metric.add_sample(self.name, dict(zip(self.labelnames, key, strict=True)), value)
        yield metric


csr_count = IstioCounter("citadel_server_csr_count", "CertificateSigningRequests received by the CA")
success_cert_issuance_count = IstioCounter(
    "citadel_server_success_cert_issuance_count", "Certificates issued successfully"
)
authentication_failure_count = IstioCounter(
    "citadel_server_authentication_failure_count", "CSRs rejected because the caller could not be authenticated"
)
csr_sign_error_count = IstioCounter(
    "citadel_server_csr_sign_error_count",
    "CSRs from authenticated callers that were refused or failed to sign, by reason",
    ["reason"],
)
root_cert_expiry_timestamp = Gauge(
    "citadel_server_root_cert_expiry_timestamp", "Unix time at which the CA's current root certificate expires"
)

#: Outcomes of `token_reviews`, a closed set.
REVIEW_OUTCOMES = (
    "reviewed_ok",
    "reviewed_refused",
    "review_unavailable",
    "not_a_token",
    "client_budget",
    "client_busy",
    "cached",
    "bad_signature",
    "unknown_key",
    "bad_claims",
)
token_reviews = Counter(
    "meshplane_ca_token_reviews",
    "Bearer tokens judged by TokenReview, by outcome: reviewed_ok, reviewed_refused, review_unavailable (by a "
    "review asked for, or one of the same token already in flight); not_a_token (not a JWT, oversized or expired), "
    "client_budget (the client's failed reviews are spent), client_busy (too many of its reviews in flight and "
    "waiting), bad_signature (the cluster's issuer keys do not verify it), bad_claims (they do, but its aud lacks "
    "istio-ca or its sub is no service account): refused without one; unknown_key (its key "
    "id is not among the keys, which cannot be fetched again yet): UNAVAILABLE without one; cached: accepted by a "
    "review of the same token less than 10 s before",
    ["outcome"],
)
