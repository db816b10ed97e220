"""The everyday-shape fast path of EndpointSlice parsing agrees with the field-by-field path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controlplane.model import endpoints
from controlplane.model.fields import ObjectError

values = st.one_of(st.none(), st.booleans(), st.integers(-1, 2), st.text(max_size=3), st.just("10.0.0.1"))
addresses = st.one_of(
    st.just("10.1.2.3"),
    st.just("010.1.2.3"),
    st.just("10.1.2.3\n"),
    st.just("::1"),
    st.just("fe80::0:1"),
    st.just("not-an-ip"),
    st.integers(),
)
endpoint = st.fixed_dictionaries(
    {"addresses": st.one_of(st.lists(addresses, max_size=2), values)},
    optional={
        "conditions": st.one_of(
            st.fixed_dictionaries({}, optional={"ready": values, "serving": values, "terminating": values}), values
        ),
        "targetRef": st.one_of(
            st.fixed_dictionaries({}, optional={"kind": st.sampled_from(["Pod", "Node", 3]), "name": values}),
            values,
        ),
        "zone": values,
        "nodeName": values,
        "hints": st.just({}),
    },
)


def parse(raw: Any, *, address_type: str = "IPv4") -> Any:
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "s", "namespace": "ns", "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": address_type,
        "endpoints": [raw],
        "ports": [{"name": "http", "port": 80}],
    }
    try:
        return endpoints.EndpointSlice.from_object(slice_)
    except ObjectError as exc:
        return ("error", exc.field, exc.message)


@settings(max_examples=400, deadline=None)
@given(endpoint)
@example({"addresses": ["10.1.2.3"], "conditions": False})  # falsy, but not a mapping: refused, naming it
@example({"addresses": ["10.1.2.3"], "targetRef": 0})
@example({"addresses": ["10.1.2.3"], "conditions": {"ready": 0}})  # 0 == False, but not a boolean
@example({"addresses": ["10.1.2.3"], "conditions": {"serving": 1.0}})
def test_fast_path_equals_the_precise_path(raw: Any) -> None:
    fast = parse(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(endpoints, "_plain_endpoint", lambda _: None)
        precise = parse(raw)
    assert fast == precise


def test_an_ordinary_endpoint_takes_the_fast_path() -> None:
    raw = {"addresses": ["10.0.0.7"], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": "p"}}
    assert endpoints._plain_endpoint(raw) == endpoints.SliceEndpoint(
        address="10.0.0.7", ready=True, serving=True, terminating=False, zone="", node_name="", pod="p"
    )


@pytest.mark.parametrize(
    ("address_type", "addresses", "refused"),
    [
        ("IPv4", ["fe80::1"], ("endpoints[0].addresses[0]", "'fe80::1' is not an IPv4 address")),
        ("IPv4", ["10.0.0.1", "::1"], ("endpoints[0].addresses[1]", "'::1' is not an IPv4 address")),
        ("IPv6", ["10.0.0.1"], ("endpoints[0].addresses[0]", "'10.0.0.1' is not an IPv6 address")),
        # A zone: no Kubernetes address has one, and Envoy refuses the assignment when no interface has its name.
        ("IPv6", ["fd00::1%eth9"], ("endpoints[0].addresses[0]", "'fd00::1%eth9' is not an IP address: a zone")),
        ("IPv6", ["fd00::1"], None),
        ("IPv4", ["10.0.0.1"], None),
    ],
)
def test_an_address_of_the_other_family_than_the_slices_is_refused_as_the_api_server_refuses_it(
    address_type: str, addresses: list[str], refused: tuple[str, str] | None
) -> None:
    parsed = parse({"addresses": addresses}, address_type=address_type)
    if refused is None:
        assert [e.address for e in parsed.endpoints] == addresses[:1]
    else:
        assert parsed[:2] == ("error", refused[0]) and parsed[2].startswith(refused[1])
