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


class Colliding(str):
    """A resource name whose hash is every other's: subscriptions made of them land in one bucket of the table."""

    __slots__ = ()

    def __hash__(self) -> int:
        return 7


def test_subscriptions_with_the_same_hash_stay_apart_and_each_is_freed_alone() -> None:
    gc.collect()
    entries_before = len(connection._SHARED)
    names = [{Colliding(f"outbound|80||collide-{n}.default.svc.cluster.local")} for n in range(3)]
    a, b, c = (canonical(n) for n in names)
    assert hash(a) == hash(b) == hash(c) and len(connection._SHARED) == entries_before + 1
    # each stream gets its own subscription back, never another's with the same hash
    assert [set(a), set(b), set(c)] == names
    assert canonical(set(names[1])) is b
    del b
    gc.collect()
    # the others in that bucket stay shared once one of them is freed
    assert canonical(set(names[0])) is a and canonical(set(names[2])) is c
    del a, c
    gc.collect()
    assert len(connection._SHARED) == entries_before
