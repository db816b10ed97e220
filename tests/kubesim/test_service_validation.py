"""Service validation as a 1.32 API server does it: the order of the causes of a refused Service (kubectl
prints them in the server's order), the checks of `ValidateService` by type, and dual-stack fields on a
single-stack IPv4 cluster (one service CIDR).

The IP family fields are filled in and checked by the Service registry before it allocates a cluster IP;
what it refuses there is refused with those causes alone. A 1.32 server prints a list bad value in Go
syntax (`[]string{"10.96.0.10"}`).
"""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.kube.client import KubeApi
from tests.kubesim.fixtures import Kubectl
from tests.kubesim.podspec import port_name_problems
from tests.kubesim.test_api import MERGE, SVC_PATH, error_of, service
from tests.kubesim.test_pod_validation import causes_of
from tests.kubesim.validation import (
    CIDR_HELP,
    LABEL_VALUE_HELP,
    QUALIFIED_NAME_HELP,
    SUBDOMAIN_HELP,
)

PORT_RANGE = "must be between 1 and 65535, inclusive"
SERVICE_TYPES = '"ClusterIP", "ExternalName", "LoadBalancer", "NodePort"'
ONLY_LB = "Forbidden: may only be used when `type` is 'LoadBalancer'"
NOT_DUAL_STACK = "this cluster is not configured for dual-stack services"

# A Service whose causes the server lists ports, then external IPs, then the type (kubesim listed the type first).
MANY_CAUSES = service(
    "many",
    type="Bogus",
    ports=[{"name": "a", "port": 0}, {"name": "a", "port": 80}],
    externalIPs=["127.0.0.1"],
)
MANY_CAUSES_LISTED = [
    ("spec.ports[0].port", f"Invalid value: 0: {PORT_RANGE}"),
    ("spec.ports[0].targetPort", f"Invalid value: 0: {PORT_RANGE}"),  # defaulted to the port
    ("spec.ports[1].name", 'Duplicate value: "a"'),
    ("spec.externalIPs[0]", 'Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)'),
    ("spec.type", f'Unsupported value: "Bogus": supported values: {SERVICE_TYPES}'),
]


async def service_causes(kube_api: KubeApi, body: dict[str, Any]) -> list[tuple[str, str]]:
    return await causes_of(kube_api, body, SVC_PATH)


# -- the order of causes --------------------------------------------------------------------------
async def test_a_services_causes_come_in_the_api_servers_order(kube_api: KubeApi) -> None:
    assert await service_causes(kube_api, MANY_CAUSES) == MANY_CAUSES_LISTED


async def test_kubectl_prints_a_services_causes_in_the_servers_order(kubectl: Kubectl) -> None:
    manifest = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: many}\n"
        "spec:\n  type: Bogus\n  externalIPs: [127.0.0.1]\n"
        "  ports: [{name: a, port: 0}, {name: a, port: 80}]\n"
    )
    refused = await kubectl.run("create", "-f", "-", stdin=manifest, check=False)
    assert refused.returncode != 0
    printed = [line.removeprefix("* ") for line in refused.stderr.splitlines() if line.startswith("* ")]
    assert printed == [f"{field}: {message}" for field, message in MANY_CAUSES_LISTED], refused.stderr


async def test_each_check_of_a_service_comes_in_its_place(kube_api: KubeApi) -> None:
    """Ports (name, number, protocol, target port, app protocol), selector, session affinity, source ranges,
    load balancer class, internal traffic policy and traffic distribution, in `ValidateService`'s order."""
    body = service(
        "checks",
        ports=[
            {"name": "web", "port": 80, "targetPort": "http_web", "appProtocol": "-bad"},
            {"port": 81, "protocol": "HTTP"},
        ],
        selector={"app": "bad value!"},
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 90000}},
        loadBalancerSourceRanges=["10.0.0.0/33"],
        loadBalancerClass="example.com/lb",
        internalTrafficPolicy="Node",
        trafficDistribution="PreferZone",
    )
    (target_problem,) = port_name_problems("http_web")
    assert await service_causes(kube_api, body) == [
        ("spec.ports[0].targetPort", f'Invalid value: "http_web": {target_problem}'),
        ("spec.ports[0].appProtocol", f'Invalid value: "-bad": name part {QUALIFIED_NAME_HELP}'),
        ("spec.ports[1].name", "Required value"),
        ("spec.ports[1].protocol", 'Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP"'),
        ("spec.selector", f'Invalid value: "bad value!": {LABEL_VALUE_HELP}'),
        (
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "Invalid value: 90000: must be greater than 0 and less than 86400",
        ),
        ("spec.LoadBalancerSourceRanges", ONLY_LB),
        ("spec.LoadBalancerSourceRanges[0]", f'Invalid value: "10.0.0.0/33": {CIDR_HELP}'),
        ("spec.loadBalancerClass", ONLY_LB),
        ("spec.internalTrafficPolicy", 'Unsupported value: "Node": supported values: "Cluster", "Local"'),
        ("spec.trafficDistribution", 'Unsupported value: "PreferZone": supported values: "PreferClose"'),
    ]


async def test_an_update_lists_its_own_checks_before_the_services(kube_api: KubeApi) -> None:
    """`ValidateServiceUpdate` checks the cluster IPs' change before it runs `ValidateService`."""
    await kube_api.request("POST", SVC_PATH, body=service("web"))
    body = {"spec": {"clusterIP": "10.96.9.9", "ports": [{"port": 80, "protocol": "HTTP"}]}}
    err = await error_of(kube_api.request("PATCH", f"{SVC_PATH}/web", body=body, content_type=MERGE))
    assert err.status == 422
    assert [(c["field"], c["message"]) for c in err.body["details"]["causes"]] == [
        ("spec.clusterIPs[0]", 'Invalid value: []string{"10.96.9.9"}: may not change once set'),
        ("spec.ports[0].protocol", 'Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP"'),
    ]


async def test_an_external_name_service_has_no_cluster_ips_or_families_and_names_a_subdomain(
    kube_api: KubeApi,
) -> None:
    """A `clusterIP` given alone becomes `clusterIPs` (then forbidden); the name may end in a dot."""
    body = service(
        "ext",
        type="ExternalName",
        externalName="Bad_Name.",
        clusterIP="10.96.0.5",
        ipFamilies=["IPv4"],
        ipFamilyPolicy="SingleStack",
    )
    forbidden = "Forbidden: may not be set for ExternalName services"
    assert await service_causes(kube_api, body) == [
        ("spec.clusterIPs", forbidden),
        ("spec.ipFamilies", forbidden),
        ("spec.ipFamilyPolicy", forbidden),
        ("spec.externalName", f'Invalid value: "Bad_Name": {SUBDOMAIN_HELP}'),
    ]
    created = await kube_api.request("POST", SVC_PATH, body=service("ok", type="ExternalName", externalName="a.b."))
    assert created["spec"]["sessionAffinity"] == "None"  # defaulted for every type
    assert not {"clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"} & created["spec"].keys()


@pytest.mark.parametrize("kind", ["NodePort", "LoadBalancer"])
async def test_a_node_port_or_load_balancer_service_may_not_be_headless(kube_api: KubeApi, kind: str) -> None:
    body = service("headless", type=kind, clusterIP="None", selector={"app": "x"})
    assert await service_causes(kube_api, body) == [
        ("spec.clusterIPs[0]", f"Invalid value: \"None\": may not be set to 'None' for {kind} services")
    ]


async def test_target_ports_of_0_or_empty_default_to_the_port(kube_api: KubeApi) -> None:
    ports = [{"name": "a", "port": 80, "targetPort": 0}, {"name": "b", "port": 81, "targetPort": ""}]
    created = await kube_api.request("POST", SVC_PATH, body=service("targets", ports=ports))
    assert [p["targetPort"] for p in created["spec"]["ports"]] == [80, 81]


# -- dual-stack fields on a single-stack cluster ------------------------------------------------
# (spec, ipFamilyPolicy, ipFamilies, clusterIPs): None for one picked
CREATED_FAMILIES: list[tuple[dict[str, Any], str, list[str], list[str] | None]] = [
    ({}, "SingleStack", ["IPv4"], None),
    ({"ipFamilyPolicy": "PreferDualStack"}, "PreferDualStack", ["IPv4"], None),
    ({"clusterIP": "10.96.0.40"}, "SingleStack", ["IPv4"], ["10.96.0.40"]),
    ({"clusterIP": "None", "selector": {"app": "x"}}, "SingleStack", ["IPv4"], ["None"]),
    # a headless Service without a selector may front endpoints of both families, whatever the cluster has
    ({"clusterIP": "None"}, "RequireDualStack", ["IPv4", "IPv6"], ["None"]),
    ({"clusterIP": "None", "ipFamilies": ["IPv6"]}, "RequireDualStack", ["IPv6", "IPv4"], ["None"]),
    ({"clusterIP": "None", "ipFamilyPolicy": "SingleStack"}, "SingleStack", ["IPv4"], ["None"]),
]


async def test_a_created_service_is_given_its_ip_families_and_policy(kube_api: KubeApi) -> None:
    for i, (spec, policy, families, ips) in enumerate(CREATED_FAMILIES):
        created = (await kube_api.request("POST", SVC_PATH, body=service(f"fam{i}", **spec)))["spec"]
        assert (created["ipFamilyPolicy"], created["ipFamilies"]) == (policy, families), spec
        shown = ips or [created["clusterIP"]]
        assert (created["clusterIP"], created["clusterIPs"]) == (shown[0], shown), spec


@pytest.mark.parametrize(
    ("spec", "causes"),
    [
        (
            {"ipFamilyPolicy": "RequireDualStack"},
            [("spec.ipFamilyPolicy", f'Invalid value: "RequireDualStack": {NOT_DUAL_STACK}')],
        ),
        (
            {"clusterIP": "None", "selector": {"app": "x"}, "ipFamilyPolicy": "RequireDualStack"},
            [("spec.ipFamilyPolicy", f'Invalid value: "RequireDualStack": {NOT_DUAL_STACK}')],
        ),
        ({"ipFamilies": ["IPv6"]}, [("spec.ipFamilies[0]", 'Invalid value: "IPv6": not configured on this cluster')]),
        (
            {"clusterIP": "fd00::10"},
            [("spec.clusterIPs[0]", 'Invalid value: []string{"fd00::10"}: IPv6 is not configured on this cluster')],
        ),
        (
            {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.11"]},
            [("spec.clusterIPs", 'Invalid value: []string{"10.96.0.11"}: first value must match `clusterIP`')],
        ),
        (
            {"clusterIPs": ["10.96.0.10"]},
            [
                (
                    "spec.clusterIPs",
                    'Invalid value: []string{"10.96.0.10"}: must be empty when `clusterIP` is not specified',
                )
            ],
        ),
        (
            {"ipFamilies": ["IPv4", "IPv4", "IPv5"]},
            [
                ("spec.ipFamilies[1]", 'Duplicate value: "IPv4"'),
                ("spec.ipFamilies[2]", 'Unsupported value: "IPv5": supported values: "IPv4", "IPv6"'),
            ],
        ),
        (
            {"ipFamilyPolicy": "DualStack"},
            [
                (
                    "spec.ipFamilyPolicy",
                    'Unsupported value: "DualStack": supported values: "PreferDualStack", "RequireDualStack", '
                    '"SingleStack"',
                )
            ],
        ),
        (
            {"clusterIP": "None", "clusterIPs": ["None", "10.96.0.10"]},
            [
                (
                    "spec.clusterIPs",
                    'Invalid value: []string{"None", "10.96.0.10"}: \'None\' must be the first and only value',
                )
            ],
        ),
        (
            {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10", "10.96.0.11"]},
            [
                (
                    "spec.clusterIPs",
                    'Invalid value: []string{"10.96.0.10", "fd00::10", "10.96.0.11"}: may only hold up to 2 values',
                )
            ],
        ),
        (
            {
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "10.96.0.11"],
                "ipFamilyPolicy": "PreferDualStack",
            },
            [
                (
                    "spec.clusterIPs",
                    'Invalid value: []string{"10.96.0.10", "10.96.0.11"}: '
                    "may specify no more than one IP for each IP family",
                )
            ],
        ),
        (
            {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"]},
            [
                (
                    "spec.ipFamilyPolicy",
                    "Invalid value: \"SingleStack\": must be 'RequireDualStack' or 'PreferDualStack' when multiple "
                    "cluster IPs are specified",
                ),
                (
                    "spec.clusterIPs[1]",
                    'Invalid value: []string{"10.96.0.10", "fd00::10"}: IPv6 is not configured on this cluster',
                ),
            ],
        ),
        (
            {"clusterIP": "10.96.0.10", "ipFamilies": ["IPv6"]},
            [
                (
                    "spec.clusterIPs[0]",
                    'Invalid value: "10.96.0.10": expected an IPv6 value as indicated by `ipFamilies[0]`',
                )
            ],
        ),
        (
            {"clusterIP": "10.96.0.300"},
            [
                (
                    "spec.clusterIPs[0]",
                    'Invalid value: "10.96.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)',
                )
            ],
        ),
    ],
    ids=[
        "require-dual",
        "require-dual-headless",
        "ipv6-family",
        "ipv6-ip",
        "first-ip-differs",
        "ips-without-ip",
        "families-duplicate-unknown",
        "policy-unknown",
        "none-not-alone",
        "three-ips",
        "two-ipv4",
        "single-stack-two-ips",
        "ip-not-of-family",
        "not-an-ip",
    ],
)
async def test_ip_family_fields_a_single_stack_cluster_refuses(
    kube_api: KubeApi, spec: dict[str, Any], causes: list[tuple[str, str]]
) -> None:
    """Refused before allocation with these causes alone: the bad port is not reached."""
    body = service("fam", **spec)
    body["spec"]["ports"] = [{"port": 0}]
    assert await service_causes(kube_api, body) == causes


async def test_an_update_may_not_require_dual_stack_but_may_prefer_it(kube_api: KubeApi) -> None:
    created = await kube_api.request("POST", SVC_PATH, body=service("web"))
    require = {"spec": {"ipFamilyPolicy": "RequireDualStack"}}
    err = await error_of(kube_api.request("PATCH", f"{SVC_PATH}/web", body=require, content_type=MERGE))
    assert (err.status, err.message) == (
        422,
        f'Service "web" is invalid: spec.ipFamilyPolicy: Invalid value: "RequireDualStack": {NOT_DUAL_STACK}',
    )
    prefer = {"spec": {"ipFamilyPolicy": "PreferDualStack"}}
    changed = await kube_api.request("PATCH", f"{SVC_PATH}/web", body=prefer, content_type=MERGE)
    assert changed["spec"]["ipFamilies"] == ["IPv4"]
    assert changed["spec"]["clusterIPs"] == created["spec"]["clusterIPs"]
