"""`peek_type`: part of a message's wire form, the map and message fields as raw bytes."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

from controlplane.protopeek import peek_type


def test_raw_fields_hold_the_entries_bytes_and_scalars_their_values() -> None:
    real = DeltaDiscoveryRequest(type_url="t", initial_resource_versions={"a": "1", "b": "2"})
    real.node.id = "sidecar~1.2.3.4~p.ns~ns.svc.cluster.local"
    peek = peek_type(
        DeltaDiscoveryRequest,
        ("node", "type_url", "initial_resource_versions"),
        raw=("node", "initial_resource_versions"),
    )
    read = peek.FromString(real.SerializeToString())
    assert read.type_url == "t"
    assert read.node == real.node.SerializeToString()
    assert len(read.initial_resource_versions) == 2


def test_a_message_field_must_be_read_raw() -> None:
    with pytest.raises(ValueError, match=r"DeltaDiscoveryRequest\.node is a message"):
        peek_type(DeltaDiscoveryRequest, ("node",))
