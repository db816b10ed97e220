"""helm install, upgrade and uninstall of charts/istiod leave exactly the objects the values ask for.

The real helm (server-side apply, its default) against an in-process kubesim running the controllers
(Deployment -> ReplicaSet -> Pods, EndpointSlices, garbage collection; no kubelet: the pods stay
Pending). After every step the test lists every kind the API server serves (discovery, as
`kubectl api-resources --verbs=list`), so an object left behind by an upgrade or an uninstall shows
up whatever its kind.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Awaitable

from tests.charts.helm import CHART, REV, helm, requires_helm
from tests.kubesim.controllers import Controllers
from tests.kubesim.fixtures import (  # noqa: F401
    Kubectl,
    controllers_fixture,
    eventually,
    kubeconfig_fixture,
    kubectl_fixture,
    kubesim_fixture,
)

pytestmark = requires_helm

Key = tuple[str, str, str]  # kind, namespace ("" for cluster-scoped), name
HELM_RELEASES = "Secret"  # helm keeps each release revision in a Secret sh.helm.release.v1.<release>.v<n>


async def everything(kubectl: Kubectl) -> set[Key]:
    """Every object of every listable kind, in every namespace (helm's release records left out)."""
    kinds = (await kubectl.run("api-resources", "--verbs=list", "-o", "name")).stdout.split()
    listed = json.loads((await kubectl.run("get", ",".join(kinds), "-A", "-o", "json")).stdout)
    return {
        (item["kind"], item["metadata"].get("namespace", ""), item["metadata"]["name"])
        for item in listed["items"]
        if not (item["kind"] == HELM_RELEASES and item["metadata"]["name"].startswith("sh.helm.release."))
    }


class Release:
    """One helm release of the chart in istio-system (helm runs in a thread: kubesim shares this loop)."""

    def __init__(self, *, name: str, revision: str, kubeconfig: pathlib.Path, home: pathlib.Path) -> None:
        self.name, self.revision, self.kubeconfig, self.home = name, revision, kubeconfig, home

    async def helm(self, command: str, *values: str) -> None:
        args = [command, self.name]
        if command != "uninstall":
            args += [str(CHART), "--set", f"revision={self.revision}", *(a for v in values for a in ("--set", v))]
        args += ["-n", "istio-system", "--kubeconfig", str(self.kubeconfig), "--wait=false"]
        if command == "uninstall":
            args.remove("--wait=false")
        await asyncio.to_thread(helm, self.home, *args)


MADE_BY_CONTROLLERS = ("ReplicaSet", "Pod", "EndpointSlice")


async def settled(kubectl: Kubectl, expected: set[Key], *, what: str, exact: bool = False) -> set[Key]:
    """Wait until the cluster holds exactly `expected`, leaving controller-made objects aside unless `exact`."""

    async def check() -> set[Key] | None:
        now = await everything(kubectl)
        made = set() if exact else {key for key in now if key[0] in MADE_BY_CONTROLLERS}
        return now if now - made == expected - made else None

    result: set[Key] = await eventually(check, within=30, what=what)
    return result


async def tag_slices(kubectl: Kubectl) -> set[Key]:
    return {key for key in await everything(kubectl) if key[0] == "EndpointSlice" and "revision-tag" in key[2]}


async def not_(pending: Awaitable[set[Key]]) -> bool:
    return not await pending


async def stable_settled(kubectl: Kubectl) -> set[Key] | None:
    """Everything, once the default revision's ReplicaSet, Pod and EndpointSlice exist."""
    now = await everything(kubectl)
    made = {kind for kind, _, name in now if kind in MADE_BY_CONTROLLERS and name.startswith("istiod")}
    return now if made == set(MADE_BY_CONTROLLERS) else None


def kinds(objects: set[Key]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for kind, _, name in objects:
        out.setdefault(kind, set()).add(name)
    return out


async def test_upgrades_between_values_and_uninstall_leave_no_orphans(
    controllers: Controllers, kubectl: Kubectl, kubeconfig: pathlib.Path, helm_home: pathlib.Path
) -> None:
    await kubectl.run("create", "namespace", "istio-system")
    # The revision in use stays installed beside the canary: nothing of it may change or go.
    stable = Release(name="istiod", revision="default", kubeconfig=kubeconfig, home=helm_home)
    await stable.helm("install")
    before = await eventually(lambda: stable_settled(kubectl), what="the default revision's pods and slices")
    canary = Release(name=f"istiod-{REV}", revision=REV, kubeconfig=kubeconfig, home=helm_home)

    await canary.helm("install")
    installed = await everything(kubectl)
    plain = {key for key in installed - before if key[0] not in MADE_BY_CONTROLLERS}
    assert kinds(plain) == {
        "Deployment": {f"istiod-{REV}"},
        "Service": {f"istiod-{REV}"},
        "ServiceAccount": {f"istiod-{REV}"},
        "ConfigMap": {f"istio-{REV}", f"istio-sidecar-injector-{REV}"},
        "MutatingWebhookConfiguration": {f"istio-sidecar-injector-{REV}"},
        "ClusterRole": {f"istiod-clusterrole-{REV}-istio-system"},
        "ClusterRoleBinding": {f"istiod-clusterrole-{REV}-istio-system"},
        "Role": {f"istiod-{REV}"},
        "RoleBinding": {f"istiod-{REV}"},
    }

    # A tag and autoscaling: the tag's webhook configuration and Service, an autoscaler and a budget.
    await canary.helm("upgrade", "revisionTags={prod}", "pilot.autoscaleEnabled=true", "pilot.autoscaleMin=2")
    added = {
        ("MutatingWebhookConfiguration", "", "istio-revision-tag-prod"),
        ("Service", "istio-system", "istiod-revision-tag-prod"),
        ("HorizontalPodAutoscaler", "istio-system", f"istiod-{REV}"),
        ("PodDisruptionBudget", "istio-system", f"istiod-{REV}"),
    }
    await settled(kubectl, before | plain | added, what="the tag and autoscaling objects")
    await eventually(lambda: tag_slices(kubectl), what="the tag Service's EndpointSlice")
    deployment = await kubectl.json("get", "deployment", f"istiod-{REV}", "-n", "istio-system", "--show-managed-fields")
    owners = [entry["manager"] for entry in deployment["metadata"]["managedFields"]
              if "f:replicas" in json.dumps(entry.get("fieldsV1", {}).get("f:spec", {}))]  # fmt: skip
    assert "helm" not in owners, "with autoscaling the chart leaves the replica count to the autoscaler"

    # Back to the defaults: what the upgrade added is gone again, the tag Service's EndpointSlices too.
    await canary.helm("upgrade")
    await settled(kubectl, before | plain, what="the tag and autoscaling objects removed")
    await eventually(lambda: not_(tag_slices(kubectl)), what="no EndpointSlice of the tag Service")

    await canary.helm("uninstall")
    after = await settled(kubectl, before, what="nothing of the canary left, pods and ReplicaSets included", exact=True)
    assert after == before  # the default revision's objects untouched
