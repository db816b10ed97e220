"""A service's endpoints keep addresses and ports apart (`ServiceEndpoints.groups`, one per slice);
what each port serves must be exactly the pairs a service's slices list: an address serves a port
name once, as the first slice (by name) that lists it for that name says, on that slice's number."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.model.endpoints import Endpoint, EndpointAddress, EndpointGroup, Health, ServiceEndpoints, SlicePort
from controlplane.model.registry import Registry
from controlplane.model.store import ConfigStore, ObjectKey


def reference(groups: tuple[EndpointGroup, ...]) -> list[Endpoint]:
    """Every (address, port) pair, worked out one pair at a time, by port name then address."""
    seen: set[tuple[str, str]] = set()
    out: list[Endpoint] = []
    for group in groups:
        for a in group.addresses:
            for port in group.ports:
                if (a.address, port.name) in seen:
                    continue
                seen.add((a.address, port.name))
                out.append(
                    Endpoint(
                        a.address,
                        port.port,
                        port.name,
                        a.health,
                        a.zone,
                        a.node_name,
                        a.pod,
                        a.service_account,
                        a.sidecar,
                    )
                )
    return sorted(out, key=lambda e: (e.port_name, e.address))


address = st.builds(
    EndpointAddress,
    address=st.sampled_from([f"10.0.0.{i}" for i in range(1, 7)]),
    health=st.sampled_from(list(Health)),
    zone=st.sampled_from(["", "a", "b"]),
    node_name=st.just(""),
    pod=st.sampled_from(["", "p"]),
    service_account=st.sampled_from(["", "sa-1", "sa-2"]),
    sidecar=st.booleans(),
)
port = st.builds(SlicePort, name=st.sampled_from(["", "http", "grpc"]), port=st.integers(1, 4))
group = st.builds(
    EndpointGroup,
    ports=st.lists(port, max_size=3).map(tuple),
    addresses=st.lists(address, max_size=5).map(tuple),
)


@settings(max_examples=400, deadline=None)
@given(groups=st.lists(group, max_size=4).map(tuple))
def test_each_port_serves_the_pairs_the_slices_list(groups: tuple[EndpointGroup, ...]) -> None:
    endpoints = ServiceEndpoints(hostname="web.default.svc.cluster.local", groups=groups, revision=1)
    expected = reference(groups)
    assert list(endpoints.endpoints) == expected
    assert endpoints.empty == (not expected)
    assert endpoints.port_names == tuple(sorted({e.port_name for e in expected}))
    for name in (*endpoints.port_names, "absent"):
        view = endpoints.for_port(name)
        pairs = list(zip(view.addresses, view.ports, strict=True))
        assert [(a.zone, a.address) for a, _ in pairs] == sorted((a.zone, a.address) for a, _ in pairs)
        wanted = {e.address: (e.port, e.health, e.sidecar) for e in expected if e.port_name == name}
        assert {a.address: (number, a.health, a.sidecar) for a, number in pairs} == wanted
        assert len(pairs) == len(wanted)
    assert endpoints.service_accounts == {e.service_account for e in expected if e.service_account}


def slice_of(name: str, ports: dict[str, int], ips: list[str]) -> dict[str, object]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": number} for port_name, number in ports.items()],
        "endpoints": [{"addresses": [ip]} for ip in ips],
    }


def test_an_address_in_two_slices_serves_each_port_on_the_first_slices_number() -> None:
    store = ConfigStore()
    registry = Registry(store)
    objects = [
        slice_of("web-a", {"http": 8080}, ["10.1.0.1", "10.1.0.2"]),
        slice_of("web-b", {"http": 9090, "admin": 9901}, ["10.1.0.2", "10.1.0.3"]),
    ]
    store.apply([(ObjectKey.of(o), o) for o in objects])
    endpoints = registry.snapshot().endpoints_for("web.default.svc.cluster.local")
    http = endpoints.for_port("http")
    assert [(a.address, n) for a, n in zip(http.addresses, http.ports, strict=True)] == [
        ("10.1.0.1", 8080),
        ("10.1.0.2", 8080),
        ("10.1.0.3", 9090),
    ]
    admin = endpoints.for_port("admin")
    assert [(a.address, n) for a, n in zip(admin.addresses, admin.ports, strict=True)] == [
        ("10.1.0.2", 9901),
        ("10.1.0.3", 9901),
    ]
