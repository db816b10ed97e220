"""The agent's certificate loop and SDS against a real `meshplane serve` CA over TLS.

Each test runs a `SecretManager` in this process against the module's control plane, and reads
what Envoy would read through a real gRPC SDS client on the agent's Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import pathlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.agent.caclient import CaClient
from controlplane.agent.sds import SdsServer
from controlplane.agent.secrets import SecretManager
from controlplane.sdsstream import SECRET_TYPE
from tests.agent.conftest import refused_port
from tests.certs.test_e2e_serve import token
from tests.e2e.envoyproxy import make_identity
from tests.helpers.serve import SERVER_NAME, Running, start_serve
from tests.helpers.tasks import running as run_task

NS, SA = "shop", "cart"
IDENTITY = f"spiffe://cluster.local/ns/{NS}/sa/{SA}"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start_serve(tmp_path_factory.mktemp("agent-ca"))
    try:
        yield running
    finally:
        running.stop()


def manager(
    cp: Running, tmp: pathlib.Path, *, ttl: float = 3600, sa: str = SA, address: str | None = None
) -> SecretManager:
    return SecretManager(
        identity=f"spiffe://cluster.local/ns/{NS}/sa/{sa}",
        client=CaClient(address=address or cp.addr("secure-grpc"), server_name=SERVER_NAME, timeout=5),
        token_file=tmp / "token",
        root_file=tmp / "root-cert.pem",
        ttl_seconds=ttl,
        backoff=(0.1, 0.5),
        poll_interval=0.1,
    )


@contextlib.asynccontextmanager
async def running(m: SecretManager) -> AsyncIterator[SecretManager]:
    async with run_task(m.run()):
        yield m


async def until(check: Callable[[], object], *, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


def setup_files(cp: Running, tmp: pathlib.Path, *, sa: str = SA) -> None:
    (tmp / "token").write_text(token(cp, "--namespace", NS, "--service-account", sa))
    shutil.copy(cp.root_cert, tmp / "root-cert.pem")


async def test_gets_a_certificate_for_its_identity_that_openssl_verifies(cp: Running, tmp_path: pathlib.Path) -> None:
    setup_files(cp, tmp_path)
    async with running(manager(cp, tmp_path)) as m:
        await until(lambda: m.credential is not None)
        assert m.credential is not None
        leaf = m.credential.leaf
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [IDENTITY]
        (tmp_path / "chain.pem").write_bytes(m.credential.chain_pem)
        verify = ["openssl", "verify", "-CAfile", str(tmp_path / "root-cert.pem"), str(tmp_path / "chain.pem")]
        result = await asyncio.to_thread(subprocess.run, verify, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        info = m.info()
        assert info["identity"] == IDENTITY and info["serial"] == m.credential.serial and info["rotations"] == 1


async def test_rotates_at_half_life_and_renews_with_its_certificate_after_the_token_is_gone(
    cp: Running, tmp_path: pathlib.Path
) -> None:
    setup_files(cp, tmp_path)
    async with running(manager(cp, tmp_path, ttl=4)) as m:
        await until(lambda: m.rotations >= 1)
        first = m.credential
        assert first is not None and m.next_rotation is not None
        life = (first.not_after - first.received).total_seconds()
        assert (m.next_rotation - first.received).total_seconds() <= life * 0.5 + 0.01
        (tmp_path / "token").unlink()  # later renewals authenticate with the client certificate alone
        await until(lambda: m.rotations >= 3, within=30)
        assert len(set(m.serials)) >= 3
        assert m.waiting_for == ""


async def test_missing_token_is_waited_for_and_used_once_it_appears(
    cp: Running, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copy(cp.root_cert, tmp_path / "root-cert.pem")
    caplog.set_level(logging.WARNING)
    async with running(manager(cp, tmp_path)) as m:
        await until(lambda: "token file" in m.waiting_for)
        assert str(tmp_path / "token") in caplog.text
        (tmp_path / "token").write_text(token(cp, "--namespace", NS, "--service-account", SA))
        await until(lambda: m.credential is not None)


async def test_a_root_that_does_not_verify_the_server_is_reported_and_retried(
    cp: Running, tmp_path: pathlib.Path
) -> None:
    setup_files(cp, tmp_path)
    (tmp_path / "root-cert.pem").write_bytes(make_identity("spiffe://other/ns/a/sa/b").root_pem)
    async with running(manager(cp, tmp_path)) as m:
        await until(lambda: "handshake" in m.waiting_for)
        assert "--istiod-san" in m.waiting_for and str(tmp_path / "root-cert.pem") in m.waiting_for
        assert m.credential is None
        shutil.copy(cp.root_cert, tmp_path / "root-cert.pem")  # the right root arrives: picked up live
        await until(lambda: m.credential is not None)


@pytest.mark.parametrize(
    ("token_of", "status"),
    [("someone-else", "PERMISSION_DENIED"), ("", "UNAUTHENTICATED")],  # another identity's token; a forged one
)
async def test_a_refusing_ca_keeps_the_agent_waiting_with_the_status(
    cp: Running, tmp_path: pathlib.Path, token_of: str, status: str
) -> None:
    setup_files(cp, tmp_path, sa=token_of or SA)
    if not token_of:
        (tmp_path / "token").write_text("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJmb3JnZWQifQ.c2lnbmF0dXJl")
    async with running(manager(cp, tmp_path)) as m:
        await until(lambda: status in m.waiting_for)
        assert "to accept the request" in m.waiting_for
        assert m.credential is None


async def test_an_unreachable_ca_is_retried(cp: Running, tmp_path: pathlib.Path) -> None:
    setup_files(cp, tmp_path)
    async with running(manager(cp, tmp_path, address=f"127.0.0.1:{refused_port()}")) as m:
        await until(lambda: "UNAVAILABLE" in m.waiting_for)
        assert m.credential is None


async def sds_secrets(socket: pathlib.Path, names: list[str], count: int) -> list[dict[str, secret_pb2.Secret]]:
    """Open one SotW SDS stream for `names`, ACK each response, return the first `count` with a certificate."""
    out: list[dict[str, secret_pb2.Secret]] = []
    requests: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
    await requests.put(discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=names))

    async def gen() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await requests.get()

    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        call = channel.stream_stream(
            "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(gen())
        async for response in call:
            secrets = {}
            for any_ in response.resources:
                secret = secret_pb2.Secret()
                any_.Unpack(secret)
                secrets[secret.name] = secret
            if "default" in secrets:  # before the first certificate, only ROOTCA can be sent
                out.append(secrets)
            await requests.put(
                discovery_pb2.DiscoveryRequest(
                    type_url=SECRET_TYPE,
                    resource_names=names,
                    version_info=response.version_info,
                    response_nonce=response.nonce,
                )
            )
            if len(out) == count:
                call.cancel()
                break
    return out


async def test_sds_serves_default_and_rootca_and_pushes_each_rotation(cp: Running, tmp_path: pathlib.Path) -> None:
    setup_files(cp, tmp_path)
    m = manager(cp, tmp_path, ttl=4)
    server = SdsServer(m, tmp_path / "sds.sock")
    await server.start()
    try:
        async with running(m):
            responses = await asyncio.wait_for(sds_secrets(tmp_path / "sds.sock", ["default", "ROOTCA"], 3), 60)
    finally:
        await server.stop()
    serials = set()
    for secrets in responses:
        assert set(secrets) == {"default", "ROOTCA"}
        chain = secrets["default"].tls_certificate.certificate_chain.inline_bytes
        serials.add(x509.load_pem_x509_certificate(chain).serial_number)
        assert secrets["ROOTCA"].validation_context.trusted_ca.inline_bytes == cp.root_cert.read_bytes()
    assert len(serials) == 3  # one per rotation: pushed, not polled
    assert not (tmp_path / "sds.sock").exists()


async def test_sds_socket_path_too_long_is_refused(cp: Running, tmp_path: pathlib.Path) -> None:
    from controlplane.agent.sds import SdsError

    server = SdsServer(manager(cp, tmp_path), tmp_path / ("x" * 120) / "sock")
    with pytest.raises(SdsError, match="longer than"):
        await server.start()


def test_renewal_time_counts_from_receipt_not_the_backdated_not_before() -> None:
    from controlplane.agent.credential import Credential

    now = dt.datetime.now(dt.UTC)
    identity = make_identity(IDENTITY)
    leaf = x509.load_pem_x509_certificate(identity.cert_pem)
    cred = Credential(key_pem=identity.key_pem, chain_pem=identity.cert_pem, leaf=leaf, received=now)
    # make_identity backdates NotBefore by 5 minutes and lasts a day
    assert cred.renew_at(0.0) - now == (leaf.not_valid_after_utc - now) / 2
