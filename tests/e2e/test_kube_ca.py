"""The CA in Kubernetes mode, end to end: `meshplane serve --kubeconfig` against kubesim, driven by kubectl.

Key material lives in Secrets (`istio-ca-secret`, or the operator's `cacerts`), callers prove who
they are with a token from `kubectl create token` (checked by TokenReview), chains are checked with
`openssl verify`, and `istio-ca-root-cert` is kept in every namespace but the ignored ones.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from certs.authenticate.kubejwt import REVIEW_TTL_S
from certs.authenticate.reviewgate import BURST, REFILL_S
from discovery.xdstypes import CLUSTER
from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.certs.fakes import shaped_token
from tests.certs.helpers import leaf_uris, openssl_csr, openssl_text, openssl_verify
from tests.certs.test_keystore import write_cacerts
from tests.helpers.relay import Relay
from tests.helpers.serve import SERVER_NAME, Running, start_serve
from tests.kubesim.fixtures import (  # noqa: F401
    Kubectl,
    eventually,
    kubeconfig_fixture,
    kubectl_fixture,
    kubesim_fixture,
)
from tests.kubesim.server import KubeSim

CP_NS = "istio-system"
IDENTITY = "spiffe://cluster.local/ns/shop/sa/web"
ROOT_CM = "istio-ca-root-cert"


def _start(kubeconfig: pathlib.Path, where: pathlib.Path) -> Running:
    where.mkdir(parents=True, exist_ok=True)
    return start_serve(where, "--kubeconfig", str(kubeconfig), "--ca-workers", "0")


async def start(kubeconfig: pathlib.Path, where: pathlib.Path) -> Running:
    """serve in Kubernetes mode, started in a thread: kubesim shares this event loop."""
    return await asyncio.to_thread(_start, kubeconfig, where)


@pytest.fixture
async def serve_kube(kubeconfig: pathlib.Path, kubectl: Kubectl, tmp_path: pathlib.Path) -> AsyncIterator[Running]:
    """`meshplane serve` in Kubernetes mode, with namespace shop and service account web in place."""
    await kubectl.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n"
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: shop}\n"
    )
    running = await start(kubeconfig, tmp_path / "serve")
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def secret_data(kubectl: Kubectl, name: str) -> dict[str, bytes]:
    secret = await kubectl.json("get", "secret", name, "-n", CP_NS)
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


def _create(running: Running, csr: str, bearer: str, target: str | None, headers: dict[str, str]) -> list[str]:
    credentials = grpc.ssl_channel_credentials(running.root_cert.read_bytes())
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    with grpc.secure_channel(target or running.addr("secure-grpc"), credentials, options=options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
        request = ca_pb2.IstioCertificateRequest(csr=csr)
        metadata = [("authorization", f"Bearer {bearer}"), *headers.items()]
        answer = stub.CreateCertificate(request, metadata=metadata, timeout=30)
        return list(answer.cert_chain)


async def create(running: Running, csr: str, bearer: str, target: str | None = None, **headers: str) -> list[str]:
    """CreateCertificate over gRPC+TLS, in a thread: the CA's TokenReview needs this event loop (kubesim).

    `target` is another address to dial instead of the secure port (a `Relay`); `headers` more metadata."""
    return await asyncio.to_thread(_create, running, csr, bearer, target, headers)


async def token(kubectl: Kubectl, *args: str) -> str:
    return (await kubectl.run("create", "token", *args)).stdout.strip()


async def test_self_signed_root_is_stored_in_istio_ca_secret_and_reused_after_a_restart(
    serve_kube: Running, kubeconfig: pathlib.Path, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    data = await secret_data(kubectl, "istio-ca-secret")
    assert {"ca-cert.pem", "ca-key.pem", "root-cert.pem"} <= set(data)
    assert data["ca-key.pem"].startswith(b"-----BEGIN")
    secret = await kubectl.json("get", "secret", "istio-ca-secret", "-n", CP_NS)
    assert secret["type"] == "istio.io/ca-root"
    assert serve_kube.root_cert.read_bytes() == data["root-cert.pem"]  # published for operators too
    await asyncio.to_thread(serve_kube.stop)

    again = await start(kubeconfig, tmp_path / "restart")  # a fresh state dir: only the Secret remembers
    try:
        assert again.root_cert.read_bytes() == data["root-cert.pem"]
        assert await secret_data(kubectl, "istio-ca-secret") == data
    finally:
        await asyncio.to_thread(again.stop)


async def test_a_service_account_token_gets_a_chain_openssl_verifies_against_the_secret_root(
    serve_kube: Running, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    bearer = await token(kubectl, "web", "--audience", "istio-ca", "-n", "shop")
    chain = await create(serve_kube, openssl_csr(tmp_path, uri=IDENTITY), bearer)
    assert len(chain) == 2
    assert leaf_uris(chain[0]) == [IDENTITY]
    root = tmp_path / "secret-root.pem"
    root.write_bytes((await secret_data(kubectl, "istio-ca-secret"))["root-cert.pem"])
    assert "OK" in openssl_verify(tmp_path, ca_file=root, chain=chain)
    # No SAN in the CSR: the token's identity is used.
    assert leaf_uris((await create(serve_kube, openssl_csr(tmp_path, name="nosan"), bearer))[0]) == [IDENTITY]


async def test_a_token_for_another_audience_is_unauthenticated(
    serve_kube: Running, kubesim: KubeSim, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    bearer = await token(kubectl, "web", "--audience", "other", "-n", "shop")
    reviews = _reviews(kubesim)
    with pytest.raises(grpc.RpcError) as caught:
        await create(serve_kube, openssl_csr(tmp_path, uri=IDENTITY), bearer)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Signed by the cluster, so its claims are read without asking the API server, which would only say no.
    assert "bearer token's audiences ['other'] do not include 'istio-ca'" in str(caught.value.details())
    assert _reviews(kubesim) == reviews


async def test_a_deleted_service_accounts_token_is_unauthenticated(
    serve_kube: Running, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    bearer = await token(kubectl, "web", "--audience", "istio-ca", "-n", "shop")
    await kubectl.run("delete", "serviceaccount", "web", "-n", "shop")
    with pytest.raises(grpc.RpcError) as caught:
        await create(serve_kube, openssl_csr(tmp_path, uri=IDENTITY), bearer)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_token_review_unreachable_is_unavailable(
    serve_kube: Running, kubesim: KubeSim, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    bearer = await token(kubectl, "web", "--audience", "istio-ca", "-n", "shop")
    csr = openssl_csr(tmp_path, uri=IDENTITY)
    fault = kubesim.inject_faults(status=503, count=1000, path_prefix="/apis/authentication.k8s.io/v1/tokenreviews")
    with pytest.raises(grpc.RpcError) as caught:
        await create(serve_kube, csr, bearer)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "503" in str(caught.value.details())
    code, details = await asyncio.to_thread(_ads_status, serve_kube, bearer)  # a secure xDS stream: retry too
    assert code == grpc.StatusCode.UNAVAILABLE and "503" in details, (code, details)
    fault.count = 0
    await kubesim.stop()  # the API server is gone altogether
    with pytest.raises(grpc.RpcError) as caught:
        await create(serve_kube, csr, bearer)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "unreachable" in str(caught.value.details())


async def test_a_plugin_cacerts_secret_makes_serve_sign_as_that_intermediate(
    kubeconfig: pathlib.Path, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    operator = tmp_path / "operator"
    write_cacerts(operator)
    await kubectl.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n"
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: shop}\n"
    )
    files = [
        f"--from-file={operator / name}" for name in ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")
    ]
    await kubectl.run("create", "secret", "generic", "cacerts", "-n", CP_NS, *files)
    running = await start(kubeconfig, tmp_path / "serve")
    try:
        bearer = await token(kubectl, "web", "--audience", "istio-ca", "-n", "shop")
        chain = await create(running, openssl_csr(tmp_path, uri=IDENTITY), bearer)
        assert len(chain) == 3  # leaf, intermediate, root
        assert "Issuer: O = intermediate" in openssl_text(chain[0])
        assert "OK" in openssl_verify(tmp_path, ca_file=operator / "root-cert.pem", chain=chain)
        assert running.root_cert.read_bytes() == (operator / "root-cert.pem").read_bytes()
        assert (await kubectl.run("get", "secret", "istio-ca-secret", "-n", CP_NS, check=False)).returncode != 0
    finally:
        await asyncio.to_thread(running.stop)


async def root_configmap(kubectl: Kubectl, namespace: str) -> dict[str, str] | None:
    """The data of `istio-ca-root-cert` in `namespace` if it carries the istio.io/config label, else None."""
    found = await kubectl.run("get", "configmap", ROOT_CM, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    obj = json.loads(found.stdout)
    if (obj["metadata"].get("labels") or {}).get("istio.io/config") != "true":
        return None
    data: dict[str, str] = obj.get("data") or {}
    return data


async def test_istio_ca_root_cert_is_kept_in_every_namespace_but_the_ignored_ones(
    serve_kube: Running, kubectl: Kubectl
) -> None:
    root = serve_kube.root_cert.read_text()
    expected = {"root-cert.pem": root}

    async def holds_root(namespace: str) -> bool:
        return await root_configmap(kubectl, namespace) == expected

    for namespace in ("default", "kube-system", CP_NS, "shop"):
        await eventually(lambda ns=namespace: holds_root(ns), what=f"{ROOT_CM} in {namespace}")
    await kubectl.run("create", "namespace", "late")
    await eventually(lambda: holds_root("late"), what=f"{ROOT_CM} in a namespace created after start")

    await kubectl.run("delete", "configmap", ROOT_CM, "-n", "late")
    await eventually(lambda: holds_root("late"), what=f"{ROOT_CM} recreated after kubectl delete")

    await kubectl.run(
        "patch", "configmap", ROOT_CM, "-n", "late", "--type=merge", "-p", '{"data":{"root-cert.pem":"x"}}'
    )
    await eventually(lambda: holds_root("late"), what=f"{ROOT_CM} restored after an edit")
    await kubectl.run("label", "configmap", ROOT_CM, "-n", "late", "istio.io/config-", "team=a")
    await eventually(lambda: holds_root("late"), what=f"{ROOT_CM} label restored")
    labels = (await kubectl.json("get", "configmap", ROOT_CM, "-n", "late"))["metadata"]["labels"]
    assert labels == {"istio.io/config": "true", "team": "a"}  # other labels are kept

    for ignored in ("kube-public", "kube-node-lease"):
        assert (await kubectl.run("get", "configmap", ROOT_CM, "-n", ignored, check=False)).returncode != 0


Outcome = tuple[grpc.StatusCode, str]


def _flood(running: Running, csr: str, tokens: list[str], target: str | None = None) -> list[Outcome]:
    """One concurrent CreateCertificate call per token; each call's status and details."""

    async def flood() -> list[Outcome]:
        credentials = grpc.ssl_channel_credentials(running.root_cert.read_bytes())
        options = [("grpc.ssl_target_name_override", SERVER_NAME)]
        address = target or running.addr("secure-grpc")
        async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]

            async def one(token: str) -> Outcome:
                metadata = [("authorization", f"Bearer {token}")]
                try:
                    await stub.CreateCertificate(ca_pb2.IstioCertificateRequest(csr=csr), metadata=metadata, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), exc.details() or ""
                return grpc.StatusCode.OK, ""

            return list(await asyncio.gather(*(one(t) for t in tokens)))

    return asyncio.run(flood())


def _reviews(kubesim: KubeSim) -> int:
    return sum(1 for method, path in kubesim.requests if method == "POST" and path.endswith("/tokenreviews"))


async def test_forged_tokens_from_any_number_of_clients_cost_the_api_server_no_review(
    serve_kube: Running, kubesim: KubeSim, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    """Tokens of a JWT's shape that the cluster did not sign used to cost one TokenReview each (then
    BURST per client address, whatever the number of addresses). The CA now checks them against the
    cluster's service-account issuer keys (`/openid/v1/jwks`) and refuses them without a review. A
    made-up key id makes it fetch the keys again once; until it may fetch again (30 s), later ones are
    answered UNAVAILABLE, since a key the cluster just began to sign with would look the same."""
    bearer = await token(kubectl, "web", "--audience", "istio-ca", "-n", "shop")
    csr = openssl_csr(tmp_path, uri=IDENTITY)
    await create(serve_kube, csr, bearer)  # the keys are in place once a real token went through
    before = _reviews(kubesim)
    forged = [shaped_token(f"system:serviceaccount:shop:web-{n}", exp=time.time() + 3600) for n in range(200)]
    named = json.loads(base64.urlsafe_b64decode(bearer.split(".")[0] + "=="))["kid"]
    same_kid = [
        shaped_token(f"system:serviceaccount:shop:web-{n}", exp=time.time() + 3600, kid=named) for n in range(200)
    ]
    results = await asyncio.to_thread(_flood, serve_kube, csr, forged)
    async with Relay(target_port=serve_kube.ports["secure-grpc"], source="127.0.0.2") as relay:
        results += await asyncio.to_thread(_flood, serve_kube, csr, same_kid, relay.address)
        stream = await asyncio.to_thread(_ads_status, serve_kube, forged[0], relay.address)
    # calls that shared the fetch their unknown key id started are refused; later ones are asked to retry
    refused = {
        grpc.StatusCode.UNAUTHENTICATED: "the cluster publishes no such key",
        grpc.StatusCode.UNAVAILABLE: "retry then",
    }
    assert all(refused[code] in details for code, details in results[:200]), {code for code, _ in results[:200]}
    assert refused[stream[0]] in stream[1], stream  # after the fetch: UNAVAILABLE unless 30 s passed
    assert {code for code, _ in results[200:]} == {grpc.StatusCode.UNAUTHENTICATED}
    assert "the signature does not verify" in results[-1][1]
    assert _reviews(kubesim) == before
    jwks = sum(1 for method, path in kubesim.requests if (method, path) == ("GET", "/openid/v1/jwks"))
    assert jwks <= 2, jwks  # at start, and once more for the unknown key id (then at most every 30 s)
    assert leaf_uris((await create(serve_kube, csr, bearer))[0]) == [IDENTITY]  # the real token still works


async def test_a_flood_of_revoked_tokens_from_one_client_costs_the_api_server_a_bounded_number_of_reviews(
    serve_kube: Running, kubesim: KubeSim, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    """A token the cluster signed is reviewed, and a revoked one (its service account deleted) fails its
    review every time: each used to cost a TokenReview; now one client gets BURST failed reviews, then
    RESOURCE_EXHAUSTED. Concurrent requests with the token share a review in flight, so the API server
    sees fewer still. A client is the address and, the token being verified with the cluster's keys, its
    service account: a workload of another service account at the same address (SNAT, host network) is
    not held back, nor is one at another address."""
    await kubectl.run("create", "serviceaccount", "gone", "-n", "shop")
    revoked = await token(kubectl, "gone", "--audience", "istio-ca", "-n", "shop")
    another_revoked = await token(kubectl, "gone", "--audience", "istio-ca", "-n", "shop")
    await kubectl.run("delete", "serviceaccount", "gone", "-n", "shop")
    bearer = await token(kubectl, "web", "--audience", "istio-ca", "-n", "shop")
    csr = openssl_csr(tmp_path, uri=IDENTITY)

    before, started = _reviews(kubesim), time.monotonic()
    codes = [code for code, _ in await asyncio.to_thread(_flood, serve_kube, csr, [revoked] * 400)]
    refilled = int((time.monotonic() - started) / REFILL_S) + 1  # one more per REFILL_S while it lasts
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) <= BURST + refilled
    assert 1 <= _reviews(kubesim) - before <= BURST + refilled
    # The flooding client must wait, whichever of its tokens it brings; the message says why and for how
    # long. Nor can it pass for another address with x-forwarded-for, which the front end's Envoy would
    # otherwise take as the client's address: a fresh budget per header value.
    reviews = _reviews(kubesim)
    for headers in ({}, {"x-forwarded-for": "198.51.100.7"}, {"x-forwarded-for": "198.51.100.8, 198.51.100.9"}):
        with pytest.raises(grpc.RpcError) as caught:
            await create(serve_kube, csr, another_revoked, **headers)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (headers, caught.value.details())
        details = str(caught.value.details())
        assert "too many failed token reviews from client 127.0.0.1 as system:serviceaccount:shop:gone" in details
    code, details = await asyncio.to_thread(_ads_status, serve_kube, another_revoked)  # its xDS streams alike
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert _reviews(kubesim) == reviews
    # Another service account at the same address gets its certificate and its configuration at once,
    # and so does a workload at another address.
    assert leaf_uris((await create(serve_kube, csr, bearer))[0]) == [IDENTITY]
    assert (await asyncio.to_thread(_ads_status, serve_kube, bearer))[0] == grpc.StatusCode.OK
    async with Relay(target_port=serve_kube.ports["secure-grpc"], source="127.0.0.2") as relay:
        chain = await create(serve_kube, csr, bearer, target=relay.address)
        assert (await asyncio.to_thread(_ads_status, serve_kube, bearer, relay.address))[0] == grpc.StatusCode.OK
    assert leaf_uris(chain[0]) == [IDENTITY]


def _repeat(running: Running, csr: str, bearer: str, count: int) -> list[grpc.StatusCode]:
    """`count` CreateCertificate calls one after another over one channel, all with `bearer`."""
    credentials = grpc.ssl_channel_credentials(running.root_cert.read_bytes())
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    codes = []
    with grpc.secure_channel(running.addr("secure-grpc"), credentials, options=options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
        for _ in range(count):
            try:
                stub.CreateCertificate(
                    ca_pb2.IstioCertificateRequest(csr=csr),
                    metadata=[("authorization", f"Bearer {bearer}")],
                    timeout=30,
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
    return codes


async def test_a_workload_repeating_its_valid_token_costs_one_review_per_10_seconds(
    serve_kube: Running, kubesim: KubeSim, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    """A valid token never fails a review, so the review gate never stops it: each request used to cost
    a TokenReview. Now an accepted token is not reviewed again for REVIEW_TTL_S, on the CA and on xDS."""
    bearer = await token(kubectl, "web", "--audience", "istio-ca", "-n", "shop")
    csr = openssl_csr(tmp_path, uri=IDENTITY)
    before, started = _reviews(kubesim), time.monotonic()
    codes = await asyncio.to_thread(_repeat, serve_kube, csr, bearer, 150)
    assert codes == [grpc.StatusCode.OK] * 150
    assert (await asyncio.to_thread(_ads_status, serve_kube, bearer))[0] == grpc.StatusCode.OK
    windows = int((time.monotonic() - started) / REVIEW_TTL_S) + 1
    reviews = _reviews(kubesim) - before
    assert 1 <= reviews <= windows, (reviews, windows)


def _ads_status(running: Running, bearer: str, target: str | None = None) -> tuple[grpc.StatusCode, str]:
    """Open a secure ADS stream as shop/web and ask for clusters: OK once a response came, else the status."""
    node = base_pb2.Node(id="sidecar~10.1.1.1~web-1.shop~shop.svc.cluster.local")
    node.metadata.update({"NAMESPACE": "shop", "SERVICE_ACCOUNT": "web"})
    request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node)
    credentials = grpc.ssl_channel_credentials(running.root_cert.read_bytes())
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    with grpc.secure_channel(target or running.addr("secure-grpc"), credentials, options=options) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)  # type: ignore[no-untyped-call]
        responses = stub.StreamAggregatedResources(
            iter([request]), metadata=[("authorization", f"Bearer {bearer}")], timeout=10
        )
        try:
            next(responses)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        responses.cancel()
        return grpc.StatusCode.OK, ""
