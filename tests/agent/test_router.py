"""A gateway pod's agent (`meshplane agent proxy router`) against a real `meshplane serve`, with a real Envoy.

The router gets the mesh's outbound clusters and their endpoints and no listeners (no Gateway config
exists yet): its Envoy still becomes ready, rejects nothing, and the control plane counts it in sync.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.agent.conftest import pick_loopback
from tests.agent.test_agent_process import Agent, Workload, envoy_pid, get
from tests.certs.test_e2e_serve import token
from tests.discovery import meshdata as m
from tests.e2e.envoyproxy import wait_for
from tests.helpers.serve import Running, meshplane_cmd, start_serve

GATEWAY_NS = "istio-system"
APP_NS = "shop"
PORT = 9080
WEB = f"outbound|{PORT}||web.{APP_NS}.svc.cluster.local"
API = f"outbound|{PORT}||api.{APP_NS}.svc.cluster.local"
WEB_IP = "10.44.0.7"
API_IP = "10.44.0.8"


@pytest.fixture
def workdir() -> Iterator[pathlib.Path]:
    path = pathlib.Path(tempfile.mkdtemp(prefix="mp-router-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(tmp_path: pathlib.Path) -> Iterator[Running]:
    config = tmp_path / "config"
    config.mkdir()
    objects = [
        m.namespace(APP_NS),
        m.service("web", APP_NS, port=PORT, target=PORT, cluster_ip="10.96.44.1"),
        m.endpoint_slice("web", APP_NS, ips=[WEB_IP], port=PORT),
        m.pod("web-1", WEB_IP, APP_NS, app="web", sa="web"),
    ]
    (config / "mesh.yaml").write_text(m.dump_yaml(objects))
    running = start_serve(tmp_path, "--config-dir", str(config), env={"PILOT_DEBOUNCE_AFTER": "0s"})
    try:
        yield running
    finally:
        running.stop()


def start_router(running: Running, workdir: pathlib.Path) -> Agent:
    gateway = Workload("istio-ingressgateway", pick_loopback(), pick_loopback())
    (workdir / "token").write_text(
        token(running, "--namespace", GATEWAY_NS, "--service-account", "istio-ingressgateway-service-account")
    )
    (workdir / "labels").write_text('app="istio-ingressgateway"\nistio="ingressgateway"\n')
    log = workdir / "agent.log"
    cmd = [
        *meshplane_cmd(), "agent", "proxy", "router",
        "--domain", f"{GATEWAY_NS}.svc.cluster.local",
        "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info",
        "--pod-name", "istio-ingressgateway-1", "--pod-namespace", GATEWAY_NS, "--instance-ip", gateway.ip,
        "--service-account", "istio-ingressgateway-service-account",
        "--discovery-address", running.addr("secure-grpc"), "--istiod-san", "istiod.istio-system.svc",
        "--token-file", str(workdir / "token"), "--root-cert", str(running.root_cert),
        "--labels-file", str(workdir / "labels"), "--proxy-dir", str(workdir / "proxy"),
        "--sds-socket", str(workdir / "sds.sock"),
        "--loopback-address", gateway.loopback, "--bind-address", gateway.ip,
        "--cert-ttl", "1h", "--drain-duration", "2s",
    ]  # fmt: skip
    environment = {**os.environ, "ISTIO_META_INTERCEPTION_MODE": "NONE", "PROXY_CONFIG": json.dumps({"concurrency": 1})}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environment)
    return Agent(proc, log, gateway)


def admin(agent: Agent, path: str) -> Any:
    with urllib.request.urlopen(f"http://{agent.workload.loopback}:15000{path}", timeout=5) as resp:
        return json.loads(resp.read())


def clusters(agent: Agent) -> dict[str, list[str]]:
    """Envoy's active clusters and the ip:port of their hosts (Unix socket hosts, as of sds-grpc, left out)."""
    out: dict[str, list[str]] = {}
    for status in admin(agent, "/clusters?format=json").get("cluster_statuses", []):
        hosts = (h["address"].get("socket_address") for h in status.get("host_statuses", []))
        out[status["name"]] = sorted(f"{a['address']}:{a['port_value']}" for a in hosts if a)
    return out


def ready(agent: Agent) -> bool:
    if agent.proc.poll() is not None:
        raise AssertionError(f"agent exited with {agent.proc.returncode}:\n{agent.logs()}")
    return get(f"http://{agent.workload.ip}:15021/healthz/ready")[0] == 200


def sync_status(running: Running) -> dict[str, str] | None:
    with urllib.request.urlopen(f"{running.http_url}/debug/syncz", timeout=5) as resp:
        entries = json.loads(resp.read())
    entry = next((e for e in entries if e["proxy"] == f"istio-ingressgateway-1.{GATEWAY_NS}"), None)
    return {t: v["status"] for t, v in entry["types"].items()} if entry else None


def test_a_gateway_agent_gets_clusters_and_endpoints_no_listeners_and_becomes_ready(
    serve: Running, workdir: pathlib.Path
) -> None:
    agent = start_router(serve, workdir)
    envoy = None
    try:
        wait_for(lambda: ready(agent), timeout=60, what="the router's Envoy ready on 15021")
        envoy = envoy_pid(agent)
        found = wait_for(lambda: (c := clusters(agent)).get(WEB) == [f"{WEB_IP}:{PORT}"] and c, what="web's endpoint")
        assert "BlackHoleCluster" in found
        assert not [n for n in found if n.startswith("inbound|") or "Passthrough" in n], sorted(found)

        listeners = {s["name"] for s in admin(agent, "/listeners?format=json")["listener_statuses"]}
        assert listeners == {f"{agent.workload.ip}_15021", f"{agent.workload.ip}_15090"}
        dump = admin(agent, "/config_dump?resource=dynamic_listeners")
        assert dump.get("configs", []) == []
        stats = {s["name"]: s["value"] for s in admin(agent, "/stats?format=json")["stats"] if "value" in s}
        assert stats["listener_manager.lds.update_success"] >= 1 and stats["cluster_manager.cds.update_success"] >= 1
        assert {k: v for k, v in stats.items() if k.endswith("update_rejected") and v} == {}

        statuses = wait_for(
            lambda: (s := sync_status(serve)) and set(s.values()) == {"SYNCED"} and s, what="the router in sync"
        )
        assert statuses == {"CDS": "SYNCED", "EDS": "SYNCED", "LDS": "SYNCED"}  # no routes were ever asked for
        table = subprocess.run(
            [*meshplane_cmd(), "proxy-status", "--http-addr", serve.addr("http")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        (row,) = [line for line in table.splitlines() if line.startswith(f"istio-ingressgateway-1.{GATEWAY_NS} ")]
        assert re.search(r"\sSYNCED\s+SYNCED\s+SYNCED\s+NOT SENT\s", row), table  # CDS LDS EDS RDS

        assert serve.config_dir is not None
        (serve.config_dir / "api.yaml").write_text(
            m.dump_yaml(
                [
                    m.service("api", APP_NS, port=PORT, target=PORT, cluster_ip="10.96.44.2"),
                    m.endpoint_slice("api", APP_NS, ips=[API_IP], port=PORT),
                ]
            )
        )
        wait_for(lambda: clusters(agent).get(API) == [f"{API_IP}:{PORT}"], what="a new service's cluster and endpoint")
        assert admin(agent, "/config_dump?resource=dynamic_listeners").get("configs", []) == []
        assert ready(agent)
    finally:
        code = agent.stop()
    assert code == 0, agent.logs()[-3000:]
    assert envoy is not None
    assert subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, check=False).stdout.split() == []
    assert not pathlib.Path(f"/proc/{envoy}").exists(), "the router's Envoy outlived its agent"
