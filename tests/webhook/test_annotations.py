"""Validation of every injection annotation: good values take effect, bad ones are rejected with an
`InjectionError` that names the annotation and the value."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.injector import DEFAULT_PARAMS
from webhook.inject import InjectionError, inject_pod
from webhook.validate import parse_quantity

PARAMS = DEFAULT_PARAMS


def inject(annotations: dict[str, str]) -> dict[str, Any]:
    pod = {
        "metadata": {"name": "p", "annotations": dict(annotations)},
        "spec": {"containers": [{"name": "app", "image": "a", "readinessProbe": {"httpGet": {"port": 80}}}]},
    }
    return inject_pod(copy.deepcopy(pod), PARAMS)


def proxy(out: dict[str, Any]) -> dict[str, Any]:
    spec = out["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "istio-proxy")


def init_args(out: dict[str, Any]) -> dict[str, str]:
    args = out["spec"]["initContainers"][0]["args"]
    return {args[i]: args[i + 1] for i in range(1, len(args) - 1, 2) if args[i].startswith("-")}


@pytest.mark.parametrize(
    ("annotation", "value", "problem"),
    [
        ("sidecar.istio.io/proxyCPU", "lots", "not a Kubernetes quantity"),
        ("sidecar.istio.io/proxyCPU", "-100m", "must not be negative"),
        ("sidecar.istio.io/proxyMemory", "128MB", "not a Kubernetes quantity"),
        ("sidecar.istio.io/proxyMemory", "", "not a Kubernetes quantity"),
        ("sidecar.istio.io/proxyCPULimit", "2 cores", "not a Kubernetes quantity"),
        ("sidecar.istio.io/proxyMemoryLimit", "1.5.0Gi", "not a Kubernetes quantity"),
        ("sidecar.istio.io/proxyImage", "has space:1", "not a container image reference"),
        ("sidecar.istio.io/proxyImage", "", "not a container image reference"),
        # A final newline: `$` matches before it, so each of these was let through.
        ("sidecar.istio.io/proxyImage", "docker.io/istio/proxyv2:1.28.0\n", "not a container image reference"),
        ("sidecar.istio.io/proxyCPU", "100m\n", "not a Kubernetes quantity"),
        ("sidecar.istio.io/componentLogLevel", "misc\n:error", "is not component:level"),
        ("proxy.istio.io/config", 'drainDuration: "45s\\n"', "drainDuration: must be a duration"),
        # Digits of other scripts: Python's isdigit and `\d` take them (int() reads "\u0668\u0660" as 80 and refuses
        # "²"); Kubernetes and Istio read ASCII digits only.
        ("sidecar.istio.io/proxyCPU", "\u0661\u0660\u0660m", "not a Kubernetes quantity"),
        ("sidecar.istio.io/userVolume", '{"certs": {"emptyDir": {"sizeLimit": NaN}}}', "NaN is not a JSON value"),
        ("status.sidecar.istio.io/port", "\u0661\u0665\u0660\u0662\u0661", "port number"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "\u0668\u0660", "not a port number"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "²", "not a port number"),
        ("readiness.status.sidecar.istio.io/periodSeconds", "²", "from 1 to 2147483647"),
        ("proxy.istio.io/config", 'drainDuration: "\u0664\u0665s"', "drainDuration: must be a duration"),
        ("sidecar.istio.io/interceptionMode", "redirect", "use one of REDIRECT, NONE"),
        # Istio's third mode: meshplane's istio-init would refuse it and the pod never start
        ("sidecar.istio.io/interceptionMode", "TPROXY", "TPROXY is not supported"),
        ("proxy.istio.io/config", "interceptionMode: TPROXY", "interceptionMode: TPROXY is not supported"),
        ("sidecar.istio.io/rewriteAppHTTPProbers", "yes", 'use "true" or "false"'),
        ("sidecar.istio.io/nativeSidecar", "False", 'use "true" or "false"'),
        ("sidecar.istio.io/logLevel", "verbose", "use one of trace, debug"),
        ("sidecar.istio.io/componentLogLevel", "misc=error", "is not component:level"),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0",
            "is not a CIDR (write it with a prefix length",
        ),
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/8,*", "* must be the whole value"),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "10.0.0.0/33", "is not a CIDR"),
        # Python keeps the first zone (ip6tables then refuses the rule) and drops the second; Go refuses both
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "fe80::%eth0/64", "a zone (%...) is not part of one"),
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", "fe80::1%eth0/64", "a zone (%...) is not part of one"),
        ("readiness.status.sidecar.istio.io/periodSeconds", "2147483648", "from 1 to 2147483647"),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "10.0.0.0/8,,", "empty entry"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "80,65536", "not a port number 1-65535"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "*", "not allowed here"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "0", "not a port number"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "http", "not a port number"),
        ("traffic.sidecar.istio.io/includeOutboundPorts", "-1", "not a port number"),
        ("proxy.istio.io/config", "concurrency: [", "not valid YAML/JSON at line 1"),
        ("proxy.istio.io/config", "- a list", "must be an object, got list"),
        ("proxy.istio.io/config", "drainDuration: 45", "drainDuration: must be a duration"),
        ("proxy.istio.io/config", "statusPort: 70000", "not a port number"),
        # Beyond Istio's proto types and Go's durations: Envoy refused the first, the agent the others
        ("proxy.istio.io/config", "concurrency: 99999999999", "concurrency: 99999999999 is more than 2147483647"),
        ("proxy.istio.io/config", "terminationDrainDuration: 9999999999h", "terminationDrainDuration: must be a"),
        ("proxy.istio.io/config", "terminationDrainDuration: -5s", 'terminationDrainDuration: "-5s" must not be'),
        ("proxy.istio.io/config", "proxyMetadata: {A: 1}", "proxyMetadata.A: must be a string"),
        (
            "proxy.istio.io/config",
            "hold_application_until_proxy_starts: true",
            "did you mean 'holdApplicationUntilProxyStarts'",
        ),
        (
            "proxy.istio.io/config",
            "interceptionMode: IPTABLES",
            "interceptionMode: must be one of REDIRECT, NONE",
        ),
        (
            "proxy.istio.io/config",
            "image: {imageType: slim}",
            "image.imageType: must be one of default, distroless, debug",
        ),
        ("proxy.istio.io/config", "a: &x [1]\nb: *x", "aliases"),
        ("inject.istio.io/templates", "sidecar,sidecar", "a template is listed twice"),
        ("inject.istio.io/templates", "", "unknown template"),
        ("prometheus.istio.io/merge-metrics", "off", 'use "true" or "false"'),
        ("sidecar.istio.io/statsInclusionPrefixes", "cluster", "not supported by meshplane"),
        ("readiness.status.sidecar.istio.io/periodSeconds", "0", "from 1 to 2147483647"),
        ("status.sidecar.istio.io/port", "70000", "port number"),
        ("sidecar.istio.io/bootstrapOverride", "custom", "not supported by meshplane"),
    ],
)
def test_invalid_annotation_is_rejected_naming_annotation_and_value(annotation: str, value: str, problem: str) -> None:
    with pytest.raises(InjectionError) as caught:
        inject({annotation: value})
    error = caught.value
    assert error.annotation == annotation
    assert error.value == value
    message = str(error)
    assert message.startswith(f"annotation {annotation}: invalid value {json.dumps(value)}")
    assert problem in message


def test_grpc_agent_with_a_traffic_interception_annotation_is_rejected() -> None:
    with pytest.raises(InjectionError, match="only NONE applies"):
        inject({"inject.istio.io/templates": "grpc-agent", "sidecar.istio.io/interceptionMode": "REDIRECT"})


def test_a_prometheus_port_that_is_not_a_number_is_left_to_the_agent_and_the_pod_is_injected() -> None:
    out = inject({"prometheus.io/port": "²", "prometheus.io/scrape": "true"})
    assert proxy(out)["name"] == "istio-proxy"
    assert out["metadata"]["annotations"]["prometheus.io/port"] == "15020"


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(InjectionError) as caught:
        inject({"sidecar.istio.io/proxyImage": "x " * 500})
    assert caught.value.value == "x " * 500
    assert "(1000 characters)" in str(caught.value)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("100m", Decimal("0.1")),
        ("2", Decimal(2)),
        ("0.5", Decimal("0.5")),
        ("128Mi", Decimal(128 * 1024**2)),
        ("1Gi", Decimal(1024**3)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        ("500u", Decimal("0.001")),  # a pod holds it rounded up to a thousandth
        (".5", Decimal("0.5")),
        ("+1k", Decimal(1000)),
    ],
)
def test_kubernetes_quantities_are_understood(text: str, amount: Decimal) -> None:
    assert parse_quantity(text) == amount


@pytest.mark.parametrize(
    ("annotations", "resources"),
    [
        ({"sidecar.istio.io/proxyCPU": "250m"}, {"requests": {"cpu": "250m"}}),
        ({"sidecar.istio.io/proxyMemoryLimit": "2Gi"}, {"limits": {"memory": "2Gi"}}),
        (
            {"sidecar.istio.io/proxyCPU": "1", "sidecar.istio.io/proxyCPULimit": "1000m"},
            {"limits": {"cpu": "1000m"}, "requests": {"cpu": "1"}},
        ),
        (
            {"sidecar.istio.io/proxyMemory": "512Mi", "sidecar.istio.io/proxyMemoryLimit": "0.5Gi"},
            {"limits": {"memory": "0.5Gi"}, "requests": {"memory": "512Mi"}},
        ),
    ],
)
def test_resource_annotations_replace_the_configured_resources(
    annotations: dict[str, str], resources: dict[str, Any]
) -> None:
    out = inject(annotations)
    assert proxy(out)["resources"] == resources
    assert out["spec"]["initContainers"][0]["resources"] == resources


@pytest.mark.parametrize(
    ("request_", "limit", "value"),
    [
        ("sidecar.istio.io/proxyCPU", "sidecar.istio.io/proxyCPULimit", ("1001m", "1")),
        ("sidecar.istio.io/proxyMemory", "sidecar.istio.io/proxyMemoryLimit", ("1Gi", "1G")),
    ],
)
def test_a_request_above_its_limit_is_rejected(request_: str, limit: str, value: tuple[str, str]) -> None:
    with pytest.raises(InjectionError) as caught:
        inject({request_: value[0], limit: value[1]})
    assert caught.value.annotation == request_
    assert f"exceeds {limit}" in str(caught.value)


def test_traffic_annotations_become_iptables_flags() -> None:
    out = inject(
        {
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "*",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": " 10.96.0.0/12 , 2001:db8::/32",
            "traffic.sidecar.istio.io/includeInboundPorts": "",
            "traffic.sidecar.istio.io/excludeInboundPorts": "15020,8081",
            "traffic.sidecar.istio.io/includeOutboundPorts": "443",
            "traffic.sidecar.istio.io/excludeOutboundPorts": "25",
        }
    )
    flags = init_args(out)
    assert flags["-i"] == "*"
    assert flags["-x"] == "10.96.0.0/12,2001:db8::/32"
    assert flags["-b"] == ""
    assert flags["-d"] == "15090,15021,15020,8081"
    assert flags["-q"] == "443"
    assert flags["-o"] == "25"


def test_valid_log_levels_reach_the_proxy_arguments() -> None:
    out = inject(
        {"sidecar.istio.io/logLevel": "debug", "sidecar.istio.io/componentLogLevel": "misc:error,upstream:trace"}
    )
    assert "--proxyLogLevel=debug" in proxy(out)["args"]
    assert "--proxyComponentLogLevel=misc:error,upstream:trace" in proxy(out)["args"]


def test_rewrite_disabled_and_merge_disabled_leave_probes_and_prometheus_alone() -> None:
    out = inject({"sidecar.istio.io/rewriteAppHTTPProbers": "false", "prometheus.istio.io/merge-metrics": "false"})
    assert out["spec"]["containers"][0]["readinessProbe"] == {"httpGet": {"port": 80}}
    names = {item["name"] for item in proxy(out)["env"]}
    assert "ISTIO_KUBE_APP_PROBERS" not in names and "ISTIO_PROMETHEUS_ANNOTATIONS" not in names
    assert not any(key.startswith("prometheus.io/") for key in out["metadata"]["annotations"])


def test_the_proxy_runs_unprivileged_in_both_interception_modes() -> None:
    for mode in ("REDIRECT", "NONE"):
        out = inject({"sidecar.istio.io/interceptionMode": mode})
        security = proxy(out)["securityContext"]
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert (security["runAsNonRoot"], security["runAsUser"]) == (True, 1337)
        assert {"name": "ISTIO_META_INTERCEPTION_MODE", "value": mode} in proxy(out)["env"]
