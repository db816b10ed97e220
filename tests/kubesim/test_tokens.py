"""TokenRequest and TokenReview: `kubectl create token` issues, TokenReview judges like the API server."""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.fixtures import Kubectl, KubectlError
from tests.kubesim.server import KubeSim
from tests.kubesim.tokens import ISSUER, Account, ServiceAccountTokens


class Clock:
    """A settable clock for kubesim (tokens expire when the test says so)."""

    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(name="kubesim")
async def clocked_kubesim(clock: Clock) -> AsyncIterator[KubeSim]:
    sim = KubeSim(window=1000, bookmark_interval=0.2, clock=clock)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
async def shop(kubectl: Kubectl) -> None:
    await kubectl.run("create", "namespace", "shop")
    await kubectl.run("create", "serviceaccount", "web", "-n", "shop")


async def review(api: KubeApi, token: str, audiences: list[str]) -> dict[str, Any]:
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    }
    answer = await api.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=body)
    assert answer["kind"] == "TokenReview"
    status: dict[str, Any] = answer["status"]
    return status


async def create_token(kubectl: Kubectl, *args: str) -> str:
    return (await kubectl.run("create", "token", *args)).stdout.strip()


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


@pytest.mark.usefixtures("shop")
async def test_kubectl_create_token_issues_a_token_for_the_service_account(kubectl: Kubectl) -> None:
    token = await create_token(kubectl, "web", "--audience", "istio-ca", "-n", "shop", "--duration", "20m")
    claims = claims_of(token)
    assert claims["sub"] == "system:serviceaccount:shop:web"
    assert claims["aud"] == ["istio-ca"]
    assert claims["exp"] - claims["iat"] == 1200
    assert claims["kubernetes.io"]["serviceaccount"]["name"] == "web"


@pytest.mark.usefixtures("shop")
async def test_token_request_answers_201_with_expiration_and_default_audience(kube_api: KubeApi, clock: Clock) -> None:
    answer = await kube_api.request("POST", "/api/v1/namespaces/shop/serviceaccounts/web/token", body={"spec": {}})
    assert answer["kind"] == "TokenRequest"
    assert answer["spec"]["expirationSeconds"] == 3600
    assert answer["spec"]["audiences"] == ["https://kubernetes.default.svc.cluster.local"]
    expires = datetime.datetime.strptime(answer["status"]["expirationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(expires.replace(tzinfo=datetime.UTC) - (clock.now + datetime.timedelta(hours=1))).total_seconds() < 2


@pytest.mark.usefixtures("shop")
async def test_token_for_a_missing_service_account_is_404(kubectl: Kubectl) -> None:
    with pytest.raises(KubectlError, match='serviceaccounts "nope" not found'):
        await create_token(kubectl, "nope", "-n", "shop")


@pytest.mark.usefixtures("shop")
async def test_token_request_shorter_than_ten_minutes_is_invalid_naming_the_field(kube_api: KubeApi) -> None:
    with pytest.raises(KubeApiError) as caught:
        await kube_api.request(
            "POST", "/api/v1/namespaces/shop/serviceaccounts/web/token", body={"spec": {"expirationSeconds": 60}}
        )
    assert caught.value.status == 422
    assert "spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes" in str(
        caught.value
    )


@pytest.mark.usefixtures("shop")
async def test_the_service_account_is_read_before_the_token_request_is_checked(kube_api: KubeApi) -> None:
    """`TokenREST.Create` gets the ServiceAccount before it validates the request: a missing one is 404 and a
    name no storage key can hold 400, whatever is wrong with the spec."""
    body = {"spec": {"expirationSeconds": 60}}
    for name, status in (("nope", 404), ("a%25b", 400)):
        with pytest.raises(KubeApiError) as caught:
            await kube_api.request("POST", f"/api/v1/namespaces/shop/serviceaccounts/{name}/token", body=body)
        assert caught.value.status == status


@pytest.mark.usefixtures("shop")
async def test_review_of_a_valid_token_names_the_service_account(kubectl: Kubectl, kube_api: KubeApi) -> None:
    token = await create_token(kubectl, "web", "--audience", "istio-ca", "--audience", "other", "-n", "shop")
    status = await review(kube_api, token, ["istio-ca"])
    assert status["authenticated"] is True
    assert status["user"]["username"] == "system:serviceaccount:shop:web"
    assert "system:serviceaccounts:shop" in status["user"]["groups"]
    assert status["audiences"] == ["istio-ca"]
    sa = await kube_api.request("GET", "/api/v1/namespaces/shop/serviceaccounts/web")
    assert status["user"]["uid"] == sa["metadata"]["uid"]


@pytest.mark.usefixtures("shop")
async def test_review_of_an_expired_token_is_unauthenticated(kubectl: Kubectl, kube_api: KubeApi, clock: Clock) -> None:
    token = await create_token(kubectl, "web", "--audience", "istio-ca", "-n", "shop", "--duration", "10m")
    clock.now += datetime.timedelta(minutes=9)
    assert (await review(kube_api, token, ["istio-ca"]))["authenticated"] is True
    clock.now += datetime.timedelta(minutes=3)
    status = await review(kube_api, token, ["istio-ca"])
    assert "authenticated" not in status
    assert "service account token has expired" in status["error"]


@pytest.mark.usefixtures("shop")
async def test_review_with_no_common_audience_is_unauthenticated(kubectl: Kubectl, kube_api: KubeApi) -> None:
    token = await create_token(kubectl, "web", "--audience", "other", "-n", "shop")
    status = await review(kube_api, token, ["istio-ca"])
    assert status.get("authenticated") is not True
    assert 'token audiences ["other"] is invalid for the target audiences ["istio-ca"]' in status["error"]


@pytest.mark.usefixtures("shop")
async def test_review_of_a_forged_token_is_unauthenticated(
    kubesim: KubeSim, kubectl: Kubectl, kube_api: KubeApi, clock: Clock
) -> None:
    genuine = await create_token(kubectl, "web", "--audience", "istio-ca", "-n", "shop")
    header, _, signature = genuine.split(".")
    # Claims widened to another service account, signature kept: the signature no longer matches.
    claims = claims_of(genuine)
    claims["sub"] = "system:serviceaccount:shop:admin"
    tampered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    # A token minted by another key with the same kid and claims.
    impostor = ServiceAccountTokens(clock=clock)
    impostor.kid = kubesim.tokens.kid
    sa = kubesim.get_object("serviceaccounts", "shop", "web")
    assert sa is not None
    account = Account(namespace="shop", name="web", uid=sa["metadata"]["uid"])
    other_key = impostor.issue(account, audiences=["istio-ca"], expiration_seconds=3600).token
    for forged in (f"{header}.{tampered}.{signature}", other_key, "not-a-jwt"):
        status = await review(kube_api, forged, ["istio-ca"])
        assert status.get("authenticated") is not True, forged
        assert "invalid bearer token" in status["error"]


@pytest.mark.usefixtures("shop")
async def test_review_after_the_service_account_is_deleted_is_unauthenticated(
    kubectl: Kubectl, kube_api: KubeApi
) -> None:
    token = await create_token(kubectl, "web", "--audience", "istio-ca", "-n", "shop")
    await kubectl.run("delete", "serviceaccount", "web", "-n", "shop")
    status = await review(kube_api, token, ["istio-ca"])
    assert status.get("authenticated") is not True
    assert "service account shop/web has been deleted" in status["error"]
    # A new account of the same name does not revive the old token (its uid differs).
    await kubectl.run("create", "serviceaccount", "web", "-n", "shop")
    status = await review(kube_api, token, ["istio-ca"])
    assert status.get("authenticated") is not True
    assert "does not match the current one" in status["error"]


async def test_review_without_a_token_is_a_bad_request(kube_api: KubeApi) -> None:
    with pytest.raises(KubeApiError) as caught:
        await kube_api.request(
            "POST", "/apis/authentication.k8s.io/v1/tokenreviews", body={"kind": "TokenReview", "spec": {}}
        )
    assert caught.value.status == 400 and "token is required" in caught.value.message


async def test_discovery_lists_token_requests_and_token_reviews(kubectl: Kubectl) -> None:
    listed = (await kubectl.run("api-resources", "--api-group=authentication.k8s.io")).stdout
    assert "tokenreviews" in listed
    core = json.loads((await kubectl.run("get", "--raw", "/api/v1")).stdout)
    token = next(r for r in core["resources"] if r["name"] == "serviceaccounts/token")
    assert token["kind"] == "TokenRequest" and token["verbs"] == ["create"]


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.usefixtures("shop")
async def test_issuer_discovery_publishes_the_key_that_verifies_its_tokens(kubectl: Kubectl) -> None:
    """Service-account issuer discovery, as `kubectl get --raw` reads it from a real API server."""
    token = await create_token(kubectl, "web", "--audience", "istio-ca", "-n", "shop")
    config = json.loads((await kubectl.run("get", "--raw", "/.well-known/openid-configuration")).stdout)
    assert config["issuer"] == claims_of(token)["iss"] == ISSUER
    assert config["jwks_uri"] == f"{ISSUER}/openid/v1/jwks"
    (key,) = json.loads((await kubectl.run("get", "--raw", "/openid/v1/jwks")).stdout)["keys"]
    head, payload, signature = token.split(".")
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    assert key["kid"] == json.loads(_unb64(head))["kid"]
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(_unb64(key["x"]), "big"), int.from_bytes(_unb64(key["y"]), "big"), ec.SECP256R1()
    )
    raw = _unb64(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    numbers.public_key().verify(der, f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if not
