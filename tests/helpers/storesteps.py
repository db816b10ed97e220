"""Which store batches the event loop turned between: for tests of sources that write in steps."""

from __future__ import annotations

import asyncio
import itertools

from controlplane.model.store import ConfigStore


class StoreSteps:
    """Which store batches other tasks ran between: `tick()` is a task that counts its turns of the event
    loop; each batch that changes objects of `kind` is recorded with the turns counted so far."""

    def __init__(self, store: ConfigStore, kind: str) -> None:
        self.turns = 0
        self.batches: list[tuple[int, int]] = []  # (turns so far, objects of `kind` changed)
        store.subscribe(lambda events: self.batches.append((self.turns, sum(e.key.kind == kind for e in events))))

    async def tick(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)

    def sizes(self) -> list[int]:
        return [changed for _, changed in self.batches if changed]

    def turned_between(self) -> bool:
        turns = [turn for turn, changed in self.batches if changed]
        return all(later > earlier for earlier, later in itertools.pairwise(turns))
