"""Root rotation with an overlapping trust bundle, and serving-certificate rotation that new
handshakes pick up while open gRPC streams carry on."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import ssl
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509

from certs import metrics
from certs.authority import Authority, now_utc, self_signed_root
from certs.ca import CertificateAuthority
from certs.keystore import FileKeyStore
from certs.pem import cert_pem, generate_key, key_pem, write_atomic
from certs.rotation import RootRotator, ServingRotator
from certs.runtime import local_ca
from certs.serving import ServingCertificate
from controlplane.grpcserver import GrpcServers
from controlplane.settings import Address
from tests.certs.helpers import openssl_verify, spiffe, write_pem

SERVER_NAME = "istiod.istio-system.svc"


def aged_root(state_dir: pathlib.Path, *, age: dt.timedelta, lifetime: dt.timedelta) -> Authority:
    """A self-signed root in `<state_dir>/ca/` created `age` ago, as if meshplane had made it then."""
    key = generate_key()
    cert = self_signed_root(key, org="cluster.local", now=now_utc() - age, lifetime=lifetime)
    write_atomic(state_dir / "ca" / "ca-key.pem", key_pem(key), mode=0o600)
    write_atomic(state_dir / "ca" / "ca-cert.pem", cert_pem(cert))
    return Authority(key=key, cert=cert, roots=(cert,))


def leaf_chain(authority: Authority, who: str) -> list[str]:
    chain = authority.issue(
        public_key=generate_key().public_key(), ttl=dt.timedelta(hours=1), uris=(spiffe("ns", who),)
    )
    return [cert_pem(c).decode() for c in chain]


async def test_root_is_reissued_from_the_same_key_with_20_percent_left_and_both_roots_verify(
    tmp_path: pathlib.Path,
) -> None:
    state = tmp_path / "state"
    old = aged_root(state, age=dt.timedelta(days=8, hours=12), lifetime=dt.timedelta(days=10))  # 15% left
    runtime = await local_ca(state_dir=state, trust_domain="cluster.local", serving_hosts=(SERVER_NAME,))
    before_leaf = leaf_chain(runtime.ca.current, "before")

    assert await runtime.root_rotator.check()

    new = runtime.ca.current
    assert new.cert != old.cert and new.cert.subject == old.cert.subject
    assert new.cert.public_key().public_numbers() == old.cert.public_key().public_numbers()  # same key
    assert new.roots == (new.cert, old.cert)
    validity = new.cert.not_valid_after_utc - new.cert.not_valid_before_utc
    assert validity == old.cert.not_valid_after_utc - old.cert.not_valid_before_utc  # same life as the old root
    after_leaf = leaf_chain(new, "after")
    bundle = state / "root-cert.pem"
    assert bundle.read_bytes() == new.root_pem  # published for workloads
    for chain in (before_leaf, after_leaf):
        openssl_verify(tmp_path, ca_file=bundle, chain=[chain[0], chain[-1]])
    # A workload still holding only the old root accepts new certificates, and vice versa.
    openssl_verify(tmp_path, ca_file=write_pem(tmp_path / "old.pem", old.cert), chain=[after_leaf[0], after_leaf[-1]])
    openssl_verify(tmp_path, ca_file=write_pem(tmp_path / "new.pem", new.cert), chain=[before_leaf[0], before_leaf[-1]])
    assert metrics.root_cert_expiry_timestamp._value.get() == new.cert.not_valid_after_utc.timestamp()
    # The serving certificate follows the root change.
    assert runtime.serving_rotator.due() == "the CA's root changed"
    assert runtime.serving_rotator.check()
    assert runtime.serving.authority is new

    # A restart keeps the rotated root and the overlap bundle.
    reloaded = await FileKeyStore(state / "ca").load_or_create()
    assert reloaded.cert == new.cert and reloaded.roots == new.roots


async def test_root_with_more_than_20_percent_left_is_kept(tmp_path: pathlib.Path) -> None:
    aged_root(tmp_path, age=dt.timedelta(days=7, hours=12), lifetime=dt.timedelta(days=10))  # 25% left
    runtime = await local_ca(state_dir=tmp_path, trust_domain="cluster.local", serving_hosts=(SERVER_NAME,))
    current = runtime.ca.current
    assert not await runtime.root_rotator.check()
    assert runtime.ca.current is current


async def test_the_old_root_leaves_the_bundle_once_expired(tmp_path: pathlib.Path) -> None:
    aged_root(tmp_path, age=dt.timedelta(days=9), lifetime=dt.timedelta(days=10))
    runtime = await local_ca(state_dir=tmp_path, trust_domain="cluster.local", serving_hosts=(SERVER_NAME,))
    await runtime.root_rotator.check()
    rotated = runtime.ca.current
    assert len(rotated.roots) == 2
    later = RootRotator(ca=runtime.ca, store=runtime.store, clock=lambda: now_utc() + dt.timedelta(days=2))
    assert await later.check()
    assert runtime.ca.current.roots == (rotated.cert,)
    assert (tmp_path / "root-cert.pem").read_bytes() == cert_pem(rotated.cert)


async def test_serving_certificate_is_reissued_at_half_life() -> None:
    authority = Authority(key=(k := generate_key()), cert=(c := self_signed_root(k, org="x")), roots=(c,))
    ca = CertificateAuthority(authority)
    serving = ServingCertificate(authority, hosts=(SERVER_NAME,), ttl=dt.timedelta(hours=24))
    at = now_utc()
    rotator = ServingRotator(serving=serving, ca=ca, clock=lambda: at)
    assert rotator.due() is None
    at = now_utc() + dt.timedelta(hours=11)
    assert not rotator.check()
    at = now_utc() + dt.timedelta(hours=12, minutes=2)
    assert rotator.check()
    assert serving.generation == 2


# -- open streams survive a serving-certificate reissue on the shared secure gRPC server ----------


class Ticker:
    """A server-streaming test service: each `Watch` call streams whatever is put on `queue`."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def watch(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        while True:
            item = await self.queue.get()
            if item == b"end":
                return
            yield item

    def register(self, server: grpc.aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(
            "test.Ticker", {"Watch": grpc.unary_stream_rpc_method_handler(self.watch)}
        )
        server.add_generic_rpc_handlers((handler,))


def presented_leaf(port: int, root_pem: bytes) -> x509.Certificate:
    """The certificate a fresh TLS handshake (ALPN h2, as gRPC) gets from the server."""
    import socket

    ctx = ssl.create_default_context(cadata=root_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.fixture
async def secure_server(tmp_path: pathlib.Path) -> AsyncIterator[tuple[GrpcServers, Ticker, object]]:
    runtime = await local_ca(state_dir=tmp_path, trust_domain="cluster.local", serving_hosts=(SERVER_NAME,))
    ticker = Ticker()
    servers = GrpcServers(plaintext_addr=None, secure_addr=Address(host="127.0.0.1", port=0), serving=runtime.serving)
    servers.add(ticker.register, plaintext=False, secure=True)
    servers.add(runtime.service.register, plaintext=False, secure=True)
    await servers.start()
    try:
        yield servers, ticker, runtime
    finally:
        await ticker.queue.put(b"end")
        await servers.stop(0)


async def test_an_open_stream_survives_a_serving_certificate_reissue(
    secure_server: tuple[GrpcServers, Ticker, object],
) -> None:
    servers, ticker, runtime = secure_server
    serving = servers.serving
    assert servers.front is not None
    port = servers.front.port
    first_leaf = await asyncio.to_thread(presented_leaf, port, serving.root_pem())
    assert first_leaf == serving.chain[0]

    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(serving.root_pem()),
        options=[("grpc.ssl_target_name_override", SERVER_NAME)],
    ) as channel:
        stream = channel.unary_stream("/test.Ticker/Watch")(b"", timeout=60)
        await ticker.queue.put(b"one")
        assert await asyncio.wait_for(stream.read(), 30) == b"one"

        # Half-life passes: the rotation task (running, as in `meshplane serve`) re-issues.
        rotator = ServingRotator(
            serving=serving, ca=runtime.ca, clock=lambda: now_utc() + dt.timedelta(days=1), check_interval=0.05
        )
        task = asyncio.create_task(rotator.run())
        try:
            for _ in range(600):
                if serving.generation > 1:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
        assert serving.generation > 1

        # New handshakes get the new certificate (the TLS front end receives it over SDS within moments) ...
        for _ in range(200):
            second_leaf = await asyncio.to_thread(presented_leaf, port, serving.root_pem())
            if second_leaf != first_leaf:
                break
            await asyncio.sleep(0.05)
        assert second_leaf != first_leaf and second_leaf == serving.chain[0]
        # ... while the stream opened before carries on over its connection.
        await ticker.queue.put(b"two")
        assert await asyncio.wait_for(stream.read(), 30) == b"two"
        await ticker.queue.put(b"end")
        assert await asyncio.wait_for(stream.read(), 30) is grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK


async def test_webhook_tls_context_serves_the_reissued_certificate(tmp_path: pathlib.Path) -> None:
    """The webhook (aiohttp) shares `ServingCertificate.ssl_context()`: new handshakes get the new certificate."""
    runtime = await local_ca(state_dir=tmp_path, trust_domain="cluster.local", serving_hosts=(SERVER_NAME,))
    serving = runtime.serving

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=serving.ssl_context())
    port = server.sockets[0].getsockname()[1]
    try:
        before = await asyncio.to_thread(presented_leaf, port, serving.root_pem())
        serving.reissue()
        after = await asyncio.to_thread(presented_leaf, port, serving.root_pem())
        assert before != after and after == serving.chain[0]
    finally:
        server.close()
        await server.wait_closed()
