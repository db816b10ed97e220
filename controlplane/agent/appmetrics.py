"""Where the application's own metrics are: the targets the agent merges into `/stats/prometheus`.

Two inputs name them, both Istio's:
- the pod annotation `prometheus.istio.io/scrape-targets`: `port:path` items separated by commas,
  in the order they are merged (`parse_scrape_targets`, which the injector uses to refuse bad
  values before a pod is created);
- env `ISTIO_PROMETHEUS_ANNOTATIONS` of `istio-proxy`, written by the injector:
  `{"scrape","path","port"}` from `prometheus.io/*`, plus `"targets": [{"port","path"}, ...]` when
  the pod declared scrape-targets, which then win (`read_prometheus_env`).

No target may be a port of the sidecar itself (`sidecar_port_reason`): scraping the agent's status
port would loop, Envoy's Prometheus port is merged already, the others are not metrics at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.jsontext import MAX_ENV_JSON_DEPTH, load_json
from controlplane.literals import natural

PROMETHEUS_ENV = "ISTIO_PROMETHEUS_ANNOTATIONS"
SCRAPE_TARGETS_ANNOTATION = "prometheus.istio.io/scrape-targets"
DEFAULT_PATH = "/metrics"
DEFAULT_PORT = 80
# Istio's data-plane ports, by what they are; never an application's metrics.
RESERVED_PORTS = {
    15000: "Envoy admin",
    15001: "outbound capture",
    15004: "debug",
    15006: "inbound capture",
    15008: "HBONE tunnel",
    15009: "HBONE tunnel, secure networks",
    15020: "agent status",
    15021: "Envoy health",
    15053: "DNS proxy",
    15090: "Envoy Prometheus",
}
_UNSAFE_IN_PATH = re.compile(r"[\s\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ScrapeTarget:
    """One application metrics endpoint: a port of the pod and an absolute path (query allowed)."""

    port: int
    path: str

    def __str__(self) -> str:
        return f"{self.port}:{self.path}"


def sidecar_port_reason(port: int, *, status_port: int) -> str | None:
    """Why `port` belongs to the sidecar (`status_port`: the pod's agent status port, 0 for none), or None."""
    if status_port and port == status_port:
        return "agent status"
    return RESERVED_PORTS.get(port)


def _shown(text: str) -> str:
    """`text` quoted for a message, cut to a readable length."""
    return repr(text if len(text) <= 64 else text[:60] + "...")


def _port(text: str) -> int:
    port = natural(text)
    if port is None or not 1 <= port <= 65535:
        raise ValueError(f"port {_shown(text)} is not a port number 1-65535")
    return port


def parse_scrape_targets(text: str, *, status_port: int) -> tuple[ScrapeTarget, ...]:
    """`"8080:/metrics, 9100:/custom"` -> targets in that order, as Istio reads the annotation.

    Items are trimmed and empty ones skipped; a missing path is `/metrics`. Raises `ValueError`
    naming the offending item when: nothing is listed; a port is not an integer 1-65535; a path does
    not begin with `/` or holds whitespace or control characters; the same port and path appear
    twice; a port is the sidecar's (`sidecar_port_reason`).
    """
    targets: list[ScrapeTarget] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        port_text, _, path = item.partition(":")
        try:
            port = _port(port_text.strip())
        except ValueError as exc:
            raise ValueError(f"{_shown(item)}: {exc}") from None
        path = path.strip() or DEFAULT_PATH
        if not path.startswith("/"):
            raise ValueError(f"{_shown(item)}: the path must begin with / (e.g. {port}:/metrics)")
        if _UNSAFE_IN_PATH.search(path):
            raise ValueError(f"{_shown(item)}: the path holds whitespace or control characters")
        target = ScrapeTarget(port, path)
        if target in targets:
            raise ValueError(f"{_shown(item)}: this port and path are listed twice")
        reason = sidecar_port_reason(port, status_port=status_port)
        if reason:
            raise ValueError(f"{_shown(item)}: port {port} is the sidecar's own ({reason}), not the application's")
        targets.append(target)
    if not targets:
        raise ValueError("lists no target; write port:path items separated by commas, e.g. 8080:/metrics")
    return tuple(targets)


def format_scrape_targets(targets: Iterable[ScrapeTarget]) -> str:
    """The annotation value that `parse_scrape_targets` reads back as `targets`."""
    return ",".join(map(str, targets))


def read_prometheus_env(text: str, *, status_port: int) -> tuple[ScrapeTarget, ...]:
    """The targets `ISTIO_PROMETHEUS_ANNOTATIONS` asks the agent to scrape, in merge order.

    None when the text is empty, names nothing (the pod had no Prometheus annotations) or `scrape`
    is "false". With `targets` those are scraped; otherwise one target from `port` (default 80)
    and `path` (default /metrics), as Istio's agent does. A path without a leading `/` gets one.
    Raises ValueError naming the env var for bad JSON, a port that is not a number, or a port of
    the sidecar itself (scraping it would loop).
    """
    if not text.strip():
        return ()
    try:
        config = load_json(text, max_depth=MAX_ENV_JSON_DEPTH)
    except ValueError as exc:
        raise ValueError(f"env {PROMETHEUS_ENV}: not JSON ({exc}); it is written by the sidecar injector") from None
    if not isinstance(config, dict):
        raise ValueError(f'env {PROMETHEUS_ENV}: must be a JSON object like {{"scrape":"true","port":"9090"}}')
    fields = {}
    for key in ("scrape", "path", "port"):
        value = config.get(key) or ""
        if not isinstance(value, str):
            raise ValueError(f"env {PROMETHEUS_ENV}: {key} must be a string, got {json.dumps(value)}")
        fields[key] = value.strip()
    listed = config.get("targets") or []
    if not isinstance(listed, list):
        raise ValueError(f"env {PROMETHEUS_ENV}: targets must be a list, got {json.dumps(listed)}")
    if (not any(fields.values()) and not listed) or fields["scrape"] == "false":
        return ()
    if not listed:
        items = [(fields["port"] or str(DEFAULT_PORT), fields["path"], "port", " (prometheus.io/port)")]
    else:
        items = []
        for index, item in enumerate(listed):
            where = f"targets[{index}]"
            if not isinstance(item, dict) or not all(isinstance(item.get(k, ""), str) for k in ("port", "path")):
                raise ValueError(f'env {PROMETHEUS_ENV}: {where} must be {{"port": "...", "path": "..."}}')
            items.append((str(item.get("port", "")).strip(), str(item.get("path", "")).strip(), f"{where}.port", ""))
    targets = []
    for port_text, path, where, hint in items:
        try:
            port = _port(port_text)
        except ValueError:
            raise ValueError(f"env {PROMETHEUS_ENV}: {where} {_shown(port_text)} is not a port number{hint}") from None
        reason = sidecar_port_reason(port, status_port=status_port)
        if reason:
            raise ValueError(
                f"env {PROMETHEUS_ENV}: {where} {port} is the sidecar's own ({reason}); point the pod's "
                f"{'prometheus.io/port' if hint else SCRAPE_TARGETS_ANNOTATION} at the application's metrics port"
            )
        absolute = path if path.startswith("/") else "/" + path
        targets.append(ScrapeTarget(port, absolute if path else DEFAULT_PATH))
    return tuple(targets)
