"""The three patch formats, as the API server applies them (unit level and over HTTP)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.kube.client import KubeApi, KubeApiError
from tests.helpers.kubectl_local import run_kubectl
from tests.kubesim.patching import PatchError, json_patch, merge_patch, strategic_merge_patch
from tests.kubesim.resources import POD_MERGE, TEMPLATE_MERGE
from tests.kubesim.server import KubeSim

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "labels": {"app": "web"}, "finalizers": ["a"]},
    "spec": {
        "containers": [
            {
                "name": "app",
                "image": "app:1",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 90}],
                "args": ["--x"],
            },
            {"name": "side", "image": "side:1"},
        ],
        "volumes": [{"name": "v1", "emptyDir": {}}, {"name": "v2", "emptyDir": {}}],
        "tolerations": [{"key": "a"}, {"key": "b"}],
    },
}


def smp(patch: dict[str, Any]) -> dict[str, Any]:
    return strategic_merge_patch(copy.deepcopy(POD), patch, POD_MERGE)


def test_containers_merge_by_name_and_keep_unnamed_fields() -> None:
    out = smp({"spec": {"containers": [{"name": "app", "image": "app:2"}, {"name": "new", "image": "n:1"}]}})
    containers = out["spec"]["containers"]
    # the library's order: the patch's items in its order, the others where they were on the server
    assert [c["name"] for c in containers] == ["app", "new", "side"]
    assert containers[0]["image"] == "app:2"
    assert containers[0]["env"] == POD["spec"]["containers"][0]["env"]


def test_env_merges_by_name_and_ports_by_container_port() -> None:
    out = smp(
        {
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "env": [{"name": "B", "value": "changed"}, {"name": "C", "value": "3"}],
                        "ports": [{"containerPort": 90, "name": "metrics"}],
                    }
                ]
            }
        }
    )
    app = out["spec"]["containers"][0]
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "changed"}, {"name": "C", "value": "3"}]
    assert app["ports"] == [{"containerPort": 80, "name": "http"}, {"containerPort": 90, "name": "metrics"}]


def test_volumes_merge_by_name() -> None:
    out = smp({"spec": {"volumes": [{"name": "v3", "configMap": {"name": "c"}}]}})
    assert [v["name"] for v in out["spec"]["volumes"]] == ["v3", "v1", "v2"]  # the patch's first


def test_lists_without_a_merge_key_are_replaced() -> None:
    out = smp({"spec": {"tolerations": [{"key": "c"}], "containers": [{"name": "app", "args": ["--y"]}]}})
    assert out["spec"]["tolerations"] == [{"key": "c"}]
    assert out["spec"]["containers"][0]["args"] == ["--y"]


def test_patch_delete_directive_removes_a_list_item() -> None:
    out = smp({"spec": {"containers": [{"name": "side", "$patch": "delete"}]}})
    assert [c["name"] for c in out["spec"]["containers"]] == ["app"]


def test_patch_replace_directive_replaces_a_list_or_a_map() -> None:
    out = smp({"spec": {"volumes": [{"name": "only", "emptyDir": {}}, {"$patch": "replace"}]}})
    assert out["spec"]["volumes"] == [{"name": "only", "emptyDir": {}}]
    out = smp({"metadata": {"labels": {"x": "y", "$patch": "replace"}}})
    assert out["metadata"]["labels"] == {"x": "y"}


def test_null_deletes_a_field() -> None:
    out = smp({"metadata": {"labels": {"app": None}}, "spec": {"tolerations": None}})
    assert out["metadata"]["labels"] == {}
    assert "tolerations" not in out["spec"]


def test_set_element_order_reorders_the_merged_list() -> None:
    out = smp({"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "app"}]}})
    assert [c["name"] for c in out["spec"]["containers"]] == ["side", "app"]


def test_finalizers_merge_as_a_set_and_delete_from_primitive_list_removes() -> None:
    out = smp({"metadata": {"finalizers": ["b", "a"]}})
    assert out["metadata"]["finalizers"] == ["b", "a"]  # in the patch's order
    out = smp({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert out["metadata"]["finalizers"] == []


def test_retain_keys_drops_fields_not_listed() -> None:
    out = smp({"spec": {"volumes": [{"name": "v1", "configMap": {"name": "c"}, "$retainKeys": ["name", "configMap"]}]}})
    assert out["spec"]["volumes"][0] == {"name": "v1", "configMap": {"name": "c"}}


def test_template_containers_merge_inside_workloads() -> None:
    deploy = {
        "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}}}
    }
    out = strategic_merge_patch(
        deploy, {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "2"}]}}}}, TEMPLATE_MERGE
    )
    assert out["spec"]["template"]["spec"]["containers"] == [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]


def test_merge_item_without_merge_key_is_an_error() -> None:
    with pytest.raises(PatchError, match="merge key"):
        smp({"spec": {"containers": [{"image": "x"}]}})


def test_merge_patch_replaces_lists_and_null_deletes() -> None:
    out = merge_patch(POD, {"spec": {"containers": [{"name": "only", "image": "o"}]}, "metadata": {"labels": None}})
    assert out["spec"]["containers"] == [{"name": "only", "image": "o"}]
    assert "labels" not in out["metadata"]
    assert POD["metadata"]["labels"] == {"app": "web"}  # the input is untouched


def test_json_patch_operations_and_failed_test() -> None:
    out = json_patch(POD, [{"op": "replace", "path": "/spec/containers/0/image", "value": "app:3"}])
    assert out["spec"]["containers"][0]["image"] == "app:3"
    with pytest.raises(PatchError) as info:
        json_patch(POD, [{"op": "test", "path": "/metadata/name", "value": "other"}])
    assert info.value.status == 422
    with pytest.raises(PatchError) as info:
        json_patch(POD, {"op": "add"})
    assert info.value.status == 400


async def _configmap(kubesim: KubeSim) -> None:
    kubesim.create_object(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"k": "v"}}
    )


@pytest.mark.parametrize(
    ("content_type", "patch", "data"),
    [
        ("application/merge-patch+json", {"data": {"k": None, "n": "1"}}, {"n": "1"}),
        ("application/strategic-merge-patch+json", {"data": {"n": "1"}}, {"k": "v", "n": "1"}),
        ("application/json-patch+json", [{"op": "add", "path": "/data/n", "value": "1"}], {"k": "v", "n": "1"}),
    ],
    ids=["merge", "strategic", "json"],
)
async def test_patch_over_http_bumps_resource_version(
    kubesim: KubeSim, kube_api: KubeApi, content_type: str, patch: Any, data: dict[str, str]
) -> None:
    await _configmap(kubesim)
    before = kubesim.get_object("configmaps", "default", "c")
    assert before is not None
    out = await kube_api.request(
        "PATCH", "/api/v1/namespaces/default/configmaps/c", body=patch, content_type=content_type
    )
    assert out["data"] == data
    assert int(out["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])


async def test_patch_with_unknown_content_type_is_415(kubesim: KubeSim, kube_api: KubeApi) -> None:
    await _configmap(kubesim)
    with pytest.raises(KubeApiError) as info:
        await kube_api.request(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/c",
            body={"data": {}},
            content_type="application/x-www-form-urlencoded",
        )
    assert info.value.status == 415


async def test_patch_with_stale_resource_version_conflicts(kubesim: KubeSim, kube_api: KubeApi) -> None:
    await _configmap(kubesim)
    with pytest.raises(KubeApiError) as info:
        await kube_api.request(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/c",
            body={"metadata": {"resourceVersion": "1"}, "data": {"n": "1"}},
            content_type="application/merge-patch+json",
        )
    assert info.value.status == 409
    assert info.value.reason == "Conflict"


async def test_failed_json_patch_test_is_422_and_changes_nothing(kubesim: KubeSim, kube_api: KubeApi) -> None:
    await _configmap(kubesim)
    with pytest.raises(KubeApiError) as info:
        await kube_api.request(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/c",
            body=[{"op": "test", "path": "/data/k", "value": "other"}, {"op": "remove", "path": "/data/k"}],
            content_type="application/json-patch+json",
        )
    assert info.value.status == 422
    stored = kubesim.get_object("configmaps", "default", "c")
    assert stored is not None
    assert stored["data"] == {"k": "v"}


# -- the machine's kubectl as the oracle: `kubectl patch --local` applies a strategic merge patch with
# -- the same library and Pod schema as the API server ----------------------------------------------------

_names = st.sampled_from(["app", "side", "new"])
_env = st.fixed_dictionaries(
    {"name": st.sampled_from(["A", "B", "C"])},
    optional={"value": st.sampled_from(["1", "x"]), "$patch": st.just("delete")},
)
_port = st.fixed_dictionaries(
    {"containerPort": st.sampled_from([80, 90, 100])}, optional={"name": st.sampled_from(["http", "m"])}
)
_container = st.fixed_dictionaries(
    {"name": _names},
    optional={
        "image": st.sampled_from(["app:2", "n:1"]),
        "env": st.lists(_env, max_size=3),
        "ports": st.lists(_port, max_size=2),
        "args": st.lists(st.sampled_from(["--x", "--y"]), max_size=2),
        "$patch": st.sampled_from(["delete", "replace"]),
    },
)
_volume = st.fixed_dictionaries(
    {"name": st.sampled_from(["v1", "v2", "v3"])},
    optional={"emptyDir": st.just({}), "$patch": st.just("delete")},
)
_spec = st.fixed_dictionaries(
    {},
    optional={
        "containers": st.lists(_container, max_size=3),
        "volumes": st.lists(_volume, max_size=3),
        "tolerations": st.lists(st.fixed_dictionaries({"key": st.sampled_from(["a", "c"])}), max_size=2),
        "$setElementOrder/containers": st.lists(st.fixed_dictionaries({"name": _names}), max_size=3),
    },
)
_metadata = st.fixed_dictionaries(
    {},
    optional={
        "labels": st.dictionaries(st.sampled_from(["app", "b"]), st.one_of(st.none(), st.just("v")), max_size=2),
        "finalizers": st.lists(st.sampled_from(["a", "b"]), max_size=2),
        "$deleteFromPrimitiveList/finalizers": st.lists(st.sampled_from(["a", "b"]), max_size=1),
    },
).filter(lambda m: not {"finalizers", "$deleteFromPrimitiveList/finalizers"} <= set(m))  # Go's map order decides
_patches = st.fixed_dictionaries({}, optional={"metadata": _metadata, "spec": _spec})


def kubectl_patch(kind: str, patch: Any) -> tuple[int, Any]:
    """`kubectl patch --local` of POD: (exit status, the patched object or the error text)."""
    code, out, err = run_kubectl(
        "patch", "--local", "-f", "-", f"--type={kind}", "-p", json.dumps(patch), "-o", "json", stdin=json.dumps(POD)
    )
    return code, json.loads(out) if code == 0 else err


def agree(kind: str, patch: Any, ours: Callable[[], Any]) -> None:
    """kubesim's patch gives what kubectl's gives, or both refuse it."""
    code, theirs = kubectl_patch(kind, patch)
    try:
        mine = ours()
    except PatchError:
        assert code != 0, f"kubesim refused a patch kubectl applies: {patch}"
        return
    if code != 0 and not (isinstance(mine, dict) and (mine.get("apiVersion"), mine.get("kind")) == ("v1", "Pod")):
        return  # the patch made a document that is no Pod: the object's decoding refuses it, after the patch
    assert code == 0, f"kubectl refused the patch ({theirs}), kubesim applied it: {patch}"
    assert mine == theirs


@settings(max_examples=40, deadline=None)
@given(patch=_patches)
def test_strategic_merge_patches_agree_with_kubectls(patch: dict[str, Any]) -> None:
    """Generated patches (merge keys, `$patch: delete/replace`, `$setElementOrder`,
    `$deleteFromPrimitiveList`, null values, atomic lists) give the Pod kubectl's library gives, or are
    refused by both."""
    agree("strategic", patch, lambda: smp(copy.deepcopy(patch)))


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from(["x", "app"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.sampled_from(["a", "name"]), inner, max_size=2)
    ),
    max_leaves=4,
)


@settings(max_examples=30, deadline=None)
@given(patch=st.dictionaries(st.sampled_from(["metadata", "spec", "extra"]), _json_values, max_size=2))
def test_merge_patches_agree_with_kubectls(patch: dict[str, Any]) -> None:
    agree("merge", patch, lambda: merge_patch(copy.deepcopy(POD), patch))


_pointers = st.sampled_from(
    [
        "/metadata/labels/app",
        "/metadata/labels/new",
        "/metadata/labels",
        "/metadata/finalizers/0",
        "/metadata/finalizers/-",
        "/metadata/finalizers/1",
        "/metadata/finalizers/-1",
        "/metadata/finalizers/01",
        "/spec/containers/0/image",
        "/spec/containers/1",
        "/spec/containers/2",
        "/spec/containers/-",
        "/spec/containers/0/env/1/value",
        "/spec/missing/x",
        "/spec/volumes/0/emptyDir",
        "/metadata/labels/a~1b",
        "/metadata/labels/a~0b",
        "",
    ]
)
_operation = st.one_of(
    st.fixed_dictionaries(
        {"op": st.sampled_from(["add", "replace", "test"]), "path": _pointers, "value": _json_values}
    ),
    st.fixed_dictionaries({"op": st.just("remove"), "path": _pointers}),
    st.fixed_dictionaries({"op": st.sampled_from(["move", "copy"]), "from": _pointers, "path": _pointers}),
)


@settings(max_examples=60, deadline=None)
@given(operations=st.lists(_operation, min_size=1, max_size=3))
def test_json_patches_agree_with_kubectls(operations: list[dict[str, Any]]) -> None:
    """Generated RFC 6902 operations on the Pod (escaped keys, `-` and out-of-range indices, missing
    parents, `test` of absent values, moves into themselves) as evanphx/json-patch applies them."""
    agree("json", operations, lambda: json_patch(copy.deepcopy(POD), copy.deepcopy(operations)))
