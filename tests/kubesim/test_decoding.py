"""Fields of the wrong JSON type, refused as the API server's decoder refuses them: while the body is decoded into
the kind's Go struct, before validation. A create or update is a 400 (`Pod in version "v1" cannot be handled as
a Pod: json: cannot unmarshal ...`), a patch whose result does not decode a 422 on the field `patch`; fields whose
Go type takes several JSON types (IntOrString, Quantity, Time) decode as their own methods do."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.kubesim.fixtures import Kubectl
from tests.kubesim.resources import RESOURCES, ResourceType
from tests.kubesim.server import KubeSim

QUANTITY_FORMAT = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
QUANTITY_SUFFIX = "unable to parse quantity's suffix"
PODS = "/api/v1/namespaces/default/pods"
SERVICES = "/api/v1/namespaces/default/services"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", **spec}]},
    }


def deployment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
            **spec,
        },
    }


async def send(
    sim: KubeSim, method: str, path: str, body: Any, *, content_type: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    """The status and the answer of one request; `body` as it is when already text, else as JSON."""
    data = body if isinstance(body, str) else json.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{sim.url}{path}", data=data, headers={"Content-Type": content_type}) as resp,
    ):
        return resp.status, await resp.json()


def handled(kind: str, version: str, error: str) -> str:
    return f'{kind} in version "{version}" cannot be handled as a {kind}: {error}'


def unmarshal(value: str, struct_field: str, go_type: str) -> str:
    return f"json: cannot unmarshal {value} into Go struct field {struct_field} of type {go_type}"


# -- create --------------------------------------------------------------------------------------------------

CREATE_CASES: list[tuple[str, str, Any, str]] = [
    (
        "pod-name-number",
        PODS,
        {**pod(), "metadata": {"name": 5}},
        handled("Pod", "v1", unmarshal("number", "ObjectMeta.metadata.name", "string")),
    ),
    (
        "pod-metadata-string",
        PODS,
        {**pod(), "metadata": "p"},
        handled("Pod", "v1", unmarshal("string", "Pod.metadata", "v1.ObjectMeta")),
    ),
    (
        "pod-containers-string",
        PODS,
        {**pod(), "spec": {"containers": "c"}},
        handled("Pod", "v1", unmarshal("string", "PodSpec.spec.containers", "[]v1.Container")),
    ),
    (
        "pod-container-string",
        PODS,
        {**pod(), "spec": {"containers": ["c"]}},
        handled("Pod", "v1", unmarshal("string", "PodSpec.spec.containers", "v1.Container")),
    ),
    (
        "pod-container-port-string",
        PODS,
        pod(ports=[{"containerPort": "80"}]),
        handled("Pod", "v1", unmarshal("string", "ContainerPort.spec.containers.ports.containerPort", "int32")),
    ),
    (
        "pod-host-network-string",
        PODS,
        {**pod(), "spec": {"containers": [{"name": "c", "image": "i"}], "hostNetwork": "true"}},
        handled("Pod", "v1", unmarshal("string", "PodSpec.spec.hostNetwork", "bool")),
    ),
    (
        "pod-node-selector-number",
        PODS,
        {**pod(), "spec": {"containers": [{"name": "c", "image": "i"}], "nodeSelector": {"disk": 1}}},
        handled("Pod", "v1", unmarshal("number", "PodSpec.spec.nodeSelector", "string")),
    ),
    (
        "pod-volume-source-number",
        PODS,
        {**pod(), "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": [{"name": "v", "configMap": 1}]}},
        handled("Pod", "v1", unmarshal("number", "Volume.spec.volumes.configMap", "v1.ConfigMapVolumeSource")),
    ),
    (
        "service-port-string",
        SERVICES,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": "80"}]}},
        handled("Service", "v1", unmarshal("string", "ServicePort.spec.ports.port", "int32")),
    ),
    (
        "service-type-number",
        SERVICES,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"type": 5}},
        handled("Service", "v1", unmarshal("number", "ServiceSpec.spec.type", "v1.ServiceType")),
    ),
    (
        "service-ports-object",
        SERVICES,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": {"port": 80}}},
        handled("Service", "v1", unmarshal("object", "ServiceSpec.spec.ports", "[]v1.ServicePort")),
    ),
    (
        "configmap-data-number",
        CONFIGMAPS,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": 1}},
        handled("ConfigMap", "v1", unmarshal("number", "ConfigMap.data", "string")),
    ),
    (
        "configmap-immutable-string",
        CONFIGMAPS,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "immutable": "yes"},
        handled("ConfigMap", "v1", unmarshal("string", "ConfigMap.immutable", "bool")),
    ),
    (
        "configmap-binary-data-not-base64",
        CONFIGMAPS,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "binaryData": {"k": "YWJj!"}},
        handled("ConfigMap", "v1", "illegal base64 data at input byte 4"),
    ),
    (
        "secret-data-not-base64",
        "/api/v1/namespaces/default/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "YQ="}},
        handled("Secret", "v1", "illegal base64 data at input byte 3"),
    ),
    (
        "secret-data-number",
        "/api/v1/namespaces/default/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": 1}},
        handled("Secret", "v1", unmarshal("number", "Secret.data", "[]uint8")),
    ),
    (
        "deployment-replicas-string",
        DEPLOYMENTS,
        deployment(replicas="3"),
        handled("Deployment", "v1", unmarshal("string", "DeploymentSpec.spec.replicas", "int32")),
    ),
    (
        "deployment-template-container-name",
        DEPLOYMENTS,
        {
            **deployment(),
            "spec": {**deployment()["spec"], "template": {"spec": {"containers": [{"name": 5}]}}},
        },
        handled("Deployment", "v1", unmarshal("number", "Container.spec.template.spec.containers.name", "string")),
    ),
    (
        "namespace-finalizers-string",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}, "spec": {"finalizers": "kubernetes"}},
        handled("Namespace", "v1", unmarshal("string", "NamespaceSpec.spec.finalizers", "[]v1.FinalizerName")),
    ),
    (
        "serviceaccount-automount-string",
        "/api/v1/namespaces/default/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a"}, "automountServiceAccountToken": "no"},
        handled("ServiceAccount", "v1", unmarshal("string", "ServiceAccount.automountServiceAccountToken", "bool")),
    ),
    (
        "serviceaccount-secret-name-number",
        "/api/v1/namespaces/default/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a"}, "secrets": [{"name": 5}]},
        handled("ServiceAccount", "v1", unmarshal("number", "ObjectReference.secrets.name", "string")),
    ),
]


@pytest.mark.parametrize(("path", "body", "message"), [c[1:] for c in CREATE_CASES], ids=[c[0] for c in CREATE_CASES])
async def test_a_field_of_the_wrong_type_is_a_400_naming_the_go_field(
    kubesim: KubeSim, path: str, body: Any, message: str
) -> None:
    status, answer = await send(kubesim, "POST", path, body)
    assert (status, answer["reason"], answer["message"]) == (400, "BadRequest", message)
    assert "details" not in answer


def collection(resource: ResourceType) -> str:
    base = f"/apis/{resource.group}/{resource.version}" if resource.group else "/api/v1"
    return f"{base}/namespaces/default/{resource.plural}" if resource.namespaced else f"{base}/{resource.plural}"


@pytest.mark.parametrize("resource", RESOURCES, ids=[r.key for r in RESOURCES])
async def test_every_built_in_kind_decodes_its_metadata(kubesim: KubeSim, resource: ResourceType) -> None:
    """A label value must be a string (`map[string]string`), whatever the kind; the kind and version named
    are the body's, the struct the one holding the field."""
    body = {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": {"name": "x", "labels": {"a": 1}}}
    status, answer = await send(kubesim, "POST", collection(resource), body)
    error = unmarshal("number", "ObjectMeta.metadata.labels", "string")
    assert (status, answer["message"]) == (400, handled(resource.kind, resource.version, error))


async def test_a_number_is_quoted_as_it_was_written(kubesim: KubeSim) -> None:
    """`strconv.ParseInt` refuses a fraction or an exponent, and the error quotes the number's JSON text."""
    raw = json.dumps(pod(ports=[{"containerPort": 0}])).replace('"containerPort": 0', '"containerPort": 8080.0')
    status, answer = await send(kubesim, "POST", PODS, raw)
    error = unmarshal("number 8080.0", "ContainerPort.spec.containers.ports.containerPort", "int32")
    assert (status, answer["message"]) == (400, handled("Pod", "v1", error))
    status, answer = await send(
        kubesim, "POST", DEPLOYMENTS, json.dumps(deployment(replicas=0)).replace('"replicas": 0', '"replicas": 1e1')
    )
    error = unmarshal("number 1e1", "DeploymentSpec.spec.replicas", "int32")
    assert (status, answer["message"]) == (400, handled("Deployment", "v1", error))


async def test_the_first_type_error_is_reported_and_an_unmarshaler_error_wins(kubesim: KubeSim) -> None:
    """The decoder keeps the first type error and goes on; an `UnmarshalJSON` method's error ends decoding at
    once, so it is reported even after another type error."""
    body = {**pod(), "metadata": {"name": 5, "labels": {"a": 1}}}
    status, answer = await send(kubesim, "POST", PODS, body)
    assert (status, answer["message"]) == (
        400,
        handled("Pod", "v1", unmarshal("number", "ObjectMeta.metadata.name", "string")),
    )
    body = {**pod(resources={"limits": {"cpu": "lots"}}), "metadata": {"name": 5}}
    status, answer = await send(kubesim, "POST", PODS, body)
    assert (status, answer["message"]) == (400, handled("Pod", "v1", QUANTITY_FORMAT))


async def test_int_or_string_fields_take_a_string_or_an_int32(kubesim: KubeSim) -> None:
    """`IntOrString.UnmarshalJSON`: a string, else encoding/json into an int32, whose error names no field."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "named"}, "spec": {"selector": {"a": "b"}}}
    accepted: list[tuple[str, Any]] = [("named", "http"), ("numbered", 8080)]
    for name, target in accepted:
        spec = {"selector": {"a": "b"}, "ports": [{"port": 80, "targetPort": target}]}
        status, _ = await send(kubesim, "POST", SERVICES, {**service, "metadata": {"name": name}, "spec": spec})
        assert status == 201, target
    refused: list[tuple[Any, str]] = [(True, "bool"), (1.5, "number 1.5"), (2**31, f"number {2**31}"), ({}, "object")]
    for target, value in refused:
        spec = {"ports": [{"port": 80, "targetPort": target}]}
        status, answer = await send(kubesim, "POST", SERVICES, {**service, "metadata": {"name": "bad"}, "spec": spec})
        error = f"json: cannot unmarshal {value} into Go value of type int32"
        assert (status, answer["message"]) == (400, handled("Service", "v1", error)), target
    status, answer = await send(kubesim, "POST", PODS, pod(readinessProbe={"tcpSocket": {"port": False}}))
    assert (status, answer["message"]) == (
        400,
        handled("Pod", "v1", "json: cannot unmarshal bool into Go value of type int32"),
    )


async def test_quantities_take_a_string_or_a_number(kubesim: KubeSim) -> None:
    """`Quantity.UnmarshalJSON` parses the text of any value, a string's without its quotes: numbers parse, a
    boolean or a bad suffix does not."""
    status, _ = await send(kubesim, "POST", PODS, pod(resources={"limits": {"cpu": 1, "memory": "1.5Gi"}}))
    assert status == 201
    for value, error in (
        ("abc", QUANTITY_FORMAT),
        (True, QUANTITY_FORMAT),
        ("1Kb", QUANTITY_FORMAT),
        ("1K", QUANTITY_SUFFIX),
    ):
        body = {**pod(resources={"requests": {"cpu": value}}), "metadata": {"name": "q"}}
        status, answer = await send(kubesim, "POST", PODS, body)
        assert (status, answer["message"]) == (400, handled("Pod", "v1", error)), value


async def test_timestamps_are_parsed_even_where_the_server_sets_them(kubesim: KubeSim) -> None:
    """`metav1.Time` decodes a string with `time.Parse(time.RFC3339, ...)` before the registry drops the value; a
    Lease's `MicroTime` wants six fractional digits."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "t", "creationTimestamp": "yesterday"},
    }
    status, answer = await send(kubesim, "POST", CONFIGMAPS, body)
    error = 'parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse "yesterday" as "2006"'
    assert (status, answer["message"]) == (400, handled("ConfigMap", "v1", error))
    body["metadata"]["creationTimestamp"] = 1700000000
    status, answer = await send(kubesim, "POST", CONFIGMAPS, body)
    assert (status, answer["message"]) == (
        400,
        handled("ConfigMap", "v1", "json: cannot unmarshal number into Go value of type string"),
    )
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "l"},
        "spec": {"renewTime": "2024-05-01T10:00:00Z"},
    }
    status, answer = await send(kubesim, "POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", lease)
    error = 'parsing time "2024-05-01T10:00:00Z" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "Z" as ".000000"'
    assert (status, answer["message"]) == (400, handled("Lease", "v1", error))


def example_crd(kind: str, plural: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A namespaced CustomResourceDefinition of group example.com serving and storing v1 with `schema` (the
    same dict, so a test may change it between requests)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "kind": kind},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}],
        },
    }


async def test_a_crd_schema_union_reports_where_it_is(kubesim: KubeSim) -> None:
    """A CRD schema's `additionalProperties` decodes itself anew (`JSONSchemaPropsOrBool`): a type error inside
    it is reported at the union's own field; a value neither boolean nor schema has its own message."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"spec": {"type": "object", "additionalProperties": {"type": 5}}},
    }
    crd = example_crd("Widget", "widgets", schema)
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, answer = await send(kubesim, "POST", path, crd)
    field = "JSONSchemaProps.spec.versions.schema.openAPIV3Schema.properties.additionalProperties"
    assert (status, answer["message"]) == (
        400,
        handled("CustomResourceDefinition", "v1", unmarshal("number", field, "string")),
    )
    schema["properties"]["spec"]["additionalProperties"] = "yes"
    status, answer = await send(kubesim, "POST", path, crd)
    assert (status, answer["message"]) == (
        400,
        handled("CustomResourceDefinition", "v1", "boolean or JSON schema expected"),
    )


async def test_an_unreadable_api_version_or_kind_is_an_unrecognized_object(kubesim: KubeSim) -> None:
    """`SimpleMetaFactory.Interpret` reads apiVersion and kind first (any letter case); when it cannot, the
    error names the type wanted and shows the body's first 30 bytes, in hex when it is not an object."""
    raw = '{"apiVersion":"v1","KIND":5,"metadata":{"name":"x"}}'
    status, answer = await send(kubesim, "POST", CONFIGMAPS, raw)
    assert (status, answer["message"]) == (
        400,
        "the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse "
        "error: json: cannot unmarshal number into Go struct field .kind of type string "
        '({"apiVersion":"v1","KIND":5,"m ...)',
    )
    status, answer = await send(kubesim, "POST", CONFIGMAPS, "[1]")
    find_kind = (
        'struct { APIVersion string "json:\\"apiVersion,omitempty\\""; Kind string "json:\\"kind,omitempty\\"" }'
    )
    assert (status, answer["message"]) == (
        400,
        "the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse "
        f"error: json: cannot unmarshal array into Go value of type {find_kind} (5b315d)",
    )
    status, answer = await send(kubesim, "POST", CONFIGMAPS, '{"apiVersion":"a/b/c","kind":"ConfigMap"}')
    assert (status, answer["message"]) == (
        400,
        "the object provided is unrecognized (must be of type ConfigMap): unexpected GroupVersion string: a/b/c "
        '({"apiVersion":"a/b/c","kind":" ...)',
    )


async def test_a_type_error_comes_before_unknown_fields_even_when_strict(kubesim: KubeSim) -> None:
    """A type error is fatal to the decode; unknown fields are only strict errors, reported when it succeeds."""
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "bogus": 1, "data": {"k": 1}}
    status, answer = await send(kubesim, "POST", f"{CONFIGMAPS}?fieldValidation=Strict", body)
    assert (status, answer["message"]) == (
        400,
        handled("ConfigMap", "v1", unmarshal("number", "ConfigMap.data", "string")),
    )


async def test_a_yaml_body_decodes_as_its_json(kubesim: KubeSim) -> None:
    """A YAML body is decoded from the JSON it converts to: a whole float is a whole number there."""
    manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  replicas: 2.5\n"
    status, answer = await send(kubesim, "POST", DEPLOYMENTS, manifest, content_type="application/yaml")
    error = unmarshal("number 2.5", "DeploymentSpec.spec.replicas", "int32")
    assert (status, answer["message"]) == (400, handled("Deployment", "v1", error))
    whole = manifest.replace("2.5", "2.0") + "  selector: {matchLabels: {app: d}}\n  template:\n"
    whole += "    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, image: i}]}\n"
    status, answer = await send(kubesim, "POST", DEPLOYMENTS, whole, content_type="application/yaml")
    assert (status, answer["spec"]["replicas"]) == (201, 2)


# -- update, patch, subresources, options ------------------------------------------------------------------


async def test_an_update_decodes_its_body_as_a_create_does(kubesim: KubeSim) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u"}, "data": {"k": "v"}}
    assert (await send(kubesim, "POST", CONFIGMAPS, body))[0] == 201
    status, answer = await send(kubesim, "PUT", f"{CONFIGMAPS}/u", {**body, "data": {"k": ["v"]}})
    assert (status, answer["message"]) == (
        400,
        handled("ConfigMap", "v1", unmarshal("array", "ConfigMap.data", "string")),
    )
    status, answer = await send(kubesim, "PUT", f"{CONFIGMAPS}/absent", {**body, "data": {"k": ["v"]}})
    assert status == 400  # decoded before the object is looked up


async def test_a_json_or_merge_patch_that_breaks_a_type_is_a_422_on_the_patch(kubesim: KubeSim) -> None:
    """`jsonPatcher` decodes the patched object's JSON: a failure is `NewInvalid` of no kind and no name, one
    cause on `patch` whose bad value is that JSON."""
    assert (await send(kubesim, "POST", DEPLOYMENTS, deployment()))[0] == 201
    error = unmarshal("string", "DeploymentSpec.spec.replicas", "int32")
    for content_type, patch in (
        ("application/merge-patch+json", {"spec": {"replicas": "3"}}),
        ("application/json-patch+json", [{"op": "replace", "path": "/spec/replicas", "value": "3"}]),
    ):
        status, answer = await send(kubesim, "PATCH", f"{DEPLOYMENTS}/d", patch, content_type=content_type)
        assert (status, answer["reason"]) == (422, "Invalid"), content_type
        assert answer["message"].startswith(' "" is invalid: patch: Invalid value: "{\\"apiVersion\\":\\"apps/v1\\"')
        assert answer["message"].endswith(f'": {error}')
        [cause] = answer["details"]["causes"]
        assert (cause["reason"], cause["field"]) == ("FieldValueInvalid", "patch")
        assert set(answer["details"]) == {"causes"}
    status, answer = await send(
        kubesim, "PATCH", f"{DEPLOYMENTS}/d", {"kind": 5}, content_type="application/merge-patch+json"
    )
    assert (status, answer["message"].rpartition('": ')[2]) == (
        422,
        "couldn't get version/kind; json parse error: json: cannot unmarshal number into Go struct field .kind of type "
        "string",
    )
    status, answer = await send(
        kubesim, "PATCH", f"{DEPLOYMENTS}/d", '{"spec":{"replicas":2.50}}', content_type="application/merge-patch+json"
    )
    assert (status, answer["message"].rpartition('": ')[2]) == (
        422,
        unmarshal("number 2.50", "DeploymentSpec.spec.replicas", "int32"),
    )


async def test_a_strategic_merge_patch_that_breaks_a_type_is_a_422_with_the_converter_error(kubesim: KubeSim) -> None:
    """`applyPatchToObject` converts the patched map with the unstructured converter, whose errors name no field;
    the bad value shown is the patch in Go's `%+v`."""
    assert (await send(kubesim, "POST", DEPLOYMENTS, deployment()))[0] == 201
    smp = "application/strategic-merge-patch+json"
    for patch, shown, error in (
        ({"spec": {"replicas": "3"}}, "map[spec:map[replicas:3]]", "unrecognized type: int32"),
        ({"spec": {"replicas": 2.5}}, "map[spec:map[replicas:2.5]]", "cannot convert float64 to int32"),
        (
            {"metadata": {"labels": {"b": "x", "a": 1}}},
            "map[metadata:map[labels:map[a:1 b:x]]]",
            "cannot convert int64 to string",
        ),
        (
            {"spec": {"template": {"spec": {"containers": "c"}}}},
            "map[spec:map[template:map[spec:map[containers:c]]]]",
            "cannot restore slice from string",
        ),
        (
            {"spec": {"strategy": {"rollingUpdate": {"maxSurge": True}}}},
            "map[spec:map[strategy:map[rollingUpdate:map[maxSurge:true]]]]",
            "json: cannot unmarshal bool into Go value of type int32",
        ),
    ):
        status, answer = await send(kubesim, "PATCH", f"{DEPLOYMENTS}/d", patch, content_type=smp)
        assert (status, answer["message"]) == (422, f' "" is invalid: patch: Invalid value: "{shown}": {error}'), patch
    status, _ = await send(kubesim, "PATCH", f"{DEPLOYMENTS}/d", {"spec": {"replicas": 2.0}}, content_type=smp)
    assert status == 200  # a whole float converts to an integer


async def test_status_scale_and_binding_bodies_are_decoded_as_their_types(kubesim: KubeSim) -> None:
    assert (await send(kubesim, "POST", DEPLOYMENTS, deployment()))[0] == 201
    status, answer = await send(
        kubesim,
        "PUT",
        f"{DEPLOYMENTS}/d/scale",
        {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "d"}, "spec": {"replicas": "2"}},
    )
    assert (status, answer["message"]) == (
        400,
        handled("Scale", "v1", unmarshal("string", "ScaleSpec.spec.replicas", "int32")),
    )
    status, answer = await send(
        kubesim,
        "PATCH",
        f"{DEPLOYMENTS}/d/scale",
        {"spec": {"replicas": "2"}},
        content_type="application/merge-patch+json",
    )
    assert (status, answer["message"].rpartition('": ')[2]) == (
        422,
        unmarshal("string", "ScaleSpec.spec.replicas", "int32"),
    )
    status, answer = await send(
        kubesim, "PUT", f"{DEPLOYMENTS}/d/status", {**deployment(), "status": {"replicas": "1"}}
    )
    assert (status, answer["message"]) == (
        400,
        handled("Deployment", "v1", unmarshal("string", "DeploymentStatus.status.replicas", "int32")),
    )
    assert (await send(kubesim, "POST", PODS, pod()))[0] == 201
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"name": 5}}
    status, answer = await send(kubesim, "POST", f"{PODS}/p/binding", binding)
    error = unmarshal("number", "ObjectReference.target.name", "string")
    assert (status, answer["message"]) == (400, handled("Binding", "v1", error))


async def test_delete_options_that_do_not_decode_are_a_500(kubesim: KubeSim) -> None:
    """The delete handler answers its own decoding error as it comes: a 500 with no reason."""
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gone"}}
    assert (await send(kubesim, "POST", CONFIGMAPS, body))[0] == 201
    status, answer = await send(kubesim, "DELETE", f"{CONFIGMAPS}/gone", {"gracePeriodSeconds": "0"})
    assert (status, answer["message"]) == (500, unmarshal("string", "DeleteOptions.gracePeriodSeconds", "int64"))
    assert "reason" not in answer


async def test_a_token_request_is_decoded_as_one(kubesim: KubeSim) -> None:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": "3600"}}
    status, answer = await send(kubesim, "POST", "/api/v1/namespaces/default/serviceaccounts/default/token", body)
    error = unmarshal("string", "TokenRequestSpec.spec.expirationSeconds", "int64")
    assert (status, answer["message"]) == (400, handled("TokenRequest", "v1", error))


async def test_kubectl_reports_the_decoding_error(kubectl: Kubectl) -> None:
    manifest = json.dumps(deployment(replicas="two"))
    result = await kubectl.run("create", "-f", "-", stdin=manifest, check=False)
    assert result.returncode == 1
    error = unmarshal("string", "DeploymentSpec.spec.replicas", "int32")
    assert result.stderr == (
        f'Error from server (BadRequest): error when creating "STDIN": {handled("Deployment", "v1", error)}\n'
    )


# -- unknown fields, by their path -----------------------------------------------------------------------------


async def exchange(
    sim: KubeSim, method: str, path: str, body: Any, *, content_type: str = "application/json"
) -> tuple[int, dict[str, Any], list[str]]:
    """The status, the answer and the warnings of one request; `body` as it is when already text, else as JSON."""
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{sim.url}{path}", data=data, headers={"Content-Type": content_type}) as resp,
    ):
        return resp.status, await resp.json(), resp.headers.getall("Warning", [])


def strict(kind: str, *fields: str) -> str:
    return handled(kind, "v1", "strict decoding error: " + ", ".join(f'unknown field "{f}"' for f in fields))


def warned(*fields: str) -> list[str]:
    return [f'299 - "unknown field \\"{f}\\""' for f in fields]


UNKNOWN_IN_CONTAINERS = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "u"},
    "spec": {
        "containers": [
            {
                "name": "a",
                "image": "i",
                "imagePullPolicyy": "Always",
                "securityContext": {"privilegedd": True},
                "ports": [{"containerPort": 80}, {"containerPort": 81, "hostIPP": "x"}],
            },
            {"name": "b", "image": "i", "imagePullPolicyy": "Never"},
        ]
    },
}
UNKNOWN_IN_CONTAINERS_PATHS = (
    "spec.containers[0].imagePullPolicyy",
    "spec.containers[0].securityContext.privilegedd",
    "spec.containers[0].ports[1].hostIPP",
    "spec.containers[1].imagePullPolicyy",
)


async def test_an_unknown_field_is_named_by_its_path_with_list_indexes(kubesim: KubeSim) -> None:
    """sigs.k8s.io/json names an unknown field by the decoder's field stack: each list item by its index, so the
    same field in two items is two errors, in the order met; the struct has no place for it, so it is not
    stored."""
    status, answer, _ = await exchange(kubesim, "POST", f"{PODS}?fieldValidation=Strict", UNKNOWN_IN_CONTAINERS)
    assert (status, answer["message"]) == (400, strict("Pod", *UNKNOWN_IN_CONTAINERS_PATHS))
    status, answer, warnings = await exchange(kubesim, "POST", PODS, UNKNOWN_IN_CONTAINERS)
    assert (status, warnings) == (201, warned(*UNKNOWN_IN_CONTAINERS_PATHS))
    first, second = answer["spec"]["containers"]
    assert "imagePullPolicyy" not in first and "imagePullPolicyy" not in second
    assert "privilegedd" not in first["securityContext"] and first["ports"][1] == {
        "containerPort": 81,
        "protocol": "TCP",
    }


async def test_unknown_and_repeated_fields_come_in_the_order_the_decoder_meets_them(kubesim: KubeSim) -> None:
    body = (
        '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "r"}, "spec": {"containers": ['
        '{"name": "a", "image": "i", "bogus": 1}, {"name": "b", "image": "i", "image": "j", "bogus": 2}]}}'
    )
    status, answer, _ = await exchange(kubesim, "POST", f"{PODS}?fieldValidation=Strict", body)
    assert (status, answer["message"]) == (
        400,
        handled(
            "Pod",
            "v1",
            'strict decoding error: unknown field "spec.containers[0].bogus", duplicate field '
            '"spec.containers[1].image", unknown field "spec.containers[1].bogus"',
        ),
    )


async def test_a_yaml_bodys_unknown_fields_are_met_in_its_json_with_sorted_keys(kubesim: KubeSim) -> None:
    manifest = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: yam, zz: 1}\n"
        "spec:\n  containers:\n  - {name: c, image: i, bogus: 1, ports: [{containerPort: 80, nam: x}]}\n"
        "  aaa: 1\n"
    )
    path = f"{PODS}?fieldValidation=Strict"
    status, answer, _ = await exchange(kubesim, "POST", path, manifest, content_type="application/yaml")
    fields = ("metadata.zz", "spec.aaa", "spec.containers[0].bogus", "spec.containers[0].ports[0].nam")
    assert (status, answer["message"]) == (400, strict("Pod", *fields))


async def test_a_yaml_body_is_read_as_goyaml_v2_reads_it(kubesim: KubeSim) -> None:
    """The API server turns a YAML body into JSON with sigs.k8s.io/yaml: `y` is a boolean there, and a
    date or `1:30` a string (PyYAML's YAML 1.1 made a date object and 90)."""
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: %s, annotations: {at: 2026-12-07, window: 1:30}}\n"
    pod += "spec: {containers: [{name: c, image: i}]}\n"
    status, answer, _ = await exchange(kubesim, "POST", PODS, pod % "y", content_type="application/yaml")
    message = "json: cannot unmarshal bool into Go struct field ObjectMeta.metadata.name of type string"
    assert (status, answer["message"]) == (400, handled("Pod", "v1", message))
    status, answer, _ = await exchange(kubesim, "POST", PODS, pod % "dated", content_type="application/yaml")
    assert status == 201, answer
    assert answer["metadata"]["annotations"] == {"at": "2026-12-07", "window": "1:30"}


async def test_a_map_key_is_a_dotted_part_of_the_path(kubesim: KubeSim) -> None:
    """A CRD's schema properties are a map of structs: the key joins the path with a dot."""
    crd = example_crd("Gadget", "gadgets", {"type": "object", "properties": {"spec": {"type": "object", "typo": True}}})
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?fieldValidation=Strict"
    status, answer, _ = await exchange(kubesim, "POST", crds, crd)
    field = "spec.versions[0].schema.openAPIV3Schema.properties.spec.typo"
    assert (status, answer["message"]) == (400, strict("CustomResourceDefinition", field))


WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"
WIDGET_CRD = example_crd(
    "Widget",
    "widgets",
    {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "parts": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                    },
                    "size": {"type": "integer"},
                },
            }
        },
    },
)


async def test_a_custom_resources_unknown_fields_are_its_metadatas_then_prunings_sorted(kubesim: KubeSim) -> None:
    """The schema coercer reports the metadata's unknown fields (a strict decode into ObjectMeta) before what
    pruning finds, which it sorts; list items are named by their index in both."""
    kubesim.create_object(WIDGET_CRD)
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u1", "bogus": 1}
    widget = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "zeta": 1, "ownerReferences": [owner]},
        "spec": {"zz": 1, "parts": [{"name": "a", "colour": "red"}, {"name": "b", "colour": "blue", "aa": 2}]},
        "extra": 1,
    }
    fields = (
        "metadata.ownerReferences[0].bogus",
        "metadata.zeta",
        "extra",
        "spec.parts[0].colour",
        "spec.parts[1].aa",
        "spec.parts[1].colour",
        "spec.zz",
    )
    status, answer, _ = await exchange(kubesim, "POST", f"{WIDGETS}?fieldValidation=Strict", widget)
    assert (status, answer["message"]) == (400, strict("Widget", *fields))
    status, answer, warnings = await exchange(kubesim, "POST", WIDGETS, widget)
    assert (status, warnings) == (201, warned(*fields))
    assert answer["metadata"]["ownerReferences"] == [{k: v for k, v in owner.items() if k != "bogus"}]
    assert answer["spec"] == {"parts": [{"name": "a"}, {"name": "b"}]}


async def test_status_and_scale_bodies_report_the_fields_their_types_do_not_have(kubesim: KubeSim) -> None:
    assert (await send(kubesim, "POST", DEPLOYMENTS, deployment()))[0] == 201
    scale = {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": "d"},
        "spec": {"replicas": 2, "x": 1},
    }
    status, answer, _ = await exchange(kubesim, "PUT", f"{DEPLOYMENTS}/d/scale?fieldValidation=Strict", scale)
    assert (status, answer["message"]) == (400, strict("Scale", "spec.x"))
    conditions = [{"type": "Available", "status": "True", "reasonn": "x"}]
    body = {**deployment(), "status": {"conditions": conditions}}
    status, answer, _ = await exchange(kubesim, "PUT", f"{DEPLOYMENTS}/d/status?fieldValidation=Strict", body)
    assert (status, answer["message"]) == (400, strict("Deployment", "status.conditions[0].reasonn"))


async def test_kubectl_names_an_unknown_container_field_by_its_index(kubectl: Kubectl) -> None:
    """kubectl sends the manifest as it encodes it again, keys sorted, and asks for Strict validation."""
    manifest = json.dumps({**UNKNOWN_IN_CONTAINERS, "metadata": {"name": "k"}})
    result = await kubectl.run("create", "-f", "-", stdin=manifest, check=False)
    assert result.returncode == 1
    fields = (
        "spec.containers[0].imagePullPolicyy",
        "spec.containers[0].ports[1].hostIPP",
        "spec.containers[0].securityContext.privilegedd",
        "spec.containers[1].imagePullPolicyy",
    )
    assert result.stderr == (f'Error from server (BadRequest): error when creating "STDIN": {strict("Pod", *fields)}\n')


# -- bodies that are not JSON ----------------------------------------------------------------------------------


async def test_a_patch_that_is_not_json_is_refused_in_encoding_json_words(kubesim: KubeSim) -> None:
    """Go's scanner reads the whole body first: its error names the offending byte and what it was looking for (a
    space is fed in at the end, so a cut literal is an invalid ' '). A strategic merge patch answers it as it is,
    a JSON or merge patch decoded strictly (Warn, the default) as `error decoding patch: ...`; under Ignore a merge
    patch is evanphx/json-patch's `Invalid JSON Patch`."""
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p"}}
    assert (await send(kubesim, "POST", CONFIGMAPS, configmap))[0] == 201
    smp, merge, json_patch = (
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
        "application/json-patch+json",
    )
    for content_type, query, body, message in (
        (smp, "", '{"data" {}}', "invalid character '{' after object key"),
        (smp, "", '{"data": {"k": "v",}}', "invalid character '}' looking for beginning of object key string"),
        (smp, "", '{"data": tru', "invalid character ' ' in literal true (expecting 'e')"),
        (smp, "", '{"data": {}}x', "invalid character 'x' after top-level value"),
        (smp, "", '{"data": {"k": "\\q"}}', "invalid character 'q' in string escape code"),
        (smp, "", '{"spec": NaN}', "invalid character 'N' looking for beginning of value"),
        (smp, "", '{"k": 1.}', "invalid character '}' after decimal point in numeric literal"),
        (smp, "", b'\xff{"k": 1}', "invalid character '\u00ff' looking for beginning of value"),
        (smp, "", b'{"k": 1}\x01', "invalid character '\\x01' after top-level value"),
        (merge, "", '{"data": [1 2]}', "error decoding patch: invalid character '2' after array element"),
        (merge, "?fieldValidation=Ignore", '{"data": [1 2]}', "Invalid JSON Patch"),
        (json_patch, "", '[{"op": "add"', "error decoding patch: unexpected end of JSON input"),
        (
            json_patch,
            "?fieldValidation=Ignore",
            "[{'op': 1}]",
            "invalid character '\\'' looking for beginning of object key string",
        ),
    ):
        status, answer, _ = await exchange(kubesim, "PATCH", f"{CONFIGMAPS}/p{query}", body, content_type=content_type)
        assert (status, answer["message"]) == (400, message), body


async def test_a_string_that_is_not_utf8_is_read_as_go_reads_it(kubesim: KubeSim) -> None:
    """Go's decoder takes bytes that are not UTF-8 inside a string, each as U+FFFD."""
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}
    assert (await send(kubesim, "POST", CONFIGMAPS, configmap))[0] == 201
    patch = b'{"data": {"k": "a\xe2\x82b\xffc"}}'
    status, answer, _ = await exchange(
        kubesim, "PATCH", f"{CONFIGMAPS}/b", patch, content_type="application/merge-patch+json"
    )
    assert (status, answer["data"]) == (200, {"k": "a\ufffd\ufffdb\ufffdc"})
