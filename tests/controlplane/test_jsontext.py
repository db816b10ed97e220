"""controlplane.jsontext reads JSON as Go does, without recursing on deep input."""

from __future__ import annotations

import pytest

from controlplane.jsontext import json_depth, load_json, strict_json


@pytest.mark.parametrize(
    "text",
    ["NaN", "[Infinity]", '{"a": -Infinity}', "1e400", "[-1e400]", "1" + "0" * 309, "-1" + "0" * 400, "9" * 5000],
)
def test_strict_json_refuses_what_go_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a JSON value|is out of range"):
        strict_json(text)


def test_strict_json_reads_numbers_within_a_float64() -> None:
    assert strict_json("[1e308, -1.5, 9007199254740993, 1000000000000000000000]") == [
        1e308,
        -1.5,
        9007199254740993,  # an int stays exact
        10**21,
    ]


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 60_000, "[" * 21 + "]" * 21])
def test_load_json_refuses_deep_nesting_before_decoding(text: str) -> None:
    """json.loads raises RecursionError on a few thousand brackets, before any other check."""
    with pytest.raises(ValueError, match=r"nests \d+ levels deep; at most 20 are allowed"):
        load_json(text, max_depth=20)


def test_load_json_reads_what_nests_within_the_bound_and_counts_no_bracket_in_a_string() -> None:
    assert load_json('{"a": [[{"b": "[[[[[[[[[[[[[[[[[[[[[[[[[["}]]}', max_depth=4) == {"a": [[{"b": "[" * 26}]]}
    assert json_depth(b'{"a": "]]]]\\"", "b": [[]]}') == 3
