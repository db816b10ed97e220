"""The secure port's Envoy TLS front end over real sockets: a real Envoy, real gRPC clients, and the
internal gRPC server behind it seeing only what Envoy verified."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import pathlib
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography import x509

from certs.authority import Authority, self_signed_root
from certs.pem import cert_pem, generate_key, key_pem
from certs.serving import ServingCertificate
from controlplane.grpcserver import GrpcServers
from controlplane.settings import Address, SettingsError
from controlplane.tlsfront import ForwardedPeers, default_concurrency, grpc_peer_name, xfcc_certificate

SERVER_NAME = "istiod.istio-system.svc"
IDENTITY = "spiffe://cluster.local/ns/shop/sa/cart"
METHOD = "/test.Who/Ask"
WAIT = 30.0


def authority() -> Authority:
    key = generate_key("ecdsa-p256")
    root = self_signed_root(key, org="cluster.local")
    return Authority(key=key, cert=root, roots=(root,))


async def eventually(check: Callable[[], bool], *, within: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def leaf_uris(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


@dataclass
class Front:
    ca: Authority
    serving: ServingCertificate
    servers: GrpcServers
    port: int
    calls: list[dict[str, Any]]

    def channel(self, *, identity: str | None = None, issuer: Authority | None = None) -> grpc.aio.Channel:
        if identity is None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.ca.root_pem)
        else:
            key = generate_key("ecdsa-p256")
            chain = (issuer or self.ca).issue(public_key=key.public_key(), ttl=dt.timedelta(hours=1), uris=(identity,))
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.ca.root_pem,
                private_key=key_pem(key),
                certificate_chain=b"".join(cert_pem(c) for c in chain),
            )
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}",
            creds,
            options=[("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.use_local_subchannel_pool", 1)],
        )

    async def ask(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        return dict(json.loads(await call(b"", metadata=metadata, timeout=WAIT)))

    def serving_serial(self) -> int:
        """The serial of the certificate a new handshake gets."""
        ctx = ssl.create_default_context(cadata=self.ca.root_pem.decode())
        ctx.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as raw,
            ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


def who_service(calls: list[dict[str, Any]]) -> Callable[[grpc.aio.Server], None]:
    """A service on the internal server answering what the front end told it about the caller."""
    peers = ForwardedPeers()

    async def ask(_: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        pem = peers.for_context(context)
        answer = {"uris": leaf_uris(pem) if pem else None, "client": peers.client_of(context)}
        calls.append(answer)
        return json.dumps(answer).encode()

    handler = grpc.method_handlers_generic_handler("test.Who", {"Ask": grpc.unary_unary_rpc_method_handler(ask)})
    return lambda server: server.add_generic_rpc_handlers((handler,))


@pytest.fixture
async def front() -> AsyncIterator[Front]:
    ca = authority()
    serving = ServingCertificate(ca, hosts=(SERVER_NAME,))
    servers = GrpcServers(plaintext_addr=None, secure_addr=Address(host="127.0.0.1", port=0), serving=serving)
    calls: list[dict[str, Any]] = []
    servers.add(who_service(calls), plaintext=False, secure=True)
    try:
        await servers.start()
        assert servers.front is not None
        yield Front(ca, serving, servers, servers.front.port, calls)
    finally:
        await servers.stop(0)


# -- identity ------------------------------------------------------------------------------------


async def test_the_internal_server_sees_the_verified_client_certificate_and_address(front: Front) -> None:
    async with front.channel(identity=IDENTITY) as channel:
        answer = await front.ask(channel)
    assert answer["uris"] == [IDENTITY]
    assert answer["client"].startswith("ipv4:127.0.0.1:")


async def test_a_client_without_a_certificate_has_none(front: Front) -> None:
    async with front.channel() as channel:
        assert (await front.ask(channel))["uris"] is None


async def test_forged_identity_headers_from_a_client_are_replaced(front: Front) -> None:
    forged_key = generate_key("ecdsa-p256")
    forged = front.ca.issue(public_key=forged_key.public_key(), ttl=dt.timedelta(hours=1), uris=("spiffe://x/admin",))
    headers = (
        ("x-forwarded-client-cert", f'Cert="{urllib.parse.quote(cert_pem(forged[0]).decode())}"'),
        ("x-meshplane-client", "10.9.9.9:1"),
        ("x-forwarded-for", "10.8.8.8"),  # Envoy's downstream address would be this, without a port
    )
    async with front.channel() as channel:
        without = await front.ask(channel, headers)
    async with front.channel(identity=IDENTITY) as channel:
        with_cert = await front.ask(channel, headers)
    assert without["uris"] is None and with_cert["uris"] == [IDENTITY]
    for answer in (without, with_cert):
        assert answer["client"].startswith("ipv4:127.0.0.1:") and not answer["client"].endswith(":0"), answer


async def test_a_certificate_from_another_authority_fails_the_handshake(front: Front) -> None:
    async with front.channel(identity=IDENTITY, issuer=authority()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await front.ask(channel)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert front.calls == []


async def test_the_internal_server_listens_only_on_private_unix_sockets(front: Front) -> None:
    private = front.servers.private_dir
    assert private is not None
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    for name in ("grpc.sock", "sds.sock"):
        mode = (private / name).stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert listening_tcp_ports_of_this_process() == set(), "the internal server must not take a TCP port"


NOBODY = 65534
CONNECT = "import socket, sys\nsocket.socket(socket.AF_UNIX).connect(sys.argv[1])\nprint('connected')"


def connect_as_nobody(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """A Unix-socket connect to `path` by another local user (the system Python, which any user may run)."""
    return subprocess.run(
        ["/usr/bin/python3", "-c", CONNECT, str(path)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


def socket_anyone_may_use(directory: pathlib.Path) -> socket.socket:
    """A listening Unix socket at `directory/control.sock`, directory and socket open to every user."""
    directory.chmod(0o755)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(directory / "control.sock"))
    listener.listen()
    (directory / "control.sock").chmod(0o777)
    return listener


async def test_another_local_user_cannot_reach_the_internal_server(front: Front) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a connect as another user")
    private = front.servers.private_dir
    assert private is not None
    # the same connect reaches a socket that user may use: what refuses it below is the private directory
    with tempfile.TemporaryDirectory(prefix="meshplane-open-") as open_dir:
        listener = socket_anyone_may_use(pathlib.Path(open_dir))
        try:
            control = await asyncio.to_thread(connect_as_nobody, pathlib.Path(open_dir) / "control.sock")
            assert control.stdout.strip() == "connected", control.stderr
        finally:
            listener.close()
    for name in ("grpc.sock", "sds.sock"):
        bypass = await asyncio.to_thread(connect_as_nobody, private / name)
        assert bypass.returncode != 0 and "PermissionError" in bypass.stderr, bypass


def listening_tcp_ports_of_this_process() -> set[int]:
    inodes = set()
    for fd in pathlib.Path("/proc/self/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# -- rotation and lifecycle ----------------------------------------------------------------------


async def test_a_reissued_serving_certificate_reaches_new_handshakes_while_open_connections_carry_on(
    front: Front,
) -> None:
    assert front.servers.front is not None
    pid = front.servers.front.pid
    before = await asyncio.to_thread(front.serving_serial)
    async with front.channel(identity=IDENTITY) as channel:
        await front.ask(channel)
        front.serving.reissue()
        new = front.serving.chain[0].serial_number

        def rotated() -> bool:
            deadline = time.monotonic() + WAIT
            while front.serving_serial() != new:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
            return True

        assert await asyncio.to_thread(rotated), "new handshakes never got the reissued certificate"
        assert (await front.ask(channel))["uris"] == [IDENTITY]  # the open connection carries on
    assert new != before and front.servers.front.pid == pid


async def test_envoy_is_restarted_on_the_same_port_when_it_dies(front: Front) -> None:
    envoy = front.servers.front
    assert envoy is not None and envoy.pid is not None
    os.kill(envoy.pid, 9)
    await eventually(lambda: not front.servers.listening)
    await eventually(lambda: front.servers.listening and envoy.restarts == 1)
    assert envoy.port == front.port
    async with front.channel(identity=IDENTITY) as channel:
        assert (await front.ask(channel))["uris"] == [IDENTITY]


async def test_stop_ends_envoy_and_removes_the_private_directory() -> None:
    servers = GrpcServers(
        plaintext_addr=None,
        secure_addr=Address(host="127.0.0.1", port=0),
        serving=ServingCertificate(authority(), hosts=(SERVER_NAME,)),
    )
    await servers.start()
    assert servers.front is not None and servers.private_dir is not None
    pid = servers.front.pid
    await servers.stop(0)
    assert not servers.private_dir.exists()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_taken_port_is_a_settings_error_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        servers = GrpcServers(
            plaintext_addr=None,
            secure_addr=Address(host="127.0.0.1", port=port),
            serving=ServingCertificate(authority(), hosts=(SERVER_NAME,)),
        )
        try:
            with pytest.raises(SettingsError, match=f"127.0.0.1:{port}"):
                await servers.start()
        finally:
            await servers.stop(0)


# -- header parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('Hash=ab;Cert="-----BEGIN%20CERTIFICATE-----%0AMII%0A-----END%20CERTIFICATE-----%0A"', True),
        ("Cert=-----BEGIN%20CERTIFICATE-----%0AMII%0A", True),
        ("By=spiffe://a;Hash=ab;URI=spiffe://b", False),
        ('Cert="not a certificate"', False),
        ("", False),
    ],
)
def test_xfcc_values_yield_a_certificate_only_when_they_carry_one(value: str, expected: bool) -> None:
    pem = xfcc_certificate(value)
    assert (pem is not None and pem.startswith(b"-----BEGIN CERTIFICATE-----\nMII\n")) is expected


@pytest.mark.parametrize(
    ("address", "peer"),
    [("10.1.2.3:5000", "ipv4:10.1.2.3:5000"), ("[::1]:5000", "ipv6:[::1]:5000"), ("", "")],
)
def test_envoy_addresses_are_named_as_grpc_peers(address: str, peer: str) -> None:
    assert grpc_peer_name(address) == peer


# -- tuning --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 3)])
def test_envoy_leaves_a_core_to_the_event_loop(cores: int, threads: int) -> None:
    assert default_concurrency(usable_cores=cores) == threads


async def test_the_running_envoy_uses_the_default_thread_count(front: Front) -> None:
    assert front.servers.front is not None and front.servers.front.pid is not None
    cmdline = await asyncio.to_thread(pathlib.Path(f"/proc/{front.servers.front.pid}/cmdline").read_bytes)
    args = cmdline.split(b"\0")
    assert args[args.index(b"--concurrency") + 1] == str(default_concurrency()).encode()
