"""The secure gRPC port of a running `meshplane serve` asks for a client certificate without requiring
one: a mesh certificate authenticates the CA and secure xDS callers, a token works without one, and
a certificate from another authority is refused at the TLS handshake."""

from __future__ import annotations

import datetime as dt
import pathlib
import socket
import ssl
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509

from certs.pem import PrivateKey, cert_pem, key_pem
from discovery.xdstypes import CLUSTER
from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.certs.helpers import leaf_uris, make_csr, make_root, spiffe
from tests.certs.test_e2e_serve import token
from tests.discovery.harness import first_sotw_response, node
from tests.helpers.serve import SERVER_NAME, Running, start_serve

NS, SA = "shop", "cart"
ME = spiffe(NS, SA)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start_serve(tmp_path_factory.mktemp("serve"))
    try:
        yield running
    finally:
        running.stop()


def credentials(
    running: Running, *, key: PrivateKey | None = None, chain: list[str] | None = None
) -> grpc.ChannelCredentials:
    if key is None or chain is None:
        return grpc.ssl_channel_credentials(running.root_cert.read_bytes())
    return grpc.ssl_channel_credentials(
        running.root_cert.read_bytes(),
        private_key=key_pem(key),
        certificate_chain="".join(chain).encode(),
    )


def create(running: Running, csr: str, *, creds: grpc.ChannelCredentials, bearer: str | None = None) -> list[str]:
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    with grpc.secure_channel(running.addr("secure-grpc"), creds, options=options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
        metadata = [("authorization", f"Bearer {bearer}")] if bearer else []
        return list(
            stub.CreateCertificate(ca_pb2.IstioCertificateRequest(csr=csr), metadata=metadata, timeout=30).cert_chain
        )


def mesh_certificate(running: Running, identity_ns: str = NS, identity_sa: str = SA) -> tuple[PrivateKey, list[str]]:
    """A workload certificate from the CA, obtained with a token (as an agent's first request)."""
    csr, key = make_csr(uris=[spiffe(identity_ns, identity_sa)])
    bearer = token(running, "--namespace", identity_ns, "--service-account", identity_sa)
    return key, create(running, csr, creds=credentials(running), bearer=bearer)


def foreign_certificate(identity: str) -> tuple[PrivateKey, list[str]]:
    """A certificate for `identity` from an authority the mesh does not trust."""
    other = make_root()
    csr, key = make_csr(uris=[identity])
    leaf = other.issue(
        public_key=x509.load_pem_x509_csr(csr.encode()).public_key(), ttl=dt.timedelta(hours=1), uris=(identity,)
    )
    return key, [cert_pem(c).decode() for c in leaf]


def test_a_mesh_certificate_without_a_token_renews_the_same_identity(mesh: Running) -> None:
    key, chain = mesh_certificate(mesh)
    assert leaf_uris(chain[0]) == [ME]
    csr, _ = make_csr(uris=[ME])
    renewed = create(mesh, csr, creds=credentials(mesh, key=key, chain=chain))
    assert leaf_uris(renewed[0]) == [ME]
    assert renewed[0] != chain[0]


def test_a_mesh_certificate_cannot_ask_for_another_identity(mesh: Running) -> None:
    key, chain = mesh_certificate(mesh)
    csr, _ = make_csr(uris=[spiffe(NS, "admin")])
    with pytest.raises(grpc.RpcError) as caught:
        create(mesh, csr, creds=credentials(mesh, key=key, chain=chain))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_no_certificate_and_no_token_is_unauthenticated(mesh: Running) -> None:
    csr, _ = make_csr(uris=[ME])
    with pytest.raises(grpc.RpcError) as caught:
        create(mesh, csr, creds=credentials(mesh))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_a_certificate_from_another_authority_is_refused_at_the_handshake(
    mesh: Running, tmp_path: pathlib.Path
) -> None:
    key, chain = foreign_certificate(ME)
    csr, _ = make_csr(uris=[ME])
    bearer = token(mesh, "--namespace", NS, "--service-account", SA)
    with pytest.raises(grpc.RpcError) as caught:
        create(mesh, csr, creds=credentials(mesh, key=key, chain=chain), bearer=bearer)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

    # The same with a plain TLS client: the server drops the connection mid-handshake (TLS 1.2, so the
    # client is still handshaking; with TLS 1.3 it would notice on its first read).
    (tmp_path / "cert.pem").write_text("".join(chain))
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    ctx = ssl.create_default_context(cafile=str(mesh.root_cert))
    ctx.set_alpn_protocols(["h2"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    host, port = mesh.addr("secure-grpc").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as raw, pytest.raises((ssl.SSLError, ConnectionError)):
        ctx.wrap_socket(raw, server_hostname=SERVER_NAME)


async def first_xds_response(running: Running, creds: grpc.ChannelCredentials, *, sa: str = SA) -> object:
    def open_channel() -> grpc.aio.Channel:
        options = [("grpc.ssl_target_name_override", SERVER_NAME)]
        return grpc.aio.secure_channel(running.addr("secure-grpc"), creds, options=options)

    return await first_sotw_response(open_channel, node(pod="cart-1", ns=NS, SERVICE_ACCOUNT=sa), CLUSTER)


async def test_secure_xds_serves_a_stream_whose_certificate_matches_the_node(mesh: Running) -> None:
    key, chain = mesh_certificate(mesh)
    response = await first_xds_response(mesh, credentials(mesh, key=key, chain=chain))
    assert response.type_url == CLUSTER  # type: ignore[attr-defined]


async def test_secure_xds_denies_a_stream_whose_certificate_names_another_service_account(mesh: Running) -> None:
    key, chain = mesh_certificate(mesh, NS, "intruder")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first_xds_response(mesh, credentials(mesh, key=key, chain=chain))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "does not match" in (caught.value.details() or "")


async def test_secure_xds_without_certificate_or_token_is_unauthenticated(mesh: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first_xds_response(mesh, credentials(mesh))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
