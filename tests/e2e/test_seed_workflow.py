"""The seed workflow, verbatim, against a one-machine cluster: a revision installed with the real helm,
namespaces moved to it with the real kubectl, and pods that come back `2/2` with a live sidecar.

Everything here is real except the cluster itself (tests/kubesim): helm v4 installs the chart with
server-side apply, the API server calls meshplane's injection webhook in the istiod pod over HTTPS,
the ReplicaSet controller creates pods through admission, and the kubelet runs `meshplane serve`,
`meshplane iptables`, `meshplane agent` with Envoy, and stand-in apps in network namespaces.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import AsyncIterator

import pytest
import yaml

from tests.charts.rbac import compare, rules_by_subject
from tests.e2e.workflow import CHART, all_meshed, cluster_kubectl, helm, install_revision, meshplane, pods, table
from tests.kubesim.cluster import Cluster
from tests.kubesim.fixtures import Kubectl, eventually
from tests.kubesim.podnet import exec_in

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and iptables")

REVISION = "asm-1233-2"
SEED_TIMEOUT = 240.0

APPS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: example.com/shop/web:1.0
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: client, namespace: legacy}
spec:
  replicas: 2
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - name: client
        image: example.com/legacy/client:1.0
        ports: [{name: http, containerPort: 8080}]
"""


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    async with Cluster(state_dir=tmp_path / "cluster") as running:
        yield running


@pytest.fixture
def kubectl(cluster: Cluster, tmp_path: pathlib.Path) -> Kubectl:
    return cluster_kubectl(cluster, tmp_path, timeout=SEED_TIMEOUT)


@pytest.mark.timeout(300)  # a cluster, a helm install and two rounds of pods with sidecars
async def test_seed_commands_move_namespaces_to_a_revision(cluster: Cluster, kubectl: Kubectl) -> None:
    await install_revision(cluster, kubectl, REVISION)
    await kubectl.apply(APPS)
    await kubectl.run("-n", "shop", "rollout", "status", "deployment/web", "--timeout=120s")

    # The seed, command by command. The revision is read from the first command's output.
    shown = await kubectl.run("-n", "istio-system", "get", "pods", "-l", "app=istiod", "--show-labels")
    labels = table(shown.stdout)[0]["LABELS"]
    revision = dict(kv.split("=", 1) for kv in labels.split(","))["istio.io/rev"]
    assert revision == REVISION
    for namespace in ("shop", "legacy"):
        await kubectl.run(
            "label", "namespace", namespace, "istio-injection-", f"istio.io/rev={revision}", "--overwrite"
        )
    await kubectl.run("rollout", "restart", "deployment", "-n", "shop")
    await kubectl.run("delete", "pod", "-n", "legacy", "--all")
    for namespace in ("shop", "legacy"):
        await eventually(
            lambda ns=namespace: all_meshed(kubectl, ns, revision, 2),
            within=SEED_TIMEOUT,
            interval=1.0,
            what=f"every pod of {namespace} 2/2 Running with the {revision} sidecar",
        )

    # Each sidecar is SYNCED with that revision's istiod.
    (istiod,) = await pods(kubectl, "istio-system")
    _, out = await meshplane(cluster, "proxy-status", "--http-addr", f"{istiod['status']['podIP']}:8080")
    rows = table(out)
    for namespace in ("shop", "legacy"):
        for pod in await pods(kubectl, namespace):
            name = f"{pod['metadata']['name']}.{namespace}"
            row = next(r for r in rows if r["NAME"] == name)
            assert all(row[t] == "SYNCED" for t in ("CDS", "LDS", "EDS", "RDS")), row

    # A meshed client pod calls the Service by name; the server sees the caller's identity over mTLS.
    (client, *_) = await pods(kubectl, "legacy")
    assert cluster.kubelet is not None
    netns = cluster.kubelet.netns("legacy", client["metadata"]["name"])
    body = await exec_in(netns, ["curl", "-sf", "--max-time", "10", "http://web.shop.svc.cluster.local/"])
    headers = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    xfcc = headers["x-forwarded-client-cert"]
    assert "URI=spiffe://cluster.local/ns/legacy/sa/default" in xfcc
    assert "By=spiffe://cluster.local/ns/shop/sa/default" in xfcc

    # Least privilege: every API call istiod made was granted by the chart, and every grant was used.
    rendered = await helm(
        cluster, "template", f"istiod-{REVISION}", str(CHART), "-n", "istio-system", "--set", f"revision={REVISION}"
    )
    assert cluster.sim is not None
    missing, unused = compare(rules_by_subject(d for d in yaml.safe_load_all(rendered) if d), cluster.sim.audit)
    assert (missing, unused) == ([], [])


LATE = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: late, namespace: outage}
spec:
  replicas: 2
  selector: {matchLabels: {app: late}}
  template:
    metadata: {labels: {app: late}}
    spec:
      containers:
      - name: late
        image: example.com/outage/late:1.0
        ports: [{name: http, containerPort: 8080}]
"""


async def replica_failure(kubectl: Kubectl, namespace: str) -> str:
    """The ReplicaFailure message of the namespace's ReplicaSet, or "" while there is none."""
    for rs in (await kubectl.json("get", "replicasets", "-n", namespace))["items"]:
        for condition in rs.get("status", {}).get("conditions") or []:
            if condition["type"] == "ReplicaFailure" and condition["status"] == "True":
                return str(condition.get("message", ""))
    return ""


@pytest.mark.timeout(300)
async def test_both_labels_warn_and_an_injector_outage_creates_no_pod_without_a_sidecar(
    cluster: Cluster, kubectl: Kubectl
) -> None:
    await install_revision(cluster, kubectl, REVISION)
    await install_revision(cluster, kubectl, "default")

    # Both injection labels: kubectl prints the webhook's warning, and the default revision injects.
    await kubectl.run("create", "namespace", "both")
    await kubectl.run("label", "namespace", "both", "istio-injection=enabled", f"istio.io/rev={REVISION}")
    created = await kubectl.run("run", "probe", "-n", "both", "--image=example.com/both/probe:1.0", "--port=8080")
    assert "Warning: namespace 'both' has both istio-injection=enabled and istio.io/rev=asm-1233-2" in created.stderr
    await eventually(
        lambda: all_meshed(kubectl, "both", "default", 1), within=SEED_TIMEOUT, interval=1.0, what="probe 2/2"
    )

    # The injector down with failurePolicy Fail: the ReplicaSet's creates are refused, and retried.
    await kubectl.run("create", "namespace", "outage")
    await kubectl.run("label", "namespace", "outage", f"istio.io/rev={REVISION}")
    release = f"istiod-{REVISION}"
    await kubectl.run("-n", "istio-system", "scale", f"deployment/{release}", "--replicas=0")
    await eventually(
        lambda: _no_pods(kubectl, "istio-system", f"istio.io/rev={REVISION}"),
        within=60,
        interval=0.5,
        what=f"{release}'s pod gone",
    )
    await kubectl.apply(LATE)
    message = await eventually(
        lambda: replica_failure(kubectl, "outage"), within=60, interval=0.5, what="ReplicaFailure"
    )
    assert 'failed calling webhook "rev.namespace.sidecar-injector.istio.io"' in message
    assert await pods(kubectl, "outage") == []

    await kubectl.run("-n", "istio-system", "scale", f"deployment/{release}", "--replicas=1")
    await kubectl.run("-n", "istio-system", "rollout", "status", f"deployment/{release}", "--timeout=180s")
    await eventually(
        lambda: all_meshed(kubectl, "outage", REVISION, 2),
        within=SEED_TIMEOUT,
        interval=1.0,
        what="every pod of outage 2/2 once the injector is back",
    )
    for pod in await pods(kubectl, "outage"):
        assert "istio-proxy" in {c["name"] for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]}


async def _no_pods(kubectl: Kubectl, namespace: str, selector: str) -> bool:
    return not (await kubectl.json("get", "pods", "-n", namespace, "-l", selector))["items"]
