"""What the API server's decoder and the types that decode themselves accept, at unit level: Go's quantity,
base64, RFC 3339 and float renderings as kubesim emulates them, and the Go type table every built-in kind
decodes into."""

from __future__ import annotations

import pytest

from tests.kubesim import gotypes
from tests.kubesim.decoding import (
    QUANTITY_FORMAT,
    QUANTITY_SUFFIX,
    RFC3339,
    RFC3339_MICRO,
    base64_error,
    go_format,
    go_json_float,
    go_type,
    kind_type,
    quantity_error,
    struct_fields,
    time_error,
)
from tests.kubesim.resources import RESOURCES


def test_every_built_in_kind_has_its_go_type_and_every_field_type_resolves() -> None:
    for resource in RESOURCES:
        t = kind_type(resource.api_version, resource.kind)
        assert (t.kind, t.name) == ("struct", resource.kind)
        assert {"apiVersion", "kind", "metadata"} <= set(struct_fields(t.ref))
    for package, structs in gotypes.STRUCTS.items():
        for name in structs:
            for expr, owner in struct_fields(f"{package}.{name}").values():
                assert go_type(expr, owner).display, (package, name, expr)


QUANTITY_CASES = [
    ("0", None),
    ("1.5Gi", None),
    ("100m", None),
    ("1e3", None),
    ("1E", None),
    (".", None),
    ("", QUANTITY_FORMAT),
    ("1GB", QUANTITY_FORMAT),
    ("1.5.5", QUANTITY_FORMAT),
    ("1ki", QUANTITY_SUFFIX),
    ("1e", QUANTITY_SUFFIX),
    ("1m5", QUANTITY_SUFFIX),
]


@pytest.mark.parametrize(("text", "error"), QUANTITY_CASES)
def test_quantities_parse_as_parse_quantity_does(text: str, error: str | None) -> None:
    assert quantity_error(text) == error


@pytest.mark.parametrize(
    ("text", "offset"),
    [("", None), ("YQ==", None), ("YW\nJj", None), ("YQ", 0), ("YQ=", 3), ("YQ=a", 2), ("Y Q==", 1), ("YQ==YQ==", 4)],
)
def test_base64_errors_name_the_offset_go_finds(text: str, offset: int | None) -> None:
    assert base64_error(text) == (None if offset is None else f"illegal base64 data at input byte {offset}")


@pytest.mark.parametrize(
    ("text", "layout", "error"),
    [
        ("2024-02-29T23:59:59Z", RFC3339, None),
        ("2024-02-29T23:59:59.5+01:00", RFC3339, None),
        ("2024-01-01T1:00:00Z", RFC3339, None),
        ("2024-13-01T00:00:00Z", RFC3339, 'parsing time "2024-13-01T00:00:00Z": month out of range'),
        ("2023-02-29T00:00:00Z", RFC3339, 'parsing time "2023-02-29T00:00:00Z": day out of range'),
        ("2024-01-01T00:00:00Zx", RFC3339, 'parsing time "2024-01-01T00:00:00Zx": extra text: "x"'),
        (
            "2024-01-01 00:00:00Z",
            RFC3339,
            'parsing time "2024-01-01 00:00:00Z" as "2006-01-02T15:04:05Z07:00": cannot parse " 00:00:00Z" as "T"',
        ),
        ("2024-01-01T00:00:00.123456Z", RFC3339_MICRO, None),
    ],
)
def test_times_parse_as_time_parse_does(text: str, layout: str, error: str | None) -> None:
    assert time_error(text, layout) == error


@pytest.mark.parametrize(
    ("value", "text"), [(1.0, "1"), (2.5, "2.5"), (1e21, "1e+21"), (1e20, "100000000000000000000"), (1e-7, "1e-7")]
)
def test_floats_are_written_as_encoding_json_writes_them(value: float, text: str) -> None:
    assert go_json_float(value) == text


def test_unstructured_values_print_as_go_prints_them() -> None:
    """`%+v` of a patch map: sorted keys, bare strings, `<nil>`, floats in `%g`'s shortest form."""
    patch = {"spec": {"replicas": 2.0, "x": [1, "a", None, 1234567.0, 0.00001, True]}}
    assert go_format(patch) == "map[spec:map[replicas:2 x:[1 a <nil> 1.234567e+06 1e-05 true]]]"
