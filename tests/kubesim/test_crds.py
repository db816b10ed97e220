"""CustomResourceDefinitions: the machine's kubectl and raw HTTP against kubesim's custom resources."""

from __future__ import annotations

import asyncio
import copy
import json
import pathlib
import re
from typing import Any

import aiohttp
import pytest
import yaml

from tests.kubesim.fixtures import Kubectl, eventually
from tests.kubesim.server import KubeSim
from tests.kubesim.validation import DNS1035_HELP

CRD_FILE = pathlib.Path(__file__).parent / "crds" / "peerauthentications.security.istio.io.yaml"
CRD_NAME = "peerauthentications.security.istio.io"
BASE = "/apis/security.istio.io/v1"

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec:
  mtls: {mode: STRICT}
"""

CLUSTER_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: meshes.example.io}
spec:
  group: example.io
  names: {kind: Mesh, plural: meshes}
  scope: Cluster
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    return loaded


def peer_authentication(name: str, namespace: str = "default", mode: str = "STRICT", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"mtls": {"mode": mode}},
    }


async def call(
    sim: KubeSim, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, sim.url + path, data=data, headers={"Content-Type": content_type}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_kubectl_applies_a_crd_then_its_custom_resource_and_gets_it(kubectl: Kubectl) -> None:
    missing = await kubectl.run("apply", "-f", "-", stdin=STRICT, check=False)
    assert missing.returncode != 0
    assert 'no matches for kind "PeerAuthentication" in version "security.istio.io/v1"' in missing.stderr

    out = await kubectl.run("apply", "-f", str(CRD_FILE))
    assert out.stdout.strip() == f"customresourcedefinition.apiextensions.k8s.io/{CRD_NAME} created"
    out = await kubectl.apply(STRICT)
    assert out.stdout.strip() == "peerauthentication.security.istio.io/strict created"

    got = await kubectl.json("get", "peerauthentication", "strict", "-n", "default")
    assert got["spec"] == {"mtls": {"mode": "STRICT"}}
    assert got["metadata"]["generation"] == 1
    table = (await kubectl.run("get", "pa", "-n", "default")).stdout.splitlines()
    assert re.split(r"\s{2,}", table[0].strip()) == ["NAME", "AGE"]
    assert table[1].split()[0] == "strict"

    # A second apply is a JSON merge patch (kubectl has no patch strategy for a custom resource).
    out = await kubectl.apply(STRICT.replace("STRICT", "PERMISSIVE"))
    assert out.stdout.strip() == "peerauthentication.security.istio.io/strict configured"
    got = await kubectl.json("get", "peerauthentication", "strict")
    assert got["spec"]["mtls"]["mode"] == "PERMISSIVE"
    assert got["metadata"]["generation"] == 2


async def test_kubectl_strict_validation_rejects_fields_outside_the_crd_schema(kubectl: Kubectl) -> None:
    await kubectl.run("apply", "-f", str(CRD_FILE))
    typo = STRICT.replace("mtls: {mode: STRICT}", "mtls: {mod: STRICT}")
    failed = await kubectl.run("apply", "-f", "-", stdin=typo, check=False)
    assert failed.returncode != 0
    assert 'strict decoding error: unknown field "spec.mtls.mod"' in failed.stderr


async def test_deleting_the_crd_deletes_its_objects_and_the_resource_answers_404(
    kubectl: Kubectl, kubesim: KubeSim
) -> None:
    await kubectl.run("apply", "-f", str(CRD_FILE))
    await kubectl.apply(STRICT)
    out = await kubectl.run("delete", "crd", CRD_NAME)
    assert out.stdout.strip() == f'customresourcedefinition.apiextensions.k8s.io "{CRD_NAME}" deleted'
    status, body = await call(kubesim, "GET", f"{BASE}/peerauthentications")
    assert (status, body["reason"]) == (404, "NotFound")
    assert not [key for key in kubesim.storage.objects if key[0] == CRD_NAME]
    gone = await kubectl.run("get", "peerauthentications", "-A", check=False)
    assert gone.returncode != 0
    assert "the server could not find the requested resource" in gone.stderr  # from kubectl's discovery cache

    # Installed again, it starts empty.
    await kubectl.run("apply", "-f", str(CRD_FILE))
    listed = await kubectl.json("get", "peerauthentications", "-A")
    assert listed["items"] == []


async def test_discovery_lists_a_crd_only_while_it_exists(kubesim: KubeSim) -> None:
    _, groups = await call(kubesim, "GET", "/apis")
    assert "security.istio.io" not in [g["name"] for g in groups["groups"]]
    assert "apiextensions.k8s.io" in [g["name"] for g in groups["groups"]]
    status, _ = await call(kubesim, "GET", BASE)
    assert status == 404

    kubesim.create_object(crd())
    _, groups = await call(kubesim, "GET", "/apis")
    istio = [g for g in groups["groups"] if g["name"] == "security.istio.io"]
    assert istio and istio[0]["preferredVersion"] == {"groupVersion": "security.istio.io/v1", "version": "v1"}
    _, resources = await call(kubesim, "GET", BASE)
    [resource] = resources["resources"]
    assert resource["name"] == "peerauthentications"
    assert resource["kind"] == "PeerAuthentication"
    assert resource["namespaced"] is True
    assert resource["shortNames"] == ["pa"]
    _, openapi = await call(kubesim, "GET", "/openapi/v3")
    assert "apis/security.istio.io/v1" in openapi["paths"]

    _, stored = await call(kubesim, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert stored["status"]["acceptedNames"]["listKind"] == "PeerAuthenticationList"


async def test_custom_resources_are_listed_by_label_and_watched_until_the_crd_goes(kubesim: KubeSim) -> None:
    kubesim.create_object(crd())
    kubesim.create_object(peer_authentication("a", app="x"))
    kubesim.create_object(peer_authentication("b", app="y"))
    _, listed = await call(kubesim, "GET", f"{BASE}/peerauthentications?labelSelector=app%3Dx")
    assert listed["kind"] == "PeerAuthenticationList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    rv = listed["metadata"]["resourceVersion"]

    events: list[tuple[str, str]] = []
    ended = asyncio.Event()

    async def watch() -> None:
        url = f"{kubesim.url}{BASE}/namespaces/default/peerauthentications?watch=1&resourceVersion={rv}"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if line.strip():
                    event = json.loads(line)
                    events.append((event["type"], event["object"]["metadata"]["name"]))
        ended.set()

    task = asyncio.create_task(watch())
    try:
        await eventually(lambda: kubesim.watch_count == 1, what="the watch")
        kubesim.create_object(peer_authentication("c"))
        await eventually(lambda: ("ADDED", "c") in events, what="ADDED c")
        status, _ = await call(kubesim, "DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")
        assert status == 200
        await asyncio.wait_for(ended.wait(), timeout=20)
    finally:
        task.cancel()
    assert sorted(events[1:]) == [("DELETED", "a"), ("DELETED", "b"), ("DELETED", "c")]
    status, _ = await call(kubesim, "GET", f"{BASE}/namespaces/default/peerauthentications/a")
    assert status == 404


async def test_custom_resource_list_items_keep_their_kind_and_api_version(kubesim: KubeSim) -> None:
    kubesim.create_object(crd())
    kubesim.create_object(peer_authentication("a"))
    for path in (f"{BASE}/peerauthentications", f"{BASE}/namespaces/default/peerauthentications"):
        _, listed = await call(kubesim, "GET", path)
        assert (listed["kind"], listed["apiVersion"]) == ("PeerAuthenticationList", "security.istio.io/v1")
        [item] = listed["items"]
        assert (item["kind"], item["apiVersion"]) == ("PeerAuthentication", "security.istio.io/v1")
    _, pods = await call(kubesim, "GET", "/api/v1/namespaces/kube-system/serviceaccounts")
    assert pods["items"] and all("kind" not in i and "apiVersion" not in i for i in pods["items"])


async def test_custom_resources_take_merge_and_json_patches_but_refuse_strategic_merge(kubesim: KubeSim) -> None:
    kubesim.create_object(crd())
    kubesim.create_object(peer_authentication("p"))
    path = f"{BASE}/namespaces/default/peerauthentications/p"
    status, body = await call(
        kubesim, "PATCH", path, {"spec": {"mtls": {"mode": "DISABLE"}}}, content_type="application/merge-patch+json"
    )
    assert (status, body["spec"]["mtls"]["mode"]) == (200, "DISABLE")
    status, body = await call(
        kubesim,
        "PATCH",
        path,
        [{"op": "add", "path": "/spec/selector", "value": {"matchLabels": {"app": "web"}}}],
        content_type="application/json-patch+json",
    )
    assert (status, body["spec"]["selector"]) == (200, {"matchLabels": {"app": "web"}})
    status, body = await call(
        kubesim, "PATCH", path, {"spec": {}}, content_type="application/strategic-merge-patch+json"
    )
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")
    assert "application/merge-patch+json" in body["message"]


async def test_a_cluster_scoped_crd_serves_its_resource_without_namespaces(kubectl: Kubectl, kubesim: KubeSim) -> None:
    await kubectl.apply(CLUSTER_CRD)
    out = await kubectl.apply("apiVersion: example.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nanything: [1, 2]\n")
    assert out.stdout.strip() == "mesh.example.io/m created"
    got = await kubectl.json("get", "mesh", "m")
    assert got["anything"] == [1, 2] and "namespace" not in got["metadata"]
    status, _ = await call(kubesim, "GET", "/apis/example.io/v1alpha1/namespaces/default/meshes")
    assert status == 404


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metadata": {"name": "wrong.security.istio.io"}}, 'metadata.name: Invalid value: "wrong.security.istio.io"'),
        ({"spec": {"scope": "Global"}}, 'spec.scope: Unsupported value: "Global"'),
        (
            {"spec": {"group": "nodots"}},
            'spec.group: Invalid value: "nodots": should be a domain with at least one dot',
        ),
        ({"spec": {"versions": []}}, "must have exactly one version marked as storage version"),
    ],
    ids=["name", "scope", "group", "versions"],
)
async def test_an_invalid_crd_is_refused_naming_the_field(
    kubesim: KubeSim, change: dict[str, Any], message: str
) -> None:
    body = crd()
    for section, values in change.items():
        body[section].update(values)
    status, answer = await call(kubesim, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body)
    assert (status, answer["reason"]) == (422, "Invalid")
    assert message in answer["message"]


def mesh_crd(name: str = "meshes.example.io", **names: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(CLUSTER_CRD)
    body["metadata"]["name"] = name
    body["spec"]["names"] = names
    return body


CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
MIXED_CASE = "may have mixed case, but should otherwise match: "


@pytest.mark.parametrize(
    ("crd_name", "names", "causes"),
    [
        (
            "meshes.example.io",
            {"plural": "9meshes", "kind": "Mesh_Net"},
            [
                'metadata.name: Invalid value: "meshes.example.io": must be spec.names.plural+"."+spec.group',
                f'spec.names.plural: Invalid value: "9meshes": {DNS1035_HELP}',
                f'spec.names.singular: Invalid value: "mesh_net": {DNS1035_HELP}',
                f'spec.names.kind: Invalid value: "Mesh_Net": {MIXED_CASE}{DNS1035_HELP}',
                f'spec.names.listKind: Invalid value: "Mesh_NetList": {MIXED_CASE}{DNS1035_HELP}',
            ],
        ),
        (
            "m" * 64 + ".example.io",
            {"plural": "m" * 64, "kind": "Mesh", "shortNames": ["m1", "1m"], "categories": ["all", ""]},
            [
                f'spec.names.plural: Invalid value: "{"m" * 64}": must be no more than 63 characters',
                f'spec.names.shortNames[1]: Invalid value: "1m": {DNS1035_HELP}',
                f'spec.names.categories[1]: Invalid value: "": {DNS1035_HELP}',
            ],
        ),
        (
            "meshes.example.io",
            {"plural": "meshes", "kind": "Mesh", "listKind": "Mesh"},
            ['spec.names.listKind: Invalid value: "Mesh": kind and listKind may not be the same'],
        ),
        (
            "meshes.example.io",
            {},
            [
                'metadata.name: Invalid value: "meshes.example.io": must be spec.names.plural+"."+spec.group',
                "spec.names.plural: Required value",
                "spec.names.singular: Required value",
                "spec.names.kind: Required value",
                "spec.names.listKind: Required value",
            ],
        ),
    ],
    ids=["dns-1035", "lengths-and-lists", "same-list-kind", "missing"],
)
async def test_crd_names_are_checked_with_the_api_servers_paths_and_texts(
    kubesim: KubeSim, crd_name: str, names: dict[str, Any], causes: list[str]
) -> None:
    """`ValidateCustomResourceDefinition` after the v1 defaults (the singular is the kind lowercased, the list
    kind the kind and "List"): the name must be `<plural>.<group>`, reported with the metadata before the
    spec; the plural, singular, short names and categories are DNS-1035 labels and the kind and list kind
    such labels once lowercased, each name's problems in one cause."""
    status, answer = await call(kubesim, "POST", CRDS, mesh_crd(crd_name, **names))
    assert (status, answer["reason"]) == (422, "Invalid")
    listed = causes[0] if len(causes) == 1 else "[" + ", ".join(causes) + "]"
    assert answer["message"] == f'CustomResourceDefinition.apiextensions.k8s.io "{crd_name}" is invalid: {listed}'


async def test_crd_names_the_api_server_accepts_are_defaulted_as_it_defaults_them(kubesim: KubeSim) -> None:
    """A kind may hold dashes, and is lowercased by Go's rules (U+0130 to a plain "i") both to check it and to
    default the singular; the list kind defaults to the kind and "List", the conversion to None."""
    status, created = await call(kubesim, "POST", CRDS, mesh_crd(plural="meshes", kind="Mesh-Net\u0130"))
    assert status == 201, created
    assert created["spec"]["names"] == {
        "plural": "meshes",
        "kind": "Mesh-Net\u0130",
        "singular": "mesh-neti",
        "listKind": "Mesh-Net\u0130List",
    }
    assert created["spec"]["conversion"] == {"strategy": "None"}


async def test_an_established_crd_keeps_its_group_plural_kind_and_scope(kubesim: KubeSim) -> None:
    """`validateCustomResourceDefinitionSpecUpdate`: the group and plural, which make the name, never change,
    nor an established CRD's kind and scope; the name is not compared with them on update."""
    status, created = await call(kubesim, "POST", CRDS, mesh_crd(plural="meshes", kind="Mesh"))
    assert status == 201, created
    changed = copy.deepcopy(created)
    changed["spec"]["names"] |= {"plural": "meshs", "kind": "Net", "singular": "net", "listKind": "NetList"}
    changed["spec"]["scope"] = "Namespaced"
    status, answer = await call(kubesim, "PUT", f"{CRDS}/meshes.example.io", changed)
    assert (status, answer["reason"]) == (422, "Invalid")
    assert answer["message"] == (
        'CustomResourceDefinition.apiextensions.k8s.io "meshes.example.io" is invalid: ['
        'spec.scope: Invalid value: "Namespaced": field is immutable, '
        'spec.names.kind: Invalid value: "Net": field is immutable, '
        'spec.names.plural: Invalid value: "meshs": field is immutable]'
    )


def go_version(name: str, *, served: bool, storage: bool, schema: bool = False, deprecated: bool = False) -> str:
    """One version as the server prints the list in an error: Go's `%#v` of the internal type (a set pointer at
    kubesim's fixed address)."""
    flags = f"Served:{str(served).lower()}, Storage:{str(storage).lower()}, Deprecated:{str(deprecated).lower()}"
    warning, schema_at = ("0xc000010000" if on else "nil" for on in (deprecated, schema))
    return (
        f'apiextensions.CustomResourceDefinitionVersion{{Name:"{name}", {flags}, '
        f"DeprecationWarning:(*string)({warning}), "
        f"Schema:(*apiextensions.CustomResourceValidation)({schema_at}), "
        "Subresources:(*apiextensions.CustomResourceSubresources)(nil), "
        "AdditionalPrinterColumns:[]apiextensions.CustomResourceColumnDefinition(nil), "
        "SelectableFields:[]apiextensions.SelectableField(nil)}"
    )


async def test_a_crd_versions_served_and_storage_are_false_when_missing(kubesim: KubeSim) -> None:
    """In apiextensions/v1 `served` and `storage` are plain booleans: a version without them is neither served
    nor stored, and the object shows them false. A CRD none of whose versions is stored is refused on the
    list, printed as Go prints the internal versions (a schema all versions share is no longer on them), and
    its stored versions, which only a storage version starts, are none."""
    body = mesh_crd(plural="meshes", kind="Mesh")
    body["spec"]["versions"].append({"name": "v1beta1", "schema": body["spec"]["versions"][0]["schema"]})
    status, created = await call(kubesim, "POST", CRDS, body)
    assert status == 201, created
    assert [(v["served"], v["storage"]) for v in created["spec"]["versions"]] == [(True, True), (False, False)]
    assert created["status"]["storedVersions"] == ["v1alpha1"]
    body = mesh_crd("unstored.example.io", plural="unstored", kind="Unstored")
    del body["spec"]["versions"][0]["storage"]
    status, answer = await call(kubesim, "POST", CRDS, body)
    assert (status, answer["reason"]) == (422, "Invalid")
    versions = (
        f"[]apiextensions.CustomResourceDefinitionVersion{{{go_version('v1alpha1', served=True, storage=False)}}}"
    )
    assert answer["message"] == (
        'CustomResourceDefinition.apiextensions.k8s.io "unstored.example.io" is invalid: ['
        f"spec.versions: Invalid value: {versions}: must have exactly one version marked as storage version, "
        "status.storedVersions: Invalid value: []string(nil): must have at least one stored version]"
    )


async def test_crd_versions_are_checked_in_the_api_servers_order_and_texts(kubesim: KubeSim) -> None:
    """`validateCustomResourceDefinitionSpec`: first every version without a schema, then each version's name;
    a repeated name and more than one storage version are each reported once, on the list; the stored
    versions, only the first storage version on create, lack the second."""
    body = mesh_crd(plural="meshes", kind="Mesh")
    first = body["spec"]["versions"][0]
    body["spec"]["versions"] = [
        {**first, "name": "v1"},
        {"name": "V2", "served": True, "storage": True},
        {**first, "name": "v1", "served": False, "storage": False, "deprecated": True, "deprecationWarning": "old"},
    ]
    status, answer = await call(kubesim, "POST", CRDS, body)
    assert (status, answer["reason"]) == (422, "Invalid")
    shown = ", ".join(
        [
            go_version("v1", served=True, storage=True, schema=True),
            go_version("V2", served=True, storage=True),
            go_version("v1", served=False, storage=False, schema=True, deprecated=True),
        ]
    )
    versions = f"[]apiextensions.CustomResourceDefinitionVersion{{{shown}}}"
    assert [(c["field"], c["message"]) for c in answer["details"]["causes"]] == [
        ("spec.versions[1].schema.openAPIV3Schema", "Required value: schemas are required"),
        ("spec.versions[1].name", f'Invalid value: "V2": {DNS1035_HELP}'),
        ("spec.versions", f"Invalid value: {versions}: must contain unique version names"),
        ("spec.versions", f"Invalid value: {versions}: must have exactly one version marked as storage version"),
        ("status.storedVersions", 'Invalid value: []string{"v1"}: must have the storage version V2'),
    ]


async def test_a_custom_resource_list_has_the_crds_list_kind(kubesim: KubeSim) -> None:
    """The list of a custom resource is of the CRD's accepted `listKind` (the handler's list GVK), whatever
    it is, not the kind and "List"."""
    body = mesh_crd(plural="meshes", kind="Mesh", listKind="MeshCollection")
    status, created = await call(kubesim, "POST", CRDS, body)
    assert status == 201, created
    mesh = {"apiVersion": "example.io/v1alpha1", "kind": "Mesh", "metadata": {"name": "m"}}
    status, _ = await call(kubesim, "POST", "/apis/example.io/v1alpha1/meshes", mesh)
    assert status == 201
    status, listed = await call(kubesim, "GET", "/apis/example.io/v1alpha1/meshes")
    assert status == 200
    assert (listed["kind"], listed["apiVersion"]) == ("MeshCollection", "example.io/v1alpha1")
    assert [(i["kind"], i["metadata"]["name"]) for i in listed["items"]] == [("Mesh", "m")]


async def put_crd(kubesim: KubeSim, crd: dict[str, Any]) -> tuple[int, Any]:
    return await call(kubesim, "PUT", f"{CRDS}/{crd['metadata']['name']}", crd)


async def test_an_update_adds_the_new_storage_version_to_the_stored_versions(kubesim: KubeSim) -> None:
    """The CRD strategy's PrepareForUpdate appends the first storage version to the stored versions it keeps from
    the stored object; the ones already there stay."""
    status, created = await call(kubesim, "POST", CRDS, mesh_crd(plural="meshes", kind="Mesh"))
    assert status == 201, created
    old = created["spec"]["versions"][0]
    changed = copy.deepcopy(created)
    changed["spec"]["versions"] = [{**old, "storage": False}, {**old, "name": "v1"}]
    status, updated = await put_crd(kubesim, changed)
    assert status == 200, updated
    assert updated["status"]["storedVersions"] == ["v1alpha1", "v1"]
    changed = copy.deepcopy(updated)
    changed["spec"]["versions"][0]["storage"], changed["spec"]["versions"][1]["storage"] = True, False
    status, updated = await put_crd(kubesim, changed)
    assert status == 200, updated
    assert updated["status"]["storedVersions"] == ["v1alpha1", "v1"]


async def test_an_update_may_not_drop_a_stored_version_until_the_status_forgets_it(kubesim: KubeSim) -> None:
    """`ValidateCustomResourceDefinitionStoredVersions` on update: a stored version missing from spec.versions
    is refused at its index in status.storedVersions, after the fields the update may not change. Once a
    status update (which checks no stored version) leaves it out, as a storage migration does, it can go."""
    status, created = await call(kubesim, "POST", CRDS, mesh_crd(plural="meshes", kind="Mesh"))
    assert status == 201, created
    old = created["spec"]["versions"][0]
    changed = copy.deepcopy(created)
    changed["spec"]["versions"] = [{**old, "storage": False}, {**old, "name": "v1"}]
    status, updated = await put_crd(kubesim, changed)
    assert status == 200, updated
    dropped = copy.deepcopy(updated)
    dropped["spec"]["versions"] = dropped["spec"]["versions"][1:]
    dropped["spec"]["scope"] = "Namespaced"
    status, answer = await put_crd(kubesim, dropped)
    assert (status, answer["reason"]) == (422, "Invalid")
    assert answer["message"] == (
        'CustomResourceDefinition.apiextensions.k8s.io "meshes.example.io" is invalid: ['
        'spec.scope: Invalid value: "Namespaced": field is immutable, '
        'status.storedVersions[0]: Invalid value: "v1alpha1": must appear in spec.versions]'
    )
    migrated = copy.deepcopy(updated)
    migrated["status"]["storedVersions"] = ["v1"]
    status, answer = await call(kubesim, "PUT", f"{CRDS}/meshes.example.io/status", migrated)
    assert status == 200, answer
    dropped = copy.deepcopy(answer)
    dropped["spec"]["versions"] = dropped["spec"]["versions"][1:]
    status, answer = await put_crd(kubesim, dropped)
    assert status == 200, answer
    assert ([v["name"] for v in answer["spec"]["versions"]], answer["status"]["storedVersions"]) == (["v1"], ["v1"])


async def test_an_update_with_a_second_storage_version_lacks_it_in_the_stored_versions(kubesim: KubeSim) -> None:
    """On update only the first storage version joins the stored versions: a second one is reported missing
    from them, after the spec's own complaint about it."""
    status, created = await call(kubesim, "POST", CRDS, mesh_crd(plural="meshes", kind="Mesh"))
    assert status == 201, created
    changed = copy.deepcopy(created)
    changed["spec"]["versions"].append({**changed["spec"]["versions"][0], "name": "v2"})
    status, answer = await put_crd(kubesim, changed)
    assert (status, answer["reason"]) == (422, "Invalid")
    shown = ", ".join(go_version(name, served=True, storage=True) for name in ("v1alpha1", "v2"))
    assert [(c["field"], c["message"]) for c in answer["details"]["causes"]] == [
        (
            "spec.versions",
            f"Invalid value: []apiextensions.CustomResourceDefinitionVersion{{{shown}}}: "
            "must have exactly one version marked as storage version",
        ),
        ("status.storedVersions", 'Invalid value: []string{"v1alpha1"}: must have the storage version v2'),
    ]
