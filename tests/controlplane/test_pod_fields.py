"""The kube source keeps of a Pod only what the model reads (`pod_fields_read`); the model must not notice.

Generated Pods (with the fields a cluster adds, and with fields of the wrong type) give the same
Workload, or the same error naming the same field, whole or trimmed.
"""

from __future__ import annotations

from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from controlplane.model.fields import ObjectError
from controlplane.model.packed import pack
from controlplane.model.workloads import Workload, pod_fields_read

names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
junk: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2)
)


def maybe_wrong(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `valid`, now and then a value of another type."""
    return st.integers(0, 11).flatmap(lambda n: junk if n == 0 else valid)


ports = st.lists(
    st.fixed_dictionaries(
        {"containerPort": maybe_wrong(st.integers(1, 65535))},
        optional={"name": maybe_wrong(names), "protocol": st.just("TCP"), "hostPort": st.integers(1, 65535)},
    ),
    max_size=3,
)
container = st.fixed_dictionaries(
    {"name": maybe_wrong(names), "image": st.just("app:1")},
    optional={
        "ports": maybe_wrong(ports),
        "env": st.lists(st.fixed_dictionaries({"name": names, "value": names}), max_size=3),
        "resources": st.just({"limits": {"cpu": "1"}}),
        "readinessProbe": st.just({"httpGet": {"path": "/ready", "port": 8080}}),
    },
)
ip = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
pod = st.fixed_dictionaries(
    {
        "apiVersion": st.just("v1"),
        "kind": st.just("Pod"),
        "metadata": maybe_wrong(
            st.fixed_dictionaries(
                {"name": maybe_wrong(names), "namespace": maybe_wrong(names)},
                optional={
                    "labels": maybe_wrong(st.dictionaries(names, names, max_size=3)),
                    "annotations": maybe_wrong(st.dictionaries(names, names, max_size=3)),
                    "uid": names,
                    "ownerReferences": st.just([{"kind": "ReplicaSet", "name": "web-1"}]),
                    "managedFields": st.just([{"manager": "kubelet"}]),
                },
            )
        ),
        "spec": maybe_wrong(
            st.fixed_dictionaries(
                {},
                optional={
                    "containers": maybe_wrong(st.lists(maybe_wrong(container), max_size=3)),
                    "initContainers": maybe_wrong(st.lists(maybe_wrong(container), max_size=2)),
                    "serviceAccountName": maybe_wrong(names),
                    "nodeName": maybe_wrong(names),
                    "volumes": st.just([{"name": "token", "projected": {"sources": []}}]),
                    "tolerations": st.just([{"operator": "Exists"}]),
                },
            )
        ),
        "status": maybe_wrong(
            st.fixed_dictionaries(
                {},
                optional={
                    "podIP": maybe_wrong(ip),
                    "podIPs": maybe_wrong(
                        st.lists(maybe_wrong(st.fixed_dictionaries({"ip": maybe_wrong(ip)})), max_size=2)
                    ),
                    "phase": maybe_wrong(st.sampled_from(["Pending", "Running", "Succeeded"])),
                    "conditions": st.just([{"type": "Ready", "status": "True"}]),
                    "containerStatuses": st.just([{"name": "app", "ready": True, "restartCount": 0}]),
                },
            )
        ),
    }
)


def outcome(obj: dict[str, Any]) -> Workload | str:
    try:
        return Workload.from_object(obj)
    except ObjectError as exc:
        return f"ObjectError: {exc}"


@settings(max_examples=400, deadline=None)
@given(pod)
def test_the_model_reads_the_same_from_the_trimmed_pod_as_from_the_whole_one(obj: dict[str, Any]) -> None:
    whole = outcome(obj)
    event("parsed" if isinstance(whole, Workload) else "refused")
    assert outcome(pod_fields_read(obj)) == whole
    assert outcome(pack(pod_fields_read(obj))) == whole  # as the kube source holds it


def test_what_the_model_never_reads_is_dropped() -> None:
    whole = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}, "uid": "u", "generation": 1},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "app", "image": "web:1", "ports": [{"containerPort": 80}], "env": []}],
            "volumes": [{"name": "v"}],
        },
        "status": {"podIP": "10.0.0.1", "phase": "Running", "conditions": [{"type": "Ready"}]},
    }
    assert pod_fields_read(whole) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "ports": [{"containerPort": 80}]}]},
        "status": {"podIP": "10.0.0.1", "phase": "Running"},
    }
