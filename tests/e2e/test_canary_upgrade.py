"""A canary upgrade and a rollback, end to end on a one-machine cluster, with traffic flowing throughout.

Revision `asm-1233-2` serves namespace `shop` (a Deployment, a StatefulSet and a bare pod, pods 2/2 with
live sidecars); `asm-1234-1` is installed beside it with the real helm; the namespace is relabelled with
the real kubectl; `meshplane analyze` says which workloads to restart and how, and the test runs
those commands verbatim. Every pod comes back 2/2, injected by and SYNCED to the new revision; the
`default` tag moves and the old release is uninstalled. The rollback does the same back to the old
revision before uninstalling the canary. Throughout, a client loop sends requests from the meshed
pods of each workload to the other's Service (from inside the pod's network namespace, so through
its sidecar and mTLS); not one may fail, and no pod creation may be refused by admission.

The workloads carry a `preStop` sleep, as zero-downtime rollouts on any Kubernetes need: the
kubelet signals a deleted pod's app at the moment its endpoint starts to leave the callers'
configuration (EndpointSlice, then the control plane's EDS push), and an app that stops accepting at
once makes its own sidecar answer the requests still routed to it with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.workflow import all_meshed, cluster_kubectl, helm, install_revision, meshplane, pods, table
from tests.kubesim.cluster import Cluster
from tests.kubesim.fixtures import Kubectl, eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and iptables")

OLD, NEW = "asm-1233-2", "asm-1234-1"
NAMESPACE = "shop"
TIMEOUT = 240.0

APPS = """
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
        lifecycle: {preStop: {sleep: {seconds: 3}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: example.com/shop/db:1.0
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1}
        lifecycle: {preStop: {sleep: {seconds: 3}}}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: tools, namespace: shop, labels: {app: tools}}
spec:
  containers:
  - name: tools
    image: example.com/shop/web:1.0
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1}
"""
WORKLOADS = {("Deployment", "web"), ("StatefulSet", "db"), ("Pod", "tools")}  # a bare pod too
PODS = 5
ROUTES = (("web", "db"), ("db", "web"))  # (caller's app label, callee Service)


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    async with Cluster(state_dir=tmp_path / "cluster") as running:
        yield running


@pytest.fixture
def kubectl(cluster: Cluster, tmp_path: pathlib.Path) -> Kubectl:
    return cluster_kubectl(cluster, tmp_path, timeout=TIMEOUT)


@dataclass
class Traffic:
    """Requests between the workloads, each from a running, ready, not-terminating pod of the caller."""

    cluster: Cluster
    ok: int = 0
    failures: list[str] = field(default_factory=list)

    def _caller(self, app: str, turn: int) -> tuple[str, str] | None:
        assert self.cluster.kubelet is not None
        ready = []
        for worker in list(self.cluster.kubelet.workers.values()):
            pod = worker.pod
            meta, status = pod["metadata"], pod.get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
            if meta["namespace"] != NAMESPACE or (meta.get("labels") or {}).get("app") != app:
                continue
            if worker.stopping or meta.get("deletionTimestamp") or conditions.get("Ready") != "True":
                continue
            ready.append((str(meta["name"]), worker.sandbox.netns))
        return sorted(ready)[turn % len(ready)] if ready else None

    async def run(self) -> None:
        turn = 0
        while True:
            for app, service in ROUTES:
                caller = self._caller(app, turn)
                if caller is None:
                    self.failures.append(f"no ready {app} pod to call {service} from")
                    continue
                name, netns = caller
                url = f"http://{service}.{NAMESPACE}.svc.cluster.local/"
                proc = await asyncio.create_subprocess_exec(
                    "ip",
                    "netns",
                    "exec",
                    netns,
                    "curl",
                    "-sS",
                    "-D",
                    "-",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "10",
                    url,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await proc.communicate()
                code = out.decode().rsplit("\n", 1)[-1]
                if proc.returncode == 0 and code == "200":
                    self.ok += 1
                else:  # the response headers tell which proxy answered (x-envoy-upstream-service-time: the callee's)
                    when = asyncio.get_running_loop().time()
                    self.failures.append(
                        f"{when:.1f} {name} -> {url}: exit {proc.returncode}, {out.decode()!r} {err.decode()}"
                    )
            turn += 1
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def traffic(cluster: Cluster) -> AsyncIterator[Traffic]:
    loop = Traffic(cluster)
    task = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def restart_advice(cluster: Cluster) -> dict[tuple[str, str], str]:
    """`meshplane analyze -n shop -o json`: (kind, name) -> command, for its RestartNeeded messages only."""
    code, out = await meshplane(cluster, "analyze", "-n", NAMESPACE, "-o", "json")
    messages = json.loads(out)
    assert code == 0 and all(m["code"] == "MP0003" for m in messages), messages
    advice = {}
    for message in messages:
        kind, _, name = message["origin"].partition(" ")
        advice[(kind, name.split("/", 1)[1])] = message["command"]
    return advice


async def move_namespace(cluster: Cluster, kubectl: Kubectl, *, to: str, load: Traffic) -> None:
    """Relabel, restart what analyze names (its commands verbatim), and check every pod is on `to`."""
    await kubectl.run("label", "namespace", NAMESPACE, f"istio.io/rev={to}", "--overwrite")
    advice = await restart_advice(cluster)
    assert set(advice) == WORKLOADS, advice
    assert advice[("Deployment", "web")] == f"kubectl rollout restart deployment/web -n {NAMESPACE}"
    assert advice[("StatefulSet", "db")] == f"kubectl rollout restart statefulset/db -n {NAMESPACE}"
    assert advice[("Pod", "tools")] == f"kubectl get pod tools -n {NAMESPACE} -o yaml | kubectl replace --force -f -"
    for command in advice.values():
        output = None
        for step in command.split(" | "):  # a pipe feeds one kubectl's output to the next
            argv = shlex.split(step)
            assert argv[0] == "kubectl"
            output = (await kubectl.run(*argv[1:], stdin=output)).stdout
    await kubectl.run("-n", NAMESPACE, "rollout", "status", "deployment/web", "--timeout=200s")
    await kubectl.run("-n", NAMESPACE, "rollout", "status", "statefulset/db", "--timeout=200s")
    await eventually(
        lambda: all_meshed(kubectl, NAMESPACE, to, PODS), within=TIMEOUT, interval=1.0, what=f"{PODS} pods 2/2 on {to}"
    )
    await synced_to(cluster, kubectl, to)
    assert await restart_advice(cluster) == {}
    assert not load.failures, load.failures


async def synced_to(cluster: Cluster, kubectl: Kubectl, revision: str) -> None:
    """Every pod of the namespace shows SYNCED for CDS, LDS, EDS and RDS in `revision`'s proxy-status."""
    (istiod,) = [
        p for p in await pods(kubectl, "istio-system") if p["metadata"]["labels"].get("istio.io/rev") == revision
    ]
    names = {f"{p['metadata']['name']}.{NAMESPACE}" for p in await pods(kubectl, NAMESPACE)}

    async def all_synced() -> bool:
        _, out = await meshplane(cluster, "proxy-status", "--http-addr", f"{istiod['status']['podIP']}:8080")
        rows = {r["NAME"]: r for r in table(out) if r.get("NAME") in names}
        return set(rows) == names and all(r[t] == "SYNCED" for r in rows.values() for t in ("CDS", "LDS", "EDS", "RDS"))

    await eventually(all_synced, within=60, interval=1.0, what=f"every {NAMESPACE} proxy SYNCED to {revision}")


async def connected_from_their_own_ips(cluster: Cluster, kubectl: Kubectl, revision: str) -> None:
    """`revision`'s proxy-status shows each pod's xDS connection coming from that pod's own IP, as on a real
    cluster, where kube-proxy keeps a pod's address (the control plane's per-client limits count by it)."""
    (istiod,) = [
        p for p in await pods(kubectl, "istio-system") if p["metadata"]["labels"].get("istio.io/rev") == revision
    ]
    debug = f"{istiod['status']['podIP']}:8080"
    for pod in await pods(kubectl, NAMESPACE):
        name, ip = f"{pod['metadata']['name']}.{NAMESPACE}", pod["status"]["podIP"]
        _, out = await meshplane(cluster, "proxy-status", "--http-addr", debug, name)
        assert f" from ipv4:{ip}:" in out, out


def refused_creates(cluster: Cluster) -> list[Any]:
    assert cluster.controllers is not None
    return [e for e in cluster.controllers.events if e.reason == "FailedCreate"]


async def serve_on_old(cluster: Cluster, kubectl: Kubectl) -> None:
    await install_revision(cluster, kubectl, OLD)
    await kubectl.run("create", "namespace", NAMESPACE)
    await kubectl.run("label", "namespace", NAMESPACE, f"istio.io/rev={OLD}")
    await kubectl.apply(APPS)
    await eventually(
        lambda: all_meshed(kubectl, NAMESPACE, OLD, PODS),
        within=TIMEOUT,
        interval=1.0,
        what=f"{PODS} pods 2/2 on {OLD}",
    )


async def flowing(load: Traffic, more: int) -> None:
    target = load.ok + more
    await eventually(lambda: load.ok >= target or load.failures, within=60, interval=0.2, what=f"{more} requests")
    assert not load.failures, load.failures


async def uninstall(cluster: Cluster, kubectl: Kubectl, revision: str) -> None:
    """Check that removing `revision` breaks nothing (`analyze --without-revision`), then remove it."""
    code, out = await meshplane(cluster, "analyze", "-A", "--without-revision", revision, "-o", "json")
    assert code == 0, out
    await helm(cluster, "uninstall", f"istiod-{revision}", "-n", "istio-system", "--wait", "--timeout=120s")

    async def gone() -> bool:
        istiods = [p for p in await pods(kubectl, "istio-system") if p["metadata"]["labels"].get("app") == "istiod"]
        return not [p for p in istiods if p["metadata"]["labels"].get("istio.io/rev") == revision]

    await eventually(gone, within=120, interval=0.5, what=f"istiod-{revision}'s pods gone")


@pytest.mark.timeout(360)
async def test_canary_upgrade_moves_a_namespace_without_a_failed_request(cluster: Cluster, kubectl: Kubectl) -> None:
    await serve_on_old(cluster, kubectl)
    async with traffic(cluster) as load:
        await flowing(load, 20)
        await install_revision(cluster, kubectl, NEW)
        await move_namespace(cluster, kubectl, to=NEW, load=load)
        _, said = await meshplane(cluster, "tag", "set", "default", "--revision", NEW)
        assert f'Revision tag "default" created, referencing control plane revision "{NEW}"' in said
        await uninstall(cluster, kubectl, OLD)
        await flowing(load, 20)
        await synced_to(cluster, kubectl, NEW)
        await connected_from_their_own_ips(cluster, kubectl, NEW)
    assert not load.failures and load.ok >= 40, (load.ok, load.failures)
    assert refused_creates(cluster) == []
    _, out = await meshplane(cluster, "analyze", "-n", NAMESPACE, "-o", "json")
    assert json.loads(out) == []


@pytest.mark.timeout(420)
async def test_rollback_returns_a_namespace_without_a_failed_request(cluster: Cluster, kubectl: Kubectl) -> None:
    await serve_on_old(cluster, kubectl)
    async with traffic(cluster) as load:
        await flowing(load, 20)
        await install_revision(cluster, kubectl, NEW)
        await move_namespace(cluster, kubectl, to=NEW, load=load)
        await move_namespace(cluster, kubectl, to=OLD, load=load)
        _, said = await meshplane(cluster, "tag", "set", "default", "--revision", OLD)
        assert f'Revision tag "default" created, referencing control plane revision "{OLD}"' in said
        await uninstall(cluster, kubectl, NEW)
        await flowing(load, 20)
        await synced_to(cluster, kubectl, OLD)
    assert not load.failures and load.ok >= 40, (load.ok, load.failures)
    assert refused_creates(cluster) == []
    _, out = await meshplane(cluster, "analyze", "-n", NAMESPACE, "-o", "json")
    assert json.loads(out) == []
