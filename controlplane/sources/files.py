"""Local mode's config source: a directory of multi-document YAML files, kept in the store as they change.

Every `*.yaml`, `*.yml` and `*.json` file below the directory is read (hidden files and
directories are skipped). A file is known by its content hash, not by its size and mtime, so a
file replaced by one with the same size and mtime (`cp -p`, `rsync -a`) is picked up too.
`watch()` walks the directory when inotify reports a change in it (`controlplane.sources.dirwatch`),
then every poll interval until the change has settled, and every `idle_poll` in any case; where
inotify cannot be used, every poll interval. Parsing is `controlplane.sources.documents`'.

Changes settle before they apply, so a file caught half-written is never applied:
- the first `scan()` (or `load()`) applies what it finds at once;
- after that, new contents, a new file or a removed file take effect when two consecutive walks
  see the same thing (one poll interval after the writer stopped);
- a file that had objects and now has none (truncated to 0 bytes mid-write, or emptied) keeps its
  objects until it has stayed that way for `empty_hold` seconds, then its objects are deleted.

Error behaviour, per file:
- a YAML syntax error or a malformed document (missing name, bad field) is reported with the
  file, the document's index and the field, and the whole file keeps its last good contents
  (no document of it applies);
- a document of a kind meshplane does not read is reported and ignored; the rest of the file
  applies;
- the same object in two files is reported; the file that sorts first wins.
`problems` shows the problems of the newest contents at once; they are logged once those contents
have settled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hashlib
import logging
import os
import pathlib
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from controlplane.model.store import ConfigStore, Object, ObjectKey
from controlplane.sources.dirwatch import DirWatch, WatchError
from controlplane.sources.documents import (
    INLINE_PARSE_BYTES,
    DocumentProblem,
    Parser,
    ParseWorkers,
    parse_positional,
)

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
# A walk failing with one of these is retried, not fatal: descriptors or memory run out for a moment.
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)

# A stat result is trusted to mean "unchanged" only once the file's last change is this old: a
# write within the same clock tick as the one before it may leave size, mtime and ctime unchanged.
_RACY_NS = 1_000_000_000


@dataclass(frozen=True)
class _Reading:
    """One file's contents as read once: usable means the objects may replace the file's last good ones."""

    digest: str
    objects: Mapping[ObjectKey, Object]
    problems: tuple[DocumentProblem, ...]
    usable: bool
    at: float  # monotonic time these contents were first seen


@dataclass
class _FileState:
    objects: Mapping[ObjectKey, Object] = field(default_factory=dict)  # the last good contents, in the store
    settled: _Reading | None = None  # the contents last applied or rejected
    pending: _Reading | None = None  # newer contents, waiting to settle
    stamp: tuple[int, ...] | None = None  # stat identity of the last read, when trustworthy
    missing: bool = False  # absent at the last scan: removed at the next one if still absent

    @property
    def problems(self) -> tuple[DocumentProblem, ...]:
        current = self.pending or self.settled
        return current.problems if current else ()


def _same_keys(objects: Mapping[ObjectKey, Object], before: Mapping[ObjectKey, Object]) -> dict[ObjectKey, Object]:
    """`objects`, keyed by the key objects of `before` where equal. The store keeps the key it was first
    given; a re-read file holding new, equal keys would keep every key in memory twice."""
    held = {key: key for key in before}
    return {held.get(key, key): obj for key, obj in objects.items()}


@dataclass(frozen=True)
class _Found:
    """A config file as the directory walk found it."""

    path: pathlib.Path
    label: str  # relative to the directory
    stat: os.stat_result | OSError  # the error when stat failed for another reason than absence


def _size(file: _Found) -> int:
    return -1 if isinstance(file.stat, OSError) else file.stat.st_size


@dataclass(frozen=True)
class _Scan:
    """What one pass over the directory found: every path present, and each one's reading."""

    now: float
    readings: dict[pathlib.Path, tuple[_FileState, _Reading | None]]


class FileSource:
    """Keeps a ConfigStore equal to the settled, valid contents of a directory.

    `poll_interval` is the time between walks in `watch()` while a change settles (or always,
    without inotify); `idle_poll` the longest time between walks when nothing changes; `empty_hold`
    how long a file that lost all its objects must stay so before they are deleted.
    """

    def __init__(
        self,
        directory: pathlib.Path,
        store: ConfigStore,
        *,
        poll_interval: float = 0.2,
        idle_poll: float = 5.0,
        empty_hold: float = 3.0,
    ) -> None:
        self.directory = directory
        self.store = store
        self.poll_interval = poll_interval
        self.idle_poll = idle_poll
        self.empty_hold = empty_hold
        self._files: dict[pathlib.Path, _FileState] = {}
        # the file that defines each key; a set only for a key two files define (a set per key took
        # ~200 bytes and one more object for the garbage collector to walk, per object)
        self._holders: dict[ObjectKey, pathlib.Path | set[pathlib.Path]] = {}
        self._scanned = False
        self._workers = ParseWorkers(1)  # for edits: a few files at a time
        self._known: dict[str, tuple[pathlib.Path, str]] = {}  # each file's path and label, by its name

    @property
    def problems(self) -> list[DocumentProblem]:
        """Problems of each file's newest contents (settled or not), for debug endpoints.

        Read on the event loop while a scan may be settling files in its thread: one copy of the files
        (a single step for the interpreter), so a file the scan removes meanwhile is no KeyError."""
        files = dict(self._files)
        return [p for path in sorted(files) for p in files[path].problems]

    def _walk(self, watch: Callable[[str], None] | None = None) -> list[_Found]:
        """Every config file below the directory, in path order, each with its stat or the error
        that stat gave (a file that vanished meanwhile is left out); `watch` is called with each
        directory before it is listed, so a change after the listing raises an event. A directory
        of thousands of files may be walked often, so this touches each entry once: one `scandir`
        per directory, one `stat` per file, no path object but for files first seen."""
        found: list[tuple[tuple[str, ...], str, os.stat_result | OSError]] = []
        pending: list[tuple[str, tuple[str, ...]]] = [(str(self.directory), ())]
        while pending:
            top, parts = pending.pop()
            if watch is not None:
                watch(top)
            try:
                entries = os.scandir(top)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue  # gone, or not ours to read: as a glob sees it
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue  # hidden files and directories
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((entry.path, (*parts, entry.name)))
                    elif entry.name.endswith(SUFFIXES):
                        try:
                            st: os.stat_result | OSError = entry.stat()
                        except FileNotFoundError:
                            continue
                        except OSError as exc:
                            st = exc
                        if isinstance(st, OSError) or stat.S_ISREG(st.st_mode):
                            found.append(((*parts, entry.name), entry.path, st))
        found.sort(key=lambda item: item[0])  # as paths sort: part by part
        known, self._known = self._known, {}
        walked = []
        for parts, full, st in found:
            path, label = known.get(full) or (pathlib.Path(full), "/".join(parts))
            self._known[full] = (path, label)
            walked.append(_Found(path=path, label=label, stat=st))
        return walked

    def scan(self) -> bool:
        """Read what changed since the last scan and update the store with what has settled.

        Returns True if the store's view changed. Raises FileNotFoundError when the directory is
        missing or not a directory (the store is left as it is). Runs on the caller's thread;
        `watch()` uses `scan_async()`, which reads and parses off the event loop.
        """
        changes = self._apply(self._collect(parse_positional))
        return self._written(len(self.store.apply(changes)) if changes else 0)

    async def scan_async(self, *, watch: Callable[[str], None] | None = None) -> bool:
        """`scan()` off the event loop: files are read, and what settled worked out, in a thread
        (large files parsed in a worker process); only the store's writes run on the loop,
        `WRITE_STEP` objects at a time with a turn of the loop between. A file of 40,000 Pods held
        the loop ~0.5 s in one go, of which ~0.12 s was working out what changed. `watch`: see
        `_walk`."""
        changes = await asyncio.to_thread(lambda: self._apply(self._collect(self._workers.parse, watch=watch)))
        return self._written(await self.store.apply_in_steps(changes))

    async def load(self, *, workers: int) -> bool:
        """The first scan of a directory that may be large: `scan_async()` with up to `workers` files
        read and parsed at once, each large one in a worker process of its own. Those processes end
        with the scan (later scans see a few edited files at a time and keep one worker)."""

        def collect() -> list[tuple[ObjectKey, Object | None]]:
            starting = ParseWorkers(workers)
            try:
                return self._apply(self._collect(starting.parse, workers=workers))
            finally:
                starting.close()

        return self._written(await self.store.apply_in_steps(await asyncio.to_thread(collect)))

    def close(self) -> None:
        """Stop the parsing worker process, if one was started."""
        self._workers.close()

    def _collect(self, parse: Parser, *, workers: int = 1, watch: Callable[[str], None] | None = None) -> _Scan:
        """Stat, read and (when new) parse every file, up to `workers` at once; touches no shared
        state but each file's stamp."""
        if not self.directory.is_dir():
            raise FileNotFoundError(f"config dir {self.directory} does not exist or is not a directory")
        now = time.monotonic()
        wall_ns = time.time_ns()  # before any stat: a file changed since is judged by this
        files = self._walk(watch)
        states = [self._files.get(file.path) or _FileState() for file in files]

        def read(file: _Found, state: _FileState) -> _Reading | None:
            return self._read(file, state, now=now, wall_ns=wall_ns, parse=parse)

        # Large files are read in threads, each waiting on a worker process; small ones here meanwhile
        # (threads would only contend for the interpreter over them).
        large = [i for i, file in enumerate(files) if _size(file) > INLINE_PARSE_BYTES] if workers > 1 else []
        if not large:
            read_all = list(map(read, files, states))
        else:
            with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="config-read") as threads:
                elsewhere = {i: threads.submit(read, files[i], states[i]) for i in large}
                pairs = enumerate(zip(files, states, strict=True))
                read_all = [None if i in elsewhere else read(file, state) for i, (file, state) in pairs]
                for i, future in elsewhere.items():
                    read_all[i] = future.result()
        paths = [file.path for file in files]
        return _Scan(now=now, readings=dict(zip(paths, zip(states, read_all, strict=True), strict=True)))

    def _apply(self, found: _Scan) -> list[tuple[ObjectKey, Object | None]]:
        """Settle what `_collect` read; the changes to write to the store, which this leaves alone
        (so it may run in a thread: only scans, one at a time, touch the files' state)."""
        initial = not self._scanned
        self._scanned = True
        before: dict[pathlib.Path, Mapping[ObjectKey, Object]] = {}  # what each changed file held
        for path in sorted(set(self._files) - set(found.readings)):
            state = self._files[path]
            if state.missing or not state.objects:
                del self._files[path]
                log.info("config file removed", extra={"file": self._label(path)})
                if state.objects:
                    before[path] = state.objects
            else:
                state.missing = True  # maybe an editor's save in progress: look again at the next scan
        for path, (seen, reading) in found.readings.items():  # in path order
            state = self._files.setdefault(path, seen)
            state.missing = False
            held = state.objects
            if reading is not None and self._settle(path, state, reading, now=found.now, initial=initial):
                before[path] = held
        return self._changes(before) if before else []

    def _label(self, path: pathlib.Path) -> str:
        return str(path.relative_to(self.directory))

    def _read(self, file: _Found, state: _FileState, *, now: float, wall_ns: int, parse: Parser) -> _Reading | None:
        """The file's contents, parsed only when they differ from the last ones seen; None if it just vanished."""
        label = file.label
        try:
            st = file.stat
            if isinstance(st, OSError):
                raise st
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            known = state.pending or state.settled
            if known is not None and stamp == state.stamp:
                return known
            data = file.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            state.stamp = None
            problem = DocumentProblem(label, -1, "(file)", f"cannot read: {exc.strerror or exc}")
            return _Reading(digest=f"error: {exc}", objects={}, problems=(problem,), usable=False, at=now)
        racy = wall_ns - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS
        state.stamp = None if racy else stamp
        digest = hashlib.sha256(data).hexdigest()
        for known in (state.pending, state.settled):
            if known is not None and known.digest == digest:
                return known
        objects, problems, usable = parse(data, label)
        return _Reading(digest=digest, objects=objects, problems=tuple(problems), usable=usable, at=now)

    def _settle(self, path: pathlib.Path, state: _FileState, reading: _Reading, *, now: float, initial: bool) -> bool:
        """Apply or reject `reading` once it has settled. True if the file's objects changed."""
        if state.settled is not None and reading.digest == state.settled.digest:
            state.pending = None  # back to what is applied (e.g. a write undone before it settled)
            return False
        if not initial and reading is not state.pending:
            state.pending = reading  # first sight: wait for the next scan to see the same
            return False
        emptied = reading.usable and not reading.objects and bool(state.objects)
        if emptied and not initial and now - reading.at < self.empty_hold:
            return False
        state.pending = None
        had_problems = state.settled is not None and bool(state.settled.problems)
        state.settled = reading
        label = self._label(path)
        if had_problems and not reading.problems:
            log.info("config file %s: its problems are resolved", label, extra={"file": label})
        for problem in reading.problems:
            extra = {"file": problem.file, "document": problem.document, "field": problem.field}
            log.warning("config problem: %s", problem, extra=extra)
        if not reading.usable:
            state.settled = replace(reading, objects={})  # what it holds is never applied
            log.warning("config file %s keeps its last good contents (%d objects)", label, len(state.objects))
            return False
        if emptied:
            log.warning("config file %s has had no objects for %.1fs; deleting its objects", label, self.empty_hold)
        changed = dict(reading.objects) != dict(state.objects)
        state.objects = _same_keys(reading.objects, state.objects)
        state.settled = replace(reading, objects=state.objects)  # one mapping and one key object per object
        return changed

    def _changes(
        self, before: Mapping[pathlib.Path, Mapping[ObjectKey, Object]]
    ) -> list[tuple[ObjectKey, Object | None]]:
        """What to write to the store: the keys the changed files held before or hold now, each from
        the file that sorts first among those defining it (None: deleted). An edit costs the edited
        files' objects, not the whole directory's."""
        affected: dict[ObjectKey, None] = {}  # in the files' order: no sort of what may be 60,000 keys
        for path, held in before.items():
            current = self._files[path].objects if path in self._files else {}
            for key in held:
                if key not in current:
                    self._release(key, path)
                    affected[key] = None
            for key in current:
                if key not in held:
                    self._hold(key, path)
                affected[key] = None
        return [(key, self._defined(key)) for key in affected]

    def _hold(self, key: ObjectKey, path: pathlib.Path) -> None:
        held = self._holders.get(key)
        if held is None:
            self._holders[key] = path
        elif isinstance(held, set):
            held.add(path)
        elif held != path:
            self._holders[key] = {held, path}

    def _release(self, key: ObjectKey, path: pathlib.Path) -> None:
        held = self._holders.get(key)
        if isinstance(held, set):
            held.discard(path)
            if len(held) == 1:
                self._holders[key] = held.pop()
        elif held == path:
            del self._holders[key]

    def _defined(self, key: ObjectKey) -> Object | None:
        """`key` as the first file (by path) defining it holds it; None if no file does."""
        held = self._holders.get(key)
        if held is None:
            return None
        if isinstance(held, set):
            first, *others = sorted(held)
            log.warning(
                "config problem: %s is defined in %s; using the first",
                key,
                " and ".join(self._label(path) for path in (first, *others)),
            )
            held = first
        return self._files[held].objects[key]

    def _written(self, changed: int) -> bool:
        if changed:
            log.info("config dir applied", extra={"objects": len(self.store), "changes": changed})
        return bool(changed)

    async def watch(self) -> None:
        """Keep the store equal to the directory until cancelled (call `scan()` or `load()` once
        first). The directory is walked when inotify says something in it changed, then every
        `poll_interval` until what changed has settled, and every `idle_poll` in any case (for what
        inotify cannot see: a symlink's target outside the directory, a network filesystem); where
        inotify cannot be used, every `poll_interval`. A directory that disappears is logged at
        every walk and the last good config stays."""
        notify = self._start_notify()
        try:
            while True:
                try:
                    await self.scan_async(watch=notify.watch if notify is not None else None)
                except FileNotFoundError as exc:
                    log.error("%s; keeping the last good config", exc)
                except OSError as exc:
                    if exc.errno not in _OUT_OF_RESOURCES:
                        raise
                    # the process or the system is out of descriptors or memory for a moment: nothing of
                    # this walk was applied, and the next one may succeed
                    log.error(
                        "config dir: cannot walk %s (%s); keeping the last good config, walking again in %ss",
                        self.directory,
                        exc.strerror or exc,
                        self.poll_interval,
                    )
                    await asyncio.sleep(self.poll_interval)
                    continue
                except WatchError as exc:
                    log.warning("config dir: %s; polling every %ss", exc, self.poll_interval)
                    if notify is not None:
                        notify.close()
                    notify = None
                    continue
                if notify is not None and self._settled():
                    await notify.changed(within=self.idle_poll)
                else:
                    await asyncio.sleep(self.poll_interval)
        finally:
            if notify is not None:
                notify.close()
            self.close()

    def _start_notify(self) -> DirWatch | None:
        try:
            return DirWatch()
        except OSError as exc:
            log.warning("config dir: inotify is not available (%s); polling every %ss", exc, self.poll_interval)
            return None

    def _settled(self) -> bool:
        """Whether nothing read is waiting to settle (new contents, a vanished file, an emptied one):
        then only a change can change the store, and inotify reports changes."""
        return not any(state.pending is not None or state.missing for state in self._files.values())
