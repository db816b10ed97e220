"""Real Envoy 1.40 against `meshplane serve` in local mode: SotW and Delta ADS, REDIRECT and NONE modes.

Every Envoy gets its mTLS secrets from a small SDS server, so clusters and listeners that use
ISTIO_MUTUAL really activate; the tests require zero `update_rejected` in Envoy's stats and
SYNCED for every type in meshplane's /debug/syncz. Two NONE-mode Envoys on their own loopback
addresses (LOOPBACK_ADDRESS) carry a real mTLS call from one workload to the other's application.

Pods and NONE-mode loopbacks get random 127.x.y.z addresses of their own, so the Service ports that
Envoy binds there can be fixed: no other program listens on those addresses.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import pathlib
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.agent.conftest import pick_loopback
from tests.discovery import meshdata as m
from tests.discovery.pki import MeshRoot
from tests.e2e.envoyproxy import Envoy, Identity, SdsServer, make_identity, wait_for
from tests.helpers.serve import Running, meshplane_cmd, start_serve

SERVICES = 24
NS = "alpha"
HTTP_PORT = 8000  # every HTTP service's port; TCP service i listens on 3000 + i (meshdata's default)
CLIENT_SERVICE_PORT, CLIENT_PORT = 8081, 9080  # the client service's port and target port
PLAIN_SERVICE_PORT, PLAIN_PORT = 8082, 9082  # a service whose one pod has no sidecar


@dataclass
class Mesh:
    serve: Running
    sds: SdsServer
    config_dir: pathlib.Path
    workdir: pathlib.Path
    ips: dict[str, str]  # pod name -> its address
    http_port: int = HTTP_PORT
    client_port: int = CLIENT_PORT  # the client service's target port (the workload's inbound port)
    client_service_port: int = CLIENT_SERVICE_PORT

    def syncz(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.serve.http_url}/debug/syncz", timeout=5) as resp:
            result: list[dict[str, Any]] = json.loads(resp.read())
        return result


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("envoy-xds")
    config_dir = tmp / "config"
    config_dir.mkdir()
    ips = {pod: pick_loopback() for pod in ("client-redirect", "client-none", "caller", "plain")}
    objects = m.mesh_objects(SERVICES, http_port=HTTP_PORT)
    objects += [
        m.service("client", NS, port=CLIENT_SERVICE_PORT, target=CLIENT_PORT, cluster_ip="10.96.9.9"),
        m.pod("client-redirect", ips["client-redirect"], NS, app="client", sa="client"),
        m.pod("client-none", ips["client-none"], NS, app="client", sa="client"),
        m.endpoint_slice("client", NS, ips=[ips["client-none"]], port=CLIENT_PORT),
        m.pod("caller", ips["caller"], NS, app="caller", sa="caller"),
        m.service("plain", NS, port=PLAIN_SERVICE_PORT, target=PLAIN_PORT, cluster_ip="10.96.9.10"),
        m.pod("plain", ips["plain"], NS, app="plain", sa="plain", sidecar=False),
        m.endpoint_slice("plain", NS, ips=[ips["plain"]], port=PLAIN_PORT),
    ]
    (config_dir / "mesh.yaml").write_text(m.dump_yaml(objects))
    serve = start_serve(
        tmp, "--config-dir", str(config_dir), env={"PILOT_DEBOUNCE_AFTER": "0s", "PILOT_DEBOUNCE_MAX": "0s"}
    )
    sds = SdsServer(make_identity(f"spiffe://cluster.local/ns/{NS}/sa/client")).start()
    try:
        yield Mesh(serve, sds, config_dir, tmp, ips)
    finally:
        sds.stop()
        serve.stop()


def start_envoy(
    mesh: Mesh,
    *,
    api_type: str,
    mode: str,
    pod: str = "",
    service_account: str = "client",
    loopback: str = "",
    sds: SdsServer | None = None,
) -> Envoy:
    """An Envoy for pod `pod` of the mesh (default: the client pod of `mode`)."""
    pod = pod or ("client-redirect" if mode == "REDIRECT" else "client-none")
    ip = mesh.ips[pod]
    metadata = {
        "NAMESPACE": NS,
        "SERVICE_ACCOUNT": service_account,
        "ISTIO_VERSION": "1.40.0",
        "CLUSTER_ID": "Kubernetes",
        "INTERCEPTION_MODE": mode,
    }
    if loopback:
        metadata["LOOPBACK_ADDRESS"] = loopback
    return Envoy.start(
        mesh.workdir,
        name=f"{api_type}-{mode}-{pod}-{loopback}".lower(),
        node_id=f"sidecar~{ip}~{pod}.{NS}~{NS}.svc.cluster.local",
        metadata=metadata,
        xds_port=mesh.serve.ports["grpc"],
        sds_port=(sds or mesh.sds).port,
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
    loopback = pick_loopback() if mode == "NONE" else ""  # NONE mode binds outbound listeners there
    envoy = start_envoy(mesh, api_type=api_type, mode=mode, loopback=loopback)
    try:
        stats = wait_for(lambda: settled(envoy), timeout=60, what="Envoy to apply CDS/LDS/RDS")
        assert rejected(stats) == {}, envoy.logs()
        clusters = envoy.clusters()
        assert len([c for c in clusters if c.startswith("outbound|")]) == SERVICES + 2  # and client, plain
        assert {"BlackHoleCluster", "PassthroughCluster", "InboundPassthroughCluster"} <= set(clusters)
        assert f"inbound|{mesh.client_port}||" in clusters
        http_cluster = f"outbound|{mesh.http_port}||svc-0.alpha.svc.cluster.local"
        assert len(clusters[http_cluster]) == 2  # EDS arrived
        listeners = envoy.listeners()
        if mode == "REDIRECT":
            assert {"virtualOutbound", "virtualInbound", f"0.0.0.0_{mesh.http_port}"} <= set(listeners)
        else:
            assert f"{loopback}_{mesh.http_port}" in listeners
            assert f"{mesh.ips['client-none']}_{mesh.client_port}" in listeners
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
        before = {c: eps for c, eps in envoy.clusters().items() if c.startswith("outbound|") and eps}
        assert before, "the mesh has outbound clusters with endpoints"
        extra.write_text(m.dump_yaml([m.service(name, NS, port=mesh.http_port, cluster_ip=None)]))
        wait_for(lambda: cluster in envoy.clusters(), timeout=30, what="the new service's cluster")
        # Only the new cluster's assignment was sent: Envoy keeps every other one it had.
        kept = envoy.clusters()
        assert {c: kept.get(c) for c in before} == before

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


def route_configs(envoy: Envoy) -> dict[str, list[str]]:
    """Envoy's dynamic route configurations: name -> virtual host names."""
    dump = envoy.get("/config_dump?resource=dynamic_route_configs")
    return {
        c["route_config"]["name"]: sorted(v["name"] for v in c["route_config"].get("virtual_hosts", []))
        for c in dump.get("configs", [])
    }


def test_a_new_http_port_reaches_envoy_without_disturbing_the_other_routes(mesh: Mesh) -> None:
    # State of the World: Envoy subscribes RDS to the new port's route configuration; the answer
    # carries that one alone, and Envoy must keep every route configuration it had.
    envoy = start_envoy(mesh, api_type="GRPC", mode="REDIRECT")
    extra = mesh.config_dir / "late-port.yaml"
    port = 8123
    try:
        wait_for(lambda: settled(envoy), timeout=60, what="Envoy to settle")
        before = route_configs(envoy)
        assert before.get(str(mesh.http_port)), "the mesh's HTTP port has a route configuration"
        extra.write_text(m.dump_yaml([m.service("late-port", NS, port=port, cluster_ip=None)]))
        wait_for(lambda: str(port) in route_configs(envoy), timeout=30, what=f"route configuration {port} in Envoy")
        after = route_configs(envoy)
        assert {name: after.get(name) for name in before} == before
        assert f"late-port.{NS}.svc.cluster.local:{port}" in after[str(port)]
        assert f"0.0.0.0_{port}" in envoy.listeners()
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
        assert len(registry["services"]) == SERVICES + 2  # and client, plain
        assert registry["problems"] == []
    finally:
        envoy.stop()


class XfccEcho(http.server.ThreadingHTTPServer):
    """An application that answers every GET with the `x-forwarded-client-cert` header it received."""

    def __init__(self, address: str, port: int) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (self.headers.get("x-forwarded-client-cert") or "<none>").encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        super().__init__((address, port), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(10)


def http_get(url: str, *, host: str, forged_xfcc: str) -> str:
    request = urllib.request.Request(url, headers={"Host": host, "x-forwarded-client-cert": forged_xfcc})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return str(resp.read().decode())


def call_service(loopback: str, service: str, port: int, *, forged_xfcc: str, what: str) -> str:
    """GET / on `service`'s port through the caller's Envoy on `loopback` (retried for up to 30 s): the body."""
    return wait_for(
        lambda: http_get(
            f"http://{loopback}:{port}/", host=f"{service}.{NS}.svc.cluster.local:{port}", forged_xfcc=forged_xfcc
        ),
        timeout=30,
        what=what,
    )


def test_none_mode_on_own_loopback_addresses_carries_mtls_and_the_callers_identity(mesh: Mesh) -> None:
    root = MeshRoot()
    identities = {}
    for sa in ("client", "caller"):
        leaf = root.issue(f"spiffe://cluster.local/ns/{NS}/sa/{sa}")
        identities[sa] = Identity(root_pem=root.pem, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem)
    with contextlib.ExitStack() as cleanup:
        server_sds = SdsServer(identities["client"]).start()
        cleanup.callback(server_sds.stop)
        caller_sds = SdsServer(identities["caller"]).start()
        cleanup.callback(caller_sds.stop)
        server_loopback, caller_loopback = pick_loopback(), pick_loopback()
        app = XfccEcho(server_loopback, mesh.client_port)  # the server pod's application, on its own loopback
        cleanup.callback(app.stop)
        server = start_envoy(mesh, api_type="GRPC", mode="NONE", loopback=server_loopback, sds=server_sds)
        cleanup.callback(server.stop)
        caller = start_envoy(
            mesh,
            api_type="DELTA_GRPC",
            mode="NONE",
            pod="caller",
            service_account="caller",
            loopback=caller_loopback,
            sds=caller_sds,
        )
        cleanup.callback(caller.stop)
        envoys = [server, caller]
        for envoy in envoys:
            stats = wait_for(lambda envoy=envoy: settled(envoy), timeout=60, what="Envoy to apply CDS/LDS/RDS")
            assert rejected(stats) == {}, envoy.logs()
        server_listeners = set(server.listeners())
        server_ip = mesh.ips["client-none"]
        assert {f"{server_ip}_{mesh.client_port}", f"{server_loopback}_{mesh.http_port}"} <= server_listeners
        assert not any(name.startswith("127.0.0.1_") for name in server_listeners)  # not the default loopback
        assert f"{caller_loopback}_{mesh.client_service_port}" in caller.listeners()

        # caller app -> caller Envoy (its loopback) -> mTLS -> server Envoy (the server pod's IP) -> app (the
        # server's loopback).
        # The caller's outbound drops the header its application made up; the server's inbound sets the real one.
        xfcc = call_service(
            caller_loopback,
            "client",
            mesh.client_service_port,
            forged_xfcc="By=spiffe://evil;URI=spiffe://cluster.local/ns/kube-system/sa/admin",
            what="a call through both Envoys",
        )
        assert xfcc.split(";")[0] == f"By=spiffe://cluster.local/ns/{NS}/sa/client", xfcc
        assert f"URI=spiffe://cluster.local/ns/{NS}/sa/caller" in xfcc.split(";"), xfcc
        assert "evil" not in xfcc and "kube-system" not in xfcc, xfcc
        for envoy in envoys:
            assert rejected(envoy.stats()) == {}, envoy.logs()


def test_a_sidecar_reaches_a_pod_without_one_in_plaintext(mesh: Mesh) -> None:
    """Auto mTLS: the cluster's one transport socket match is for endpoints with a sidecar; the pod without
    one matches nothing and gets Envoy's default transport socket, plaintext, as Istio's explicit
    `tlsMode-disabled` match would give it."""
    caller_loopback = pick_loopback()
    with contextlib.ExitStack() as cleanup:
        app = XfccEcho(mesh.ips["plain"], PLAIN_PORT)  # the pod's application itself, no Envoy before it
        cleanup.callback(app.stop)
        caller = start_envoy(
            mesh, api_type="GRPC", mode="NONE", pod="caller", service_account="caller", loopback=caller_loopback
        )
        cleanup.callback(caller.stop)
        assert rejected(wait_for(lambda: settled(caller), timeout=60, what="Envoy to apply CDS/LDS/RDS")) == {}
        answer = call_service(
            caller_loopback,
            "plain",
            PLAIN_SERVICE_PORT,
            forged_xfcc="By=spiffe://evil",
            what="a call to the pod without a sidecar",
        )
        assert answer == "<none>"  # no client certificate to forward, and the caller's made-up header dropped
        cluster = f"cluster.outbound|{PLAIN_SERVICE_PORT}||plain.{NS}.svc.cluster.local"
        stats = caller.stats()
        assert stats[f"{cluster}.upstream_cx_total"] >= 1
        assert stats.get(f"{cluster}.ssl.handshake", 0) == 0 and stats.get(f"{cluster}.ssl.connection_error", 0) == 0
        assert rejected(stats) == {}, caller.logs()


def test_config_dump_needs_a_connected_proxy(mesh: Mesh) -> None:
    for query, status in (("", 400), ("?proxyID=ghost.alpha", 404)):
        with pytest.raises(urllib.error.HTTPError) as caught:
            get_json(f"{mesh.serve.http_url}/debug/config_dump{query}")
        assert caught.value.code == status


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())
