"""A signing worker applies the policy each request brings, though a policy only travels down the
pipe when it changes, and signs with the caller's `now` whatever its time zone."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from certs.authority import now_utc
from certs.signing import SigningPolicy, SigningRefused
from certs.signpool import SigningPool
from tests.certs.helpers import make_csr, make_root, spiffe

ME = spiffe("shop", "cart")
SHORT = SigningPolicy(max_ttl=dt.timedelta(hours=1))
LONG = SigningPolicy(max_ttl=dt.timedelta(days=2))
TWO_HOURS = 2 * 3600


async def test_requests_alternating_between_policies_each_get_their_own() -> None:
    pool = SigningPool(workers=1, authority=make_root())
    await pool.start()
    try:
        for policy in (LONG, SHORT, SHORT, LONG, SHORT):
            sign = pool.sign(
                csr=make_csr(uris=[ME])[0],
                validity_seconds=TWO_HOURS,
                caller_identities=(ME,),
                policy=policy,
                now=now_utc(),
            )
            if policy is SHORT:
                with pytest.raises(SigningRefused, match="exceeds the maximum of 3600 s"):
                    await sign
            else:
                leaf = x509.load_pem_x509_certificate((await sign)[0].encode())
                assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=2, minutes=2)
    finally:
        await pool.close()


async def test_a_worker_signs_for_the_instant_it_is_given_in_any_time_zone() -> None:
    pool = SigningPool(workers=1, authority=make_root())
    await pool.start()
    at = now_utc().replace(microsecond=0) - dt.timedelta(hours=3)
    try:
        for now in (at, at.astimezone(dt.timezone(dt.timedelta(hours=-5)))):
            chain = await pool.sign(
                csr=make_csr(uris=[ME])[0], validity_seconds=3600, caller_identities=(ME,), policy=LONG, now=now
            )
            leaf = x509.load_pem_x509_certificate(chain[0].encode())
            assert leaf.not_valid_after_utc == at + dt.timedelta(hours=1)
    finally:
        await pool.close()
