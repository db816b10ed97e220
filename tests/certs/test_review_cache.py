"""A token the API server accepted is not reviewed again for 10 s (`kubejwt.REVIEW_TTL_S`) nor past its `exp`.

Without it a workload that sends its valid token with every request, or a compromised one flooding the
CA with it, costs the API server one TokenReview per request; the review gate does not help, since a
valid token never fails a review.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from certs.authenticate import AuthenticationError, Credentials
from certs.authenticate.kubejwt import REVIEW_TTL_S, KubeJwtAuthenticator, TokenReview
from certs.authenticate.reviewgate import ReviewGate, ReviewRefused
from certs.authenticate.tokencache import TokenCache
from tests.certs.fakes import FakeTokenReviewer, shaped_token

NOW = 1_800_000_000.0
GOOD = shaped_token("good", exp=NOW + 3600)
GRANTED = TokenReview(authenticated=True, username="system:serviceaccount:shop:cart", audiences=("istio-ca",))
CART = ("spiffe://cluster.local/ns/shop/sa/cart",)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def bearer(token: str, client: str = "10.0.0.1", **metadata: str) -> Credentials:
    return Credentials(metadata={"authorization": f"Bearer {token}", **metadata}, client=client)


def kube(reviewer: FakeTokenReviewer, clock: Clock, **kw: object) -> KubeJwtAuthenticator:
    return KubeJwtAuthenticator(
        reviewer=reviewer,
        trust_domain="cluster.local",
        cluster_id="Kubernetes",
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


def cached_count() -> float:
    return REGISTRY.get_sample_value("meshplane_ca_token_reviews_total", {"outcome": "cached"}) or 0.0


async def test_an_accepted_token_is_reviewed_once_per_10_seconds_and_counted_as_cached() -> None:
    clock, reviewer = Clock(), FakeTokenReviewer(reviews={GOOD: GRANTED})
    auth = kube(reviewer, clock)
    before = cached_count()
    for _ in range(100):
        assert (await auth.authenticate(bearer(GOOD))).identities == CART
        clock.now += 0.09
    assert len(reviewer.asked) == 1 and cached_count() - before == 99
    clock.now = NOW + REVIEW_TTL_S - 0.001
    await auth.authenticate(bearer(GOOD))
    assert len(reviewer.asked) == 1
    clock.now = NOW + REVIEW_TTL_S
    await auth.authenticate(bearer(GOOD))
    assert len(reviewer.asked) == 2


async def test_a_revoked_token_is_refused_once_its_10_seconds_are_over() -> None:
    clock, reviewer = Clock(), FakeTokenReviewer(reviews={GOOD: GRANTED})
    auth = kube(reviewer, clock)
    await auth.authenticate(bearer(GOOD))
    del reviewer.reviews[GOOD]  # its pod was deleted
    clock.now += REVIEW_TTL_S
    with pytest.raises(AuthenticationError, match="token not authenticated"):
        await auth.authenticate(bearer(GOOD))


async def test_an_entry_never_outlives_the_tokens_exp() -> None:
    clock = Clock()
    short = shaped_token("short", exp=NOW + 3)
    reviewer = FakeTokenReviewer(reviews={short: GRANTED})
    auth = kube(reviewer, clock)
    await auth.authenticate(bearer(short))
    clock.now = NOW + 2.999
    await auth.authenticate(bearer(short))
    assert len(reviewer.asked) == 1
    clock.now = NOW + 3  # still inside the API server's leeway, so it is reviewed, not refused here
    await auth.authenticate(bearer(short))
    assert len(reviewer.asked) == 2


async def test_refusals_are_never_cached_and_an_edited_token_is_reviewed() -> None:
    clock, reviewer = Clock(), FakeTokenReviewer(reviews={GOOD: GRANTED})
    auth = kube(reviewer, clock)
    forged = shaped_token("forged", exp=NOW + 3600)
    for _ in range(2):
        with pytest.raises(AuthenticationError, match="invalid bearer token"):
            await auth.authenticate(bearer(forged))
    await auth.authenticate(bearer(GOOD))
    edited = GOOD[:-1] + ("A" if GOOD[-1] != "A" else "B")
    with pytest.raises(AuthenticationError, match="invalid bearer token"):
        await auth.authenticate(bearer(edited))
    assert [token for token, _ in reviewer.asked] == [forged, forged, GOOD, edited]


async def test_a_cached_token_passes_while_its_clients_review_budget_is_spent() -> None:
    clock, reviewer = Clock(), FakeTokenReviewer(reviews={GOOD: GRANTED})
    auth = kube(reviewer, clock, gate=ReviewGate(burst=1, clock=clock))
    await auth.authenticate(bearer(GOOD))
    with pytest.raises(AuthenticationError):
        await auth.authenticate(bearer(shaped_token("forged", exp=NOW + 3600)))
    with pytest.raises(ReviewRefused):
        await auth.authenticate(bearer(shaped_token("another", exp=NOW + 3600)))
    assert (await auth.authenticate(bearer(GOOD))).identities == CART  # no review needed, none spent


async def test_the_cluster_and_the_tokens_shape_are_checked_before_the_cache() -> None:
    clock, reviewer = Clock(), FakeTokenReviewer(reviews={GOOD: GRANTED})
    auth = kube(reviewer, clock)
    await auth.authenticate(bearer(GOOD))
    with pytest.raises(AuthenticationError, match="clusterid 'remote' is not this cluster"):
        await auth.authenticate(bearer(GOOD, clusterid="remote"))
    clock.now = NOW + 3600 + 61  # past exp and the leeway; the entry was gone long before
    with pytest.raises(AuthenticationError, match="bearer token expired"):
        await auth.authenticate(bearer(GOOD))


async def test_a_review_ttl_of_0_reviews_every_request() -> None:
    clock, reviewer = Clock(), FakeTokenReviewer(reviews={GOOD: GRANTED})
    auth = kube(reviewer, clock, review_ttl_s=0.0)
    for _ in range(3):
        await auth.authenticate(bearer(GOOD))
    assert len(reviewer.asked) == 3 and len(auth.cache) == 0


async def test_a_ttl_under_a_second_caches_for_that_long() -> None:
    clock, reviewer = Clock(), FakeTokenReviewer(reviews={GOOD: GRANTED})
    auth = kube(reviewer, clock, review_ttl_s=0.5)
    await auth.authenticate(bearer(GOOD))
    clock.now = NOW + 0.4
    await auth.authenticate(bearer(GOOD))
    assert len(reviewer.asked) == 1
    clock.now = NOW + 0.5
    await auth.authenticate(bearer(GOOD))
    assert len(reviewer.asked) == 2


async def test_the_cache_passed_in_is_the_one_filled() -> None:
    clock, reviewer = Clock(), FakeTokenReviewer(reviews={GOOD: GRANTED})
    cache = TokenCache(max_entries=1)
    auth = kube(reviewer, clock, cache=cache)
    await auth.authenticate(bearer(GOOD))
    assert len(cache) == 1


class HeldReviewer(FakeTokenReviewer):
    """Answers once `release` is set, so that requests pile up while a review is in flight."""

    def __init__(self, reviews: dict[str, TokenReview]) -> None:
        super().__init__(reviews=reviews)
        self.release = asyncio.Event()

    async def review(self, *, token: str, audiences: Sequence[str]) -> TokenReview:
        self.asked.append((token, tuple(audiences)))
        await self.release.wait()
        return self.reviews.get(token, TokenReview(authenticated=False, error="invalid bearer token"))


async def test_requests_with_a_token_whose_review_is_in_flight_share_that_review() -> None:
    reviewer, clock = HeldReviewer({GOOD: GRANTED}), Clock()
    auth = kube(reviewer, clock)
    clients = ["10.0.0.1"] * 4 + ["10.0.0.2"] * 4
    waiting = [asyncio.create_task(auth.authenticate(bearer(GOOD, client))) for client in clients]
    await asyncio.sleep(0)
    reviewer.release.set()
    assert [caller.identities for caller in await asyncio.gather(*waiting)] == [CART] * 8
    assert len(reviewer.asked) == 1


async def test_a_shared_failed_review_is_charged_to_every_client_that_waited_for_it() -> None:
    revoked = shaped_token("revoked", exp=NOW + 3600)
    reviewer, gate = HeldReviewer({}), ReviewGate(burst=1, refill_s=60.0)
    auth = kube(reviewer, Clock(), gate=gate)
    waiting = [asyncio.create_task(auth.authenticate(bearer(revoked, client))) for client in ("10.0.0.1", "10.0.0.2")]
    await asyncio.sleep(0)
    reviewer.release.set()
    for outcome in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(outcome, AuthenticationError) and "invalid bearer token" in str(outcome)
    assert len(reviewer.asked) == 1
    for client in ("10.0.0.1", "10.0.0.2"):  # each spent its one failure: the next review is refused
        with pytest.raises(ReviewRefused, match=f"too many failed token reviews from client {client}"):
            await auth.authenticate(bearer(revoked, client))


async def test_a_shared_review_outlives_the_request_that_started_it() -> None:
    reviewer = HeldReviewer({GOOD: GRANTED})
    auth = kube(reviewer, Clock())
    first = asyncio.create_task(auth.authenticate(bearer(GOOD, "10.0.0.1")))
    await asyncio.sleep(0)
    second = asyncio.create_task(auth.authenticate(bearer(GOOD, "10.0.0.2")))
    await asyncio.sleep(0)
    first.cancel()  # its client hung up
    reviewer.release.set()
    assert (await second).identities == CART and len(reviewer.asked) == 1
    with pytest.raises(asyncio.CancelledError):
        await first
