"""The CA over the real wire: gRPC+TLS on the shared secure server, every bad input's status code,
and its counters. (The end-to-end tests in test_e2e_serve.py do the same against `meshplane serve`.)"""

from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certs import metrics
from certs.authenticate import Authenticator
from certs.authenticate.kubejwt import KubeJwtAuthenticator, TokenReview
from certs.authenticate.localtoken import LocalTokenAuthenticator, load_or_create_key, mint
from certs.keystore import FileKeyStore
from certs.pem import generate_key, key_pem
from certs.runtime import CaRuntime, build_ca
from certs.service import METHOD_PATH
from controlplane.grpcserver import GrpcServers
from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.certs.fakes import FakeTokenReviewer, shaped_token
from tests.certs.helpers import leaf_uris, make_csr, openssl_verify, rsa_key, spiffe, start_ca_servers, tamper_signature

SERVER_NAME = "istiod.istio-system.svc"
ME = spiffe("shop", "cart")


@dataclasses.dataclass
class CaServer:
    runtime: CaRuntime
    servers: GrpcServers
    token_key: ec.EllipticCurvePrivateKey
    reviewer: FakeTokenReviewer
    tmp: pathlib.Path

    @property
    def root_pem(self) -> bytes:
        return self.runtime.ca.current.root_pem

    def token(self, *, namespace: str = "shop", service_account: str = "cart", **kw: object) -> str:
        return mint(key=self.token_key, namespace=namespace, service_account=service_account, **kw)  # type: ignore[arg-type]

    async def call(
        self,
        csr: str,
        *,
        token: str | None = None,
        ttl: int = 0,
        plaintext: bool = False,
        extra_metadata: Sequence[tuple[str, str]] = (),
    ) -> ca_pb2.IstioCertificateResponse:
        metadata = [("authorization", f"Bearer {token}")] if token else []
        metadata += list(extra_metadata)
        async with self.channel(plaintext=plaintext) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            request = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=ttl)
            return await stub.CreateCertificate(request, metadata=metadata, timeout=30)

    async def call_raw(self, request: bytes, *, token: str | None = None) -> ca_pb2.IstioCertificateResponse:
        """Send `request` as it is: bytes no message type would write."""
        metadata = [("authorization", f"Bearer {token}")] if token else []
        async with self.channel() as channel:
            call = channel.unary_unary(
                METHOD_PATH,
                request_serializer=lambda raw: raw,
                response_deserializer=ca_pb2.IstioCertificateResponse.FromString,
            )
            return await call(request, metadata=metadata, timeout=30)

    def channel(self, *, plaintext: bool = False) -> grpc.aio.Channel:
        if plaintext:
            return grpc.aio.insecure_channel(f"127.0.0.1:{self.servers.plaintext_port}")
        assert self.servers.front is not None
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.servers.front.port}",
            grpc.ssl_channel_credentials(self.root_pem),
            options=[("grpc.ssl_target_name_override", SERVER_NAME)],
        )


ServerFactory = Callable[..., Awaitable[CaServer]]


@pytest.fixture
async def ca_server(tmp_path: pathlib.Path) -> AsyncIterator[ServerFactory]:
    """Start the CA on the shared gRPC servers (TLS + plaintext) on loopback; `kube=True` adds TokenReview auth."""
    started: list[GrpcServers] = []

    async def start(*, kube: bool = False) -> CaServer:
        token_key = load_or_create_key(tmp_path)
        reviewer = FakeTokenReviewer()
        authenticators: list[Authenticator] = [
            KubeJwtAuthenticator(reviewer=reviewer, trust_domain="cluster.local", cluster_id="Kubernetes")
            if kube
            else LocalTokenAuthenticator(public_key=token_key.public_key(), trust_domain="cluster.local")
        ]
        runtime = await build_ca(
            store=FileKeyStore(tmp_path / "ca"), serving_hosts=(SERVER_NAME,), authenticators=authenticators
        )
        servers = await start_ca_servers(runtime)
        started.append(servers)
        return CaServer(runtime=runtime, servers=servers, token_key=token_key, reviewer=reviewer, tmp=tmp_path)

    yield start
    for servers in started:
        await servers.stop(0)


@dataclasses.dataclass(frozen=True)
class Counts:
    csr: float
    issued: float
    auth_failures: float
    sign_errors: dict[str, float]

    @classmethod
    def now(cls) -> Counts:
        reasons = [k[0] for k in metrics.csr_sign_error_count._values]
        return cls(
            csr=metrics.csr_count.value(),
            issued=metrics.success_cert_issuance_count.value(),
            auth_failures=metrics.authentication_failure_count.value(),
            sign_errors={r: metrics.csr_sign_error_count.value(reason=r) for r in reasons},
        )


async def test_a_token_caller_gets_a_chain_that_openssl_verifies(
    ca_server: ServerFactory, tmp_path: pathlib.Path
) -> None:
    server = await ca_server()
    before = Counts.now()
    csr, _ = make_csr(uris=[ME])
    response = await server.call(csr, token=server.token())
    chain = list(response.cert_chain)
    assert len(chain) == 2 and chain[-1].encode() == server.root_pem
    assert leaf_uris(chain[0]) == [ME]
    (tmp_path / "root.pem").write_bytes(server.root_pem)
    assert "OK" in openssl_verify(tmp_path, ca_file=tmp_path / "root.pem", chain=chain)
    after = Counts.now()
    assert (after.csr - before.csr, after.issued - before.issued) == (1, 1)


async def test_the_request_metadata_is_never_parsed(ca_server: ServerFactory) -> None:
    # `metadata` (field 4, a Struct) is ignored; parsing it would cost time quadratic in its fields
    # before the caller is known. Bytes that are no Struct at all prove it is not parsed.
    server = await ca_server()
    csr, _ = make_csr(uris=[ME])
    request = ca_pb2.IstioCertificateRequest(csr=csr).SerializeToString() + b"\x22\x03\xff\xff\xff"
    response = await server.call_raw(request, token=server.token())
    assert leaf_uris(response.cert_chain[0]) == [ME]


async def test_bytes_that_are_no_request_are_invalid_argument(ca_server: ServerFactory) -> None:
    server = await ca_server()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.call_raw(b"\xff\xff\xff")
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("the request is not an IstioCertificateRequest: ")


async def test_the_ca_is_not_served_on_the_plaintext_port(ca_server: ServerFactory) -> None:
    server = await ca_server()
    csr, _ = make_csr(uris=[ME])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.call(csr, token=server.token(), plaintext=True)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# Every bad input: (id, how to build the request, expected status, text in the message, counter it bumps).
BadRequest = Callable[[CaServer], Awaitable[tuple[str, dict[str, object]]]]


async def _no_token(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(uris=[ME])[0], {}


async def _expired(s: CaServer) -> tuple[str, dict[str, object]]:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    return make_csr(uris=[ME])[0], {"token": s.token(now=old, ttl=dt.timedelta(hours=1))}


async def _wrong_audience(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(uris=[ME])[0], {"token": s.token(audience="kubernetes")}


async def _forged(s: CaServer) -> tuple[str, dict[str, object]]:
    forged = mint(key=ec.generate_private_key(ec.SECP256R1()), namespace="shop", service_account="cart")
    return make_csr(uris=[ME])[0], {"token": forged}


async def _garbage_token(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(uris=[ME])[0], {"token": "not-a-jwt"}


async def _malformed_pem(s: CaServer) -> tuple[str, dict[str, object]]:
    return "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n", {"token": s.token()}


async def _not_pem(s: CaServer) -> tuple[str, dict[str, object]]:
    return "hello", {"token": s.token()}


async def _bad_signature(s: CaServer) -> tuple[str, dict[str, object]]:
    return tamper_signature(make_csr(uris=[ME])[0]), {"token": s.token()}


async def _rsa_1024(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(key=rsa_key(1024), uris=[ME])[0], {"token": s.token()}


async def _p521(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(key=ec.generate_private_key(ec.SECP521R1()), uris=[ME])[0], {"token": s.token()}


async def _two_uris(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(uris=[ME, spiffe("shop", "admin")])[0], {"token": s.token()}


async def _other_identity(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(uris=[spiffe("kube-system", "admin")])[0], {"token": s.token()}


async def _too_large(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(uris=[ME])[0] + "\n" * (64 * 1024), {"token": s.token()}


async def _negative_ttl(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(uris=[ME])[0], {"token": s.token(), "ttl": -60}


async def _huge_ttl(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(uris=[ME])[0], {"token": s.token(), "ttl": 2**62}


async def _above_max_ttl(s: CaServer) -> tuple[str, dict[str, object]]:
    return make_csr(uris=[ME])[0], {"token": s.token(), "ttl": 90 * 86400 + 1}


UNAUTH, INVALID, DENIED = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
)

CASES: list[tuple[str, BadRequest, grpc.StatusCode, str, str | None]] = [
    ("no-token", _no_token, UNAUTH, "no credentials", None),
    ("expired-token", _expired, UNAUTH, "token expired at", None),
    ("wrong-audience", _wrong_audience, UNAUTH, "does not include 'istio-ca'", None),
    ("forged-signature", _forged, UNAUTH, "signature does not verify", None),
    ("garbage-token", _garbage_token, UNAUTH, "not a JWT", None),
    ("malformed-pem", _malformed_pem, INVALID, "csr: cannot parse", "malformed_csr"),
    ("not-pem", _not_pem, INVALID, "csr: not PEM", "malformed_csr"),
    ("bad-csr-signature", _bad_signature, INVALID, "signature does not verify", "bad_signature"),
    ("rsa-1024", _rsa_1024, INVALID, "1024 bits is too weak", "weak_key"),
    ("unsupported-curve", _p521, INVALID, "curve secp521r1 is not supported", "unsupported_key"),
    ("several-uri-sans", _two_uris, INVALID, "asks for 2 URI SANs", "multiple_identities"),
    (
        "another-identity",
        _other_identity,
        DENIED,
        f"kube-system/sa/admin but the caller is authenticated as {ME}",
        "identity_mismatch",
    ),
    ("csr-over-64kib", _too_large, INVALID, "exceeds the limit of 65536 bytes", "csr_too_large"),
    ("negative-ttl", _negative_ttl, INVALID, "validity_duration: -60 s is negative", "invalid_ttl"),
    ("huge-ttl", _huge_ttl, INVALID, "exceeds the maximum of 7776000 s", "invalid_ttl"),
    ("ttl-one-second-over", _above_max_ttl, INVALID, "exceeds the maximum", "invalid_ttl"),
]


@pytest.mark.parametrize(("build", "code", "message", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_input_gets_its_own_status_is_counted_and_yields_no_certificate(
    ca_server: ServerFactory, build: BadRequest, code: grpc.StatusCode, message: str, reason: str | None
) -> None:
    server = await ca_server()
    csr, kwargs = await build(server)
    before = Counts.now()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.call(csr, **kwargs)  # type: ignore[arg-type]
    assert info.value.code() == code, info.value.details()
    assert message in (info.value.details() or "")
    after = Counts.now()
    assert after.csr - before.csr == 1
    assert after.issued == before.issued
    if reason is None:
        assert after.auth_failures - before.auth_failures == 1
    else:
        assert after.sign_errors[reason] - before.sign_errors.get(reason, 0) == 1
        assert after.auth_failures == before.auth_failures


async def test_tokenreview_saying_unauthenticated_is_unauthenticated(ca_server: ServerFactory) -> None:
    server = await ca_server(kube=True)
    before = Counts.now()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.call(make_csr(uris=[ME])[0], token=shaped_token("revoked"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "TokenReview: token not authenticated" in (info.value.details() or "")
    assert Counts.now().auth_failures - before.auth_failures == 1


async def test_tokenreview_accepting_and_clusterid_metadata(ca_server: ServerFactory) -> None:
    server = await ca_server(kube=True)
    server.reviewer.reviews[shaped_token("good")] = TokenReview(
        authenticated=True, username="system:serviceaccount:shop:cart", audiences=("istio-ca",)
    )
    response = await server.call(
        make_csr()[0], token=shaped_token("good"), extra_metadata=[("clusterid", "Kubernetes")]
    )
    assert leaf_uris(response.cert_chain[0]) == [ME]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.call(make_csr()[0], token=shaped_token("good"), extra_metadata=[("clusterid", "elsewhere")])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_unreachable_tokenreview_api_is_unavailable_so_agents_retry(ca_server: ServerFactory) -> None:
    server = await ca_server(kube=True)
    server.reviewer.down = True
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.call(make_csr()[0], token=shaped_token("any"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_default_ttl_is_24h_and_an_explicit_ttl_is_honoured(ca_server: ServerFactory) -> None:
    from cryptography import x509

    server = await ca_server()
    for ttl, expected in ((0, dt.timedelta(hours=24)), (3600, dt.timedelta(hours=1))):
        response = await server.call(make_csr()[0], token=server.token(), ttl=ttl)
        leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert lifetime == expected + dt.timedelta(minutes=2)  # NotBefore is backdated 2 minutes


async def test_a_client_certificate_authenticates_on_a_server_that_requires_one(
    ca_server: ServerFactory, tmp_path: pathlib.Path
) -> None:
    """gRPC Python cannot ask for an optional client certificate, so use a server that requires one."""
    server = await ca_server()
    authority = server.runtime.ca.current
    key = generate_key()
    client_chain = authority.issue(public_key=key.public_key(), ttl=dt.timedelta(hours=1), uris=(ME,))
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
        from certs.pem import chain_pem

        channel_creds = grpc.ssl_channel_credentials(server.root_pem, key_pem(key), chain_pem(client_chain))
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", channel_creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        ) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            renewed = await stub.CreateCertificate(ca_pb2.IstioCertificateRequest(csr=make_csr()[0]), timeout=30)
            assert leaf_uris(renewed.cert_chain[0]) == [ME]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateCertificate(
                    ca_pb2.IstioCertificateRequest(csr=make_csr(uris=[spiffe("shop", "other")])[0]), timeout=30
                )
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await mtls.stop(0)
