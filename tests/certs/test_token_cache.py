"""Tokens the CA has verified once are remembered, and the memory never outlives what made them valid:
their expiry, their not-before time, the key that signed them. Over the real wire (gRPC+TLS through
the front end) where a caller would notice; the bounds on the cache itself directly."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authenticate import AuthenticationError, Caller, Credentials
from certs.authenticate import localtoken as localtoken_module
from certs.authenticate.localtoken import LocalTokenAuthenticator, load_or_create_key, mint
from certs.authenticate.tokencache import ENTRY_OVERHEAD, TokenCache, VerifiedToken
from certs.keystore import FileKeyStore
from certs.runtime import build_ca
from controlplane.grpcserver import GrpcServers
from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.certs.helpers import ES256, leaf_uris, make_csr, signed, spiffe, start_ca_servers

SERVER_NAME = "istiod.istio-system.svc"
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclasses.dataclass
class Clock:
    now: dt.datetime = T0

    def __call__(self) -> dt.datetime:
        return self.now


@dataclasses.dataclass
class TokenCa:
    authenticator: LocalTokenAuthenticator
    clock: Clock
    key: ec.EllipticCurvePrivateKey
    root_pem: bytes
    port: int

    def token(self, *, key: ec.EllipticCurvePrivateKey | None = None, ttl: dt.timedelta = dt.timedelta(hours=1)) -> str:
        return mint(key=key or self.key, namespace="shop", service_account="cart", ttl=ttl, now=T0)

    async def call(self, token: str) -> list[str]:
        """The chain the CA returns for a fresh CSR asking for shop/cart; AioRpcError when refused."""
        csr, _ = make_csr(uris=[spiffe("shop", "cart")])
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}",
            grpc.ssl_channel_credentials(self.root_pem),
            options=[("grpc.ssl_target_name_override", SERVER_NAME)],
        ) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            response = await stub.CreateCertificate(
                ca_pb2.IstioCertificateRequest(csr=csr), metadata=[("authorization", f"Bearer {token}")], timeout=30
            )
        return list(response.cert_chain)

    async def refusal(self, token: str) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.call(token)
        return info.value


@pytest.fixture
async def token_ca(tmp_path: pathlib.Path) -> AsyncIterator[Callable[[], Awaitable[TokenCa]]]:
    """The CA behind the TLS front end on loopback, accepting local tokens judged by a clock the test moves."""
    started: list[GrpcServers] = []

    async def start() -> TokenCa:
        key = load_or_create_key(tmp_path)
        clock = Clock()
        authenticator = LocalTokenAuthenticator(public_key=key.public_key(), trust_domain="cluster.local", clock=clock)
        runtime = await build_ca(
            store=FileKeyStore(tmp_path / "ca"), serving_hosts=(SERVER_NAME,), authenticators=[authenticator]
        )
        servers = await start_ca_servers(runtime)
        started.append(servers)
        assert servers.front is not None
        return TokenCa(
            authenticator=authenticator,
            clock=clock,
            key=key,
            root_pem=runtime.ca.current.root_pem,
            port=servers.front.port,
        )

    yield start
    for servers in started:
        await servers.stop(0)


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token whose signature and claims the local-token authenticator checks, in order."""
    checked: list[str] = []
    real = localtoken_module.check_token

    def counting(token: str, **kw: object) -> localtoken_module.CheckedToken:
        checked.append(token)
        return real(token, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(localtoken_module, "check_token", counting)
    return checked


async def test_an_agent_renewing_with_the_same_token_has_it_verified_once(
    token_ca: Callable[[], Awaitable[TokenCa]], verifications: list[str]
) -> None:
    ca = await token_ca()
    token = ca.token()
    for _ in range(3):
        chain = await ca.call(token)
        assert leaf_uris(chain[0]) == [spiffe("shop", "cart")]
    assert verifications == [token]


async def test_a_remembered_token_is_refused_from_its_expiry_on(token_ca: Callable[[], Awaitable[TokenCa]]) -> None:
    ca = await token_ca()
    token = ca.token(ttl=dt.timedelta(minutes=10))
    ca.clock.now = T0 + dt.timedelta(minutes=9, seconds=59)
    await ca.call(token)  # verified and remembered
    ca.clock.now = T0 + dt.timedelta(minutes=10)
    refused = await ca.refusal(token)
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    expiry = (T0 + dt.timedelta(minutes=10)).isoformat()
    assert f"token expired at {expiry}" in (refused.details() or "")


async def test_a_remembered_token_is_refused_before_its_not_before_time(
    token_ca: Callable[[], Awaitable[TokenCa]],
) -> None:
    ca = await token_ca()
    token = ca.token()
    await ca.call(token)
    ca.clock.now = T0 - dt.timedelta(minutes=5)  # the CA's clock was stepped back past the allowed skew
    refused = await ca.refusal(token)
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "token not valid before" in (refused.details() or "")


async def test_tokens_signed_by_a_replaced_token_key_are_refused(
    token_ca: Callable[[], Awaitable[TokenCa]], tmp_path: pathlib.Path
) -> None:
    ca = await token_ca()
    old_token = ca.token()
    await ca.call(old_token)  # verified and remembered under the old key
    new_key = load_or_create_key(tmp_path / "new")
    ca.authenticator.public_key = new_key.public_key()
    refused = await ca.refusal(old_token)
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "token signature does not verify" in (refused.details() or "")
    chain = await ca.call(ca.token(key=new_key))
    assert leaf_uris(chain[0]) == [spiffe("shop", "cart")]


async def test_a_refused_token_is_not_remembered(tmp_path: pathlib.Path, verifications: list[str]) -> None:
    key, other = load_or_create_key(tmp_path), load_or_create_key(tmp_path / "other")
    authenticator = LocalTokenAuthenticator(public_key=key.public_key(), trust_domain="cluster.local")
    forged = Credentials(metadata={"authorization": f"Bearer {mint(key=other, namespace='a', service_account='b')}"})
    for _ in range(2):
        with pytest.raises(AuthenticationError, match="signature does not verify"):
            await authenticator.authenticate(forged)
    assert len(verifications) == 2
    assert len(authenticator.cache) == 0


async def test_the_cache_keeps_to_its_entry_bound_dropping_the_least_recently_used(tmp_path: pathlib.Path) -> None:
    key = load_or_create_key(tmp_path)
    authenticator = LocalTokenAuthenticator(
        public_key=key.public_key(), trust_domain="cluster.local", clock=Clock(), cache=TokenCache(max_entries=4)
    )
    tokens = [mint(key=key, namespace="shop", service_account=f"sa-{n}", now=T0) for n in range(10)]
    first = Credentials(metadata={"authorization": f"Bearer {tokens[0]}"})
    await authenticator.authenticate(first)
    for token in tokens[1:]:
        await authenticator.authenticate(Credentials(metadata={"authorization": f"Bearer {token}"}))
        await authenticator.authenticate(first)  # kept recently used
        assert len(authenticator.cache) <= 4
    assert len(authenticator.cache) == 4
    assert authenticator.cache.lookup(tokens[0], key=authenticator.public_key, now=T0.timestamp()) is not None
    assert authenticator.cache.lookup(tokens[1], key=authenticator.public_key, now=T0.timestamp()) is None


def test_the_cache_keeps_to_its_byte_bound_and_skips_a_token_larger_than_it() -> None:
    cache = TokenCache(max_entries=1000, max_bytes=10 * (100 + ENTRY_OVERHEAD))
    key = object()
    entry = VerifiedToken(caller=Caller(source="t", identities=()), expires=float("inf"), not_before=0)
    for n in range(50):
        cache.store(f"{n:03d}".ljust(100, "x"), entry, key=key)
        assert cache.size_bytes <= cache.max_bytes
    assert len(cache) == 10
    cache.store("y" * cache.max_bytes, entry, key=key)
    assert len(cache) == 10
    assert cache.lookup("y" * cache.max_bytes, key=key, now=1.0) is None
    assert cache.lookup("049".ljust(100, "x"), key=key, now=1.0) is entry.caller


def test_cache_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TokenCache(max_entries=0)
    with pytest.raises(ValueError, match="must be positive"):
        TokenCache(max_bytes=0)
    smallest = TokenCache(max_entries=1, max_bytes=1)  # 1 is positive
    assert (smallest.max_entries, smallest.max_bytes) == (1, 1)


def test_a_token_exactly_as_large_as_the_byte_bound_is_remembered() -> None:
    cache = TokenCache(max_bytes=100 + ENTRY_OVERHEAD)
    key = object()
    entry = VerifiedToken(caller=Caller(source="t", identities=()), expires=float("inf"), not_before=0)
    cache.store("x" * 100, entry, key=key)
    assert cache.lookup("x" * 100, key=key, now=1.0) is entry.caller
    assert cache.size_bytes == cache.max_bytes


def test_a_token_stored_twice_is_one_entry_charged_once() -> None:
    cache = TokenCache()
    key = object()
    first = VerifiedToken(caller=Caller(source="t", identities=("a",)), expires=float("inf"), not_before=0)
    second = VerifiedToken(caller=Caller(source="t", identities=("b",)), expires=float("inf"), not_before=0)
    cache.store("token", first, key=key)
    cache.store("token", second, key=key)
    assert (len(cache), cache.size_bytes) == (1, len("token") + ENTRY_OVERHEAD)
    assert cache.lookup("token", key=key, now=1.0) is second.caller


async def test_a_token_without_iat_or_nbf_is_accepted_and_remembered(
    tmp_path: pathlib.Path, verifications: list[str]
) -> None:
    key = load_or_create_key(tmp_path)
    now = dt.datetime.now(dt.UTC)
    exp = int(now.timestamp()) + 3600
    claims = {"iss": "meshplane-local", "aud": ["istio-ca"], "sub": "system:serviceaccount:shop:cart", "exp": exp}
    token = signed(key, ES256, claims)
    authenticator = LocalTokenAuthenticator(
        public_key=key.public_key(), trust_domain="cluster.local", clock=lambda: now
    )
    credentials = Credentials(metadata={"authorization": f"Bearer {token}"})
    for _ in range(2):
        caller = await authenticator.authenticate(credentials)
        assert caller.identities == (spiffe("shop", "cart"),)
    assert verifications == [token]  # valid from any time on: the second request is a cache hit
