"""What a client can make the CA ask the API server: tokens of the wrong shape are never reviewed, and
a client whose reviews keep failing is refused (RESOURCE_EXHAUSTED) before it costs more reviews,
without touching any other client."""

from __future__ import annotations

import asyncio
import base64
import math

import grpc
import pytest
from prometheus_client import REGISTRY

from certs.authenticate import AuthenticationError, Credentials
from certs.authenticate.kubejwt import MAX_TOKEN_BYTES, KubeJwtAuthenticator, TokenReview
from certs.authenticate.reviewgate import PER_CLIENT, ReviewGate, ReviewRefused
from certs.ca import CertificateAuthority
from certs.metrics import REVIEW_OUTCOMES
from certs.service import CaError, CertificateService
from controlplane.peers import client_of_peer
from tests.certs.fakes import FakeTokenReviewer, shaped_token
from tests.certs.helpers import make_root

GOOD = shaped_token("good")
GRANTED = TokenReview(authenticated=True, username="system:serviceaccount:shop:cart", audiences=("istio-ca",))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def kube(
    reviewer: FakeTokenReviewer, gate: ReviewGate, *, now: float = 1_800_000_000.0, review_ttl_s: float = 0.0
) -> KubeJwtAuthenticator:
    """The gate's tests see every token reviewed (`review_ttl_s` 0: nothing cached); test_review_cache.py
    covers the cache."""
    return KubeJwtAuthenticator(
        reviewer=reviewer,
        trust_domain="cluster.local",
        cluster_id="Kubernetes",
        gate=gate,
        review_ttl_s=review_ttl_s,
        clock=lambda: now,
    )


def bearer(token: str, client: str = "10.0.0.1") -> Credentials:
    return Credentials(metadata={"authorization": f"Bearer {token}"}, client=client)


async def fail_until_refused(auth: KubeJwtAuthenticator, client: str, limit: int = 100) -> int:
    """Send new forged tokens from `client` until one is refused without a review; how many were reviewed."""
    for n in range(limit):
        try:
            await auth.authenticate(bearer(shaped_token(f"forged-{client}-{n}"), client))
        except ReviewRefused:
            return n
        except AuthenticationError:
            continue
    raise AssertionError(f"{client} was never refused in {limit} tries")


async def test_a_client_whose_reviews_fail_gets_burst_reviews_then_refusals_naming_why_and_when(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reviewer, clock = FakeTokenReviewer(reviews={GOOD: GRANTED}), Clock()
    auth = kube(reviewer, ReviewGate(burst=5, refill_s=10, clock=clock))
    assert await fail_until_refused(auth, "10.0.0.9") == 5
    assert len(reviewer.asked) == 5
    with pytest.raises(ReviewRefused) as refused:
        await auth.authenticate(bearer(GOOD, "10.0.0.9"))  # a valid token too: it cannot be told apart unreviewed
    message = str(refused.value)
    assert "too many failed token reviews from client 10.0.0.9 (at most 5, then one per 10s)" in message
    assert "retry in 10s" in message and "token not authenticated: invalid bearer token" in message
    assert len(reviewer.asked) == 5
    warnings = [r.getMessage() for r in caplog.records if r.name == "certs.authenticate.reviewgate"]
    assert len(warnings) == 1 and "too many failed token reviews from client 10.0.0.9" in warnings[0]  # once
    # Another client is not touched, and a valid token never spends anything.
    for _ in range(20):
        assert (await auth.authenticate(bearer(GOOD, "10.0.0.7"))).identities
    # One review more per refill period; a review that succeeds spends none of it.
    clock.now += 10
    assert (await auth.authenticate(bearer(GOOD, "10.0.0.9"))).identities
    clock.now += 10
    assert await fail_until_refused(auth, "10.0.0.9") == 2


async def test_an_unavailable_api_server_spends_no_budget() -> None:
    reviewer = FakeTokenReviewer(reviews={GOOD: GRANTED}, down=True)
    auth = kube(reviewer, ReviewGate(burst=2, clock=Clock()))
    for _ in range(10):
        with pytest.raises(AuthenticationError) as caught:
            await auth.authenticate(bearer(GOOD))
        assert caught.value.unavailable and not isinstance(caught.value, ReviewRefused)
    reviewer.down = False
    assert (await auth.authenticate(bearer(GOOD))).identities


class BlockingReviewer(FakeTokenReviewer):
    """Holds every review until `release` is set."""

    def __init__(self) -> None:
        super().__init__(reviews={GOOD: GRANTED})
        self.release = asyncio.Event()

    async def review(self, *, token: str, audiences: object) -> TokenReview:
        await self.release.wait()
        return await super().review(token=token, audiences=("istio-ca",))


async def test_reviews_in_flight_are_bounded_per_client_and_in_all() -> None:
    reviewer = BlockingReviewer()
    tokens = [shaped_token(f"held-{n}") for n in range(6)]  # distinct: one token's requests share a review
    reviewer.reviews.update({token: GRANTED for token in tokens})
    auth = kube(reviewer, ReviewGate(per_client=2, waiting=1, total=3, clock=Clock()))
    held = [asyncio.create_task(auth.authenticate(bearer(tokens[n], "10.0.0.1"))) for n in range(3)]
    await asyncio.sleep(0.01)
    with pytest.raises(ReviewRefused) as busy:
        await auth.authenticate(bearer(tokens[3], "10.0.0.1"))
    assert str(busy.value) == (
        "2 token reviews in flight and 1 waiting for client 10.0.0.1, the most one client may have "
        "(2 and 1); retry when some are answered"
    )
    others = [asyncio.create_task(auth.authenticate(bearer(tokens[4 + n], f"10.0.1.{n}"))) for n in range(2)]
    await asyncio.sleep(0.01)
    # 10.0.0.1: 2 reviewing, 1 waiting its turn; 10.0.1.0 reviewing (3 in all), 10.0.1.1 waiting for one
    assert not any(t.done() for t in [*held, *others])
    reviewer.release.set()
    callers = await asyncio.gather(*held, *others)
    assert all(c.identities for c in callers) and len(reviewer.asked) == 5


class CountingReviewer(FakeTokenReviewer):
    """Accepts every token after a moment, and records the most reviews it had at once."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.most = 0

    async def review(self, *, token: str, audiences: object) -> TokenReview:
        self.asked.append((token, ("istio-ca",)))
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.001)
        self.now -= 1
        return GRANTED


async def test_workloads_sharing_an_address_that_start_together_wait_their_turn_instead_of_being_refused() -> None:
    """Behind SNAT, or host-network pods on one node, 50 workloads' first requests arrive at once from one
    address, each with its own valid token: they used to get RESOURCE_EXHAUSTED past 4 in flight."""
    reviewer = CountingReviewer()
    auth = kube(reviewer, ReviewGate(clock=Clock()))
    tokens = [shaped_token(f"pod-{n}") for n in range(50)]
    callers = await asyncio.gather(*(auth.authenticate(bearer(token, "10.0.0.1")) for token in tokens))
    assert len(callers) == 50 and len(reviewer.asked) == 50 and reviewer.most == PER_CLIENT


async def test_a_request_whose_turn_comes_after_the_budget_ran_out_is_refused_unreviewed() -> None:
    reviewer = BlockingReviewer()
    auth = kube(reviewer, ReviewGate(burst=1, per_client=1, clock=Clock()))
    failing = asyncio.create_task(auth.authenticate(bearer(shaped_token("forged"))))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(auth.authenticate(bearer(shaped_token("forged-too"))))
    await asyncio.sleep(0.01)
    reviewer.release.set()
    with pytest.raises(AuthenticationError, match="invalid bearer token"):
        await failing
    with pytest.raises(ReviewRefused, match=r"too many failed token reviews from client 10\.0\.0\.1"):
        await waiting
    assert len(reviewer.asked) == 1


async def test_reviews_in_flight_are_reserved_against_the_budget() -> None:
    reviewer = BlockingReviewer()
    auth = kube(reviewer, ReviewGate(burst=2, per_client=10, clock=Clock()))
    pending = [asyncio.create_task(auth.authenticate(bearer(shaped_token(f"f{n}")))) for n in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(ReviewRefused, match=r"the last failure: \(in flight\)"):
        await auth.authenticate(bearer(shaped_token("f3")))
    reviewer.release.set()
    for outcome in await asyncio.gather(*pending, return_exceptions=True):
        assert isinstance(outcome, AuthenticationError) and not isinstance(outcome, ReviewRefused)


async def test_the_client_table_is_bounded() -> None:
    gate = ReviewGate(max_clients=3, clock=Clock())
    auth = kube(FakeTokenReviewer(reviews={GOOD: GRANTED}), gate)
    for n in range(50):
        await auth.authenticate(bearer(GOOD, f"10.0.0.{n}"))
    assert len(gate) == 3


LONG = "x" * 50
DEEP = base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=")
NOT_A_JWT = "bearer token is not a JWT (three base64url parts separated by dots)"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not-a-jwt", NOT_A_JWT),
        ("a.b.c.d", NOT_A_JWT),
        ("e30.e30.+/", NOT_A_JWT),
        ("bm90IGpzb24.e30.c2ln", "bearer token is not a JWT: its header is not a base64url JSON object"),
        ("e30.e30.c2ln", "bearer token is not a JWT: its header has no alg"),
        ("eyJhbGciOiJFUzI1NiJ9.WzFd.c2ln", "bearer token is not a JWT: its payload is not a base64url JSON object"),
        (shaped_token("x", exp=1_700_000_000), "bearer token expired at 2023-11-14T22:13:20+00:00"),
        (shaped_token("x", exp=1_800_000_000 - 60.5), "bearer token expired at 2027-01-15T07:58:59+00:00"),
        # No JSON numbers (-Infinity, NaN) or beyond a float64 (float() of 10**400 raised OverflowError)
        (shaped_token("x", exp=-math.inf), "bearer token is not a JWT: its payload is not a base64url JSON object"),
        (shaped_token("x", exp=math.nan), "bearer token is not a JWT: its payload is not a base64url JSON object"),
        (shaped_token("x", exp=10**400), "bearer token is not a JWT: its payload is not a base64url JSON object"),
        (shaped_token("x", exp=-1e300), "bearer token expired at exp -1e+300"),  # before any date
        # 5,000 brackets made json.loads raise RecursionError out of the CA, before any signature check
        (f"eyJhbGciOiJFUzI1NiJ9.{DEEP}.c2ln", "bearer token is not a JWT: its payload is not a base64url JSON object"),
        (shaped_token("x", exp=LONG), f"bearer token's exp is not a number: {LONG[:40]!r}"),  # type: ignore[arg-type]
        (shaped_token("x", exp=True), "bearer token's exp is not a number: 'True'"),
        (
            "a" * (MAX_TOKEN_BYTES + 1),
            f"bearer token is {MAX_TOKEN_BYTES + 1} bytes, over {MAX_TOKEN_BYTES}: not a service-account token",
        ),
    ],
)
async def test_a_token_that_cannot_be_a_live_service_account_token_is_never_reviewed(token: str, message: str) -> None:
    reviewer = FakeTokenReviewer()
    gate = ReviewGate(burst=1, clock=Clock())
    with pytest.raises(AuthenticationError) as caught:
        await kube(reviewer, gate).authenticate(bearer(token))
    assert str(caught.value) == message and not isinstance(caught.value, ReviewRefused)
    assert reviewer.asked == []
    assert len(gate) == 0  # and it spent nothing


def padded_to(length: int) -> str:
    """A JWT-shaped token of exactly `length` characters."""
    head, claims, _ = shaped_token("x").split(".")
    return f"{head}.{claims}.{'s' * (length - len(head) - len(claims) - 2)}"


async def test_tokens_up_to_the_limit_with_headers_of_any_size_or_late_within_the_leeway_are_reviewed() -> None:
    now = 1_800_000_000.0
    tokens = [
        shaped_token("legacy"),  # no exp: a Secret-based token
        shaped_token("late", exp=now - 60),  # the API server's leeway
        padded_to(MAX_TOKEN_BYTES),
        *(shaped_token("x", kid="k" * n) for n in range(12)),  # every length of header, mod 4 and mod 5
    ]
    reviewer = FakeTokenReviewer(reviews=dict.fromkeys(tokens, GRANTED))
    auth = kube(reviewer, ReviewGate(), now=now)
    for token in tokens:
        assert (await auth.authenticate(bearer(token))).identities
    assert [t for t, _ in reviewer.asked] == tokens


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("ipv4:10.1.2.3:5000", "10.1.2.3"),
        ("ipv6:[fd00::1]:5000", "fd00::1"),
        ("ipv4:10.1.2.3", "10.1.2.3"),
        ("unix:/run/x.sock", "unix:/run/x.sock"),
        ("", ""),
    ],
)
def test_a_client_is_the_address_of_its_peer_without_the_port(peer: str, client: str) -> None:
    assert client_of_peer(peer) == client


async def test_the_ca_answers_a_spent_budget_with_resource_exhausted() -> None:
    gate = ReviewGate(burst=1, clock=Clock())
    service = CertificateService(ca=CertificateAuthority(make_root()), authenticators=[kube(FakeTokenReviewer(), gate)])
    with pytest.raises(CaError) as first:
        await service.authenticate(bearer(shaped_token("forged-1")))
    assert first.value.code is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(CaError) as second:
        await service.authenticate(bearer(shaped_token("forged-2")))
    assert second.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many failed token reviews from client 10.0.0.1" in str(second.value)


@pytest.mark.parametrize(
    "bounds",
    [{"burst": 0}, {"per_client": 0}, {"waiting": -1}, {"total": 0}, {"max_clients": 0}, {"refill_s": 0.0}],
)
def test_every_bound_must_be_positive(bounds: dict[str, float]) -> None:
    settings: dict[str, float] = {
        "burst": 1,
        "refill_s": 0.5,
        "per_client": 1,
        "waiting": 0,
        "total": 1,
        "max_clients": 1,
    }
    ReviewGate(**settings)  # type: ignore[arg-type]  # the smallest that work
    values = {**settings, **bounds}
    with pytest.raises(ValueError) as caught:
        ReviewGate(**values)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"review gate bounds must be positive (burst {values['burst']}, refill_s {values['refill_s']}, "
        f"per_client {values['per_client']}, waiting {values['waiting']}, total {values['total']}, "
        f"max_clients {values['max_clients']})"
    )


async def test_the_least_recently_seen_client_is_forgotten_first() -> None:
    gate = ReviewGate(burst=1, max_clients=2, clock=Clock())
    auth = kube(FakeTokenReviewer(reviews={GOOD: GRANTED}), gate)
    for client in ("10.0.0.1", "10.0.0.2"):
        await auth.authenticate(bearer(GOOD, client))
    assert await fail_until_refused(auth, "10.0.0.3") == 1  # it took 10.0.0.1's place, and is remembered
    assert await fail_until_refused(auth, "10.0.0.2") == 1
    assert await fail_until_refused(auth, "10.0.0.3") == 0  # still remembered: 10.0.0.2 was older


class HoldingReviewer(FakeTokenReviewer):
    """Holds the reviews of the tokens in `held` until `release` is set; answers the others at once."""

    def __init__(self, held: list[str]) -> None:
        super().__init__(reviews={token: GRANTED for token in [GOOD, *held]})
        self.held = set(held)
        self.release = asyncio.Event()

    async def review(self, *, token: str, audiences: object) -> TokenReview:
        if token in self.held:
            await self.release.wait()
        return await super().review(token=token, audiences=("istio-ca",))


async def test_a_client_with_reviews_in_flight_or_waiting_is_not_forgotten() -> None:
    """Forgotten while its requests run, a client would start afresh, with a new budget and new turns, and
    could have more reviews at once than its bound: a flood of new addresses must not do that for it."""
    tokens = [shaped_token(f"held-{n}") for n in range(3)]
    reviewer = HoldingReviewer(tokens)
    gate = ReviewGate(per_client=1, waiting=1, max_clients=2, clock=Clock())
    auth = kube(reviewer, gate)
    held = [asyncio.create_task(auth.authenticate(bearer(tokens[n], "10.0.0.1"))) for n in range(2)]
    try:
        await asyncio.sleep(0.01)  # 10.0.0.1: one in flight, one waiting
        for n in range(5):  # new addresses, each reviewed at once; 10.0.0.1 is the least recently seen
            await auth.authenticate(bearer(GOOD, f"10.0.1.{n}"))
        assert len(gate) == 2
        with pytest.raises(ReviewRefused, match=r"1 token reviews in flight and 1 waiting for client 10\.0\.0\.1"):
            # still bounded: it was not forgotten (forgotten, it would start a review and wait)
            await asyncio.wait_for(auth.authenticate(bearer(tokens[2], "10.0.0.1")), 5)
    finally:
        reviewer.release.set()
        await asyncio.gather(*held)
    await auth.authenticate(bearer(GOOD, "10.0.2.1"))  # idle now, the oldest may go
    assert len(gate) == 2


async def test_a_busy_client_kept_past_the_bound_keeps_its_limits() -> None:
    reviewer = BlockingReviewer()
    tokens = [shaped_token(f"held-{n}") for n in range(3)]
    reviewer.reviews.update({token: GRANTED for token in tokens})
    gate = ReviewGate(per_client=1, waiting=0, max_clients=1, clock=Clock())
    auth = kube(reviewer, gate)
    held = asyncio.create_task(auth.authenticate(bearer(tokens[0], "10.0.0.1")))
    await asyncio.sleep(0.01)
    other = asyncio.create_task(auth.authenticate(bearer(tokens[1], "10.0.0.2")))
    try:
        await asyncio.sleep(0.01)
        with pytest.raises(ReviewRefused, match=r"1 token reviews in flight and 0 waiting for client 10\.0\.0\.1"):
            await asyncio.wait_for(auth.authenticate(bearer(tokens[2], "10.0.0.1")), 5)
        assert len(gate) == 2  # over the bound by the clients that hold live requests, no more
    finally:
        reviewer.release.set()
        await asyncio.gather(held, other)


async def test_idle_clients_go_first_even_behind_a_busy_one() -> None:
    reviewer = HoldingReviewer([HELD := shaped_token("held")])
    gate = ReviewGate(max_clients=1, clock=Clock())
    auth = kube(reviewer, gate)
    held = asyncio.create_task(auth.authenticate(bearer(HELD, "10.0.0.1")))
    try:
        await asyncio.sleep(0.01)
        for client in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):  # each idle once answered
            await auth.authenticate(bearer(GOOD, client))
            assert len(gate) == 2  # the busy 10.0.0.1 and the newest
    finally:
        reviewer.release.set()
        await held


async def test_the_retry_time_counts_what_has_refilled() -> None:
    clock = Clock()
    auth = kube(FakeTokenReviewer(), ReviewGate(burst=2, refill_s=10, clock=clock))
    assert await fail_until_refused(auth, "10.0.0.1") == 2
    clock.now += 2.5
    with pytest.raises(ReviewRefused, match="retry in 8s"):
        await auth.authenticate(bearer(shaped_token("again")))


def outcomes() -> dict[str, float]:
    return {
        o: REGISTRY.get_sample_value("meshplane_ca_token_reviews_total", {"outcome": o}) or 0.0 for o in REVIEW_OUTCOMES
    }


async def test_every_outcome_is_counted_for_operators() -> None:
    before = outcomes()
    reviewer = BlockingReviewer()
    reviewer.release.set()
    auth = kube(reviewer, ReviewGate(burst=1, per_client=1, waiting=0, clock=Clock()), review_ttl_s=10.0)
    await auth.authenticate(bearer(GOOD))
    await auth.authenticate(bearer(GOOD))  # cached
    with pytest.raises(AuthenticationError):
        await auth.authenticate(bearer("not-a-jwt"))
    with pytest.raises(AuthenticationError):
        await auth.authenticate(bearer(shaped_token("forged")))
    with pytest.raises(ReviewRefused):
        await auth.authenticate(bearer(shaped_token("another")))
    auth.review_ttl_s = 0.0
    auth.cache.clear()
    reviewer.release.clear()
    held = asyncio.create_task(auth.authenticate(bearer(GOOD, "10.0.0.2")))
    await asyncio.sleep(0.01)
    with pytest.raises(ReviewRefused):
        await auth.authenticate(bearer(GOOD, "10.0.0.2"))
    reviewer.release.set()
    await held
    reviewer.down = True
    with pytest.raises(AuthenticationError):
        await auth.authenticate(bearer(GOOD, "10.0.0.3"))
    after = outcomes()
    assert {o: after[o] - before[o] for o in REVIEW_OUTCOMES} == {
        "reviewed_ok": 2,
        "reviewed_refused": 1,
        "review_unavailable": 1,
        "not_a_token": 1,
        "client_budget": 1,
        "client_busy": 1,
        "cached": 1,
        "bad_signature": 0,  # test_issuer_keys.py
        "unknown_key": 0,  # test_issuer_keys.py
        "bad_claims": 0,  # test_issuer_keys.py
    }
