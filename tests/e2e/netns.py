"""Pods in network namespaces on kubesim's node network, for synchronous tests that run as root.

`pod_network("client", "server")` makes one namespace per pod (`mp-<pod>-<random>`) and attaches each
to a `tests.kubesim.podnet.NodeNetwork`, the network kubesim's kubelet gives its pods: a node namespace
routes every pod packet, pods hold their IP as a /32 on `eth0` with the node as their gateway, and the
host reaches the pods through a route to the pod CIDR. A process in the host namespace (the control
plane) listens on `host_ip`, which the pods reach through the node. Nothing of the host is changed
but that route and the link it goes over, both removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from tests.kubesim.podnet import NodeNetwork

PREFIX = "mp-"


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command in the host namespace; CalledProcessError (with its stderr) when `check` and it fails."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def in_ns(
    ns: str, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a command inside network namespace `ns` (never raises for its exit status)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
    )


@dataclass(frozen=True)
class Pod:
    name: str
    ns: str  # the network namespace
    ip: str


@dataclass
class PodNetwork:
    """Pods on a node network. Build it with `pod_network`; `close()` removes everything it made."""

    node: NodeNetwork
    pods: dict[str, Pod] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    @property
    def host_ip(self) -> str:
        """The host namespace's address the pods reach: bind the control plane here."""
        return self.node.host_ip

    def _add_pod(self, name: str) -> None:
        ns = f"{PREFIX}{name}-{secrets.token_hex(3)}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        ip = asyncio.run(self.node.add_pod(netns=ns))
        self.pods[name] = Pod(name=name, ns=ns, ip=ip)

    def processes(self) -> dict[str, list[int]]:
        """Namespace -> pids of the processes still running in it (only namespaces that have some)."""
        found = {}
        for name in self.namespaces:
            pids = [int(pid) for pid in sh("ip", "netns", "pids", name, check=False).stdout.split()]
            if pids:
                found[name] = pids
        return found

    def close(self) -> None:
        """SIGKILL whatever still runs in the pods, delete their namespaces and the node network, and
        check nothing is left. Raises AssertionError naming a namespace or link that could not be removed."""
        for pids in self.processes().values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        asyncio.run(self.node.close())
        listed = sh("ip", "netns", "list").stdout.split()
        left = [name for name in (*self.namespaces, self.node.node_netns) if name in listed]
        assert left == [], f"network namespaces left behind: {left}"
        host_link = self.node.host_link
        assert sh("ip", "link", "show", host_link, check=False).returncode != 0, f"{host_link} left behind"


@contextlib.contextmanager
def pod_network(*names: str) -> Iterator[PodNetwork]:
    """Pods `names` on a node network reachable from the host; removed on exit, also on error."""
    network = PodNetwork(node=asyncio.run(NodeNetwork.create()))
    try:
        for name in names:
            network._add_pod(name)
        yield network
    finally:
        network.close()
