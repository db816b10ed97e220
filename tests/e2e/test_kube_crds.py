"""End to end in Kubernetes mode on a cluster without Istio's CRDs, then with them (kubectl-driven).

`meshplane serve --kubeconfig` must become ready although PeerAuthentication is not served. With the
CRD installed, policies applied with kubectl reach `/debug/registryz`, and deleting a policy or the
whole CRD takes them out. (A CRD installed after start is picked up at the next probe, 30 s by
default: that path is tested with a short probe interval in tests/controlplane/test_kube_optional_kinds.py.)
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.helpers.serve import Running, start_serve
from tests.kubesim.fixtures import (  # noqa: F401
    Kubectl,
    eventually,
    kubeconfig_fixture,
    kubectl_fixture,
    kubesim_fixture,
)
from tests.kubesim.test_crds import CRD_FILE, CRD_NAME

STRICT_IN_SHOP = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
"""


@pytest.fixture
async def serve_kube(kubeconfig: pathlib.Path, kubectl: Kubectl, tmp_path: pathlib.Path) -> AsyncIterator[Running]:
    await kubectl.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n")
    running = await asyncio.to_thread(start_serve, tmp_path, "--kubeconfig", str(kubeconfig))
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def policies(running: Running) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(f"{running.http_url}/debug/registryz") as resp:
        registry = await resp.json()
    return list(registry["peer_authentications"])


async def _has(running: Running, expected: list[str]) -> bool:
    return await policies(running) == expected


async def test_ready_without_the_crd(serve_kube: Running) -> None:
    # start_serve returned, so /ready answered 200 with no PeerAuthentication CRD in the cluster.
    assert await policies(serve_kube) == []
    assert "peerauthentications.security.istio.io is not served" in serve_kube.logs()


async def test_policies_follow_kubectl_and_leave_with_their_crd(
    kubeconfig: pathlib.Path, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    await kubectl.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n")
    await kubectl.run("apply", "-f", str(CRD_FILE))
    running = await asyncio.to_thread(start_serve, tmp_path, "--kubeconfig", str(kubeconfig))
    try:
        assert await policies(running) == []
        await kubectl.apply(STRICT_IN_SHOP)
        await eventually(lambda: _has(running, ["shop/strict"]), what="the policy in /debug/registryz")

        await kubectl.run("delete", "peerauthentication", "strict", "-n", "shop")
        await eventually(lambda: _has(running, []), what="the deleted policy gone")

        await kubectl.apply(STRICT_IN_SHOP)
        await eventually(lambda: _has(running, ["shop/strict"]), what="the policy applied again")
        await kubectl.run("delete", "crd", CRD_NAME)
        await eventually(lambda: _has(running, []), what="the policy gone with its CRD")
    finally:
        await asyncio.to_thread(running.stop)
