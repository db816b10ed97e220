import os
import pathlib
import textwrap

import pytest

from controlplane.model.store import ConfigStore, ObjectKey
from controlplane.sources.files import FileSource

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


def write(path: pathlib.Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))
    # Make each write visible to the mtime check even on coarse clocks.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.fixture
def source(tmp_path: pathlib.Path) -> FileSource:
    return FileSource(tmp_path, ConfigStore())


def test_multi_document_files_fill_the_store(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "mesh.yaml", NS_A + "---\n" + CM)
    assert source.scan()
    assert source.store.get(ObjectKey("Namespace", "", "a")) is not None
    cm = source.store.get(ObjectKey("ConfigMap", "istio-system", "istio"))
    assert cm is not None and cm["data"]["mesh"] == "trustDomain: cluster.local"


def test_namespaced_document_without_namespace_lands_in_default(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {}\n")
    source.scan()
    assert source.store.get(ObjectKey("ConfigMap", "default", "x")) is not None


def test_syntax_error_keeps_last_good_state_and_names_the_line(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "mesh.yaml", NS_A)
    source.scan()
    write(tmp_path / "mesh.yaml", "apiVersion: v1\nkind: [unclosed\n")
    source.scan()
    assert source.store.get(ObjectKey("Namespace", "", "a")) is not None
    [problem] = source.problems
    assert problem.file == "mesh.yaml" and problem.field == "(yaml)" and "line" in problem.message


def test_bad_field_is_reported_with_document_index_and_field(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "mesh.yaml", NS_A)
    source.scan()
    write(tmp_path / "mesh.yaml", NS_A + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {n: 1}\n")
    source.scan()
    [problem] = source.problems
    assert (problem.file, problem.document, problem.field) == ("mesh.yaml", 1, "data.n")
    assert source.store.get(ObjectKey("ConfigMap", "default", "c")) is None  # last good state kept


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


def test_removing_a_file_removes_its_objects(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "a.yaml", NS_A)
    source.scan()
    (tmp_path / "a.yaml").unlink()
    assert source.scan()
    assert len(source.store) == 0


def test_same_object_in_two_files_first_file_wins(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(tmp_path / "a.yaml", NS_A)
    write(tmp_path / "b.yaml", NS_A.replace("enabled", "disabled"))
    source.scan()
    obj = source.store.get(ObjectKey("Namespace", "", "a"))
    assert obj is not None and obj["metadata"]["labels"]["istio-injection"] == "enabled"


def test_list_documents_and_hidden_files(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(
        tmp_path / "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: x}}\n",
    )
    write(tmp_path / ".hidden.yaml", NS_A)
    source.scan()
    assert [o["metadata"]["name"] for o in source.store.list("Namespace")] == ["x"]


def test_missing_directory_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileSource(tmp_path / "nope", ConfigStore()).scan()
