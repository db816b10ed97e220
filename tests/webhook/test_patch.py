"""The JSON Patch generator: small patches, RFC 6901 escaping, and `jsonpatch` agreeing on the result."""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.patch import json_patch


def applied(old: Any, new: Any) -> Any:
    return jsonpatch.apply_patch(old, json_patch(old, new))


def test_equal_values_give_an_empty_patch() -> None:
    doc = {"a": [1, {"b": None}], "c": "x"}
    assert json_patch(doc, json.loads(json.dumps(doc))) == []


def test_an_element_inserted_at_the_front_is_one_add() -> None:
    old = {"spec": {"initContainers": [{"name": "user"}]}}
    new = {"spec": {"initContainers": [{"name": "istio-init"}, {"name": "istio-proxy"}, {"name": "user"}]}}
    assert json_patch(old, new) == [
        {"op": "add", "path": "/spec/initContainers/0", "value": {"name": "istio-init"}},
        {"op": "add", "path": "/spec/initContainers/1", "value": {"name": "istio-proxy"}},
    ]


def test_an_element_removed_from_the_middle_is_one_remove() -> None:
    assert json_patch([1, 2, 3, 4], [1, 2, 4]) == [{"op": "remove", "path": "/2"}]


def test_a_changed_element_next_to_an_appended_one_is_diffed_in_place() -> None:
    old = {"containers": [{"name": "app", "probe": {"port": 8080}}]}
    new = {"containers": [{"name": "app", "probe": {"port": 15020}}, {"name": "istio-proxy"}]}
    assert json_patch(old, new) == [
        {"op": "replace", "path": "/containers/0/probe/port", "value": 15020},
        {"op": "add", "path": "/containers/1", "value": {"name": "istio-proxy"}},
    ]


def test_keys_with_slash_and_tilde_are_escaped() -> None:
    old = {"metadata": {"annotations": {"a~b/c": "1"}}}
    new = {"metadata": {"annotations": {"a~b/c": "2", "sidecar.istio.io/status": "{}"}}}
    assert json_patch(old, new) == [
        {"op": "replace", "path": "/metadata/annotations/a~0b~1c", "value": "2"},
        {"op": "add", "path": "/metadata/annotations/sidecar.istio.io~1status", "value": "{}"},
    ]
    assert applied(old, new) == new


@pytest.mark.parametrize(
    ("old", "new"), [(1, True), (True, 1), (1, 1.0), (0, False), ([1], [True]), ({"a": 1}, {"a": 1.0})]
)
def test_json_types_are_not_confused(old: Any, new: Any) -> None:
    result = applied(old, new)
    assert json.dumps(result) == json.dumps(new)


def test_whole_document_replacement_uses_the_root_path() -> None:
    assert json_patch({"a": 1}, [1]) == [{"op": "replace", "path": "", "value": [1]}]


def test_removed_keys_are_removed() -> None:
    assert json_patch({"a": 1, "b": 2}, {"b": 2}) == [{"op": "remove", "path": "/a"}]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=6),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(alphabet="ab~/0", max_size=3), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(json_values, json_values)
def test_applying_the_patch_to_old_gives_new(old: Any, new: Any) -> None:
    result = applied(old, new)
    assert result == new
    assert json.dumps(result, sort_keys=True) == json.dumps(new, sort_keys=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=12), st.lists(st.integers(0, 5), max_size=12))
def test_array_patches_never_exceed_a_rewrite_of_every_element(old: list[int], new: list[int]) -> None:
    patch = json_patch(old, new)
    assert jsonpatch.apply_patch(old, patch) == new
    assert len(patch) <= max(len(old), len(new))


def test_an_insertion_is_one_add_when_only_part_of_a_long_array_is_unchanged() -> None:
    """Elements with no equal on the other side never align, so they are left out of the alignment:
    it no longer gives up on a long array (600 x 601 comparisons) when 299 elements are unchanged."""
    old = [{"n": i} for i in range(600)]
    changed = [{"n": i, "probe": "rewritten"} for i in range(600)]
    new = [*changed[:300], {"n": "inserted"}, *old[300:599], changed[599]]
    patch = json_patch(old, new)
    assert jsonpatch.apply_patch(old, patch) == new
    assert [op for op in patch if op["op"] != "add" or not op["path"].endswith("/probe")] == [
        {"op": "add", "path": "/300", "value": {"n": "inserted"}}
    ]
    assert len(patch) == 302  # the inserted element, and each changed element's new field
