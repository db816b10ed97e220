"""What a 1.32 API server makes of a body before it validates or stores it, beyond what each kind defaults.

Every quantity of a ResourceList the generated defaulters reach is rounded up to milli scale
(`SetDefaults_ResourceList`: `RoundUp(-3)`), a Pod's requests copied from its limits included, and written again
as `Quantity.String()` writes it; validation and the QoS class then see the rounded values. A create or update
whose body is JSON `null` decodes as an empty object does (a custom resource's is refused: its kind must be in
the body); one that is any other non-object is refused when its apiVersion and kind are read. A custom resource
is pruned as the structural pruner prunes it: inside the values of an `additionalProperties` map and inside the
listed properties of an `x-kubernetes-preserve-unknown-fields` object too.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.kubesim.server import KubeSim

PODS = "/api/v1/namespaces/default/pods"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
STATEFULSETS = "/apis/apps/v1/namespaces/default/statefulsets"
GADGETS = "/apis/example.com/v1/namespaces/default/gadgets"
FIND_KIND = 'struct { APIVersion string "json:\\"apiVersion,omitempty\\""; Kind string "json:\\"kind,omitempty\\"" }'


async def exchange(
    sim: KubeSim, method: str, path: str, body: Any, *, content_type: str = "application/json"
) -> tuple[int, dict[str, Any], list[str]]:
    """The status, the answer and the warnings of one request; `body` as it is when already text, else as JSON."""
    data = body if isinstance(body, str) or body is None else json.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{sim.url}{path}", data=data, headers={"Content-Type": content_type}) as resp,
    ):
        return resp.status, await resp.json(), resp.headers.getall("Warning", [])


def pod(name: str, resources: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": resources}], **spec},
    }


def template(resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "a"}},
        "spec": {
            "initContainers": [{"name": "init", "image": "i", "resources": resources}],
            "containers": [{"name": "c", "image": "i", "resources": resources}],
        },
    }


def causes(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["field"], c["message"]) for c in answer["details"]["causes"]]


# -- ResourceLists rounded up to milli ------------------------------------------------------------------------


ROUNDED = [
    ("0.0001", "1m"),  # finer than milli: rounded up
    (0.0001, "1m"),  # a JSON number: its text is parsed
    ("100u", "1m"),
    ("1n", "1m"),
    ("1.5m", "2m"),
    ("1.0001", "1001m"),
    ("1.000001", "1001m"),  # canonical as written (kept), but finer than milli: rounded and written again
    ("1e-4", "1e-3"),  # the exponent form stays the exponent form
    ("1.5e-3", "2e-3"),
    ("0.0001Ki", "103m"),  # 0.1024: binary below one is decimal
    ("1.0001Ki", "1024103m"),  # 1024.1024: binary but not whole is decimal
    ("0.5", "500m"),  # whole to the thousandth: only made canonical
    ("1.500", "1.500"),  # canonical as written and whole to the thousandth: kept as it is
    ("250m", "250m"),
    ("1Gi", "1Gi"),
]


async def test_a_containers_quantities_are_rounded_up_to_milli(kubesim: KubeSim) -> None:
    """`SetDefaults_ResourceList` runs on each container's requests and limits (`RoundUp(-3)`), then the
    quantity is written as `Quantity.String()` writes the rounded value; the create's answer and the stored
    object show it. One container per case, each requesting and limiting the value sent."""
    body = pod("p", {})
    body["spec"]["containers"] = [
        {
            "name": f"c{i}",
            "image": "i",
            "resources": {"requests": {"cpu": sent, "ephemeral-storage": sent}, "limits": {"memory": sent}},
        }
        for i, (sent, _) in enumerate(ROUNDED)
    ]
    status, created, _ = await exchange(kubesim, "POST", PODS, body)
    assert status == 201, created
    _, fetched, _ = await exchange(kubesim, "GET", f"{PODS}/p", None)
    wanted = [
        {"requests": {"cpu": stored, "ephemeral-storage": stored, "memory": stored}, "limits": {"memory": stored}}
        for _, stored in ROUNDED
    ]
    for got in (created, fetched):
        assert [c["resources"] for c in got["spec"]["containers"]] == wanted


async def test_a_request_copied_from_a_limit_is_rounded_and_the_qos_class_counts_rounded_values(
    kubesim: KubeSim,
) -> None:
    """`SetDefaults_Pod` copies the limits a container does not request before the ResourceList defaulters
    round both, so the request is the rounded limit; `ComputePodQOS` then compares rounded values, so requests
    and limits that differ below a thousandth make a Guaranteed pod."""
    limits_only = pod("limits-only", {"limits": {"cpu": "0.0001", "memory": "1Gi"}})
    status, created, _ = await exchange(kubesim, "POST", PODS, limits_only)
    assert status == 201, created
    assert created["spec"]["containers"][0]["resources"] == {
        "limits": {"cpu": "1m", "memory": "1Gi"},
        "requests": {"cpu": "1m", "memory": "1Gi"},
    }
    assert created["status"]["qosClass"] == "Guaranteed"
    close = pod("close", {"limits": {"cpu": "0.0002", "memory": "1Gi"}, "requests": {"cpu": "0.0001", "memory": "1Gi"}})
    status, created, _ = await exchange(kubesim, "POST", PODS, close)
    assert status == 201, created
    assert created["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "1m"
    assert created["status"]["qosClass"] == "Guaranteed"


async def test_a_request_is_compared_with_its_limit_once_both_are_rounded(kubesim: KubeSim) -> None:
    """`ValidateResourceRequirements` sees the defaulted quantities: a request above its limit by less than a
    thousandth is no longer above it, and one still above names both rounded values."""
    status, created, _ = await exchange(
        kubesim, "POST", PODS, pod("under", {"requests": {"cpu": "0.0005"}, "limits": {"cpu": "0.0001"}})
    )
    assert status == 201, created
    assert created["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "1m"}, "limits": {"cpu": "1m"}}
    status, answer, _ = await exchange(
        kubesim, "POST", PODS, pod("over", {"requests": {"cpu": "0.0011"}, "limits": {"cpu": "0.001"}})
    )
    assert status == 422
    assert causes(answer) == [
        (
            "spec.containers[0].resources.requests[cpu]",
            'Invalid value: "2m": must be less than or equal to cpu limit of 1m',
        )
    ]


async def test_a_pods_ephemeral_volume_claim_is_rounded(kubesim: KubeSim) -> None:
    """The claim template of an ephemeral volume is a ResourceList the Pod's defaulter reaches too."""
    claim = {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "0.0001"}}}}
    body = pod("eph", {}, volumes=[{"name": "scratch", "ephemeral": {"volumeClaimTemplate": claim}}])
    status, created, _ = await exchange(kubesim, "POST", PODS, body)
    assert status == 201, created
    stored = created["spec"]["volumes"][0]["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]
    assert stored == {"requests": {"storage": "1m"}}


async def test_workload_templates_and_claim_templates_are_rounded_without_requests_from_limits(
    kubesim: KubeSim,
) -> None:
    """The apps/v1 defaulters round the template's containers and init containers and a StatefulSet's volume
    claim templates; requests are copied from limits only for a Pod, so a template keeps its requests unset."""
    resources = {"limits": {"cpu": "1.0001", "memory": "0.0001Ki"}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": template(resources)},
    }
    status, created, _ = await exchange(kubesim, "POST", DEPLOYMENTS, deployment)
    assert status == 201, created
    rounded = {"limits": {"cpu": "1001m", "memory": "103m"}}
    spec = created["spec"]["template"]["spec"]
    assert (spec["initContainers"][0]["resources"], spec["containers"][0]["resources"]) == (rounded, rounded)
    claim = {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1.5e-6"}}},
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "s"},
        "spec": {
            "serviceName": "s",
            "selector": {"matchLabels": {"app": "a"}},
            "template": template(resources),
            "volumeClaimTemplates": [claim],
        },
    }
    status, created, _ = await exchange(kubesim, "POST", STATEFULSETS, statefulset)
    assert status == 201, created
    assert created["spec"]["template"]["spec"]["containers"][0]["resources"] == rounded
    assert created["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] == {"requests": {"storage": "1e-3"}}


# -- bodies that are not objects --------------------------------------------------------------------------------


async def test_a_null_body_is_decoded_as_an_empty_object(kubesim: KubeSim) -> None:
    """`Interpret` reads no apiVersion and kind from `null` (the URL's are taken) and encoding/json leaves the
    struct empty: the create is validated as `{}` is (422), a PUT has no name to match the URL's (400)."""
    status, answer, _ = await exchange(kubesim, "POST", CONFIGMAPS, "null")
    assert (status, answer["message"]) == (
        422,
        'ConfigMap "" is invalid: metadata.name: Required value: name or generateName is required',
    )
    status, answer, _ = await exchange(kubesim, "POST", PODS, "null")
    assert status == 422
    assert causes(answer) == [
        ("metadata.name", "Required value: name or generateName is required"),
        ("spec.containers", "Required value"),
    ]
    assert (await exchange(kubesim, "POST", CONFIGMAPS, {"metadata": {"name": "c"}}))[0] == 201
    status, answer, _ = await exchange(kubesim, "PUT", f"{CONFIGMAPS}/c", "null")
    assert (status, answer["message"]) == (
        400,
        "the name of the object (c based on URL) was undeterminable: name must be provided",
    )


GADGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "ports": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "number": {"type": "integer"},
                            "tags": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
                "extra": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {"limits": {"type": "object", "properties": {"max": {"type": "integer"}}}},
                },
                "free": {
                    "type": "array",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "items": {"type": "object", "properties": {"inner": {"type": "object", "properties": {}}}},
                },
                "template": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "properties": {"data": {"type": "object", "properties": {"key": {"type": "string"}}}},
                },
            },
        }
    },
}
GADGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "gadgets", "kind": "Gadget"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": GADGET_SCHEMA}}],
    },
}


@pytest.mark.parametrize(
    ("body", "hex_start", "json_kind"), [("[]", "5b5d", "array"), ('"x"', "227822", "string"), ("1", "31", "number")]
)
async def test_a_custom_resource_body_that_is_no_object_is_refused_as_a_built_in_kinds_is(
    kubesim: KubeSim, body: str, hex_start: str, json_kind: str
) -> None:
    """`Interpret` cannot read an apiVersion and kind from a body that is not an object, whatever the kind:
    400, the object unrecognized, the body's start in hex."""
    kubesim.create_object(GADGET_CRD)
    for path, kind in ((GADGETS, "Gadget"), (CONFIGMAPS, "ConfigMap")):
        status, answer, _ = await exchange(kubesim, "POST", path, body)
        assert (status, answer["message"]) == (
            400,
            f"the object provided is unrecognized (must be of type {kind}): couldn't get version/kind; json parse "
            f"error: json: cannot unmarshal {json_kind} into Go value of type {FIND_KIND} ({hex_start})",
        )


async def test_a_custom_resources_null_body_has_no_kind(kubesim: KubeSim) -> None:
    """A custom resource is decoded into an Unstructured, which takes its kind from the body alone: `null`
    has none (`unstructuredJSONScheme`), so the strict decoder (fieldValidation Warn, the default) refuses it."""
    kubesim.create_object(GADGET_CRD)
    status, answer, _ = await exchange(kubesim, "POST", GADGETS, "null")
    assert (status, answer["message"]) == (
        400,
        "the object provided is unrecognized (must be of type Gadget): Object 'Kind' is missing in 'null' (6e756c6c)",
    )


async def test_a_custom_resource_body_without_its_kind_is_refused_quoting_the_body(kubesim: KubeSim) -> None:
    """A built-in kind's body may leave its kind to the URL; a custom resource's may not: the whole body is quoted,
    as sent, or for YAML as the JSON it became (keys sorted)."""
    kubesim.create_object(GADGET_CRD)
    sent = '{"apiVersion":"example.com/v1","metadata":{"name":"g"}}'
    status, answer, _ = await exchange(kubesim, "POST", GADGETS, sent)
    assert (status, answer["message"]) == (
        400,
        f"the object provided is unrecognized (must be of type Gadget): Object 'Kind' is missing in '{sent}' "
        f"({sent[:30]} ...)",
    )
    status, answer, _ = await exchange(
        kubesim, "POST", GADGETS, "metadata: {name: g}\napiVersion: example.com/v1\n", content_type="application/yaml"
    )
    assert status == 400
    assert (
        'Object \'Kind\' is missing in \'{"apiVersion":"example.com/v1","metadata":{"name":"g"}}\''
        in (answer["message"])
    )
    assert kubesim.get_object("gadgets", "default", "g", group="example.com") is None


# -- custom resources pruned inside maps and preserved objects --------------------------------------------------


def gadget() -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Gadget",
        "metadata": {"name": "g"},
        "spec": {
            "ports": {"http": {"number": 80, "colour": "red"}, "admin.web": {"tags": ["a"], "deep": {"x": 1}}},
            "extra": {"limits": {"max": 3, "min": 1}, "anything": {"goes": True}},
            "free": [{"inner": {"dropped": 1}, "kept": 2}],
            "template": {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "t"},
                "data": {"key": "v", "other": "w"},
            },
        },
    }


PRUNED = (
    "spec.extra.limits.min",
    "spec.free[0].inner.dropped",
    "spec.ports.admin.web.deep",
    "spec.ports.http.colour",
    "spec.template.data.other",
)


async def test_pruning_goes_inside_additional_properties_and_preserved_objects(kubesim: KubeSim) -> None:
    """The structural pruner prunes each value of an `additionalProperties` map by its schema, and the
    properties an `x-kubernetes-preserve-unknown-fields` object lists by theirs (a preserving list's items
    alike), keeping what such an object does not list; an embedded resource keeps its apiVersion, kind and
    metadata. What it prunes is reported by path, sorted, and is not stored."""
    kubesim.create_object(GADGET_CRD)
    status, answer, _ = await exchange(kubesim, "POST", f"{GADGETS}?fieldValidation=Strict", gadget())
    listed = ", ".join(f'unknown field "{path}"' for path in PRUNED)
    assert (status, answer["message"]) == (
        400,
        f'Gadget in version "v1" cannot be handled as a Gadget: strict decoding error: {listed}',
    )
    status, created, warnings = await exchange(kubesim, "POST", GADGETS, gadget())
    assert status == 201, created
    assert warnings == [f'299 - "unknown field \\"{path}\\""' for path in PRUNED]
    expected = {
        "ports": {"http": {"number": 80}, "admin.web": {"tags": ["a"]}},
        "extra": {"limits": {"max": 3}, "anything": {"goes": True}},
        "free": [{"inner": {}, "kept": 2}],
        "template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "t"}, "data": {"key": "v"}},
    }
    assert created["spec"] == expected
    _, fetched, _ = await exchange(kubesim, "GET", f"{GADGETS}/g", None)
    assert fetched["spec"] == expected
