"""kubesim's kubelet runs pods for real: seen through `kubectl get pods` and from inside the pod's namespace."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from controlplane.kube.client import KubeApi
from tests.kubesim.fixtures import Kubectl, eventually
from tests.kubesim.kl_worker import PodWorker
from tests.kubesim.kubelet import Kubelet
from tests.kubesim.podnet import NodeNetwork, exec_in, run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces, veths and mounts")


@dataclass(frozen=True)
class Node:
    kubelet: Kubelet
    network: NodeNetwork
    kubectl: Kubectl
    api: KubeApi
    namespace: str

    def worker(self, name: str) -> PodWorker:
        found = [w for w in self.kubelet.workers.values() if w.pod["metadata"]["name"] == name]
        assert found, f"the kubelet runs no pod {name}"
        return found[0]

    def volume(self, pod: str, volume: str) -> pathlib.Path:
        worker = self.worker(pod)
        assert worker.volumes is not None
        return worker.volumes.path(volume)

    async def volume_set_up(self, pod: str, volume: str) -> pathlib.Path:
        """The volume's directory once the kubelet has made it: a pod's status (Init:0/2, say) can show before
        its volumes are set up, as with a real kubelet."""

        def made() -> pathlib.Path | None:
            volumes = self.worker(pod).volumes
            return volumes.path(volume) if volumes is not None and volumes.path(volume).is_dir() else None

        path: pathlib.Path = await eventually(made, within=30, interval=0.1, what=f"{pod}'s volume {volume}")
        return path

    async def apply(self, pod: dict[str, Any]) -> None:
        pod.setdefault("apiVersion", "v1")
        pod.setdefault("kind", "Pod")
        pod.setdefault("metadata", {})["namespace"] = self.namespace
        await self.kubectl.apply(yaml.safe_dump(pod))

    async def service(self, name: str, port: int) -> str:
        """Create a ClusterIP Service; its clusterIP."""
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": self.namespace},
               "spec": {"ports": [{"port": port}], "selector": {"app": name}}}  # fmt: skip
        await self.kubectl.apply(yaml.safe_dump(svc))
        found = await self.kubectl.json("get", "service", name, "-n", self.namespace)
        return str(found["spec"]["clusterIP"])

    async def row(self, name: str) -> list[str]:
        """NAME READY STATUS RESTARTS... as `kubectl get pod` prints them ([] when the pod is gone)."""
        out = await self.kubectl.run("get", "pod", name, "-n", self.namespace, "--no-headers", check=False)
        return out.stdout.split() if out.returncode == 0 else []

    async def shows(self, name: str, ready: str, status: str) -> list[str]:
        async def check() -> list[str] | None:
            row = await self.row(name)
            return row if row[1:3] == [ready, status] else None

        result: list[str] = await eventually(check, within=30, interval=0.2, what=f"{name} {ready} {status}")
        return result

    async def pod(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.kubectl.json("get", "pod", name, "-n", self.namespace)
        return result


@pytest.fixture
async def node(kubeconfig: pathlib.Path, kubectl: Kubectl, kube_api: KubeApi) -> AsyncIterator[Node]:
    network = await NodeNetwork.create()
    kubelet = Kubelet(kubeconfig=kubeconfig, network=network, restart_backoff=(1.0, 2.0), sync_period=1.0)
    try:
        namespace = f"kl-{secrets.token_hex(3)}"
        await kubectl.run("create", "namespace", namespace)
        # kube-controller-manager's root CA publisher: the service-account volume needs it
        await kubectl.run("create", "configmap", "kube-root-ca.crt", "-n", namespace, "--from-literal=ca.crt=test-ca")
        await kubelet.start()
        yield Node(kubelet, network, kubectl, kube_api, namespace)
    finally:
        try:
            await kubelet.stop()
        finally:
            await network.close()


def _container(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "example.com/app:1", **fields}


def _sh(script: str) -> list[str]:
    return ["sh", "-c", script]


async def test_http_readiness_probe_makes_the_standin_ready_and_services_resolve_in_the_pod(node: Node) -> None:
    svc_ip = await node.service("web", 80)
    probe = {"periodSeconds": 1, "timeoutSeconds": 2}
    await node.apply({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [_container(
            "web",
            ports=[{"name": "http", "containerPort": 8080}, {"name": "grpc-health", "containerPort": 9090}],
            startupProbe={"httpGet": {"path": "/healthz", "port": "http"}, **probe},
            readinessProbe={"grpc": {"port": 9090}, **probe},
            livenessProbe={"tcpSocket": {"port": 8080}, **probe},
        )]},
    })  # fmt: skip
    row = await node.shows("web-1", "1/1", "Running")
    assert row[3] == "0"
    pod = await node.pod("web-1")
    assert pod["spec"]["nodeName"] == "kubesim-node"
    ip = pod["status"]["podIP"]
    assert ip in [str(a) for a in node.network.cidr.hosts()]
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions == {"PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True",
                          "ContainersReady": "True", "PodScheduled": "True"}  # fmt: skip
    wide = (await node.kubectl.run("get", "pod", "web-1", "-n", node.namespace, "-o", "wide", "--no-headers")).stdout
    assert ip in wide.split() and "kubesim-node" in wide.split()
    answer = json.loads(await run("curl", "-sf", f"http://{ip}:8080/hello"))
    assert answer["path"] == "/hello" and answer["pod"] == "web-1"

    netns = node.worker("web-1").sandbox.netns
    for name in ("web", f"web.{node.namespace}", f"web.{node.namespace}.svc.cluster.local", "kubernetes.default"):
        assert (await exec_in(netns, ["getent", "hosts", name])).split()[0] in (svc_ip, "10.96.0.1")
    assert (await exec_in(netns, ["getent", "hosts", "web-1"])).split()[0] == ip  # the pod's own hostname
    later = await node.service("later", 80)

    async def resolves() -> bool:
        return later in await exec_in(netns, ["getent", "hosts", f"later.{node.namespace}.svc"], check=False)

    await eventually(resolves, what="a new Service in the pod's hosts file")


async def test_init_containers_run_in_order_before_the_app(node: Node) -> None:
    work = {"name": "work", "mountPath": "/work"}
    await node.apply({
        "metadata": {"name": "inits"},
        "spec": {
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [
                _container("first", volumeMounts=[work],
                           command=_sh("while [ ! -e /work/go ]; do sleep 0.1; done; echo first >> /work/order")),
                _container("second", command=_sh("echo second >> /work/order"), volumeMounts=[work]),
            ],
            "containers": [_container("app", command=_sh("echo app >> /work/order; exec sleep 600"),
                                      volumeMounts=[work])],
        },
    })  # fmt: skip
    await node.shows("inits", "0/1", "Init:0/2")
    assert (await node.pod("inits"))["status"]["phase"] == "Pending"
    (await node.volume_set_up("inits", "work") / "go").touch()
    await node.shows("inits", "1/1", "Running")
    assert (node.volume("inits", "work") / "order").read_text().split() == ["first", "second", "app"]
    statuses = (await node.pod("inits"))["status"]["initContainerStatuses"]
    assert [s["state"]["terminated"]["reason"] for s in statuses] == ["Completed", "Completed"]


async def test_a_failing_init_container_is_restarted_with_backoff(node: Node) -> None:
    await node.apply({
        "metadata": {"name": "badinit"},
        "spec": {"initContainers": [_container("fail", command=_sh("exit 3"))],
                 "containers": [_container("app", command=["sleep", "600"])]},
    })  # fmt: skip
    row = await node.shows("badinit", "0/1", "Init:CrashLoopBackOff")
    assert int(row[3]) >= 1
    status = (await node.pod("badinit"))["status"]["initContainerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"


async def test_native_sidecar_is_started_before_the_next_init_container_and_counts_in_ready(node: Node) -> None:
    probe = {"httpGet": {"path": "/", "port": 15021}, "periodSeconds": 1}
    await node.apply({
        "metadata": {"name": "meshed"},
        "spec": {
            "initContainers": [
                _container("proxy", restartPolicy="Always", ports=[{"containerPort": 15021}],
                           startupProbe=probe, readinessProbe=probe),
                _container("needs-proxy", command=["curl", "-sf", "http://127.0.0.1:15021/"]),
            ],
            "containers": [_container("app", ports=[{"containerPort": 8080}],
                                      readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})],
        },
    })  # fmt: skip
    await node.shows("meshed", "2/2", "Running")
    statuses = (await node.pod("meshed"))["status"]["initContainerStatuses"]
    assert [s["name"] for s in statuses] == ["proxy", "needs-proxy"]
    assert statuses[0]["started"] and statuses[0]["ready"] and "running" in statuses[0]["state"]
    assert statuses[1]["state"]["terminated"]["exitCode"] == 0 and statuses[1]["restartCount"] == 0


async def test_env_downward_api_configmap_and_istio_ca_token(node: Node) -> None:
    ns = node.namespace
    await node.kubectl.run(
        "create", "configmap", "settings", "-n", ns, "--from-literal=mode=fast", "--from-literal=x=1"
    )
    await node.kubectl.run("create", "secret", "generic", "creds", "-n", ns, "--from-literal=password=s3cret")
    out = {"name": "out", "mountPath": "/out"}
    script = "env > /out/env; id -u > /out/uid; cp /etc/podinfo/labels /out/labels; exec sleep 600"
    await node.apply({
        "metadata": {"name": "envy", "labels": {"app": "envy", "version": "v1"}, "annotations": {"note": 'say "hi"'}},
        "spec": {
            "securityContext": {"runAsUser": 1337, "runAsGroup": 1337},
            "volumes": [
                {"name": "out", "emptyDir": {}},
                {"name": "podinfo", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
                {"name": "settings", "configMap": {"name": "settings", "items": [{"key": "mode", "path": "mode.txt"}]}},
                {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                    "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
            ],
            "containers": [_container("app", command=_sh(script), args=["$(GREETING)"], env=[
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "GREETING", "value": "hello $(NAME) in $(NS), $$(NOT)"},
            ], resources={"limits": {"memory": "128Mi"}, "requests": {"cpu": "250m"}}, volumeMounts=[
                out, {"name": "podinfo", "mountPath": "/etc/podinfo"},
                {"name": "settings", "mountPath": "/etc/settings", "readOnly": True},
                {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
            ])],
        },
    })  # fmt: skip
    await node.shows("envy", "1/1", "Running")
    outdir = node.volume("envy", "out")
    await eventually((outdir / "labels").exists, what="the app's output")
    env = dict(line.split("=", 1) for line in (outdir / "env").read_text().splitlines() if "=" in line)
    pod = await node.pod("envy")
    assert env["NAME"] == "envy" and env["NS"] == node.namespace and env["SA"] == "default"
    assert env["IP"] == pod["status"]["podIP"] and env["HOST_IP"] == node.network.host_ip
    assert (env["MEM"], env["CPU"], env["MODE"], env["PASSWORD"]) == ("128", "250", "fast", "s3cret")
    assert env["GREETING"] == f"hello envy in {node.namespace}, $(NOT)"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert (outdir / "uid").read_text().strip() == "1337"
    assert (outdir / "labels").read_text() == 'app="envy"\nversion="v1"'
    annotations = (node.volume("envy", "podinfo") / "annotations").read_text().splitlines()
    assert annotations[-1] == 'note="say \\"hi\\""'  # after kubectl's last-applied-configuration
    token = (node.volume("envy", "istio-token") / "istio-token").read_text()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == ["istio-ca"] and claims["exp"] - claims["iat"] == 43200
    assert claims["sub"] == f"system:serviceaccount:{node.namespace}:default"
    assert claims["kubernetes.io"]["pod"]["name"] == "envy"
    sa_dir = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
    pid = node.worker("envy").processes["app"].pid
    seen = await run("nsenter", "-t", str(pid), "-m", "cat", str(sa_dir / "namespace"), str(sa_dir / "ca.crt"))
    assert seen == f"{node.namespace}test-ca"

    await node.kubectl.run("patch", "configmap", "settings", "-n", ns, "-p", '{"data":{"mode":"slow"}}')
    await eventually(lambda: (node.volume("envy", "settings") / "mode.txt").read_text() == "slow",
                     what="the configMap volume following its ConfigMap")  # fmt: skip
    await node.kubectl.run("label", "pod", "envy", "-n", ns, "version=v2", "--overwrite")
    await eventually(lambda: 'version="v2"' in (node.volume("envy", "podinfo") / "labels").read_text(),
                     what="the downward API volume following the labels")  # fmt: skip


async def test_a_container_that_exits_is_restarted_and_crash_loops(node: Node) -> None:
    await node.apply({"metadata": {"name": "crasher"},
                      "spec": {"containers": [_container("app", command=_sh("exit 7"))]}})  # fmt: skip
    row = await node.shows("crasher", "0/1", "CrashLoopBackOff")
    assert int(row[3]) >= 1
    status = (await node.pod("crasher"))["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 7
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert (await node.pod("crasher"))["status"]["phase"] == "Running"


async def test_a_pod_that_completes_succeeds_or_fails_with_restart_policy_never(node: Node) -> None:
    for name, code in (("done", 0), ("broken", 2)):
        await node.apply({"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [
            _container("app", command=_sh(f"exit {code}"))]}})  # fmt: skip
    await node.apply({"metadata": {"name": "noinit"}, "spec": {"restartPolicy": "Never",
        "initContainers": [_container("init", command=_sh("exit 1"))], "containers": [_container("app")]}})  # fmt: skip
    await node.shows("done", "0/1", "Completed")
    await node.shows("broken", "0/1", "Error")
    await node.shows("noinit", "0/1", "Init:Error")
    assert (await node.pod("noinit"))["status"]["phase"] == "Failed"
    assert (await node.pod("done"))["status"]["phase"] == "Succeeded"
    assert (await node.pod("broken"))["status"]["phase"] == "Failed"


async def test_a_failed_liveness_probe_restarts_the_container(node: Node) -> None:
    await node.apply({"metadata": {"name": "sick"}, "spec": {"containers": [_container(
        "app", ports=[{"containerPort": 8080}],
        livenessProbe={"httpGet": {"path": "/status/500", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2},
    )]}})  # fmt: skip

    async def restarted() -> bool:
        row = await node.row("sick")
        return bool(row) and int(row[3]) >= 2

    await eventually(restarted, within=40, interval=0.3, what="two restarts after liveness failures")
    status = (await node.pod("sick"))["status"]["containerStatuses"][0]
    assert "Liveness probe failed" in status["lastState"]["terminated"]["message"]


async def test_deleting_a_pod_stops_it_gracefully_and_removes_its_namespace(node: Node) -> None:
    script = "trap 'echo got TERM; sleep 1; exit 0' TERM; while true; do sleep 0.1; done"
    await node.apply({"metadata": {"name": "goner"}, "spec": {"containers": [_container(
        "app", command=_sh(script), volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])],
        "volumes": [{"name": "scratch", "emptyDir": {}}]}})  # fmt: skip
    await node.shows("goner", "1/1", "Running")
    worker = node.worker("goner")
    netns, pid, volumes = worker.sandbox.netns, worker.processes["app"].pid, node.volume("goner", "scratch").parent
    await node.kubectl.run("delete", "pod", "goner", "-n", node.namespace, "--wait=false")
    await node.shows("goner", "1/1", "Terminating")
    await eventually(lambda: _gone(node, "goner"), within=30, what="the pod deleted")
    assert netns not in await run("ip", "netns", "list")
    assert _missing(f"/proc/{pid}", f"/etc/netns/{netns}", volumes)
    log = next((node.kubelet.state_dir / "logs").glob(f"{node.namespace}_goner_*/app/0.log")).read_text()
    assert "got TERM" in log


def _missing(*paths: str | pathlib.Path) -> bool:
    return not any(pathlib.Path(p).exists() for p in paths)


async def _gone(node: Node, name: str) -> bool:
    return not await node.row(name)


async def test_stop_leaves_no_process_namespace_or_mount_point(node: Node) -> None:
    await node.apply({"metadata": {"name": "lingers"}, "spec": {"containers": [_container(
        "app", command=["sleep", "600"], volumeMounts=[{"name": "x", "mountPath": f"/opt/{node.namespace}/x"}])],
        "volumes": [{"name": "x", "emptyDir": {}}]}})  # fmt: skip
    await node.shows("lingers", "1/1", "Running")
    worker = node.worker("lingers")
    netns, pid = worker.sandbox.netns, worker.processes["app"].pid
    await node.kubelet.stop()
    assert netns not in await run("ip", "netns", "list")
    assert _missing(f"/proc/{pid}", f"/opt/{node.namespace}", f"/etc/netns/{netns}")
    assert node.network.pod_ips() == {}
    assert (await node.row("lingers"))[1:3] == ["1/1", "Running"]  # the API object is left alone
