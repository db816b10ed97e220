"""What a 1.32 API server adds to a Pod it is given, and which of those additions an update may touch.

`SetDefaults_Pod` requests what a container only limits (a Pod's containers, not a workload's template), and
the QoS class the Pod strategy then sets counts those requests by value. The DefaultTolerationSeconds
admission plugin (on by default) appends NoExecute tolerations of the not-ready and unreachable taints to a
Pod that does not tolerate them, on create and on update. A Pod update may add tolerations and change their
`tolerationSeconds`, nothing else of them (`validateOnlyAddedTolerations`).
"""

from __future__ import annotations

import copy
from typing import Any

from controlplane.kube.client import KubeApi
from tests.kubesim.test_api import PODS, bare_pod, error_of
from tests.kubesim.test_pod_validation import DEPLOYMENTS, deployment

NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
CHANGED_TOLERATION = "Forbidden: existing toleration can not be modified except its tolerationSeconds"


def default_toleration(taint: str) -> dict[str, Any]:
    return {"key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}


def pod_with_resources(name: str, resources: dict[str, Any]) -> dict[str, Any]:
    pod = bare_pod(name)
    pod["spec"]["containers"][0]["resources"] = copy.deepcopy(resources)
    return pod


def pod_with_tolerations(name: str, tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    pod = bare_pod(name)
    pod["spec"]["tolerations"] = copy.deepcopy(tolerations)
    return pod


# -- requests from limits ----------------------------------------------------------------------------


async def test_a_pods_limits_become_its_missing_requests_but_not_a_templates(kube_api: KubeApi) -> None:
    """Each container and init container requests what it limits and does not request, at the limit's value
    (written in canonical form, as the limit is); a request it gives is kept. A Deployment's template keeps
    its limits alone, and takes no `enableServiceLinks`: only a Pod is defaulted so (`SetDefaults_Pod`)."""
    limits = {"cpu": "1000m", "memory": "128Mi", "example.com/gpu": "1"}
    pod = pod_with_resources("limited", {"limits": limits, "requests": {"cpu": "250m"}})
    pod["spec"]["initContainers"] = [{"name": "init", "image": "i", "resources": {"limits": {"memory": "64Mi"}}}]
    out = await kube_api.request("POST", PODS, body=pod)
    stored = await kube_api.request("GET", f"{PODS}/limited")
    for got in (out, stored):
        assert got["spec"]["containers"][0]["resources"] == {
            "limits": {"cpu": "1", "memory": "128Mi", "example.com/gpu": "1"},
            "requests": {"cpu": "250m", "memory": "128Mi", "example.com/gpu": "1"},
        }
        assert got["spec"]["initContainers"][0]["resources"] == {
            "limits": {"memory": "64Mi"},
            "requests": {"memory": "64Mi"},
        }
        assert got["spec"]["enableServiceLinks"] is True
    template = {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}
    created = await kube_api.request("POST", DEPLOYMENTS, body=deployment("limited", template))
    spec = created["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"] == {"limits": {"cpu": "1", "memory": "1Gi"}}
    assert "enableServiceLinks" not in spec and spec["dnsPolicy"] == "ClusterFirst"


async def test_the_qos_class_counts_cpu_and_memory_above_zero_by_value(kube_api: KubeApi) -> None:
    """`ComputePodQOS` on the defaulted pod: limits alone make it Guaranteed; quantities compare by value
    (`1Gi` is 1073741824 bytes); other resources and zero quantities do not count at all."""
    cases = {
        "limits-only": {"limits": {"cpu": "500m", "memory": "1Gi"}},
        "same-value-other-text": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"memory": "1073741824"}},
        "lower-request": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}},
        "no-memory-limit": {"limits": {"cpu": "1"}},
        "storage-only": {"limits": {"ephemeral-storage": "1Gi"}},
        "zero-request": {"requests": {"cpu": "0"}},
    }
    classes = {}
    for name, resources in cases.items():
        out = await kube_api.request("POST", PODS, body=pod_with_resources(name, resources))
        classes[name] = out["status"]["qosClass"]
    assert classes == {
        "limits-only": "Guaranteed",
        "same-value-other-text": "Guaranteed",
        "lower-request": "Burstable",
        "no-memory-limit": "Burstable",
        "storage-only": "BestEffort",
        "zero-request": "BestEffort",
    }


# -- DefaultTolerationSeconds ------------------------------------------------------------------------


async def test_default_tolerations_are_appended_unless_the_pod_tolerates_the_taint(kube_api: KubeApi) -> None:
    """A toleration counts for a taint when its key is the taint's or empty and its effect is NoExecute or
    empty, whatever its operator and seconds; the missing ones are appended, not-ready first."""
    cases: dict[str, tuple[list[dict[str, Any]], list[str]]] = {
        "none": ([], [NOT_READY, UNREACHABLE]),
        "another-taint": (
            [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
            [NOT_READY, UNREACHABLE],
        ),
        "not-ready-own-seconds": (
            [{"key": NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}],
            [UNREACHABLE],
        ),
        "unreachable-any-effect": ([{"key": UNREACHABLE, "operator": "Equal"}], [NOT_READY]),
        "not-ready-other-effect": (
            [{"key": NOT_READY, "operator": "Exists", "effect": "NoSchedule"}],
            [NOT_READY, UNREACHABLE],
        ),
        "any-key-no-execute": ([{"operator": "Exists", "effect": "NoExecute"}], []),
        "everything": ([{"operator": "Exists"}], []),
    }
    got, wanted = {}, {}
    for name, (own, added) in cases.items():
        out = await kube_api.request("POST", PODS, body=pod_with_tolerations(name, own))
        got[name] = out["spec"].get("tolerations")
        wanted[name] = [*own, *map(default_toleration, added)] or None
    assert got == wanted


async def test_an_update_that_drops_the_default_tolerations_gets_them_back(kube_api: KubeApi) -> None:
    """The plugin runs on updates too, after the list was replaced: what it added before is appended again,
    so the update only adds tolerations."""
    own = {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    await kube_api.request("POST", PODS, body=pod_with_tolerations("p", [own]))
    pod = await kube_api.request("GET", f"{PODS}/p")
    pod["spec"]["tolerations"] = [own]
    updated = await kube_api.request("PUT", f"{PODS}/p", body=pod)
    assert updated["spec"]["tolerations"] == [own, default_toleration(NOT_READY), default_toleration(UNREACHABLE)]
    added = {"key": "spot", "operator": "Exists", "effect": "NoSchedule"}
    patched = await kube_api.request(
        "PATCH",
        f"{PODS}/p",
        body={"spec": {"tolerations": [own, added]}},
        content_type="application/merge-patch+json",
    )
    assert patched["spec"]["tolerations"] == [
        own,
        added,
        default_toleration(NOT_READY),
        default_toleration(UNREACHABLE),
    ]


async def test_an_update_may_change_a_tolerations_seconds_and_nothing_else_of_it(kube_api: KubeApi) -> None:
    """`validateOnlyAddedTolerations`: an old toleration must still be there, equal but for its seconds
    (raised, lowered or dropped). A changed one is one Forbidden cause for the list, before the check of the
    rest of the spec; a new one is validated twice (with the spec, then with the update), so its problem is
    two causes and one line of the message."""
    own = {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
    await kube_api.request("POST", PODS, body=pod_with_tolerations("p", [own]))
    pod = await kube_api.request("GET", f"{PODS}/p")
    pod["spec"]["tolerations"][0]["tolerationSeconds"] = 30
    updated = await kube_api.request("PUT", f"{PODS}/p", body=pod)
    assert updated["spec"]["tolerations"][0] == {**own, "tolerationSeconds": 30}
    del updated["spec"]["tolerations"][1]["tolerationSeconds"]
    updated["spec"]["tolerations"][2]["tolerationSeconds"] = 600
    updated = await kube_api.request("PUT", f"{PODS}/p", body=updated)
    assert updated["spec"]["tolerations"] == [
        {**own, "tolerationSeconds": 30},
        {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute"},
        {**default_toleration(UNREACHABLE), "tolerationSeconds": 600},
    ]

    changed = copy.deepcopy(updated)
    changed["spec"]["tolerations"][0]["effect"] = "NoSchedule"
    del changed["spec"]["tolerations"][0]["tolerationSeconds"]
    err = await error_of(kube_api.request("PUT", f"{PODS}/p", body=changed))
    assert err.status == 422
    assert [(c["field"], c["message"]) for c in err.body["details"]["causes"]] == [
        ("spec.tolerations", CHANGED_TOLERATION)
    ]
    changed["spec"]["hostname"] = "renamed"
    err = await error_of(kube_api.request("PUT", f"{PODS}/p", body=changed))
    assert [c["field"] for c in err.body["details"]["causes"]] == ["spec.tolerations", "spec"]

    invalid = copy.deepcopy(updated)
    invalid["spec"]["tolerations"].append({"key": "x", "operator": "Exists", "value": "v"})
    err = await error_of(kube_api.request("PUT", f"{PODS}/p", body=invalid))
    problem = "Invalid value: \"v\": value must be empty when `operator` is 'Exists'"
    assert [(c["field"], c["message"]) for c in err.body["details"]["causes"]] == [
        ("spec.tolerations[3].operator", problem),
        ("spec.tolerations[3].operator", problem),
    ]
    assert err.body["message"] == f'Pod "p" is invalid: spec.tolerations[3].operator: {problem}'
