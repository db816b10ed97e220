"""What the API server's decoder and the types that decode themselves accept, at unit level: Go's quantity,
base64, RFC 3339 and float renderings as kubesim emulates them, the Go type table every built-in kind
decodes into, Go's JSON scanner's words for what is not JSON, and the paths of a patched object's unknown
fields."""

from __future__ import annotations

import copy

import pytest

from tests.kubesim import gotypes
from tests.kubesim.decoding import (
    QUANTITY_FORMAT,
    QUANTITY_NUMERIC,
    QUANTITY_SUFFIX,
    RFC3339,
    RFC3339_MICRO,
    base64_error,
    body_json,
    check_object,
    go_format,
    go_json_float,
    go_type,
    json_syntax_error,
    kind_type,
    quantity_error,
    struct_fields,
    time_error,
)
from tests.kubesim.resources import RESOURCES, find
from tests.kubesim.status import ApiError
from tests.kubesim.strictdecoding import patched_unknown


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
    # no digit: zero where ParseQuantity's fast path reads it, refused where its slow path does
    ("Ti", None),
    ("+e-9", None),
    ("Pi", QUANTITY_NUMERIC),
    ("+.Ei", QUANTITY_NUMERIC),
    (".e-10", QUANTITY_NUMERIC),
    ("0e-10", None),
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


# The first eight from encoding/json's own tests (`decode_test.go`).
SYNTAX_CASES = [
    ('{"X": "foo", "Y"}', "invalid character '}' after object key"),
    ("[1, 2, 3+]", "invalid character '+' after array element"),
    ('{"X":12x}', "invalid character 'x' after object key:value pair"),
    ("[2, 3", "unexpected end of JSON input"),
    ('{"F3": -}', "invalid character '}' in numeric literal"),
    ("\x01 42", "invalid character '\\x01' looking for beginning of value"),
    (' "string" \x01', "invalid character '\\x01' after top-level value"),
    ('{"X": "foo" "Y": "bar"}', "invalid character '\"' after object key:value pair"),
    ("", "unexpected end of JSON input"),
    ("  ", "unexpected end of JSON input"),
    ("nul", "invalid character ' ' in literal null (expecting 'l')"),
    ("fals3", "invalid character '3' in literal false (expecting 'e')"),
    ("1.", "invalid character ' ' after decimal point in numeric literal"),
    ("1e+", "invalid character ' ' in exponent of numeric literal"),
    ('{"a":1,}', "invalid character '}' looking for beginning of object key string"),
    ("{'a':1}", "invalid character '\\'' looking for beginning of object key string"),
    ('"\\u12x4"', "invalid character 'x' in \\u hexadecimal character escape"),
    ('"a\nb"', "invalid character '\\n' in string literal"),
    ("\ufeff{}", "invalid character '\u00ef' looking for beginning of value"),
    ("\u00a0{}", "invalid character '\u00c2' looking for beginning of value"),
    ("[" * 10001, "invalid character '[' exceeded max depth"),
    ("Infinity", "invalid character 'I' looking for beginning of value"),
    ('{"a":"\u00e9"}', None),
    ("[" * 10000 + "]" * 10000, None),
]


@pytest.mark.parametrize(("text", "error"), SYNTAX_CASES, ids=range(len(SYNTAX_CASES)))
def test_json_that_is_not_json_is_refused_in_encoding_json_words(text: str, error: str | None) -> None:
    """`checkValid` scans the body's bytes: the error quotes the offending byte as `quoteChar` does (a byte from
    0x80 up as the Latin-1 rune of its value, escaped when Go does not print it)."""
    assert json_syntax_error(text.encode()) == error


@pytest.mark.parametrize(
    ("raw", "summary"),
    [
        (b'{"apiVersion": "v1", "kind": "ConfigMap" "data": {}}', '{"apiVersion": "v1", "kind": " ...'),
        (b"apiVersion: v1", "61706956657273696f6e3a207631"),
        (b"", "<empty>"),
    ],
)
def test_a_create_of_a_body_that_is_not_json_is_an_unrecognized_object(raw: bytes, summary: str) -> None:
    """The first decode of a create's or update's body reads its apiVersion and kind (`Interpret`), and its
    syntax error is answered as an object of no known kind (`transformDecodeError`)."""
    body = body_json(raw)
    with pytest.raises(ApiError) as raised:
        check_object(body, raw, "application/json", kind="ConfigMap", api_version="v1")
    error = json_syntax_error(raw)
    assert (raised.value.code, raised.value.message) == (
        400,
        "the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse "
        f"error: {error} ({summary})",
    )


def test_a_patched_objects_unknown_fields_are_named_as_its_decoder_names_them() -> None:
    """A JSON or merge patch's result is decoded strictly (each field in the order met, quoted, map keys in the
    path); a strategic merge patch's is converted from unstructured (map keys left out, the errors sorted, not
    quoted). Either way the unknown fields are left out of the object."""
    pods = find("", "v1", "pods")
    crds = find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    assert pods is not None and crds is not None
    patched = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "zz": 1}], "tolerations": [{"key": "k", "effectt": "x"}]},
    }
    merged = copy.deepcopy(patched)
    assert patched_unknown(pods, merged, strategic=False) == [
        'unknown field "spec.containers[0].zz"',
        'unknown field "spec.tolerations[0].effectt"',
    ]
    assert merged["spec"] == {"containers": [{"name": "c", "image": "i"}], "tolerations": [{"key": "k"}]}
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "a.b"},
        "spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"properties": {"x": {"typo": 1}}}}}]},
    }
    assert patched_unknown(crds, copy.deepcopy(crd), strategic=False) == [
        'unknown field "spec.versions[0].schema.openAPIV3Schema.properties.x.typo"'
    ]
    assert patched_unknown(crds, copy.deepcopy(crd), strategic=True) == [
        'unknown field "spec.versions[0].schema.openAPIV3Schema.properties.typo"'
    ]
    assert patched_unknown(pods, copy.deepcopy(patched), strategic=True) == [
        'unknown field "spec.containers[0].zz"',
        'unknown field "spec.tolerations[0].effectt"',
    ]
