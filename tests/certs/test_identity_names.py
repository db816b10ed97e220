"""The CA over the real gRPC+TLS port refuses identities that are not exactly the caller's: bad
Kubernetes names (a trailing newline, ...) from a token, a CSR or a client certificate; identities
that merely start with the caller's; validly signed tokens without the `istio-ca` audience."""

from __future__ import annotations

import datetime as dt
import pathlib
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authenticate.kubejwt import TokenReview
from certs.authenticate.localtoken import key_id
from certs.pem import chain_pem, generate_key, key_pem
from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.certs import test_service_grpc as grpc_ca
from tests.certs.fakes import T
from tests.certs.helpers import ES256, leaf_uris, make_csr, signed, spiffe
from tests.helpers.serve import meshplane_cmd

ca_server = grpc_ca.ca_server
CaServer, ServerFactory, ME = grpc_ca.CaServer, grpc_ca.ServerFactory, grpc_ca.ME
NEWLINE_ID = "spiffe://cluster.local/ns/shop\n/sa/cart"


def signed_token(key: ec.EllipticCurvePrivateKey, claims: dict[str, Any]) -> str:
    """An ES256 JWT with exactly `claims`, signed by `key` (the CA's own token key: a valid signature)."""
    return signed(key, {**ES256, "kid": key_id(key.public_key())}, claims)


def claims(*, sub: str = "system:serviceaccount:shop:cart", **extra: Any) -> dict[str, Any]:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    return {"iss": "meshplane-local", "sub": sub, "iat": now, "nbf": now, "exp": now + 600, **extra}


async def refused(server: CaServer, csr: str, **kwargs: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.call(csr, **kwargs)
    return caught.value


# -- bad names, from each way an identity reaches the CA ------------------------------------------


async def test_a_csr_asking_for_an_identity_with_a_newline_is_invalid(ca_server: ServerFactory) -> None:
    server = await ca_server()
    error = await refused(server, make_csr(uris=[NEWLINE_ID])[0], token=server.token())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "csr: URI SAN namespace: 'shop\\n' is not a DNS-1123 label" in (error.details() or "")


@pytest.mark.parametrize(
    ("uri", "text"),
    [
        ("spiffe://cluster.local/ns/Shop/sa/cart", "'Shop' is not a DNS-1123 label"),
        ("spiffe://cluster.local/ns/shop/sa/-cart", "'-cart' is not a DNS-1123 subdomain"),
        ("spiffe://cluster.local/ns/shop/sa/cart/extra", "is not spiffe://<trust-domain>/ns/<namespace>/sa/"),
        ("https://cluster.local/ns/shop/sa/cart", "is not spiffe://<trust-domain>/ns/<namespace>/sa/"),
        ("spiffe://cluster.local\n/ns/shop/sa/cart", "trust domain 'cluster.local\\n'"),
    ],
)
async def test_a_csr_asking_for_a_malformed_identity_is_invalid(ca_server: ServerFactory, uri: str, text: str) -> None:
    server = await ca_server()
    error = await refused(server, make_csr(uris=[uri])[0], token=server.token())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in (error.details() or "")


@pytest.mark.parametrize(
    ("sub", "text"),
    [
        ("system:serviceaccount:shop\n:cart", "namespace: 'shop\\n' is not a DNS-1123 label"),
        ("system:serviceaccount:shop:cart\n", "service account: 'cart\\n' is not a DNS-1123 subdomain"),
        ("system:serviceaccount:" + "s" * 64 + ":cart", "namespace: '" + "s" * 64 + "' is not a DNS-1123 label"),
        ("system:serviceaccount::cart", "namespace: '' is not a DNS-1123 label"),
    ],
)
async def test_a_validly_signed_token_with_a_bad_name_in_its_subject_is_unauthenticated(
    ca_server: ServerFactory, sub: str, text: str
) -> None:
    server = await ca_server()
    token = signed_token(server.token_key, claims(sub=sub, aud=["istio-ca"]))
    error = await refused(server, make_csr()[0], token=token)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"token subject: {text}" in (error.details() or "")


async def test_a_reviewed_kubernetes_username_with_a_newline_is_unauthenticated(ca_server: ServerFactory) -> None:
    server = await ca_server(kube=True)
    server.reviewer.reviews[T] = TokenReview(
        authenticated=True, username="system:serviceaccount:shop\n:cart", audiences=("istio-ca",)
    )
    error = await refused(server, make_csr()[0], token=T)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "'shop\\n' is not a DNS-1123 label" in (error.details() or "")


@asynccontextmanager
async def mtls_stub(server: CaServer, identity: str) -> AsyncIterator[ca_pb2_grpc.IstioCertificateServiceStub]:
    """A CA stub whose TLS client certificate is a mesh-issued leaf naming `identity`.

    gRPC Python cannot ask for an optional client certificate, so this is a CA server that requires one.
    """
    key = generate_key()
    leaf = server.runtime.ca.current.issue(public_key=key.public_key(), ttl=dt.timedelta(hours=1), uris=(identity,))
    mtls = grpc.aio.server()
    server.runtime.service.register(mtls)
    creds = grpc.ssl_server_credentials(
        [(server.runtime.serving.key_pem, server.runtime.serving.chain_pem())],
        root_certificates=server.root_pem,
        require_client_auth=True,
    )
    port = mtls.add_secure_port("127.0.0.1:0", creds)
    await mtls.start()
    try:
        channel_creds = grpc.ssl_channel_credentials(server.root_pem, key_pem(key), chain_pem(leaf))
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", channel_creds, options=[("grpc.ssl_target_name_override", grpc_ca.SERVER_NAME)]
        ) as channel:
            yield ca_pb2_grpc.IstioCertificateServiceStub(channel)
    finally:
        await mtls.stop(0)


async def test_a_client_certificate_naming_an_identity_with_a_newline_is_unauthenticated(
    ca_server: ServerFactory,
) -> None:
    server = await ca_server()
    async with mtls_stub(server, NEWLINE_ID) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateCertificate(ca_pb2.IstioCertificateRequest(csr=make_csr()[0]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "client certificate URI SAN namespace: 'shop\\n'" in (caught.value.details() or "")


# -- an identity that merely starts with the caller's is not the caller's --------------------------

PREFIXED = [spiffe("shop", "cart-admin"), spiffe("shopping", "cart"), spiffe("shop", "cart.admin"), ME + "x"]


@pytest.mark.parametrize("asked", PREFIXED)
async def test_a_token_caller_cannot_get_an_identity_that_starts_with_its_own(
    ca_server: ServerFactory, asked: str
) -> None:
    server = await ca_server()
    error = await refused(server, make_csr(uris=[asked])[0], token=server.token())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"csr asks for identity {asked} but the caller is authenticated as {ME}" in (error.details() or "")


async def test_a_certificate_caller_cannot_get_an_identity_that_starts_with_its_own(ca_server: ServerFactory) -> None:
    server = await ca_server()
    async with mtls_stub(server, ME) as stub:
        for asked in PREFIXED:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateCertificate(ca_pb2.IstioCertificateRequest(csr=make_csr(uris=[asked])[0]), timeout=30)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, asked
        renewed = await stub.CreateCertificate(ca_pb2.IstioCertificateRequest(csr=make_csr(uris=[ME])[0]), timeout=30)
    assert leaf_uris(renewed.cert_chain[0]) == [ME]


# -- a token must be meant for the CA ---------------------------------------------------------------


@pytest.mark.parametrize("aud", [None, [], "", ["kubernetes"]], ids=["absent", "empty-list", "empty", "other"])
async def test_a_validly_signed_local_token_without_the_ca_audience_is_unauthenticated(
    ca_server: ServerFactory, aud: object
) -> None:
    server = await ca_server()
    token = signed_token(server.token_key, claims() if aud is None else claims(aud=aud))
    error = await refused(server, make_csr(uris=[ME])[0], token=token)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "does not include 'istio-ca'" in (error.details() or "")
    # The same claims with the audience do get a certificate: the refusal is for the audience alone.
    ok = signed_token(server.token_key, claims(aud="istio-ca"))
    assert leaf_uris((await server.call(make_csr(uris=[ME])[0], token=ok)).cert_chain[0]) == [ME]


async def test_a_tokenreview_granting_no_audience_is_unauthenticated(ca_server: ServerFactory) -> None:
    """An empty `status.audiences` means the token is only good for the API server itself."""
    server = await ca_server(kube=True)
    server.reviewer.reviews[T] = TokenReview(authenticated=True, username="system:serviceaccount:shop:cart")
    error = await refused(server, make_csr(uris=[ME])[0], token=T)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "do not include 'istio-ca'" in (error.details() or "")


# -- `meshplane token` --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "rule"),
    [
        ("--namespace", "shop\n", "DNS-1123 label"),
        ("--namespace", "Shop", "DNS-1123 label"),
        ("--namespace", "s" * 64, "DNS-1123 label"),
        ("--namespace", "-shop", "DNS-1123 label"),
        ("--namespace", "", "DNS-1123 label"),
        ("--namespace", "caf\u00e9", "DNS-1123 label"),
        ("--service-account", "cart\n", "DNS-1123 subdomain"),
        ("--service-account", "a:b", "DNS-1123 subdomain"),
    ],
    ids=["newline", "upper", "64", "leading-dash", "empty", "unicode", "sa-newline", "sa-colon"],
)
def test_meshplane_token_refuses_a_bad_name_with_exit_2(
    tmp_path: pathlib.Path, flag: str, value: str, rule: str
) -> None:
    names = {"--namespace": "shop", "--service-account": "cart", flag: value}
    args = [f"{name}={value}" for name, value in names.items()]
    result = subprocess.run(
        [*meshplane_cmd(), "token", "--state-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"{flag}: {value!r} is not a {rule}" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
