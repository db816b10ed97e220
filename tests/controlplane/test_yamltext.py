"""YAML read as Kubernetes reads it: scalars, keys and aliases (within bounds)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import tempfile
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controlplane.model import yamltext
from tests.kubesim.fixtures import KUBECTL


def laughs(levels: int, width: int = 9) -> str:
    """A "billion laughs" document: a few written nodes that aliases expand to ~width**levels."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_anchors_and_merge_keys_read_as_written() -> None:
    text = "base: &ports [{port: 80}, {port: 443}]\nweb: {ports: *ports}\n---\nd: &d {a: 1}\ne: {<<: *d, b: 2}\n"
    assert list(yamltext.load_all(text)) == [
        {"base": [{"port": 80}, {"port": 443}], "web": {"ports": [{"port": 80}, {"port": 443}]}},
        {"d": {"a": 1}, "e": {"a": 1, "b": 2}},
    ]


def test_a_document_may_grow_through_aliases_to_the_free_allowance_but_not_past_it() -> None:
    # level i stands for 1 + 9 * (level i-1) nodes: 5 levels make 74,738 in all, 6 levels 672,610
    assert len(next(yamltext.load_all(laughs(5)))) == 5
    with pytest.raises(yaml.YAMLError) as refused:
        next(yamltext.load_all(laughs(6)))
    assert "expand this document to 672,610 nodes; it has 22 of its own, and at most 100,000 are read" in str(
        refused.value
    )


def test_a_large_document_may_repeat_itself_once() -> None:
    """Past the free allowance, aliases may double what a document holds: a big list written once and
    named once more is read; named twice more it is not."""
    items = ", ".join(f"{{n: {i}}}" for i in range(40_000))
    twice = f"a: &a [{items}]\nb: *a\n"
    assert len(next(yamltext.load_all(twice))["b"]) == 40_000
    with pytest.raises(
        yaml.YAMLError, match="to 360,007 nodes; it has 120,005 of its own, and at most 240,010 are read"
    ):
        next(yamltext.load_all(twice + "c: *a\n"))


def test_a_node_that_contains_itself_is_refused_where_its_anchor_is() -> None:
    with pytest.raises(yaml.YAMLError) as refused:
        list(yamltext.load_all("ok: 1\n---\nx: &a [1, *a]\n"))
    assert "a YAML alias (*name) refers to a node that contains it" in str(refused.value)
    assert "line 3, column 4" in str(refused.value)


def test_documents_before_a_refused_one_are_yielded_first() -> None:
    read = []
    with pytest.raises(yaml.YAMLError):
        for doc in yamltext.load_all("a: 1\n---\n" + laughs(7)):
            read.append(doc)
    assert read == [{"a": 1}]


def test_an_integer_beyond_64_bits_is_refused_with_its_place() -> None:
    """PyYAML's int() raised a bare ValueError for more than 4,300 digits (the webhook's annotation
    values, the mesh config and config files all go through these loaders)."""
    for text in ("concurrency: " + "9" * 5000, "concurrency: 0x8000000000000000"):
        with pytest.raises(ValueError, match=r"at line 1 column 14: the integer .* is out of the range of a 64-bit"):
            yamltext.load_yaml(text, max_depth=10)
    assert yamltext.load_yaml("concurrency: 0x7fffffffffffffff", max_depth=10) == {"concurrency": 2**63 - 1}


# -- scalars and keys as Kubernetes reads them (sigs.k8s.io/yaml: goyaml.v2, then JSON) ------------------

KUBERNETES_READS = [
    # YAML 1.1 forms PyYAML resolves and goyaml.v2 does not: base 60, dates and times, `=`
    ("1:30", "1:30"),
    ("190:20:30.15", "190:20:30.15"),
    ("2026-12-07", "2026-12-07"),
    ("2026-12-07T10:00:00Z", "2026-12-07T10:00:00Z"),
    ("2001-12-14 21:59:43.10", "2001-12-14 21:59:43.10"),
    ("=", "="),
    # forms goyaml.v2 reads as numbers (Go's strconv) and PyYAML as strings
    ("0o17", 15),
    ("1e3", 1000),
    ("1.5e3", 1500),
    ("08", 8),  # not octal, so goyaml's float pattern takes it
    ("1e400", "1e400"),  # strconv refuses what overflows: a string
    # booleans, with goyaml's y and n
    ("y", True),
    ("N", False),
    ("yes", True),
    ("Off", False),
    # what both agree on, as JSON then carries it: a float with no fraction is an integer
    ("0777", 511),
    ("0x_1F", 31),
    ("-0b101", -5),
    ("1_000", 1000),
    ("+1", 1),
    ("1.0", 1),
    ("1.5", 1.5),
    ("+.5", 0.5),
    ("~", None),
    ("", None),
    # strings
    ("0b2", "0b2"),
    ("1.2.3", "1.2.3"),
    ("+", "+"),
    ("12e", "12e"),
    ("'y'", "y"),
    ('"1:30"', "1:30"),
    ("!!str 0o17", "0o17"),
    ("!!timestamp 2026-12-07", "2026-12-07"),
    ("!!float 5", 5),
    ("!!binary aGVsbG8=", "hello"),
    ("!thing 5", "5"),  # a tag goyaml does not know: the text as written
    # a mapping or a list is built whatever its tag says (these raised TypeError and AttributeError)
    ("!!float [1, x]", [1, "x"]),
    ("!!int {b: 1}", {"b": 1}),
    ("!!timestamp {x: 1}", {"x": 1}),
    ("!!map x", "x"),
]


@pytest.mark.parametrize(("written", "read"), KUBERNETES_READS)
def test_a_scalar_is_read_as_kubectl_reads_it(written: str, read: object) -> None:
    """`kubectl apply -f` and meshplane must read one file as the same objects: PyYAML's YAML 1.1 read
    `2026-12-07` as a date (`meshplane inject` then refused an annotation kubectl takes) and `1:30` as 90."""
    value = yamltext.load_yaml(f"v: {written}\n", max_depth=10)["v"]
    assert value == read and type(value) is type(read)


def test_mapping_keys_are_strings_spelled_as_kubernetes_spells_them() -> None:
    text = "{80: a, true: b, n: c, 1.5: d, 1000000.0: e, 0.1: f, 3.14159265358979: g, 1e39: h, 0o10: i, 1:30: j}"
    assert next(yamltext.load_all(text)) == {
        "80": "a",
        "true": "b",
        "false": "c",
        "1.5": "d",
        "1e+06": "e",  # a float key is written as Go's %g of a float32
        "0.1": "f",
        "3.1415927": "g",
        ".inf": "h",
        "8": "i",
        "1:30": "j",
    }


def test_unknown_and_collection_tags_read_the_node_as_written() -> None:
    text = "a: !!set {x, z}\nb: !custom {k: 1}\nc: !!omap [{k: 1}]\nd: !!python/name:os.system x\n"
    assert next(yamltext.load_all(text)) == {"a": {"x": None, "z": None}, "b": {"k": 1}, "c": [{"k": 1}], "d": "x"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("v: .inf", "at line 1 column 4: .inf is not a number JSON can carry"),
        ("v: -.Inf", "-.Inf is not a number JSON can carry"),
        ("v: [.nan]", "at line 1 column 5: .nan is not a number JSON can carry"),
        ("~: x", "at line 1 column 1: a mapping key may not be null"),
        ("? [a]\n: x", "a mapping key must be a string or a number"),
        ("v: !!int foo", "cannot decode !!str `foo` as a !!int"),
        ("v: !!float foo", "cannot decode !!str `foo` as a !!float"),
        ("v: !!bool 1", "cannot decode !!int `1` as a !!bool"),
        ("v: !!timestamp 0", "cannot decode !!int `0` as a !!timestamp"),
        ("v: !!binary '%%'", "!!binary value contains invalid base64 data"),
    ],
)
def test_what_json_cannot_carry_is_refused_with_its_place(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        yamltext.load_yaml(text, max_depth=10)


plain_text = st.text(alphabet="0123456789abefnoxyYNtT.+-_:~=eE ", min_size=1, max_size=12).map(str.strip)


@settings(max_examples=400, deadline=None)
@given(key=plain_text, value=plain_text)
def test_whatever_is_read_is_a_json_value_and_what_is_written_reads_back_the_same(key: str, value: str) -> None:
    """What the loader gives is what JSON decoding gives (str keys, no dates, no NaN), so the store can
    hold it as JSON text; and a string the dumper writes reads back as that string, through PyYAML and
    through goyaml.v2's rules alike (`y` and `0o17` quoted)."""
    try:
        doc = yamltext.load_yaml(f"{key}: {value}\n" if key else f"k: {value}\n", max_depth=10)
    except ValueError:
        return  # refused with a place (.inf, a null key)
    if isinstance(doc, dict):
        assert all(isinstance(k, str) for k in doc)
        assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    for text in (key, value):
        written = yaml.dump({text: text}, Dumper=yamltext.YamlDumper)
        assert yamltext.load_yaml(written, max_depth=10) == {text: text}
        assert yaml.safe_load(written) == {text: text}


plain_key = plain_text.filter(bool)
_tags = st.sampled_from(
    ["!!int", "!!float", "!!bool", "!!null", "!!str", "!!timestamp", "!!binary", "!!map", "!!seq", "!!set", "!thing"]
)
tagged_value = st.one_of(
    plain_text,
    st.tuples(
        _tags, st.one_of(plain_text.filter(bool), st.sampled_from(["[1, x]", "{b: 1}", "{x, y}", "''", "aGk="]))
    ).map(" ".join),
)


@settings(max_examples=30, deadline=None)
@given(pairs=st.lists(st.tuples(plain_key, tagged_value), min_size=1, max_size=30))
def test_the_loader_reads_plain_scalars_as_kubectl_reads_them(pairs: list[tuple[str, str]]) -> None:
    """The machine's kubectl as the oracle: a kubeconfig extension is kept as the JSON that
    sigs.k8s.io/yaml made of it, and `kubectl config view -o json` shows it. Generated plain keys and
    values (numbers, booleans, dates, base 60, exponents, odd words; values with explicit tags, on
    scalars and on collections) must read the same through the loader, or be refused by both; the
    loader raises nothing else."""
    lines = "".join(f"        {key}: {value}\n" for key, value in pairs)
    text = (
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://x\n"
        "    extensions:\n    - name: probe\n      extension:\n" + lines
    )
    try:
        ours: Any = yamltext.load_yaml(text, max_depth=20)
    except ValueError:
        ours = None
    extension = ours["clusters"][0]["cluster"]["extensions"][0]["extension"] if ours else None
    assume(not isinstance(extension, dict) or len(extension) == len({key for key, _ in pairs}))  # no key collision
    with tempfile.TemporaryDirectory() as home:
        config = pathlib.Path(home, "config")
        config.write_text(text)
        env = {**os.environ, "HOME": home, "KUBECONFIG": str(config)}
        result = subprocess.run(
            [KUBECTL, "config", "view", "-o", "json"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    if ours is None:
        assert result.returncode != 0, f"kubectl read what the loader refused:\n{text}"
        return
    assert result.returncode == 0, f"kubectl refused what the loader read ({result.stderr}):\n{text}"
    theirs = json.loads(result.stdout)["clusters"][0]["cluster"]["extensions"][0]["extension"]
    assert extension == theirs and _types(extension) == _types(theirs), text


@settings(max_examples=20, deadline=None)
@given(strings=st.lists(plain_text, min_size=1, max_size=30, unique=True))
def test_what_the_dumper_writes_kubectl_reads_back_as_the_same_strings(strings: list[str]) -> None:
    """`meshplane inject` and `tag generate` output goes to `kubectl apply`: every string must come back a
    string, the same one (PyYAML's own dumper wrote `y` and `0o17` plain, which kubectl reads as true and 15)."""
    extension = {f"k{index}": text for index, text in enumerate(strings)}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": "https://x", "extensions": [{"name": "p", "extension": extension}]}}
        ],
    }
    with tempfile.TemporaryDirectory() as home:
        path = pathlib.Path(home, "config")
        path.write_text(yaml.dump(config, Dumper=yamltext.YamlDumper))
        env = {**os.environ, "HOME": home, "KUBECONFIG": str(path)}
        result = subprocess.run(
            [KUBECTL, "config", "view", "-o", "json"], env=env, capture_output=True, text=True, timeout=60, check=True
        )
    assert json.loads(result.stdout)["clusters"][0]["cluster"]["extensions"][0]["extension"] == extension


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    return type(value).__name__


_pieces = st.sampled_from(
    [
        *("a", ": ", ":", "- ", "\n", "  ", "[", "]", "{", "}", ",", "? ", "'", '"', "#", "---\n", "|\n  ", "<<"),
        *("!!int ", "!!float ", "!!bool ", "!!null ", "!!str ", "!!timestamp ", "!!binary ", "!!map ", "!!seq "),
        *("!!set ", "!!omap ", "!x ", "!<tag:yaml.org,2002:int> ", "!!python/object:os.system ", "&a ", "*a"),
        *("1", "0x1", "1.5", "~", "y", ".inf", "2026-12-07", "=", "1:30"),
    ]
)


@settings(max_examples=500, deadline=None)
@given(text=st.lists(_pieces, max_size=25).map("".join))
def test_any_text_gives_json_values_or_a_yaml_error(text: str) -> None:
    """Callers catch `yaml.YAMLError` (config files) or `ValueError` (`load_yaml`); nothing else may
    escape, whatever tags land on whatever nodes."""
    try:
        documents = list(yamltext.load_all(text))
    except yaml.YAMLError:
        return
    for document in documents:
        assert json.loads(json.dumps(document, allow_nan=False)) == document
