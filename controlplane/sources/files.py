"""Local mode's config source: a directory of multi-document YAML files, watched by polling.

Every `*.yaml`, `*.yml` and `*.json` file below the directory is read (hidden files and
directories are skipped). Edits are picked up within one poll interval.

Error behaviour, per file:
- a YAML syntax error or a malformed document (missing name, bad field) is reported with the
  file, the document's index and the field, and the file keeps its last good contents;
- a document of a kind meshplane does not read is reported once and ignored; the rest of the file
  applies;
- the same object in two files is reported; the file that sorts first wins.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

from controlplane.model.store import ConfigStore, Object, ObjectKey
from controlplane.sources.kinds import FieldError, UnknownKind, check_document

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class DocumentProblem:
    file: str
    document: int  # 0-based index within the file; -1 for the whole file
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.document < 0 else f"{self.file} document {self.document}"
        return f"{where}: {self.field}: {self.message}"


@dataclass
class _FileState:
    digest: str = ""
    stamp: tuple[int, int] = (0, 0)
    objects: dict[ObjectKey, Object] = field(default_factory=dict)
    problems: list[DocumentProblem] = field(default_factory=list)


def parse_file(path: pathlib.Path, *, label: str) -> tuple[dict[ObjectKey, Object], list[DocumentProblem], bool]:
    """Parse one file: (objects, problems, usable). Not usable means: keep the last good state."""
    problems: list[DocumentProblem] = []
    try:
        text = path.read_text(encoding="utf-8")
        docs = list(yaml.safe_load_all(text))
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [DocumentProblem(label, -1, "(file)", f"cannot read: {exc}")], False
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return {}, [DocumentProblem(label, -1, "(yaml)", f"{where}{problem}")], False
    objects: dict[ObjectKey, Object] = {}
    usable = True
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        is_list = isinstance(doc, Mapping) and doc.get("kind") == "List"
        items = doc.get("items") if is_list else [doc]
        if not isinstance(items, list):
            problems.append(DocumentProblem(label, index, "items", "a List needs a list of items"))
            usable = False
            continue
        for item_index, item in enumerate(items):
            prefix = f"items[{item_index}]." if is_list else ""
            try:
                obj = check_document(item)
            except UnknownKind as exc:
                problems.append(
                    DocumentProblem(
                        label,
                        index,
                        f"{prefix}kind",
                        f"kind {exc.kind!r} is not read by meshplane; ignored",
                    )
                )
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
            objects[key] = obj
    return objects, problems, usable


class FileSource:
    """Keeps a ConfigStore equal to the valid contents of a directory."""

    def __init__(self, directory: pathlib.Path, store: ConfigStore, *, poll_interval: float = 0.2) -> None:
        self.directory = directory
        self.store = store
        self.poll_interval = poll_interval
        self._files: dict[pathlib.Path, _FileState] = {}

    @property
    def problems(self) -> list[DocumentProblem]:
        """Problems of the current contents, for debug endpoints."""
        return [p for state in self._files.values() for p in state.problems]

    def _paths(self) -> list[pathlib.Path]:
        found = []
        for path in self.directory.rglob("*"):
            rel = path.relative_to(self.directory)
            if any(part.startswith(".") for part in rel.parts):
                continue
            if path.suffix in SUFFIXES and path.is_file():
                found.append(path)
        return sorted(found)

    def scan(self) -> bool:
        """Read what changed since the last scan and update the store. True if anything changed."""
        if not self.directory.is_dir():
            raise FileNotFoundError(f"config dir {self.directory} does not exist or is not a directory")
        paths = self._paths()
        changed = False
        for gone in set(self._files) - set(paths):
            del self._files[gone]
            log.info("config file removed", extra={"file": str(gone)})
            changed = True
        for path in paths:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            state = self._files.setdefault(path, _FileState())
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == state.stamp:
                continue
            state.stamp = stamp
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue
            if digest == state.digest:
                continue
            state.digest = digest
            label = str(path.relative_to(self.directory))
            objects, problems, usable = parse_file(path, label=label)
            for problem in problems:
                log.warning(
                    "config problem: %s",
                    problem,
                    extra={
                        "file": problem.file,
                        "document": problem.document,
                        "field": problem.field,
                    },
                )
            state.problems = problems
            if usable:
                state.objects = objects
                changed = True
            else:
                log.warning(
                    "config file %s keeps its last good state (%d objects)",
                    label,
                    len(state.objects),
                )
        if changed:
            self._publish()
        return changed

    def _publish(self) -> None:
        merged: dict[ObjectKey, Object] = {}
        owner: dict[ObjectKey, pathlib.Path] = {}
        for path in sorted(self._files):
            for key, obj in self._files[path].objects.items():
                if key in merged:
                    log.warning(
                        "config problem: %s is defined in %s and %s; using the first",
                        key,
                        owner[key].relative_to(self.directory),
                        path.relative_to(self.directory),
                    )
                    continue
                merged[key] = obj
                owner[key] = path
        events = self.store.replace_all(merged)
        if events:
            log.info("config dir applied", extra={"objects": len(merged), "changes": len(events)})

    async def watch(self) -> None:
        """Poll for edits until cancelled (call `scan()` once first). A directory that disappears
        is logged at every poll and the last good config stays."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self.scan()
            except FileNotFoundError as exc:
                log.error("%s; keeping the last good config", exc)
