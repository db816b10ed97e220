"""What the injector admits, the sidecar starts with.

A `proxy.istio.io/config` the webhook accepts reaches the agent as PROXY_CONFIG; the agent reads its
discovery address, termination drain duration and worker count, and its `proxyMetadata` as
environment variables, such as the booleans ISTIO_DELTA_XDS and DISABLE_ENVOY. Before both read them one way, the
webhook let `500us`, `-5s`, `9999999999h` and 99999999999 workers through and the sidecar then
refused to start (or started an Envoy that refused its flags): a pod admitted that never became ready.
`proxyMetadata` may set any of the agent's variables; the injector checks the container with the
agent's own reader (`webhook.sidecarcheck`), and what the agent starts with is a node the control
plane accepts.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from envoy.config.core.v3.base_pb2 import Node
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.agent.run import node_metadata
from discovery.proxy import parse_node
from tests.helpers.injected import agent_options
from tests.helpers.injector import DEFAULT_PARAMS
from webhook.inject import InjectionError, inject_pod
from webhook.sidecarcheck import SidecarWouldNotStart

_UNITS = ["ns", "us", "\u00b5s", "\u03bcs", "ms", "s", "m", "h"]
durations = st.one_of(
    st.builds(
        lambda sign, parts: sign + "".join(parts),
        st.sampled_from(["", "+", "-"]),
        st.lists(
            st.builds(
                lambda whole, fraction, unit: whole + fraction + unit,
                st.from_regex(r"[0-9]{0,22}", fullmatch=True),
                st.from_regex(r"(\.[0-9]{0,4})?", fullmatch=True),
                st.sampled_from(_UNITS),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    st.sampled_from(["0", "-0", "5", "1d", "2562047h47m16.854775807s", "2562047h47m16.854775808s", "9" * 400 + "h"]),
    st.text(max_size=6),
)
workers = st.one_of(
    st.integers(min_value=-2, max_value=2**40), st.sampled_from([2**31 - 1, 2**31, 2**32]), st.text(max_size=3)
)
addresses = st.one_of(
    st.from_regex(r"\[?[a-z0-9.:% -]{0,14}\]?:[0-9]{0,6}", fullmatch=True),
    st.sampled_from(["istiod.istio-system.svc:15012", "[fd00::1]:15012", "10.0.0.1:15012", "fe80::1%eth0:1"]),
)
# Istio's agent reads its boolean variables with Go's strconv.ParseBool.
go_booleans = st.sampled_from(["1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"])
short_text = st.text(max_size=8)
# Any of the agent's own variables, which proxyMetadata may set: good values and anything at all.
metadata = st.fixed_dictionaries(
    {},
    optional={
        "ISTIO_DELTA_XDS": go_booleans | short_text,
        "DISABLE_ENVOY": go_booleans | short_text,
        "SECRET_TTL": durations,
        "CA_ADDR": addresses,
        "INSTANCE_IP": st.sampled_from(["10.1.2.3", "fd00::1", "fe80::1%eth0", "10.1.2"]) | short_text,
        "POD_NAMESPACE": st.sampled_from(["shop", "Shop", "a" * 64]) | short_text,
        "SERVICE_ACCOUNT": st.sampled_from(["web", "web_1", ""]) | short_text,
        "MESHPLANE_STATUS_PORT": workers.map(str),
        "MESHPLANE_LOG_LEVEL": st.sampled_from(["debug", "info", "trace"]) | short_text,
        "MESHPLANE_KEY_ALGORITHM": st.sampled_from(["ecdsa-p256", "rsa-2048", "rsa-1024"]) | short_text,
        "ISTIO_META_LOOPBACK_ADDRESS": st.sampled_from(["127.0.0.1", "::1", "localhost"]) | short_text,
        "PROXY_CONFIG": st.sampled_from(["{}", "[]", '{"concurrency": -1}']) | short_text,
        # these reach the control plane in the node the agent sends
        "POD_NAME": st.sampled_from(["web-0", "web.v1-0", "Web_0", "web~0"]) | short_text,
        "ISTIO_META_CLUSTER_ID": st.sampled_from(["east", '{"a": 1}', "[]"]) | short_text,
        "ISTIO_META_GENERATOR": st.sampled_from(["grpc", '["grpc"]']) | short_text,
        "ISTIO_META_INTERCEPTION_MODE": st.sampled_from(["REDIRECT", "NONE", "TPROXY"]) | short_text,
    },
)
proxy_configs = st.fixed_dictionaries(
    {},
    optional={
        "terminationDrainDuration": durations,
        "concurrency": workers,
        "discoveryAddress": addresses,
        "proxyMetadata": metadata,
    },
)


def test_the_injected_sidecar_of_a_plain_pod_starts() -> None:
    pod = inject_pod(
        {"metadata": {"name": "web-0"}, "spec": {"containers": [{"name": "app", "image": "a"}]}}, DEFAULT_PARAMS
    )
    options = agent_options(pod)
    assert (options.concurrency, options.drain_duration) == (2, 5.0)
    assert options.discovery_address == "istiod.istio-system.svc:15012"


def test_concurrency_zero_and_microseconds_reach_the_agent_as_istio_means_them() -> None:
    config = {"concurrency": 0, "terminationDrainDuration": "1500us", "discoveryAddress": "[fd00::1]:15012"}
    pod = {
        "metadata": {"name": "web-0", "annotations": {"proxy.istio.io/config": json.dumps(config)}},
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }
    options = agent_options(inject_pod(pod, DEFAULT_PARAMS))
    assert (options.concurrency, options.drain_duration, options.discovery_address) == (0, 0.0015, "[fd00::1]:15012")


def test_istio_booleans_in_proxy_metadata_mean_what_they_mean_in_istio() -> None:
    config = {"proxyMetadata": {"ISTIO_DELTA_XDS": "0", "DISABLE_ENVOY": "1"}}
    pod = {
        "metadata": {"name": "web-0", "annotations": {"proxy.istio.io/config": json.dumps(config)}},
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }
    options = agent_options(inject_pod(pod, DEFAULT_PARAMS))
    assert (options.delta_xds, options.proxyless) == (False, True)


@settings(max_examples=300, deadline=None)
@given(config=proxy_configs)
def test_a_proxy_config_the_injector_admits_is_one_the_agent_starts_with(config: dict[str, Any]) -> None:
    pod = {
        "metadata": {"name": "web-0", "annotations": {"proxy.istio.io/config": json.dumps(config)}},
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }
    try:
        injected = inject_pod(copy.deepcopy(pod), DEFAULT_PARAMS)
    except SidecarWouldNotStart as exc:
        assert exc.variable in config["proxyMetadata"], exc
        return
    except InjectionError as exc:
        assert exc.annotation == "proxy.istio.io/config"
        return
    options = agent_options(injected)  # raises OptionsError (the agent's exit 2) for what it cannot start with
    node = Node(id=options.node_id, cluster="web.shop")
    node.metadata.update(node_metadata(options, {"app": "web"}))
    parse_node(node)  # the node it sends: raises NodeError where the control plane would refuse the stream
