"""The secure port's TLS front end over real sockets: which connection carries which verified client
certificate (`PeerCertificates`), and how bytes, ends and resets cross the pipe."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import pathlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from prometheus_client import REGISTRY

from certs.authority import Authority, self_signed_root
from certs.pem import cert_pem, generate_key, key_pem
from certs.serving import ServingCertificate
from controlplane.grpcserver import MeshTlsContexts
from controlplane.tlsfront import PeerCertificates, TlsFrontEnd, parse_peer

SERVER_NAME = "istiod.istio-system.svc"
IDENTITY = "spiffe://cluster.local/ns/shop/sa/cart"
METRIC = "meshplane_secure_grpc_handshake_failures"
WAIT = 30.0


def authority() -> Authority:
    key = generate_key("ecdsa-p256")
    root = self_signed_root(key, org="cluster.local")
    return Authority(key=key, cert=root, roots=(root,))


async def eventually(check: Callable[[], bool], *, within: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class _Peer:
    name: str

    def peer(self) -> str:
        return self.name


@dataclass
class Backend:
    """A raw TCP server standing in for the internal gRPC server; records what each connection saw."""

    peers: PeerCertificates
    handler: Handler | None = None
    seen: list[bytes | None] = field(default_factory=list)  # the certificate looked up at the first byte
    clients: list[str] = field(default_factory=list)  # the client address looked up at the first byte
    eofs: int = 0
    resets: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        if self.handler is not None:
            await self.handler(reader, writer)
            return
        try:
            first = await reader.read(65536)
            self.seen.append(self.peers.for_peer(f"ipv4:{host}:{port}"))
            self.clients.append(self.peers.client_of(_Peer(f"ipv4:{host}:{port}")))
            data = first
            while data:
                writer.write(data)
                await writer.drain()
                data = await reader.read(65536)
            self.eofs += 1
        except ConnectionResetError:
            self.resets += 1
        finally:
            writer.close()


@dataclass
class Front:
    ca: Authority
    serving: ServingCertificate
    front: TlsFrontEnd
    backend: Backend
    backend_port: int
    port: int
    tmp: pathlib.Path

    def client_context(self, *, identity: str | None = None, issuer: Authority | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.serving.root_pem().decode())
        ctx.set_alpn_protocols(["h2"])
        if identity is not None:
            key = generate_key("ecdsa-p256")
            chain = (issuer or self.ca).issue(public_key=key.public_key(), ttl=dt.timedelta(hours=1), uris=(identity,))
            cert_file, key_file = self.tmp / "client.pem", self.tmp / "client.key"
            cert_file.write_bytes(b"".join(cert_pem(c) for c in chain))
            key_file.write_bytes(key_pem(key))
            ctx.load_cert_chain(cert_file, key_file)
        return ctx

    async def connect(self, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, ssl=ctx, server_hostname=SERVER_NAME), WAIT
        )


@pytest.fixture
async def front(tmp_path: pathlib.Path) -> AsyncIterator[Front]:
    ca = authority()
    serving = ServingCertificate(ca, hosts=(SERVER_NAME,))
    peers = PeerCertificates()
    backend = Backend(peers)
    server = await asyncio.start_server(backend.serve, "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    tls = TlsFrontEnd(contexts=MeshTlsContexts(serving), backend_port=backend_port, peers=peers)
    port = await tls.start("127.0.0.1", 0)
    try:
        yield Front(ca, serving, tls, backend, backend_port, port, tmp_path)
    finally:
        tls.close()
        await tls.wait_closed(within=5)
        server.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), WAIT)


def leaf_uris(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )


# -- the mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5000", ("127.0.0.1", 5000)),
        ("ipv6:[::1]:5000", ("::1", 5000)),
        ("ipv6:%5B::1%5D:5000", ("::1", 5000)),
        ("unix:/tmp/socket", None),
        ("ipv4:127.0.0.1", None),
        ("ipv4:127.0.0.1:port", None),
        ("", None),
    ],
)
def test_grpc_peer_strings_are_parsed_or_refused(peer: str, address: tuple[str, int] | None) -> None:
    assert parse_peer(peer) == address


def test_an_unknown_peer_has_no_certificate() -> None:
    peers = PeerCertificates()
    peers.register(("127.0.0.1", 5000), b"pem")
    assert peers.for_peer("ipv4:127.0.0.1:5000") == b"pem"
    assert peers.for_peer("ipv4:127.0.0.1:5001") is None
    assert peers.for_peer("ipv4:127.0.0.2:5000") is None
    assert peers.for_peer("unix:/tmp/socket") is None
    peers.remove(("127.0.0.1", 5000))
    peers.remove(("127.0.0.1", 5000))  # removing twice is harmless
    assert peers.for_peer("ipv4:127.0.0.1:5000") is None


async def test_the_internal_side_sees_the_verified_certificate_from_the_first_byte(front: Front) -> None:
    reader, writer = await front.connect(front.client_context(identity=IDENTITY))
    assert await echo(reader, writer, b"hello") == b"hello"
    assert len(front.backend.seen) == 1
    seen = front.backend.seen[0]
    assert seen is not None and leaf_uris(seen) == [IDENTITY]
    writer.close()


async def test_the_internal_side_learns_the_real_client_address(front: Front) -> None:
    reader, writer = await front.connect(front.client_context())
    host, port = writer.get_extra_info("sockname")[:2]
    assert await echo(reader, writer, b"hello") == b"hello"
    assert front.backend.clients == [f"ipv4:{host}:{port}"]
    writer.close()


async def test_a_client_without_a_certificate_registers_nothing(front: Front) -> None:
    reader, writer = await front.connect(front.client_context())
    assert await echo(reader, writer, b"hello") == b"hello"
    assert front.backend.seen == [None]
    assert len(front.front.peers) == 0
    writer.close()


async def test_the_entry_is_removed_when_the_client_closes(front: Front) -> None:
    reader, writer = await front.connect(front.client_context(identity=IDENTITY))
    await echo(reader, writer, b"hello")
    assert len(front.front.peers) == 1
    writer.close()
    await eventually(lambda: front.backend.eofs == 1)  # the client's end reaches the internal side
    await eventually(lambda: len(front.front.peers) == 0 and front.front.connections == 0)


async def test_the_entry_is_removed_when_the_internal_side_closes_after_its_last_bytes(front: Front) -> None:
    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"bye" * 100_000)
        await writer.drain()
        writer.close()

    front.backend.handler = answer_and_close
    reader, writer = await front.connect(front.client_context(identity=IDENTITY))
    writer.write(b"hi")
    assert await asyncio.wait_for(reader.read(), WAIT) == b"bye" * 100_000  # everything, then the end
    await eventually(lambda: len(front.front.peers) == 0 and front.front.connections == 0)
    writer.close()


async def test_a_connection_the_front_end_did_not_make_has_no_certificate(front: Front) -> None:
    reader, writer = await front.connect(front.client_context(identity=IDENTITY))
    await echo(reader, writer, b"via front")
    direct_reader, direct_writer = await asyncio.open_connection("127.0.0.1", front.backend_port)
    assert await echo(direct_reader, direct_writer, b"direct") == b"direct"
    assert front.backend.seen[0] is not None and front.backend.seen[1] is None
    direct_writer.close()
    writer.close()


async def test_a_certificate_from_another_authority_fails_the_handshake(front: Front) -> None:
    ctx = front.client_context(identity=IDENTITY, issuer=authority())
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # so the refusal comes while the client is still handshaking

    # The front end drops the connection mid-handshake (asyncio sends no alert): an SSL error or a reset.
    def failures() -> float:
        sample = REGISTRY.get_sample_value(f"{METRIC}_total", {"reason": "certificate"})
        return sample or 0.0

    before = failures()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await front.connect(ctx)
    assert front.backend.seen == [] and len(front.front.peers) == 0
    await eventually(lambda: failures() == before + 1)  # counted as a certificate failure


async def test_a_reissued_serving_certificate_reaches_new_handshakes_while_open_connections_carry_on(
    front: Front,
) -> None:
    reader, writer = await front.connect(front.client_context())
    first = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    front.serving.reissue()
    new_reader, new_writer = await front.connect(front.client_context())
    second = new_writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert first != second
    assert x509.load_der_x509_certificate(second) == front.serving.chain[0]
    assert await echo(reader, writer, b"still here") == b"still here"
    assert await echo(new_reader, new_writer, b"new") == b"new"
    writer.close()
    new_writer.close()


# -- flow control and resets ---------------------------------------------------------------------


async def test_a_client_that_does_not_read_is_not_buffered_without_bound(front: Front) -> None:
    blob = hashlib.sha256(b"seed").digest() * (32 * 1024 * 1024 // 32)  # 32 MiB, far above socket buffers
    done = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(blob)
        await writer.drain()
        done.set()
        writer.close()

    front.backend.handler = flood
    reader, writer = await front.connect(front.client_context())
    writer.write(b"go")
    await eventually(lambda: any(p.up is not None and not p.up.is_reading() for p in front.front._pipes))
    # The internal side is paused; what the front end holds for the client stays near its limit.
    buffered = sum(p.down.get_write_buffer_size() for p in front.front._pipes if p.down is not None)
    assert buffered <= front.front.buffer_limit + 1024 * 1024
    assert not done.is_set()
    received = await asyncio.wait_for(reader.read(), WAIT)
    assert hashlib.sha256(received).digest() == hashlib.sha256(blob).digest()
    writer.close()


async def test_a_reset_by_the_internal_side_resets_the_client(front: Front) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    front.backend.handler = reset
    reader, writer = await front.connect(front.client_context())
    writer.write(b"x")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), WAIT)
    await eventually(lambda: front.front.connections == 0)


async def test_a_reset_by_the_client_resets_the_internal_side(front: Front) -> None:
    reader, writer = await front.connect(front.client_context(identity=IDENTITY))
    await echo(reader, writer, b"x")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await eventually(lambda: front.backend.resets == 1)
    await eventually(lambda: len(front.front.peers) == 0)
