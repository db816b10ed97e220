from controlplane.model.store import ConfigEvent, ConfigStore, EventType, ObjectKey


def ns(name: str, **labels: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def test_apply_reports_only_real_changes_in_one_batch() -> None:
    store = ConfigStore()
    batches: list[list[ConfigEvent]] = []
    store.subscribe(lambda events: batches.append(list(events)))
    a = ObjectKey("Namespace", "", "a")
    store.apply([(a, ns("a"))])
    store.apply([(a, ns("a"))])  # identical: no event
    store.apply([(a, ns("a", team="x")), (ObjectKey("Namespace", "", "b"), None)])  # b never existed
    store.apply([(a, None)])
    assert [[e.type for e in batch] for batch in batches] == [
        [EventType.ADDED],
        [EventType.MODIFIED],
        [EventType.DELETED],
    ]
    assert batches[1][0].old == ns("a") and batches[1][0].new == ns("a", team="x")


def test_an_equal_object_replaces_the_held_copy_without_an_event() -> None:
    """A source that re-reads an unchanged object (a relist, a re-read file) holds its new copy; the
    store must hold that one too, or every unchanged object stays in memory twice."""
    store = ConfigStore()
    events: list[ConfigEvent] = []
    store.subscribe(events.extend)
    a = ObjectKey("Namespace", "", "a")
    store.apply([(a, ns("a"))])
    again = ns("a")
    assert store.apply([(a, again)]) == []
    assert store.get(a) is again
    assert [e.type for e in events] == [EventType.ADDED]


def test_replace_kind_deletes_what_the_relist_no_longer_has() -> None:
    store = ConfigStore()
    store.replace_kind("Namespace", [ns("a"), ns("b")])
    events = store.replace_kind("Namespace", [ns("b", x="1")])
    assert {(e.type, e.key.name) for e in events} == {(EventType.DELETED, "a"), (EventType.MODIFIED, "b")}
    assert [o["metadata"]["name"] for o in store.list("Namespace")] == ["b"]


def test_list_gives_one_kind_in_namespace_then_name_order() -> None:
    """Sources, the registry and debug pages rely on the order: the same objects, the same list."""

    def cm(namespace: str, name: str) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}}

    store = ConfigStore()
    keys = [("shop", "b"), ("default", "z"), ("shop", "a"), ("default", "a"), ("istio-system", "m")]
    store.apply(
        [(ObjectKey("ConfigMap", n, m), cm(n, m)) for n, m in keys] + [(ObjectKey("Namespace", "", "a"), ns("a"))]
    )
    listed = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in store.list("ConfigMap")]
    assert listed == sorted(keys)
    assert [o["metadata"]["name"] for o in store.list("ConfigMap", namespace="shop")] == ["a", "b"]
    assert [o["metadata"]["name"] for o in store.list("Namespace")] == ["a"]


def test_a_failing_listener_does_not_stop_the_others() -> None:
    store = ConfigStore()
    seen: list[int] = []

    def broken(_: object) -> None:
        raise RuntimeError("boom")

    store.subscribe(broken)
    store.subscribe(lambda events: seen.append(len(events)))
    store.apply([(ObjectKey("Namespace", "", "a"), ns("a"))])
    assert seen == [1]


def test_when_synced_calls_back_once_the_first_complete_view_is_in() -> None:
    """What waits for the first complete view (the server keeps it out of the garbage collector's
    full passes then) runs once: at once when the store is synced, else when the source marks it."""
    store = ConfigStore()
    calls: list[str] = []
    store.when_synced(lambda: calls.append("early"))
    store.apply([(ObjectKey("Namespace", "", "a"), ns("a"))])
    assert calls == []
    store.mark_synced()
    assert calls == ["early"]
    store.when_synced(lambda: calls.append("late"))
    store.mark_synced()  # a second mark calls nothing again
    assert calls == ["early", "late"]
