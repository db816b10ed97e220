"""The node network: pods on a bridge in a node namespace, reachable from the host and each other."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import sys
from collections.abc import AsyncIterator

import pytest

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
