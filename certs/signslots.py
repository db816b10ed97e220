"""How much of the CA's signing one client may hold at once, so that a flood of valid requests from one
client does not make everyone else's certificates wait behind it.

The signing workers serve requests in arrival order. Unbounded, a client that keeps 1,000 valid CSRs in
flight (its own token or certificate is enough) puts each other workload's request behind its 1,000:
measured on 2 cores, another client's CSR then took 255 ms instead of 1.2 ms. `SigningSlots` lets each
client address (`controlplane.peers.client_of_peer`: a pod, or a node for host-network pods) have
`in_flight` requests with the signers at once; its further requests wait their turn in arrival order,
at most `waiting` of them, and are refused beyond that (`SlotsExhausted`: RESOURCE_EXHAUSTED naming the
client and both limits). Another client's request then waits behind at most `in_flight` of the
flooder's. The table holds only clients with requests in flight or waiting. Not thread-safe: one
event loop owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

IN_FLIGHT = 32
WAITING = 1024


class SlotsExhausted(Exception):
    """The client already has `in_flight` requests signing and `waiting` more waiting: retry later."""


@dataclass(kw_only=True, slots=True)
class _Client:
    semaphore: asyncio.Semaphore
    users: int = 0  # requests signing or waiting


class SigningSlots:
    def __init__(self, *, in_flight: int = IN_FLIGHT, waiting: int = WAITING) -> None:
        if in_flight < 1 or waiting < 0:
            raise ValueError(f"signing slots: in_flight must be >= 1 and waiting >= 0, not {in_flight} and {waiting}")
        self.in_flight = in_flight
        self.waiting = waiting
        self._clients: dict[str, _Client] = {}

    def __len__(self) -> int:
        """Clients with requests signing or waiting."""
        return len(self._clients)

    def users(self, client: str) -> int:
        """Requests of `client` signing or waiting now."""
        entry = self._clients.get(client)
        return entry.users if entry is not None else 0

    @contextlib.asynccontextmanager
    async def slot(self, client: str) -> AsyncIterator[None]:
        """Hold one of `client`'s signing slots while the block runs, waiting for one if all are taken.

        Raises SlotsExhausted at once when `waiting` requests of the client already wait."""
        entry = self._clients.get(client)
        if entry is None:
            entry = self._clients[client] = _Client(semaphore=asyncio.Semaphore(self.in_flight))
        if entry.users >= self.in_flight + self.waiting:
            raise SlotsExhausted(
                f"client {client or '(unknown address)'} already has {self.in_flight} certificate requests being "
                f"signed and {self.waiting} waiting, the most one client address may have; retry when some are answered"
            )
        entry.users += 1
        try:
            async with entry.semaphore:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._clients[client]
