"""The store's packed objects (`controlplane.model.packed`): the same object to every reader, one object
to the garbage collector."""

from __future__ import annotations

import copy
import gc
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.model.packed import PackedObject, pack

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=30,
)
objects = st.dictionaries(st.text(max_size=8), values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(objects)
def test_a_packed_object_reads_as_the_object_it_was_made_from(obj: dict[str, Any]) -> None:
    packed = pack(obj)
    assert isinstance(packed, PackedObject)
    assert packed == obj and obj == packed
    assert list(packed) == list(obj) and len(packed) == len(obj)
    for key, value in obj.items():
        assert key in packed and packed[key] == value and packed.get(key) == value
    assert packed == pack(copy.deepcopy(obj))


@settings(max_examples=200, deadline=None)
@given(objects.filter(bool), st.data())
def test_a_changed_field_is_a_different_object(obj: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    changed = {**obj, key: [obj[key], "changed"]}
    assert pack(obj) != pack(changed)


def test_each_read_is_a_new_value_so_no_reader_changes_what_is_held() -> None:
    packed = pack({"metadata": {"name": "web", "labels": {"app": "web"}}})
    packed["metadata"]["labels"]["app"] = "changed"
    assert packed["metadata"]["labels"] == {"app": "web"}


def test_the_garbage_collector_walks_one_object_per_packed_object() -> None:
    """The point of packing: a kept Pod is a dozen dicts and lists the collector walks in every full
    collection (a pause of the event loop); packed it is one object, whatever its size."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}], "phase": "Running"},
    }
    packed = pack(copy.deepcopy(pod))
    gc.collect()

    def tracked_within(root: Any) -> int:
        seen: set[int] = set()
        stack = [root]
        while stack:
            item = stack.pop()
            if id(item) in seen or isinstance(item, type) or not gc.is_tracked(item):
                continue
            seen.add(id(item))
            stack.extend(gc.get_referents(item))
        return len(seen)

    assert tracked_within(pod) >= 6
    assert tracked_within(packed) == 1
