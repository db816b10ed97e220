"""Label and field selector syntax and matching, table-tested (unit level and over HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.selectors import (
    SelectorError,
    format_label_selector,
    parse_field_selector,
    parse_label_selector,
    selector_from_label_selector,
)
from tests.kubesim.server import KubeSim
from tests.kubesim.validation import LABEL_VALUE_HELP, QUALIFIED_NAME_HELP, SUBDOMAIN_HELP

LABELS = {"app": "web", "tier": "front", "version": "7", "istio.io/rev": "canary"}

LABEL_CASES = [
    ("", True),
    ("app", True),
    ("!app", False),
    ("missing", False),
    ("!missing", True),
    ("app=web", True),
    ("app==web", True),
    ("app = web", True),
    ("app=db", False),
    ("app!=db", True),
    ("app!=web", False),
    ("missing!=x", True),
    ("app in (web,db)", True),
    ("app in (db, cache)", False),
    ("app notin (db)", True),
    ("app notin (web,db)", False),
    ("missing notin (x)", True),
    ("missing in (x)", False),
    ("istio.io/rev=canary", True),
    ("istio.io/rev in (canary,stable),app=web", True),
    ("istio.io/rev in (canary,stable),app=db", False),
    ("app,tier=front,!missing", True),
    ("version>5", True),
    ("version<5", False),
    ("app>5", False),
    ("tier=", False),
    # "()" is the one empty value, as the API server's parser reads it: app in ("")
    ("app in ()", False),
    ("missing notin ()", True),
]


@pytest.mark.parametrize(("selector", "matches"), LABEL_CASES, ids=[c[0] or "empty" for c in LABEL_CASES])
def test_label_selector_matches_like_the_api_server(selector: str, matches: bool) -> None:
    assert parse_label_selector(selector).matches(LABELS) is matches


BAD_LABEL_SELECTORS = [
    "app=web=x",
    "app in web",
    "app notin (",
    "=web",
    "app=,",
    "app,",
    "bad key=x",
    "app=bad value!",
    "-app=x",
    "version>x",
    "a/b/c=x",
    "UPPER.example.com/x=y",
]


@pytest.mark.parametrize("selector", BAD_LABEL_SELECTORS)
def test_malformed_label_selectors_are_rejected(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


REQUIREMENT = "unable to parse requirement: "


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("-app=x", f'<nil>: Invalid value: "-app": name part {QUALIFIED_NAME_HELP}'),
        (
            "a/b/c=x",
            f'<nil>: Invalid value: "a/b/c": a qualified name {QUALIFIED_NAME_HELP} with an optional DNS subdomain '
            "prefix and '/' (e.g. 'example.com/MyName')",
        ),
        ("UPPER.example.com/x=y", f'<nil>: Invalid value: "UPPER.example.com/x": prefix part {SUBDOMAIN_HELP}'),
        ("/-x=y", f'<nil>: Invalid value: "/-x": prefix part must be non-empty; name part {QUALIFIED_NAME_HELP}'),
        # every problem of a key, joined in one error
        ("x/=y", f'<nil>: Invalid value: "x/": name part must be non-empty; name part {QUALIFIED_NAME_HELP}'),
        ("!-app", f'<nil>: Invalid value: "-app": name part {QUALIFIED_NAME_HELP}'),
        # a bad key is refused as soon as it is read: its values are never looked at
        ("-app in (-a)", f'<nil>: Invalid value: "-app": name part {QUALIFIED_NAME_HELP}'),
        ("app=-web", f'values[0][app]: Invalid value: "-web": {LABEL_VALUE_HELP}'),
        # the values of `in` are a sorted set: "-db" comes before "web"
        ("app in (web, -db)", f'values[0][app]: Invalid value: "-db": {LABEL_VALUE_HELP}'),
    ],
    ids=[
        "name-start",
        "two-slashes",
        "upper-prefix",
        "empty-prefix",
        "empty-name",
        "not-exists",
        "key-first",
        "value",
        "sorted-value",
    ],
)
def test_a_bad_key_or_value_is_refused_with_the_api_servers_texts(selector: str, message: str) -> None:
    """A key is a qualified name and a value a label value (`IsQualifiedName`, `IsValidLabelValue`): the
    messages are the server's, with their examples and regular expressions. The parser checks a key with no
    field path, which Go prints as `<nil>` (`parseKeyAndInferOperator`); a value is named by its index and key
    (`NewRequirement`)."""
    with pytest.raises(SelectorError) as info:
        parse_label_selector(selector)
    assert str(info.value) == REQUIREMENT + message


INTEGER_HELP = "for 'Gt', 'Lt' operators, the value must be an integer"


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (
            "app in (-b, ok, -a)",
            f'[values[0][app]: Invalid value: "-a": {LABEL_VALUE_HELP}, '
            f'values[1][app]: Invalid value: "-b": {LABEL_VALUE_HELP}]',
        ),
        ("app notin (-a, -a)", f'values[0][app]: Invalid value: "-a": {LABEL_VALUE_HELP}'),
        (
            "app in (" + "x" * 64 + ")",
            f'values[0][app]: Invalid value: "{"x" * 64}": must be no more than 63 characters',
        ),
        (
            "app=-" + "x" * 63,
            f'values[0][app]: Invalid value: "-{"x" * 63}": must be no more than 63 characters; {LABEL_VALUE_HELP}',
        ),
        ("version>x", f'values[0]: Invalid value: "x": {INTEGER_HELP}'),
        (
            "version>-x",
            f'[values[0]: Invalid value: "-x": {INTEGER_HELP}, values[0][version]: Invalid value: "-x": '
            f"{LABEL_VALUE_HELP}]",
        ),
        ("version<", f'values[0]: Invalid value: "": {INTEGER_HELP}'),
        ("version<,app", f'values[0]: Invalid value: "": {INTEGER_HELP}'),
        ("version>99999999999999999999", f'values[0]: Invalid value: "99999999999999999999": {INTEGER_HELP}'),
        ("version>+5", f'values[0][version]: Invalid value: "+5": {LABEL_VALUE_HELP}'),
        # only space, tab, CR and LF separate words: a vertical tab is part of the value
        ("app=a\vb", f'values[0][app]: Invalid value: "a\\vb": {LABEL_VALUE_HELP}'),
    ],
    ids=[
        "every-value",
        "repeated-value",
        "long-value",
        "both-problems",
        "not-integer",
        "not-integer-nor-label",
        "empty-lt",
        "empty-before-comma",
        "out-of-int64",
        "signed-integer",
        "vertical-tab",
    ],
)
def test_every_bad_value_of_a_requirement_is_reported_together(selector: str, message: str) -> None:
    """`NewRequirement` checks all of a requirement's values and aggregates the errors: one alone, more in
    brackets, an integer error of `>`/`<` (`strconv.ParseInt`) before the label value errors."""
    with pytest.raises(SelectorError) as info:
        parse_label_selector(selector)
    assert str(info.value) == REQUIREMENT + message


@pytest.mark.parametrize(
    ("selector", "message"),
    [("!(x)", "found '(', expected: identifier"), ("!", "found '', expected: identifier")],
    ids=["symbol", "end"],
)
def test_not_must_be_followed_by_a_key(selector: str, message: str) -> None:
    """After `!` the parser wants a key; anything else is a syntax error, not a bad key."""
    with pytest.raises(SelectorError) as info:
        parse_label_selector(selector)
    assert str(info.value) == REQUIREMENT + message


SYNTAX_ERRORS = [
    # between requirements the server's parser adds no prefix
    ("app,", "found '', expected: identifier after ','"),
    ("app,,b", "found ',', expected: identifier after ','"),
    ("=web", "found '=', expected: !, identifier, or 'end of string'"),
    ("app=web=x", "found '=', expected: ',' or 'end of string'"),
    # inside one it does; after `in` and `notin` "found '...' expected" has no comma
    ("app in", REQUIREMENT + "found '' expected: '('"),
    ("app notin", REQUIREMENT + "found '' expected: '('"),
    ("app in web", REQUIREMENT + "found 'web' expected: '('"),
    ("app in (", REQUIREMENT + "found '', expected: ',', ')' or identifier"),
    ("app in (=)", REQUIREMENT + "found '=', expected: ',', ')' or identifier"),
    ("app in (a", REQUIREMENT + "found '', expected: ',' or ')'"),
    ("app in (a b)", REQUIREMENT + "found 'b', expected: ',' or ')'"),
    ("app in (a,", REQUIREMENT + "found '', expected: ',', or identifier"),
    ("app in (a,,)", REQUIREMENT + "found ')', expected: ',', or identifier"),
    ("app web", REQUIREMENT + "found 'web', expected: in, notin, =, ==, !=, gt, lt"),
    ("app=(", REQUIREMENT + "found '(', expected: identifier"),
]


@pytest.mark.parametrize(("selector", "message"), SYNTAX_ERRORS, ids=[c[0] for c in SYNTAX_ERRORS])
def test_syntax_errors_have_the_api_servers_texts(selector: str, message: str) -> None:
    """`labels.Parse` (selector.go): where the parser stops and what it says there, byte for byte. The end of
    the selector is the empty token ''."""
    with pytest.raises(SelectorError) as info:
        parse_label_selector(selector)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("selector", "values"),
    [("app in ()", ("",)), ("app in (,)", ("",)), ("app notin (,b)", ("", "b")), ("app in (a,,b)", ("", "a", "b"))],
)
def test_empty_values_in_a_set_are_valid(selector: str, values: tuple[str, ...]) -> None:
    """`()` is the set of the empty value, and a comma with no value beside it adds the empty value: the
    server's parser accepts these."""
    (requirement,) = parse_label_selector(selector).requirements
    assert requirement.values == values


NUL_SELECTORS = [
    # where a token may start, a NUL ends the selector: what follows is never read
    ("app=web \0junk", ("app", "=", ("web",))),
    ("\0app=db", None),
    # inside a word, or right after a symbol, it ends that token and is skipped
    ("app=\0web", ("app", "=", ("web",))),
    ("app=web,\0tier", ("app", "=", ("web",))),
    ("app in (web\0,db)", ("app", "in", ("db", "web"))),
]


@pytest.mark.parametrize(("selector", "first"), NUL_SELECTORS, ids=[repr(c[0]) for c in NUL_SELECTORS])
def test_a_nul_character_reads_as_the_end_of_a_token_or_of_the_selector(
    selector: str, first: tuple[str, str, tuple[str, ...]] | None
) -> None:
    """The server's lexer reads a NUL byte as it reads the end of the selector, but steps past it: a NUL
    ends whatever token it is in or after, and ends the selector where a token would start."""
    requirements = parse_label_selector(selector).requirements
    if first is None:
        assert requirements == ()
    else:
        assert (requirements[0].key, requirements[0].operator, requirements[0].values) == first


async def test_control_characters_in_a_label_selector_answer_as_the_api_server_does(kube_api: KubeApi) -> None:
    """A NUL splits or ends the selector (`app=web \0junk` is `app=web`; `app\0web` is the words app and
    web, so no operator follows the key); any other control character is part of a word, which fails the
    key's or the value's rule, quoted as Go quotes it."""
    path = "/api/v1/namespaces/default/configmaps"
    await kube_api.request(
        "POST",
        path,
        body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w", "labels": {"app": "web"}}},
    )
    listed = await kube_api.request("GET", path, query=[("labelSelector", "app=web \0junk")])
    assert [item["metadata"]["name"] for item in listed["items"]] == ["w"]
    for selector, message in (
        ("app\0web", REQUIREMENT + "found 'web', expected: in, notin, =, ==, !=, gt, lt"),
        ("app=web\0junk", "found 'junk', expected: ',' or 'end of string'"),
        ("app\x01=web", REQUIREMENT + f'<nil>: Invalid value: "app\\x01": name part {QUALIFIED_NAME_HELP}'),
        ("app=web\x1f", REQUIREMENT + f'values[0][app]: Invalid value: "web\\x1f": {LABEL_VALUE_HELP}'),
    ):
        with pytest.raises(KubeApiError) as info:
            await kube_api.request("GET", path, query=[("labelSelector", selector)])
        assert (info.value.status, info.value.reason) == (400, "BadRequest")
        assert info.value.message == message


def test_a_values_syntax_is_read_before_its_values_are_checked() -> None:
    """`in (...)` is read to its `)` before any value is checked: an unclosed list is a syntax error."""
    with pytest.raises(SelectorError) as info:
        parse_label_selector("app in (-a, b")
    assert "Invalid value" not in str(info.value)


def test_greater_and_less_than_read_numbers_as_go_does() -> None:
    """A label's value is compared only when `strconv.ParseInt` reads it; Python's `int` reads more."""
    newer = parse_label_selector("version>5")
    assert newer.matches({"version": "10"})
    assert not newer.matches({"version": "1_0"})


FIELD_CASES = [
    ("metadata.name=web", True),
    ("metadata.name==web", True),
    ("metadata.name!=web", False),
    ("metadata.namespace=apps,metadata.name=web", True),
    ("metadata.namespace=apps,metadata.name!=web", False),
    ("metadata.name=a\\,b", False),
]


@pytest.mark.parametrize(("selector", "matches"), FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_field_selector_matches_name_and_namespace(selector: str, matches: bool) -> None:
    fields = {
        "metadata.name": lambda o: o["metadata"]["name"],
        "metadata.namespace": lambda o: o["metadata"]["namespace"],
    }
    obj = {"metadata": {"name": "web", "namespace": "apps"}}
    assert parse_field_selector(selector, fields).matches(obj, fields) is matches


def test_field_selector_rejects_unsupported_fields() -> None:
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.nodeName"):
        parse_field_selector("spec.nodeName=n1", {"metadata.name": lambda o: ""})


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ({"matchLabels": {"b": "2", "a": "1"}}, "a=1,b=2"),
        ({"matchExpressions": [{"key": "k", "operator": "In", "values": ["y", "x"]}]}, "k in (x,y)"),
        ({"matchExpressions": [{"key": "k", "operator": "DoesNotExist"}]}, "!k"),
        ({}, "<none>"),
    ],
)
def test_label_selector_objects_print_and_match_consistently(spec: dict[str, Any], text: str) -> None:
    assert format_label_selector(spec) == text
    parsed = parse_label_selector("" if text == "<none>" else text)
    built = selector_from_label_selector(spec)
    for labels in ({}, {"a": "1", "b": "2"}, {"k": "x"}, {"k": "z"}, {"a": "1"}):
        assert parsed.matches(labels) is built.matches(labels), labels


NAMESPACES = {
    "web": {"app": "web", "istio-injection": "enabled"},
    "db": {"app": "db", "istio.io/rev": "canary"},
    "both": {"istio-injection": "enabled", "istio.io/rev": "canary"},
    "plain": {},
}

HTTP_CASES = [
    ("istio-injection=enabled", ["both", "web"]),
    ("istio.io/rev", ["both", "db"]),
    ("!istio.io/rev,istio-injection", ["web"]),
    ("app in (web,db)", ["db", "web"]),
    ("app notin (web)", ["both", "db", "plain"]),
    ("app!=db", ["both", "plain", "web"]),
]


@pytest.mark.parametrize(("selector", "names"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
async def test_list_filters_by_label_selector_over_http(
    kubesim: KubeSim, kube_api: KubeApi, selector: str, names: list[str]
) -> None:
    for name, labels in NAMESPACES.items():
        kubesim.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    listed = await kube_api.request("GET", "/api/v1/namespaces", query=[("labelSelector", selector)])
    # kubernetes.io/metadata.name is on every namespace; keep to the ones this test made
    found = sorted(i["metadata"]["name"] for i in listed["items"] if i["metadata"]["name"] in NAMESPACES)
    assert found == names


async def test_bad_selectors_answer_400_bad_request(kube_api: KubeApi) -> None:
    for query in (("labelSelector", "app in web"), ("fieldSelector", "spec.bogus=1")):
        with pytest.raises(KubeApiError) as info:
            await kube_api.request("GET", "/api/v1/namespaces/default/configmaps", query=[query])
        assert info.value.status == 400
        assert info.value.reason == "BadRequest"


async def test_a_bad_label_selector_answers_the_api_servers_status(kube_api: KubeApi) -> None:
    """The list handler turns the parser's error into a 400 BadRequest Status with its text as the message."""
    for selector, message in (
        ("-app", f'<nil>: Invalid value: "-app": name part {QUALIFIED_NAME_HELP}'),
        (
            "app in (-b,-a)",
            f'[values[0][app]: Invalid value: "-a": {LABEL_VALUE_HELP}, '
            f'values[1][app]: Invalid value: "-b": {LABEL_VALUE_HELP}]',
        ),
    ):
        with pytest.raises(KubeApiError) as info:
            await kube_api.request("GET", "/api/v1/namespaces/default/configmaps", query=[("labelSelector", selector)])
        assert (info.value.status, info.value.reason) == (400, "BadRequest")
        assert info.value.message == REQUIREMENT + message


async def test_a_label_selector_syntax_error_answers_the_api_servers_status(kube_api: KubeApi) -> None:
    """The parser's text, prefixed or not, is the whole message of the 400 BadRequest Status; `app in ()` is
    no error."""
    for selector in ("app,", "app in (a", "app in", "app notin"):
        with pytest.raises(KubeApiError) as info:
            await kube_api.request("GET", "/api/v1/namespaces/default/configmaps", query=[("labelSelector", selector)])
        assert (info.value.status, info.value.reason) == (400, "BadRequest")
        assert info.value.message == dict(SYNTAX_ERRORS)[selector]
    listed = await kube_api.request(
        "GET", "/api/v1/namespaces/default/configmaps", query=[("labelSelector", "app in ()")]
    )
    assert listed["items"] == []


async def test_field_selector_on_name_over_http(kubesim: KubeSim, kube_api: KubeApi) -> None:
    for name in ("a", "b", "c"):
        kubesim.create_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
    listed = await kube_api.request(
        "GET", "/api/v1/configmaps", query=[("fieldSelector", "metadata.name!=b,metadata.namespace=default")]
    )
    assert sorted(i["metadata"]["name"] for i in listed["items"]) == ["a", "c"]
