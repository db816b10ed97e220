"""What the API server stores and answers for a built-in object: its body decoded into the kind's Go type and that
struct encoded again (as it is read back from storage), not the body as it was sent. A null is the zero value, an
empty field with `omitempty` is dropped, a field without it is written even when empty, a pointer to a zero value
stays, and quantities, times and bytes come back in their canonical text. A custom resource keeps its body, but
its metadata goes through an ObjectMeta too. Seen over HTTP, through kubectl, and on what the controllers write."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.kubesim.controllers import Controllers
from tests.kubesim.fixtures import Kubectl, eventually
from tests.kubesim.server import KubeSim

CORE = "/api/v1/namespaces/default"
APPS = "/apis/apps/v1/namespaces/default"


async def send(
    sim: KubeSim, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
) -> tuple[int, Any]:
    """The status and the answer of one request; `body` as it is when already text, else as JSON."""
    data = None if body is None else body if isinstance(body, str) else json.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{sim.url}{path}", data=data, headers={"Content-Type": content_type}) as resp,
    ):
        return resp.status, await resp.json()


async def created(sim: KubeSim, path: str, body: Any) -> tuple[Any, Any]:
    """The answer to creating `body` at `path` (201) and the object a GET then returns."""
    status, answer = await send(sim, "POST", path, body)
    assert status == 201, answer
    status, got = await send(sim, "GET", f"{path}/{answer['metadata']['name']}")
    assert status == 200, got
    return answer, got


def pod(name: str, *, containers: list[Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": containers or [{"name": "c", "image": "i"}], **spec},
    }


def deployment(name: str, container: dict[str, Any] | None = None, **template_meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, **template_meta},
                "spec": {"containers": [container or {"name": "c", "image": "i"}]},
            },
        },
    }


async def test_a_null_map_value_is_the_zero_value_of_its_type(kubesim: KubeSim) -> None:
    """Decoding a null into a map's value leaves the element's zero value: "" for a string; a nil []byte, which
    storage (protobuf) reads back empty. Base64 is written again as `StdEncoding` writes it."""
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "nulls", "labels": {"a": None, "b": "x"}},
        "data": {"k": None},
        "binaryData": {"n": [104, 105]},
    }
    for answer in await created(kubesim, f"{CORE}/configmaps", config):
        assert answer["metadata"]["labels"] == {"a": "", "b": "x"}
        assert answer["data"] == {"k": ""}
        assert answer["binaryData"] == {"n": "aGk="}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "nulls"}, "data": {"k": None, "j": "YWJj\n"}}
    for answer in await created(kubesim, f"{CORE}/secrets", secret):
        assert answer["data"] == {"k": "", "j": "YWJj"}


async def test_a_null_list_element_is_the_zero_value_of_its_type(kubesim: KubeSim) -> None:
    container = {"name": "c", "image": "i", "args": [None, "x"], "env": [{"name": "A", "value": None}]}
    for answer in await created(kubesim, f"{CORE}/pods", pod("args", containers=[container])):
        [got] = answer["spec"]["containers"]
        assert got["args"] == ["", "x"]
        assert got["env"] == [{"name": "A"}]


async def test_a_null_struct_in_a_list_is_validated_as_an_empty_one(kubesim: KubeSim) -> None:
    status, answer = await send(
        kubesim, "POST", f"{CORE}/pods", pod("holes", containers=[{"name": "c", "image": "i"}, None])
    )
    assert (status, answer["reason"]) == (422, "Invalid")
    assert [(c["field"], c["message"]) for c in answer["details"]["causes"]] == [
        ("spec.containers[1].name", "Required value"),
        ("spec.containers[1].image", "Required value"),
    ]


async def test_a_null_field_is_its_zero_value_then_defaulted(kubesim: KubeSim) -> None:
    """A null pointer is nil, so defaulting fills it; a null non-pointer field keeps its zero value (an
    IntOrString's is 0, which a Service port's defaulting replaces with the port)."""
    body = deployment("nulls")
    body["metadata"]["labels"] = None
    body["spec"]["replicas"] = None
    body["spec"]["template"]["spec"].update(hostNetwork=None, terminationGracePeriodSeconds=None, volumes=None)
    for answer in await created(kubesim, f"{APPS}/deployments", body):
        assert "labels" not in answer["metadata"]
        assert answer["spec"]["replicas"] == 1
        template = answer["spec"]["template"]["spec"]
        assert template["terminationGracePeriodSeconds"] == 30
        assert "hostNetwork" not in template and "volumes" not in template
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "nulls"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": None}]},
    }
    for answer in await created(kubesim, f"{CORE}/services", service):
        assert answer["spec"]["ports"] == [{"port": 80, "targetPort": 80, "protocol": "TCP"}]


async def test_empty_fields_with_omitempty_are_dropped_and_pointers_to_zero_values_kept(
    kubesim: KubeSim, kubectl: Kubectl
) -> None:
    body = pod(
        "empties",
        containers=[{"name": "c", "image": "i", "ports": [], "workingDir": "", "command": []}],
        hostNetwork=False,
        nodeSelector={},
        automountServiceAccountToken=False,
        securityContext={"runAsNonRoot": False, "supplementalGroups": []},
    )
    body["metadata"].update(labels={}, annotations={})
    answers = [*await created(kubesim, f"{CORE}/pods", body), await kubectl.json("get", "pod", "empties")]
    for answer in answers:
        assert "labels" not in answer["metadata"] and "annotations" not in answer["metadata"]
        spec = answer["spec"]
        assert "hostNetwork" not in spec and "nodeSelector" not in spec
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"] == {"runAsNonRoot": False}
        [container] = spec["containers"]
        assert not {"ports", "workingDir", "command"} & set(container)


async def test_fields_without_omitempty_are_written_even_when_empty(kubesim: KubeSim, kubectl: Kubectl) -> None:
    """A template's `creationTimestamp` (a zero Time: null), a container's `resources` and a status (structs),
    a ClusterRole's `rules` and an EndpointSlice's `endpoints` and `ports` (nil, or empty, which storage reads back
    nil: null)."""
    for answer in [
        *await created(kubesim, f"{APPS}/deployments", deployment("bare")),
        await kubectl.json("get", "deployment", "bare"),
    ]:
        template = answer["spec"]["template"]
        assert "creationTimestamp" in template["metadata"] and template["metadata"]["creationTimestamp"] is None
        assert template["spec"]["containers"][0]["resources"] == {}
        assert answer["status"] == {}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bare"}, "spec": {"ports": [{"port": 80}]}}
    for answer in await created(kubesim, f"{CORE}/services", service):
        assert answer["status"] == {"loadBalancer": {}}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "aggregated"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"aggregate": "true"}}]},
    }
    for answer in await created(kubesim, "/apis/rbac.authorization.k8s.io/v1/clusterroles", role):
        assert "rules" in answer and answer["rules"] is None
    piece = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "bare"},
        "addressType": "IPv4",
        "endpoints": [],
    }
    for answer in await created(kubesim, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", piece):
        assert (answer["endpoints"], answer["ports"]) == (None, None)


RESOURCES = {
    "requests": {"cpu": "0.5", "memory": "1024Mi", "ephemeral-storage": "1e3"},
    "limits": {"cpu": "1000m", "memory": "1.5Gi", "ephemeral-storage": "100M"},
}
CANONICAL = {
    "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1e3"},
    "limits": {"cpu": "1", "memory": "1536Mi", "ephemeral-storage": "100M"},
}


async def test_quantities_are_written_as_quantity_string_writes_them(kubesim: KubeSim) -> None:
    """`Quantity.String()`: canonical text in the format of the suffix sent (`1000m` is `1`, `1024Mi` is `1Gi`,
    `0.5` is `500m`), text already canonical as written (`1e3`, `100M`, `+1`), a number read as its text, and
    precision finer than nano rounded up."""
    volumes = [
        {"name": "number", "emptyDir": {"sizeLimit": 1}},
        {"name": "signed", "emptyDir": {"sizeLimit": "+1"}},
        {"name": "tiny", "emptyDir": {"sizeLimit": "0.5n"}},
    ]
    body = pod("sized", containers=[{"name": "c", "image": "i", "resources": RESOURCES}], volumes=volumes)
    status, dry = await send(kubesim, "POST", f"{CORE}/pods?dryRun=All", body)
    assert status == 201, dry
    for answer in [dry, *await created(kubesim, f"{CORE}/pods", body)]:
        assert answer["spec"]["containers"][0]["resources"] == CANONICAL
        sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in answer["spec"]["volumes"] if "emptyDir" in v}
        assert sizes == {"number": "1", "signed": "+1", "tiny": "1n"}


SIZES = {
    "1000M": "1G",  # not canonical (ends in 000): rewritten in the largest suffix that keeps it whole
    "100.035k": "100.035k",  # canonical as written: kept, fraction and all
    "1.500": "1.500",
    "12E": "12E",
    "1.3E+6": "1300e3",  # DecimalExponent: the exponent a multiple of 3
    ".001Ki": "1024m",  # BinarySI below 1024: written as DecimalSI
    "0.5Mi": "512Ki",
    ".000000000001Ki": "2n",  # finer than nano: rounded up
    "3.001n": "4n",
    "1.1E-9": "2e-9",
    "9Ei": "9223372036854775807",  # BinarySI past int64: capped
}


async def test_quantity_text_is_what_parse_quantity_keeps_or_canonicalize_bytes_writes(kubesim: KubeSim) -> None:
    volumes = [{"name": f"v{i}", "emptyDir": {"sizeLimit": sent}} for i, sent in enumerate(SIZES)]
    for answer in await created(kubesim, f"{CORE}/pods", pod("many-sizes", volumes=volumes)):
        got = [v["emptyDir"]["sizeLimit"] for v in answer["spec"]["volumes"] if "emptyDir" in v]
        assert dict(zip(SIZES, got, strict=True)) == SIZES


async def test_a_patchs_number_reaches_a_quantity_as_its_patch_type_reads_it(kubesim: KubeSim) -> None:
    """A JSON or merge patch's result is decoded from its JSON, the number as written (`1e3`, DecimalExponent); a
    strategic merge patch's goes through the unstructured converter, which holds the number as a float64 and
    writes it again for the Quantity (`1000`: `1k`)."""
    path = f"{APPS}/deployments/patched"
    await created(kubesim, f"{APPS}/deployments", deployment("patched"))
    container = '{"name":"c","image":"i","resources":{"limits":{"cpu":1e3}}}'
    patches = [
        ("application/merge-patch+json", f'{{"spec":{{"template":{{"spec":{{"containers":[{container}]}}}}}}}}', "1e3"),
        (
            "application/strategic-merge-patch+json",
            f'{{"spec":{{"template":{{"spec":{{"containers":[{container}]}}}}}}}}',
            "1k",
        ),
        (
            "application/json-patch+json",
            '[{"op":"replace","path":"/spec/template/spec/containers/0/resources","value":{"limits":{"cpu":0.5}}}]',
            "500m",
        ),
    ]
    for content_type, patch, cpu in patches:
        status, answer = await send(kubesim, "PATCH", path, patch, content_type=content_type)
        assert status == 200, answer
        assert answer["spec"]["template"]["spec"]["containers"][0]["resources"] == {"limits": {"cpu": cpu}}
        _, got = await send(kubesim, "GET", path)
        assert got["spec"]["template"]["spec"]["containers"][0]["resources"] == {"limits": {"cpu": cpu}}


async def test_an_update_that_only_changes_how_values_are_written_writes_nothing(kubesim: KubeSim) -> None:
    """The update is compared as its Go value encodes: `1000m` for `1`, a dropped `hostNetwork: false` and a
    null pointer for an absent one change nothing, so the resourceVersion stays."""
    container = {"name": "c", "image": "i", "resources": {"limits": {"cpu": "1"}}}
    first, _ = await created(kubesim, f"{APPS}/deployments", deployment("same", container))
    again = json.loads(json.dumps(first))
    again["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "1000m"
    again["spec"]["template"]["spec"].update(hostNetwork=False, activeDeadlineSeconds=None)
    status, answer = await send(kubesim, "PUT", f"{APPS}/deployments/same", again)
    assert status == 200, answer
    assert answer["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


async def test_times_are_written_in_utc_to_their_precision(kubesim: KubeSim) -> None:
    """`metav1.Time` is written in UTC to the second (a fraction is dropped), `MicroTime` to the microsecond."""
    body = deployment("timed", creationTimestamp="2024-01-01T01:00:00.5+01:00")
    for answer in await created(kubesim, f"{APPS}/deployments", body):
        assert answer["spec"]["template"]["metadata"]["creationTimestamp"] == "2024-01-01T00:00:00Z"
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "timed"},
        "spec": {"holderIdentity": "", "renewTime": "2024-01-01T01:00:00.123456+01:00"},
    }
    for answer in await created(kubesim, "/apis/coordination.k8s.io/v1/namespaces/default/leases", lease):
        assert answer["spec"] == {"holderIdentity": "", "renewTime": "2024-01-01T00:00:00.123456Z"}


async def test_a_custom_resource_keeps_its_body_but_its_metadata_is_an_object_meta(kubesim: KubeSim) -> None:
    """A custom resource is not decoded into a struct: what its schema keeps stays as sent (a quantity-like
    string, an empty list). Its metadata is decoded into an ObjectMeta and written back (the schema coercer's
    `GetObjectMetaWithOptions` and `SetObjectMeta`); the CRD itself is a built-in object."""
    definition = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "sizes.example.io", "annotations": {}},
        "spec": {
            "group": "example.io",
            "names": {"kind": "Size", "plural": "sizes", "shortNames": []},
            "scope": "Cluster",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }
    crd, _ = await created(kubesim, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", definition)
    assert "annotations" not in crd["metadata"] and "shortNames" not in crd["spec"]["names"]
    size = {
        "apiVersion": "example.io/v1",
        "kind": "Size",
        "metadata": {"name": "big", "labels": {"a": None}, "annotations": {}},
        "spec": {"cpu": "1000m", "tags": [], "flag": False},
    }
    for answer in await created(kubesim, "/apis/example.io/v1/sizes", size):
        assert answer["spec"] == {"cpu": "1000m", "tags": [], "flag": False}
        assert answer["metadata"]["labels"] == {"a": ""} and "annotations" not in answer["metadata"]


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {}
    spec:
      hostNetwork: false
      containers:
      - name: app
        image: app
        resources:
          limits: {cpu: 1000m, memory: 1024Mi}
"""


async def test_kubectl_and_the_controllers_see_the_stored_form(
    controllers: Controllers, kubesim: KubeSim, kubectl: Kubectl
) -> None:
    """What kubectl applies is stored as decoded; the ReplicaSet and the pod the controllers make from it are
    written through the same API and stored the same way."""
    await kubectl.apply(DEPLOYMENT)
    limits = {"cpu": "1", "memory": "1Gi"}
    cpu = await kubectl.run("get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].resources}")
    assert json.loads(cpu.stdout) == {"limits": limits}
    web = await kubectl.json("get", "deployment", "web")
    template = web["spec"]["template"]
    assert template["metadata"] == {"creationTimestamp": None, "labels": {"app": "web"}}
    assert "hostNetwork" not in template["spec"]

    async def replica_set() -> Any:
        _, found = await send(kubesim, "GET", f"{APPS}/replicasets")
        return found["items"]

    [owned] = await eventually(replica_set, what="the deployment's ReplicaSet")
    assert owned["spec"]["template"]["metadata"]["creationTimestamp"] is None
    assert owned["spec"]["template"]["spec"]["containers"][0]["resources"] == {"limits": limits}
    assert owned["status"]["replicas"] in (0, 1)

    async def pods() -> Any:
        _, found = await send(kubesim, "GET", f"{CORE}/pods")
        return found["items"]

    [made] = await eventually(pods, what="the ReplicaSet's pod")
    assert made["spec"]["containers"][0]["resources"]["limits"] == limits
