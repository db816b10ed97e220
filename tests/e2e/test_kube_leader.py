"""Two (then three) `meshplane serve` replicas of one revision against kubesim, driven by kubectl.

Only the Lease holder writes `istio-ca-root-cert` ConfigMaps and webhook caBundles (each process's
log shows what it wrote); what an operator deletes or edits by hand comes back; a SIGKILLed leader
is replaced once its Lease expires, a SIGTERMed one hands over at once.
"""

from __future__ import annotations

import asyncio
import base64
import pathlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from controlplane.kube.leader import lease_name
from tests.helpers.serve import Running, start_serve
from tests.kubesim.fixtures import (  # noqa: F401
    Kubectl,
    eventually,
    kubeconfig_fixture,
    kubectl_fixture,
    kubesim_fixture,
)
from tests.kubesim.server import KubeSim

CP_NS = "istio-system"
LEASE = lease_name("default")
LEASE_SECONDS = 8
MWC = "istio-sidecar-injector"
INJECTOR_HOOK = "rev.namespace.sidecar-injector.istio.io"
SETUP = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {CP_NS}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: apps}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {MWC}
  labels: {{istio.io/rev: default}}
webhooks:
- name: {INJECTOR_HOOK}
  clientConfig: {{service: {{name: istiod, namespace: {CP_NS}, path: /inject}}}}
  rules: [{{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}}]
  namespaceSelector: {{matchLabels: {{istio.io/rev: default}}}}
  sideEffects: None
  admissionReviewVersions: [v1]
- name: audit.example.com
  clientConfig: {{url: "https://audit.example.com/hook", caBundle: {base64.b64encode(b"third party").decode()}}}
  rules: [{{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}}]
  namespaceSelector: {{matchLabels: {{never: match}}}}
  sideEffects: None
  admissionReviewVersions: [v1]
"""


@dataclass
class Replicas:
    kubeconfig: pathlib.Path
    tmp_path: pathlib.Path
    running: dict[str, Running] = field(default_factory=dict)

    async def start(self, pod: str) -> Running:
        def launch() -> Running:
            where = self.tmp_path / pod
            where.mkdir()
            env = {"POD_NAME": pod, "MESHPLANE_LEASE_DURATION": str(LEASE_SECONDS)}
            return start_serve(where, "--kubeconfig", str(self.kubeconfig), "--ca-workers", "0", env=env)

        self.running[pod] = await asyncio.to_thread(launch)
        return self.running[pod]

    async def stop(self, pod: str, sig: int) -> None:
        await asyncio.to_thread(self.running[pod].stop, sig=sig)

    def wrote(self, pod: str) -> list[str]:
        """The writes a replica logged: root ConfigMaps created/updated and caBundles patched."""
        lines = self.running[pod].logs().splitlines()
        return [
            line
            for line in lines
            if ("ConfigMap " in line and "istio-ca-root-cert" in line) or "patched caBundle" in line
        ]


@pytest.fixture
async def replicas(kubectl: Kubectl, kubeconfig: pathlib.Path, tmp_path: pathlib.Path) -> AsyncIterator[Replicas]:
    await kubectl.apply(SETUP)
    group = Replicas(kubeconfig, tmp_path)
    try:
        yield group
    finally:
        for running in group.running.values():
            await asyncio.to_thread(running.stop, sig=signal.SIGKILL)


def holder(sim: KubeSim) -> str:
    lease = sim.get_object("leases", CP_NS, LEASE, group="coordination.k8s.io")
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def root_configmap(sim: KubeSim, namespace: str) -> dict[str, Any] | None:
    return sim.get_object("configmaps", namespace, "istio-ca-root-cert")


def ca_bundles(sim: KubeSim) -> dict[str, bytes]:
    mwc = sim.get_object("mutatingwebhookconfigurations", "", MWC, group="admissionregistration.k8s.io")
    assert mwc is not None
    return {h["name"]: base64.b64decode(h["clientConfig"].get("caBundle") or "") for h in mwc["webhooks"]}


async def measure(action: Awaitable[Any], check: Callable[[], bool], *, within: float, what: str) -> float:
    """Seconds from starting `action` until `check()` holds (polled every 20 ms); fails after `within`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await action
    await eventually(check, within=within, interval=0.02, what=what)
    return loop.time() - started


async def test_one_leader_writes_restores_and_hands_over(
    replicas: Replicas, kubesim: KubeSim, kubectl: Kubectl, capsys: pytest.CaptureFixture[str]
) -> None:
    a = await replicas.start("istiod-a")
    await eventually(lambda: holder(kubesim) == "istiod-a", what="istiod-a holding the Lease")
    await replicas.start("istiod-b")
    root = a.root_cert.read_text()

    def all_written() -> bool:
        cm = root_configmap(kubesim, "apps")
        return (
            cm is not None
            and cm["data"] == {"root-cert.pem": root}
            and ca_bundles(kubesim)[INJECTOR_HOOK] == root.encode()
        )

    await eventually(all_written, what="root ConfigMap and caBundle written by the leader")
    assert ca_bundles(kubesim)["audit.example.com"] == b"third party"
    assert root_configmap(kubesim, "kube-public") is None

    # What an operator breaks by hand comes back (the issue: within 2 s).
    deleted = await measure(
        kubectl.run("delete", "configmap", "istio-ca-root-cert", "-n", "apps"),
        lambda: root_configmap(kubesim, "apps") is not None,
        within=20,
        what="ConfigMap recreated",
    )
    edited = await measure(
        kubectl.run("patch", "configmap", "istio-ca-root-cert", "-n", "apps", "-p", '{"data":{"root-cert.pem":"x"}}'),
        all_written,
        within=20,
        what="ConfigMap restored",
    )
    stale = base64.b64encode(b"stale").decode()
    patch = f'[{{"op":"replace","path":"/webhooks/0/clientConfig/caBundle","value":"{stale}"}}]'
    bundle = await measure(
        kubectl.run("patch", "mutatingwebhookconfiguration", MWC, "--type=json", "-p", patch),
        all_written,
        within=20,
        what="caBundle restored",
    )
    assert replicas.wrote("istiod-a") and not replicas.wrote("istiod-b")

    # SIGKILL: no release; the follower waits out the Lease, then takes over and does the writing.
    killed = await measure(
        replicas.stop("istiod-a", signal.SIGKILL),
        lambda: holder(kubesim) == "istiod-b",
        within=4 * LEASE_SECONDS,
        what="istiod-b leading",
    )
    await kubectl.run("delete", "configmap", "istio-ca-root-cert", "-n", "apps")
    await eventually(all_written, what="the new leader recreating the ConfigMap")
    # The object is in the API before the writer's log line about it: wait for the line.
    await eventually(
        lambda: any("istio-ca-root-cert" in line for line in replicas.wrote("istiod-b")),
        what="istiod-b logging that it recreated the ConfigMap",
    )

    # SIGTERM: the leader releases the Lease on its way out and a follower takes it at once.
    c = await replicas.start("istiod-c")
    await eventually(lambda: "held by 'istiod-b'" in c.logs(), what="istiod-c following istiod-b")
    termed = await measure(
        replicas.stop("istiod-b", signal.SIGTERM),  # returns once the process has exited
        lambda: holder(kubesim) == "istiod-c",
        within=4 * LEASE_SECONDS,
        what="istiod-c leading",
    )
    assert "released Lease" in replicas.running["istiod-b"].logs()
    assert termed < LEASE_SECONDS, f"handover took {termed:.1f}s: the Lease ran out instead of being released"
    assert not replicas.wrote("istiod-c")  # everything is current: a new leader writes nothing

    with capsys.disabled():
        print(
            f"\nrestored: deleted ConfigMap {deleted:.2f}s, edited ConfigMap {edited:.2f}s, caBundle {bundle:.2f}s; "
            f"takeover after SIGKILL {killed:.1f}s, after SIGTERM {termed:.1f}s (lease {LEASE_SECONDS}s)"
        )


async def test_a_bad_lease_duration_stops_serve_with_a_message(
    kubectl: Kubectl, kubeconfig: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    await kubectl.apply(SETUP)
    with pytest.raises(RuntimeError) as failed:
        await asyncio.to_thread(
            start_serve,
            tmp_path,
            "--kubeconfig",
            str(kubeconfig),
            "--ca-workers",
            "0",
            env={"MESHPLANE_LEASE_DURATION": "15s"},
        )
    assert "exited with 2" in str(failed.value)
    assert "MESHPLANE_LEASE_DURATION: '15s' is not a whole number of seconds" in str(failed.value)
