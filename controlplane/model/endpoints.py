"""Endpoints: the addresses behind a service, from `discovery.k8s.io/v1` EndpointSlices.

A slice belongs to the service named by its `kubernetes.io/service-name` label in its namespace.
Each endpoint address serves the slice's ports; a service port matches the slice port with the
same name (Kubernetes names slice ports after service ports). Health follows the slice
conditions: ready → HEALTHY, terminating but still serving → DRAINING, otherwise UNHEALTHY. A
missing `ready`/`serving` condition means true, a missing `terminating` means false (the
EndpointSlice API's rules).

Only IPv4/IPv6 slices are used; FQDN slices are accepted and ignored. For each endpoint only the
first address is used, as the API asks of consumers.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from controlplane.model import fields as f

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class Health(enum.Enum):
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DRAINING = "DRAINING"


@dataclass(frozen=True, kw_only=True)
class SlicePort:
    name: str
    port: int


@dataclass(frozen=True, kw_only=True)
class SliceEndpoint:
    address: str
    ready: bool
    serving: bool
    terminating: bool
    zone: str
    node_name: str
    pod: str  # targetRef name when it refers to a Pod, else ""

    @property
    def health(self) -> Health:
        if self.ready and not self.terminating:
            return Health.HEALTHY
        if self.terminating and self.serving:
            return Health.DRAINING
        return Health.UNHEALTHY


@dataclass(frozen=True, kw_only=True)
class EndpointSlice:
    name: str
    namespace: str
    service_name: str  # "" when the slice has no service-name label (then it is not used)
    address_type: str
    ports: tuple[SlicePort, ...]
    endpoints: tuple[SliceEndpoint, ...]

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> EndpointSlice:
        """Parse a discovery.k8s.io/v1 EndpointSlice. Raises `ObjectError` naming the bad field."""
        namespace, name = f.metadata(obj)
        meta = f.mapping(obj.get("metadata"), "metadata")
        labels = f.labels(meta.get("labels"), "metadata.labels")
        address_type = f.string(obj.get("addressType"), "addressType")
        if address_type not in ("IPv4", "IPv6", "FQDN"):
            raise f.ObjectError("addressType", f"{address_type!r} is not IPv4, IPv6 or FQDN")
        ports: list[SlicePort] = []
        for index, raw in enumerate(f.sequence(obj.get("ports"), "ports")):
            path = f"ports[{index}]"
            item = f.mapping(raw, path)
            port_name = f.string(item.get("name"), f"{path}.name", default="")
            ports.append(SlicePort(name=port_name, port=f.port_number(item.get("port"), f"{path}.port")))
        endpoints: list[SliceEndpoint] = []
        for index, raw in enumerate(f.sequence(obj.get("endpoints"), "endpoints")):
            quick = _plain_endpoint(raw) if address_type == "IPv4" else None
            if quick is not None:
                endpoints.append(quick)
                continue
            path = f"endpoints[{index}]"
            item = f.mapping(raw, path)
            addresses = f.sequence(item.get("addresses"), f"{path}.addresses")
            if not addresses:
                raise f.ObjectError(f"{path}.addresses", "must list at least one address")
            if address_type == "FQDN":
                address = f.string(addresses[0], f"{path}.addresses[0]")
            else:
                family = 4 if address_type == "IPv4" else 6
                address = _address_of(family, addresses[0], f"{path}.addresses[0]")
                for extra_index, extra in enumerate(addresses[1:], start=1):
                    _address_of(family, extra, f"{path}.addresses[{extra_index}]")
            conditions = f.mapping(item.get("conditions"), f"{path}.conditions")
            ready = f.boolean(conditions.get("ready"), f"{path}.conditions.ready", default=True)
            serving = f.boolean(conditions.get("serving"), f"{path}.conditions.serving", default=ready)
            terminating = f.boolean(conditions.get("terminating"), f"{path}.conditions.terminating", default=False)
            target = f.mapping(item.get("targetRef"), f"{path}.targetRef")
            target_kind = f.string(target.get("kind"), f"{path}.targetRef.kind", default="")
            target_name = f.string(target.get("name"), f"{path}.targetRef.name", default="")
            endpoints.append(
                SliceEndpoint(
                    address=address,
                    ready=ready,
                    serving=serving,
                    terminating=terminating,
                    zone=f.string(item.get("zone"), f"{path}.zone", default=""),
                    node_name=f.string(item.get("nodeName"), f"{path}.nodeName", default=""),
                    pod=target_name if target_kind == "Pod" else "",
                )
            )
        return cls(
            name=name,
            namespace=namespace,
            service_name=labels.get(SERVICE_NAME_LABEL, ""),
            address_type=address_type,
            ports=tuple(ports),
            endpoints=tuple(endpoints),
        )


_PLAIN_KEYS = frozenset({"addresses", "conditions", "targetRef", "zone", "nodeName", "hostname", "deprecatedTopology"})


def _address_of(family: int, value: Any, path: str) -> str:
    """An address of a slice whose `addressType` is IPv`family`: the API server refuses the other family."""
    address = f.ip_address(value, path)
    if ipaddress.ip_address(address).version != family:
        raise f.ObjectError(path, f"{address!r} is not an IPv{family} address, as the slice's addressType says")
    return address


def _plain_endpoint(raw: Any) -> SliceEndpoint | None:
    """The endpoint when it has the everyday shape (one canonical IPv4 address, boolean conditions,
    string fields); None sends it through the field-by-field path, which names what is wrong.
    A slice holds up to 1,000 endpoints and a service many slices: this keeps parsing cheap."""
    if type(raw) is not dict or not raw.keys() <= _PLAIN_KEYS:
        return None
    addresses = raw.get("addresses")
    if type(addresses) is not list or len(addresses) != 1 or type(addresses[0]) is not str:
        return None
    address = addresses[0]
    if f.canonical_ipv4(address) is None:
        return None
    conditions = raw.get("conditions")
    target = raw.get("targetRef")
    conditions = {} if conditions is None else conditions
    target = {} if target is None else target
    if type(conditions) is not dict or type(target) is not dict:
        return None
    ready, serving, terminating = conditions.get("ready"), conditions.get("serving"), conditions.get("terminating")
    if not all(v is None or v is True or v is False for v in (ready, serving, terminating)):
        return None  # by identity: 0 == False and 1 == True, and the API server refuses numbers here
    zone, node_name = raw.get("zone", ""), raw.get("nodeName", "")
    kind, name = target.get("kind", ""), target.get("name", "")
    if not all(type(v) is str for v in (zone, node_name, kind, name)):
        return None
    ready = ready is not False
    return SliceEndpoint(
        address=address,
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=terminating is True,
        zone=zone,
        node_name=node_name,
        pod=name if kind == "Pod" else "",
    )


class EndpointAddress(NamedTuple):
    """One address behind a service, joined with what the mesh knows of its pod. It serves every port
    of its slice: a service keeps addresses and ports apart, as its slices do, so 1,000 addresses on
    100 ports are 1,000 of these and not 100,000 pairs to make and compare at every change."""

    address: str
    health: Health
    zone: str
    node_name: str
    pod: str  # "" when no pod is known for the address
    service_account: str  # "" when no pod is known
    sidecar: bool  # the pod runs a mesh sidecar, so it accepts mesh mTLS


class EndpointGroup(NamedTuple):
    """The addresses of one EndpointSlice and the ports they all serve (each name once)."""

    ports: tuple[SlicePort, ...]
    addresses: tuple[EndpointAddress, ...]


class PortEndpoints(NamedTuple):
    """The endpoints of one port name: each address, by zone then address, and its port number there
    (a port name may have another number in another slice)."""

    addresses: tuple[EndpointAddress, ...]
    ports: tuple[int, ...]


NO_ENDPOINTS = PortEndpoints(addresses=(), ports=())


class Endpoint(NamedTuple):
    """One address serving one (named) port: what `ServiceEndpoints.endpoints` lists for reading."""

    address: str
    port: int
    port_name: str
    health: Health
    zone: str
    node_name: str
    pod: str
    service_account: str
    sidecar: bool


@dataclass(frozen=True, kw_only=True)
class ServiceEndpoints:
    """All endpoints of one service hostname. `revision` changes whenever the endpoints do.

    `groups` are the service's slices in name order, as they list their addresses. In each port's
    view an address serves the port name once, as the first slice (and its first entry) listing it
    for that name says. Views per port are worked out on first use and kept (the value is immutable)."""

    hostname: str
    groups: tuple[EndpointGroup, ...]
    revision: int

    @classmethod
    def none_for(cls, hostname: str) -> ServiceEndpoints:
        """What a service without endpoints has (revision 0)."""
        return cls(hostname=hostname, groups=(), revision=0)

    @functools.cached_property
    def _layout(self) -> Mapping[str, tuple[tuple[int, int], ...]]:
        """Per port name, the groups serving it and the number there: ((group index, port), ...)."""
        layout: dict[str, list[tuple[int, int]]] = {}
        for index, group in enumerate(self.groups):
            if not group.addresses:
                continue
            for port in group.ports:
                served = layout.setdefault(port.name, [])
                if not served or served[-1][0] != index:
                    served.append((index, port.port))
        return {name: tuple(served) for name, served in layout.items()}

    @property
    def port_names(self) -> tuple[str, ...]:
        """The port names that have at least one endpoint, sorted."""
        return tuple(sorted(self._layout))

    @property
    def empty(self) -> bool:
        """No address serves any port."""
        return not self._layout

    def for_port(self, port_name: str) -> PortEndpoints:
        """The endpoints of `port_name` (none when no slice serves it)."""
        found = self._per_port.get(port_name)
        if found is None:
            layout = self._layout.get(port_name)
            if layout is None:
                return NO_ENDPOINTS
            addresses, groups = self._merged(tuple(index for index, _ in layout))
            if len(layout) == 1:
                ports = (layout[0][1],) * len(addresses)
            else:
                number = dict(layout)
                ports = tuple(number[index] for index in groups)
            found = self._per_port[port_name] = PortEndpoints(addresses=addresses, ports=ports)
        return found

    @functools.cached_property
    def _per_port(self) -> dict[str, PortEndpoints]:
        return {}

    @functools.cached_property
    def _merges(self) -> dict[tuple[int, ...], tuple[tuple[EndpointAddress, ...], tuple[int, ...]]]:
        return {}

    def _merged(self, indices: tuple[int, ...]) -> tuple[tuple[EndpointAddress, ...], tuple[int, ...]]:
        """The addresses of the groups `indices`, each once (the first listing wins), by zone then address,
        with the group each came from. Ports served by the same groups share one merge: a service's 100
        ports on one slice sort its addresses once."""
        found = self._merges.get(indices)
        if found is None:
            seen: set[str] = set()
            picked: list[tuple[str, str, int, EndpointAddress]] = []
            for index in indices:
                for a in self.groups[index].addresses:
                    if a.address not in seen:
                        seen.add(a.address)
                        picked.append((a.zone, a.address, index, a))
            picked.sort(key=_ZONE_AND_ADDRESS)
            found = self._merges[indices] = (tuple(p[3] for p in picked), tuple(p[2] for p in picked))
        return found

    @functools.cached_property
    def service_accounts(self) -> frozenset[str]:
        """The service accounts of the pods behind any port."""
        merges = {tuple(index for index, _ in layout) for layout in self._layout.values()}
        return frozenset(a.service_account for m in merges for a in self._merged(m)[0] if a.service_account)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every (address, port) pair, by port name then address: for reading (debug output, tests), not
        for work per change (1,000 addresses on 100 ports are 100,000 pairs)."""
        out: list[Endpoint] = []
        for name in self.port_names:
            view = self.for_port(name)
            pairs = sorted(zip(view.addresses, view.ports, strict=True), key=lambda pair: pair[0].address)
            out.extend(
                Endpoint(a.address, port, name, a.health, a.zone, a.node_name, a.pod, a.service_account, a.sidecar)
                for a, port in pairs
            )
        return tuple(out)


_ZONE_AND_ADDRESS = operator.itemgetter(0, 1)
