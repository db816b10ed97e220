"""The Service registry's allocators: cluster IPs from the service CIDR and node ports.

Before it allocates, a write's IP family fields are filled in and checked as the registry does on a
single-stack IPv4 cluster (`tests.kubesim.ipfamilies`): what that refuses is a 422 before any allocation.
A requested cluster IP is read as the server reads one (leading zeros allowed) and kept as written.

A Service gets a cluster IP from `SERVICE_CIDR` (a requested one must be one of its host addresses
and free) and, for NodePort and LoadBalancer types, node ports from `NODE_PORTS` (a requested one
must be in range and not held by another Service: 422 naming `spec.ports[i].nodePort`). Both are
picked as the real allocators pick them (`_pick_at_random`): a random scan of the range above its
lowest values, which are left to explicit requests until the rest is full (the lowest 256 addresses,
such as the API server's 10.96.0.1 and the 10.96.0.10 kubeadm asks for kube-dns; the lowest 86
ports); a full range is a 500. A LoadBalancer with `allocateLoadBalancerNodePorts: false` is given
no node ports, though the ones it asks for are held. A LoadBalancer with `externalTrafficPolicy:
Local` also gets a `healthCheckNodePort` from the same pool (the requested one, else a free one);
as in the registry, failing to get it is a 500, not a validation error.

Which ports of one Service share a node port follows the registry too. On create, ports with one
port number share one (TCP and UDP 53 get the same), and any other requested node port is taken on
its own, so two port numbers naming one node port are refused (already allocated) whatever their
protocols. On update, a requested node port the Service did not have is taken once however many
ports name it, and two ports naming one for one protocol are a 500 (the registry's error is no
Status). Validation then refuses what is left: two ports with one protocol and node port.

As the Service registry does, a write allocates before validation (a validating webhook sees the
allocated values) and holds what it allocated from that moment, in the same step as choosing it,
so that concurrent writes never pick the same value; a write that fails afterwards gives it back
(`revert`). Deleting a Service releases all of it. A dry run holds nothing and, like the real
allocators' dry-run modes, searches nothing: a Service asking for no cluster IP is given the CIDR's
network address (10.96.0.0) and a port asking for no node port one above the highest this write
took, else 32769. A requested cluster IP is checked against the range only, a requested node port
against the held ones only (not the range).

An update is prepared as the Service registry prepares it, before validation: values the client
left out are kept from the stored Service (`keep_allocations`), `allocate_update` allocates what the
new type needs (node ports for NodePort and LoadBalancer, a cluster IP when leaving ExternalName, a
health check node port when starting to need one) and `drop_type_dependent_fields` clears what the
new type no longer has (node ports going back to ClusterIP, the cluster IPs going to ExternalName,
the health check node port when it is no longer needed). What was allocated is held at once, what
is given back only in `commit`, when the update is written.
"""

from __future__ import annotations

import copy
import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from tests.kubesim.ipfamilies import init_ip_families, normalize_cluster_ips
from tests.kubesim.resources import ResourceType
from tests.kubesim.servicespec import cluster_ips
from tests.kubesim.status import ApiError, invalid
from tests.kubesim.storage import Obj
from tests.kubesim.validation import IP_HELP, go_string_slice, invalid_cause, parse_ip_sloppy

SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
NODE_PORTS = range(30000, 32768)
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")
# The dry-run port operation's first placeholder: one above 32768, its guess when it took no port yet.
FIRST_DRY_RUN_NODE_PORT = 32769


def _range_offset(size: int, *, step: int, ceiling: int) -> int:
    """How many values at the bottom of a range of `size` random picks leave to explicit requests.

    min(max(16, size / step), ceiling); none for a range of 16 or fewer. They are picked only once
    the rest of the range is full. The cluster IP allocator's step is 16 and ceiling 256 (the size
    counting the network and broadcast addresses), the node port allocator's 32 and 128.
    """
    if size <= 16:
        return 0
    return min(max(16, size // step), ceiling)


NODE_PORT_OFFSET = _range_offset(len(NODE_PORTS), step=32, ceiling=128)


def _pick_at_random(pool: range, offset: int, is_free: Callable[[int], bool]) -> int | None:
    """A free value of `pool`, picked as the real allocators pick; None when none is free.

    A scan from a random start of the values above the lowest `offset` (wrapping round), then, only
    when all of those are taken, likewise of the lowest ones.
    """
    for band in (pool[offset:], pool[:offset]):
        start = random.randrange(len(band)) if band else 0
        for i in range(len(band)):
            value = band[(start + i) % len(band)]
            if is_free(value):
                return value
    return None


@dataclass
class Allocation:
    """What a write of a Service takes from the allocators and gives back once it is written.

    `pending`: what it took is held and not yet committed; `revert` gives it back.
    """

    ips: set[ipaddress.IPv4Address] = field(default_factory=set)
    node_ports: set[int] = field(default_factory=set)
    released_ips: set[ipaddress.IPv4Address] = field(default_factory=set)
    released_node_ports: set[int] = field(default_factory=set)
    pending: bool = False


@dataclass
class _NodePortPicks:
    """The node ports one write takes (`taken`), as the registry's port allocation operation takes them.

    `held`: the ports held for stored Services and writes in progress. In a dry run a requested port
    is refused only when held or taken by this write already (its range is not checked), and one
    picked is a placeholder: one above the highest this write took, else `FIRST_DRY_RUN_NODE_PORT`.
    """

    held: set[int]
    dry_run: bool
    taken: set[int] = field(default_factory=set)

    def request(self, port: Any) -> str | None:
        """Take a requested port: None, or why it cannot be had (in the allocator's words)."""
        if not _is_port_number(port) or (port not in NODE_PORTS and not self.dry_run):
            return (
                "provided port is not in the valid range. The range of valid ports is "
                f"{NODE_PORTS.start}-{NODE_PORTS.stop - 1}"
            )
        if port in self.held or port in self.taken:
            return "provided port is already allocated"
        self.taken.add(port)
        return None

    def pick(self) -> int | None:
        """Take a port for a request naming none; None when the range is full."""
        if self.dry_run:
            port: int | None = max(self.taken, default=FIRST_DRY_RUN_NODE_PORT - 1) + 1
        else:
            port = _pick_at_random(NODE_PORTS, NODE_PORT_OFFSET, lambda p: p not in self.held and p not in self.taken)
        if port is not None:
            self.taken.add(port)
        return port


def _spec(obj: Obj) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _ports(obj: Obj) -> list[dict[str, Any]]:
    ports = _spec(obj).get("ports")
    return [p for p in ports if isinstance(p, dict)] if isinstance(ports, list) else []


def needs_cluster_ip(obj: Obj) -> bool:
    return bool(_spec(obj).get("type", "ClusterIP") != "ExternalName")


def needs_node_ports(obj: Obj) -> bool:
    return bool(_spec(obj).get("type") in NODE_PORT_TYPES)


def allocates_node_ports(obj: Obj) -> bool:
    """Whether ports without a node port are given one: NodePort always, LoadBalancer unless it opts out."""
    spec = _spec(obj)
    if spec.get("type") == "NodePort":
        return True
    return spec.get("type") == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is not False


def needs_health_check(obj: Obj) -> bool:
    """A LoadBalancer keeping traffic on the node it arrives at has a health check node port."""
    spec = _spec(obj)
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def health_check_port(obj: Obj) -> int:
    """The Service's `healthCheckNodePort` (0 when unset or malformed)."""
    value: Any = _spec(obj).get("healthCheckNodePort")
    return int(value) if _is_port_number(value) else 0


def node_ports(obj: Obj) -> set[int]:
    """The node ports `obj`'s ports name (0 and malformed values are none)."""
    return {p["nodePort"] for p in _ports(obj) if _is_port_number(p.get("nodePort")) and p["nodePort"]}


def _is_port_number(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _port_number(port: dict[str, Any]) -> int:
    """A Service port's `port` (0 when unset or malformed, as the registry reads it)."""
    value = port.get("port")
    return int(value) if _is_port_number(value) else 0


def _externally_accessible(obj: Obj) -> bool:
    spec = _spec(obj)
    kind = spec.get("type", "ClusterIP")
    return kind in NODE_PORT_TYPES or (kind == "ClusterIP" and bool(spec.get("externalIPs")))


class ServiceAllocator:
    """The cluster IPs (from `service_cidr`) and node ports taken by stored Services."""

    def __init__(self, service_cidr: ipaddress.IPv4Network = SERVICE_CIDR) -> None:
        self.service_cidr = service_cidr
        self.ips: set[ipaddress.IPv4Address] = set()
        self.node_ports: set[int] = set()
        network, broadcast = int(service_cidr.network_address), int(service_cidr.broadcast_address)
        self._hosts = range(network + 1, broadcast)
        self._ip_offset = _range_offset(service_cidr.num_addresses, step=16, ceiling=256)

    # -- create ---------------------------------------------------------------------------------
    def allocate(self, obj: Obj, resource: ResourceType, *, dry_run: bool) -> Allocation:
        """Fill in a new Service's IP families and policy, cluster IP(s), node ports and health check node port.

        What it takes; unless a dry run, held from now on (to `commit` once the Service is written,
        or `revert`). 422 for IP families or cluster IPs the registry refuses before allocating
        (`tests.kubesim.ipfamilies`) and for a cluster IP or node port out of range or taken, 500 for a
        full range or a health check node port that cannot be had.
        """
        allocation = Allocation()
        spec = obj["spec"]
        name = str(obj["metadata"]["name"])
        normalize_cluster_ips(spec)
        _check_ip_families(spec, None, resource, name)
        if spec.get("type") == "ExternalName":
            return allocation
        self._give_cluster_ip(spec, allocation, resource, name, dry_run=dry_run)
        picks = _NodePortPicks(self.node_ports, dry_run)
        if needs_node_ports(obj):
            _create_node_ports(obj, resource, picks)
        if needs_health_check(obj):
            _health_check_port(obj, picks)
        allocation.node_ports = picks.taken
        if not dry_run:
            self._hold(allocation)
        return allocation

    def _give_cluster_ip(
        self, spec: dict[str, Any], allocation: Allocation, resource: ResourceType, name: str, *, dry_run: bool
    ) -> None:
        """The cluster IP asked for (`clusterIPs[0]`, kept as written) or one picked, in both fields; none
        for a headless Service."""
        asked = cluster_ips(spec)[:1]
        if asked == ["None"]:
            return
        ip = self._cluster_ip(asked[0] if asked else "", name, resource, dry_run=dry_run)
        allocation.ips.add(ip)
        given = asked[0] if asked else str(ip)
        spec["clusterIP"] = given
        spec["clusterIPs"] = [given]

    # -- update ---------------------------------------------------------------------------------
    def allocate_update(self, obj: Obj, old: Obj, resource: ResourceType, *, dry_run: bool) -> Allocation:
        """What updating `old` to `obj` allocates (filled into `obj`) and releases; 422 for one out of range or taken.

        Unless a dry run, what it allocates is held from now on (to `commit` when the update is
        written, or `revert`); what it releases is given back only by `commit`.
        """
        allocation = Allocation()
        name = str(obj["metadata"]["name"])
        spec = _spec(obj)
        _check_ip_families(spec, _spec(old), resource, name)
        if not needs_cluster_ip(old) and needs_cluster_ip(obj):
            self._give_cluster_ip(spec, allocation, resource, name, dry_run=dry_run)
        elif needs_cluster_ip(old) and not needs_cluster_ip(obj):
            allocation.released_ips |= _addresses(_spec(old).get("clusterIPs") or [])
        picks = _NodePortPicks(self.node_ports, dry_run)
        held = node_ports(old)
        if needs_node_ports(obj):
            _update_node_ports(obj, old, resource, picks)
            allocation.released_node_ports = held - node_ports(obj)
        else:
            allocation.released_node_ports = held
        _update_health_check(obj, old, picks, allocation)
        allocation.node_ports = picks.taken
        if not dry_run:
            self._hold(allocation)
        return allocation

    # -- holding and giving back ----------------------------------------------------------------
    def _hold(self, allocation: Allocation) -> None:
        """Hold what `allocation` took, in the same step as choosing it (no other write runs in between)."""
        self.ips |= allocation.ips
        self.node_ports |= allocation.node_ports
        allocation.pending = True

    def commit(self, allocation: Allocation) -> None:
        """The write of `allocation` happened: keep what it took, give back what it released."""
        self.ips -= allocation.released_ips
        self.node_ports -= allocation.released_node_ports
        allocation.pending = False

    def revert(self, allocation: Allocation) -> None:
        """The write of `allocation` did not happen: give back what it took and holds (nothing once committed)."""
        if allocation.pending:
            self.ips -= allocation.ips
            self.node_ports -= allocation.node_ports
            allocation.pending = False

    # -- delete ---------------------------------------------------------------------------------
    def release(self, obj: Obj) -> None:
        """Give back the cluster IPs, node ports and health check node port of a deleted Service."""
        self.ips -= _addresses(_spec(obj).get("clusterIPs") or [])
        self.node_ports -= node_ports(obj)
        if needs_health_check(obj):
            self.node_ports.discard(health_check_port(obj))

    # -- cluster IPs ----------------------------------------------------------------------------
    def _cluster_ip(self, requested: str, name: str, resource: ResourceType, *, dry_run: bool) -> ipaddress.IPv4Address:
        """The requested cluster IP when valid, one of the range's hosts and free; else one picked for it.

        A requested IP is read as the server reads it (leading zeros allowed), and named as written but
        for the range message, which shows the address it read. A dry run, like the real allocator's,
        checks a requested IP against the range only, and gives a Service requesting none the range's
        network address rather than searching for a free one.
        """
        if not requested:
            return self.service_cidr.network_address if dry_run else self._free_cluster_ip()
        ip = parse_ip_sloppy(requested)
        shown = go_string_slice([requested])
        if not isinstance(ip, ipaddress.IPv4Address):  # refused before allocation; kept for direct callers
            raise invalid(resource, name, [invalid_cause("spec.clusterIPs[0]", requested, IP_HELP)])
        if int(ip) not in self._hosts:
            detail = (
                f"failed to allocate IP {requested}: the provided IP ({ip}) is not in the valid range. "
                f"The range of valid IPs is {self.service_cidr}"
            )
            raise invalid(resource, name, [invalid_cause("spec.clusterIPs", shown, detail)])
        if not dry_run and ip in self.ips:
            detail = f"failed to allocate IP {requested}: provided IP is already allocated"
            raise invalid(resource, name, [invalid_cause("spec.clusterIPs", shown, detail)])
        return ip

    def _free_cluster_ip(self) -> ipaddress.IPv4Address:
        """A host address no Service holds, picked at random as the real allocator picks; 500 when none is left."""
        free = _pick_at_random(self._hosts, self._ip_offset, lambda ip: ipaddress.IPv4Address(ip) not in self.ips)
        if free is None:
            raise _internal_error("failed to allocate a serviceIP: range is full")
        return ipaddress.IPv4Address(free)


# -- node ports -----------------------------------------------------------------------------------
def _create_node_ports(obj: Obj, resource: ResourceType, picks: _NodePortPicks) -> None:
    """Give the ports of a new Service their node ports (filled in), as the registry's create does.

    Ports with one port number share a node port: the first any of them requests, else one picked
    for the first of them. Any other requested node port is taken on its own. A LoadBalancer opting
    out of node ports gets only the ones it requests.
    """
    name = str(obj["metadata"]["name"])
    ports = _ports(obj)
    shared: dict[int, int] = {}
    for i, port in enumerate(ports):
        requested = port.get("nodePort")
        if not requested and not allocates_node_ports(obj):
            continue
        number = _port_number(port)
        given = shared.get(number)
        if given is None:
            wanted = next((p["nodePort"] for p in ports if _port_number(p) == number and p.get("nodePort")), None)
            given = _take_node_port(picks, wanted, resource, name, i) if wanted else _pick_node_port(picks)
            port["nodePort"] = shared[number] = given
        elif not requested:
            port["nodePort"] = given
        elif requested != given:
            _take_node_port(picks, requested, resource, name, i)


def _update_node_ports(obj: Obj, old: Obj, resource: ResourceType, picks: _NodePortPicks) -> None:
    """Check and fill in the node ports of an updated Service, as the registry's update does.

    A requested node port the Service did not have is taken once, however many ports name it; a
    missing one is picked. Two ports naming one node port for one protocol are refused with the
    registry's plain error, which the API server answers as a 500 with no reason.
    """
    name = str(obj["metadata"]["name"])
    had = node_ports(old)
    requested_here: set[int] = set()
    seen: set[tuple[str, int]] = set()
    for i, port in enumerate(_ports(obj)):
        requested = port.get("nodePort")
        if not requested and not allocates_node_ports(obj):
            continue
        if not requested:
            port["nodePort"] = _pick_node_port(picks)
        elif not (_is_port_number(requested) and requested in had | requested_here):
            requested_here.add(_take_node_port(picks, requested, resource, name, i))
        key = (str(port.get("protocol", "TCP")), int(port["nodePort"]))
        if key in seen:
            raise ApiError(500, f"duplicate nodePort: {{{key[0]} {key[1]}}}", reason="")
        seen.add(key)


def _take_node_port(picks: _NodePortPicks, port: Any, resource: ResourceType, name: str, index: int) -> int:
    """`port`, taken for `spec.ports[index]`; a 422 naming that field when it cannot be had."""
    problem = picks.request(port)
    if problem is not None:
        raise invalid(resource, name, [invalid_cause(f"spec.ports[{index}].nodePort", port, problem)])
    return int(port)


def _pick_node_port(picks: _NodePortPicks) -> int:
    port = picks.pick()
    if port is None:
        raise _internal_error("failed to allocate a nodePort: range is full")
    return port


def _health_check_port(obj: Obj, picks: _NodePortPicks) -> None:
    """Take the requested `healthCheckNodePort`, else pick one (filled in).

    As in the registry, where it is allocated before validation, one that cannot be had is a 500
    (an internal error), not a 422.
    """
    requested = _spec(obj).get("healthCheckNodePort")
    if requested:
        problem = picks.request(requested)
        if problem is not None:
            raise _internal_error(f"failed to allocate requested HealthCheck NodePort {requested}: {problem}")
        return
    port = picks.pick()
    if port is None:
        raise _internal_error("failed to allocate a HealthCheck NodePort 0: range is full")
    obj["spec"]["healthCheckNodePort"] = port


def _update_health_check(obj: Obj, old: Obj, picks: _NodePortPicks, allocation: Allocation) -> None:
    """A Service starting to need a health check node port gets one; one no longer needing it gives it back.

    While it needs one throughout, the port stays (validation refuses a change).
    """
    needed, needs = needs_health_check(old), needs_health_check(obj)
    if needs and not needed:
        _health_check_port(obj, picks)
    elif needed and not needs and health_check_port(old):
        allocation.released_node_ports.add(health_check_port(old))


def _internal_error(message: str) -> ApiError:
    return ApiError(500, f"Internal error occurred: {message}", details={"causes": [{"message": message}]})


def _addresses(ips: Iterable[Any]) -> set[ipaddress.IPv4Address]:
    """The IPv4 addresses of `ips`, read as the allocator reads them; "None" (headless) is none."""
    found: set[ipaddress.IPv4Address] = set()
    for ip in ips:
        parsed = parse_ip_sloppy(str(ip))
        if isinstance(parsed, ipaddress.IPv4Address):
            found.add(parsed)
    return found


def _check_ip_families(spec: dict[str, Any], old: dict[str, Any] | None, resource: ResourceType, name: str) -> None:
    """The registry's IP family step before allocation: a 422 with its causes alone when it refuses."""
    errors = init_ip_families(spec, old)
    if errors:
        raise invalid(resource, name, errors.causes)


# -- preparing an update (before validation) ------------------------------------------------------
def keep_allocations(obj: Obj, old: Obj) -> None:
    """The values the client left out of an update that the old Service was given, kept.

    As the Service registry does, so a resubmitted manifest without them is no change: the cluster
    IP(s), IP families and policy while both types have a cluster IP; a port's node port (by port
    name) while both types have node ports, unless another port of the update already names it; the
    health check node port while both need one.
    Then `clusterIPs` follows a changed `clusterIP` when the client left `clusterIPs` as it was.
    """
    spec = obj.setdefault("spec", {})
    old_spec = _spec(old)
    if not isinstance(spec, dict):
        return
    if needs_cluster_ip(old) and needs_cluster_ip(obj):
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if not spec.get(key) and old_spec.get(key):
                spec[key] = copy.deepcopy(old_spec[key])
    if needs_node_ports(old) and needs_node_ports(obj):
        used = node_ports(old) & node_ports(obj)
        by_name = {str(p.get("name") or ""): p.get("nodePort") for p in _ports(old)}
        for port in _ports(obj):
            prior = by_name.get(str(port.get("name") or ""))
            if not port.get("nodePort") and prior and prior not in used:
                port["nodePort"] = prior
    both_health_checked = needs_health_check(old) and needs_health_check(obj)
    if both_health_checked and not spec.get("healthCheckNodePort") and health_check_port(old):
        spec["healthCheckNodePort"] = health_check_port(old)
    old_ip, new_ip = old_spec.get("clusterIP"), spec.get("clusterIP")
    if old_ip != new_ip and spec.get("clusterIPs") == old_spec.get("clusterIPs"):
        if new_ip:
            spec["clusterIPs"] = [new_ip]
        else:
            spec.pop("clusterIPs", None)


def drop_type_dependent_fields(obj: Obj, old: Obj) -> None:
    """What the Service's new type no longer has, cleared where the update left it as it was.

    Leaving ExternalName's opposite (going to ExternalName): the cluster IP(s), IP families and
    policy. Going from NodePort or LoadBalancer to a type without node ports: the node ports, unless
    the update names one the Service did not have (validation then refuses it). No longer needing a
    health check node port (not a LoadBalancer, or not `externalTrafficPolicy: Local`): that port,
    unless the update changed it. Leaving
    LoadBalancer: `allocateLoadBalancerNodePorts` and `loadBalancerClass`; no longer reachable from
    outside: `externalTrafficPolicy`; any type but LoadBalancer: `status.loadBalancer`.
    """
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    old_spec = _spec(old)
    if needs_cluster_ip(old) and not needs_cluster_ip(obj):
        if spec.get("clusterIP") == old_spec.get("clusterIP") and spec.get("clusterIPs") == old_spec.get("clusterIPs"):
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        for key in ("ipFamilies", "ipFamilyPolicy"):
            if spec.get(key) == old_spec.get(key):
                spec.pop(key, None)
    if needs_node_ports(old) and not needs_node_ports(obj) and node_ports(obj) <= node_ports(old):
        for port in _ports(obj):
            port.pop("nodePort", None)
    same_health_check = spec.get("healthCheckNodePort") == old_spec.get("healthCheckNodePort")
    if needs_health_check(old) and not needs_health_check(obj) and same_health_check:
        spec.pop("healthCheckNodePort", None)
    if old_spec.get("type") == "LoadBalancer" and spec.get("type") != "LoadBalancer":
        for key in ("allocateLoadBalancerNodePorts", "loadBalancerClass"):
            if key in spec and spec.get(key) == old_spec.get(key):
                spec.pop(key)
    same_policy = spec.get("externalTrafficPolicy") == old_spec.get("externalTrafficPolicy")
    if _externally_accessible(old) and not _externally_accessible(obj) and same_policy:
        spec.pop("externalTrafficPolicy", None)
    status = obj.get("status")
    if spec.get("type") != "LoadBalancer" and isinstance(status, dict) and "loadBalancer" in status:
        status["loadBalancer"] = {}
