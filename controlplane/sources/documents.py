"""One config file's documents, parsed: objects, problems, and whether the file may apply.

`parse_documents` reads a file's bytes as multi-document YAML (or JSON) of the kinds
`controlplane.sources.kinds` knows, never raising for bad contents; `ParseWorkers` runs it in worker
processes for files too large to parse beside the event loop.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from controlplane.aio import COLLECTOR_PAUSE
from controlplane.model import yamltext
from controlplane.model.packed import pack
from controlplane.model.store import Object, ObjectKey
from controlplane.sources.kinds import FieldError, UnknownKind, check_document


@dataclass(frozen=True)
class DocumentProblem:
    file: str
    document: int  # 0-based index within the file; -1 for the whole file
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.document < 0 else f"{self.file} document {self.document}"
        return f"{where}: {self.field}: {self.message}"


# Files up to this size are parsed in the scanning thread; larger ones in a worker process, because
# even libyaml holds the GIL for a whole document (a 10,000-endpoint EndpointSlice, ~1.2 MB, takes
# seconds), which would stall the event loop that serves xDS, the CA and /ready.
INLINE_PARSE_BYTES = 64 * 1024


Parsed = tuple[dict[ObjectKey, Object], list[DocumentProblem], bool]
Parser = Callable[[bytes, str], Parsed]


def parse_documents(data: bytes, *, label: str) -> Parsed:
    """Parse one file's bytes: (objects, problems, usable). Not usable means: keep the last good state.

    Never raises for bad contents; every problem names `label`, the document index and the field.
    """
    problems: list[DocumentProblem] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {}, [DocumentProblem(label, -1, "(file)", f"not UTF-8 text: {exc}")], False
    docs: list[object] = []
    try:
        for doc in yamltext.kubectl_documents(text):  # as kubectl reads the file; plain data, aliases bounded
            docs.append(doc)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return {}, [DocumentProblem(label, len(docs), "(yaml)", f"{where}{problem}")], False
    objects: dict[ObjectKey, Object] = {}
    usable = True
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        listed = doc.get("items") if isinstance(doc, Mapping) else None  # as kubectl reads it: any with items
        if listed is not None and not isinstance(listed, list):
            problems.append(DocumentProblem(label, index, "items", "a list document needs a list of items"))
            usable = False
            continue
        is_list = isinstance(doc, Mapping) and listed is not None
        items = _listed_items(doc, listed) if isinstance(doc, Mapping) and listed is not None else [doc]
        for item_index, item in enumerate(items):
            prefix = f"items[{item_index}]." if is_list else ""
            try:
                obj = check_document(item)
            except UnknownKind as exc:
                message = f"kind {exc.kind!r} is not read by meshplane; ignored"
                problems.append(DocumentProblem(label, index, f"{prefix}kind", message))
                continue
            except FieldError as exc:
                problems.append(DocumentProblem(label, index, f"{prefix}{exc.field}", exc.message))
                usable = False
                continue
            key = ObjectKey.of(obj)
            if key in objects:
                problems.append(DocumentProblem(label, index, "metadata.name", f"{key} is defined twice in this file"))
                usable = False
                continue
            objects[key] = pack(obj)  # one object to the garbage collector, however large
    return objects, problems, usable


def _listed_items(doc: Mapping[str, Any], listed: list[Any]) -> list[object]:
    """A list document's items as kubectl reads them: null is {}, and an item without a kind takes the one
    `yamltext.listed_kind` gives it (`ServiceList` items are Services), with the list's apiVersion."""
    items: list[object] = []
    for entry in listed:
        item = {} if entry is None else entry
        if isinstance(item, Mapping) and not item.get("kind") and (kind := yamltext.listed_kind(doc, item)):
            item = {**item, "kind": kind, "apiVersion": doc.get("apiVersion")}
        items.append(item)
    return items


def parse_positional(data: bytes, label: str) -> Parsed:
    return parse_documents(data, label=label)


# A worker's objects come back pickled this many at a time. The reading thread holds the GIL for
# the whole of one `pickle.loads`, and with it the event loop: 40,000 Pods in one took ~0.3 s.
RESULT_CHUNK = 500


def _parse_to_chunks(data: bytes, label: str) -> tuple[list[bytes], list[DocumentProblem], bool]:
    """`parse_documents` in a worker process, its objects pickled `RESULT_CHUNK` at a time.

    With the garbage collector paused: everything the parse builds dies when its chunks are sent, and
    the collections it started found nothing to free (a file of 10,000 endpoints: 6-8 full passes of
    20-70 ms; parsed in 0.41-0.46 s paused, 0.78-1.05 s not)."""
    with COLLECTOR_PAUSE:
        objects, problems, usable = parse_documents(data, label=label)
        items = list(objects.items())
        chunks = [
            pickle.dumps(items[start : start + RESULT_CHUNK], protocol=pickle.HIGHEST_PROTOCOL)
            for start in range(0, len(items), RESULT_CHUNK)
        ]
    return chunks, problems, usable


class ParseWorkers:
    """Worker processes that parse files over `INLINE_PARSE_BYTES` (smaller ones are parsed in the
    calling thread), at most `size` at once, started only when a large file needs one: a process pool
    starts multiprocessing's resource tracker, which a directory of small files has no use for.
    Thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def parse(self, data: bytes, label: str) -> Parsed:
        if len(data) <= INLINE_PARSE_BYTES:
            return parse_documents(data, label=label)
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the parent runs gRPC, whose threads do not survive a fork
                spawn = multiprocessing.get_context("spawn")
                self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=self._size, mp_context=spawn)
            pool = self._pool
        chunks, problems, usable = pool.submit(_parse_to_chunks, data, label).result()
        objects: dict[ObjectKey, Object] = {}
        for chunk in chunks:  # the GIL may pass to the event loop between two
            objects.update(pickle.loads(chunk))
        return objects, problems, usable

    def close(self) -> None:
        """Stop the processes, if any started; a later `parse` starts them again."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
