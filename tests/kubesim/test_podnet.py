"""The node network: pods routed by a node namespace, reachable from the host and each other."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pathlib
import secrets
import sys
from collections.abc import AsyncIterator

import pytest

from tests.kubesim.peerecho import ask_from, echo_server
from tests.kubesim.podnet import NodeNetwork, run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and veths")


@pytest.fixture
async def network() -> AsyncIterator[NodeNetwork]:
    net = await NodeNetwork.create()
    try:
        yield net
    finally:
        await net.close()


async def _netns() -> str:
    name = f"ksim-t-{secrets.token_hex(3)}"
    await run("ip", "netns", "add", name)
    return name


async def _links() -> str:
    return await run("ip", "-o", "link", "show")


async def test_pods_reach_each_other_and_the_host_and_everything_goes_at_close() -> None:
    net = await NodeNetwork.create()
    a, b = await _netns(), await _netns()
    server = None
    try:
        ip_a = await net.add_pod(netns=a)
        ip_b = await net.add_pod(netns=b)
        assert ip_a != ip_b
        assert {ipaddress.IPv4Address(ip_a), ipaddress.IPv4Address(ip_b)} <= set(net.cidr.hosts())
        # a TCP server in pod b, reached from pod a and from the host
        server = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", b, sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "18080",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(100):
            if "200" in await run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ip_b}:18080/",
                                  check=False):  # fmt: skip
                break
            await asyncio.sleep(0.1)
        code = await run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ip_b}:18080/", netns=a)
        assert code == "200"

        # the pod reaches the host's address on the node link (where the API server listens)
        async def hello(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.0 204 No Content\r\n\r\n")
            await writer.drain()
            writer.close()

        host_server = await asyncio.start_server(hello, net.host_ip, 0)
        port = host_server.sockets[0].getsockname()[1]
        try:
            code = await run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{net.host_ip}:{port}/",
                             netns=a)  # fmt: skip
        finally:
            host_server.close()
        assert code == "204"
        await net.remove_pod(netns=b)
        assert ip_b not in net.pod_ips().values()
    finally:
        if server is not None:
            server.kill()
            await server.wait()
        for name in (a, b):
            await run("ip", "netns", "del", name, check=False)
        await net.close()
    assert net.node_netns not in await run("ip", "netns", "list")
    assert net.host_link not in await _links()
    assert str(net.cidr) not in await run("ip", "route", "show")


async def test_two_networks_coexist(network: NodeNetwork) -> None:
    other = await NodeNetwork.create()
    try:
        assert not other.cidr.overlaps(network.cidr)
        assert other.node_netns != network.node_netns
    finally:
        await other.close()


async def test_the_gateway_keeps_its_address_as_pods_come_and_go(network: NodeNetwork) -> None:
    """A bridge takes its lowest port's MAC unless set; pods that cached the gateway's would lose replies."""

    async def bridge_mac() -> str:
        return (await run("cat", "/sys/class/net/br0/address", netns=network.node_netns)).strip()

    before = await bridge_mac()
    pod = await _netns()
    try:
        await network.add_pod(netns=pod)
        for link in (await run("ip", "-o", "link", "show", "master", "br0", netns=network.node_netns)).splitlines():
            port = link.split(":")[1].strip().split("@")[0]
            await run("ip", "link", "set", port, "address", "00:00:00:00:00:01", netns=network.node_netns)
        assert await bridge_mac() == before
    finally:
        await network.remove_pod(netns=pod)
        await run("ip", "netns", "del", pod, check=False)


HOST_SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/send_redirects",
    "net/ipv4/conf/default/send_redirects",
    "net/bridge/bridge-nf-call-iptables",
)


def _host_sysctls() -> dict[str, str]:
    found = {}
    for name in HOST_SYSCTLS:
        path = pathlib.Path("/proc/sys", name)
        if path.exists():
            found[name] = path.read_text().strip()
    return found


async def _sysctl(name: str, *, netns: str) -> str:
    return (await run("sysctl", "-n", name, netns=netns)).strip()


async def test_a_pod_has_a_32_and_routes_through_the_gateway_and_the_node_sends_no_redirects() -> None:
    host_before = _host_sysctls()
    net = await NodeNetwork.create()
    pod = await _netns()
    try:
        ip = await net.add_pod(netns=pod)
        (eth0,) = json.loads(await run("ip", "-j", "-4", "addr", "show", "dev", "eth0", netns=pod))
        assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"]] == [(ip, 32)]
        routes = json.loads(await run("ip", "-j", "-4", "route", "show", netns=pod))
        assert {(r["dst"], r.get("gateway"), r["dev"], r.get("scope")) for r in routes} == {
            ("default", net.gateway, "eth0", None),
            (net.gateway, None, "eth0", "link"),
        }
        assert len(routes) == 2, routes
        other_pod = str(net.cidr.network_address + 200)
        (route,) = json.loads(await run("ip", "-j", "route", "get", other_pod, netns=pod))
        assert route.get("gateway") == net.gateway, route  # another pod is reached through the node
        node = net.node_netns
        for conf in ("all", "default", "br0"):
            assert await _sysctl(f"net.ipv4.conf.{conf}.send_redirects", netns=node) == "0", conf
        assert await _sysctl("net.ipv4.ip_forward", netns=node) == "1"
        if "net/bridge/bridge-nf-call-iptables" in host_before:  # br_netfilter loaded: off in the node only
            assert await _sysctl("net.bridge.bridge-nf-call-iptables", netns=node) == "0"
        assert _host_sysctls() == host_before
    finally:
        await net.remove_pod(netns=pod)
        await run("ip", "netns", "del", pod, check=False)
        await net.close()
    assert _host_sysctls() == host_before


async def test_bridge_netfilter_turned_on_after_the_node_was_made_is_off_again_when_a_pod_attaches(
    network: NodeNetwork,
) -> None:
    """Loading br_netfilter (another program may, at any time) turns its switches on in every namespace."""
    if "net/bridge/bridge-nf-call-iptables" not in _host_sysctls():
        pytest.skip("this kernel has no br_netfilter, so nothing can turn it on")
    node = network.node_netns
    await run("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1", netns=node)  # as a late load leaves it
    pod = await _netns()
    try:
        await network.add_pod(netns=pod)
        assert await _sysctl("net.bridge.bridge-nf-call-iptables", netns=node) == "0"
    finally:
        await network.remove_pod(netns=pod)
        await run("ip", "netns", "del", pod, check=False)


async def test_a_pod_calling_another_pod_is_routed_by_the_node_and_seen_from_its_own_ip(network: NodeNetwork) -> None:
    client, server = await _netns(), await _netns()
    try:
        client_ip = await network.add_pod(netns=client)
        server_ip = await network.add_pod(netns=server)
        async with echo_server(server) as port:
            assert await ask_from(client, server_ip, port) == client_ip
            assert await ask_from(None, server_ip, port) == network.host_ip  # the host, through its route
        # the client sent everything to the gateway's MAC; it never looked up the server's
        neighbours = json.loads(await run("ip", "-j", "-4", "neigh", "show", "dev", "eth0", netns=client))
        assert {n["dst"] for n in neighbours} == {network.gateway}
    finally:
        for name in (client, server):
            await network.remove_pod(netns=name)
            await run("ip", "netns", "del", name, check=False)
