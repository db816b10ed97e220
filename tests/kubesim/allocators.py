"""The Service registry's allocators: cluster IPs from the service CIDR and node ports.

A Service gets a cluster IP from `SERVICE_CIDR` (a requested one must be in range and free; one
picked for it is 10.96.0.10 or above, the lower ones, like the API server's 10.96.0.1, being left to
explicit requests) and, for NodePort and LoadBalancer types, a node port per port from `NODE_PORTS`
(a requested one must be in range and not held by another Service: 422 naming
`spec.ports[i].nodePort`). A node port is picked as the real allocator picks it: a random scan of
the range above its lowest `NODE_PORT_OFFSET` ports, which are left to explicit requests until the
rest is full; a full range is a 500. A LoadBalancer with `allocateLoadBalancerNodePorts: false` is
given no node ports, though the ones it asks for are held. A LoadBalancer with
`externalTrafficPolicy: Local` also gets a `healthCheckNodePort` from the same pool (the requested
one, else a free one); as in the registry, failing to get it is a 500, not a validation error. As
the Service registry does, a create allocates before validation (a validating webhook sees the
allocated values) and holds what it allocated from that moment, in the same step as choosing it,
so that concurrent writes never pick the same value; a write that fails afterwards gives it back
(`revert`). Dry runs hold nothing; like the real server's, a dry-run create checks that a requested
node port is free but not that a requested cluster IP is. Deleting a Service releases all of it.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.kubesim.resources import ResourceType
from tests.kubesim.status import ApiError, invalid
from tests.kubesim.storage import Obj
from tests.kubesim.validation import invalid_cause

SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
NODE_PORTS = range(30000, 32768)
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")


def _range_offset(size: int) -> int:
    """How many ports at the bottom of a node port range of `size` random picks leave to explicit requests.

    min(max(16, size / 32), 128); none for a range of 16 or fewer. They are picked only once the
    rest of the range is full.
    """
    if size <= 16:
        return 0
    return min(max(16, size // 32), 128)


NODE_PORT_OFFSET = _range_offset(len(NODE_PORTS))


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


def _is_port_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _externally_accessible(obj: Obj) -> bool:
    spec = _spec(obj)
    kind = spec.get("type", "ClusterIP")
    return kind in NODE_PORT_TYPES or (kind == "ClusterIP" and bool(spec.get("externalIPs")))


class ServiceAllocator:
    """The cluster IPs and node ports taken by stored Services."""

    def __init__(self) -> None:
        self.ips: set[ipaddress.IPv4Address] = set()
        self.node_ports: set[int] = set()

    # -- create ---------------------------------------------------------------------------------
    def allocate(self, obj: Obj, resource: ResourceType, *, hold: bool, check_ip_taken: bool = True) -> Allocation:
        """Fill in a new Service's clusterIP(s), IP families, node ports and health check node port.

        What it takes; with `hold`, held from now on (to `commit` once the Service is written, or
        `revert`). 422 for a cluster IP or node port out of range or taken, 500 for a node port or
        health check node port that cannot be had.
        """
        allocation = Allocation()
        spec = obj["spec"]
        name = str(obj["metadata"]["name"])
        if spec.get("type") == "ExternalName":
            return allocation
        requested = spec.get("clusterIP")
        if requested == "None":
            spec["clusterIPs"] = ["None"]
        else:
            ip = self._cluster_ip(requested, name, resource, check_taken=check_ip_taken)
            allocation.ips.add(ip)
            spec["clusterIP"] = str(ip)
            spec["clusterIPs"] = [str(ip)]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        if needs_node_ports(obj):
            allocation.node_ports = self._node_ports(obj, resource, kept=set())
        if needs_health_check(obj):
            allocation.node_ports.add(self._health_check_port(obj, resource, taken=allocation.node_ports))
        if hold:
            self._hold(allocation)
        return allocation

    # -- update ---------------------------------------------------------------------------------
    def allocate_update(self, obj: Obj, old: Obj, resource: ResourceType, *, hold: bool) -> Allocation:
        """What updating `old` to `obj` allocates (filled into `obj`) and releases; 422 for one out of range or taken.

        With `hold`, what it allocates is held from now on (to `commit` when the update is written, or
        `revert`); what it releases is given back only by `commit`.
        """
        allocation = Allocation()
        name = str(obj["metadata"]["name"])
        spec = _spec(obj)
        if not needs_cluster_ip(old) and needs_cluster_ip(obj) and spec.get("clusterIP") != "None":
            ip = self._cluster_ip(spec.get("clusterIP"), name, resource, check_taken=True)
            allocation.ips.add(ip)
            spec["clusterIP"] = str(ip)
            spec["clusterIPs"] = [str(ip)]
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        elif needs_cluster_ip(old) and not needs_cluster_ip(obj):
            allocation.released_ips |= _addresses(_spec(old).get("clusterIPs") or [])
        held = node_ports(old)
        if needs_node_ports(obj):
            allocation.node_ports = self._node_ports(obj, resource, kept=held)
            allocation.released_node_ports = held - node_ports(obj)
        else:
            allocation.released_node_ports = held
        self._update_health_check(obj, old, resource, allocation)
        if hold:
            self._hold(allocation)
        return allocation

    def _update_health_check(self, obj: Obj, old: Obj, resource: ResourceType, allocation: Allocation) -> None:
        """A Service starting to need a health check node port gets one; one no longer needing it gives it back.

        While it needs one throughout, the port stays (validation refuses a change).
        """
        needed, needs = needs_health_check(old), needs_health_check(obj)
        if needs and not needed:
            allocation.node_ports.add(self._health_check_port(obj, resource, taken=allocation.node_ports))
        elif needed and not needs and health_check_port(old):
            allocation.released_node_ports.add(health_check_port(old))

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

    # -- the pools ------------------------------------------------------------------------------
    def _cluster_ip(
        self, requested: Any, name: str, resource: ResourceType, *, check_taken: bool
    ) -> ipaddress.IPv4Address:
        """The requested cluster IP when valid and free, or the next free one when none is requested."""
        if not requested:
            return next(h for h in SERVICE_CIDR.hosts() if int(h) >= int(SERVICE_CIDR[10]) and h not in self.ips)
        try:
            ip = ipaddress.IPv4Address(requested)
        except ValueError:
            raise invalid(
                resource, name, [invalid_cause("spec.clusterIPs[0]", requested, "must be a valid IP address")]
            ) from None
        if ip not in SERVICE_CIDR:
            detail = (
                f"failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. "
                f"The range of valid IPs is {SERVICE_CIDR}"
            )
            raise invalid(resource, name, [invalid_cause("spec.clusterIPs", [requested], detail)])
        if check_taken and ip in self.ips:
            detail = f"failed to allocate IP {requested}: provided IP is already allocated"
            raise invalid(resource, name, [invalid_cause("spec.clusterIPs", [requested], detail)])
        return ip

    def _node_ports(self, obj: Obj, resource: ResourceType, *, kept: set[int]) -> set[int]:
        """Check the requested node ports of `obj` and fill in the missing ones; the ports newly taken.

        A port in `kept` (the Service's own) is not taken again; one number may serve several ports of
        the Service. The first port out of range or held elsewhere is a 422 naming it.
        """
        name = str(obj["metadata"]["name"])
        taken: set[int] = set()
        for i, port in enumerate(_ports(obj)):
            requested = port.get("nodePort")
            if not requested and not allocates_node_ports(obj):
                continue  # allocateLoadBalancerNodePorts: false
            if not requested:
                free = self._free_node_port(taken)
                if free is None:
                    raise _internal_error("failed to allocate a nodePort: range is full")
                port["nodePort"] = free
                taken.add(free)
            elif not _is_port_number(requested) or requested not in NODE_PORTS:
                detail = (
                    "provided port is not in the valid range. The range of valid ports is "
                    f"{NODE_PORTS.start}-{NODE_PORTS.stop - 1}"
                )
                raise _node_port_invalid(resource, name, i, requested, detail)
            elif requested in kept or requested in taken:
                continue
            elif requested in self.node_ports:
                raise _node_port_invalid(resource, name, i, requested, "provided port is already allocated")
            else:
                taken.add(requested)
        return taken

    def _free_node_port(self, taken: set[int]) -> int | None:
        """A node port neither held nor in `taken`, picked at random as the real allocator picks; None when full.

        A scan from a random start of the ports above the lowest `NODE_PORT_OFFSET` (wrapping round),
        then, only when all of those are held, likewise of the lowest ones.
        """
        for band in (NODE_PORTS[NODE_PORT_OFFSET:], NODE_PORTS[:NODE_PORT_OFFSET]):
            start = random.randrange(len(band)) if band else 0
            for i in range(len(band)):
                port = band[(start + i) % len(band)]
                if port not in self.node_ports and port not in taken:
                    return port
        return None

    def _health_check_port(self, obj: Obj, resource: ResourceType, *, taken: set[int]) -> int:
        """The requested `healthCheckNodePort` when in range and free, else a free node port (filled in).

        As in the registry, where it is allocated before validation, a requested port that cannot be
        had is a 500 (an internal error), not a 422; `taken` are the ports this write takes already.
        """
        requested = _spec(obj).get("healthCheckNodePort")
        if not requested:
            free = self._free_node_port(taken)
            if free is None:
                raise _internal_error("failed to allocate a HealthCheck NodePort 0: range is full")
            obj["spec"]["healthCheckNodePort"] = free
            return free
        if not _is_port_number(requested) or requested not in NODE_PORTS:
            detail = (
                "provided port is not in the valid range. The range of valid ports is "
                f"{NODE_PORTS.start}-{NODE_PORTS.stop - 1}"
            )
            raise _health_check_failure(requested, detail)
        if requested in self.node_ports or requested in taken:
            raise _health_check_failure(requested, "provided port is already allocated")
        return int(requested)


def _internal_error(message: str) -> ApiError:
    return ApiError(500, f"Internal error occurred: {message}", details={"causes": [{"message": message}]})


def _health_check_failure(port: Any, detail: str) -> ApiError:
    return _internal_error(f"failed to allocate requested HealthCheck NodePort {port}: {detail}")


def _node_port_invalid(resource: ResourceType, name: str, index: int, value: Any, detail: str) -> ApiError:
    return invalid(resource, name, [invalid_cause(f"spec.ports[{index}].nodePort", value, detail)])


def _addresses(ips: Iterable[Any]) -> set[ipaddress.IPv4Address]:
    found: set[ipaddress.IPv4Address] = set()
    for ip in ips:
        try:
            found.add(ipaddress.IPv4Address(ip))
        except ValueError:
            continue  # "None" (headless), or nothing the allocator handed out
    return found


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
