"""EDS writes each ClusterLoadAssignment byte by byte (`discovery.generators.eds.load_assignment`):
the bytes must be exactly those the protobuf runtime writes for the same message, for any endpoints."""

from __future__ import annotations

import ipaddress
from itertools import groupby
from typing import NamedTuple

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import struct_pb2, wrappers_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.model.endpoints import EndpointAddress, Health, PortEndpoints
from discovery.generators import common as c
from discovery.generators.eds import load_assignment

HEALTH = {
    Health.HEALTHY: health_check_pb2.HEALTHY,
    Health.UNHEALTHY: health_check_pb2.UNHEALTHY,
    Health.DRAINING: health_check_pb2.DRAINING,
}


class Pair(NamedTuple):
    address: EndpointAddress
    port: int


def ordered(pairs: list[Pair]) -> PortEndpoints:
    """The endpoints as a service keeps them for a port: by zone, then address."""
    pairs = sorted(pairs, key=lambda p: (p.address.zone, p.address.address))
    return PortEndpoints(addresses=tuple(p.address for p in pairs), ports=tuple(p.port for p in pairs))


def reference(name: str, endpoints: PortEndpoints) -> bytes:
    """The same assignment built as messages and serialized by the protobuf runtime."""

    def lb(pair: tuple[EndpointAddress, int]) -> endpoint_components_pb2.LbEndpoint:
        ep, port = pair
        out = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(ep.address, port)),
            health_status=HEALTH[ep.health],
            load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
        )
        if ep.sidecar:
            match = struct_pb2.Struct()
            match.update({c.TLS_MODE_KEY: "istio"})
            out.metadata.filter_metadata[c.TLS_MATCH].CopyFrom(match)
        return out

    pairs = sorted(zip(endpoints.addresses, endpoints.ports, strict=True), key=lambda p: (p[0].zone, p[0].address))
    by_zone = groupby(pairs, key=lambda p: p[0].zone)
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(zone=zone),
                lb_endpoints=[lb(ep) for ep in group],
                load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
            )
            for zone, group in by_zone
        ],
    ).SerializeToString(deterministic=True)


addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: ipaddress.IPv6Address(a).compressed),
)
pairs = st.builds(
    Pair,
    address=st.builds(
        EndpointAddress,
        address=addresses,
        health=st.sampled_from(list(Health)),
        zone=st.sampled_from(["", "us-east-1a", "zone-" + "z" * 200]),  # a long zone: a two-byte length
        node_name=st.just(""),
        pod=st.just(""),
        service_account=st.just(""),
        sidecar=st.booleans(),
    ),
    port=st.integers(min_value=0, max_value=65535),  # one slice's number may differ from another's
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["outbound|80||a.b.svc.cluster.local", "outbound|8080||" + "x" * 300 + ".svc", ""]),
    eps=st.lists(pairs, max_size=40, unique_by=lambda p: p.address.address).map(ordered),
)
def test_an_assignment_is_written_as_the_protobuf_runtime_writes_it(name: str, eps: PortEndpoints) -> None:
    assert load_assignment(name, eps) == reference(name, eps)


def test_a_large_assignment_parses_back_to_its_endpoints() -> None:
    eps = ordered(
        [
            Pair(
                EndpointAddress(
                    address=f"10.0.{i // 250}.{i % 250 + 1}",
                    health=Health.HEALTHY,
                    zone="",
                    node_name="",
                    pod="",
                    service_account="",
                    sidecar=i % 2 == 0,
                ),
                port=9000 + i % 3,
            )
            for i in range(3000)
        ]
    )
    written = load_assignment("outbound|80||big.ns.svc.cluster.local", eps)
    assert written == reference("outbound|80||big.ns.svc.cluster.local", eps)
    parsed = endpoint_pb2.ClusterLoadAssignment.FromString(written)
    (locality,) = parsed.endpoints
    assert len(locality.lb_endpoints) == 3000
    assert sum(1 for lb in locality.lb_endpoints if lb.metadata.filter_metadata) == 1500
