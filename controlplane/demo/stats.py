"""The counters each demo app keeps, and the stats file through which the demo reads them.

An app owns one `Counters` and writes it to its stats file (JSON, replaced atomically) about twice a
second and once more when it exits; the demo reads the file with `read_stats`. Callers count sent and
failed requests, latencies of successful ones and who answered; servers count what they served and
which client identity (from the `x-forwarded-client-cert` header) they saw.
"""

from __future__ import annotations

import collections
import json
import math
import os
import pathlib
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LATENCY_WINDOW = 2000  # percentiles are over the most recent successful requests


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0..1) of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def xfcc_uri(header: str | None) -> str:
    """The client's URI SAN (`URI=` element) from an x-forwarded-client-cert value, or ''."""
    if not header:
        return ""
    last = header.split(",")[-1]  # the element Envoy appended for the nearest client
    for part in last.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "uri":
            return value.strip().strip('"')
    return ""


@dataclass
class Counters:
    """Mutable counters of one app (one thread or event loop updates them)."""

    role: str
    workload: str
    sent: int = 0
    failed: int = 0
    served: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    backends: collections.Counter[str] = field(default_factory=collections.Counter)
    peers: collections.Counter[str] = field(default_factory=collections.Counter)
    last_error: str = ""
    last_xfcc: str = ""
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))

    def success(self, *, latency: float, backend: str, peer: str = "") -> None:
        self.sent += 1
        self.latencies.append(latency)
        self.backends[backend] += 1
        if peer:
            self.peers[peer] += 1

    def failure(self, reason: str) -> None:
        self.sent += 1
        self.failed += 1
        self.errors[reason] += 1
        self.last_error = reason

    def served_one(self, *, xfcc: str | None) -> None:
        self.served += 1
        self.last_xfcc = xfcc or ""
        self.peers[xfcc_uri(xfcc) or "(no client certificate)"] += 1

    def to_json(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "role": self.role,
            "workload": self.workload,
            "time": time.time(),
            "sent": self.sent,
            "failed": self.failed,
            "served": self.served,
            "errors": dict(self.errors),
            "backends": dict(self.backends),
            "peers": dict(self.peers),
            "last_error": self.last_error,
            "last_xfcc": self.last_xfcc,
            "p50_ms": _ms(percentile(ordered, 0.50)),
            "p99_ms": _ms(percentile(ordered, 0.99)),
        }

    def write(self, path: pathlib.Path) -> None:
        """Replace `path` atomically with the current counters. OSError propagates."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f)
            os.replace(tmp, path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass(frozen=True, kw_only=True)
class AppStats:
    """What an app last reported (see `Counters.to_json`)."""

    role: str
    workload: str
    time: float
    sent: int = 0
    failed: int = 0
    served: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    backends: Mapping[str, int] = field(default_factory=dict)
    peers: Mapping[str, int] = field(default_factory=dict)
    last_error: str = ""
    last_xfcc: str = ""
    p50_ms: float | None = None
    p99_ms: float | None = None


def read_stats(path: pathlib.Path) -> AppStats | None:
    """The stats an app last wrote, or None when the file does not exist yet or cannot be parsed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return AppStats(**{k: v for k, v in data.items() if k in AppStats.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None
