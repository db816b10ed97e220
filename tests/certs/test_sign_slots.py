"""One client's flood of valid CSRs must not make other workloads' certificates wait behind it (`certs.signslots`).

Each client address has 32 requests with the signers at once; more wait in its own queue (at most 1,024,
then RESOURCE_EXHAUSTED), so another client's request waits behind at most 32 of the flooder's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import REGISTRY

from certs.authenticate import Caller, Credentials
from certs.ca import CertificateAuthority
from certs.service import CaError, CertificateService
from certs.signpool import SigningPool
from certs.signslots import SigningSlots, SlotsExhausted
from tests.certs.helpers import make_csr, make_root, spiffe

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ME = spiffe("shop", "cart")


class Cart:
    name = "cart"

    async def authenticate(self, credentials: Credentials) -> Caller:
        return Caller(source=self.name, identities=(ME,))


def from_client(client: str) -> Credentials:
    return Credentials(metadata={}, client=client)


@pytest.fixture
async def service() -> AsyncIterator[CertificateService]:
    root = make_root(now=NOW - dt.timedelta(days=1))
    pool = SigningPool(workers=1, authority=root)
    await pool.start()
    try:
        yield CertificateService(ca=CertificateAuthority(root), authenticators=[Cart()], pool=pool, clock=lambda: NOW)
    finally:
        await pool.close()


async def test_another_clients_csr_waits_behind_at_most_the_flooders_slots(service: CertificateService) -> None:
    """Without the slots all 600 flooding requests were queued to the worker first, and the other
    client's certificate came after (nearly) every one of them."""
    csr = make_csr(uris=[ME])[0]
    done: list[str] = []

    async def one(client: str) -> None:
        await service.create_certificate(csr=csr, validity_seconds=0, credentials=from_client(client))
        done.append(client)

    flood = [asyncio.create_task(one("10.0.0.1")) for _ in range(600)]
    await asyncio.sleep(0)  # every flooding request has started: 32 signing, the rest waiting
    assert service.slots.users("10.0.0.1") == 600
    await one("10.0.0.2")
    before = done.index("10.0.0.2")
    await asyncio.gather(*flood)
    assert before <= 64, f"the other client waited behind {before} of the flooder's requests"  # 2 x IN_FLIGHT
    assert len(done) == 601 and len(service.slots) == 0


async def test_a_client_over_its_waiting_limit_is_refused_and_counted(service: CertificateService) -> None:
    service = CertificateService(
        ca=service.ca, authenticators=[Cart()], pool=service.pool, slots=SigningSlots(in_flight=2, waiting=3)
    )
    csr = make_csr(uris=[ME])[0]
    before = REGISTRY.get_sample_value("citadel_server_csr_sign_error_count", {"reason": "client_slots"}) or 0.0
    flooder = from_client("10.0.0.1")
    held = [
        asyncio.create_task(service.create_certificate(csr=csr, validity_seconds=0, credentials=flooder))
        for _ in range(5)
    ]
    await asyncio.sleep(0)
    with pytest.raises(CaError) as refused:
        await service.create_certificate(csr=csr, validity_seconds=0, credentials=flooder)
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(refused.value) == (
        "client 10.0.0.1 already has 2 certificate requests being signed and 3 waiting, the most one client "
        "address may have; retry when some are answered"
    )
    after = REGISTRY.get_sample_value("citadel_server_csr_sign_error_count", {"reason": "client_slots"}) or 0.0
    assert after - before == 1
    assert len(await service.create_certificate(csr=csr, validity_seconds=0, credentials=from_client("10.0.0.2"))) == 2
    assert all(len(chain) == 2 for chain in await asyncio.gather(*held))


# -- the table itself -----------------------------------------------------------------------------------


async def test_requests_over_the_slots_wait_in_arrival_order() -> None:
    slots = SigningSlots(in_flight=1, waiting=5)
    order: list[int] = []
    gate = asyncio.Event()

    async def request(n: int) -> None:
        async with slots.slot("10.0.0.1"):
            order.append(n)
            await gate.wait()

    tasks = [asyncio.create_task(request(n)) for n in range(4)]
    await asyncio.sleep(0.01)
    assert order == [0] and slots.users("10.0.0.1") == 4
    gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3] and len(slots) == 0


async def test_a_cancelled_waiting_request_gives_its_place_back() -> None:
    slots = SigningSlots(in_flight=1, waiting=1)
    gate = asyncio.Event()

    async def request() -> None:
        async with slots.slot("10.0.0.1"):
            await gate.wait()

    first, second = asyncio.create_task(request()), asyncio.create_task(request())
    await asyncio.sleep(0.01)
    with pytest.raises(SlotsExhausted):
        async with slots.slot("10.0.0.1"):
            pass
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert slots.users("10.0.0.1") == 1
    third = asyncio.create_task(request())  # the cancelled one's place is free again
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, third)
    assert len(slots) == 0


async def test_a_request_that_fails_gives_its_slot_back() -> None:
    slots = SigningSlots(in_flight=1, waiting=0)
    with pytest.raises(RuntimeError):
        async with slots.slot("10.0.0.1"):
            raise RuntimeError("signing failed")
    async with slots.slot("10.0.0.1"):
        assert (slots.users("10.0.0.1"), slots.users("10.0.0.9")) == (1, 0)
    assert len(slots) == 0


async def test_clients_are_apart_and_one_without_an_address_is_named_so() -> None:
    slots = SigningSlots(in_flight=1, waiting=0)
    async with slots.slot(""), slots.slot("10.0.0.2"):
        assert len(slots) == 2
        with pytest.raises(SlotsExhausted, match=r"^client \(unknown address\) already has 1 certificate request"):
            async with slots.slot(""):
                pass


@pytest.mark.parametrize(("in_flight", "waiting"), [(0, 0), (1, -1)])
def test_bad_bounds_are_refused(in_flight: int, waiting: int) -> None:
    with pytest.raises(ValueError, match=f"not {in_flight} and {waiting}"):
        SigningSlots(in_flight=in_flight, waiting=waiting)
