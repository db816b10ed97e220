"""The one-machine cluster's network: a node namespace that routes every pod packet, pods on a bridge by veth.

Layout (root only; the host's sysctls and iptables are never changed):

    host namespace                 node namespace `ksim-node-<rand>`            pod namespaces
    kh<rand> host_ip/30  <--veth-->  kn<rand> node_ip/30
    route pod CIDR via node_ip       br0 gateway/24               <--veth-->  eth0 pod IP/32
                                     net.ipv4.ip_forward=1                    route gateway dev eth0 scope link
                                     net.ipv4.conf.{all,default,br0}          route default via gateway
                                       .send_redirects=0
                                     net.bridge.bridge-nf-call-*=0
                                       (where the kernel has br_netfilter;
                                       set again at each pod's attach)
                                     (sysctls of this namespace only)

A pod holds its address as a /32 and has one neighbour, the gateway, so every packet it sends, also one
to another pod on the same bridge, goes to the gateway's MAC and is routed by the node namespace: the
bridge joins the node to its pods and carries no IP packet from one pod to another. That is what makes
cluster IPs behave as on a real cluster. Conntrack in the node namespace, where kube-proxy's rules
(`tests.kubesim.kubeproxy`) live, sees both directions of every connection, so a Service endpoint's
reply is un-DNATed although client and server share the bridge, and kube-proxy need not masquerade pod
traffic: a server sees the calling pod's IP.

Two settings keep every packet on that path. The node routes a packet back out the interface it came in
on (br0), so it sends no ICMP redirects: they would teach a pod to send to another pod directly, past the
node's conntrack and iptables. And br_netfilter, on hosts that load it, is off in the node namespace:
it would hand a packet DNATed to a pod on the same bridge to that pod's bridge port directly ("bridged
DNAT") instead of routing it, so kubesim would behave differently from host to host (a pod reaching
itself through its Service, for one, would then need hairpin mode on its port).

Pods reach the host through the node (which forwards); from the host, pod IPs are reachable through the
route, so the API server can call webhooks and the kubelet can probe pods as on a real node.

Two /24s are taken from 10.240.0.0/12, picked at random among those no host route overlaps: the first
is the pod CIDR, the second holds the host<->node link. Several clusters can run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import secrets
from collections.abc import Sequence

log = logging.getLogger(__name__)

POOL = ipaddress.IPv4Network("10.240.0.0/12")
BRIDGE = "br0"
# br_netfilter off in the node namespace (module docstring). The keys exist only where it is loaded (hence
# `sysctl -e`) and, in a namespace other than the host's, only since Linux 5.3, which made them per namespace.
# Loading the module turns them on in every namespace, so they are set again each time a pod is attached.
BRIDGE_NETFILTER_OFF = tuple(f"net.bridge.bridge-nf-call-{table}=0" for table in ("iptables", "ip6tables", "arptables"))


class NetworkError(RuntimeError):
    """An `ip` command failed; the message holds the command and its stderr."""


async def run(*argv: str, netns: str | None = None, check: bool = True) -> str:
    """Run a command (inside `netns` when given) and return its stdout; NetworkError when it fails."""
    full = ("ip", "netns", "exec", netns, *argv) if netns else argv
    proc = await asyncio.create_subprocess_exec(
        *full, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(full)}: exit {proc.returncode}: {err.decode(errors='replace').strip()}")
    return out.decode()


async def _host_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(await run("ip", "-j", "-4", "route", "show", "table", "all") or "[]")
    nets = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


async def _pick_block() -> ipaddress.IPv4Network:
    """A free /23 of POOL: no host route overlaps it."""
    taken = await _host_networks()
    blocks = list(POOL.subnets(new_prefix=23))
    random.shuffle(blocks)
    for block in blocks:
        if not any(block.overlaps(net) for net in taken if net.prefixlen > 0):
            return block
    raise NetworkError(f"no free /23 left in {POOL} for a pod network")


def _no_redirects(*confs: str) -> list[str]:
    """sysctl settings that stop sending ICMP redirects on `confs` (`all`, `default` or interface names)."""
    return [f"net.ipv4.conf.{conf}.send_redirects=0" for conf in confs]


class NodeNetwork:
    """See the module docstring. Build with `await NodeNetwork.create()`; `close()` removes everything."""

    def __init__(self, *, block: ipaddress.IPv4Network, suffix: str) -> None:
        pods, link = block.subnets(new_prefix=24)
        self.cidr = pods
        self.gateway = str(pods.network_address + 1)
        link_hosts = list(ipaddress.IPv4Network(f"{link.network_address}/30").hosts())
        self.host_ip = str(link_hosts[0])
        self.node_ip = str(link_hosts[1])
        self.node_netns = f"ksim-node-{suffix}"
        self.host_link = f"kh{suffix}"
        self._node_link = f"kn{suffix}"
        self._free = [str(ip) for ip in list(pods.hosts())[1:]]
        self._pods: dict[str, tuple[str, str]] = {}  # pod netns -> (node-side veth, pod IP)
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def create(cls) -> NodeNetwork:
        network = cls(block=await _pick_block(), suffix=secrets.token_hex(3))
        try:
            await network._setup()
        except BaseException:
            await network.close()
            raise
        log.info("pod network %s on %s (host %s)", network.cidr, network.node_netns, network.host_ip)
        return network

    async def _setup(self) -> None:
        node = self.node_netns
        await run("ip", "netns", "add", node)
        await run("ip", "link", "set", "lo", "up", netns=node)
        await run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", netns=node)
        # the node routes packets between pods back out br0; redirects would send pods past it (docstring)
        await run("sysctl", "-q", "-w", *_no_redirects("all", "default"), netns=node)
        await run("sysctl", "-q", "-e", "-w", *BRIDGE_NETFILTER_OFF, netns=node)
        await run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self._node_link, "netns", node)
        await run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_link)
        await run("ip", "link", "set", self.host_link, "up")
        await run("ip", "addr", "add", f"{self.node_ip}/30", "dev", self._node_link, netns=node)
        await run("ip", "link", "set", self._node_link, "up", netns=node)
        await run("ip", "link", "add", BRIDGE, "type", "bridge", netns=node)
        # a fixed address: a bridge otherwise takes its lowest port's, which changes as pods come and go,
        # and pods that cached the gateway's old address would send their replies nowhere
        mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
        await run("ip", "link", "set", BRIDGE, "address", mac, netns=node)
        await run("ip", "addr", "add", f"{self.gateway}/{self.cidr.prefixlen}", "dev", BRIDGE, netns=node)
        await run("sysctl", "-q", "-w", *_no_redirects(BRIDGE), netns=node)
        await run("ip", "link", "set", BRIDGE, "up", netns=node)
        await run("ip", "route", "add", str(self.cidr), "via", self.node_ip, "dev", self.host_link)

    async def add_pod(self, *, netns: str) -> str:
        """Attach the existing namespace `netns`: eth0 with a free pod IP/32, lo up, routes. Returns the IP.

        The pod's only routes are the on-link one to the gateway and the default via it (module docstring).
        """
        async with self._lock:
            if self._closed:
                raise NetworkError("the pod network is closed")
            if netns in self._pods:
                raise NetworkError(f"network namespace {netns} is already attached")
            if not self._free:
                raise NetworkError(f"no free address left in {self.cidr}")
            ip = self._free.pop(0)
            veth = f"kp{secrets.token_hex(4)}"
            self._pods[netns] = (veth, ip)
        try:
            await run("sysctl", "-q", "-e", "-w", *BRIDGE_NETFILTER_OFF, netns=self.node_netns)
            await run(
                *("ip", "link", "add", veth, "netns", self.node_netns),
                *("type", "veth", "peer", "name", "eth0", "netns", netns),
            )
            await run("ip", "link", "set", veth, "master", BRIDGE, "up", netns=self.node_netns)
            await run("ip", "link", "set", "lo", "up", netns=netns)
            await run("ip", "addr", "add", f"{ip}/32", "dev", "eth0", netns=netns)
            await run("ip", "link", "set", "eth0", "up", netns=netns)
            await run("ip", "route", "add", self.gateway, "dev", "eth0", "scope", "link", netns=netns)
            await run("ip", "route", "add", "default", "via", self.gateway, "dev", "eth0", netns=netns)
        except BaseException:
            await self.remove_pod(netns=netns)
            raise
        return ip

    async def remove_pod(self, *, netns: str) -> None:
        """Detach `netns` and release its IP (the veth also vanishes with the namespace); a no-op when unknown."""
        async with self._lock:
            entry = self._pods.pop(netns, None)
        if entry is None:
            return
        veth, ip = entry
        await run("ip", "link", "del", veth, netns=self.node_netns, check=False)
        self._free.append(ip)  # reused last: a recycled address meets no stale ARP or conntrack entries

    def pod_ips(self) -> dict[str, str]:
        """Attached namespaces and their IPs."""
        return {netns: ip for netns, (_, ip) in self._pods.items()}

    async def close(self) -> None:
        """Remove the host link (and its route), the node namespace with the bridge and every pod veth."""
        self._closed = True
        await run("ip", "link", "del", self.host_link, check=False)
        await run("ip", "netns", "del", self.node_netns, check=False)
        self._pods.clear()


async def exec_in(netns: str, argv: Sequence[str], *, check: bool = True) -> str:
    """Run `argv` inside a pod's network namespace (its /etc/netns/<netns>/hosts applies); returns stdout."""
    return await run(*argv, netns=netns, check=check)
