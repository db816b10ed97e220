"""A connection is pushed to by one worker at a time: a change that arrives during its push waits
for that push to finish, so a stream never gets two configs in flight, possibly out of order."""

from __future__ import annotations

from controlplane.model.registry import ConfigUpdate, ModelChange, UpdateKind
from discovery.pushqueue import PushQueue, PushRequest


def change(host: str) -> PushRequest:
    return PushRequest.from_change(ModelChange(updates=frozenset({ConfigUpdate(UpdateKind.SERVICE, host)}), version=1))


async def test_a_change_during_a_push_waits_for_that_push_to_finish() -> None:
    queue: PushQueue[str] = PushQueue()
    queue.enqueue("a", change("web"))
    assert (await queue.dequeue())[0] == "a"  # a worker is pushing to "a"
    queue.enqueue("a", change("api"))
    queue.enqueue("b", change("api"))
    assert (await queue.dequeue())[0] == "b"  # not "a" again while its push is running
    queue.done("a")
    conn, request = await queue.dequeue()
    assert (conn, request.of_kind(UpdateKind.SERVICE)) == ("a", {"api"})
