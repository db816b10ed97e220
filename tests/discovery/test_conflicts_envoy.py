"""Real Envoy 1.40 against `meshplane serve` with conflicting Services in the config directory: Envoy
rejects nothing, the oldest Service keeps each contested address, a Service added afterwards still
arrives, and the conflicts show in /debug/registryz and /metrics."""

from __future__ import annotations

import json
import pathlib
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.discovery import meshdata as m
from tests.e2e.envoyproxy import Envoy, SdsServer, make_identity, wait_for
from tests.helpers.serve import Running, start_serve

NS = "conflicts"
OLD, NEW = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"


def svc(name: str, ip: str, created: str, ports: Sequence[tuple[str, int]]) -> dict[str, Any]:
    obj = m.service(name, NS, cluster_ip=ip, ports=[{"name": n, "port": p, "targetPort": p} for n, p in ports])
    obj["metadata"]["creationTimestamp"] = created
    return obj


CONFLICTING = [
    m.namespace(NS),
    # HTTP over HTTP on 10.96.50.1:80 (duplicate domains); the loser's port 8081 is its own
    svc("web-old", "10.96.50.1", OLD, [("http", 80)]),
    svc("web-new", "10.96.50.1", NEW, [("http", 80), ("http-admin", 8081)]),
    # TCP over TCP on 10.96.50.2:5432 (two listeners on one address); the loser's port 9000 is its own
    svc("db-old", "10.96.50.2", OLD, [("tcp-db", 5432)]),
    svc("db-new", "10.96.50.2", NEW, [("tcp-db", 5432), ("tcp-admin", 9000)]),
    # HTTP ports on the sidecar's own listener ports
    svc("odd", "10.96.50.3", OLD, [("http-out", 15001), ("http-in", 15006), ("http", 8082)]),
    m.pod("client", "127.0.0.3", NS, app="client", sa="client"),
]


@pytest.fixture
def serve(tmp_path: pathlib.Path) -> Iterator[Running]:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "mesh.yaml").write_text(m.dump_yaml(CONFLICTING))
    running = start_serve(
        tmp_path, "--config-dir", str(config_dir), env={"PILOT_DEBOUNCE_AFTER": "0s", "PILOT_DEBOUNCE_MAX": "0s"}
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def sds() -> Iterator[SdsServer]:
    server = SdsServer(make_identity(f"spiffe://cluster.local/ns/{NS}/sa/client")).start()
    try:
        yield server
    finally:
        server.stop()


def settled(envoy: Envoy) -> dict[str, int] | None:
    stats = envoy.stats()
    if (
        stats.get("listener_manager.lds.update_success", 0) < 1
        or stats.get("cluster_manager.cds.update_success", 0) < 1
    ):
        return None
    if stats.get("listener_manager.total_listeners_warming", 1) or stats.get("cluster_manager.warming_clusters", 1):
        return None
    rds = [k for k in stats if ".rds." in k and k.endswith(".update_success")]
    return stats if rds and all(stats[k] >= 1 for k in rds) else None


def rejected(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if k.endswith("update_rejected") and v}


def routes_with(envoy: Envoy, text: str) -> str | None:
    """Envoy's active route configurations as text, once they mention `text`."""
    dump = str(envoy.get("/config_dump?resource=dynamic_route_configs", raw=True))
    return dump if text in dump else None


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_envoy_rejects_nothing_and_a_later_service_still_arrives(
    serve: Running, sds: SdsServer, tmp_path: pathlib.Path, api_type: str
) -> None:
    envoy = Envoy.start(
        tmp_path,
        name=f"conflicts-{api_type.lower()}",
        node_id=f"sidecar~127.0.0.3~client.{NS}~{NS}.svc.cluster.local",
        metadata={
            "NAMESPACE": NS,
            "SERVICE_ACCOUNT": "client",
            "ISTIO_VERSION": "1.40.0",
            "INTERCEPTION_MODE": "REDIRECT",
        },
        xds_port=serve.ports["grpc"],
        sds_port=sds.port,
        api_type=api_type,
    )
    try:
        stats = wait_for(lambda: settled(envoy), timeout=60, what="Envoy to apply CDS/LDS/RDS")
        assert rejected(stats) == {}, envoy.logs()
        listeners = set(envoy.listeners())
        assert {"10.96.50.2_5432", "10.96.50.2_9000", "0.0.0.0_80", "0.0.0.0_8081", "0.0.0.0_8082"} <= listeners
        assert not listeners & {"0.0.0.0_15001", "0.0.0.0_15006"}
        assert {"virtualOutbound", "virtualInbound"} <= listeners
        config = envoy.get("/config_dump?resource=dynamic_listeners")
        db = next(entry for entry in config["configs"] if entry["name"] == "10.96.50.2_5432")
        assert "outbound|5432||db-old.conflicts.svc.cluster.local" in json.dumps(db)

        # a Service added after the conflicts reaches Envoy: listeners, clusters and routes
        (serve.config_dir / "late.yaml").write_text(
            m.dump_yaml([svc("late", "10.96.50.9", NEW, [("http", 80), ("tcp-late", 7000)])])
        )
        wait_for(
            lambda: (
                "10.96.50.9_7000" in envoy.listeners()
                and "outbound|80||late.conflicts.svc.cluster.local" in envoy.clusters()
            ),
            timeout=30,
            what="the later Service's listener and cluster",
        )
        routes = wait_for(
            lambda: routes_with(envoy, "late.conflicts.svc.cluster.local:80"),
            timeout=30,
            what="the later Service's virtual host",
        )
        assert '"10.96.50.9"' in routes
        assert rejected(envoy.stats()) == {}, envoy.logs()
    finally:
        envoy.stop()

    problems = json.loads(fetch(f"{serve.http_url}/debug/registryz"))["problems"]
    assert sorted(p.split(": ")[0] for p in problems) == [
        f"Service/{NS}/db-new",
        f"Service/{NS}/odd",
        f"Service/{NS}/odd",
        f"Service/{NS}/web-new",
    ]
    metrics = fetch(serve.metrics_url)
    assert "pilot_conflict_outbound_listener_tcp_over_current_tcp 1.0" in metrics
    assert "pilot_vservice_dup_domain 1.0" in metrics
    assert "pilot_conflict_outbound_listener_reserved_port 2.0" in metrics
