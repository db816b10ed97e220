"""The CA's Kubernetes clients (Secrets, TokenReview) against kubesim over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import logging
import pathlib

import pytest

from certs.authenticate.issuerkeys import IssuerKeys, Verdict
from certs.authenticate.kubejwt import TokenReview, TokenReviewUnavailable
from certs.kubestore import Secret, SecretConflict, SecretExists
from controlplane.kube.client import KubeApi, KubeApiError
from controlplane.kube.issuerkeys import MIN_INTERVAL_S, KubeIssuerKeys
from controlplane.kube.secrets import KubeSecrets
from controlplane.kube.tokenreview import KubeTokenReviewer
from tests.helpers.serve import closed_port
from tests.kubesim.fixtures import (  # noqa: F401
    Kubectl,
    kube_api_fixture,
    kubeconfig_fixture,
    kubectl_fixture,
    kubesim_fixture,
)
from tests.kubesim.kubeconfig import write_kubeconfig
from tests.kubesim.server import KubeSim

NS = "istio-system"


def secrets(api: KubeApi) -> KubeSecrets[Secret]:
    return KubeSecrets(
        api, make=lambda data, rv: Secret(data=data, resource_version=rv), exists=SecretExists, conflict=SecretConflict
    )


def reviewer(api: KubeApi) -> KubeTokenReviewer[TokenReview]:
    return KubeTokenReviewer(api, make=TokenReview, unavailable=TokenReviewUnavailable, timeout=5)


@pytest.fixture
def namespace(kubesim: KubeSim) -> str:
    kubesim.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    return NS


async def test_missing_secret_is_none(kube_api: KubeApi, namespace: str) -> None:
    assert await secrets(kube_api).get(namespace=namespace, name="cacerts") is None


async def test_created_secret_is_stored_base64_with_its_type_and_read_back_as_bytes(
    kube_api: KubeApi, kubesim: KubeSim, namespace: str
) -> None:
    data = {"ca-key.pem": b"\x00\xffkey", "root-cert.pem": b"root"}
    created = await secrets(kube_api).create(
        namespace=namespace, name="istio-ca-secret", data=data, type="istio.io/ca-root"
    )
    stored = kubesim.get_object("secrets", namespace, "istio-ca-secret")
    assert stored is not None
    assert stored["type"] == "istio.io/ca-root"
    assert stored["data"]["ca-key.pem"] == base64.b64encode(b"\x00\xffkey").decode()
    assert created.resource_version == stored["metadata"]["resourceVersion"]
    assert await secrets(kube_api).get(namespace=namespace, name="istio-ca-secret") == created
    assert dict(created.data) == data


async def test_creating_a_taken_name_raises_secret_exists(kube_api: KubeApi, namespace: str) -> None:
    client = secrets(kube_api)
    await client.create(namespace=namespace, name="istio-ca-secret", data={"a": b"1"}, type="istio.io/ca-root")
    with pytest.raises(SecretExists, match="istio-system/istio-ca-secret"):
        await client.create(namespace=namespace, name="istio-ca-secret", data={"a": b"2"}, type="istio.io/ca-root")


async def test_replace_with_the_current_version_keeps_type_and_labels(
    kube_api: KubeApi, kubesim: KubeSim, kubectl: Kubectl, namespace: str
) -> None:
    client = secrets(kube_api)
    first = await client.create(namespace=namespace, name="istio-ca-secret", data={"a": b"1"}, type="istio.io/ca-root")
    await kubectl.run("label", "secret", "istio-ca-secret", "-n", namespace, "team=mesh")
    labelled = await client.get(namespace=namespace, name="istio-ca-secret")
    assert labelled is not None and labelled.resource_version != first.resource_version
    replaced = await client.replace(
        namespace=namespace, name="istio-ca-secret", data={"a": b"2"}, resource_version=labelled.resource_version
    )
    assert dict(replaced.data) == {"a": b"2"}
    stored = kubesim.get_object("secrets", namespace, "istio-ca-secret")
    assert stored is not None
    assert stored["type"] == "istio.io/ca-root" and stored["metadata"]["labels"] == {"team": "mesh"}


async def test_replace_with_a_stale_version_or_a_deleted_secret_raises_conflict(
    kube_api: KubeApi, kubectl: Kubectl, namespace: str
) -> None:
    client = secrets(kube_api)
    first = await client.create(namespace=namespace, name="istio-ca-secret", data={"a": b"1"}, type="istio.io/ca-root")
    await client.replace(
        namespace=namespace, name="istio-ca-secret", data={"a": b"2"}, resource_version=first.resource_version
    )
    with pytest.raises(SecretConflict):
        await client.replace(
            namespace=namespace, name="istio-ca-secret", data={"a": b"3"}, resource_version=first.resource_version
        )
    await kubectl.run("delete", "secret", "istio-ca-secret", "-n", namespace)
    with pytest.raises(SecretConflict, match="no longer exists"):
        await client.replace(
            namespace=namespace, name="istio-ca-secret", data={"a": b"4"}, resource_version=first.resource_version
        )


async def test_other_api_errors_propagate(kube_api: KubeApi, kubesim: KubeSim, namespace: str) -> None:
    kubesim.inject_faults(status=403, method="GET", path_prefix=f"/api/v1/namespaces/{namespace}/secrets")
    with pytest.raises(KubeApiError) as caught:
        await secrets(kube_api).get(namespace=namespace, name="cacerts")
    assert caught.value.status == 403


async def test_review_of_a_service_account_token(kube_api: KubeApi, kubectl: Kubectl) -> None:
    await kubectl.run("create", "namespace", "shop")
    await kubectl.run("create", "serviceaccount", "web", "-n", "shop")
    token = (await kubectl.run("create", "token", "web", "--audience", "istio-ca", "-n", "shop")).stdout.strip()
    verdict = await reviewer(kube_api).review(token=token, audiences=["istio-ca"])
    assert verdict == TokenReview(
        authenticated=True, username="system:serviceaccount:shop:web", audiences=("istio-ca",)
    )
    other = await reviewer(kube_api).review(token=token, audiences=["elsewhere"])
    assert not other.authenticated and "is invalid for the target audiences" in other.error


async def test_review_error_status_is_unavailable(kube_api: KubeApi, kubesim: KubeSim) -> None:
    kubesim.inject_faults(status=403, path_prefix="/apis/authentication.k8s.io/v1/tokenreviews", message="no RBAC")
    with pytest.raises(TokenReviewUnavailable, match="403 Forbidden: no RBAC"):
        await reviewer(kube_api).review(token="t", audiences=["istio-ca"])


async def test_review_with_the_api_server_unreachable_is_unavailable(tmp_path: pathlib.Path) -> None:
    with closed_port() as port:
        dead = write_kubeconfig(tmp_path / "kubeconfig", server=f"http://127.0.0.1:{port}")
        api = await KubeApi.connect(kubeconfig=dead)
        try:
            with pytest.raises(TokenReviewUnavailable, match="unreachable"):
                await reviewer(api).review(token="t", audiences=["istio-ca"])
        finally:
            await api.close()


# -- the service-account issuer keys ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def issuer_keys(api: KubeApi, clock: Clock) -> KubeIssuerKeys[IssuerKeys]:
    return KubeIssuerKeys(api, parse=IssuerKeys.from_jwks, clock=clock)


def jwks_gets(kubesim: KubeSim) -> int:
    return sum(1 for method, path in kubesim.requests if (method, path) == ("GET", "/openid/v1/jwks"))


async def test_issuer_keys_verify_the_clusters_tokens(kube_api: KubeApi, kubectl: Kubectl) -> None:
    await kubectl.run("create", "namespace", "shop")
    await kubectl.run("create", "serviceaccount", "web", "-n", "shop")
    token = (await kubectl.run("create", "token", "web", "--audience", "istio-ca", "-n", "shop")).stdout.strip()
    source = issuer_keys(kube_api, Clock())
    assert source.current() is None
    keys = await source.refresh()
    assert keys is not None and len(keys) == 1 and source.current() is keys
    assert keys.check(token).verdict is Verdict.VERIFIED


async def test_issuer_keys_are_fetched_at_most_every_30_seconds_and_callers_share_a_fetch(
    kube_api: KubeApi, kubesim: KubeSim
) -> None:
    clock = Clock()
    source = issuer_keys(kube_api, clock)
    shared = await asyncio.gather(*(source.refresh() for _ in range(10)))
    assert jwks_gets(kubesim) == 1 and all(keys is shared[0] for keys in shared)
    clock.now += MIN_INTERVAL_S - 0.1
    assert await source.refresh() is shared[0]  # no fetch: the same set, so callers know nothing newer came
    assert jwks_gets(kubesim) == 1
    clock.now += 0.1
    assert await source.refresh() is not shared[0]
    assert jwks_gets(kubesim) == 2 and source.fetches == 2


async def test_a_failed_fetch_keeps_the_keys_and_is_logged_once(
    kube_api: KubeApi, kubesim: KubeSim, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    source = issuer_keys(kube_api, clock)
    keys = await source.refresh()
    kubesim.inject_faults(status=403, count=3, path_prefix="/openid/v1/jwks", message="forbidden by a test")
    caplog.set_level(logging.WARNING, logger="controlplane.kube.issuerkeys")
    for _ in range(3):
        clock.now += MIN_INTERVAL_S
        assert await source.refresh() is keys
    assert "forbidden by a test" in source.last_error
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "keeping the keys fetched before" in warnings[0]
    clock.now += MIN_INTERVAL_S
    assert await source.refresh() is not keys and source.last_error == ""


async def test_without_keys_fetched_every_token_is_reviewed_and_the_reason_is_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with closed_port() as port:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server=f"http://127.0.0.1:{port}")
        api = await KubeApi.connect(kubeconfig=kubeconfig)
        try:
            caplog.set_level(logging.WARNING, logger="controlplane.kube.issuerkeys")
            source = issuer_keys(api, Clock())
            assert await source.refresh() is None
            assert "unreachable" in source.last_error
            assert "every token is reviewed" in caplog.records[0].getMessage()
        finally:
            await api.close()


async def test_run_fetches_at_once_and_again_every_interval(kube_api: KubeApi, kubesim: KubeSim) -> None:
    source = KubeIssuerKeys(kube_api, parse=IssuerKeys.from_jwks, interval=0.05)
    task = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(10):
            while True:
                if jwks_gets(kubesim) >= 3:
                    break
                await asyncio.sleep(0.01)
        assert source.current() is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
