"""How many TokenReviews callers can make meshplane send: one client must not spend them for everyone.

A bearer token that cannot be checked locally costs a TokenReview: a request to the Kubernetes API
server, made as meshplane's own service account. Unbounded, a client that sends a new forged token
with every request (no credentials needed) makes meshplane send one review per request. The API
server's priority and fairness then throttles meshplane itself, and every workload's certificate
and secure xDS stream waits behind the flood. `ReviewGate` bounds what one client can cause. A
client is an IP address (a pod; a node for host-network pods; a gateway for traffic behind SNAT),
and, for a token the cluster's issuer keys verified, the service account the token names
(`subject`): workloads that share an address but not a service account then share no budget, so
one whose tokens keep failing (its pod deleted, a token for the wrong audience) does not hold back
its neighbours. Without verified claims the address alone counts: an unverified subject is the
client's to choose.

- Failed reviews: each client may have `burst` reviews fail; after that, one more per `refill_s`
  seconds. While its budget is spent, its tokens are refused without a review (`ReviewRefused`,
  RESOURCE_EXHAUSTED, saying when to retry and why the last review failed). A valid token never
  fails a review, so a working workload never spends its budget. Reviews in flight are reserved
  against the budget, so no more than `burst` can fail at once.
- Reviews in flight: at most `per_client` for one client, and `total` in all. A client's further
  requests wait their turn in arrival order, at most `waiting` of them (more at once are refused,
  RESOURCE_EXHAUSTED "client_busy"), so workloads that share an address (behind SNAT, host-network
  pods on one node) starting together wait a moment instead of being refused. A request that gets
  its turn after the client's budget ran out meanwhile is refused then.

The table of clients holds at most `max_clients`, least recently seen dropped first, so its size
is bounded whatever addresses call; a client with reviews in flight or waiting is never dropped (it
would start afresh while its requests run), so the table exceeds the bound only by clients that
each hold a live request. Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from certs.authenticate import AuthenticationError

log = logging.getLogger(__name__)

BURST = 20
REFILL_S = 5.0
PER_CLIENT = 4
WAITING = 256
TOTAL = 32
MAX_CLIENTS = 10_000
_REASON_CHARS = 200


class ReviewRefused(AuthenticationError):
    """The client's review budget is spent (`outcome` "client_budget") or it has too many reviews in
    flight and waiting ("client_busy"): retry later."""

    exhausted = True

    def __init__(self, message: str, *, outcome: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(kw_only=True, slots=True)
class _Client:
    budget: float  # failures this client may still cause (before reserving the ones in flight)
    updated: float  # when `budget` was last refilled
    turns: asyncio.Semaphore  # `per_client` reviews at once, the rest wait in arrival order
    in_flight: int = 0
    queued: int = 0  # in flight or waiting for a turn
    last_failure: str = ""
    refusing: bool = False  # refused since its last admitted review (logged once per such spell)


class ReviewGate:
    def __init__(
        self,
        *,
        burst: int = BURST,
        refill_s: float = REFILL_S,
        per_client: int = PER_CLIENT,
        waiting: int = WAITING,
        total: int = TOTAL,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises ValueError unless every bound is positive (`waiting` may be 0)."""
        if min(burst, per_client, total, max_clients) < 1 or refill_s <= 0 or waiting < 0:
            raise ValueError(
                f"review gate bounds must be positive (burst {burst}, refill_s {refill_s}, per_client {per_client}, "
                f"waiting {waiting}, total {total}, max_clients {max_clients})"
            )
        self.burst = burst
        self.refill_s = refill_s
        self.per_client = per_client
        self.waiting = waiting
        self.max_clients = max_clients
        self.clock = clock
        self._total = asyncio.Semaphore(total)
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    @contextlib.asynccontextmanager
    async def review(self, client: str, *, subject: str = "") -> AsyncIterator[None]:
        """Hold a review for `client` (see `controlplane.peers.client_of_peer`) while the block runs;
        `subject`: the service account a verified token names ("" when not verified).

        Waits for the client's turn (module docstring). Raises ReviewRefused when the client may not
        have one now, on arrival or when its turn comes. An AuthenticationError other than "unavailable"
        leaving the block counts as a failed review (its message is kept for the next refusal); an
        unavailable API server or any other exception does not."""
        if subject:
            client = f"{client} as {subject}"
        entry = self._admit(client)
        self._check_budget(client, entry)
        entry.queued += 1
        try:
            async with entry.turns:
                self._refill(entry)
                self._check_budget(client, entry)
                entry.in_flight += 1
                try:
                    async with self._total:
                        yield
                except AuthenticationError as exc:
                    if not exc.unavailable:
                        self._refill(entry)
                        entry.budget -= 1
                        entry.last_failure = str(exc)[:_REASON_CHARS]
                    raise
                finally:
                    entry.in_flight -= 1
        finally:
            entry.queued -= 1

    def _admit(self, client: str) -> _Client:
        now = self.clock()
        entry = self._clients.get(client)
        if entry is None:
            turns = asyncio.Semaphore(self.per_client)
            entry = self._clients[client] = _Client(budget=float(self.burst), updated=now, turns=turns)
            self._evict()
        else:
            self._clients.move_to_end(client)
            self._refill(entry)
        if entry.queued >= self.per_client + self.waiting:
            raise ReviewRefused(
                f"{entry.in_flight} token reviews in flight and {entry.queued - entry.in_flight} waiting for client "
                f"{client}, the most one client may have ({self.per_client} and {self.waiting}); retry when "
                "some are answered",
                outcome="client_busy",
            )
        return entry

    def _evict(self) -> None:
        """Drop the least recently seen clients past `max_clients`, skipping those with reviews in flight or
        waiting: dropped, such a client would start afresh (budget and turns) while its requests still run.
        The newest client, just added, is never looked at."""
        for _ in range(len(self._clients) - 1):
            if len(self._clients) <= self.max_clients:
                return
            client, entry = next(iter(self._clients.items()))
            if entry.queued:
                self._clients.move_to_end(client)
            else:
                del self._clients[client]

    def _check_budget(self, client: str, entry: _Client) -> None:
        spare = entry.budget - entry.in_flight
        if spare < 1:
            wait = (1 - spare) * self.refill_s
            refusal = ReviewRefused(
                f"too many failed token reviews from client {client} (at most {self.burst}, then one per "
                f"{self.refill_s:g}s); retry in {wait:.0f}s; the last failure: {entry.last_failure or '(in flight)'}",
                outcome="client_budget",
            )
            if not entry.refusing:
                entry.refusing = True
                log.warning("refusing bearer tokens without review: %s", refusal)
            raise refusal
        entry.refusing = False

    def _refill(self, entry: _Client) -> None:
        now = self.clock()
        entry.budget = min(float(self.burst), entry.budget + (now - entry.updated) / self.refill_s)
        entry.updated = now
