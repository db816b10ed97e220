"""A Service conflict is counted in /metrics as soon as it exists, not only once a proxy asked for config."""

from __future__ import annotations

import pathlib
import time
import urllib.request

import yaml

from tests.discovery import meshdata as m
from tests.helpers.serve import Running

GAUGE = "pilot_conflict_outbound_listener_tcp_over_current_tcp"


def gauge(running: Running) -> float | None:
    with urllib.request.urlopen(running.metrics_url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"{GAUGE} "):
                return float(line.split()[1])
    return None


def test_a_conflict_shows_in_the_gauge_with_no_proxy_connected(serve: Running) -> None:
    assert serve.config_dir is not None
    assert gauge(serve) == 0.0
    docs = []
    for name, created in (("alpha", "2024-01-01T00:00:00Z"), ("beta", "2024-06-01T00:00:00Z")):
        obj = m.service(name, cluster_ip="10.96.5.5", ports=[{"name": "tcp-db", "port": 5432, "targetPort": 5432}])
        obj["metadata"]["creationTimestamp"] = created
        docs.append(obj)
    (pathlib.Path(serve.config_dir) / "conflict.yaml").write_text(yaml.safe_dump_all(docs))
    deadline = time.monotonic() + 30
    while gauge(serve) != 1.0:
        assert time.monotonic() < deadline, f"{GAUGE} never counted the conflict"
        time.sleep(0.2)
    (pathlib.Path(serve.config_dir) / "conflict.yaml").unlink()
    while gauge(serve) != 0.0:
        assert time.monotonic() < deadline + 30, f"{GAUGE} never cleared"
        time.sleep(0.2)
