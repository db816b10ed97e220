"""kubesim's kube-proxy: cluster IPs reached with curl from pod network namespaces, rules checked as a table."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pathlib
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.fixtures import eventually
from tests.kubesim.kubeproxy import (
    EMPTY,
    ChainNames,
    Endpoint,
    ServicePort,
    ServiceProxy,
    build_rules,
    restore_input,
    service_ports,
)
from tests.kubesim.peerecho import ask_from, echo_server

ROOT = pathlib.Path(__file__).resolve().parents[2]
POD_CIDR = ipaddress.IPv4Network("10.244.1.0/24")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, veths and iptables")


def _service(name: str, ip: str, *ports: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name}, "spec": {"clusterIP": ip, "ports": list(ports)}}


def _slice(service: str, endpoints: list[tuple[str, bool | None]], *ports: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": f"{service}-x", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [ip], **({"conditions": {"ready": ready}} if ready is not None else {})}
            for ip, ready in endpoints
        ],
        "ports": list(ports),
    }


def test_ready_endpoints_are_matched_by_port_name_and_protocol() -> None:
    services = [
        _service("web", "10.96.0.10", {"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}),
        _service("headless", "None", {"port": 80}),
        _service("external", "", {"port": 80}),
    ]
    slices = [
        _slice(
            "web",
            [("10.244.1.2", True), ("10.244.1.3", None), ("10.244.1.4", False)],
            {"name": "http", "port": 8080},
            {"name": "dns", "port": 5353, "protocol": "UDP"},
        ),
        _slice("web", [("10.244.1.9", True)], {"name": "metrics", "port": 9090}),
    ]
    dns, http = service_ports(services, slices)
    assert (dns.protocol, dns.port, [e.port for e in dns.endpoints]) == ("UDP", 53, [5353, 5353])
    assert http.endpoints == (Endpoint(ip="10.244.1.2", port=8080), Endpoint(ip="10.244.1.3", port=8080))
    assert http.label == "ns/web:http"


def _port(name: str, cluster_ip: str, *endpoint_ips: str, port: int = 80) -> ServicePort:
    endpoints = tuple(Endpoint(ip=ip, port=8080) for ip in endpoint_ips)
    return ServicePort(
        namespace="ns", name=name, port_name="", cluster_ip=cluster_ip, port=port, protocol="TCP", endpoints=endpoints
    )


WEB = _port("web", "10.96.0.10", "10.244.1.2", "10.244.1.3", "10.244.1.4")
IDLE = _port("idle", "10.96.0.11", port=81)


def test_a_service_chain_masquerades_only_traffic_from_outside_the_pod_cidr_then_picks_an_endpoint() -> None:
    names = ChainNames("ab12")
    rules = build_rules([WEB, IDLE], names=names, pod_cidr=POD_CIDR)
    chain = names.service(WEB)
    assert rules.nat["KSIM-SERVICES-ab12"] == (
        f'-d 10.96.0.10/32 -p tcp -m tcp --dport 80 -m comment --comment "ns/web cluster IP" -j {chain}',
    )
    masquerade, *picks = rules.nat[chain]
    comment = '-m comment --comment "ns/web masquerade non-pod traffic"'
    assert masquerade == f"! -s 10.244.1.0/24 {comment} -j KSIM-MARK-MASQ-ab12"
    assert picks == [
        '-m comment --comment "ns/web -> 10.244.1.2:8080" -m statistic --mode random --probability 0.3333333333 '
        f"-j {names.endpoint(WEB, WEB.endpoints[0])}",
        '-m comment --comment "ns/web -> 10.244.1.3:8080" -m statistic --mode random --probability 0.5000000000 '
        f"-j {names.endpoint(WEB, WEB.endpoints[1])}",
        f'-m comment --comment "ns/web -> 10.244.1.4:8080" -j {names.endpoint(WEB, WEB.endpoints[2])}',
    ]
    # no rule masquerades all of the pod CIDR's traffic: a server must see the calling pod's IP
    everything = [rule for chain_rules in rules.nat.values() for rule in chain_rules]
    assert not [rule for rule in everything if rule.startswith(f"-s {POD_CIDR}")]
    assert all(len(name) <= 28 for name in rules.nat)  # iptables' limit


def test_an_endpoint_chain_masquerades_the_endpoint_reaching_itself_then_dnats() -> None:
    names = ChainNames("ab12")
    rules = build_rules([WEB], names=names, pod_cidr=POD_CIDR)
    endpoint_chains = {names.endpoint(WEB, endpoint): endpoint for endpoint in WEB.endpoints}
    assert len(endpoint_chains) == 3
    own = {"KSIM-SERVICES-ab12", "KSIM-MARK-MASQ-ab12", "KSIM-POSTROUTING-ab12", names.service(WEB)}
    assert set(rules.nat) == own | set(endpoint_chains)
    for chain, endpoint in endpoint_chains.items():
        assert chain.startswith("KSIM-SEP-") and chain.endswith("-ab12") and len(chain) <= 28, chain
        assert rules.nat[chain] == (
            f'-s {endpoint.ip}/32 -m comment --comment "ns/web hairpin" -j KSIM-MARK-MASQ-ab12',
            f'-m comment --comment "ns/web -> {endpoint.ip}:8080" -p tcp -j DNAT --to-destination {endpoint.ip}:8080',
        )
    assert names.endpoint(WEB, WEB.endpoints[0]) != ChainNames("cd34").endpoint(WEB, WEB.endpoints[0])


def test_a_port_without_endpoints_is_rejected_and_has_no_chains() -> None:
    names = ChainNames("ab12")
    rules = build_rules([IDLE], names=names, pod_cidr=POD_CIDR)
    assert rules.filter["KSIM-SERVICES-ab12"] == (
        '-d 10.96.0.11/32 -p tcp -m tcp --dport 81 -m comment --comment "ns/idle has no endpoints" '
        "-j REJECT --reject-with icmp-port-unreachable",
    )
    assert rules.nat["KSIM-SERVICES-ab12"] == ()
    assert not [chain for chain in rules.nat if chain.startswith(("KSIM-SVC-", "KSIM-SEP-"))]


def test_stale_service_and_endpoint_chains_are_flushed_and_deleted() -> None:
    names = ChainNames("ab12")
    rules = build_rules([WEB, IDLE], names=names, pod_cidr=POD_CIDR)
    gone, *kept = (names.endpoint(WEB, endpoint) for endpoint in WEB.endpoints)
    fewer = build_rules([_port("web", "10.96.0.10", "10.244.1.3", "10.244.1.4"), IDLE], names=names, pod_cidr=POD_CIDR)
    text = restore_input(fewer, previous=rules, names=names)
    assert f":{gone} - [0:0]" in text and f"-X {gone}" in text
    assert all(f":{chain} - [0:0]" in text and f"-X {chain}" not in text for chain in kept)
    after = build_rules([IDLE], names=names, pod_cidr=POD_CIDR)
    text = restore_input(after, previous=fewer, names=names)
    stale = [names.service(WEB), *kept]
    assert all(f"-X {chain}" in text for chain in stale), text
    # the stale service chain jumps to the stale endpoint chains: all are declared (flushed) before any goes
    lines = text.splitlines()
    first_deletion = min(i for i, line in enumerate(lines) if line.startswith("-X"))
    assert all(lines.index(f":{chain} - [0:0]") < first_deletion for chain in stale)
    removal = restore_input(EMPTY, previous=after, names=names, hooks="remove")
    assert "-D PREROUTING -m comment --comment kubesim-service-portals -j KSIM-SERVICES-ab12" in removal
    assert "-X KSIM-SERVICES-ab12" in removal and "-X KSIM-POSTROUTING-ab12" in removal


# -- on a real node network (root) ----------------------------------------------------------------------


async def _run(*argv: str, netns: str | None = None) -> tuple[int, str, str]:
    full = ("ip", "netns", "exec", netns, *argv) if netns else argv
    proc = await asyncio.create_subprocess_exec(
        *full, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    return proc.returncode or 0, out.decode(), err.decode()


Pod = Callable[[], Awaitable[tuple[str, str]]]
App = Callable[..., Awaitable[int]]


@pytest.fixture(name="network")
async def network_fixture() -> AsyncIterator[Any]:
    from tests.kubesim.podnet import NodeNetwork

    network = await NodeNetwork.create()
    try:
        yield network
    finally:
        await network.close()


@pytest.fixture(name="pod")
async def pod_fixture(network: Any) -> AsyncIterator[Pod]:
    """Makes pod network namespaces on the node network; returns (netns, IP)."""
    made: list[str] = []

    async def make() -> tuple[str, str]:
        netns = f"ksim-tpod-{secrets.token_hex(3)}"
        rc, _, err = await _run("ip", "netns", "add", netns)
        assert rc == 0, err
        made.append(netns)
        ip = await network.add_pod(netns=netns)
        return netns, ip

    try:
        yield make
    finally:
        for netns in made:
            await network.remove_pod(netns=netns)
            await _run("ip", "netns", "del", netns)


@pytest.fixture(name="app")
async def app_fixture() -> AsyncIterator[App]:
    """Starts stand-in apps (in a pod namespace, or on the host when netns is None); returns the port."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(*, name: str, netns: str | None = None, port: int = 8080) -> int:
        prefix = ("ip", "netns", "exec", netns) if netns else ()
        argv = (*prefix, sys.executable, "-m", "tests.kubesim.standin", "--http", str(port), "--name", name)
        proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        procs.append(proc)
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        assert "serving http on" in line, line
        return int(line.rsplit(":", 1)[1])

    try:
        yield start
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


@pytest.fixture(name="proxy")
async def proxy_fixture(kubeconfig: pathlib.Path, network: Any) -> AsyncIterator[ServiceProxy]:
    proxy = ServiceProxy(kubeconfig=kubeconfig, network=network)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def _create_service(api: KubeApi, name: str, *, port: int = 80, target: int = 8080) -> str:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": target}]},
    }
    created = await api.request("POST", "/api/v1/namespaces/default/services", body=body)
    return str(created["spec"]["clusterIP"])


async def _put_slice(
    api: KubeApi, service: str, endpoints: list[tuple[str, bool]], *, port: int = 8080, port_name: str = "http"
) -> None:
    body: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": service, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints],
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }
    path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    try:
        current = await api.request("GET", f"{path}/{service}")
    except KubeApiError as exc:
        assert exc.status == 404, exc
        await api.request("POST", path, body=body)
        return
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    await api.request("PUT", f"{path}/{service}", body=body)


async def _curl(netns: str, url: str) -> tuple[int, str, str]:
    return await _run("curl", "-sS", "--max-time", "5", url, netns=netns)


async def _answered_by(netns: str, url: str) -> str | None:
    rc, out, _ = await _curl(netns, url)
    return str(json.loads(out)["name"]) if rc == 0 else None


@needs_root
async def test_cluster_ip_reaches_ready_endpoints_and_follows_changes(
    proxy: ServiceProxy, kube_api: KubeApi, pod: Pod, app: App
) -> None:
    client, _ = await pod()
    (a_ns, a_ip), (b_ns, b_ip) = await pod(), await pod()
    await app(name="a", netns=a_ns)
    await app(name="b", netns=b_ns)
    ip = await _create_service(kube_api, "web")
    await _put_slice(kube_api, "web", [(a_ip, True), (b_ip, False)])
    url = f"http://{ip}:80/"
    assert await eventually(lambda: _answered_by(client, url), what="the service answering") == "a"
    await _put_slice(kube_api, "web", [(a_ip, False), (b_ip, True)])
    await eventually(lambda: _is(client, url, "b"), what="b answering alone")
    await _put_slice(kube_api, "web", [(a_ip, True), (b_ip, True)])
    seen: set[str | None] = set()

    async def both() -> bool:
        seen.add(await _answered_by(client, url))
        return {"a", "b"} <= seen

    await eventually(both, what="both endpoints answering")


async def _is(netns: str, url: str, name: str) -> bool:
    return await _answered_by(netns, url) == name


@needs_root
async def test_a_service_without_ready_endpoints_refuses_connections(
    proxy: ServiceProxy, kube_api: KubeApi, pod: Pod, app: App, network: Any
) -> None:
    client, _ = await pod()
    server_ns, server_ip = await pod()
    await app(name="a", netns=server_ns)
    ip = await _create_service(kube_api, "idle")
    await _put_slice(kube_api, "idle", [(server_ip, False)])

    async def refused() -> bool:
        rc, _, err = await _run("curl", "-v", "--max-time", "5", f"http://{ip}:80/", netns=client)
        return rc == 7 and "Connection refused" in err  # the ICMP port unreachable, as errno ECONNREFUSED

    await eventually(refused, what="connection refused")
    await _put_slice(kube_api, "idle", [(server_ip, True)])
    await eventually(lambda: _is(client, f"http://{ip}:80/", "a"), what="the endpoint answering once ready")
    await proxy.stop()
    rc, out, _ = await _run("iptables-save", netns=network.node_netns)
    assert rc == 0 and "KSIM" not in out
    _, routes, _ = await _run("ip", "route", "show", "table", "local", netns=network.node_netns)
    assert "10.96.0.0/12" not in routes


@needs_root
async def test_stop_during_a_restore_removes_every_chain_it_installed(
    proxy: ServiceProxy, kube_api: KubeApi, network: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that lands while iptables-restore runs must still know (and delete) the chains it created."""
    real_restore = proxy._restore
    restored = asyncio.Event()

    async def slow_restore(text: str) -> None:
        await real_restore(text)
        restored.set()
        await asyncio.sleep(0.5)  # the restore has been applied; its caller has not yet heard back

    monkeypatch.setattr(proxy, "_restore", slow_restore)
    await _create_service(kube_api, "busy")
    await _put_slice(kube_api, "busy", [("10.244.1.77", True)])
    await asyncio.wait_for(restored.wait(), 10)
    await proxy.stop()
    rc, out, _ = await _run("iptables-save", netns=network.node_netns)
    assert rc == 0 and "KSIM" not in out, out


@needs_root
async def test_a_pod_reaches_itself_through_its_service(
    proxy: ServiceProxy, kube_api: KubeApi, pod: Pod, app: App
) -> None:
    netns, pod_ip = await pod()
    await app(name="self", netns=netns)
    ip = await _create_service(kube_api, "hairpin")
    await _put_slice(kube_api, "hairpin", [(pod_ip, True)])
    assert await eventually(lambda: _is(netns, f"http://{ip}:80/", "self"), what="the pod reaching itself")


@needs_root
async def test_pods_reach_the_host_through_the_kubernetes_service(
    proxy: ServiceProxy, kube_api: KubeApi, pod: Pod, app: App, network: Any
) -> None:
    client, _ = await pod()
    port = await app(name="apiserver", port=0)
    await _put_slice(kube_api, "kubernetes", [(network.host_ip, True)], port=port, port_name="https")
    assert await eventually(lambda: _is(client, "http://10.96.0.1:443/", "apiserver"))


@needs_root
async def test_a_server_behind_a_service_sees_the_calling_pods_own_ip(
    proxy: ServiceProxy, kube_api: KubeApi, pod: Pod, network: Any
) -> None:
    """As in a real cluster: a server limiting or logging per client address tells pods apart."""
    client, client_ip = await pod()
    other, other_ip = await pod()
    server, server_ip = await pod()
    async with echo_server(server) as port:
        ip = await _create_service(kube_api, "whoami", target=port)
        await _put_slice(kube_api, "whoami", [(server_ip, True)], port=port)
        assert await eventually(lambda: ask_from(client, ip, 80), what="the service answering") == client_ip
        assert await ask_from(other, ip, 80) == other_ip
        # the server reaching itself through its Service (hairpin) is masqueraded to the node's address
        assert await ask_from(server, ip, 80) == network.gateway


@needs_root
async def test_the_node_reaches_a_cluster_ip_masqueraded_to_its_own_address(
    proxy: ServiceProxy, kube_api: KubeApi, pod: Pod, network: Any
) -> None:
    """Traffic from outside the pod CIDR is masqueraded, so its replies come back through the node."""
    server, server_ip = await pod()
    async with echo_server(server) as port:
        ip = await _create_service(kube_api, "from-node", target=port)
        await _put_slice(kube_api, "from-node", [(server_ip, True)], port=port)
        seen = await eventually(lambda: ask_from(network.node_netns, ip, 80), what="the service answering the node")
        assert seen == network.gateway


@needs_root
async def test_the_host_behind_the_kubernetes_service_sees_the_calling_pods_ip(
    proxy: ServiceProxy, kube_api: KubeApi, pod: Pod, network: Any
) -> None:
    """The API server (on the host) sees which pod calls it, as a real one does."""
    client, client_ip = await pod()
    async with echo_server(None, bind=network.host_ip) as port:
        await _put_slice(kube_api, "kubernetes", [(network.host_ip, True)], port=port, port_name="https")
        seen = await eventually(lambda: ask_from(client, "10.96.0.1", 443), what="the host answering through 10.96.0.1")
        assert seen == client_ip
