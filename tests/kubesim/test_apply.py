"""Server-side apply through kubesim, driven by the real kubectl (`apply --server-side`) and raw PATCHes."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.fixtures import Kubectl, Result
from tests.kubesim.server import KubeSim

CM_PATH = "/api/v1/namespaces/default/configmaps/c"


def _configmap(data: dict[str, str]) -> str:
    lines = "".join(f'  {k}: "{v}"\n' for k, v in data.items())
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {{app: demo}}\ndata:\n{lines}"


def _entries(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["manager"], e["operation"]): e for e in obj["metadata"].get("managedFields", [])}


async def _apply(kubectl: Kubectl, manifest: str, *args: str) -> Result:
    return await kubectl.run("apply", "-f", "-", "--server-side", *args, stdin=manifest, check=False)


async def _get(kubectl: Kubectl, *args: str) -> Any:
    return await kubectl.json("get", *args, "--show-managed-fields")


async def test_apply_creates_the_object_and_records_the_applier(kubectl: Kubectl) -> None:
    result = await kubectl.apply(_configmap({"a": "1"}), "--server-side")
    assert "configmap/c serverside-applied" in result.stdout
    cm = await _get(kubectl, "configmap", "c")
    assert cm["data"] == {"a": "1"}
    entry = _entries(cm)[("kubectl", "Apply")]
    assert entry["apiVersion"] == "v1" and entry["fieldsType"] == "FieldsV1"
    assert entry["fieldsV1"] == {"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:app": {}}}}


async def test_fields_the_applier_no_longer_sends_are_removed(kubectl: Kubectl) -> None:
    await kubectl.apply(_configmap({"a": "1", "b": "2"}), "--server-side")
    await kubectl.apply(_configmap({"a": "1"}), "--server-side")
    assert (await _get(kubectl, "configmap", "c"))["data"] == {"a": "1"}


async def test_a_changed_field_owned_by_another_manager_conflicts(kubectl: Kubectl) -> None:
    await kubectl.run("create", "configmap", "c", "--from-literal=a=1", "--from-literal=b=2")
    failed = await _apply(kubectl, _configmap({"a": "9"}))
    assert failed.returncode != 0
    assert 'Apply failed with 1 conflict: conflict with "kubectl-create" using v1: .data.a' in failed.stderr
    assert (await _get(kubectl, "configmap", "c"))["data"]["a"] == "1"

    await kubectl.apply(_configmap({"a": "9"}), "--server-side", "--force-conflicts")
    cm = await _get(kubectl, "configmap", "c")
    assert cm["data"] == {"a": "9", "b": "2"}
    entries = _entries(cm)
    assert entries[("kubectl-create", "Update")]["fieldsV1"]["f:data"] == {"f:b": {}}
    assert entries[("kubectl", "Apply")]["fieldsV1"]["f:data"] == {"f:a": {}}


async def test_applying_the_value_another_manager_set_shares_the_field(kubectl: Kubectl) -> None:
    await kubectl.run("create", "configmap", "c", "--from-literal=a=1")
    await kubectl.apply(_configmap({"a": "1"}), "--server-side")
    entries = _entries(await _get(kubectl, "configmap", "c"))
    assert "f:a" in entries[("kubectl-create", "Update")]["fieldsV1"]["f:data"]
    assert "f:a" in entries[("kubectl", "Apply")]["fieldsV1"]["f:data"]


async def test_conflicts_with_several_fields_list_each_under_its_manager(kubectl: Kubectl) -> None:
    await kubectl.run("create", "configmap", "c", "--from-literal=a=1", "--from-literal=b=2")
    failed = await _apply(kubectl, _configmap({"a": "8", "b": "9"}))
    assert 'Apply failed with 2 conflicts: conflicts with "kubectl-create" using v1:\n- .data.a\n- .data.b' in (
        failed.stderr
    )


async def test_edits_by_other_managers_are_recorded_as_updates(kubectl: Kubectl) -> None:
    await kubectl.apply(_configmap({"a": "1"}), "--server-side")
    await kubectl.run("patch", "configmap", "c", "-p", '{"data":{"b":"2"}}')
    await kubectl.run("label", "configmap", "c", "team=x")
    entries = _entries(await _get(kubectl, "configmap", "c"))
    assert entries[("kubectl-patch", "Update")]["fieldsV1"] == {"f:data": {"f:b": {}}}
    assert entries[("kubectl-label", "Update")]["fieldsV1"] == {"f:metadata": {"f:labels": {"f:team": {}}}}
    # the applier dropping `a` removes only its own field; `b` stays with kubectl-patch
    await kubectl.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, labels: {app: demo}}\n", "--server-side")
    assert (await _get(kubectl, "configmap", "c"))["data"] == {"b": "2"}


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: example.com/app:1
        ports:
        - {containerPort: 8080, name: http}
        - {containerPort: 9090, name: metrics}
"""


async def test_keyed_lists_merge_by_key_and_keep_what_others_own(kubectl: Kubectl) -> None:
    await kubectl.apply(DEPLOYMENT, "--server-side")
    patch = '{"spec":{"template":{"spec":{"containers":[{"name":"app","env":[{"name":"MODE","value":"x"}]}]}}}}'
    await kubectl.run("patch", "deployment", "web", "-p", patch)
    await kubectl.apply(DEPLOYMENT.replace("example.com/app:1", "example.com/app:2").rsplit("        - {c", 1)[0])
    deploy = await _get(kubectl, "deployment", "web")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "example.com/app:2"
    assert container["env"] == [{"name": "MODE", "value": "x"}]
    applied = _entries(deploy)[("kubectl-client-side-apply", "Update")]
    assert applied["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"app"}']


async def test_applied_ports_are_keyed_by_port_and_protocol(kubectl: Kubectl) -> None:
    await kubectl.apply(DEPLOYMENT, "--server-side")
    await kubectl.apply(DEPLOYMENT.rsplit("        - {c", 1)[0], "--server-side")
    deploy = await _get(kubectl, "deployment", "web")
    ports = deploy["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert [p["containerPort"] for p in ports] == [8080]
    fields = _entries(deploy)[("kubectl", "Apply")]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]
    container = fields["f:containers"]['k:{"name":"app"}']
    assert set(container["f:ports"]) == {'k:{"containerPort":8080,"protocol":"TCP"}'}
    assert fields["f:containers"]['k:{"name":"app"}']["."] == {}


async def test_reapplying_the_same_configuration_writes_nothing(kubectl: Kubectl) -> None:
    await kubectl.apply(_configmap({"a": "1"}), "--server-side")
    before = await _get(kubectl, "configmap", "c")
    await kubectl.apply(_configmap({"a": "1"}), "--server-side")
    after = await _get(kubectl, "configmap", "c")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_apply_without_a_field_manager_is_invalid(kubesim: KubeSim, kube_api: KubeApi) -> None:
    with pytest.raises(KubeApiError) as info:
        await kube_api.request(
            "PATCH",
            CM_PATH,
            body={"apiVersion": "v1", "kind": "ConfigMap"},
            content_type="application/apply-patch+yaml",
        )
    assert info.value.status == 422
    assert (
        info.value.message
        == 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
    )


async def test_force_on_a_non_apply_patch_is_invalid(kubectl: Kubectl, kube_api: KubeApi) -> None:
    await kubectl.apply(_configmap({"a": "1"}), "--server-side")
    with pytest.raises(KubeApiError) as info:
        await kube_api.request(
            "PATCH",
            CM_PATH,
            body={"data": {"a": "2"}},
            content_type="application/merge-patch+json",
            query=[("force", "true")],
        )
    assert info.value.status == 422
    assert "force: Forbidden: may not be specified for non-apply patch" in info.value.message


async def test_apply_of_an_unknown_field_fails_naming_it(kubectl: Kubectl) -> None:
    failed = await _apply(kubectl, _configmap({"a": "1"}) + "colour: blue\n", "--validate=false")
    assert failed.returncode != 0
    assert ".colour: field not declared in schema" in failed.stderr


async def test_apply_with_managed_fields_in_the_configuration_is_rejected(kube_api: KubeApi) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "managedFields": [{"manager": "x"}]}}
    with pytest.raises(KubeApiError) as info:
        await kube_api.request(
            "PATCH", CM_PATH, body=body, content_type="application/apply-patch+yaml", query=[("fieldManager", "t")]
        )
    assert info.value.status == 400
    assert info.value.message == "metadata.managedFields must be nil"


async def test_an_update_with_a_field_manager_is_recorded(kubectl: Kubectl, kube_api: KubeApi) -> None:
    await kubectl.apply(_configmap({"a": "1"}), "--server-side")
    cm = await kube_api.request("GET", CM_PATH)
    cm["data"]["a"] = "2"
    await kube_api.request("PUT", CM_PATH, body=cm, query=[("fieldManager", "my-controller")])
    entries = _entries(await kube_api.request("GET", CM_PATH))
    assert entries[("my-controller", "Update")]["fieldsV1"] == {"f:data": {"f:a": {}}}
    assert "f:data" not in entries[("kubectl", "Apply")]["fieldsV1"]


CM_COLLECTION = "/api/v1/namespaces/default/configmaps"
OPTIONS_TOO_LONG = "fieldManager: Too long: may not be more than 128 bytes"


async def _refused(kube_api: KubeApi, method: str, path: str, **kwargs: Any) -> KubeApiError:
    with pytest.raises(KubeApiError) as info:
        await kube_api.request(method, path, **kwargs)
    return info.value


async def test_an_explicit_field_manager_over_128_bytes_is_refused_not_cut(kube_api: KubeApi) -> None:
    """`ValidateFieldManager`, which create, update and patch (apply too) run on their options: a
    `fieldManager` over 128 bytes (65 two-byte characters are) is a 422 naming the options' kind, while one of
    exactly 128 bytes is recorded whole."""
    long_manager = "\u00e9" * 65
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    err = await _refused(kube_api, "POST", CM_COLLECTION, body=body, query=[("fieldManager", long_manager)])
    assert (err.status, err.reason) == (422, "Invalid")
    assert err.message == f'CreateOptions.meta.k8s.io "" is invalid: {OPTIONS_TOO_LONG}'
    assert err.body["details"] == {
        "group": "meta.k8s.io",
        "kind": "CreateOptions",
        "causes": [
            {
                "reason": "FieldValueTooLong",
                "message": "Too long: may not be more than 128 bytes",
                "field": "fieldManager",
            }
        ],
    }

    at_limit = "\u00e9" * 64
    await kube_api.request("POST", CM_COLLECTION, body=body, query=[("fieldManager", at_limit)])
    assert (at_limit, "Update") in _entries(await kube_api.request("GET", CM_PATH))

    for method, content_type, kind, extra in (
        ("PUT", "application/json", "UpdateOptions", []),
        ("PATCH", "application/merge-patch+json", "PatchOptions", []),
        ("PATCH", "application/apply-patch+yaml", "PatchOptions", [("force", "true")]),
    ):
        err = await _refused(
            kube_api,
            method,
            CM_PATH,
            body=body if method == "PUT" or "apply" in content_type else {"data": {"a": "2"}},
            content_type=content_type,
            query=[("fieldManager", long_manager), *extra],
        )
        assert (err.status, err.reason) == (422, "Invalid")
        assert err.message == f'{kind}.meta.k8s.io "" is invalid: {OPTIONS_TOO_LONG}'
    assert (await kube_api.request("GET", CM_PATH))["data"] == {"a": "1"}


async def test_an_unprintable_field_manager_is_refused_naming_each_character(kube_api: KubeApi) -> None:
    """Every character of a `fieldManager` must be printable (Go's `unicode.IsPrint`): each one that is not is
    its own cause, named by its code point and its byte offset, with the whole manager quoted as Go quotes it."""
    await kube_api.request(
        "POST", CM_COLLECTION, body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    )
    manager = "\u00e9\x7fop\u00a0"
    quoted = '"\u00e9\\x7fop\\u00a0"'
    err = await _refused(
        kube_api,
        "PATCH",
        CM_PATH,
        body={"data": {"a": "1"}},
        content_type="application/merge-patch+json",
        query=[("fieldManager", manager)],
    )
    assert (err.status, err.reason) == (422, "Invalid")
    assert err.message == (
        f'PatchOptions.meta.k8s.io "" is invalid: [fieldManager: Invalid value: {quoted}: invalid character U+007F '
        f"(at position 2), fieldManager: Invalid value: {quoted}: invalid character U+00A0 (at position 5)]"
    )


async def test_bad_options_of_a_write_are_reported_together(kube_api: KubeApi) -> None:
    """`ValidateCreateOptions` checks the fieldManager, dryRun and fieldValidation and answers one 422 with
    every cause; a dryRun list is printed as Go prints a slice."""
    err = await _refused(
        kube_api,
        "POST",
        CM_COLLECTION,
        body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
        query=[("fieldManager", "m" * 129), ("dryRun", "All"), ("dryRun", "Some"), ("fieldValidation", "Loud")],
    )
    assert (err.status, err.reason) == (422, "Invalid")
    assert err.message == (
        f'CreateOptions.meta.k8s.io "" is invalid: [{OPTIONS_TOO_LONG}, dryRun: Unsupported value: '
        '[]string{"All", "Some"}: supported values: "All", fieldValidation: Unsupported value: "Loud": '
        'supported values: "", "Ignore", "Strict", "Warn"]'
    )


async def test_a_manager_taken_from_the_user_agent_is_cut_to_128_bytes(kubesim: KubeSim) -> None:
    """Without `fieldManager` the write is recorded under the User-Agent's product (what comes before its first
    '/'), cut to at most 128 bytes at a character boundary: only this derived name is cut, never refused."""
    agent = "agent-" + "\u00e9" * 100
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(kubesim.url + CM_COLLECTION, json=body, headers={"User-Agent": f"{agent}/1.0"}) as resp,
    ):
        assert resp.status == 201
        created = await resp.json()
    assert [e["manager"] for e in created["metadata"]["managedFields"]] == ["agent-" + "\u00e9" * 61]
