"""Wake a directory's poller when something in it changes (Linux inotify), instead of on a timer.

`DirWatch` watches a set of directories (not recursively: the caller names every directory it
walked, so one created later is watched from the walk that first sees it) for entries created,
deleted, moved, written or changed in their attributes. `changed(within=...)` waits until some event
arrives or that time passes, and drains what has arrived. Events only say *that* something
changed; what changed is for the caller's next walk to find, so a lost event (the kernel queue
overflowing) costs nothing but a walk, which the overflow itself triggers.

inotify cannot see everything a walk can: a file that is a symlink to a file outside the
watched directories changes without an event, and so do files on network filesystems changed by
another host. Callers walk at a slow interval as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import inotify_simple

_MASK = (
    inotify_simple.flags.CREATE
    | inotify_simple.flags.DELETE
    | inotify_simple.flags.MODIFY
    | inotify_simple.flags.CLOSE_WRITE
    | inotify_simple.flags.MOVED_FROM
    | inotify_simple.flags.MOVED_TO
    | inotify_simple.flags.ATTRIB
    | inotify_simple.flags.DELETE_SELF
    | inotify_simple.flags.MOVE_SELF
    | inotify_simple.flags.ONLYDIR
)


class DirWatch:
    """An inotify instance read on the running event loop. Raises `OSError` when the system has
    no inotify instance to give (`fs.inotify.max_user_instances`), as `watch` does when a watch
    cannot be added (`fs.inotify.max_user_watches`)."""

    def __init__(self) -> None:
        self._inotify = inotify_simple.INotify(nonblocking=True)
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._reading = False

    def watch(self, directories: list[str]) -> None:
        """Watch each of `directories` (again: a directory removed and made anew is a new one to
        the kernel; watching one already watched changes nothing). Thread-safe."""
        for directory in directories:
            try:
                self._inotify.add_watch(directory, _MASK)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone since the walk: the walk that misses it no longer names it

    async def changed(self, *, within: float) -> bool:
        """Wait for an event, at most `within` seconds; True if one arrived. Drains every event
        that has arrived, so the next call waits for new ones."""
        if not self._reading:
            # one-shot: a readable fd left registered would wake the loop at every turn until drained
            self._loop.add_reader(self._inotify.fileno(), self._wake)
            self._reading = True
        try:
            async with asyncio.timeout(within):
                await self._ready.wait()
        except TimeoutError:
            return False
        self._ready.clear()
        self._drain()
        return True

    def _wake(self) -> None:
        self._loop.remove_reader(self._inotify.fileno())
        self._reading = False
        self._ready.set()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._inotify.fileno(), 64 * 1024):
                pass

    def close(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._inotify.fileno())
            self._reading = False
        self._inotify.close()
