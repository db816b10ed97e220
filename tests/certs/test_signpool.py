"""Signing in worker processes (`--ca-workers`): the same chains and refusals as the in-process path,
over the real gRPC+TLS wire, plus what happens when a worker dies and when the root rotates."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import pathlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from cryptography import x509

from certs import metrics
from certs.authenticate.localtoken import LocalTokenAuthenticator, load_or_create_key, mint
from certs.authority import now_utc, self_signed_root
from certs.keystore import FileKeyStore
from certs.pem import cert_pem, generate_key, key_pem, write_atomic
from certs.runtime import CaRuntime, build_ca
from certs.signing import SigningPolicy, SigningRefused
from certs.signpool import SigningPool, WorkerUnavailable, default_workers
from controlplane.cli import build_parser, settings_from_args
from controlplane.grpcserver import GrpcServers
from controlplane.settings import SettingsError
from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.certs.helpers import leaf_uris, make_csr, make_root, openssl_verify, spiffe, start_ca_servers, write_pem

SERVER_NAME = "istiod.istio-system.svc"
ME = spiffe("shop", "cart")


@dataclasses.dataclass
class PooledCa:
    runtime: CaRuntime
    servers: GrpcServers
    token: str

    @property
    def pool(self) -> SigningPool:
        assert self.runtime.pool is not None
        return self.runtime.pool

    async def call(self, csr: str, *, ttl: int = 0) -> list[str]:
        assert self.servers.front is not None
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{self.servers.front.port}",
            grpc.ssl_channel_credentials(self.runtime.ca.current.root_pem),
            options=[("grpc.ssl_target_name_override", SERVER_NAME)],
        )
        async with channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
            request = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=ttl)
            response = await stub.CreateCertificate(
                request, metadata=[("authorization", f"Bearer {self.token}")], timeout=60
            )
        return list(response.cert_chain)


@pytest.fixture
async def pooled_ca(tmp_path: pathlib.Path) -> AsyncIterator[Callable[[], Awaitable[PooledCa]]]:
    """The CA with one signing worker on the shared TLS gRPC server; the state dir may be prepared first."""
    started: list[PooledCa] = []

    async def start() -> PooledCa:
        token_key = load_or_create_key(tmp_path)
        runtime = await build_ca(
            store=FileKeyStore(tmp_path / "ca"),
            serving_hosts=(SERVER_NAME,),
            authenticators=[LocalTokenAuthenticator(public_key=token_key.public_key(), trust_domain="cluster.local")],
            workers=1,
        )
        servers = await start_ca_servers(runtime)
        ca = PooledCa(
            runtime=runtime, servers=servers, token=mint(key=token_key, namespace="shop", service_account="cart")
        )
        started.append(ca)
        return ca

    yield start
    for ca in started:
        await ca.servers.stop(0)
        await ca.pool.close()


async def test_a_chain_signed_in_a_worker_verifies_and_names_the_caller(
    pooled_ca: Callable[[], Awaitable[PooledCa]], tmp_path: pathlib.Path
) -> None:
    ca = await pooled_ca()
    issued = metrics.success_cert_issuance_count.value()
    chain = await ca.call(make_csr(uris=[ME])[0], ttl=3600)
    assert len(chain) == 2 and chain[-1].encode() == ca.runtime.ca.current.root_pem
    assert leaf_uris(chain[0]) == [ME]
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=1, minutes=2)
    (tmp_path / "root.pem").write_bytes(ca.runtime.ca.current.root_pem)
    openssl_verify(tmp_path, ca_file=tmp_path / "root.pem", chain=chain)
    assert metrics.success_cert_issuance_count.value() == issued + 1
    assert ca.pool.workers and all(w.transport is not None for w in ca.pool.workers)  # it really was a worker


async def test_refusals_from_a_worker_keep_their_status_and_message(
    pooled_ca: Callable[[], Awaitable[PooledCa]],
) -> None:
    ca = await pooled_ca()
    other = spiffe("shop", "admin")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await ca.call(make_csr(uris=[other])[0])
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert other in str(denied.value.details()) and ME in str(denied.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await ca.call("-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n")
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(invalid.value.details()).startswith("csr: cannot parse")
    with pytest.raises(grpc.aio.AioRpcError) as ttl:
        await ca.call(make_csr(uris=[ME])[0], ttl=-5)
    assert ttl.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "validity_duration" in str(ttl.value.details())


async def test_a_worker_dying_mid_request_is_unavailable_and_the_next_request_succeeds(
    pooled_ca: Callable[[], Awaitable[PooledCa]],
) -> None:
    ca = await pooled_ca()
    await ca.call(make_csr(uris=[ME])[0])  # the worker is up and answering
    (worker,) = ca.pool.workers
    assert worker.transport is not None
    pid = worker.transport.get_pid()
    os.kill(pid, signal.SIGSTOP)  # the request below is written to it, but never answered ...
    try:
        failures = metrics.csr_sign_error_count.value(reason="worker_unavailable")
        call = asyncio.ensure_future(ca.call(make_csr(uris=[ME])[0]))
        await _until(lambda: bool(worker.pending))  # ... until the request has reached the worker
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            await call
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert crashed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the signing worker" in str(crashed.value.details())
    assert "before answering; retry" in str(crashed.value.details())
    assert metrics.csr_sign_error_count.value(reason="worker_unavailable") == failures + 1
    chain = await ca.call(make_csr(uris=[ME])[0])  # a new worker took over
    assert leaf_uris(chain[0]) == [ME]
    assert ca.pool.restart_count == 1
    (replacement,) = ca.pool.workers
    assert replacement is not worker


async def test_a_worker_ignores_terminal_and_group_signals_and_only_ends_when_the_pool_closes(
    pooled_ca: Callable[[], Awaitable[PooledCa]],
) -> None:
    ca = await pooled_ca()
    await ca.call(make_csr(uris=[ME])[0])
    (worker,) = ca.pool.workers
    assert worker.transport is not None
    for sig in (signal.SIGINT, signal.SIGTERM):  # what Ctrl-C or `kill -- -PGID` send to every process
        os.kill(worker.transport.get_pid(), sig)
    chain = await ca.call(make_csr(uris=[ME])[0])
    assert leaf_uris(chain[0]) == [ME]
    assert ca.pool.workers == (worker,) and ca.pool.restart_count == 0
    await ca.pool.close()
    assert worker.exited.is_set() and worker.transport.get_returncode() == 0


async def _until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (state inside the pool that nothing outside can await) for up to 30 seconds."""
    async with asyncio.timeout(30):
        while not condition():  # noqa: ASYNC110 - nothing to await from outside the pool
            await asyncio.sleep(0.01)


async def test_a_rotated_root_reaches_the_workers_and_old_and_new_leaves_both_verify(
    pooled_ca: Callable[[], Awaitable[PooledCa]], tmp_path: pathlib.Path
) -> None:
    state = tmp_path / "ca"
    key = generate_key()
    old_root = self_signed_root(
        key, org="cluster.local", now=now_utc() - dt.timedelta(days=9), lifetime=dt.timedelta(days=10)
    )
    write_atomic(state / "ca-key.pem", key_pem(key), mode=0o600)
    write_atomic(state / "ca-cert.pem", cert_pem(old_root))
    ca = await pooled_ca()
    before = await ca.call(make_csr(uris=[ME])[0])
    assert x509.load_pem_x509_certificate(before[-1].encode()) == old_root

    assert await ca.runtime.root_rotator.check()
    new_root = ca.runtime.ca.current.cert
    assert new_root != old_root
    after = await ca.call(make_csr(uris=[ME])[0])

    assert x509.load_pem_x509_certificate(after[-1].encode()) == new_root  # signed under the new root
    bundle = write_pem(tmp_path / "bundle.pem", *ca.runtime.ca.current.roots)
    for name, chain in (("before", before), ("after", after)):
        openssl_verify(tmp_path, ca_file=bundle, chain=chain, name=name)
    # Same key and subject: each root alone accepts the other's leaves.
    openssl_verify(tmp_path, ca_file=write_pem(tmp_path / "old.pem", old_root), chain=[after[0]], name="o")
    openssl_verify(tmp_path, ca_file=write_pem(tmp_path / "new.pem", new_root), chain=[before[0]], name="n")


async def test_a_closed_pool_refuses_instead_of_hanging() -> None:
    pool = SigningPool(workers=1, authority=make_root())
    await pool.start()
    await pool.close()
    with pytest.raises(WorkerUnavailable, match="closed"):
        await pool.sign(
            csr=make_csr(uris=[ME])[0],
            validity_seconds=0,
            caller_identities=(ME,),
            policy=SigningPolicy(),
            now=now_utc(),
        )


async def test_a_hung_worker_is_killed_its_request_is_unavailable_and_a_replacement_answers() -> None:
    pool = SigningPool(workers=1, authority=make_root(), answer_timeout=0.5)
    await pool.start()
    try:

        async def sign() -> list[str]:
            return await pool.sign(
                csr=make_csr(uris=[ME])[0],
                validity_seconds=0,
                caller_identities=(ME,),
                policy=SigningPolicy(),
                now=now_utc(),
            )

        await sign()
        (worker,) = pool.workers
        assert worker.transport is not None
        os.kill(worker.transport.get_pid(), signal.SIGSTOP)  # alive but never answering
        with pytest.raises(WorkerUnavailable, match="before answering"):
            await sign()
        await asyncio.wait_for(worker.exited.wait(), 30)  # killed and reaped
        pool.answer_timeout = 30.0  # a fresh worker's first answer may be slow on a busy machine
        chain = await sign()  # the replacement
        assert leaf_uris(chain[0]) == [ME] and pool.restart_count == 1
    finally:
        await pool.close()


async def test_a_pool_signs_concurrent_requests_each_for_its_own_key() -> None:
    authority = make_root()
    pool = SigningPool(workers=2, authority=authority)
    await pool.start()
    try:
        csrs = [make_csr(uris=[ME]) for _ in range(20)]
        chains = await asyncio.gather(
            *(
                pool.sign(csr=c, validity_seconds=0, caller_identities=(ME,), policy=SigningPolicy(), now=now_utc())
                for c, _ in csrs
            )
        )
        with pytest.raises(SigningRefused, match="URI SANs"):
            await pool.sign(
                csr=make_csr(uris=[ME, spiffe("a", "b")])[0],
                validity_seconds=0,
                caller_identities=(ME,),
                policy=SigningPolicy(),
                now=now_utc(),
            )
    finally:
        await pool.close()
    for (_, key), chain in zip(csrs, chains, strict=True):
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        assert leaf.public_key() == key.public_key()
        leaf.verify_directly_issued_by(authority.cert)  # raises unless the CA key signed it


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 1), (3, 2), (16, 4)])
def test_default_worker_count_leaves_a_core_for_the_event_loop(cores: int, workers: int) -> None:
    assert default_workers(usable_cores=cores) == workers


@pytest.mark.parametrize(("value", "expected"), [("auto", None), ("0", 0), ("3", 3)])
def test_ca_workers_flag(value: str, expected: int | None) -> None:
    args = build_parser().parse_args(["serve", "--ca-workers", value])
    assert settings_from_args(args).ca_workers == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("many", "--ca-workers: 'many' is not a number"),
        ("-1", "--ca-workers: -1 is out of range"),
        ("65", "out of range"),
    ],
)
def test_a_bad_ca_workers_value_is_refused_naming_the_flag(value: str, message: str) -> None:
    args = build_parser().parse_args(["serve", "--ca-workers", value])
    with pytest.raises(SettingsError, match=message):
        settings_from_args(args)


def test_ca_workers_reads_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPLANE_CA_WORKERS", "2")
    assert settings_from_args(build_parser().parse_args(["serve"])).ca_workers == 2


async def test_requests_queued_around_a_new_authority_in_one_loop_turn_are_signed_in_order() -> None:
    """Frames for a worker are batched per event-loop turn; a rotation queued between two requests still
    splits them: the first is signed by the old root, the second by the new one."""
    old, new = make_root(), make_root()
    pool = SigningPool(workers=1, authority=old)
    await pool.start()

    async def sign() -> list[str]:
        csr = make_csr(uris=[ME])[0]
        return await pool.sign(
            csr=csr, validity_seconds=0, caller_identities=(ME,), policy=SigningPolicy(), now=now_utc()
        )

    try:
        first = asyncio.create_task(sign())
        await asyncio.sleep(0)  # `first` is queued, not yet written
        assert pool.workers[0].outbox
        pool.set_authority(new)
        second = asyncio.create_task(sign())
        chains = await asyncio.gather(first, second)
    finally:
        await pool.close()
    for chain, root in zip(chains, (old, new), strict=True):
        x509.load_pem_x509_certificate(chain[0].encode()).verify_directly_issued_by(root.cert)
        assert chain[-1] == cert_pem(root.cert).decode()
