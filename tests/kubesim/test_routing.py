"""Where kubesim routes and orders a request as a 1.32 API server does, over HTTP and through kubectl.

- A Namespace's `status` and `finalize` subresources (the namespace registry's `StatusREST` and `FinalizeREST`),
  what discovery lists for them, and the namespace lifecycle's `kubernetes` finalizer.
- The order of a write's checks: a PATCH finds its object before it reads the patch (`patch.go`), a PUT reads
  its body and checks it against the URL before the object is looked up (`update.go`).
- Repeated fields in a body: warnings, or a 400 or 422 under `fieldValidation=Strict`, worded as the strict
  decoders word them; a repeated object decoded into the earlier one.
- Admission webhook URLs parsed as Go's `url.Parse` parses them, and called at the path the Go client builds.
"""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.helpers.serve import closed_port
from tests.kubesim.auth import ServingCerts
from tests.kubesim.fixtures import Kubectl, eventually
from tests.kubesim.server import KubeSim
from tests.kubesim.validation import SUBDOMAIN_HELP

CM_PATH = "/api/v1/namespaces/default/configmaps"
CRD_FILE = pathlib.Path(__file__).parent / "crds" / "peerauthentications.security.istio.io.yaml"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


@dataclass
class Answer:
    status: int
    body: Any
    warnings: list[str]

    @property
    def message(self) -> str:
        return str(self.body.get("message", "")) if isinstance(self.body, dict) else ""


async def call(
    sim: KubeSim,
    method: str,
    path: str,
    body: str | dict[str, Any] | None = None,
    *,
    content_type: str = "application/json",
    query: str = "",
) -> Answer:
    """One raw request, the body sent as written (a dict as JSON): its status, decoded answer and warnings."""
    data = body if isinstance(body, str) or body is None else json.dumps(body)
    url = f"{sim.url}{path}" + (f"?{query}" if query else "")
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=data, headers={"Content-Type": content_type}) as resp,
    ):
        text = await resp.text()
        return Answer(resp.status, json.loads(text) if text else None, resp.headers.getall("Warning", []))


def namespace(name: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, **fields}


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


# -- a Namespace's status and finalize ---------------------------------------------------------------------


async def test_finalize_takes_the_kubernetes_finalizer_out_and_the_terminating_namespace_goes(kubesim: KubeSim) -> None:
    kubesim.namespace_deletion_delay = 60.0  # the namespace controller has not got to it yet
    await call(kubesim, "POST", "/api/v1/namespaces", namespace("gone"))
    deleted = await call(kubesim, "DELETE", "/api/v1/namespaces/gone")
    assert deleted.status == 200 and deleted.body["status"]["phase"] == "Terminating"
    meta = deleted.body["metadata"]
    assert meta["deletionTimestamp"] and "deletionGracePeriodSeconds" not in meta  # the namespace REST sets none
    assert deleted.body["spec"] == {"finalizers": ["kubernetes"]}
    again = await call(kubesim, "DELETE", "/api/v1/namespaces/gone")  # held by its spec's finalizer
    assert (again.status, again.body["metadata"]["resourceVersion"]) == (200, meta["resourceVersion"])
    finalized = {**deleted.body, "spec": {"finalizers": []}}
    answer = await call(kubesim, "PUT", "/api/v1/namespaces/gone/finalize", finalized)
    assert answer.status == 200 and answer.body["spec"] == {}
    assert (await call(kubesim, "GET", "/api/v1/namespaces/gone")).status == 404


async def test_finalize_changes_the_spec_finalizers_and_metadata_but_not_the_status(kubesim: KubeSim) -> None:
    created = (await call(kubesim, "POST", "/api/v1/namespaces", namespace("fin"))).body
    bad = {**created, "spec": {"finalizers": ["kubernetes", "mine", "Example.com/x"]}}
    refused = await call(kubesim, "PUT", "/api/v1/namespaces/fin/finalize", bad)
    assert refused.status == 422 and refused.body["reason"] == "Invalid"
    assert refused.message == (
        'Namespace "fin" is invalid: [spec.finalizers[1]: Invalid value: "mine": name is neither a standard '
        f'finalizer name nor is it fully qualified, spec.finalizers[2]: Invalid value: "Example.com/x": prefix part '
        f"{SUBDOMAIN_HELP}]"
    )
    meta = {**created["metadata"], "labels": {**created["metadata"]["labels"], "seen": "yes"}}
    good = {**created, "metadata": meta, "spec": {"finalizers": ["example.com/x"]}, "status": {"phase": "Oops"}}
    written = await call(kubesim, "PUT", "/api/v1/namespaces/fin/finalize", good)
    assert written.status == 200
    assert written.body["spec"] == {"finalizers": ["example.com/x"]} and written.body["status"] == {"phase": "Active"}
    assert written.body["metadata"]["labels"]["seen"] == "yes"
    plain_update = {**written.body, "spec": {"finalizers": []}}
    updated = await call(kubesim, "PUT", "/api/v1/namespaces/fin", plain_update)  # the spec is not its to change
    assert updated.status == 200 and updated.body["spec"] == {"finalizers": ["example.com/x"]}
    nameless = {**written.body, "metadata": {}}
    undeterminable = await call(kubesim, "PUT", "/api/v1/namespaces/fin/finalize", nameless)
    assert (undeterminable.status, undeterminable.message) == (
        400,
        "the name of the object (fin based on URL) was undeterminable: name must be provided",
    )
    for method in ("GET", "PATCH", "DELETE"):
        assert (await call(kubesim, method, "/api/v1/namespaces/fin/finalize", {})).status == 405
    missing = await call(kubesim, "PUT", "/api/v1/namespaces/none/finalize", namespace("none"))
    assert (missing.status, missing.message) == (404, 'namespaces "none" not found')


async def test_status_writes_the_status_and_metadata_and_checks_the_phase(kubesim: KubeSim) -> None:
    created = (await call(kubesim, "POST", "/api/v1/namespaces", namespace("st"))).body
    read = await call(kubesim, "GET", "/api/v1/namespaces/st/status")
    assert read.status == 200 and read.body["metadata"]["uid"] == created["metadata"]["uid"]
    terminating = await call(
        kubesim, "PUT", "/api/v1/namespaces/st/status", {**created, "status": {"phase": "Terminating"}}
    )
    assert (terminating.status, terminating.message) == (
        422,
        'Namespace "st" is invalid: status.Phase: Invalid value: "Terminating": may only be \'Active\' if '
        "`deletionTimestamp` is empty",
    )
    condition = {"type": "NamespaceContentRemaining", "status": "False", "reason": "ContentRemoved", "message": ""}
    body = {**created, "spec": {"finalizers": []}, "status": {"phase": "Active", "conditions": [condition]}}
    written = await call(kubesim, "PUT", "/api/v1/namespaces/st/status", body)
    assert written.status == 200 and written.body["status"]["conditions"][0]["reason"] == "ContentRemoved"
    assert written.body["spec"] == {"finalizers": ["kubernetes"]}
    patch = {"metadata": {"annotations": {"a": "b"}}, "status": {"conditions": None}}
    patched = await call(kubesim, "PATCH", "/api/v1/namespaces/st/status", patch, content_type=MERGE_PATCH)
    assert patched.status == 200 and patched.body["status"] == {"phase": "Active"}
    assert patched.body["metadata"]["annotations"] == {"a": "b"}
    missing = await call(kubesim, "PATCH", "/api/v1/namespaces/none/status", "{", content_type=MERGE_PATCH)
    assert (missing.status, missing.message) == (404, 'namespaces "none" not found')
    assert (await call(kubesim, "DELETE", "/api/v1/namespaces/st/status")).status == 405


async def test_discovery_lists_the_namespace_and_pod_subresources(kubectl: Kubectl) -> None:
    listed = json.loads((await kubectl.run("get", "--raw", "/api/v1")).stdout)
    entries = {entry["name"]: entry for entry in listed["resources"]}
    assert entries["namespaces/finalize"] == {
        "name": "namespaces/finalize",
        "singularName": "",
        "namespaced": False,
        "kind": "Namespace",
        "verbs": ["update"],
    }
    assert entries["namespaces/status"]["verbs"] == ["get", "patch", "update"]
    assert (entries["pods/binding"]["kind"], entries["pods/binding"]["verbs"]) == ("Binding", ["create"])


async def test_a_namespace_keeps_its_own_finalizers_and_kubectl_can_finalize_it(
    kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    manifest = "apiVersion: v1\nkind: Namespace\nmetadata: {name: waits}\nspec: {finalizers: [example.com/wait]}\n"
    await kubectl.run("create", "-f", "-", stdin=manifest)
    created = await kubectl.json("get", "namespace", "waits")
    assert created["spec"]["finalizers"] == ["example.com/wait", "kubernetes"]
    await kubectl.run("create", "configmap", "inside", "-n", "waits")
    await kubectl.run("delete", "namespace", "waits", "--wait=false")

    async def emptied() -> Any:
        current = await kubectl.json("get", "namespace", "waits")
        return current if current["spec"]["finalizers"] == ["example.com/wait"] else None

    terminating = await eventually(emptied, what="the namespace controller's finalize")
    assert terminating["status"]["phase"] == "Terminating"
    assert (await kubectl.run("get", "configmap", "inside", "-n", "waits", check=False)).returncode != 0
    body = tmp_path / "finalize.json"
    body.write_text(json.dumps({**terminating, "spec": {"finalizers": []}}))
    await kubectl.run("replace", "--raw", "/api/v1/namespaces/waits/finalize", "-f", str(body))
    gone = await kubectl.run("get", "namespace", "waits", check=False)
    assert gone.stderr.strip() == 'Error from server (NotFound): namespaces "waits" not found'


# -- the order of a write's checks ---------------------------------------------------------------------------


async def test_a_malformed_patch_of_a_missing_object_is_404_but_a_malformed_apply_is_400(kubesim: KubeSim) -> None:
    """The store's update answers NotFound before the patch is read; an apply may create, so it reads it."""
    for content_type, body in [
        (JSON_PATCH, "{not json"),
        (JSON_PATCH, '{"op": "add"}'),
        (MERGE_PATCH, "{not json"),
        (MERGE_PATCH, "[1, 2]"),
        (STRATEGIC_PATCH, "{not json"),
        (STRATEGIC_PATCH, '"text"'),
    ]:
        answer = await call(kubesim, "PATCH", f"{CM_PATH}/ghost", body, content_type=content_type)
        assert (answer.status, answer.message) == (404, 'configmaps "ghost" not found'), (content_type, body)
    applied = await call(kubesim, "PATCH", f"{CM_PATH}/ghost", "a: [", content_type=APPLY_PATCH, query="fieldManager=t")
    assert applied.status == 400 and applied.message.startswith("error decoding YAML: ")
    listed = await call(kubesim, "PATCH", f"{CM_PATH}/ghost", "[1]", content_type=APPLY_PATCH, query="fieldManager=t")
    assert (listed.status, listed.message) == (
        400,
        "error decoding YAML: error unmarshaling JSON: while decoding JSON: json: cannot unmarshal array into Go "
        "value of type map[string]interface {}",
    )


@pytest.mark.parametrize(
    ("content_type", "body", "query", "answer"),
    [
        (
            JSON_PATCH,
            '{"op": "add"}',
            "",
            (400, "error decoding patch: json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp"),
        ),
        (
            JSON_PATCH,
            '{"op": "add"}',
            "fieldValidation=Ignore",
            (400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch"),
        ),
        (
            JSON_PATCH,
            "[1]",
            "",
            (400, "error decoding patch: json: cannot unmarshal number into Go value of type handlers.jsonPatchOp"),
        ),
        (
            JSON_PATCH,
            '[{"op": 1, "path": "/data"}]',
            "",
            (
                400,
                "error decoding patch: json: cannot unmarshal number into Go struct field jsonPatchOp.op of "
                "type string",
            ),
        ),
        (
            JSON_PATCH,
            '[{"op": "test", "path": "/data/k", "value": "other"}]',
            "",
            (422, "the server rejected our request due to an error in our request"),
        ),
        (
            JSON_PATCH,
            '[{"path": "/data/k"}]',
            "",
            (422, "the server rejected our request due to an error in our request"),
        ),
        (JSON_PATCH, "null", "", (200, "")),
        (MERGE_PATCH, "null", "", (400, "Invalid JSON Patch")),
        (MERGE_PATCH, "", "", (400, "error decoding patch: unexpected end of JSON input")),
        (
            MERGE_PATCH,
            "[1]",
            "",
            (400, "error decoding patch: json: cannot unmarshal array into Go value of type map[string]interface {}"),
        ),
        (MERGE_PATCH, "{", "fieldValidation=Ignore", (400, "Invalid JSON Patch")),
        (MERGE_PATCH, "5", "fieldValidation=Ignore", (400, "Invalid JSON Patch")),
        (
            STRATEGIC_PATCH,
            "[1]",
            "",
            (400, "json: cannot unmarshal array into Go value of type map[string]interface {}"),
        ),
        (STRATEGIC_PATCH, "", "", (400, "unexpected end of JSON input")),
        (STRATEGIC_PATCH, "null", "", (200, "")),
    ],
)
async def test_a_patch_that_is_not_its_types_shape_gets_the_handlers_words(
    kubesim: KubeSim, content_type: str, body: str, query: str, answer: tuple[int, str]
) -> None:
    await call(kubesim, "POST", CM_PATH, configmap("shape", k="v"))
    patched = await call(kubesim, "PATCH", f"{CM_PATH}/shape", body, content_type=content_type, query=query)
    assert (patched.status, patched.message) == answer
    if patched.status == 200:
        assert patched.body["data"] == {"k": "v"}


async def test_a_put_checks_its_body_against_the_url_before_the_object_is_looked_up(kubesim: KubeSim) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other"}, "status": {"phase": "Running"}}
    mismatch = await call(kubesim, "PUT", "/api/v1/namespaces/default/pods/ghost/status", pod)
    assert (mismatch.status, mismatch.message) == (
        400,
        "the name of the object (other) does not match the name on the URL (ghost)",
    )
    nameless = await call(kubesim, "PUT", "/api/v1/namespaces/default/pods/ghost/status", {**pod, "metadata": {}})
    assert (nameless.status, nameless.message) == (
        400,
        "the name of the object (ghost based on URL) was undeterminable: name must be provided",
    )
    undecodable = await call(
        kubesim, "PUT", "/api/v1/namespaces/default/pods/ghost/status", '{"metadata": {"name": 1}}'
    )
    assert undecodable.status == 400 and "cannot unmarshal number into Go struct field" in undecodable.message
    await call(kubesim, "POST", CM_PATH, configmap("named", k="v"))
    unnamed = await call(kubesim, "PUT", f"{CM_PATH}/named", {**configmap("", k="w"), "metadata": {}})
    assert (unnamed.status, unnamed.message) == (
        400,
        "the name of the object (named based on URL) was undeterminable: name must be provided",
    )


# -- repeated fields ---------------------------------------------------------------------------------------

REPEATED = (
    '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first", "name": "rep"},'
    ' "dta": {}, "data": {"k": "1", "k": "2"}}'
)


async def test_a_repeated_field_is_a_warning_and_the_last_value_is_taken(kubesim: KubeSim) -> None:
    created = await call(kubesim, "POST", CM_PATH, REPEATED)
    assert created.status == 201
    assert created.body["metadata"]["name"] == "rep" and created.body["data"] == {"k": "2"}
    assert created.warnings == [
        '299 - "duplicate field \\"metadata.name\\""',
        '299 - "unknown field \\"dta\\""',
        '299 - "duplicate field \\"data.k\\""',
    ]
    ignored = await call(kubesim, "POST", CM_PATH, REPEATED.replace('"rep"', '"quiet"'), query="fieldValidation=Ignore")
    assert ignored.status == 201 and ignored.warnings == []


async def test_strict_field_validation_refuses_a_repeated_field_in_the_decoders_words(kubesim: KubeSim) -> None:
    refused = await call(kubesim, "POST", CM_PATH, REPEATED, query="fieldValidation=Strict")
    assert (refused.status, refused.body["reason"], refused.message) == (
        400,
        "BadRequest",
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: duplicate field '
        '"metadata.name", unknown field "dta", duplicate field "data.k"',
    )
    yaml_body = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: yy\ndata:\n  k: "1"\n  k: "2"\n'
    warned = await call(kubesim, "POST", CM_PATH, yaml_body, content_type="application/yaml")
    assert warned.status == 201 and warned.warnings == ['299 - "line 7: key \\"k\\" already set in map"']
    strict = await call(
        kubesim,
        "POST",
        CM_PATH,
        yaml_body.replace("yy\n", "zz\n"),
        content_type="application/yaml",
        query="fieldValidation=Strict",
    )
    assert (strict.status, strict.message) == (
        400,
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: yaml: unmarshal '
        'errors:\n  line 7: key "k" already set in map',
    )


async def test_a_repeated_object_is_decoded_into_the_earlier_one(kubesim: KubeSim) -> None:
    """Go decodes a repeated struct field into what the earlier one left: fields only the earlier one set stay,
    a list is decoded item by item over the earlier one."""
    body = (
        '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "1"}},'
        ' "metadata": {"name": "p", "annotations": {"b": "2"}},'
        ' "spec": {"containers": [{"name": "c", "image": "img:1"}], "containers": [{"name": "c"}]}}'
    )
    created = await call(kubesim, "POST", "/api/v1/namespaces/default/pods", body)
    assert created.status == 201
    meta = created.body["metadata"]
    assert (meta["labels"], meta["annotations"]) == ({"a": "1"}, {"b": "2"})
    assert created.body["spec"]["containers"][0]["image"] == "img:1"
    assert created.warnings == [
        '299 - "duplicate field \\"metadata\\""',
        '299 - "duplicate field \\"spec.containers\\""',
    ]


async def test_a_custom_resources_repeats_take_the_last_value_and_come_before_its_pruned_fields(
    kubesim: KubeSim,
) -> None:
    """A custom resource is decoded as `interface{}`: a repeated object is replaced whole, and pruning's unknown
    fields follow the decoder's repeats."""
    kubesim.create_object(yaml.safe_load(CRD_FILE.read_text()))
    body = (
        '{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",'
        ' "metadata": {"name": "pa", "labels": {"a": "1"}}, "metadata": {"name": "pa"},'
        ' "spec": {"extra": 1, "mtls": {"mode": "STRICT"}, "mtls": {"mode": "STRICT", "mode": "PERMISSIVE"}}}'
    )
    path = "/apis/security.istio.io/v1/namespaces/default/peerauthentications"
    created = await call(kubesim, "POST", path, body)
    assert created.status == 201
    assert "labels" not in created.body["metadata"] and created.body["spec"] == {"mtls": {"mode": "PERMISSIVE"}}
    assert created.warnings == [
        '299 - "duplicate field \\"metadata\\""',
        '299 - "duplicate field \\"spec.mtls\\""',
        '299 - "duplicate field \\"spec.mtls.mode\\""',
        '299 - "unknown field \\"spec.extra\\""',
    ]


async def test_repeated_fields_in_updates_and_patches(kubesim: KubeSim) -> None:
    await call(kubesim, "POST", CM_PATH, configmap("c", k="0"))
    stored = (await call(kubesim, "GET", f"{CM_PATH}/c")).body
    put = json.dumps({**stored, "data": {}})[:-1] + ', "data": {"k": "1", "k": "1b"}}'
    updated = await call(kubesim, "PUT", f"{CM_PATH}/c", put)
    assert (updated.status, updated.body["data"]) == (200, {"k": "1b"})
    assert updated.warnings == ['299 - "duplicate field \\"data\\""', '299 - "duplicate field \\"data.k\\""']
    for content_type, patch, warning, value in [
        (MERGE_PATCH, '{"data": {"k": "1", "k": "2"}}', 'duplicate field \\"data.k\\"', "2"),
        (STRATEGIC_PATCH, '{"data": {"k": "3", "k": "4"}}', 'duplicate field \\"data.k\\"', "4"),
        (
            JSON_PATCH,
            '[{"op": "test", "op": "replace", "path": "/data/k", "value": "5"}]',
            'json patch duplicate field \\"[0].op\\"',
            "5",
        ),
    ]:
        patched = await call(kubesim, "PATCH", f"{CM_PATH}/c", patch, content_type=content_type)
        assert (patched.status, patched.body["data"], patched.warnings) == (200, {"k": value}, [f'299 - "{warning}"'])
    applied = await call(
        kubesim,
        "PATCH",
        f"{CM_PATH}/c",
        '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "6", "k": "7"}}',
        content_type=APPLY_PATCH,
        query="fieldManager=t&force=true",
    )
    assert (applied.status, applied.body["data"]) == (200, {"k": "7"})
    assert applied.warnings == ['299 - "line 1: key \\"k\\" already set in map"']


async def test_strict_field_validation_refuses_repeated_patch_fields(kubesim: KubeSim) -> None:
    await call(kubesim, "POST", CM_PATH, configmap("s", k="0"))
    strategic = await call(
        kubesim,
        "PATCH",
        f"{CM_PATH}/s",
        '{"data": {"k": "1", "k": "2"}}',
        content_type=STRATEGIC_PATCH,
        query="fieldValidation=Strict",
    )
    assert (strategic.status, strategic.message) == (
        422,
        ' "" is invalid: patch: Invalid value: "map[data:map[k:2]]": strict decoding error: duplicate field "data.k"',
    )
    assert strategic.body["details"]["causes"][0]["field"] == "patch"
    merge = await call(
        kubesim,
        "PATCH",
        f"{CM_PATH}/s",
        '{"data": {"k": "1", "k": "2"}}',
        content_type=MERGE_PATCH,
        query="fieldValidation=Strict",
    )
    assert merge.status == 422 and merge.message.startswith(' "" is invalid: patch: Invalid value: "{')
    assert merge.message.endswith('": strict decoding error: duplicate field "data.k"')
    apply = await call(
        kubesim,
        "PATCH",
        f"{CM_PATH}/s",
        '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"k": "1", "k": "2"}}',
        content_type=APPLY_PATCH,
        query="fieldManager=t&force=true&fieldValidation=Strict",
    )
    assert (apply.status, apply.message) == (
        400,
        "error strict decoding YAML: error converting YAML to JSON: yaml: unmarshal errors:\n"
        '  line 1: key "k" already set in map',
    )
    assert (await call(kubesim, "GET", f"{CM_PATH}/s")).body["data"] == {"k": "0"}


async def test_kubectl_shows_a_repeated_field_as_a_warning_or_a_strict_error(
    kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    body = tmp_path / "repeated.json"
    body.write_text(REPEATED)
    created = await kubectl.run("create", "--raw", CM_PATH, "-f", str(body))
    assert 'Warning: duplicate field "metadata.name"' in created.stderr
    assert json.loads(created.stdout)["metadata"]["name"] == "rep"
    refused = await kubectl.run("create", "--raw", f"{CM_PATH}?fieldValidation=Strict", "-f", str(body), check=False)
    assert refused.returncode != 0
    assert refused.stderr.strip() == (
        'Error from server (BadRequest): ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding '
        'error: duplicate field "metadata.name", unknown field "dta", duplicate field "data.k"'
    )


# -- admission webhook URLs -----------------------------------------------------------------------------------


def webhook_configuration(*urls: str, ca_bundle: str = "", failure_policy: str = "Fail") -> dict[str, Any]:
    hooks = []
    for i, url in enumerate(urls):
        client: dict[str, Any] = {"url": url}
        if ca_bundle:
            client["caBundle"] = ca_bundle
        hooks.append(
            {
                "name": f"h{i}.example.com",
                "clientConfig": client,
                "rules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}
                ],
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": failure_policy,
            }
        )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "urls"},
        "webhooks": hooks,
    }


WEBHOOKS_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
URL_FORM = "; desired format: https://host[/path]"


async def test_webhook_urls_are_parsed_as_gos_url_parse_parses_them(kubesim: KubeSim) -> None:
    urls = [
        "https://[::1",
        "https://hooks.example.com:https/x",
        "https://us er@hooks.example.com/x",
        "https://user:p%40ss@hooks.example.com/x",
        "https://hooks.example.com/x#a%20b",
        "https://hooks.example.com/x?a=1&b",
        "https://hooks.example.com/\u0007",
        "https://[::1]:8443/hook/",
    ]
    refused = await call(kubesim, "POST", WEBHOOKS_PATH, webhook_configuration(*urls))
    assert (refused.status, refused.body["reason"]) == (422, "Invalid")
    causes = [(c["field"], c["message"]) for c in refused.body["details"]["causes"]]
    assert causes == [
        (
            "webhooks[0].clientConfig.url",
            f"Required value: url must be a valid URL: parse \"https://[::1\": missing ']' in host{URL_FORM}",
        ),
        (
            "webhooks[1].clientConfig.url",
            'Required value: url must be a valid URL: parse "https://hooks.example.com:https/x": invalid port '
            f'":https" after host{URL_FORM}',
        ),
        (
            "webhooks[2].clientConfig.url",
            'Required value: url must be a valid URL: parse "https://us er@hooks.example.com/x": net/url: invalid '
            f"userinfo{URL_FORM}",
        ),
        ("webhooks[3].clientConfig.url", 'Invalid value: "user:p%40ss": user information is not permitted in the URL'),
        ("webhooks[4].clientConfig.url", 'Invalid value: "a b": fragments are not permitted in the URL'),
        ("webhooks[5].clientConfig.url", 'Invalid value: "a=1&b": query parameters are not permitted in the URL'),
        (
            "webhooks[6].clientConfig.url",
            'Required value: url must be a valid URL: parse "https://hooks.example.com/\\a": net/url: invalid '
            f"control character in URL{URL_FORM}",
        ),
    ]


@dataclass
class Hooks:
    """An HTTPS webhook on 127.0.0.1 and ::1 that allows everything and records (path, query) of each call."""

    port4: int
    port6: int
    ca_bundle: str
    calls: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture(name="hooks")
async def hooks_fixture() -> AsyncIterator[Hooks]:
    certs = ServingCerts.generate(hosts=("127.0.0.1", "::1"))
    hooks = Hooks(port4=0, port6=0, ca_bundle=base64.b64encode(certs.ca_pem).decode())

    async def handle(request: web.Request) -> web.Response:
        review = await request.json()
        hooks.calls.append((request.path, request.query_string))
        response = {"uid": review["request"]["uid"], "allowed": True}
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    context = certs.ssl_context()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    try:
        await web.TCPSite(runner, "::1", 0, ssl_context=context).start()
    except OSError:
        await runner.cleanup()
        pytest.skip("no IPv6 loopback here")
    hooks.port4, hooks.port6 = (int(address[1]) for address in runner.addresses[:2])
    try:
        yield hooks
    finally:
        await runner.cleanup()


async def test_a_webhook_is_called_at_its_urls_path_as_the_go_client_cleans_it(kubesim: KubeSim, hooks: Hooks) -> None:
    urls = (f"https://[::1]:{hooks.port6}/check/./deep/../x/", f"https://127.0.0.1:{hooks.port4}")
    created = await call(kubesim, "POST", WEBHOOKS_PATH, webhook_configuration(*urls, ca_bundle=hooks.ca_bundle))
    assert created.status == 201
    assert (await call(kubesim, "POST", CM_PATH, configmap("hooked"))).status == 201
    assert sorted(hooks.calls) == [("/", "timeout=10s"), ("/check/x", "timeout=10s")]
    with closed_port() as port:
        down = webhook_configuration(f"https://127.0.0.1:{port}", ca_bundle=hooks.ca_bundle)
        down["metadata"]["name"] = "down"
        assert (await call(kubesim, "POST", WEBHOOKS_PATH, down)).status == 201
        failed = await call(kubesim, "POST", CM_PATH, configmap("refused"))
    assert (failed.status, failed.message) == (
        500,
        'Internal error occurred: failed calling webhook "h0.example.com": failed to call webhook: '
        f'Post "https://127.0.0.1:{port}/?timeout=10s": dial tcp 127.0.0.1:{port}: connect: connection refused',
    )
