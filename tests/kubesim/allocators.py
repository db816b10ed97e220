"""The Service registry's allocators: cluster IPs from the service CIDR and node ports.

A Service gets a cluster IP from `SERVICE_CIDR` (a requested one must be in range and free; one
picked for it is 10.96.0.10 or above, the lower ones, like the API server's 10.96.0.1, being left to
explicit requests) and, for NodePort and LoadBalancer types, a node port per port from `NODE_PORTS`.
Dry runs allocate nothing. Deleting a Service releases both; an update keeps what the old Service
was given.
"""

from __future__ import annotations

import copy
import ipaddress

from tests.kubesim.resources import ResourceType
from tests.kubesim.status import invalid
from tests.kubesim.storage import Obj
from tests.kubesim.validation import invalid_cause

SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
NODE_PORTS = range(30000, 32768)


class ServiceAllocator:
    """The cluster IPs and node ports taken by stored Services."""

    def __init__(self) -> None:
        self.ips: set[ipaddress.IPv4Address] = set()
        self.node_ports: set[int] = set()

    def allocate(self, obj: Obj, resource: ResourceType, *, dry_run: bool) -> None:
        """Fill in `obj`'s clusterIP(s), IP families and node ports; 422 for an IP out of range or taken."""
        spec = obj["spec"]
        name = obj["metadata"]["name"]
        if spec.get("type") == "ExternalName":
            return
        requested = spec.get("clusterIP")
        if requested == "None":
            spec["clusterIPs"] = ["None"]
        else:
            if requested:
                try:
                    ip = ipaddress.IPv4Address(requested)
                except ValueError:
                    raise invalid(
                        resource, name, [invalid_cause("spec.clusterIPs[0]", requested, "must be a valid IP address")]
                    ) from None
                if ip not in SERVICE_CIDR:
                    raise invalid(
                        resource,
                        name,
                        [
                            invalid_cause(
                                "spec.clusterIPs",
                                [requested],
                                f"failed to allocate IP {requested}: the provided IP ({requested}) is not in the "
                                f"valid range. The range of valid IPs is {SERVICE_CIDR}",
                            )
                        ],
                    )
                if ip in self.ips and not dry_run:
                    raise invalid(
                        resource,
                        name,
                        [
                            invalid_cause(
                                "spec.clusterIPs",
                                [requested],
                                f"failed to allocate IP {requested}: provided IP is already allocated",
                            )
                        ],
                    )
            else:
                ip = next(h for h in SERVICE_CIDR.hosts() if int(h) >= int(SERVICE_CIDR[10]) and h not in self.ips)
            if not dry_run:
                self.ips.add(ip)
            spec["clusterIP"] = str(ip)
            spec["clusterIPs"] = [str(ip)]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            for port in spec.get("ports") or []:
                if not port.get("nodePort"):
                    free = next(p for p in NODE_PORTS if p not in self.node_ports)
                    port["nodePort"] = free
                if not dry_run:
                    self.node_ports.add(int(port["nodePort"]))

    def release(self, obj: Obj) -> None:
        """Give back the cluster IPs and node ports of a deleted Service."""
        spec = obj.get("spec") or {}
        for ip in spec.get("clusterIPs") or []:
            if ip != "None":
                self.ips.discard(ipaddress.IPv4Address(ip))
        for port in spec.get("ports") or []:
            self.node_ports.discard(int(port.get("nodePort") or 0))


def keep_allocations(obj: Obj, old: Obj) -> None:
    """On update: what `obj` leaves out of the old Service's cluster IPs, IP families and node ports is kept."""
    spec = obj.setdefault("spec", {})
    old_spec = old.get("spec") or {}
    if isinstance(spec, dict):
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if not spec.get(key) and old_spec.get(key):
                spec[key] = copy.deepcopy(old_spec[key])
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p for p in old_spec.get("ports") or []}
        for port in spec.get("ports") or []:
            prior = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
            if prior is not None and prior.get("nodePort") and not port.get("nodePort"):
                port["nodePort"] = prior["nodePort"]
