"""Wake a directory's poller when something in it changes (Linux inotify), instead of on a timer.

`DirWatch` watches directories one by one (not recursively: the caller names each directory as
its walk reaches it, before listing it, so one created later is watched from the walk that first
sees it, and nothing written after a listing goes unreported) for entries created,
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


class WatchError(Exception):
    """A directory could not be watched: the caller should fall back to walking on a timer."""


class DirWatch:
    """An inotify instance read on the running event loop. Raises `OSError` when the system has
    no inotify instance to give (`fs.inotify.max_user_instances`)."""

    def __init__(self) -> None:
        self._inotify = inotify_simple.INotify(nonblocking=True)
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._reading = False

    def watch(self, directory: str) -> None:
        """Watch `directory` (again: a directory removed and made anew is a new one to the kernel;
        watching one already watched changes nothing). Thread-safe. Raises `WatchError` when the
        kernel refuses a watch for another reason than the directory being gone."""
        try:
            self._inotify.add_watch(directory, _MASK)
        except (FileNotFoundError, NotADirectoryError):
            pass  # gone since it was found: nothing to watch
        except OSError as exc:
            raise WatchError(f"cannot watch {directory} with inotify ({exc}; fs.inotify.max_user_watches?)") from None

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
