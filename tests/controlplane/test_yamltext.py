"""Whole-file YAML: aliases are read as Kubernetes reads them, within bounds."""

from __future__ import annotations

import pytest
import yaml

from controlplane.model import yamltext


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
