"""Subscriptions that clients make up and drop must not accumulate in the table that shares them
(each left-over entry is memory a client could grow without bound)."""

from __future__ import annotations

import gc

from discovery import connection
from discovery.connection import canonical, shared_subscriptions


def test_subscriptions_nobody_holds_any_more_leave_no_entry_behind() -> None:
    gc.collect()
    entries_before, shared_before = len(connection._SHARED), shared_subscriptions()
    held = [canonical({f"outbound|80||made-up-{n}.default.svc.cluster.local"}) for n in range(2_000)]
    assert shared_subscriptions() == shared_before + 2_000
    assert canonical({"outbound|80||made-up-7.default.svc.cluster.local"}) is held[7]
    del held
    gc.collect()
    assert (len(connection._SHARED), shared_subscriptions()) == (entries_before, shared_before)
