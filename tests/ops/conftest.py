"""Fixtures of the operator-command tests: charts/istiod rendered with the real helm, and kubesim."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest
import yaml

from controlplane.ops.cluster import ClusterState
from tests.charts.helm import render
from tests.helpers.processes import run_process
from tests.kubesim.fixtures import Kubectl, kube_api_fixture, kubeconfig_fixture, kubectl_fixture, kubesim_fixture

__all__ = ["kube_api_fixture", "kubeconfig_fixture", "kubectl_fixture", "kubesim_fixture"]

GOLDEN = pathlib.Path(__file__).parent / "golden" / "analyze"
MESHPLANE = pathlib.Path(sys.executable).parent / "meshplane"
R1 = "asm-1233-2"
R2 = "asm-1234-1"

Obj = dict[str, Any]
Render = Callable[[Mapping[str, Any]], list[Obj]]


@pytest.fixture(name="chart", scope="session")
def chart_fixture() -> Iterator[Render]:
    """Render charts/istiod for a dict of values (`--set-json` each); results are cached per values.

    helm's home is a private temporary directory (not pytest's numbered ones, which another
    concurrent pytest run may prune), removed at the end.
    """
    home = pathlib.Path(tempfile.mkdtemp(prefix="ops-helm-"))
    cache: dict[str, list[Obj]] = {}

    def rendered(values: Mapping[str, Any]) -> list[Obj]:
        key = json.dumps(values, sort_keys=True)
        if key not in cache:
            args = [arg for k, v in values.items() for arg in ("--set-json", f"{k}={json.dumps(v)}")]
            release = f"istiod-{values['revision']}" if values.get("revision") else "istiod"
            cache[key] = list(render(home, *args, release=release).values())
        return cache[key]

    try:
        yield rendered
    finally:
        shutil.rmtree(home, ignore_errors=True)


def load_case(chart: Render, case: str) -> ClusterState:
    docs = [d for d in yaml.safe_load_all((GOLDEN / f"{case}.yaml").read_text()) if d]
    header, objects = docs[0], docs[1:]
    assert header["kind"] == "Charts", f"{case}: the first document must be kind: Charts"
    dropped = set(header.get("drop", []))
    for values in header["releases"]:
        objects += [o for o in chart(values) if f"{o['kind']}/{o['metadata']['name']}" not in dropped]
    return ClusterState.from_objects(objects, scope=header.get("scope"))


async def meshplane(*args: str, kubeconfig: pathlib.Path | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    with tempfile.TemporaryDirectory(prefix="meshplane-home-") as home:  # no ~/.kube/config of the machine's
        env["HOME"] = home
        return await run_process(str(MESHPLANE), *args, env=env)


def stale_pod(name: str, owner: Obj) -> Obj:
    """A pod of `owner` still running R1's sidecar in shop, which `install_canary` moves to R2."""
    return _pod(name, revision=R1, owner=owner)


def _pod(name: str, *, revision: str | None, owner: Obj | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "labels": {"app": name.split("-", maxsplit=1)[0]}}
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app:1"}]}
    if revision is not None:
        status = {"initContainers": ["istio-init"], "containers": ["istio-proxy"], "volumes": [], "revision": revision}
        meta["annotations"] = {"sidecar.istio.io/status": json.dumps(status), "istio.io/rev": revision}
        spec["containers"].append({"name": "istio-proxy", "image": "docker.io/meshplane/proxyv2:0.1.0"})
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "controller": True, **owner}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


async def install_canary(kubectl: Kubectl, chart: Render, *, more: Callable[[], Awaitable[None]] | None = None) -> None:
    """Two revisions' webhooks and ConfigMaps, namespace shop moved to R2, pods still on R1.

    Pods and owners are created before the webhook configurations: kubesim would otherwise call
    the (absent) injectors for them. `more` creates a test's own, at that point.
    """
    await kubectl.run("create", "namespace", "istio-system")
    await kubectl.run("create", "namespace", "shop")
    await kubectl.run("label", "namespace", "shop", f"istio.io/rev={R2}")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "a"}]},
            },
        },
    }
    await kubectl.apply(json.dumps(deployment))
    uid = (await kubectl.json("get", "deployment", "web", "-n", "shop"))["metadata"]["uid"]
    rs = {**deployment, "kind": "ReplicaSet", "metadata": {"name": "web-6d5f", "namespace": "shop"}}
    rs["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": uid, "controller": True}
    ]
    await kubectl.apply(json.dumps(rs))
    rs_uid = (await kubectl.json("get", "replicaset", "web-6d5f", "-n", "shop"))["metadata"]["uid"]
    owner = {"kind": "ReplicaSet", "name": "web-6d5f", "uid": rs_uid}
    for pod in (_pod("web-6d5f-a", revision=R1, owner=owner), _pod("web-6d5f-b", revision=R2, owner=owner)):
        await kubectl.apply(json.dumps(pod))
    await kubectl.apply(json.dumps(_pod("debug", revision=R1)))
    if more is not None:
        await more()
    rendered = chart({"revision": R1, "revisionTags": ["default"]}) + chart({"revision": R2})
    wanted = [o for o in rendered if o["kind"] in ("MutatingWebhookConfiguration", "ConfigMap", "Service")]
    await kubectl.apply(yaml.safe_dump_all(wanted))
