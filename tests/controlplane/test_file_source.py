from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import textwrap
import time
from typing import Any

import pytest
import yaml

from controlplane.model.packed import PackedObject
from controlplane.model.registry import Registry
from controlplane.model.store import WRITE_STEP, ConfigStore, ObjectKey
from controlplane.sources import documents, files
from controlplane.sources.dirwatch import DirWatch, WatchError
from controlplane.sources.documents import INLINE_PARSE_BYTES
from controlplane.sources.files import FileSource
from tests.helpers.storesteps import StoreSteps
from tests.helpers.tasks import running

NS_A = """
apiVersion: v1
kind: Namespace
metadata:
  name: a
  labels: {istio-injection: enabled}
"""

CM = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: "trustDomain: cluster.local"
"""

HOST = "web.shop.svc.cluster.local"


def write(path: pathlib.Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))


def settle(source: FileSource) -> bool:
    """Two scans: what a running source does within two poll intervals of a finished write."""
    first = source.scan()
    return source.scan() or first


def web(hosts: int, *, first_ip: int = 1) -> str:
    """A Service with an EndpointSlice of `hosts` ready endpoints."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    endpoints = [
        {"addresses": [f"10.1.{i // 250}.{i % 250 + 1}"], "conditions": {"ready": True}}
        for i in range(first_ip - 1, first_ip - 1 + hosts)
    ]
    slc = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    }
    return yaml.safe_dump_all([service, slc], sort_keys=False)  # endpoints last: any cut at a line is valid YAML


class Mesh:
    """A file source feeding a real registry; `seen` is every endpoint count the registry ever had."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.store = ConfigStore()
        self.source = FileSource(directory, self.store)
        self.registry = Registry(self.store)
        self.seen: list[int] = []
        self.registry.subscribe(lambda _change: self.seen.append(self.hosts()))

    def hosts(self) -> int:
        snapshot = self.registry.snapshot()
        return len(snapshot.endpoints_for(HOST).endpoints) if HOST in snapshot.services else 0


@pytest.fixture
def source(tmp_path: pathlib.Path) -> FileSource:
    return FileSource(tmp_path, ConfigStore())


def test_multi_document_files_fill_the_store_at_the_first_scan(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "mesh.yaml", NS_A + "---\n" + CM)
    assert source.scan()
    assert source.store.get(ObjectKey("Namespace", "", "a")) is not None
    cm = source.store.get(ObjectKey("ConfigMap", "istio-system", "istio"))
    assert cm is not None and cm["data"]["mesh"] == "trustDomain: cluster.local"


def test_documents_are_cut_as_kubectl_cuts_them(tmp_path: pathlib.Path, source: FileSource) -> None:
    """At every line that begins with `---` (`---#x` too, which YAML reads as text), and a line with more than a
    comment after its `---` is an error, as kubectl (and `kubectl apply` of the same file) makes them."""
    write(tmp_path / "mesh.yaml", NS_A + "---# the mesh config\n" + CM)
    assert source.scan()
    assert source.store.get(ObjectKey("ConfigMap", "istio-system", "istio")) is not None
    write(tmp_path / "bad.yaml", NS_A.replace("name: a", "name: b") + "--- {kind: Namespace}\n")
    settle(source)
    assert source.store.get(ObjectKey("Namespace", "", "b")) is None
    [problem] = source.problems
    assert problem.file == "bad.yaml" and "invalid YAML document separator '--- {kind: Namespace}'" in problem.message


def test_objects_are_held_packed_and_a_date_is_read_as_its_text(tmp_path: pathlib.Path, source: FileSource) -> None:
    """Packed, a config object is one object to the garbage collector. A date is read as Kubernetes
    reads it, as a string, so a document holding one is a JSON value like any other."""
    write(tmp_path / "mesh.yaml", NS_A + "---\n" + CM)
    dated_doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: d, creationTimestamp: 2026-12-01}\ndata: {}\n"
    write(tmp_path / "dated.yaml", dated_doc)
    source.scan()
    assert isinstance(source.store.get(ObjectKey("ConfigMap", "istio-system", "istio")), PackedObject)
    dated = source.store.get(ObjectKey("ConfigMap", "default", "d"))
    assert isinstance(dated, PackedObject)
    assert dated["metadata"]["creationTimestamp"] == "2026-12-01"


def test_an_edited_file_leaves_one_copy_of_each_unchanged_object_and_key_in_memory(tmp_path: pathlib.Path) -> None:
    """Editing one object of a large file re-reads all of them; the unchanged ones must not stay in
    memory twice (the store's old copy beside the file's new one)."""
    count = 200
    configmaps = [
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: shop}}\ndata: {{v: '{i}'}}\n"
        for i in range(count)
    ]
    path = tmp_path / "many.yaml"
    source = FileSource(tmp_path, ConfigStore())
    write(path, "---\n".join(configmaps))
    source.scan()
    write(path, "---\n".join([configmaps[0].replace("v: '0'", "v: 'edited'"), *configmaps[1:]]))
    source.scan()
    source.scan()  # the edit has settled
    edited = source.store.get(ObjectKey("ConfigMap", "shop", "cm-0"))
    assert edited is not None and edited["data"] == {"v": "edited"}
    gc.collect()
    # Only this test's objects are counted: an earlier test's store may still be alive.
    ours = [o for o in gc.get_objects() if isinstance(o, ObjectKey) and o.namespace == "shop"]
    assert len(ours) == count  # the keys too: one of each
    packed = [o for o in gc.get_objects() if isinstance(o, PackedObject)]
    assert sum(o.get("metadata", {}).get("namespace") == "shop" for o in packed) == count


def test_namespaced_document_without_namespace_lands_in_default(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {}\n")
    source.scan()
    assert source.store.get(ObjectKey("ConfigMap", "default", "x")) is not None


def test_an_in_place_edit_read_half_written_is_never_applied(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(web(1000))
    mesh = Mesh(tmp_path)
    mesh.source.scan()
    assert mesh.hosts() == 1000
    new = web(1000, first_ip=2)  # the same size, one endpoint replaced
    cut = new.index("- addresses", len(new) // 2)  # a line boundary: the first half is valid YAML
    with path.open("w") as f:  # truncate and rewrite in place, as `>` or an editor without safe-write does
        f.write(new[:cut])
        f.flush()
        mesh.source.scan()  # sees ~500 endpoints: valid, but not yet stable
        assert mesh.hosts() == 1000
        f.write(new[cut:])
    settle(mesh.source)
    assert mesh.hosts() == 1000
    assert mesh.seen == [1000, 1000]  # the first scan, then straight from the old 1000 to the new 1000
    ips = {e.address for e in mesh.registry.snapshot().endpoints_for(HOST).endpoints}
    assert "10.1.0.1" not in ips and "10.1.4.1" in ips


def test_a_file_truncated_to_nothing_keeps_its_objects_until_it_stays_empty(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(web(3))
    mesh = Mesh(tmp_path)
    mesh.source.scan()
    path.write_bytes(b"")
    for _ in range(5):  # many polls within the hold: the Service and its endpoints stay
        mesh.source.scan()
    assert mesh.hosts() == 3 and mesh.store.get(ObjectKey("Service", "shop", "web")) is not None
    path.write_text(web(4))
    settle(mesh.source)
    assert mesh.hosts() == 4 and mesh.seen == [3, 4]


def test_a_file_that_stays_empty_is_applied_as_a_deletion(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(web(3))
    mesh = Mesh(tmp_path)
    mesh.source = FileSource(tmp_path, mesh.store, empty_hold=0.3)
    mesh.source.scan()
    path.write_text("# nothing here any more\n")
    settle(mesh.source)
    assert mesh.hosts() == 3
    while mesh.store.get(ObjectKey("Service", "shop", "web")) is not None:
        mesh.source.scan()
    assert mesh.hosts() == 0 and len(mesh.store) == 0


def test_a_write_undone_before_it_settles_never_applies(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(web(3))
    mesh = Mesh(tmp_path)
    mesh.source.scan()
    path.write_text(web(1))
    mesh.source.scan()
    path.write_text(web(3))
    settle(mesh.source)
    assert mesh.seen == [3]


def test_cp_p_with_the_same_size_and_mtime_is_picked_up(tmp_path: pathlib.Path) -> None:
    config, elsewhere = tmp_path / "config", tmp_path / "elsewhere"
    config.mkdir()
    elsewhere.mkdir()
    path = config / "web.yaml"
    path.write_text(web(5, first_ip=11))
    mesh = Mesh(config)
    mesh.source.scan()
    settle(mesh.source)
    replacement = elsewhere / "web.yaml"
    replacement.write_text(web(5, first_ip=21))
    st = path.stat()
    assert replacement.stat().st_size == st.st_size
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    subprocess.run(["cp", "-p", str(replacement), str(path)], check=True)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    settle(mesh.source)
    ips = {e.address for e in mesh.registry.snapshot().endpoints_for(HOST).endpoints}
    assert ips == {f"10.1.0.{i}" for i in range(21, 26)}


def test_a_rename_over_with_the_same_size_and_mtime_is_picked_up(tmp_path: pathlib.Path) -> None:
    """What `rsync -a` does: a temporary file with the source's mtime, renamed over the target."""
    path = tmp_path / "web.yaml"
    path.write_text(web(5, first_ip=11))
    mesh = Mesh(tmp_path)
    mesh.source.scan()
    settle(mesh.source)
    st = path.stat()
    tmp = tmp_path / ".web.yaml.Xy12Zq"
    tmp.write_text(web(5, first_ip=21))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    settle(mesh.source)
    assert {e.address for e in mesh.registry.snapshot().endpoints_for(HOST).endpoints} == {
        f"10.1.0.{i}" for i in range(21, 26)
    }


def test_an_editor_save_that_briefly_removes_the_file_keeps_its_objects(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(web(3))
    mesh = Mesh(tmp_path)
    mesh.source.scan()
    backup = tmp_path / "web.yaml~"
    path.rename(backup)
    mesh.source.scan()
    shutil.copy(backup, path)
    settle(mesh.source)
    assert mesh.seen == [3]


def test_removing_a_file_removes_its_objects(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "a.yaml", NS_A)
    source.scan()
    (tmp_path / "a.yaml").unlink()
    assert settle(source)
    assert len(source.store) == 0


def test_syntax_error_keeps_last_good_state_and_names_document_and_line(
    tmp_path: pathlib.Path, source: FileSource
) -> None:
    write(tmp_path / "mesh.yaml", NS_A)
    source.scan()
    write(tmp_path / "mesh.yaml", NS_A + "---\napiVersion: v1\nkind: [unclosed\n")
    settle(source)
    assert source.store.get(ObjectKey("Namespace", "", "a")) is not None
    [problem] = source.problems
    assert (problem.file, problem.document, problem.field) == ("mesh.yaml", 1, "(yaml)")
    assert "line 10" in problem.message


@pytest.mark.parametrize(
    ("number", "shown"),
    [
        ("1" * 5000, "11111111111111111111... (5,000 characters)"),  # int() raises on more than 4,300 digits
        ("9223372036854775808", "9223372036854775808"),  # one past int64, which Kubernetes refuses too
        ("-9223372036854775809", "-9223372036854775809"),
    ],
)
def test_an_integer_beyond_64_bits_is_a_problem_of_its_file_and_the_scan_goes_on(
    tmp_path: pathlib.Path, source: FileSource, number: str, shown: str
) -> None:
    """A config file holding a number of 5,000 digits stopped the control plane: PyYAML's int() raised
    out of the scan."""
    write(tmp_path / "mesh.yaml", NS_A)
    source.scan()
    write(
        tmp_path / "mesh.yaml",
        NS_A + f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {{ports: [{{port: {number}}}]}}\n",
    )
    write(tmp_path / "other.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
    settle(source)
    assert source.store.get(ObjectKey("Namespace", "", "a")) is not None  # the last good contents
    assert source.store.get(ObjectKey("Namespace", "", "b")) is not None
    [problem] = source.problems
    assert (problem.file, problem.document, problem.field) == ("mesh.yaml", 1, "(yaml)")
    assert problem.message.endswith(f"the integer {shown} is out of the range of a 64-bit integer")


def test_a_file_with_one_good_and_one_bad_document_is_not_applied_in_part(
    tmp_path: pathlib.Path, source: FileSource
) -> None:
    write(tmp_path / "mesh.yaml", NS_A)
    source.scan()
    edited = NS_A.replace("enabled", "disabled") + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
    write(tmp_path / "mesh.yaml", edited + "data: {count: 1}\n")
    assert not settle(source)
    [problem] = source.problems
    assert (problem.file, problem.document, problem.field) == ("mesh.yaml", 1, "data.count")
    ns = source.store.get(ObjectKey("Namespace", "", "a"))
    assert ns is not None and ns["metadata"]["labels"]["istio-injection"] == "enabled"  # the good document waits
    assert source.store.get(ObjectKey("ConfigMap", "default", "c")) is None
    write(tmp_path / "mesh.yaml", edited + "data: {count: '1'}\n")  # fixed: the whole file applies
    assert settle(source)
    assert source.problems == []
    ns = source.store.get(ObjectKey("Namespace", "", "a"))
    assert ns is not None and ns["metadata"]["labels"]["istio-injection"] == "disabled"
    assert source.store.get(ObjectKey("ConfigMap", "default", "c")) is not None


def test_yaml_anchors_are_read_but_a_billion_laughs_or_a_recursive_alias_is_refused(
    tmp_path: pathlib.Path, source: FileSource
) -> None:
    """kubectl reads anchors, so a config file may use them; but 400 bytes that aliases expand to 5
    million strings (which held the process ~1 s, ~9 s with one level more) or a value that contains
    itself (which hung the scan for good) keep their file out, and the rest applies."""
    write(
        tmp_path / "anchors.yaml",
        """
        apiVersion: v1
        kind: List
        items:
        - apiVersion: v1
          kind: Service
          metadata: {name: a, namespace: shop}
          spec: {ports: &ports [{name: http, port: 80}, {name: grpc, port: 9090}]}
        - apiVersion: v1
          kind: Service
          metadata: {name: b, namespace: shop}
          spec: {ports: *ports}
        """,
    )
    laughs = ['  l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    laughs += [f"  l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 7)]
    write(
        tmp_path / "laughs.yaml",
        CM.replace("name: istio\n", "name: laughs\n  annotations:\n" + "\n".join(laughs) + "\n", 1),
    )
    write(tmp_path / "recursive.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: &m {name: r, labels: {m: *m}}\n")
    assert source.scan()
    ports = [p["port"] for p in source.store.get(ObjectKey("Service", "shop", "b"))["spec"]["ports"]]  # type: ignore[index]
    assert ports == [80, 9090]
    assert source.store.get(ObjectKey("ConfigMap", "istio-system", "laughs")) is None
    assert source.store.get(ObjectKey("Namespace", "", "r")) is None
    assert [str(p) for p in source.problems] == [
        "laughs.yaml document 0: (yaml): line 2 column 1: YAML aliases (*name) expand this document to 6,053,467"
        " nodes; it has 40 of its own, and at most 100,000 are read",
        "recursive.yaml document 0: (yaml): line 3 column 11: a YAML alias (*name) refers to a node that contains it",
    ]


def test_unknown_kind_is_reported_and_the_rest_applies(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "mesh.yaml", "apiVersion: v1\nkind: Frobnicator\nmetadata: {name: f}\n---\n" + NS_A)
    source.scan()
    assert source.store.get(ObjectKey("Namespace", "", "a")) is not None
    [problem] = source.problems
    assert problem.field == "kind" and "Frobnicator" in problem.message


def test_invalid_name_is_rejected(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: Not_Valid}\n")
    source.scan()
    assert len(source.store) == 0
    assert source.problems[0].field == "metadata.name"


def test_same_object_in_two_files_first_file_wins(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "a.yaml", NS_A)
    write(tmp_path / "b.yaml", NS_A.replace("enabled", "disabled"))
    source.scan()
    obj = source.store.get(ObjectKey("Namespace", "", "a"))
    assert obj is not None and obj["metadata"]["labels"]["istio-injection"] == "enabled"


def test_when_the_first_file_drops_a_shared_object_the_next_file_defines_it(
    tmp_path: pathlib.Path, source: FileSource, caplog: pytest.LogCaptureFixture
) -> None:
    key = ObjectKey("Namespace", "", "a")
    write(tmp_path / "a.yaml", NS_A + "---\n" + CM)
    write(tmp_path / "b.yaml", NS_A.replace("enabled", "disabled"))
    source.scan()
    assert "Namespace/a is defined in a.yaml and b.yaml; using the first" in caplog.text

    def labels() -> object:
        obj = source.store.get(key)
        return obj and obj["metadata"]["labels"]["istio-injection"]

    write(tmp_path / "a.yaml", CM)
    assert settle(source) and labels() == "disabled"
    write(tmp_path / "a.yaml", NS_A)
    assert settle(source) and labels() == "enabled"
    (tmp_path / "b.yaml").unlink()
    assert not settle(source) and labels() == "enabled"  # the winner's copy was already applied
    (tmp_path / "a.yaml").unlink()
    assert settle(source) and source.store.get(key) is None


def test_an_edit_hands_the_store_only_the_edited_files_objects(tmp_path: pathlib.Path) -> None:
    """A one-line edit in a large config dir must not cost a pass over every object it holds (with
    60,000 objects that pass held the event loop ~0.15 s)."""
    names = [f"ns{i}" for i in range(300)]
    for i in range(0, 300, 100):
        docs = [f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n" for n in names[i : i + 100]]
        write(tmp_path / f"ns{i}.yaml", "---\n".join(docs))
    write(tmp_path / "mesh.yaml", CM)
    store = ConfigStore()
    source = FileSource(tmp_path, store)
    source.scan()
    assert len(store) == 301
    handed: list[int] = []
    apply = store.apply
    store.apply = lambda changes: (changes := list(changes), handed.append(len(changes)), apply(changes))[2]  # type: ignore[method-assign]
    write(tmp_path / "mesh.yaml", CM.replace("cluster.local", "example.org"))
    assert settle(source)
    assert handed == [1]
    cm = store.get(ObjectKey("ConfigMap", "istio-system", "istio"))
    assert cm is not None and "example.org" in cm["data"]["mesh"]


async def test_a_first_load_on_several_cores_reads_what_a_scan_reads_and_leaves_no_process(
    tmp_path: pathlib.Path,
) -> None:
    """`serve` reads its config dir with `load()`, large files parsed in worker processes side by
    side: the store and the problems must be those of a plain scan, and no worker may outlive it."""
    for i in range(3):
        docs = [
            f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: big{i}-{n}, labels: {{gen: '{n}'}}}}\n"
            for n in range(1500)
        ]
        write(tmp_path / f"big{i}.yaml", "---\n".join(docs))
    write(tmp_path / "broken.yaml", (tmp_path / "big0.yaml").read_text().replace("big0-", "broken-") + "]: [\n")
    write(tmp_path / "mesh.yaml", NS_A + "---\n" + CM)
    assert all((tmp_path / f"big{i}.yaml").stat().st_size > INLINE_PARSE_BYTES for i in range(3))
    loaded = FileSource(tmp_path, ConfigStore())
    assert await loaded.load(workers=3)
    assert multiprocessing.active_children() == []
    scanned = FileSource(tmp_path, ConfigStore())
    scanned.scan()
    assert len(loaded.store) == len(scanned.store) == 4502
    assert loaded.store.list("Namespace") == scanned.store.list("Namespace")
    assert loaded.store.get(ObjectKey("ConfigMap", "istio-system", "istio")) is not None
    assert loaded.problems == scanned.problems
    assert [(p.file, p.field) for p in loaded.problems] == [("broken.yaml", "(yaml)")]


async def test_a_first_load_of_a_missing_directory_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        await FileSource(tmp_path / "nope", ConfigStore()).load(workers=2)


async def test_a_large_edit_goes_into_the_store_in_steps_with_the_event_loop_turning_between(
    tmp_path: pathlib.Path,
) -> None:
    """A file of 10,000 Pods written to the store in one batch held the event loop (the webhook, the
    CA, xDS and /ready) ~300 ms. A running source writes WRITE_STEP objects at a time and lets other
    tasks run between the steps; in the end every change is there."""
    count = 2 * WRITE_STEP + 9
    configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: shop}}\ndata: {{v: '{v}'}}\n"
    path = tmp_path / "many.yaml"
    write(path, "---\n".join(configmap.format(i=i, v=1) for i in range(count)))
    source = FileSource(tmp_path, ConfigStore())
    source.scan()
    steps = StoreSteps(source.store, "ConfigMap")
    write(path, "---\n".join(configmap.format(i=i, v=2) for i in range(count)))
    async with running(steps.tick()):
        await source.scan_async()
        assert await source.scan_async()  # the edit has settled
    assert all(
        (source.store.get(ObjectKey("ConfigMap", "shop", f"cm-{i}")) or {})["data"] == {"v": "2"} for i in range(count)
    )
    assert steps.sizes() == [WRITE_STEP, WRITE_STEP, 9], steps.batches
    assert steps.turned_between(), steps.batches
    source.close()


class Watching:
    """`FileSource.watch()` running as serve runs it, counting its walks of the directory."""

    def __init__(self, directory: pathlib.Path, *, idle_poll: float) -> None:
        self.source = FileSource(directory, ConfigStore(), poll_interval=0.02, idle_poll=idle_poll)
        self.walks = 0
        walk = self.source._walk

        def counted(watch: Any = None) -> Any:
            self.walks += 1
            return walk(watch)

        self.source._walk = counted  # type: ignore[method-assign]

    async def __aenter__(self) -> Watching:
        self.source.scan()
        self.task = asyncio.create_task(self.source.watch())
        await asyncio.sleep(0.2)  # settled: nothing pending
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def until(self, key: ObjectKey, *, within: float = 5.0) -> float:
        """Seconds until `key` is in the store."""
        started = time.monotonic()
        while self.source.store.get(key) is None:
            assert time.monotonic() - started < within, f"{key} not applied within {within}s"
            await asyncio.sleep(0.01)
        return time.monotonic() - started


async def test_an_idle_config_dir_is_not_walked_until_something_in_it_changes(tmp_path: pathlib.Path) -> None:
    """Polling walked the whole directory five times a second: with 20,000 files, half a core
    while nothing changed. inotify wakes the source instead, and an edit still applies at once."""
    write(tmp_path / "mesh.yaml", NS_A)
    async with Watching(tmp_path, idle_poll=60) as watching:
        walks = watching.walks
        await asyncio.sleep(1.0)
        assert watching.walks == walks  # polling every 20 ms would have walked ~50 times
        write(tmp_path / "more.yaml", NS_A.replace("name: a", "name: b"))
        assert await watching.until(ObjectKey("Namespace", "", "b")) < 2.0
        (tmp_path / "sub").mkdir()  # made after the start: watched by the walk that finds it, before listing it
        write(tmp_path / "sub" / "c.yaml", NS_A.replace("name: a", "name: c"))
        assert await watching.until(ObjectKey("Namespace", "", "c")) < 2.0


class NoWatches(DirWatch):
    def watch(self, directory: str) -> None:
        raise WatchError(f"cannot watch {directory} with inotify ([Errno 28] No space left on device)")


def no_inotify() -> DirWatch:
    raise OSError(24, "Too many open files")


@pytest.mark.parametrize(
    ("watcher", "warning"),
    [
        (no_inotify, "inotify is not available ([Errno 24] Too many open files); polling every 0.02s"),
        (NoWatches, "with inotify ([Errno 28] No space left on device); polling every 0.02s"),
    ],
    ids=["no-inotify-instance", "no-watch"],
)
async def test_without_inotify_the_config_dir_is_polled(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    watcher: Any,
    warning: str,
) -> None:
    monkeypatch.setattr(files, "DirWatch", watcher)
    write(tmp_path / "mesh.yaml", NS_A)
    async with Watching(tmp_path, idle_poll=60) as watching:
        write(tmp_path / "more.yaml", NS_A.replace("name: a", "name: b"))
        assert await watching.until(ObjectKey("Namespace", "", "b")) < 2.0
        assert watching.walks > 5
    assert warning in caplog.text


async def test_a_walk_out_of_file_descriptors_keeps_the_config_and_walks_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE during a walk stopped the whole control plane (the watch task failed): descriptors run
    out for a moment, when the process or the machine is flooded with connections."""
    write(tmp_path / "mesh.yaml", NS_A)
    scandir = os.scandir
    failures = 3

    def flooded(path: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError(errno.EMFILE, "Too many open files", str(path))
        return scandir(path)

    async with Watching(tmp_path, idle_poll=60) as watching:
        monkeypatch.setattr(files.os, "scandir", flooded)
        write(tmp_path / "more.yaml", NS_A.replace("name: a", "name: b"))
        assert await watching.until(ObjectKey("Namespace", "", "b")) < 2.0
        assert not watching.task.done()
        assert watching.source.store.get(ObjectKey("Namespace", "", "a")) is not None
    assert failures == 0
    assert f"config dir: cannot walk {tmp_path} (Too many open files); keeping the last good config" in caplog.text


def test_list_documents_and_hidden_files(tmp_path: pathlib.Path, source: FileSource) -> None:
    """A typed list's items without kind take it, as kubectl reads them (`NamespaceList` items are Namespaces)."""
    write(
        tmp_path / "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: x}}\n",
    )
    write(tmp_path / "typed.yaml", "apiVersion: v1\nkind: NamespaceList\nitems:\n- {metadata: {name: typed}}\n")
    write(tmp_path / ".hidden.yaml", NS_A)
    source.scan()
    assert [o["metadata"]["name"] for o in source.store.list("Namespace")] == ["typed", "x"]


def test_missing_directory_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileSource(tmp_path / "nope", ConfigStore()).scan()


def test_a_large_file_is_parsed_with_the_collector_paused_and_it_is_on_again_after() -> None:
    """A worker's parse builds objects that all die when its chunks are sent: the collections it
    started found nothing to free and doubled its time (a 10,000-endpoint file: 6-8 full passes)."""
    endpoints = [{"addresses": [f"10.1.{i // 250}.{i % 250 + 1}"], "conditions": {"ready": True}} for i in range(3000)]
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "big", "namespace": "default", "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080}],
    }
    data = yaml.safe_dump(slice_).encode()
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    assert gc.isenabled()
    gc.callbacks.append(count)
    try:
        chunks, problems, usable = documents._parse_to_chunks(data, "big.yaml")
    finally:
        gc.callbacks.remove(count)
    assert usable and not problems and len(chunks) == 1
    assert collections == []
    assert gc.isenabled()
