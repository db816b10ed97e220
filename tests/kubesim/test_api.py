"""kubesim's API semantics through kubernetes-asyncio (meshplane's client and the generated API)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yarl
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import watch as k8s_watch

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.allocators import SERVICE_CIDR
from tests.kubesim.auth import request_info
from tests.kubesim.fixtures import Kubectl, eventually
from tests.kubesim.protobuf import ProtobufError, decode
from tests.kubesim.server import KubeSim
from tests.kubesim.validation import LABEL_HELP, LABEL_VALUE_HELP, QUALIFIED_NAME_HELP

CM_PATH = "/api/v1/namespaces/default/configmaps"


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def bare_pod(name: str) -> dict[str, Any]:
    """A Pod with one container and nothing else."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    }


async def error_of(coro: Any) -> KubeApiError:
    with pytest.raises(KubeApiError) as info:
        await coro
    return info.value


async def watch_events(sim: KubeSim, path: str, query: str, *, count: int) -> list[dict[str, Any]]:
    """Read `count` events from a raw watch request (plain aiohttp, no client logic in between)."""
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, session.get(f"{sim.url}{path}?{query}") as resp:
        assert resp.status == 200
        async for line in resp.content:
            events.append(json.loads(line))
            if len(events) == count:
                break
    return events


async def test_create_sets_system_fields(kube_api: KubeApi) -> None:
    out = await kube_api.request("POST", CM_PATH, body=cm("a", k="v"))
    meta = out["metadata"]
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    stamp = datetime.datetime.strptime(meta["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs((datetime.datetime.utcnow() - stamp).total_seconds()) < 120
    assert int(meta["resourceVersion"]) > 0
    assert meta["namespace"] == "default"
    assert "generation" not in meta  # configmaps have no generation, like the real server


async def test_generation_counts_spec_changes_only(kube_api: KubeApi) -> None:
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "a", "image": "a:1"}]},
            },
        },
    }
    path = "/apis/apps/v1/namespaces/default/deployments"
    out = await kube_api.request("POST", path, body=deploy)
    assert out["metadata"]["generation"] == 1
    merge = "application/merge-patch+json"
    out = await kube_api.request("PATCH", f"{path}/web", body={"metadata": {"labels": {"x": "y"}}}, content_type=merge)
    assert out["metadata"]["generation"] == 1
    out = await kube_api.request("PATCH", f"{path}/web", body={"spec": {"replicas": 3}}, content_type=merge)
    assert out["metadata"]["generation"] == 2


async def test_resource_versions_increase_across_kinds(kube_api: KubeApi) -> None:
    a = await kube_api.request("POST", CM_PATH, body=cm("a"))
    ns = await kube_api.request(
        "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}
    )
    b = await kube_api.request("POST", CM_PATH, body=cm("b"))
    rvs = [int(o["metadata"]["resourceVersion"]) for o in (a, ns, b)]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3


async def test_create_twice_is_409_already_exists(kube_api: KubeApi) -> None:
    await kube_api.request("POST", CM_PATH, body=cm("dup"))
    err = await error_of(kube_api.request("POST", CM_PATH, body=cm("dup")))
    assert (err.status, err.reason) == (409, "AlreadyExists")
    assert err.message == 'configmaps "dup" already exists'
    assert err.body["details"] == {"name": "dup", "kind": "configmaps"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (CM_PATH, cm("Bad_Name"), "metadata.name"),
        (
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "has.dot"}},
            "metadata.name",
        ),
        (
            "/api/v1/namespaces/default/services",
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 80}]}},
            "metadata.name",
        ),
        (CM_PATH, {**cm("ok"), "data": {"bad key": "v"}}, "data[bad key]"),
        (
            CM_PATH,
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"a": "not ok!"}}},
            "metadata.labels",
        ),
        (
            "/api/v1/namespaces/default/pods",
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}},
            "spec.containers[0].image",
        ),
        (
            "/api/v1/namespaces/default/services",
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 0}]}},
            "spec.ports[0].port",
        ),
        # Go's regular expressions end at the end of the text; Python's `$` also before a final newline.
        (
            "/api/v1/namespaces/default/services",
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc\n"}, "spec": {"ports": [{"port": 80}]}},
            "metadata.name",
        ),
        (CM_PATH, {**cm("ok"), "data": {"key\n": "v"}}, "data[key\n]"),
        (
            CM_PATH,
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"a": "v\n"}}},
            "metadata.labels",
        ),
        *[
            (
                "/api/v1/namespaces/default/services",
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "ext"},
                    "spec": {"ports": [{"port": 80}], "externalIPs": ["203.0.113.9", ip]},
                },
                "spec.externalIPs[1]",
            )
            for ip in ("127.0.0.1", "fe80::1", "example.com")
        ],
    ],
    ids=[
        "configmap-name",
        "namespace-name",
        "service-name",
        "configmap-key",
        "label-value",
        "pod-image",
        "port",
        "name-newline",
        "key-newline",
        "label-newline",
        "external-ip-loopback",
        "external-ip-link-local",
        "external-ip-not-an-ip",
    ],
)
async def test_invalid_objects_are_422_naming_the_field(
    kube_api: KubeApi, path: str, body: dict[str, Any], field: str
) -> None:
    err = await error_of(kube_api.request("POST", path, body=body))
    assert (err.status, err.reason) == (422, "Invalid")
    causes = err.body["details"]["causes"]
    assert field in [c["field"] for c in causes]
    assert f"{field}: " in err.message
    assert " is invalid: " in err.message


async def test_label_and_annotation_keys_are_refused_with_the_api_servers_texts(kube_api: KubeApi) -> None:
    """Each problem of a label key, label value or annotation key is its own cause, in the server's words
    (`IsQualifiedName`, `IsValidLabelValue`). An annotation key is checked lowercased: case does not matter."""
    meta = {"name": "keys", "labels": {"a/b/c": "v", "x/": "-v"}, "annotations": {"-bad": "v"}}
    err = await error_of(kube_api.request("POST", CM_PATH, body={**cm("keys"), "metadata": meta}))
    assert err.status == 422
    two_slashes = (
        f"a qualified name {QUALIFIED_NAME_HELP} with an optional DNS subdomain prefix and '/' "
        "(e.g. 'example.com/MyName')"
    )
    assert sorted((c["field"], c["message"]) for c in err.body["details"]["causes"]) == [
        ("metadata.annotations", f'Invalid value: "-bad": name part {QUALIFIED_NAME_HELP}'),
        ("metadata.labels", f'Invalid value: "-v": {LABEL_VALUE_HELP}'),
        ("metadata.labels", f'Invalid value: "a/b/c": {two_slashes}'),
        ("metadata.labels", 'Invalid value: "x/": name part must be non-empty'),
        ("metadata.labels", f'Invalid value: "x/": name part {QUALIFIED_NAME_HELP}'),
    ]
    meta = {"name": "cased", "labels": {"app": ""}, "annotations": {"Example.com/Key": "v"}}
    created = await kube_api.request("POST", CM_PATH, body={**cm("cased"), "metadata": meta})
    assert created["metadata"]["annotations"] == {"Example.com/Key": "v"}


async def test_annotations_over_256_kib_are_too_long_in_the_api_servers_words(kube_api: KubeApi) -> None:
    """Keys and values together may have 262144 bytes, counted in UTF-8 as Go's `len` counts them; one more is
    a FieldValueTooLong cause that omits the value (`ValidateAnnotations`, `field.TooLong`)."""
    limit = 256 * 1024
    at_limit = {"name": "full", "annotations": {"big": "x" * (limit - 3)}}
    await kube_api.request("POST", CM_PATH, body={**cm("full"), "metadata": at_limit})
    # 131071 two-byte characters and a three-byte key: fewer characters than the limit, one byte more
    over = {"name": "over", "annotations": {"big": "\u00e9" * ((limit - 2) // 2)}}
    err = await error_of(kube_api.request("POST", CM_PATH, body={**cm("over"), "metadata": over}))
    assert (err.status, err.reason) == (422, "Invalid")
    assert err.body["details"]["causes"] == [
        {
            "reason": "FieldValueTooLong",
            "message": "Too long: may not be more than 262144 bytes",
            "field": "metadata.annotations",
        }
    ]
    assert (
        err.message == 'ConfigMap "over" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes'
    )


PODS = "/api/v1/namespaces/default/pods"
HTTP_PROBE = {"httpGet": {"port": 8080}}


@pytest.mark.parametrize(
    ("container", "field", "problem"),
    [
        ({"image": "docker.io/app:1\n"}, "image", "must not have leading or trailing whitespace"),
        ({"ports": [{"name": "http_web", "containerPort": 80}]}, "ports[0].name", "only alpha-numeric"),
        ({"ports": [{"name": "http-web-frontend", "containerPort": 80}]}, "ports[0].name", "no more than 15"),
        ({"ports": [{"name": "8080", "containerPort": 80}]}, "ports[0].name", "at least one letter"),
        (
            {"ports": [{"name": "a", "containerPort": 80}, {"name": "a", "containerPort": 81}]},
            "ports[1].name",
            "Duplicate",
        ),
        ({"ports": [{"containerPort": 80, "protocol": "HTTP"}]}, "ports[0].protocol", "Unsupported value"),
        ({"ports": [{"containerPort": 80, "hostPort": 70000}]}, "ports[0].hostPort", "between 1 and 65535"),
        ({"ports": [{"name": "a"}]}, "ports[0].containerPort", "Required value"),
        (
            {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}},
            "resources.requests[cpu]",
            "must be less than or equal to cpu limit of 500m",
        ),
        ({"readinessProbe": {"periodSeconds": 5}}, "readinessProbe", "must specify a handler type"),
        (
            {"livenessProbe": {**HTTP_PROBE, "tcpSocket": {"port": 8080}}},
            "livenessProbe.tcpSocket",
            "may not specify more than 1 handler type",
        ),
        ({"startupProbe": {"httpGet": {"port": "8080"}}}, "startupProbe.httpGet.port", "at least one letter"),
        ({"readinessProbe": {"tcpSocket": {"port": 0}}}, "readinessProbe.tcpSocket.port", "between 1 and 65535"),
        ({"lifecycle": {"postStart": {}}}, "lifecycle.postStart", "must specify a handler type"),
    ],
)
async def test_a_pods_containers_are_validated_like_the_api_servers(
    kube_api: KubeApi, container: dict[str, Any], field: str, problem: str
) -> None:
    pod = bare_pod("p")
    pod["spec"]["containers"][0].update(container)
    err = await error_of(kube_api.request("POST", PODS, body=pod))
    assert (err.status, err.reason) == (422, "Invalid")
    assert [c["field"] for c in err.body["details"]["causes"]] == [f"spec.containers[0].{field}"], err.message
    assert problem in err.message


@pytest.mark.parametrize(
    ("spec", "field", "problem"),
    [
        ({"volumes": [{"name": "v"}]}, "spec.volumes[0]", "must specify a volume type"),
        (
            {"volumes": [{"name": "v", "emptyDir": {}, "configMap": {"name": "c"}}]},
            "spec.volumes[0].configMap",
            "may not specify more than 1 volume type",
        ),
        (
            {
                "volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}],
                "containers": [
                    {
                        "name": "c",
                        "image": "i",
                        "volumeMounts": [{"name": "a", "mountPath": "/etc/x"}, {"name": "b", "mountPath": "/etc/x"}],
                    }
                ],
            },
            "spec.containers[0].volumeMounts[1].mountPath",
            "must be unique",
        ),
        (
            {"initContainers": [{"name": "init", "image": "i", "readinessProbe": HTTP_PROBE}]},
            "spec.initContainers[0].readinessProbe",
            "may not be set for init containers without restartPolicy=Always",
        ),
    ],
)
async def test_a_pods_volumes_mounts_and_init_containers_are_validated_like_the_api_servers(
    kube_api: KubeApi, spec: dict[str, Any], field: str, problem: str
) -> None:
    pod = bare_pod("p")
    pod["spec"] |= spec
    err = await error_of(kube_api.request("POST", PODS, body=pod))
    assert err.status == 422 and [c["field"] for c in err.body["details"]["causes"]] == [field], err.message
    assert problem in err.message


async def test_a_pod_with_named_ports_probes_hooks_and_resources_within_limits_is_accepted(kube_api: KubeApi) -> None:
    pod = bare_pod("ok")
    pod["spec"]["containers"][0] |= {
        "ports": [{"name": "http-web", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090}],
        "readinessProbe": {"httpGet": {"port": "http-web", "scheme": "HTTPS"}},
        "livenessProbe": {"tcpSocket": {"port": 9090}},
        "lifecycle": {"postStart": {"exec": {"command": ["true"]}}},
        "resources": {"requests": {"cpu": "0.5", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
    }
    pod["spec"]["initContainers"] = [
        {"name": "sidecar", "image": "i", "restartPolicy": "Always", "readinessProbe": HTTP_PROBE},
        {"name": "setup", "image": "i"},
    ]
    created = await kube_api.request("POST", PODS, body=pod)
    assert created["spec"]["containers"][0]["ports"][0]["protocol"] == "TCP"


SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"


def endpoint_slice(name: str, address_type: str, *addresses: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name},
        "addressType": address_type,
        "endpoints": [{"addresses": [address]} for address in addresses],
        "ports": [{"name": "http", "port": 8080}],
    } | extra


@pytest.mark.parametrize(
    ("address_type", "address", "problem"),
    [
        ("IPv4", "127.0.0.1", "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
        ("IPv4", "0.0.0.0", "may not be unspecified (0.0.0.0)"),
        ("IPv4", "169.254.169.254", "may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
        ("IPv4", "224.0.0.251", "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"),
        ("IPv4", "10.0.0.256", "must be a valid IPv4 address"),
        ("IPv4", "10.0.0.1\n", "must be a valid IPv4 address"),
        ("IPv4", "fd00::1", "must be a valid IPv4 address"),
        ("IPv6", "::1", "may not be in the loopback range"),
        ("IPv6", "fe80::1", "may not be in the link-local range"),
        ("IPv6", "ff02::fb", "may not be in the link-local multicast range"),
        ("IPv6", "10.0.0.1", "must be a valid IPv6 address"),
        ("FQDN", "backend", "should be a domain with at least two segments separated by dots"),
        ("FQDN", "Backend.example.com", "a lowercase RFC 1123 subdomain"),
    ],
)
async def test_an_endpoint_slice_address_must_be_of_its_type_and_not_special(
    kube_api: KubeApi, address_type: str, address: str, problem: str
) -> None:
    body = endpoint_slice("bad", address_type, "10.1.0.7" if address_type == "IPv4" else "fd00::7", address)
    if address_type == "FQDN":
        body = endpoint_slice("bad", address_type, "db.example.com", address)
    err = await error_of(kube_api.request("POST", SLICES, body=body))
    assert (err.status, err.reason) == (422, "Invalid")
    assert [c["field"] for c in err.body["details"]["causes"]] == ["endpoints[1].addresses[0]"]
    assert problem in err.message and json.dumps(address) in err.message


async def test_endpoint_slices_of_each_type_are_accepted_and_their_limits_and_ports_checked(kube_api: KubeApi) -> None:
    for name, address_type, address in [
        ("v4", "IPv4", "10.1.0.7"),
        ("v6", "IPv6", "fd00::7"),
        ("dns", "FQDN", "db.example.com."),
    ]:
        created = await kube_api.request("POST", SLICES, body=endpoint_slice(name, address_type, address))
        assert created["endpoints"][0]["addresses"] == [address]
    refusals = [
        (
            endpoint_slice("many", "IPv4", *[f"10.1.{i // 250}.{i % 250 + 1}" for i in range(1_001)]),
            "endpoints",
            "Too many: 1001: must have at most 1000 items",
        ),
        (
            endpoint_slice("ports", "IPv4", "10.1.0.7", ports=[{"port": 80}, {"port": 81}]),
            "ports[1].name",
            'Duplicate value: ""',
        ),
        (
            endpoint_slice("proto", "IPv4", "10.1.0.7", ports=[{"name": "a", "port": 80, "protocol": "HTTP"}]),
            "ports[0].protocol",
            'Unsupported value: "HTTP"',
        ),
        (
            endpoint_slice("host", "IPv4", "10.1.0.7", endpoints=[{"addresses": ["10.1.0.7"], "hostname": "Web_1"}]),
            "endpoints[0].hostname",
            "a lowercase RFC 1123 label",
        ),
    ]
    for body, field, message in refusals:
        err = await error_of(kube_api.request("POST", SLICES, body=body))
        assert err.status == 422 and [c["field"] for c in err.body["details"]["causes"]] == [field], err.message
        assert message in err.message
    changed = await kube_api.request("GET", f"{SLICES}/v4")
    changed["addressType"], changed["endpoints"] = "IPv6", [{"addresses": ["fd00::7"]}]
    err = await error_of(kube_api.request("PUT", f"{SLICES}/v4", body=changed))
    assert err.status == 422 and 'addressType: Invalid value: "IPv6": field is immutable' in err.message


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "1e400"])
async def test_a_body_with_what_json_has_no_value_for_is_400(kubesim: KubeSim, literal: str) -> None:
    """Python's decoder takes these (1e400 as infinity); the API server's refuses the body."""
    body = json.dumps(cm("nan")).replace('"data": {}', f'"data": {{}}, "x": {literal}')
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{kubesim.url}{CM_PATH}", data=body, headers=headers) as resp,
    ):
        status, text = resp.status, await resp.text()
    assert status == 400 and "the object provided is unrecognized" in text, text
    assert kubesim.get_object("configmaps", "default", "nan") is None


async def test_get_missing_is_404_not_found(kube_api: KubeApi) -> None:
    err = await error_of(kube_api.request("GET", f"{CM_PATH}/nope"))
    assert (err.status, err.reason, err.message) == (404, "NotFound", 'configmaps "nope" not found')
    err = await error_of(kube_api.request("GET", "/apis/apps/v1/namespaces/default/deployments/nope"))
    assert err.message == 'deployments.apps "nope" not found'
    err = await error_of(kube_api.request("POST", "/api/v1/namespaces/ghost/configmaps", body=cm("x")))
    assert (err.status, err.message) == (404, 'namespaces "ghost" not found')


NAME_PARAMETER_INVALID = "Name parameter invalid: \"a%b\": may not contain '%'"

CM_A_B = f"{CM_PATH}/a%25b"  # the name a%b, escaped
BINDING = {"metadata": {"name": "a%b"}, "target": {"kind": "Node", "name": "node-a"}}

# Each request reaches the registry's key function for the name a%b: (method, path, content type, body).
PERCENT_NAME_REQUESTS = [
    pytest.param("GET", CM_A_B, None, None, id="get"),
    pytest.param("GET", "/api/v1/namespaces/ghost/configmaps/a%25b", None, None, id="get-in-missing-namespace"),
    pytest.param("GET", "/api/v1/namespaces/a%25b", None, None, id="get-namespace"),
    pytest.param("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/a%25b", None, None, id="get-cluster-role"),
    pytest.param("PUT", CM_A_B, "application/json", json.dumps(cm("a%b")), id="put"),
    pytest.param("PATCH", CM_A_B, "application/merge-patch+json", "{not json", id="merge-patch"),
    pytest.param("PATCH", f"{CM_A_B}?fieldManager=t", "application/apply-patch+yaml", "[x", id="apply"),
    pytest.param("DELETE", CM_A_B, None, None, id="delete"),
    pytest.param("DELETE", "/api/v1/namespaces/a%25b", None, None, id="delete-namespace"),
    pytest.param("GET", "/api/v1/namespaces/default/pods/a%25b/status", None, None, id="status"),
    pytest.param("GET", "/apis/apps/v1/namespaces/default/deployments/a%25b/scale", None, None, id="scale"),
    pytest.param(
        "POST", "/api/v1/namespaces/default/pods/a%25b/binding", "application/json", json.dumps(BINDING), id="binding"
    ),
    pytest.param(
        "POST", "/api/v1/namespaces/default/serviceaccounts/a%25b/token", "application/json", "{}", id="token"
    ),
]


@pytest.mark.parametrize(("method", "path", "content_type", "body"), PERCENT_NAME_REQUESTS)
async def test_a_name_with_a_percent_in_the_url_is_400_before_the_object_is_looked_up(
    kubesim: KubeSim, method: str, path: str, content_type: str | None, body: str | None
) -> None:
    """The generic registry's key functions (`NamespaceKeyFunc`, `NoNamespaceKeyFunc`) refuse a name no storage
    key can hold (`IsValidPathSegmentName`) with 400 before anything is read: a GET, PUT, PATCH, apply or DELETE
    of such a name, of an object or of its status, scale or binding, and a TokenRequest for such a
    ServiceAccount, is a BadRequest (not a NotFound), whether the namespace exists or not and before a
    patch is even read."""
    headers = {"Content-Type": content_type} if content_type else {}
    url = yarl.URL(f"{kubesim.url}{path}", encoded=True)
    async with aiohttp.ClientSession() as session, session.request(method, url, data=body, headers=headers) as resp:
        status = await resp.json()
    assert resp.status == 400
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": NAME_PARAMETER_INVALID,
        "reason": "BadRequest",
        "code": 400,
    }


async def test_a_percent_name_is_refused_after_the_checks_the_handler_makes_first(kube_api: KubeApi) -> None:
    """What the handler checks before the registry is asked still comes first: a PUT whose body names another
    object is refused for that (`checkName`)."""
    err = await error_of(kube_api.request("PUT", CM_A_B, body=cm("other")))
    assert (err.status, err.message) == (400, "the name of the object (other) does not match the name on the URL (a%b)")
    err = await error_of(kube_api.request("GET", CM_A_B))
    assert (err.status, err.reason, err.message) == (400, "BadRequest", NAME_PARAMETER_INVALID)


async def test_update_with_stale_resource_version_is_409_conflict(kube_api: KubeApi) -> None:
    first = await kube_api.request("POST", CM_PATH, body=cm("c", k="1"))
    second = {**first, "data": {"k": "2"}}
    await kube_api.request("PUT", f"{CM_PATH}/c", body=second)
    stale = {**first, "data": {"k": "3"}}
    err = await error_of(kube_api.request("PUT", f"{CM_PATH}/c", body=stale))
    assert (err.status, err.reason) == (409, "Conflict")
    assert "the object has been modified" in err.message
    unconditional = {**first, "data": {"k": "4"}}
    del unconditional["metadata"]["resourceVersion"]
    out = await kube_api.request("PUT", f"{CM_PATH}/c", body=unconditional)
    assert out["data"] == {"k": "4"}


async def test_no_op_update_keeps_the_resource_version(kube_api: KubeApi) -> None:
    first = await kube_api.request("POST", CM_PATH, body=cm("same", k="1"))
    again = await kube_api.request("PUT", f"{CM_PATH}/same", body=first)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


async def test_update_of_missing_object_is_404_and_name_mismatch_400(kube_api: KubeApi) -> None:
    err = await error_of(kube_api.request("PUT", f"{CM_PATH}/ghost", body=cm("ghost")))
    assert err.status == 404
    await kube_api.request("POST", CM_PATH, body=cm("real"))
    err = await error_of(kube_api.request("PUT", f"{CM_PATH}/real", body=cm("other")))
    assert err.status == 400 and "does not match the name on the URL" in err.message


async def test_delete_answers_status_for_configmaps_and_the_object_for_pods(kube_api: KubeApi) -> None:
    created = await kube_api.request("POST", CM_PATH, body=cm("gone"))
    out = await kube_api.request("DELETE", f"{CM_PATH}/gone")
    assert out["kind"] == "Status" and out["status"] == "Success"
    assert out["details"]["uid"] == created["metadata"]["uid"]
    err = await error_of(kube_api.request("DELETE", f"{CM_PATH}/gone"))
    assert err.status == 404
    pod = bare_pod("p")
    await kube_api.request("POST", "/api/v1/namespaces/default/pods", body=pod)
    out = await kube_api.request("DELETE", "/api/v1/namespaces/default/pods/p")
    assert out["kind"] == "Pod"


async def test_delete_precondition_mismatch_is_409(kube_api: KubeApi) -> None:
    await kube_api.request("POST", CM_PATH, body=cm("guarded"))
    err = await error_of(
        kube_api.request("DELETE", f"{CM_PATH}/guarded", body={"preconditions": {"resourceVersion": "1"}})
    )
    assert err.status == 409


async def test_list_items_omit_kind_and_report_the_resource_version(kubesim: KubeSim, kube_api: KubeApi) -> None:
    await kube_api.request("POST", CM_PATH, body=cm("listed"))
    out = await kube_api.request("GET", CM_PATH)
    assert out["kind"] == "ConfigMapList" and out["apiVersion"] == "v1"
    assert out["metadata"]["resourceVersion"] == str(kubesim.storage.rv)
    assert all("kind" not in item and "apiVersion" not in item for item in out["items"])


async def test_paginated_list_is_a_consistent_snapshot_and_expires(kubesim: KubeSim, kube_api: KubeApi) -> None:
    for i in range(5):
        await kube_api.request("POST", CM_PATH, body=cm(f"p{i}"))
    page = await kube_api.request("GET", CM_PATH, query=[("limit", "2")])
    token = page["metadata"]["continue"]
    await kube_api.request("DELETE", f"{CM_PATH}/p4")  # after the snapshot: still in the remaining pages
    rest = await kube_api.request("GET", CM_PATH, query=[("limit", "10"), ("continue", token)])
    assert [i["metadata"]["name"] for i in page["items"] + rest["items"]] == [f"p{i}" for i in range(5)]
    kubesim.compact()
    await kube_api.request("POST", CM_PATH, body=cm("later"))
    err = await error_of(kube_api.request("GET", CM_PATH, query=[("limit", "10"), ("continue", token)]))
    assert (err.status, err.reason) == (410, "Expired")


async def test_watch_streams_added_modified_deleted_from_a_resource_version(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    start = (await kube_api.request("GET", CM_PATH))["metadata"]["resourceVersion"]
    await kube_api.request("POST", CM_PATH, body=cm("w", k="1"))
    await kube_api.request(
        "PATCH", f"{CM_PATH}/w", body={"data": {"k": "2"}}, content_type="application/merge-patch+json"
    )
    await kube_api.request("DELETE", f"{CM_PATH}/w")
    events = await watch_events(kubesim, CM_PATH, f"watch=1&resourceVersion={start}", count=3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert [e["object"]["kind"] for e in events] == ["ConfigMap"] * 3
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(start)


async def test_watch_without_resource_version_starts_with_current_objects(kubesim: KubeSim, kube_api: KubeApi) -> None:
    await kube_api.request("POST", CM_PATH, body=cm("existing"))
    events = await watch_events(kubesim, CM_PATH, "watch=true", count=1)
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "existing"


async def test_watch_from_a_compacted_resource_version_gets_410_expired(kubesim: KubeSim, kube_api: KubeApi) -> None:
    small = KubeSim(window=3)
    await small.start()
    try:
        start = small.storage.rv
        for i in range(5):
            small.create_object(cm(f"c{i}"))
        events = await watch_events(small, CM_PATH, f"watch=1&resourceVersion={start}", count=1)
        assert events[0]["type"] == "ERROR"
        status = events[0]["object"]
        assert (status["code"], status["reason"]) == (410, "Expired")
        assert status["message"].startswith(f"too old resource version: {start}")
        recent = small.storage.rv - 2
        events = await watch_events(small, CM_PATH, f"watch=1&resourceVersion={recent}", count=2)
        assert [e["type"] for e in events] == ["ADDED", "ADDED"]
    finally:
        await small.stop()


async def test_watch_sends_bookmarks_when_allowed(kubesim: KubeSim) -> None:
    rv = kubesim.storage.rv
    events = await watch_events(kubesim, CM_PATH, f"watch=1&resourceVersion={rv}&allowWatchBookmarks=true", count=1)
    assert events[0]["type"] == "BOOKMARK"
    assert events[0]["object"]["kind"] == "ConfigMap"
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) >= rv


async def test_watch_ends_after_timeout_seconds(kubesim: KubeSim) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{kubesim.url}{CM_PATH}?watch=1&resourceVersion={kubesim.storage.rv}&timeoutSeconds=1") as resp,
    ):
        body = await asyncio.wait_for(resp.read(), timeout=30)
    assert body == b""


@pytest.mark.parametrize("spelling", ["1", "true", "True", "TRUE"])
async def test_a_watch_fault_matches_every_spelling_served_as_a_watch(kubesim: KubeSim, spelling: str) -> None:
    fault = kubesim.inject_faults(status=503, watch=True, path_prefix=CM_PATH, message="watch refused")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{kubesim.url}{CM_PATH}?watch=false") as listed:
            assert listed.status == 200 and fault.count == 1
        async with session.get(f"{kubesim.url}{CM_PATH}?watch={spelling}&timeoutSeconds=1") as watched:
            assert watched.status == 503 and (await watched.json())["message"] == "watch refused"
    assert fault.count == 0


async def test_namespace_deletion_terminates_then_removes_its_objects(kubesim: KubeSim, kube_api: KubeApi) -> None:
    await kube_api.request(
        "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}}
    )
    await kube_api.request("POST", "/api/v1/namespaces/tmp/configmaps", body=cm("inside"))
    out = await kube_api.request("DELETE", "/api/v1/namespaces/tmp")
    assert out["status"]["phase"] == "Terminating" and out["metadata"]["deletionTimestamp"]

    async def gone() -> bool:
        try:
            await kube_api.request("GET", "/api/v1/namespaces/tmp")
        except KubeApiError as exc:
            return exc.status == 404
        return False

    await eventually(gone, what="namespace removed")
    assert kubesim.get_object("configmaps", "tmp", "inside") is None
    assert kubesim.get_object("serviceaccounts", "tmp", "default") is None


async def test_system_namespaces_may_not_be_deleted(kube_api: KubeApi) -> None:
    for name in ("default", "kube-system", "kube-public"):
        err = await error_of(kube_api.request("DELETE", f"/api/v1/namespaces/{name}"))
        assert (err.status, err.message) == (
            403,
            f'namespaces "{name}" is forbidden: this namespace may not be deleted',
        )


async def test_creating_in_a_terminating_namespace_is_403(kubesim: KubeSim, kube_api: KubeApi) -> None:
    kubesim.namespace_deletion_delay = 60.0
    kubesim.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dying"}})
    await kube_api.request("DELETE", "/api/v1/namespaces/dying")
    err = await error_of(kube_api.request("POST", "/api/v1/namespaces/dying/configmaps", body=cm("late")))
    assert (err.status, err.reason) == (403, "Forbidden")
    assert "being terminated" in err.message


async def test_namespaces_get_the_metadata_name_label_and_a_default_service_account(kube_api: KubeApi) -> None:
    out = await kube_api.request(
        "POST",
        "/api/v1/namespaces",
        body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "labelled", "labels": {"a": "b"}}},
    )
    assert out["metadata"]["labels"] == {"a": "b", "kubernetes.io/metadata.name": "labelled"}
    assert out["spec"] == {"finalizers": ["kubernetes"]} and out["status"] == {"phase": "Active"}
    sa = await kube_api.request("GET", "/api/v1/namespaces/labelled/serviceaccounts/default")
    assert sa["kind"] == "ServiceAccount"


async def test_pods_get_defaults_and_a_service_account_token_volume(kube_api: KubeApi) -> None:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "img:1", "ports": [{"containerPort": 8080}]}]},
    }
    out = await kube_api.request("POST", "/api/v1/namespaces/default/pods", body=pod)
    spec = out["spec"]
    assert spec["serviceAccountName"] == "default" and spec["restartPolicy"] == "Always"
    assert spec["containers"][0]["ports"][0]["protocol"] == "TCP"
    assert spec["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert spec["volumes"][0]["name"].startswith("kube-api-access-")
    assert spec["containers"][0]["volumeMounts"][0]["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert out["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    pod["metadata"]["name"] = "q"
    pod["spec"]["serviceAccountName"] = "missing"
    err = await error_of(kube_api.request("POST", "/api/v1/namespaces/default/pods", body=pod))
    assert err.status == 403 and 'serviceaccount "missing" not found' in err.message


async def test_a_pod_binding_without_a_name_is_400_as_a_name_mismatch(kube_api: KubeApi) -> None:
    pod = bare_pod("p")
    await kube_api.request("POST", "/api/v1/namespaces/default/pods", body=pod)
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {}, "target": {"kind": "Node", "name": "node-a"}}
    err = await error_of(kube_api.request("POST", "/api/v1/namespaces/default/pods/p/binding", body=binding))
    assert (err.status, err.reason) == (400, "BadRequest")
    assert err.message == "name in URL does not match name in Binding object"
    stored = await kube_api.request("GET", "/api/v1/namespaces/default/pods/p")
    assert "nodeName" not in stored["spec"]


async def test_pod_spec_is_immutable_except_images(kube_api: KubeApi) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "a"}]},
    }
    path = "/api/v1/namespaces/default/pods"
    await kube_api.request("POST", path, body=pod)
    smp = "application/strategic-merge-patch+json"
    out = await kube_api.request(
        "PATCH", f"{path}/p", body={"spec": {"containers": [{"name": "c", "image": "b"}]}}, content_type=smp
    )
    assert out["spec"]["containers"][0]["image"] == "b"
    err = await error_of(
        kube_api.request(
            "PATCH", f"{path}/p", body={"spec": {"containers": [{"name": "d", "image": "x"}]}}, content_type=smp
        )
    )
    assert err.status == 422 and "spec: Forbidden: pod updates may not change fields" in err.message


async def test_services_get_a_cluster_ip_that_updates_keep(kube_api: KubeApi) -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}
    path = "/api/v1/namespaces/default/services"
    out = await kube_api.request("POST", path, body=svc)
    ip = out["spec"]["clusterIP"]
    assert ipaddress.IPv4Address(ip) in SERVICE_CIDR and out["spec"]["clusterIPs"] == [ip]
    assert out["spec"]["ports"][0] == {"port": 80, "protocol": "TCP", "targetPort": 80}
    replaced = await kube_api.request("PUT", f"{path}/web", body={**svc, "spec": {"ports": [{"port": 81}]}})
    assert replaced["spec"]["clusterIP"] == ip
    err = await error_of(
        kube_api.request(
            "PUT", f"{path}/web", body={**svc, "spec": {"clusterIP": "10.96.9.9", "ports": [{"port": 81}]}}
        )
    )
    assert err.status == 422 and "spec.clusterIPs[0]" in err.message


SVC_PATH = "/api/v1/namespaces/default/services"
MERGE = "application/merge-patch+json"


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"port": 80}], **spec},
    }


async def change_service(api: KubeApi, how: str, name: str, **spec: Any) -> dict[str, Any]:
    """Change `spec` fields of a Service by PUT (the stored object, changed), merge PATCH or server-side apply."""
    path = f"{SVC_PATH}/{name}"
    if how == "put":
        stored = await api.request("GET", path)
        stored["spec"].update(spec)
        return await api.request("PUT", path, body=stored)
    if how == "patch":
        return await api.request("PATCH", path, body={"spec": spec}, content_type=MERGE)
    applied = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
    query = [("fieldManager", "test"), ("force", "true")]
    return await api.request("PATCH", path, body=applied, content_type="application/apply-patch+yaml", query=query)


@pytest.mark.parametrize("how", ["put", "patch", "apply"])
async def test_a_service_changed_to_node_port_is_given_node_ports_another_cannot_take(
    kube_api: KubeApi, how: str
) -> None:
    await kube_api.request("POST", SVC_PATH, body=service("web"))
    changed = await change_service(kube_api, how, "web", type="NodePort")
    node_port = changed["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    err = await error_of(
        kube_api.request(
            "POST", SVC_PATH, body=service("other", type="NodePort", ports=[{"port": 80, "nodePort": node_port}])
        )
    )
    assert err.status == 422
    assert err.message == (
        f'Service "other" is invalid: spec.ports[0].nodePort: Invalid value: {node_port}: '
        "provided port is already allocated"
    )


async def test_a_node_port_given_on_update_is_refused_when_taken_and_held_when_free(kube_api: KubeApi) -> None:
    taken = await kube_api.request("POST", SVC_PATH, body=service("first", type="NodePort"))
    in_use = taken["spec"]["ports"][0]["nodePort"]
    await kube_api.request("POST", SVC_PATH, body=service("second"))
    err = await error_of(
        change_service(kube_api, "patch", "second", type="NodePort", ports=[{"port": 80, "nodePort": in_use}])
    )
    assert err.status == 422
    assert f"spec.ports[0].nodePort: Invalid value: {in_use}: provided port is already allocated" in err.message
    assert (await kube_api.request("GET", f"{SVC_PATH}/second"))["spec"]["type"] == "ClusterIP"
    free = 30055  # among the lowest ports of the range, which random picks leave to requests like this one
    changed = await change_service(kube_api, "patch", "second", type="NodePort", ports=[{"port": 80, "nodePort": free}])
    assert changed["spec"]["ports"][0]["nodePort"] == free
    err = await error_of(
        kube_api.request(
            "POST", SVC_PATH, body=service("third", type="NodePort", ports=[{"port": 80, "nodePort": free}])
        )
    )
    assert err.status == 422 and f"{free}: provided port is already allocated" in err.message


async def test_a_service_port_name_is_a_dns_1123_label(kube_api: KubeApi) -> None:
    """`ValidateService` checks port names as DNS-1123 labels: one may start with a digit."""
    ports = [{"name": "80-http", "port": 80}, {"name": "metrics", "port": 9090}]
    created = await kube_api.request("POST", SVC_PATH, body=service("digits", ports=ports))
    assert [p["name"] for p in created["spec"]["ports"]] == ["80-http", "metrics"]
    err = await error_of(
        kube_api.request("POST", SVC_PATH, body=service("upper", ports=[{"name": "HTTP", "port": 80}]))
    )
    assert err.status == 422
    assert err.message == f'Service "upper" is invalid: spec.ports[0].name: Invalid value: "HTTP": {LABEL_HELP}'


async def test_a_created_service_is_refused_a_node_port_out_of_range(kube_api: KubeApi) -> None:
    body = service("low", type="NodePort", ports=[{"port": 80, "nodePort": 29999}])
    err = await error_of(kube_api.request("POST", SVC_PATH, body=body))
    assert err.status == 422
    assert err.message == (
        'Service "low" is invalid: spec.ports[0].nodePort: Invalid value: 29999: provided port is not in the '
        "valid range. The range of valid ports is 30000-32767"
    )


async def test_a_service_changed_back_to_cluster_ip_drops_and_releases_its_node_ports(
    kubectl: Kubectl, kube_api: KubeApi
) -> None:
    ports = [{"port": 80, "nodePort": 30777}]
    await kube_api.request("POST", SVC_PATH, body=service("web", type="NodePort", ports=ports))
    await kubectl.run("patch", "service", "web", "-p", '{"spec":{"type":"ClusterIP"}}')
    web = await kubectl.json("get", "service", "web")
    assert web["spec"]["type"] == "ClusterIP" and "externalTrafficPolicy" not in web["spec"]
    assert web["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    reused = await kube_api.request("POST", SVC_PATH, body=service("next", type="NodePort", ports=ports))
    assert reused["spec"]["ports"][0]["nodePort"] == 30777


async def test_type_changes_to_and_from_external_name_allocate_and_release_the_cluster_ip(kube_api: KubeApi) -> None:
    await kube_api.request("POST", SVC_PATH, body=service("ext", type="ExternalName", externalName="example.com"))
    changed = await change_service(kube_api, "patch", "ext", type="ClusterIP", externalName=None)
    ip = changed["spec"]["clusterIP"]
    assert ipaddress.IPv4Address(ip) in SERVICE_CIDR and changed["spec"]["clusterIPs"] == [ip]
    back = await change_service(kube_api, "patch", "ext", type="ExternalName", externalName="example.com")
    assert "clusterIP" not in back["spec"] and "clusterIPs" not in back["spec"]
    reused = await kube_api.request("POST", SVC_PATH, body=service("taker", clusterIP=ip))
    assert reused["spec"]["clusterIPs"] == [ip]


@pytest.mark.parametrize(
    ("field", "cause"),
    [
        # `clusterIPs` follows a changed `clusterIP`; the update check refuses the change (a 1.32 server
        # prints a list bad value in Go syntax)
        ("clusterIP", 'spec.clusterIPs[0]: Invalid value: []string{"10.96.9.9"}: may not change once set'),
        # `clusterIPs` changed alone no longer starts with `clusterIP`: refused before the update check
        ("clusterIPs", 'spec.clusterIPs: Invalid value: []string{"10.96.9.9"}: first value must match `clusterIP`'),
    ],
)
async def test_changing_a_services_cluster_ip_is_refused_as_immutable(
    kube_api: KubeApi, field: str, cause: str
) -> None:
    await kube_api.request("POST", SVC_PATH, body=service("web"))
    value: Any = "10.96.9.9" if field == "clusterIP" else ["10.96.9.9"]
    err = await error_of(change_service(kube_api, "patch", "web", **{field: value}))
    assert (err.status, err.message) == (422, f'Service "web" is invalid: {cause}')


async def test_strict_field_validation_rejects_unknown_fields_and_warn_drops_them(kube_api: KubeApi) -> None:
    body = {**cm("strict"), "dta": {"x": "y"}}
    err = await error_of(kube_api.request("POST", CM_PATH, body=body, query=[("fieldValidation", "Strict")]))
    assert (err.status, err.message) == (
        400,
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "dta"',
    )
    out = await kube_api.request("POST", CM_PATH, body=body)
    assert "dta" not in out


async def test_dry_run_validates_without_storing(kubesim: KubeSim, kube_api: KubeApi) -> None:
    out = await kube_api.request("POST", CM_PATH, body=cm("dry"), query=[("dryRun", "All")])
    assert out["metadata"]["name"] == "dry"
    assert kubesim.get_object("configmaps", "default", "dry") is None


async def test_table_form_has_the_columns_kubectl_prints(kube_api: KubeApi) -> None:
    await kube_api.request("POST", CM_PATH, body=cm("t", a="1", b="2"))
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{kube_api.host}{CM_PATH}", headers={"Accept": accept}) as resp,
    ):
        assert resp.headers["Content-Type"].startswith("application/json;as=Table")
        table = await resp.json(content_type=None)
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Data", "Age"]
    row = next(r for r in table["rows"] if r["cells"][0] == "t")
    assert row["cells"][1] == 2
    assert row["object"]["kind"] == "PartialObjectMetadata"


async def test_discovery_lists_every_resource(kube_api: KubeApi) -> None:
    core = await kube_api.request("GET", "/api/v1")
    names = {r["name"] for r in core["resources"]}
    assert {"namespaces", "configmaps", "pods", "services", "secrets", "serviceaccounts"} <= names
    groups = await kube_api.request("GET", "/apis")
    assert {g["name"] for g in groups["groups"]} == {
        "apps",
        "admissionregistration.k8s.io",
        "apiextensions.k8s.io",
        "authentication.k8s.io",
        "autoscaling",
        "coordination.k8s.io",
        "policy",
        "rbac.authorization.k8s.io",
        "discovery.k8s.io",
    }
    apps = await kube_api.request("GET", "/apis/apps/v1")
    assert {r["name"] for r in apps["resources"] if "/" not in r["name"]} == {
        "deployments",
        "replicasets",
        "statefulsets",
    }
    version = await kube_api.request("GET", "/version")
    assert version["major"] == "1"


@pytest.fixture
async def generated_api(kube_api: KubeApi) -> AsyncIterator[k8s_client.CoreV1Api]:
    yield k8s_client.CoreV1Api(kube_api.api_client)


async def test_kubernetes_asyncio_generated_client_and_watch_work(
    generated_api: k8s_client.CoreV1Api, kubesim: KubeSim
) -> None:
    body = k8s_client.V1ConfigMap(metadata=k8s_client.V1ObjectMeta(name="typed"), data={"k": "v"})
    created = await generated_api.create_namespaced_config_map("default", body)
    assert created.metadata.uid
    listed = await generated_api.list_namespaced_config_map("default")
    assert "typed" in [i.metadata.name for i in listed.items]
    watcher = k8s_watch.Watch()
    seen: list[tuple[str, str]] = []
    stream = watcher.stream(
        generated_api.list_namespaced_config_map,
        "default",
        resource_version=listed.metadata.resource_version,
        timeout_seconds=20,
    )
    kubesim.create_object(cm("watched"))
    async for event in stream:
        seen.append((event["type"], event["object"].metadata.name))
        if event["object"].metadata.name == "watched":
            watcher.stop()
    assert seen[-1] == ("ADDED", "watched")


@pytest.mark.parametrize(
    "body",
    [b"{}", b"k8s\x00\x0a\x03\x0a\x01", b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09ConfigMap\x12\x02\x78\x01"],
    ids=["not-protobuf", "truncated", "unknown-field"],
)
def test_malformed_protobuf_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(ProtobufError):
        decode(body)


# -- deletecollection pages, query booleans, ListOptions ----------------------------------------
async def test_deletecollection_with_limit_deletes_one_page_and_answers_its_continue_token(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    for i in range(5):
        await kube_api.request(
            "POST", CM_PATH, body={**cm(f"d{i}"), "metadata": {"name": f"d{i}", "labels": {"b": "1"}}}
        )
    await kube_api.request("POST", CM_PATH, body=cm("other"))
    first = await kube_api.request("DELETE", CM_PATH, query=[("labelSelector", "b=1"), ("limit", "2")])
    assert first["kind"] == "ConfigMapList"
    assert [i["metadata"]["name"] for i in first["items"]] == ["d0", "d1"]
    token = first["metadata"]["continue"]
    left = [n for n in ("d0", "d1", "d2", "d3", "d4") if kubesim.get_object("configmaps", "default", n)]
    assert left == ["d2", "d3", "d4"]
    rest = await kube_api.request("DELETE", CM_PATH, query=[("labelSelector", "b=1"), ("continue", token)])
    assert [i["metadata"]["name"] for i in rest["items"]] == ["d2", "d3", "d4"]
    assert "continue" not in rest["metadata"]
    assert not [n for n in ("d2", "d3", "d4") if kubesim.get_object("configmaps", "default", n)]
    assert kubesim.get_object("configmaps", "default", "other") is not None


@pytest.mark.parametrize("value", ["", "yes", "TRUE", "2"])
async def test_any_watch_value_but_0_and_false_is_a_watch(kubesim: KubeSim, kube_api: KubeApi, value: str) -> None:
    start = kubesim.storage.rv
    await kube_api.request("POST", CM_PATH, body=cm("seen"))
    events = await watch_events(kubesim, CM_PATH, f"watch={value}&resourceVersion={start}", count=1)
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "seen"


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "False"])
async def test_watch_0_and_false_in_any_case_are_a_list(kubesim: KubeSim, value: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{kubesim.url}{CM_PATH}?watch={value}") as resp:
        assert resp.status == 200 and (await resp.json())["kind"] == "ConfigMapList"


def test_the_authorized_verb_of_a_collection_get_reads_watch_as_the_server_does() -> None:
    path = "/api/v1/namespaces/default/configmaps"
    verbs = {value: request_info("GET", path, {"watch": value}) for value in ("", "yes", "0", "FALSE")}
    assert {value: info.verb for value, info in verbs.items() if info} == {
        "": "watch",
        "yes": "watch",
        "0": "list",
        "FALSE": "list",
    }


async def test_bookmarks_are_allowed_by_any_value_but_0_and_false(kubesim: KubeSim) -> None:
    rv = kubesim.storage.rv
    events = await watch_events(kubesim, CM_PATH, f"watch=1&resourceVersion={rv}&allowWatchBookmarks=yes", count=1)
    assert events[0]["type"] == "BOOKMARK"


@pytest.mark.parametrize("value", ["", "false", "true"])
async def test_send_initial_events_is_refused_whatever_its_value(kubesim: KubeSim, value: str) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{kubesim.url}{CM_PATH}?watch=1&sendInitialEvents={value}"
        async with session.get(url) as resp:
            assert resp.status == 422
            status = await resp.json()
        assert status["message"] == (
            'ListOptions.meta.k8s.io "" is invalid: [resourceVersionMatch: Forbidden: sendInitialEvents requires '
            "setting resourceVersionMatch to NotOlderThan, sendInitialEvents: Forbidden: sendInitialEvents is "
            "forbidden for watch unless the WatchList feature gate is enabled]"
        )
        async with session.get(f"{kubesim.url}{CM_PATH}?sendInitialEvents={value}") as resp:
            assert resp.status == 422
            assert (await resp.json())["details"]["causes"] == [
                {
                    "reason": "FieldValueForbidden",
                    "message": "Forbidden: sendInitialEvents is forbidden for list",
                    "field": "sendInitialEvents",
                }
            ]


async def test_a_resource_version_match_without_resource_version_is_422(kube_api: KubeApi) -> None:
    err = await error_of(kube_api.request("GET", CM_PATH, query=[("resourceVersionMatch", "NotOlderThan")]))
    assert err.status == 422
    assert err.message == (
        'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is '
        "forbidden unless resourceVersion is provided"
    )


async def test_orphan_dependents_and_force_read_1_and_yes_as_true(kubesim: KubeSim, kube_api: KubeApi) -> None:
    held = {**cm("held"), "metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
    await kube_api.request("POST", CM_PATH, body=held)
    await kube_api.request("DELETE", f"{CM_PATH}/held", query=[("orphanDependents", "1")])
    stored = kubesim.get_object("configmaps", "default", "held")
    assert stored is not None and stored["metadata"]["finalizers"] == ["example.com/hold", "orphan"]
    applied = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"k": "v"}}
    query = [("fieldManager", "test"), ("force", "yes")]
    out = await kube_api.request(
        "PATCH", f"{CM_PATH}/applied", body=applied, content_type="application/apply-patch+yaml", query=query
    )
    assert out["data"] == {"k": "v"}


# -- Services: health check node ports, LoadBalancers without node ports ------------------------
def local_lb(name: str, **spec: Any) -> dict[str, Any]:
    return service(name, type="LoadBalancer", externalTrafficPolicy="Local", **spec)


async def test_a_local_load_balancer_gets_a_health_check_node_port_no_other_service_can_take(
    kube_api: KubeApi,
) -> None:
    out = await kube_api.request("POST", SVC_PATH, body=local_lb("lb"))
    spec = out["spec"]
    health = spec["healthCheckNodePort"]
    assert 30000 <= health <= 32767 and health != spec["ports"][0]["nodePort"]
    assert spec["allocateLoadBalancerNodePorts"] is True
    err = await error_of(kube_api.request("POST", SVC_PATH, body=local_lb("other", healthCheckNodePort=health)))
    assert err.status == 500
    assert err.message == (
        f"Internal error occurred: failed to allocate requested HealthCheck NodePort {health}: "
        "provided port is already allocated"
    )
    ports = [{"port": 80, "nodePort": health}]
    err = await error_of(kube_api.request("POST", SVC_PATH, body=service("np", type="NodePort", ports=ports)))
    assert err.status == 422
    assert f"spec.ports[0].nodePort: Invalid value: {health}: provided port is already allocated" in err.message
    await kube_api.request("DELETE", f"{SVC_PATH}/lb")
    reused = await kube_api.request("POST", SVC_PATH, body=service("again", type="NodePort", ports=ports))
    assert reused["spec"]["ports"][0]["nodePort"] == health


async def test_a_health_check_node_port_is_refused_where_it_is_not_needed(kube_api: KubeApi) -> None:
    for name, body in [
        ("cip", service("cip", healthCheckNodePort=30100)),
        ("clb", service("clb", type="LoadBalancer", healthCheckNodePort=30100)),
    ]:
        err = await error_of(kube_api.request("POST", SVC_PATH, body=body))
        assert err.status == 422
        assert err.message == (
            f'Service "{name}" is invalid: spec.healthCheckNodePort: Invalid value: 30100: may only be set when '
            "`type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
        )


async def test_the_health_check_node_port_follows_the_traffic_policy_and_is_immutable(kube_api: KubeApi) -> None:
    await kube_api.request("POST", SVC_PATH, body=service("lb", type="LoadBalancer"))
    local = await change_service(kube_api, "patch", "lb", externalTrafficPolicy="Local")
    health = local["spec"]["healthCheckNodePort"]
    assert 30000 <= health <= 32767
    resubmitted = await kube_api.request("PUT", f"{SVC_PATH}/lb", body={**local, "spec": {**local["spec"]}})
    assert resubmitted["spec"]["healthCheckNodePort"] == health
    stored = await kube_api.request("GET", f"{SVC_PATH}/lb")
    del stored["spec"]["healthCheckNodePort"]  # left out: kept, as the registry keeps allocated values
    assert (await kube_api.request("PUT", f"{SVC_PATH}/lb", body=stored))["spec"]["healthCheckNodePort"] == health
    err = await error_of(change_service(kube_api, "patch", "lb", healthCheckNodePort=31999))
    assert err.status == 422
    assert err.message == 'Service "lb" is invalid: spec.healthCheckNodePort: Forbidden: field is immutable'
    cluster = await change_service(kube_api, "patch", "lb", externalTrafficPolicy="Cluster")
    assert "healthCheckNodePort" not in cluster["spec"]
    ports = [{"port": 80, "nodePort": health}]  # released: free for another Service
    taker = await kube_api.request("POST", SVC_PATH, body=service("taker", type="NodePort", ports=ports))
    assert taker["spec"]["ports"][0]["nodePort"] == health


async def test_a_load_balancer_without_node_port_allocation_keeps_only_the_ones_it_asks_for(
    kube_api: KubeApi,
) -> None:
    ports = [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30801}]
    out = await kube_api.request(
        "POST", SVC_PATH, body=service("lb", type="LoadBalancer", allocateLoadBalancerNodePorts=False, ports=ports)
    )
    assert [p.get("nodePort") for p in out["spec"]["ports"]] == [None, 30801]
    err = await error_of(
        kube_api.request("POST", SVC_PATH, body=service("np", type="NodePort", ports=[{"port": 80, "nodePort": 30801}]))
    )
    assert err.status == 422 and "30801: provided port is already allocated" in err.message
    changed = await change_service(kube_api, "patch", "lb", ports=[*ports, {"name": "c", "port": 82}])
    assert [p.get("nodePort") for p in changed["spec"]["ports"]] == [None, 30801, None]
    err = await error_of(kube_api.request("POST", SVC_PATH, body=service("cip", allocateLoadBalancerNodePorts=True)))
    assert err.status == 422
    assert err.message == (
        'Service "cip" is invalid: spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` '
        "is 'LoadBalancer'"
    )


# -- paged lists: remainingItemCount --------------------------------------------------------------
async def test_a_page_with_more_to_come_counts_the_items_left_unless_a_selector_is_given(kube_api: KubeApi) -> None:
    for i in range(5):
        await kube_api.request(
            "POST", CM_PATH, body={**cm(f"r{i}"), "metadata": {"name": f"r{i}", "labels": {"r": "1"}}}
        )
    first = await kube_api.request("GET", CM_PATH, query=[("limit", "2")])
    assert first["metadata"]["remainingItemCount"] == 3
    second = await kube_api.request("GET", CM_PATH, query=[("limit", "2"), ("continue", first["metadata"]["continue"])])
    assert second["metadata"]["remainingItemCount"] == 1
    last = await kube_api.request("GET", CM_PATH, query=[("limit", "2"), ("continue", second["metadata"]["continue"])])
    assert "continue" not in last["metadata"] and "remainingItemCount" not in last["metadata"]
    for selector in [("labelSelector", "r=1"), ("fieldSelector", "metadata.namespace=default")]:
        selected = await kube_api.request("GET", CM_PATH, query=[selector, ("limit", "2")])
        assert selected["metadata"]["continue"] and "remainingItemCount" not in selected["metadata"]
    for kind in ("Table", "PartialObjectMetadataList"):
        accept = f"application/json;as={kind};v=v1;g=meta.k8s.io"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{kube_api.host}{CM_PATH}?limit=4", headers={"Accept": accept}) as resp,
        ):
            answer = await resp.json(content_type=None)
        assert (answer["kind"], answer["metadata"]["remainingItemCount"]) == (kind, 1)
    deleted = await kube_api.request("DELETE", CM_PATH, query=[("limit", "2")])
    assert deleted["metadata"]["remainingItemCount"] == 3
