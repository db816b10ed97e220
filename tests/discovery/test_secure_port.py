"""ADS on the shared TLS gRPC server: the client certificate's SPIFFE identity must match the node."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from certs.authority import Authority, self_signed_root
from certs.pem import cert_pem, generate_key, key_pem
from certs.serving import ServingCertificate
from controlplane.grpcserver import GrpcServers
from controlplane.model.registry import Registry
from controlplane.model.store import ConfigStore
from controlplane.settings import Address
from discovery.server import AdsServer
from discovery.service import DiscoveryService
from discovery.xdstypes import CLUSTER
from tests.discovery.harness import first_sotw_response, node

SERVER_NAME = "istiod.istio-system.svc"


@dataclass
class Secure:
    authority: Authority
    port: int

    def channel(self, identity: str | None, *, token: str | None = None) -> grpc.aio.Channel:
        if identity is None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.authority.root_pem)
        else:
            key = generate_key("ecdsa-p256")
            chain = self.authority.issue(public_key=key.public_key(), ttl=dt.timedelta(hours=1), uris=(identity,))
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.authority.root_pem,
                private_key=key_pem(key),
                certificate_chain=b"".join(cert_pem(c) for c in chain),
            )
        if token is not None:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}", creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        )


def authority() -> Authority:
    key = generate_key("ecdsa-p256")
    root = self_signed_root(key, org="cluster.local")
    return Authority(key=key, cert=root, roots=(root,))


def service() -> DiscoveryService:
    return DiscoveryService(Registry(ConfigStore()), debounce_quiet=0, debounce_max=0)


@pytest.fixture
async def mtls() -> AsyncIterator[Secure]:
    """A TLS server that requires client certificates, with the default (certificate) identification."""
    ca = authority()
    serving = ServingCertificate(ca, hosts=(SERVER_NAME,))
    server = grpc.aio.server()
    AdsServer(service(), secure=True).register(server)
    creds = grpc.ssl_server_credentials(
        [(serving.key_pem, serving.chain_pem())], root_certificates=ca.root_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield Secure(ca, port)
    finally:
        await server.stop(0)


async def bearer_identities(context: grpc.aio.ServicerContext[Any, Any]) -> Sequence[str]:
    """A stand-in token authenticator: the bearer token is the identity itself."""
    metadata = dict(context.invocation_metadata() or ())
    header = str(metadata.get("authorization", ""))
    return [header.removeprefix("Bearer ")] if header.startswith("Bearer spiffe://") else []


@pytest.fixture
async def shared() -> AsyncIterator[Secure]:
    """The process's shared TLS gRPC server with an injected token identification."""
    ca = authority()
    servers = GrpcServers(
        plaintext_addr=None,
        secure_addr=Address(host="127.0.0.1", port=0),
        serving=ServingCertificate(ca, hosts=(SERVER_NAME,)),
    )
    servers.add(AdsServer(service(), secure=True, identify=bearer_identities).register, plaintext=False, secure=True)
    await servers.start()
    try:
        assert servers.front is not None
        yield Secure(ca, servers.front.port)
    finally:
        await servers.stop(0)


async def first_response(open_channel: Callable[[], grpc.aio.Channel]) -> object:
    return await first_sotw_response(open_channel, node(pod="app-1", ns="shop", SERVICE_ACCOUNT="app"), CLUSTER)


async def test_certificate_with_the_node_identity_gets_config(mtls: Secure) -> None:
    response = await first_response(lambda: mtls.channel("spiffe://cluster.local/ns/shop/sa/app"))
    assert response.type_url == CLUSTER  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "identity",
    ["spiffe://cluster.local/ns/shop/sa/other", "spiffe://cluster.local/ns/other/sa/app"],
)
async def test_certificate_of_another_workload_is_permission_denied(mtls: Secure, identity: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first_response(lambda: mtls.channel(identity))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "does not match" in (caught.value.details() or "")


async def test_token_identity_on_the_shared_server(shared: Secure) -> None:
    ok = await first_response(lambda: shared.channel(None, token="spiffe://cluster.local/ns/shop/sa/app"))
    assert ok.type_url == CLUSTER  # type: ignore[attr-defined]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first_response(lambda: shared.channel(None, token="spiffe://cluster.local/ns/shop/sa/intruder"))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_no_credentials_is_unauthenticated(shared: Secure) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first_response(lambda: shared.channel(None))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_the_secure_port_authenticates_before_it_parses_the_node(shared: Secure) -> None:
    """A caller without credentials is refused before its (malformed, oversized) node costs anything."""
    bad_node = node(INSTANCE_IPS="not-an-address", LABELS={"k": "v" * 100_000})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first_sotw_response(lambda: shared.channel(None), bad_node, CLUSTER)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
