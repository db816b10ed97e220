"""kubesim's kube-proxy: cluster IPs that work from pods, as iptables nat rules in the node namespace.

`ServiceProxy(kubeconfig=..., network=...)` lists and watches Services and EndpointSlices through the API
server (as the real kube-proxy does, reconnecting and relisting through `controlplane.kube.watching`) and
keeps, inside `network.node_netns`, rules in the shape of kube-proxy's iptables mode:

    nat    PREROUTING, OUTPUT -> KSIM-SERVICES-<sfx>: clusterIP:port -> KSIM-SVC-<hash>-<sfx>
           KSIM-SVC-<hash>-<sfx>: traffic not from the pod CIDR (the node's own) -> KSIM-MARK-MASQ-<sfx>
                                  (mark 0x4000), then a jump to one KSIM-SEP-<hash>-<sfx> per ready
                                  endpoint, spread with `-m statistic --mode random`
           KSIM-SEP-<hash>-<sfx>: traffic from the endpoint's own IP (hairpin) -> KSIM-MARK-MASQ-<sfx>,
                                  then DNAT to the endpoint
           POSTROUTING -> KSIM-POSTROUTING-<sfx>: marked packets are MASQUERADEd
    filter INPUT, FORWARD, OUTPUT (new connections) -> KSIM-SERVICES-<sfx>: a service port without a ready
                                  endpoint is REJECTed with icmp-port-unreachable ("connection refused")

A pod's connection to a cluster IP keeps its source address, so the endpoint sees the calling pod's IP as
in a real cluster: `tests.kubesim.podnet` routes every pod packet through the node namespace, where
conntrack un-DNATs the endpoint's reply. Two kinds of traffic are masqueraded, as by kube-proxy, so that
their replies come back through the node: traffic from outside the pod CIDR, and hairpin traffic, a pod
reaching itself through its Service, whose reply would otherwise stay inside the pod's namespace.

An endpoint is ready unless its `conditions.ready` is false; its port is the one of the slice's port named
like the Service port. Every change is one atomic `iptables-restore --noflush`, applied within a second of
the API change. A `local` route for the service CIDR in the node namespace makes cluster IPs routable there,
so a port without endpoints is refused rather than unroutable. `stop()` removes the rules and the route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import os
import pathlib
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from controlplane.kube.client import KubeApi
from controlplane.kube.watching import Kept, Resource, Selection, infinite_watch
from tests.kubesim.allocators import SERVICE_CIDR

log = logging.getLogger(__name__)

SERVICES = Resource(group="", version="v1", plural="services", kind="Service", namespaced=True)
ENDPOINT_SLICES = Resource(
    group="discovery.k8s.io", version="v1", plural="endpointslices", kind="EndpointSlice", namespaced=True
)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MASQ_MARK = "0x4000"
PROTOCOLS = ("TCP", "UDP")


class NodeNetworkLike(Protocol):
    """What the proxy needs of `tests.kubesim.podnet.NodeNetwork`."""

    @property
    def node_netns(self) -> str: ...

    @property
    def cidr(self) -> ipaddress.IPv4Network: ...


class IptablesError(RuntimeError):
    """iptables-restore (or `ip route`) in the node namespace failed; the message holds its stderr."""


@dataclass(frozen=True, kw_only=True, order=True)
class Endpoint:
    ip: str
    port: int


@dataclass(frozen=True, kw_only=True)
class ServicePort:
    """One port of one Service, with the ready endpoints that serve it."""

    namespace: str
    name: str
    port_name: str
    cluster_ip: str
    port: int
    protocol: str
    endpoints: tuple[Endpoint, ...]

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port_name}" if self.port_name else f"{self.namespace}/{self.name}"


def _name(obj: Kept) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def ready_endpoints(slices: Iterable[Kept], *, port_name: str, protocol: str) -> tuple[Endpoint, ...]:
    """Addresses of endpoints whose `conditions.ready` is not false, at the slices' port named `port_name`."""
    found: set[Endpoint] = set()
    for item in slices:
        if item.get("addressType") != "IPv4":
            continue
        ports = [
            p.get("port")
            for p in item.get("ports") or []
            if (p.get("name") or "") == port_name and (p.get("protocol") or "TCP") == protocol
        ]
        if not ports or not isinstance(ports[0], int):
            continue
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            found.update(Endpoint(ip=str(ip), port=ports[0]) for ip in endpoint.get("addresses") or [])
    return tuple(sorted(found))


def service_ports(services: Iterable[Kept], slices: Iterable[Kept]) -> list[ServicePort]:
    """Every TCP/UDP port of every Service with an IPv4 cluster IP, with its ready endpoints; sorted."""
    by_service: dict[tuple[str, str], list[Kept]] = {}
    for item in slices:
        namespace = _name(item)[0]
        owner = ((item.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner:
            by_service.setdefault((namespace, str(owner)), []).append(item)
    result = []
    for service in services:
        namespace, name = _name(service)
        spec = service.get("spec") or {}
        try:
            cluster_ip = ipaddress.IPv4Address(str(spec.get("clusterIP")))
        except ValueError:
            continue  # headless, ExternalName, IPv6 or not yet allocated
        for port in spec.get("ports") or []:
            protocol = port.get("protocol") or "TCP"
            if protocol not in PROTOCOLS or not isinstance(port.get("port"), int):
                continue
            port_name = str(port.get("name") or "")
            endpoints = ready_endpoints(by_service.get((namespace, name), []), port_name=port_name, protocol=protocol)
            result.append(
                ServicePort(
                    namespace=namespace,
                    name=name,
                    port_name=port_name,
                    cluster_ip=str(cluster_ip),
                    port=port["port"],
                    protocol=protocol,
                    endpoints=endpoints,
                )
            )
    return sorted(result, key=lambda p: (p.namespace, p.name, p.port_name, p.protocol))


@dataclass(frozen=True, kw_only=True)
class RuleSet:
    """Chains (name -> rules, without the `-A chain` prefix) of the nat and filter tables."""

    nat: Mapping[str, tuple[str, ...]]
    filter: Mapping[str, tuple[str, ...]]


EMPTY = RuleSet(nat={}, filter={})


def _digest(key: str) -> str:
    """10 base32 characters of the key's SHA-256: chain names stay within iptables' 28 characters."""
    return base64.b32encode(hashlib.sha256(key.encode()).digest()).decode()[:10]


@dataclass(frozen=True)
class ChainNames:
    """The proxy's chain names; `suffix` keeps several proxies on one machine apart."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(2))

    @property
    def services(self) -> str:
        return f"KSIM-SERVICES-{self.suffix}"

    @property
    def postrouting(self) -> str:
        return f"KSIM-POSTROUTING-{self.suffix}"

    @property
    def mark_masq(self) -> str:
        return f"KSIM-MARK-MASQ-{self.suffix}"

    def service(self, port: ServicePort) -> str:
        return f"KSIM-SVC-{_digest(f'{port.label}/{port.protocol}')}-{self.suffix}"

    def endpoint(self, port: ServicePort, endpoint: Endpoint) -> str:
        return f"KSIM-SEP-{_digest(f'{port.label}/{port.protocol}/{endpoint.ip}:{endpoint.port}')}-{self.suffix}"

    def hooks(self) -> dict[str, list[tuple[str, str]]]:
        """Per table, the built-in chains that jump to ours: (built-in chain, match and jump)."""
        new = "-m conntrack --ctstate NEW -m comment --comment kubesim-service-portals"
        return {
            "nat": [
                ("PREROUTING", f"-m comment --comment kubesim-service-portals -j {self.services}"),
                ("OUTPUT", f"-m comment --comment kubesim-service-portals -j {self.services}"),
                ("POSTROUTING", f"-m comment --comment kubesim-postrouting -j {self.postrouting}"),
            ],
            "filter": [(chain, f"{new} -j {self.services}") for chain in ("INPUT", "FORWARD", "OUTPUT")],
        }


def build_rules(ports: Sequence[ServicePort], *, names: ChainNames, pod_cidr: ipaddress.IPv4Network) -> RuleSet:
    """The complete rule set for `ports` (a pure function of its arguments)."""
    nat: dict[str, tuple[str, ...]] = {
        names.mark_masq: (f"-j MARK --or-mark {MASQ_MARK}",),
        names.postrouting: (
            f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
            f"-j MARK --xor-mark {MASQ_MARK}",
            "-j MASQUERADE",
        ),
    }
    portals: list[str] = []
    rejects: list[str] = []
    for port in ports:
        proto = port.protocol.lower()
        match = f'-d {port.cluster_ip}/32 -p {proto} -m {proto} --dport {port.port} -m comment --comment "{port.label}'
        if not port.endpoints:
            rejects.append(f'{match} has no endpoints" -j REJECT --reject-with icmp-port-unreachable')
            continue
        chain = names.service(port)
        portals.append(f'{match} cluster IP" -j {chain}')
        nat[chain] = _service_chain(port, names=names, pod_cidr=pod_cidr)
        for endpoint in port.endpoints:
            nat[names.endpoint(port, endpoint)] = _endpoint_chain(port, endpoint, names=names)
    nat[names.services] = tuple(portals)
    return RuleSet(nat=nat, filter={names.services: tuple(rejects)})


def _service_chain(port: ServicePort, *, names: ChainNames, pod_cidr: ipaddress.IPv4Network) -> tuple[str, ...]:
    """Masquerade what does not come from a pod, then pick an endpoint: each of n with probability 1/n."""
    rules = [f'! -s {pod_cidr} -m comment --comment "{port.label} masquerade non-pod traffic" -j {names.mark_masq}']
    count = len(port.endpoints)
    for i, endpoint in enumerate(port.endpoints):
        spread = f"-m statistic --mode random --probability {1.0 / (count - i):0.10f} " if i < count - 1 else ""
        comment = f'-m comment --comment "{port.label} -> {endpoint.ip}:{endpoint.port}"'
        rules.append(f"{comment} {spread}-j {names.endpoint(port, endpoint)}")
    return tuple(rules)


def _endpoint_chain(port: ServicePort, endpoint: Endpoint, *, names: ChainNames) -> tuple[str, ...]:
    """Masquerade the endpoint reaching itself (hairpin), then DNAT to it."""
    target = f"{endpoint.ip}:{endpoint.port}"
    proto = port.protocol.lower()
    return (
        f'-s {endpoint.ip}/32 -m comment --comment "{port.label} hairpin" -j {names.mark_masq}',
        f'-m comment --comment "{port.label} -> {target}" -p {proto} -j DNAT --to-destination {target}',
    )


def restore_input(
    rules: RuleSet, *, previous: RuleSet | None, names: ChainNames, hooks: Literal["install", "remove"] | None = None
) -> str:
    """iptables-restore --noflush input turning `previous` (None: nothing installed) into `rules`.

    Every chain of `rules` is declared (which flushes it) and refilled; chains only in `previous` are
    flushed and deleted. `hooks` "install" inserts the jumps from the built-in chains, "remove" deletes them.
    """
    lines: list[str] = []
    for table in ("nat", "filter"):
        chains: Mapping[str, tuple[str, ...]] = getattr(rules, table)
        stale = sorted(set(getattr(previous, table)) - set(chains)) if previous is not None else []
        lines.append(f"*{table}")
        lines.extend(f":{chain} - [0:0]" for chain in [*chains, *stale])
        for builtin, jump in names.hooks()[table]:
            if hooks == "install":
                lines.append(f"-I {builtin} 1 {jump}")
            elif hooks == "remove":
                lines.append(f"-D {builtin} {jump}")
        for chain, chain_rules in chains.items():
            lines.extend(f"-A {chain} {rule}" for rule in chain_rules)
        lines.extend(f"-X {chain}" for chain in stale)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


class _Store:
    """Holds the current objects of one watched resource; calls `changed` after every list or event."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.objects: dict[tuple[str, str], Kept] = {}
        self.listed = False
        self._changed = changed

    async def on_list(self, objects: Sequence[Kept]) -> None:
        self.objects = {_name(obj): obj for obj in objects}
        self.listed = True
        self._changed()

    def on_event(self, event_type: str, obj: Kept) -> None:
        if event_type == "DELETED":
            self.objects.pop(_name(obj), None)
        else:
            self.objects[_name(obj)] = obj
        self._changed()


class ServiceProxy:
    """kube-proxy for one node network; see the module docstring.

    `start()` returns once the rules reflect the first complete lists of Services and EndpointSlices; it
    raises TimeoutError (after undoing what it did) when that takes longer than `sync_timeout` seconds (the
    API server unreachable), and IptablesError when the node namespace refuses the rules. Later failures
    are logged and retried every `retry_interval` seconds. `stop()` is idempotent and removes the rules.
    """

    def __init__(
        self,
        *,
        kubeconfig: pathlib.Path,
        network: NodeNetworkLike,
        service_cidr: ipaddress.IPv4Network = SERVICE_CIDR,
        debounce: float = 0.05,
        sync_timeout: float = 30.0,
        retry_interval: float = 1.0,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.network = network
        self.service_cidr = service_cidr
        self.names = ChainNames()
        self._debounce = debounce
        self._sync_timeout = sync_timeout
        self._retry_interval = retry_interval
        self._dirty = asyncio.Event()
        self._synced = asyncio.Event()
        self._services = _Store(self._dirty.set)
        self._slices = _Store(self._dirty.set)
        self._applied: RuleSet | None = None
        self._route = False
        self._api: KubeApi | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._api is not None:
            return
        self._api = await KubeApi.connect(kubeconfig=self.kubeconfig)
        try:
            await self._node("ip", "route", "replace", "local", str(self.service_cidr), "dev", "lo")
            self._route = True
            base = build_rules([], names=self.names, pod_cidr=self.network.cidr)
            await self._restore(restore_input(base, previous=None, names=self.names, hooks="install"))
            self._applied = base
            everything = Selection()
            self._tasks = [
                asyncio.create_task(
                    infinite_watch(self._api, SERVICES, everything, self._services), name="kube-proxy services"
                ),
                asyncio.create_task(
                    infinite_watch(self._api, ENDPOINT_SLICES, everything, self._slices),
                    name="kube-proxy endpointslices",
                ),
                asyncio.create_task(self._sync_loop(), name="kube-proxy sync"),
            ]
            try:
                await asyncio.wait_for(self._synced.wait(), self._sync_timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"kube-proxy could not list Services and EndpointSlices from the API server of "
                    f"{self.kubeconfig} within {self._sync_timeout:g}s"
                ) from None
        except BaseException:
            await self.stop()
            raise
        log.info("kube-proxy: rules for %d service ports in %s", len(self._ports()), self.network.node_netns)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._inflight is not None:  # a restore the sync loop started runs to its end, so _applied is true
            with contextlib.suppress(IptablesError):
                await self._inflight
            self._inflight = None
        alive = _netns_exists(self.network.node_netns)
        try:
            if self._applied is not None and alive:
                await self._restore(restore_input(EMPTY, previous=self._applied, names=self.names, hooks="remove"))
            self._applied = None
            if self._route and alive:
                await self._node("ip", "route", "del", "local", str(self.service_cidr), "dev", "lo")
            self._route = False
        finally:
            if self._api is not None:
                api, self._api = self._api, None
                await api.close()

    def _ports(self) -> list[ServicePort]:
        return service_ports(self._services.objects.values(), self._slices.objects.values())

    async def _sync_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._debounce)  # coalesce a burst of events into one restore
            self._dirty.clear()
            if not (self._services.listed and self._slices.listed):
                continue
            rules = build_rules(self._ports(), names=self.names, pod_cidr=self.network.cidr)
            if rules != self._applied:
                self._inflight = asyncio.create_task(self._apply(rules), name="kube-proxy restore")
                try:
                    # Shielded: cancelling the loop (stop) must not abandon an iptables-restore that is
                    # already running, or its chains would be missing from _applied and outlive stop().
                    await asyncio.shield(self._inflight)
                except IptablesError as exc:
                    log.error("kube-proxy: %s; retrying in %gs", exc, self._retry_interval)
                    await asyncio.sleep(self._retry_interval)
                    self._dirty.set()
                    continue
            self._synced.set()

    async def _apply(self, rules: RuleSet) -> None:
        await self._restore(restore_input(rules, previous=self._applied, names=self.names))
        self._applied = rules

    async def _restore(self, text: str) -> None:
        await self._node("iptables-restore", "--noflush", "-w", "5", stdin=text)

    async def _node(self, *argv: str, stdin: str | None = None) -> None:
        full = ("ip", "netns", "exec", self.network.node_netns, *argv)
        proc = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        if proc.returncode != 0:
            raise IptablesError(f"{' '.join(full)}: exit {proc.returncode}: {err.decode(errors='replace').strip()}")
