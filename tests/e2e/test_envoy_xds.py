"""Real Envoy 1.40 against `meshplane serve` in local mode: SotW and Delta ADS, REDIRECT and NONE modes.

Every Envoy gets its mTLS secrets from a small SDS server, so clusters and listeners that use
ISTIO_MUTUAL really activate; the tests require zero `update_rejected` in Envoy's stats and
SYNCED for every type in meshplane's /debug/syncz.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.discovery import meshdata as m
from tests.e2e.envoyproxy import Envoy, SdsServer, make_identity, wait_for
from tests.helpers.serve import Running, free_port, meshplane_cmd, start_serve

SERVICES = 24
NS = "alpha"


@dataclass
class Mesh:
    serve: Running
    sds: SdsServer
    config_dir: pathlib.Path
    workdir: pathlib.Path
    http_port: int
    client_port: int  # the client service's target port (the workload's inbound port)

    def syncz(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.serve.http_url}/debug/syncz", timeout=5) as resp:
            result: list[dict[str, Any]] = json.loads(resp.read())
        return result


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("envoy-xds")
    config_dir = tmp / "config"
    config_dir.mkdir()
    http_port, client_port = free_port(), free_port()
    tcp_ports = [free_port() for _ in range(SERVICES)]
    objects = m.mesh_objects(SERVICES, http_port=http_port, tcp_port=lambda i: tcp_ports[i])
    objects += [
        m.service("client", NS, port=free_port(), target=client_port, cluster_ip="10.96.9.9"),
        m.pod("client-redirect", "127.0.0.3", NS, app="client", sa="client"),
        m.pod("client-none", "127.0.0.4", NS, app="client", sa="client"),
    ]
    (config_dir / "mesh.yaml").write_text(m.dump_yaml(objects))
    serve = start_serve(
        tmp, "--config-dir", str(config_dir), env={"PILOT_DEBOUNCE_AFTER": "0s", "PILOT_DEBOUNCE_MAX": "0s"}
    )
    sds = SdsServer(make_identity(f"spiffe://cluster.local/ns/{NS}/sa/client")).start()
    try:
        yield Mesh(serve, sds, config_dir, tmp, http_port, client_port)
    finally:
        sds.stop()
        serve.stop()


def start_envoy(mesh: Mesh, *, api_type: str, mode: str) -> Envoy:
    pod, ip = ("client-redirect", "127.0.0.3") if mode == "REDIRECT" else ("client-none", "127.0.0.4")
    return Envoy.start(
        mesh.workdir,
        name=f"{api_type}-{mode}".lower(),
        node_id=f"sidecar~{ip}~{pod}.{NS}~{NS}.svc.cluster.local",
        metadata={
            "NAMESPACE": NS,
            "SERVICE_ACCOUNT": "client",
            "ISTIO_VERSION": "1.40.0",
            "CLUSTER_ID": "Kubernetes",
            "INTERCEPTION_MODE": mode,
        },
        xds_port=mesh.serve.ports["grpc"],
        sds_port=mesh.sds.port,
        api_type=api_type,
    )


def settled(envoy: Envoy) -> dict[str, int] | None:
    """Envoy's stats once CDS, LDS and every RDS have applied and nothing is warming."""
    stats = envoy.stats()
    if (
        stats.get("cluster_manager.cds.update_success", 0) < 1
        or stats.get("listener_manager.lds.update_success", 0) < 1
    ):
        return None
    if stats.get("cluster_manager.warming_clusters", 1) or stats.get("listener_manager.total_listeners_warming", 1):
        return None
    rds = [k for k in stats if k.endswith(".update_success") and ".rds." in k]
    if not rds or any(stats[k] < 1 for k in rds):
        return None
    return stats


def rejected(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if k.endswith("update_rejected") and v}


def proxy_status(mesh: Mesh, pod: str) -> dict[str, Any] | None:
    entry = next((p for p in mesh.syncz() if p["proxy"] == f"{pod}.{NS}"), None)
    if entry is None:
        return None
    return {"delta": entry["delta"], **{t: v["status"] for t, v in entry["types"].items()}}


@pytest.mark.parametrize(
    ("api_type", "mode"),
    [("GRPC", "REDIRECT"), ("DELTA_GRPC", "REDIRECT"), ("GRPC", "NONE"), ("DELTA_GRPC", "NONE")],
)
def test_envoy_accepts_every_type_and_rejects_nothing(mesh: Mesh, api_type: str, mode: str) -> None:
    envoy = start_envoy(mesh, api_type=api_type, mode=mode)
    try:
        stats = wait_for(lambda: settled(envoy), timeout=60, what="Envoy to apply CDS/LDS/RDS")
        assert rejected(stats) == {}, envoy.logs()
        clusters = envoy.clusters()
        assert len([c for c in clusters if c.startswith("outbound|")]) == SERVICES + 1
        assert {"BlackHoleCluster", "PassthroughCluster", "InboundPassthroughCluster"} <= set(clusters)
        assert f"inbound|{mesh.client_port}||" in clusters
        http_cluster = f"outbound|{mesh.http_port}||svc-0.alpha.svc.cluster.local"
        assert len(clusters[http_cluster]) == 2  # EDS arrived
        listeners = envoy.listeners()
        if mode == "REDIRECT":
            assert {"virtualOutbound", "virtualInbound", f"0.0.0.0_{mesh.http_port}"} <= set(listeners)
        else:
            assert f"127.0.0.1_{mesh.http_port}" in listeners
            assert f"127.0.0.4_{mesh.client_port}" in listeners
            assert "virtualOutbound" not in listeners
        pod = "client-redirect" if mode == "REDIRECT" else "client-none"
        statuses = wait_for(
            lambda: (s := proxy_status(mesh, pod)) and {v for k, v in s.items() if k != "delta"} == {"SYNCED"} and s,
            timeout=30,
            what="meshplane to see every type ACKed",
        )
        assert statuses == {
            "delta": api_type == "DELTA_GRPC",
            "CDS": "SYNCED",
            "EDS": "SYNCED",
            "LDS": "SYNCED",
            "RDS": "SYNCED",
        }
        assert rejected(envoy.stats()) == {}, envoy.logs()
    finally:
        envoy.stop()


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_config_dir_edits_reach_envoy_clusters(mesh: Mesh, api_type: str) -> None:
    envoy = start_envoy(mesh, api_type=api_type, mode="REDIRECT")
    extra = mesh.config_dir / f"late-{api_type.lower()}.yaml"
    name = f"late-{api_type.lower().replace('_', '-')}"
    cluster = f"outbound|{mesh.http_port}||{name}.{NS}.svc.cluster.local"
    try:
        wait_for(lambda: settled(envoy), timeout=60, what="Envoy to settle")
        extra.write_text(m.dump_yaml([m.service(name, NS, port=mesh.http_port, cluster_ip=None)]))
        wait_for(lambda: cluster in envoy.clusters(), timeout=30, what="the new service's cluster")

        started = time.monotonic()
        extra.write_text(
            m.dump_yaml(
                [
                    m.service(name, NS, port=mesh.http_port, cluster_ip=None),
                    m.endpoint_slice(name, NS, ips=["10.77.0.1", "10.77.0.2"]),
                ]
            )
        )
        wait_for(
            lambda: envoy.clusters().get(cluster) == ["10.77.0.1:8080", "10.77.0.2:8080"],
            timeout=30,
            what="added endpoints in Envoy's /clusters",
        )
        added = time.monotonic() - started

        started = time.monotonic()
        extra.write_text(
            m.dump_yaml(
                [
                    m.service(name, NS, port=mesh.http_port, cluster_ip=None),
                    m.endpoint_slice(name, NS, ips=["10.77.0.2"]),
                ]
            )
        )
        wait_for(lambda: envoy.clusters().get(cluster) == ["10.77.0.2:8080"], timeout=30, what="removed endpoint gone")
        removed = time.monotonic() - started

        extra.unlink()
        wait_for(lambda: cluster not in envoy.clusters(), timeout=30, what="the removed service's cluster to go")
        print(f"{api_type}: endpoint add visible after {added:.2f}s, removal after {removed:.2f}s")
        assert rejected(envoy.stats()) == {}, envoy.logs()
    finally:
        extra.unlink(missing_ok=True)
        envoy.stop()


def test_proxy_status_config_dump_and_registryz(mesh: Mesh) -> None:
    envoy = start_envoy(mesh, api_type="GRPC", mode="REDIRECT")
    try:
        wait_for(
            lambda: (s := proxy_status(mesh, "client-redirect")) and s.get("RDS") == "SYNCED",
            timeout=60,
            what="the proxy to sync",
        )
        out = subprocess.run(
            [*meshplane_cmd(), "proxy-status", "--http-addr", mesh.serve.addr("http")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        header, *lines = out.splitlines()
        assert header.split()[:6] == ["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS"]
        (row,) = [line for line in lines if line.startswith("client-redirect.alpha ")]
        assert row.split()[1:6] == ["Kubernetes", "SYNCED", "SYNCED", "SYNCED", "SYNCED"]
        assert row.endswith("4 (CDS,EDS,LDS,RDS)")

        missing = subprocess.run(
            [*meshplane_cmd(), "proxy-status", "--http-addr", mesh.serve.addr("http"), "nobody.alpha"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert missing.returncode == 1 and "'nobody.alpha' is not connected" in missing.stderr

        dump = get_json(f"{mesh.serve.http_url}/debug/config_dump?proxyID=client-redirect.alpha")
        kinds = [c["@type"].rsplit(".", 1)[-1] for c in dump["configs"]]
        assert kinds == ["ClustersConfigDump", "ListenersConfigDump", "RoutesConfigDump", "EndpointsConfigDump"]
        clusters = {c["cluster"]["name"] for c in dump["configs"][0]["dynamicActiveClusters"]}
        assert clusters == {c for c in envoy.clusters() if c not in ("xds-grpc", "sds-grpc")}

        with urllib.request.urlopen(mesh.serve.metrics_url, timeout=10) as resp:
            metrics = resp.read().decode()
        for sample in (
            'pilot_xds_pushes{type="cds"}',
            "pilot_xds_push_time_bucket",
            "pilot_debounce_time",
        ):
            assert sample in metrics, sample
        assert "\npilot_xds " in metrics  # the connected-clients gauge

        registry = get_json(f"{mesh.serve.http_url}/debug/registryz")
        assert len(registry["services"]) == SERVICES + 1
        assert registry["problems"] == []
    finally:
        envoy.stop()


def test_config_dump_needs_a_connected_proxy(mesh: Mesh) -> None:
    for query, status in (("", 400), ("?proxyID=ghost.alpha", 404)):
        with pytest.raises(urllib.error.HTTPError) as caught:
            get_json(f"{mesh.serve.http_url}/debug/config_dump{query}")
        assert caught.value.code == status


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())
