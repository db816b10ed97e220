"""Name, key and label rules as the API server counts and words them, at unit level and over HTTP."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.podspec import port_name_problems
from tests.kubesim.validation import (
    CONFIG_KEY_HELP,
    DNS1035_HELP,
    LABEL_HELP,
    LABEL_VALUE_HELP,
    QUALIFIED_NAME_HELP,
    SUBDOMAIN_HELP,
    FieldErrors,
    check_dns1035,
    config_key_problems,
    dns_label_problems,
    go_len,
    go_lower,
    label_value_problems,
    mask_trailing_dash,
    path_segment_prefix_problems,
    path_segment_problems,
    qualified_name_problems,
    subdomain_problems,
)

# Two UTF-8 bytes each (U+00E9) and three (U+65E5): a value of these is under a limit in characters and over it
# in bytes, which is what Go's `len` counts.
E2 = "\u00e9"
E3 = "\u65e5"

TOO_LONG_63 = "must be no more than 63 characters"
TOO_LONG_253 = "must be no more than 253 characters"
PORT_CHARSET = "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
PORT_LETTER = "must contain at least one letter (a-z)"


def dns1035_problems(value: str) -> list[str]:
    errors = FieldErrors()
    check_dns1035(errors, "f", value)
    return [cause.message.split(": ", 2)[2] for cause in errors.causes]


BYTE_LENGTH_CASES: list[tuple[str, Callable[[str], list[str]], str, list[str]]] = [
    ("label-value", label_value_problems, E2 * 32, [TOO_LONG_63, LABEL_VALUE_HELP]),
    ("label-value-3-byte", label_value_problems, E3 * 22, [TOO_LONG_63, LABEL_VALUE_HELP]),
    ("label-value-at-limit", label_value_problems, E3 * 21, [LABEL_VALUE_HELP]),
    (
        "qualified-name",
        qualified_name_problems,
        E2 * 32,
        [f"name part {TOO_LONG_63}", f"name part {QUALIFIED_NAME_HELP}"],
    ),
    (
        "qualified-name-prefix",
        qualified_name_problems,
        E2 * 127 + "/x",
        [f"prefix part {TOO_LONG_253}", f"prefix part {SUBDOMAIN_HELP}"],
    ),
    ("subdomain", subdomain_problems, E2 * 127, [TOO_LONG_253, SUBDOMAIN_HELP]),
    ("dns-1123-label", dns_label_problems, E2 * 32, [TOO_LONG_63, LABEL_HELP]),
    ("dns-1035-label", dns1035_problems, E2 * 32, [TOO_LONG_63, DNS1035_HELP]),
    ("config-key", config_key_problems, E2 * 127, [TOO_LONG_253, CONFIG_KEY_HELP]),
    ("port-name", port_name_problems, E2 * 8, ["must be no more than 15 characters", PORT_CHARSET, PORT_LETTER]),
]


@pytest.mark.parametrize(
    ("rule", "value", "problems"), [c[1:] for c in BYTE_LENGTH_CASES], ids=[c[0] for c in BYTE_LENGTH_CASES]
)
def test_length_limits_count_utf8_bytes_as_go_does(
    rule: Callable[[str], list[str]], value: str, problems: list[str]
) -> None:
    """`IsValidLabelValue`, `IsQualifiedName`, `IsDNS1123Subdomain`, `IsDNS1123Label`, `IsDNS1035Label`,
    `IsConfigMapKey` and `IsValidPortName` measure a value with Go's `len`, in bytes: non-ASCII characters under
    the limit in number can be over it. The length message comes first, then the character rule's, each its
    own cause."""
    assert rule(value) == problems


@pytest.mark.parametrize(
    ("rule", "value"),
    [(label_value_problems, "a" * 63), (dns_label_problems, "a" * 63), (subdomain_problems, "a" * 253)],
    ids=["label-value", "dns-1123-label", "subdomain"],
)
def test_ascii_values_at_the_limit_are_valid(rule: Callable[[str], list[str]], value: str) -> None:
    assert rule(value) == []


def test_a_port_name_is_checked_against_every_rule() -> None:
    """`IsValidPortName` checks each rule on its own: a name can break several at once."""
    assert port_name_problems("-") == [PORT_LETTER, "must not begin or end with a hyphen"]
    assert port_name_problems("HTTP--") == [
        PORT_CHARSET,
        PORT_LETTER,
        "must not contain consecutive hyphens",
        "must not begin or end with a hyphen",
    ]


def test_a_subdomain_is_no_dns_label_for_its_dots_alone() -> None:
    """`IsDNS1123Label` names the dots when the value would be a valid subdomain."""
    assert dns_label_problems("a.b") == ["must not contain dots"]
    assert dns_label_problems("a..b") == [LABEL_HELP]


async def invalid_causes(kube_api: KubeApi, path: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("POST", path, body=body)
    assert (info.value.status, info.value.reason) == (422, "Invalid")
    return [(c["field"], c["message"]) for c in info.value.body["details"]["causes"]]


async def test_non_ascii_labels_and_annotations_are_too_long_in_bytes(kube_api: KubeApi) -> None:
    """32 two-byte characters are 64 bytes: each label key, label value and annotation key gets the length
    cause before the character cause, labels before annotations, a key before its value."""
    long = E2 * 32
    meta = {"name": "wide", "labels": {long: long}, "annotations": {long: "v"}}
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
    assert await invalid_causes(kube_api, "/api/v1/namespaces/default/configmaps", body) == [
        ("metadata.labels", f'Invalid value: "{long}": name part {TOO_LONG_63}'),
        ("metadata.labels", f'Invalid value: "{long}": name part {QUALIFIED_NAME_HELP}'),
        ("metadata.labels", f'Invalid value: "{long}": {TOO_LONG_63}'),
        ("metadata.labels", f'Invalid value: "{long}": {LABEL_VALUE_HELP}'),
        ("metadata.annotations", f'Invalid value: "{long}": name part {TOO_LONG_63}'),
        ("metadata.annotations", f'Invalid value: "{long}": name part {QUALIFIED_NAME_HELP}'),
    ]


def test_go_lowercases_one_character_for_one() -> None:
    """`strings.ToLower` applies each character's simple mapping: U+0130 is a plain "i" (Python's `str.lower`
    adds a combining dot) and a final capital sigma a plain small sigma (Python's, in context, the final one)."""
    assert go_lower("\u0130STANBUL") == "istanbul"
    assert go_lower("\u039f\u0394\u039f\u03a3") == "\u03bf\u03b4\u03bf\u03c3"
    assert go_lower("\u212a") == "k"


async def test_annotation_keys_are_checked_lowercased_as_go_lowercases_them(kube_api: KubeApi) -> None:
    """`ValidateAnnotations` checks a key lowercased by Go's `strings.ToLower`: a key of U+0130 is a valid "i",
    and 63 "A"s and a U+0130 are 64 well-formed characters, too long only. The key is shown as written."""
    path = "/api/v1/namespaces/default/configmaps"
    meta = {"name": "dotted", "annotations": {"\u0130": "v"}}
    await kube_api.request("POST", path, body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
    key = "A" * 63 + "\u0130"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "long", "annotations": {key: "v"}}}
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("POST", path, body=body)
    assert (info.value.status, info.value.reason) == (422, "Invalid")
    assert info.value.message == (
        f'ConfigMap "long" is invalid: metadata.annotations: Invalid value: "{key}": name part {TOO_LONG_63}'
    )


async def test_config_map_keys_get_every_message_of_is_config_map_key(kube_api: KubeApi) -> None:
    """`ValidateConfigMap` reports each message of `IsConfigMapKey`: the length in bytes, the characters, and
    the `.` and `..` names a file could not have."""
    long = E2 * 127
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keys"}, "data": {long: "v", "..": "v"}}
    assert await invalid_causes(kube_api, "/api/v1/namespaces/default/configmaps", body) == [
        ("data[..]", "Invalid value: \"..\": must not be '..'"),  # the keys as decoded into a Go map: sorted here
        (f"data[{long}]", f'Invalid value: "{long}": {TOO_LONG_253}'),
        (f"data[{long}]", f'Invalid value: "{long}": {CONFIG_KEY_HELP}'),
    ]


async def test_a_key_in_both_data_and_binary_data_is_reported_on_data(kube_api: KubeApi) -> None:
    """`ValidateConfigMap` checks `data` against `binaryData`, so the duplicate is `data`'s."""
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "both"},
        "data": {"a": "text"},
        "binaryData": {"a": "Ynl0ZXM="},
    }
    assert await invalid_causes(kube_api, "/api/v1/namespaces/default/configmaps", body) == [
        ("data[a]", 'Invalid value: "a": duplicate of key present in binaryData'),
    ]


async def test_names_are_too_long_in_bytes(kube_api: KubeApi) -> None:
    """A Namespace's name is a DNS-1123 label and a container's too; a ConfigMap's is a subdomain. A
    Namespace's name is also the value of its defaulted `kubernetes.io/metadata.name` label, checked after it."""
    label, subdomain = E2 * 32, E2 * 127
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": label}}
    assert await invalid_causes(kube_api, "/api/v1/namespaces", namespace) == [
        ("metadata.name", f'Invalid value: "{label}": {TOO_LONG_63}'),
        ("metadata.name", f'Invalid value: "{label}": {LABEL_HELP}'),
        ("metadata.labels", f'Invalid value: "{label}": {TOO_LONG_63}'),
        ("metadata.labels", f'Invalid value: "{label}": {LABEL_VALUE_HELP}'),
    ]
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": subdomain}}
    assert await invalid_causes(kube_api, "/api/v1/namespaces/default/configmaps", config_map) == [
        ("metadata.name", f'Invalid value: "{subdomain}": {TOO_LONG_253}'),
        ("metadata.name", f'Invalid value: "{subdomain}": {SUBDOMAIN_HELP}'),
    ]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dots"},
        "spec": {"containers": [{"name": "a.b", "image": "i"}]},
    }
    assert await invalid_causes(kube_api, "/api/v1/namespaces/default/pods", pod) == [
        ("spec.containers[0].name", 'Invalid value: "a.b": must not contain dots'),
    ]


async def test_a_bad_generate_name_is_reported_before_the_name_made_from_it(kube_api: KubeApi) -> None:
    """`ValidateObjectMeta` checks a generateName by the kind's name rule in prefix mode, on
    `metadata.generateName`, before the generated name (prefix and five random characters) on `metadata.name`;
    the error names the generated name."""
    path = "/api/v1/namespaces/default/configmaps"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "Bad_"}}
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("POST", path, body=body)
    generated = info.value.body["details"]["name"]
    assert generated.startswith("Bad_") and len(generated) == 9
    assert (info.value.status, info.value.message) == (
        422,
        f'ConfigMap "{generated}" is invalid: [metadata.generateName: Invalid value: "Bad_": {SUBDOMAIN_HELP}, '
        f'metadata.name: Invalid value: "{generated}": {SUBDOMAIN_HELP}]',
    )


async def test_a_long_generate_name_is_cut_for_the_name_and_refused_itself(kube_api: KubeApi) -> None:
    """The name generator keeps the first 58 bytes of the prefix, so the name made from a 300-character
    generateName is valid: only the generateName is refused, for its length."""
    prefix = "a" * 300
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": prefix}}
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("POST", "/api/v1/namespaces/default/configmaps", body=body)
    generated = info.value.body["details"]["name"]
    assert generated.startswith("a" * 58) and len(generated) == 63
    assert (info.value.status, info.value.message) == (
        422,
        f'ConfigMap "{generated}" is invalid: metadata.generateName: Invalid value: "{prefix}": {TOO_LONG_253}',
    )


async def test_a_generate_name_may_end_in_a_dash_but_is_checked_by_the_kinds_rule(kube_api: KubeApi) -> None:
    """In prefix mode a trailing '-' and the byte before it count as one letter: `web-` is a fine Service
    prefix, `9web-` is no DNS-1035 label for its first character."""
    path = "/api/v1/namespaces/default/services"
    spec = {"ports": [{"port": 80}]}
    created = await kube_api.request(
        "POST", path, body={"apiVersion": "v1", "kind": "Service", "metadata": {"generateName": "web-"}, "spec": spec}
    )
    assert created["metadata"]["name"].startswith("web-")
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"generateName": "9web-"}, "spec": spec}
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("POST", path, body=body)
    generated = info.value.body["details"]["name"]
    assert (info.value.status, info.value.body["details"]["causes"]) == (
        422,
        [
            {
                "reason": "FieldValueInvalid",
                "field": "metadata.generateName",
                "message": f'Invalid value: "9web-": {DNS1035_HELP}',
            },
            {
                "reason": "FieldValueInvalid",
                "field": "metadata.name",
                "message": f'Invalid value: "{generated}": {DNS1035_HELP}',
            },
        ],
    )


def test_a_generate_name_loses_its_dash_and_the_byte_before_it() -> None:
    """`maskTrailingDash` cuts bytes, not characters: of a two-byte character before the dash one byte is left,
    which no name rule takes; a lone '-' is kept as it is."""
    assert mask_trailing_dash("ab-") == "aa"
    assert mask_trailing_dash("-") == "-"
    assert subdomain_problems(mask_trailing_dash(f"ab{E2}-")) == [SUBDOMAIN_HELP]
    assert go_len(mask_trailing_dash(f"ab{E2}-")) == go_len(f"ab{E2}-") - 1


def test_a_path_segment_name_may_hold_anything_but_a_slash_or_a_percent() -> None:
    """`IsValidPathSegmentName`: '.' and '..' are refused for that alone, then '/' and '%' each once, whatever
    else the name holds; no character set and no length. A prefix (`IsValidPathSegmentPrefix`) may be '.'."""
    assert path_segment_problems("system:controller:Foo_Bar?#" + "x" * 300) == []
    assert path_segment_problems(".") == ["may not be '.'"]
    assert path_segment_problems("..") == ["may not be '..'"]
    assert path_segment_problems("a/b%c/d") == ["may not contain '/'", "may not contain '%'"]
    assert path_segment_prefix_problems("..") == []
    assert path_segment_prefix_problems("%/") == ["may not contain '/'", "may not contain '%'"]


RBAC = "/apis/rbac.authorization.k8s.io/v1"
ROLE_REF = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}
RBAC_KINDS = [
    ("ClusterRole", f"{RBAC}/clusterroles", {}),
    ("Role", f"{RBAC}/namespaces/default/roles", {}),
    ("ClusterRoleBinding", f"{RBAC}/clusterrolebindings", {"roleRef": ROLE_REF}),
    ("RoleBinding", f"{RBAC}/namespaces/default/rolebindings", {"roleRef": ROLE_REF}),
]


@pytest.mark.parametrize(("kind", "path", "fields"), RBAC_KINDS, ids=[k[0] for k in RBAC_KINDS])
async def test_rbac_names_are_path_segments(kube_api: KubeApi, kind: str, path: str, fields: dict[str, Any]) -> None:
    """`ValidateRBACName` is `IsValidPathSegmentName`: colons, capitals, '_', spaces, '?' and '#' are fine, and
    the object is read back under its escaped name; '.', '..', '/' and '%' are refused in the server's words."""
    for name in ("system:controller:Foo_Bar", "a b?#\u00e9" + "x" * 300):
        body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name}, **fields}
        await kube_api.request("POST", path, body=body)
        got = await kube_api.request("GET", f"{path}/{urllib.parse.quote(name, safe='')}")
        assert got["metadata"]["name"] == name
    for name, problems in ((".", ["may not be '.'"]), ("a/b%", ["may not contain '/'", "may not contain '%'"])):
        body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name}, **fields}
        with pytest.raises(KubeApiError) as info:
            await kube_api.request("POST", path, body=body)
        causes = [f'metadata.name: Invalid value: "{name}": {problem}' for problem in problems]
        listed = causes[0] if len(causes) == 1 else "[" + ", ".join(causes) + "]"
        assert (info.value.status, info.value.message) == (
            422,
            f'{kind}.rbac.authorization.k8s.io "{name}" is invalid: {listed}',
        )


async def test_an_rbac_generate_name_is_checked_as_a_whole_name(kube_api: KubeApi) -> None:
    """`ValidateRBACName` ignores prefix mode: a generateName of '.' is refused though the name made from it is
    fine, and a trailing '-' hides nothing (no `maskTrailingDash`); a colon is a fine prefix."""
    path = f"{RBAC}/clusterroles"
    created = await kube_api.request("POST", path, body={"metadata": {"generateName": "system:"}})
    assert created["metadata"]["name"].startswith("system:") and len(created["metadata"]["name"]) == 12
    for prefix, problem, name_refused in ((".", "may not be '.'", False), ("a%-", "may not contain '%'", True)):
        with pytest.raises(KubeApiError) as info:
            await kube_api.request("POST", path, body={"metadata": {"generateName": prefix}})
        generated = info.value.body["details"]["name"]
        assert generated.startswith(prefix) and len(generated) == len(prefix) + 5
        causes = [("metadata.generateName", f'Invalid value: "{prefix}": {problem}')]
        if name_refused:
            causes.append(("metadata.name", f'Invalid value: "{generated}": {problem}'))
        assert [(c["field"], c["message"]) for c in info.value.body["details"]["causes"]] == causes


PDBS = "/apis/policy/v1/namespaces/default/poddisruptionbudgets"


def pdb(meta: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta, "spec": spec}


async def test_a_pod_disruption_budgets_metadata_is_checked_by_the_registry_after_its_spec(kube_api: KubeApi) -> None:
    """`ValidatePodDisruptionBudget` checks only the spec; `BeforeCreate` then checks the metadata with
    `ValidatePathSegmentName`, and only when the spec was fine: any name but '.', '..' or one with '/' or
    '%' is taken, and a generateName of '.' too (in prefix mode only the characters count)."""
    created = await kube_api.request("POST", PDBS, body=pdb({"name": "Foo_Bar:1"}, minAvailable=1))
    assert created["metadata"]["name"] == "Foo_Bar:1"
    created = await kube_api.request("POST", PDBS, body=pdb({"generateName": "."}, minAvailable=1))
    assert created["metadata"]["name"].startswith(".") and len(created["metadata"]["name"]) == 6
    bad_meta = {"name": ".", "labels": {"a": "not ok!"}}
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("POST", PDBS, body=pdb(bad_meta, minAvailable=1, maxUnavailable=1))
    assert [c["field"] for c in info.value.body["details"]["causes"]] == ["spec"]
    assert await invalid_causes(kube_api, PDBS, pdb(bad_meta, minAvailable=1)) == [
        ("metadata.name", "Invalid value: \".\": may not be '.'"),
        ("metadata.labels", f'Invalid value: "not ok!": {LABEL_VALUE_HELP}'),
    ]


async def test_an_hpa_target_reference_is_a_path_segment_checked_after_the_replicas(kube_api: KubeApi) -> None:
    """`ValidateCrossVersionObjectReference`: the target's kind and name are `IsValidPathSegmentName`s, each
    problem its own cause, checked after the replica bounds (`validateHorizontalPodAutoscalerSpec`), of which
    a maxReplicas of 0 breaks both, minReplicas defaulting to 1."""
    target = {"apiVersion": "apps/v1", "kind": "..", "name": "a/b%c"}
    body = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": target, "maxReplicas": 0},
    }
    assert await invalid_causes(kube_api, "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers", body) == [
        ("spec.maxReplicas", "Invalid value: 0: must be greater than 0"),
        ("spec.maxReplicas", "Invalid value: 0: must be greater than or equal to `minReplicas`"),
        ("spec.scaleTargetRef.kind", "Invalid value: \"..\": may not be '..'"),
        ("spec.scaleTargetRef.name", "Invalid value: \"a/b%c\": may not contain '/'"),
        ("spec.scaleTargetRef.name", "Invalid value: \"a/b%c\": may not contain '%'"),
    ]
