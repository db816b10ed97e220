"""A pod's sandbox on the node: its network namespace, IP, `/etc/hosts` and `/etc/resolv.conf`.

The namespace is `ksim-<random>`; `ip netns exec` (which every container's launcher goes through) bind-mounts
`/etc/netns/<netns>/hosts` and `resolv.conf` over the node's, so the pod's processes see them. The hosts
file is the kubelet's (localhost, the pod's own hostname) plus, standing in for cluster DNS, every Service's
clusterIP under `<svc>.<ns>`, `<svc>.<ns>.svc` and `<svc>.<ns>.svc.cluster.local`, and `<svc>` for the
pod's own namespace (the DNS search path). It is rewritten in place when Services change, because the bind
mount pins the file's inode.

`HostPaths` records the directories and files made on the node for mount points that did not exist
(a mount namespace does not isolate the file system), so that `cleanup()` removes them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

NETNS_ETC = pathlib.Path("/etc/netns")
CLUSTER_DOMAIN = "cluster.local"


class PodNetwork(Protocol):
    """What the kubelet needs of the node network (`tests.kubesim.podnet.NodeNetwork`)."""

    host_ip: str

    async def add_pod(self, *, netns: str) -> str: ...

    async def remove_pod(self, *, netns: str) -> None: ...


class SandboxError(Exception):
    """The sandbox could not be created; the message has the failing command and its error."""


async def run(*argv: str) -> None:
    """Run a command on the node; SandboxError with its stderr when it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SandboxError(f"{' '.join(argv)}: exit {proc.returncode}: {err.decode(errors='replace').strip()}")


def hosts_file(*, pod_ip: str, hostname: str, namespace: str, services: Iterable[Mapping[str, Any]]) -> str:
    """The pod's /etc/hosts (see the module docstring); Services without a clusterIP are left out."""
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if pod_ip:
        lines.append(f"{pod_ip}\t{hostname}")
    for svc in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        ip = str((svc.get("spec") or {}).get("clusterIP") or "")
        if not ip or ip == "None":
            continue
        name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
        names = [f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"]
        if ns == namespace:
            names.insert(0, name)
        lines.append(f"{ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str) -> str:
    """Search path as in a pod; the nameserver is the pod's loopback, so unknown names fail at once."""
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"search {search}\nnameserver 127.0.0.1\noptions ndots:5\n"


class HostPaths:
    """Paths created on the node for mount points; `cleanup()` removes those still empty, deepest first."""

    def __init__(self) -> None:
        self._created: list[pathlib.Path] = []

    def ensure(self, path: pathlib.Path, *, directory: bool = True) -> None:
        """Create `path` (a directory, or an empty file) and its missing parents, remembering each."""
        missing = []
        probe = path
        while not probe.exists() and not probe.is_symlink():
            missing.append(probe)
            probe = probe.parent
        for item in reversed(missing):
            if item == path and not directory:
                item.touch()
            else:
                item.mkdir(mode=0o755)
            self._created.append(item)

    def cleanup(self) -> None:
        for item in sorted(set(self._created), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                if item.is_dir() and not item.is_symlink():
                    item.rmdir()
                elif item.stat().st_size == 0:
                    item.unlink()
        self._created = [p for p in self._created if p.exists()]


class Sandbox:
    """One pod's network namespace and its /etc files. `create()` then `destroy()` (idempotent)."""

    def __init__(self, *, network: PodNetwork, host_paths: HostPaths) -> None:
        self.network = network
        self.netns = f"ksim-{secrets.token_hex(4)}"
        self.ip = ""
        self._host_paths = host_paths
        self._etc = NETNS_ETC / self.netns
        self._hosts = ""

    async def create(self, *, namespace: str) -> str:
        """Make the namespace, attach it to the network and write its /etc files; returns the pod IP."""
        try:
            await run("ip", "netns", "add", self.netns)
            self.ip = await self.network.add_pod(netns=self.netns)
            self._host_paths.ensure(NETNS_ETC)
            self._etc.mkdir(mode=0o755, exist_ok=True)
            (self._etc / "resolv.conf").write_text(resolv_conf(namespace))
            (self._etc / "hosts").touch()
        except BaseException:
            await self.destroy()
            raise
        return self.ip

    def write_hosts(self, content: str) -> None:
        """Rewrite the hosts file in place when `content` differs (running pods see the change)."""
        if content == self._hosts or not self._etc.is_dir():
            return
        with open(self._etc / "hosts", "r+" if (self._etc / "hosts").exists() else "w") as handle:
            handle.write(content)
            handle.truncate()
        self._hosts = content

    async def destroy(self) -> None:
        """Detach from the network, delete the namespace and /etc/netns/<netns>; never raises."""
        try:
            await self.network.remove_pod(netns=self.netns)
        except Exception:
            log.exception("releasing the address of %s failed", self.netns)
        with contextlib.suppress(SandboxError):
            await run("ip", "netns", "del", self.netns)
        for name in ("hosts", "resolv.conf"):
            (self._etc / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._etc.rmdir()
