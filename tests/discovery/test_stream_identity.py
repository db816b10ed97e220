"""Whose identity may open a proxy's xDS stream on the secure port, and how big its node may be
(`discovery.stream.check_identity`, `check_node_size`): the decisions alone; `test_secure_port.py`
takes them over TLS."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest
from envoy.config.core.v3 import base_pb2

from discovery.connection import StreamLimits
from discovery.proxy import Proxy, parse_node
from discovery.stream import NO_IDENTITY, StreamRefused, check_identity, check_node_size
from tests.discovery.harness import node

WEB = parse_node(node(pod="web-1", ns="shop", SERVICE_ACCOUNT="web"))
MINE = "spiffe://cluster.local/ns/shop/sa/web"


def refusal(proxy: Proxy, identities: Sequence[str]) -> StreamRefused:
    with pytest.raises(StreamRefused) as info:
        check_identity(proxy, identities)
    return info.value


def test_the_identity_naming_the_nodes_namespace_and_service_account_is_the_callers() -> None:
    assert check_identity(WEB, [MINE]) == MINE
    assert check_identity(WEB, ["spiffe://cluster.local/ns/shop/sa/other", MINE]) == MINE


@pytest.mark.parametrize(
    "identity",
    [
        "spiffe://cluster.local/ns/shop/sa/web-admin",  # starts with the node's service account
        "spiffe://cluster.local/ns/shop/sa/we",
        "spiffe://cluster.local/ns/shop-2/sa/web",
        "spiffe://cluster.local/ns/web/sa/shop",  # namespace and service account swapped
        "spiffe://cluster.local/ns/shop/sa/web/extra",
        "spiffe://cluster.local/ns/shop/sa",
        "spiffe://cluster.local/xx/shop/sa/web",
        "spiffe://cluster.local/ns/shop/xx/web",
    ],
)
def test_any_other_identity_is_refused_naming_it_and_the_node(identity: str) -> None:
    refused = refusal(WEB, [identity])
    assert refused.code is grpc.StatusCode.PERMISSION_DENIED
    assert refused.details == (
        f"client certificate identity {identity} does not match the node's namespace 'shop' and service account 'web'"
    )


def test_a_certificate_with_several_identities_none_of_them_the_nodes_is_refused_naming_all() -> None:
    others = ["spiffe://cluster.local/ns/shop/sa/cart", "spiffe://cluster.local/ns/shop/sa/db"]
    assert refusal(WEB, others).details.startswith(f"client certificate identity {others[0]}, {others[1]} does ")


def test_no_identity_or_no_service_account_is_refused() -> None:
    refused = refusal(WEB, [])
    assert (refused.code, refused.details) == (grpc.StatusCode.UNAUTHENTICATED, NO_IDENTITY)
    anonymous = parse_node(node(pod="web-1", ns="shop"))
    refused = refusal(anonymous, [MINE])
    assert (refused.code, refused.details) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "node.metadata.SERVICE_ACCOUNT is required on the secure xDS port",
    )


def test_a_node_over_its_limits_is_refused_naming_the_field_and_the_limit() -> None:
    limits = StreamLimits(node_id_bytes=40, node_metadata_bytes=200)
    check_node_size(None, limits)  # requests after the first carry no node
    fits = node(pod="a", ns="b")
    check_node_size(fits, limits)
    long_id = base_pb2.Node(id="x" * 41)
    with pytest.raises(StreamRefused) as info:
        check_node_size(long_id, limits)
    assert (info.value.code, info.value.details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "node.id is 41 characters; the limit is 40",
    )
    check_node_size(base_pb2.Node(id="x" * 40), limits)
    big = node(pod="a", ns="b", LABELS={"k": "v" * 200})
    with pytest.raises(StreamRefused) as info:
        check_node_size(big, limits)
    size = big.metadata.ByteSize()
    assert (info.value.code, info.value.details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"node.metadata is {size} bytes serialized; the limit is 200 bytes "
        "(send only the Istio metadata keys the control plane reads)",
    )
    exact = next(
        n for k in range(200) if (n := node(pod="a", ns="b", LABELS={"k": "v" * k})).metadata.ByteSize() == 200
    )
    check_node_size(exact, limits)  # at the limit: accepted
