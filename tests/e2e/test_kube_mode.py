"""End to end in Kubernetes mode: `meshplane serve --kubeconfig` against kubesim, driven by kubectl.

The injector ConfigMap applied with kubectl changes the injected proxy image live, and a namespace
carrying both injection labels makes the webhook answer with a warning naming both.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonpatch
import pytest

from tests.helpers.serve import REPO, SERVER_NAME, Running, meshplane_cmd, start_serve
from tests.kubesim.fixtures import (  # noqa: F401
    Kubectl,
    eventually,
    kubeconfig_fixture,
    kubectl_fixture,
    kubesim_fixture,
)
from tests.kubesim.server import KubeSim

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-1", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "app", "image": "example/app:1", "ports": [{"containerPort": 8080}]}]},
}


def injector_configmap(tag: str) -> str:
    values = {"global": {"hub": "registry.example.com/mesh", "tag": tag}}
    return f"""
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio-sidecar-injector
  namespace: istio-system
  labels: {{istio.io/rev: default}}
data:
  values: '{json.dumps(values)}'
"""


@pytest.fixture
async def serve_kube(kubeconfig: pathlib.Path, kubectl: Kubectl, tmp_path: pathlib.Path) -> AsyncIterator[Running]:
    """`meshplane serve` in Kubernetes mode; kubesim shares this event loop, so start and stop in a thread."""
    await kubectl.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n")
    running = await asyncio.to_thread(start_serve, tmp_path, "--kubeconfig", str(kubeconfig))
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def admit(running: Running, *, namespace: str) -> dict[str, Any]:
    """POST an AdmissionReview for POD to the HTTPS webhook (TLS verified against the mesh root)."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": POD,
        },
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            running.webhook_url,
            json=review,
            ssl=running.client_ssl_context(),
            server_hostname=SERVER_NAME,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
    response: dict[str, Any] = body["response"]
    assert response["allowed"] is True, response
    return response


def proxy_image(response: dict[str, Any]) -> str:
    patch = json.loads(base64.b64decode(response["patch"]))
    pod = jsonpatch.apply_patch(POD, patch)
    containers = [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
    return str(next(c["image"] for c in containers if c["name"] == "istio-proxy"))


async def test_injector_configmap_changes_the_proxy_image_live(serve_kube: Running, kubectl: Kubectl) -> None:
    await kubectl.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n")
    assert proxy_image(await admit(serve_kube, namespace="apps")).startswith("docker.io/istio/proxyv2:")

    await kubectl.apply(injector_configmap("1.2.3"))

    async def image() -> str:
        return proxy_image(await admit(serve_kube, namespace="apps"))

    await eventually(
        lambda: _equals(image(), "registry.example.com/mesh/proxyv2:1.2.3"), what="the ConfigMap's proxy image"
    )
    await kubectl.apply(injector_configmap("1.2.4"))
    await eventually(lambda: _equals(image(), "registry.example.com/mesh/proxyv2:1.2.4"), what="the edited image")


async def test_namespace_with_both_injection_labels_gets_a_warning(serve_kube: Running, kubectl: Kubectl) -> None:
    await kubectl.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: both}\n")
    assert (await admit(serve_kube, namespace="both")).get("warnings") in (None, [])
    await kubectl.run("label", "namespace", "both", "istio-injection=enabled", "istio.io/rev=canary")

    async def warnings() -> list[str]:
        return list((await admit(serve_kube, namespace="both")).get("warnings") or [])

    found = await eventually(warnings, what="the label conflict warning")
    assert len(found) == 1
    assert "istio-injection=enabled" in found[0] and "istio.io/rev=canary" in found[0]


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_ready_waits_until_the_cluster_has_been_listed(
    kubesim: KubeSim, kubeconfig: pathlib.Path, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    await kubectl.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n")
    fault = kubesim.inject_faults(
        status=429, count=1_000_000, method="GET", path_prefix="/api/v1/namespaces", watch=False, retry_after=1
    )
    starting = asyncio.ensure_future(asyncio.to_thread(start_serve, tmp_path, "--kubeconfig", str(kubeconfig)))
    try:
        await eventually(lambda: 1_000_000 - fault.count >= 3, within=60, what="three refused lists")
        assert not starting.done()  # not ready while the namespaces cannot be listed
        fault.count = 0
        running = await asyncio.wait_for(starting, timeout=60)
    except BaseException:
        fault.count = 0
        with contextlib.suppress(Exception):
            (await starting).stop()
        raise
    try:
        logs = running.logs()
        assert "retrying in 1.0s" in logs
        assert "CA key material: Secrets in istio-system: 429" in logs  # the CA waited out the refusals too
    finally:
        await asyncio.to_thread(running.stop)


async def test_unusable_kubeconfig_exits_2_naming_the_file(tmp_path: pathlib.Path) -> None:
    broken = tmp_path / "broken-kubeconfig"
    broken.write_text("clusters: [\n")
    huge = tmp_path / "huge-number-kubeconfig"  # int() raised out of the YAML loader: a traceback
    huge.write_text(f"apiVersion: v1\nkind: Config\npreferences: {{colors: {'1' * 5000}}}\n")
    for path, problem in (
        (tmp_path / "missing", "does not exist"),
        (broken, "is not valid YAML"),
        (huge, "is not valid YAML at line 3 column 23"),
    ):
        proc = await asyncio.create_subprocess_exec(
            *meshplane_cmd(),
            "serve",
            "--kubeconfig",
            str(path),
            "--state-dir",
            str(tmp_path / "state"),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 2
        assert f"--kubeconfig: {path} {problem}" in err.decode()


SERVICE_AND_ENDPOINTS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: cart-abc12
  namespace: shop
  labels: {kubernetes.io/service-name: cart}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.1.0.7]
  conditions: {ready: true}
"""


async def test_services_and_endpoints_applied_with_kubectl_reach_the_registry(
    serve_kube: Running, kubectl: Kubectl
) -> None:
    await kubectl.apply(SERVICE_AND_ENDPOINTS)

    async def cart_endpoints() -> list[str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{serve_kube.http_url}/debug/registryz") as resp,
        ):
            registry = await resp.json()
        for service in registry["services"]:
            if service["hostname"] == "cart.shop.svc.cluster.local":
                return [e["address"] for e in service["endpoints"]]
        return []

    assert await eventually(cart_endpoints, what="cart's endpoint in /debug/registryz") == ["10.1.0.7"]
    await kubectl.run("delete", "service", "cart", "-n", "shop")
    await eventually(lambda: _gone(cart_endpoints), what="cart gone from the registry")


async def _gone(check: Any) -> bool:
    return not await check()
