"""kubesim's secure port: TLS with its own CA, bearer tokens, 401s, and the audit trail.

Clients are the real kubectl and kubernetes-asyncio configured in-cluster style (token file + ca.crt).
"""

from __future__ import annotations

import pathlib
import ssl

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from controlplane.kube.client import KubeApi
from tests.kubesim.auth import AuditRecord
from tests.kubesim.fixtures import Kubectl, secure_fixture  # noqa: F401
from tests.kubesim.server import KubeSim


@pytest.fixture(name="admin")
def admin_fixture(secure: KubeSim, tmp_path: pathlib.Path) -> Kubectl:
    cache = tmp_path / "cache"
    cache.mkdir()
    return Kubectl(kubeconfig=secure.write_kubeconfig(tmp_path / "kubeconfig"), cache_dir=cache)


async def _token(admin: Kubectl, *args: str) -> str:
    return (await admin.run("create", "token", *args)).stdout.strip()


async def _in_cluster(secure: KubeSim, token: str, tmp_path: pathlib.Path) -> k8s_client.ApiClient:
    """A kubernetes-asyncio client configured as a pod is: token file, ca.crt, KUBERNETES_SERVICE_*."""
    (tmp_path / "token").write_text(token)
    (tmp_path / "ca.crt").write_bytes(secure.ca_pem)
    configuration = k8s_client.Configuration()
    loader = InClusterConfigLoader(
        token_filename=str(tmp_path / "token"),
        cert_filename=str(tmp_path / "ca.crt"),
        environ={"KUBERNETES_SERVICE_HOST": secure.host, "KUBERNETES_SERVICE_PORT": str(secure.port)},
    )
    loader.load_and_set(configuration)
    return k8s_client.ApiClient(configuration)


async def test_kubectl_with_the_kubeconfig_works_over_https(secure: KubeSim, admin: Kubectl) -> None:
    assert secure.url.startswith("https://127.0.0.1:")
    assert "kube-system" in (await admin.run("get", "namespaces")).stdout


async def test_a_wrong_token_is_unauthorized_for_kubectl(admin: Kubectl) -> None:
    # With no discovery cache, kubectl 1.32 words the 401 of aggregated discovery generically, as against a
    # real API server; with the cache warm, the resource request's Status reason is printed.
    cold = await admin.run("--token=not-a-token", "get", "pods", check=False)
    assert "You must be logged in to the server (the server has asked for the client" in cold.stderr
    await admin.run("get", "pods")
    result = await admin.run("--token=not-a-token", "get", "pods", check=False)
    assert result.returncode != 0
    assert "You must be logged in to the server (Unauthorized)" in result.stderr


async def test_requests_without_a_token_get_a_401_status(secure: KubeSim) -> None:
    context = ssl.create_default_context(cadata=secure.ca_pem.decode())
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{secure.url}/api/v1/namespaces", ssl=context) as response:
            assert response.status == 401
            status = await response.json()
        async with session.get(f"{secure.url}/healthz", ssl=context) as health:
            assert health.status == 200
    assert status["kind"] == "Status" and status["reason"] == "Unauthorized" and status["code"] == 401


async def test_the_serving_certificate_names_the_api_server(secure: KubeSim) -> None:
    context = ssl.create_default_context(cadata=secure.ca_pem.decode())
    async with aiohttp.ClientSession() as session:
        for name in ("kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1", "127.0.0.1"):
            # connect to 127.0.0.1 while verifying the certificate for `name`
            async with session.get(f"{secure.url}/version", ssl=context, server_hostname=name) as response:
                assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"{secure.url}/version", ssl=context, server_hostname="example.com")


async def test_service_account_token_in_cluster_style(secure: KubeSim, admin: Kubectl, tmp_path: pathlib.Path) -> None:
    await admin.run("create", "serviceaccount", "reader")
    api = await _in_cluster(secure, await _token(admin, "reader"), tmp_path)
    try:
        listed = await k8s_client.CoreV1Api(api).list_namespaced_config_map("default")
    finally:
        await api.close()
    assert listed.kind == "ConfigMapList"
    assert (
        AuditRecord(
            username="system:serviceaccount:default:reader",
            verb="list",
            api_group="",
            resource="configmaps",
            subresource="",
            namespace="default",
        )
        in secure.audit
    )


async def test_tokens_for_other_audiences_or_deleted_accounts_are_rejected(
    secure: KubeSim, admin: Kubectl, tmp_path: pathlib.Path
) -> None:
    await admin.run("create", "serviceaccount", "gone")
    istio_token = await _token(admin, "gone", "--audience=istio-ca")
    token = await _token(admin, "gone")
    await admin.run("delete", "serviceaccount", "gone")  # also warms kubectl's discovery cache
    for rejected in (istio_token, token):
        result = await admin.run(f"--token={rejected}", "get", "pods", check=False)
        assert "You must be logged in to the server (Unauthorized)" in result.stderr


async def test_a_token_bound_to_a_pod_dies_with_the_pod(secure: KubeSim, admin: Kubectl) -> None:
    await admin.run("run", "web", "--image=example.com/web:1", "--restart=Never")  # warms discovery too
    token = await _token(admin, "default", "--bound-object-kind=Pod", "--bound-object-name=web")
    assert (await admin.run(f"--token={token}", "get", "pods")).returncode == 0
    await admin.run("delete", "pod", "web", "--wait=false")
    result = await admin.run(f"--token={token}", "get", "pods", check=False)
    assert "You must be logged in to the server (Unauthorized)" in result.stderr


async def test_every_authenticated_request_is_audited_with_rbac_verbs(secure: KubeSim, admin: Kubectl) -> None:
    await admin.run("create", "configmap", "c", "--from-literal=a=1")
    await admin.run("label", "configmap", "c", "x=y")
    await admin.run("get", "configmaps")
    await admin.run("delete", "configmap", "c")
    seen = {(r.username, r.verb, r.resource, r.namespace) for r in secure.audit}
    for verb in ("create", "patch", "list", "delete"):
        assert ("kubernetes-admin", verb, "configmaps", "default") in seen


async def test_meshplane_client_connects_with_the_written_kubeconfig(secure: KubeSim, tmp_path: pathlib.Path) -> None:
    api = await KubeApi.connect(kubeconfig=secure.write_kubeconfig(tmp_path / "kc"))
    try:
        answer = await api.request("GET", "/api/v1/namespaces/default")
    finally:
        await api.close()
    assert answer["metadata"]["name"] == "default"
