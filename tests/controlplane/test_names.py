"""Kubernetes name rules: the validators themselves, and the config directory refusing bad names."""

from __future__ import annotations

import os
import pathlib
import textwrap
from collections.abc import Callable

import pytest

from controlplane.model import names
from controlplane.model.fields import ObjectError
from controlplane.model.store import ConfigStore, ObjectKey
from controlplane.sources.files import FileSource

Rule = Callable[..., str]

# (value, label ok, DNS-1035 label ok, subdomain ok)
TABLE: list[tuple[str, bool, bool, bool]] = [
    ("shop", True, True, True),
    ("a", True, True, True),
    ("web-1", True, True, True),
    ("1web", True, False, True),
    ("a" * 63, True, True, True),
    ("a" * 64, False, False, True),
    ("a." * 126 + "a", False, False, True),  # 253 characters
    ("a." * 126 + "ab", False, False, False),  # 254 characters
    ("web.v1", False, False, True),
    ("shop\n", False, False, False),
    ("\nshop", False, False, False),
    ("shop\r", False, False, False),
    ("sh op", False, False, False),
    ("Shop", False, False, False),
    ("SHOP", False, False, False),
    ("-shop", False, False, False),
    ("shop-", False, False, False),
    ("sh_op", False, False, False),
    ("", False, False, False),
    ("caf\u00e9", False, False, False),
    ("\uff53hop", False, False, False),  # fullwidth s
    ("sh\u0130p", False, False, False),  # dotted capital I, lowercases to two characters
    ("web..v1", False, False, False),
    (".web", False, False, False),
    ("web.", False, False, False),
    ("web.-v1", False, False, False),
]


@pytest.mark.parametrize(("value", "label", "dns1035", "subdomain"), TABLE, ids=[repr(row[0])[:30] for row in TABLE])
def test_each_rule_accepts_exactly_kubernetes_names(value: str, label: bool, dns1035: bool, subdomain: bool) -> None:
    rules: list[tuple[Rule, bool, str]] = [
        (names.dns1123_label, label, "DNS-1123 label"),
        (names.dns1035_label, dns1035, "DNS-1035 label"),
        (names.dns1123_subdomain, subdomain, "DNS-1123 subdomain"),
    ]
    for rule, ok, rule_name in rules:
        if ok:
            assert rule(value, field="metadata.name") == value
            continue
        with pytest.raises(ObjectError) as caught:
            rule(value, field="metadata.name")
        assert caught.value.field == "metadata.name"
        assert f"is not a {rule_name} (lowercase letters, digits" in caught.value.message


def test_the_error_quotes_the_value_with_its_newline_visible_and_states_the_rule() -> None:
    with pytest.raises(ObjectError) as caught:
        names.dns1123_label("nlsvc\n", field="metadata.name")
    assert str(caught.value) == (
        "metadata.name: 'nlsvc\\n' is not a DNS-1123 label (lowercase letters, digits and '-', "
        "starting and ending with a letter or digit; at most 63)"
    )


def test_a_very_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(ObjectError) as caught:
        names.dns1123_subdomain("x" * 10_000, field="metadata.name")
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("value", [None, 7, ["shop"], b"shop"])
def test_a_name_that_is_not_a_string_is_named(value: object) -> None:
    with pytest.raises(ObjectError, match="must be a string"):
        names.namespace_name(value, field="metadata.namespace")


def test_service_accounts_follow_the_subdomain_rule_and_namespaces_the_label_rule() -> None:
    assert names.service_account_name("build.bot") == "build.bot"
    with pytest.raises(ObjectError, match="DNS-1123 label"):
        names.namespace_name("team.a")


# The config directory, over real files.

GOOD_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 80}]
"""


def write(path: pathlib.Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.fixture
def source(tmp_path: pathlib.Path) -> FileSource:
    return FileSource(tmp_path, ConfigStore())


def test_a_service_named_with_a_trailing_newline_is_refused_and_the_last_good_state_kept(
    tmp_path: pathlib.Path, source: FileSource
) -> None:
    write(tmp_path / "mesh.yaml", GOOD_SERVICE)
    source.scan()
    assert source.store.get(ObjectKey("Service", "shop", "web")) is not None
    bad = 'apiVersion: v1\nkind: Service\nmetadata: {name: "nlsvc\\n", namespace: shop}\nspec: {ports: [{port: 80}]}\n'
    write(tmp_path / "mesh.yaml", GOOD_SERVICE + "---\n" + bad)
    source.scan()
    [problem] = source.problems
    assert (problem.file, problem.document, problem.field) == ("mesh.yaml", 1, "metadata.name")
    assert problem.message.startswith("'nlsvc\\n' is not a DNS-1035 label")
    assert source.store.get(ObjectKey("Service", "shop", "web")) is not None
    assert source.store.get(ObjectKey("Service", "shop", "nlsvc\n")) is None


@pytest.mark.parametrize(
    ("document", "field", "rule"),
    [
        ("kind: Namespace\nmetadata: {name: 'shop\\n'}", "metadata.name", "DNS-1123 label"),
        ("kind: Namespace\nmetadata: {name: team.a}", "metadata.name", "DNS-1123 label"),
        ("kind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}", "metadata.name", "DNS-1035 label"),
        ("kind: ConfigMap\nmetadata: {name: 'cm\\n'}", "metadata.name", "DNS-1123 subdomain"),
        (
            "kind: Service\nmetadata: {name: web}\nspec: {ports: [{name: 'http\\n', port: 80}]}",
            "spec.ports[0].name",
            "DNS-1123 label",
        ),
        ("kind: ConfigMap\nmetadata: {name: cm, namespace: 'shop\\n'}", "metadata.namespace", "DNS-1123 label"),
        ("kind: Pod\nmetadata: {name: Web-1}\nspec: {containers: []}", "metadata.name", "DNS-1123 subdomain"),
        ("kind: ConfigMap\nmetadata: {name: '" + "a" * 254 + "'}", "metadata.name", "DNS-1123 subdomain"),
    ],
    ids=[
        "namespace-newline",
        "namespace-dot",
        "service-digit",
        "configmap-newline",
        "service-port-newline",
        "namespace-field",
        "pod-upper",
        "long",
    ],
)
def test_each_kind_refuses_a_name_breaking_its_rule(
    tmp_path: pathlib.Path, source: FileSource, document: str, field: str, rule: str
) -> None:
    write(tmp_path / "bad.yaml", "apiVersion: v1\n" + document + "\n")
    source.scan()
    [problem] = source.problems
    assert (problem.file, problem.document, problem.field) == ("bad.yaml", 0, field)
    assert f"is not a {rule}" in problem.message
    assert len(source.store) == 0


def test_names_kubernetes_allows_are_accepted(tmp_path: pathlib.Path, source: FileSource) -> None:
    write(
        tmp_path / "ok.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio.v1-2, namespace: " + "n" * 63 + "}\n",
    )
    source.scan()
    assert source.problems == []
    assert source.store.get(ObjectKey("ConfigMap", "n" * 63, "istio.v1-2")) is not None
