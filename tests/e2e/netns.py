"""Network namespaces wired like pods on one node, for tests that run as root.

`pod_network("client", "server")` makes one namespace per pod (`mp-<pod>-<random>`, with `eth0` holding the pod
IP and a default route via the gateway) and a link namespace (`mp-link-<random>`) holding a bridge that joins the
pods' `eth0`s and one veth from the host namespace. The host end of that veth carries the gateway address (.1),
so a process in the host namespace (the control plane) and the pods reach each other on one subnet directly:
the host forwards nothing and no sysctl of the host is changed.

Why a link namespace rather than a bridge in the host namespace: with `br_netfilter` loaded, bridged frames go
through the iptables FORWARD chain of the bridge's namespace, and a host's FORWARD policy may be DROP (Docker sets
it). The link namespace has an empty firewall. It also makes clean-up total: deleting the namespaces deletes the
bridge and every veth, the host's end included, also after a test failed halfway.

The subnet is a /24 of 10.251.0.0/16 that no host address or route uses when the network is made.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

PREFIX = "mp-"
SUPERNET = "10.251"
BRIDGE = "br0"


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
    """Pods on one bridge with the host. Build it with `pod_network`; `close()` removes everything it made."""

    suffix: str
    subnet: str  # the first three octets, e.g. "10.251.17"
    pods: dict[str, Pod] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        """The host namespace's address on the pods' subnet: bind the control plane here."""
        return f"{self.subnet}.1"

    @property
    def link_ns(self) -> str:
        return f"{PREFIX}link-{self.suffix}"

    @property
    def host_link(self) -> str:
        return f"{PREFIX}h-{self.suffix}"

    def _add_namespace(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self, names: tuple[str, ...]) -> None:
        self._add_namespace(self.link_ns)
        sh("ip", "-n", self.link_ns, "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "-n", self.link_ns, "link", "set", BRIDGE, "up")
        sh("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "uplink", "netns", self.link_ns)
        sh("ip", "-n", self.link_ns, "link", "set", "uplink", "master", BRIDGE, "up")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.host_link)
        sh("ip", "link", "set", self.host_link, "up")
        for index, name in enumerate(names, start=2):
            pod = Pod(name=name, ns=f"{PREFIX}{name}-{self.suffix}", ip=f"{self.subnet}.{index}")
            self._add_namespace(pod.ns)
            port = f"to-{name}"[:15]
            sh("ip", "-n", self.link_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", pod.ns)
            sh("ip", "-n", self.link_ns, "link", "set", port, "master", BRIDGE, "up")
            sh("ip", "-n", pod.ns, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
            sh("ip", "-n", pod.ns, "link", "set", "eth0", "up")
            sh("ip", "-n", pod.ns, "route", "add", "default", "via", self.gateway)
            self.pods[name] = pod

    def processes(self) -> dict[str, list[int]]:
        """Namespace -> pids of the processes still running in it (only namespaces that have some)."""
        found = {}
        for name in self.namespaces:
            pids = [int(pid) for pid in sh("ip", "netns", "pids", name, check=False).stdout.split()]
            if pids:
                found[name] = pids
        return found

    def close(self) -> None:
        """SIGKILL whatever still runs in the namespaces, delete them (and so every link), check nothing is left.

        Raises AssertionError naming a namespace or the host link that could not be removed.
        """
        for pids in self.processes().values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        if sh("ip", "link", "show", self.host_link, check=False).returncode == 0:
            sh("ip", "link", "del", self.host_link, check=False)
        listed = sh("ip", "netns", "list").stdout.split()
        left = [name for name in self.namespaces if name in listed]
        assert left == [], f"network namespaces left behind: {left}"
        assert sh("ip", "link", "show", self.host_link, check=False).returncode != 0, f"{self.host_link} left behind"


def _free_subnet() -> str:
    """A 10.251.X prefix that no address or route of the host namespace mentions."""
    used = sh("ip", "-4", "-o", "addr", "show").stdout + sh("ip", "-4", "route", "show", "table", "all").stdout
    for third in random.sample(range(256), 256):
        subnet = f"{SUPERNET}.{third}"
        if f"{subnet}." not in used:
            return subnet
    raise AssertionError(f"every /24 of {SUPERNET}.0.0/16 is in use on this host")


@contextlib.contextmanager
def pod_network(*names: str) -> Iterator[PodNetwork]:
    """Pods `names` (IPs .2, .3, ... in order) on one bridge with the host (.1); removed on exit, also on error."""
    network = PodNetwork(suffix=secrets.token_hex(3), subnet=_free_subnet())
    try:
        network._build(names)
        yield network
    finally:
        network.close()
