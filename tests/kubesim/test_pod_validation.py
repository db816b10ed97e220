"""Pod validation as a 1.32 API server does it: env vars, probes, security contexts and pod-wide fields.

Each refusal is checked against the field path and the message the real server gives (kubectl prints
both), and, where it shows the rule's edge, a valid neighbour is accepted. kubesim reports v1.32, whose
default feature gates decide two rules: env var names follow the relaxed rule (RelaxedEnvironmentVariableValidation,
beta and on in 1.32) and `procMount` is forced to `Default` (ProcMountType, beta but off until 1.33).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controlplane.kube.client import KubeApi
from tests.kubesim.fixtures import Kubectl
from tests.kubesim.test_api import PODS, bare_pod, error_of
from tests.kubesim.validation import LABEL_VALUE_HELP, QUALIFIED_NAME_HELP, SUBDOMAIN_HELP

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
C0 = "spec.containers[0]"
ENV_NAME_RULE = "a valid environment variable name must consist only of printable ASCII characters other than '='"
ID_RANGE = "must be between 0 and 2147483647, inclusive"
NOT_NEGATIVE = "must be greater than or equal to 0"
ENV_FIELDS = (
    '"metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName", '
    '"status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs"'
)
FIELD_REF_NAME = {"fieldRef": {"fieldPath": "metadata.name"}}
HTTP_PROBE = {"httpGet": {"port": 8080}}


def pod_with(name: str = "p", /, **container: Any) -> dict[str, Any]:
    """A bare pod whose one container also has `container`'s fields."""
    pod = bare_pod(name)
    pod["spec"]["containers"][0] |= copy.deepcopy(container)
    return pod


def pod_spec_with(name: str = "p", /, **spec: Any) -> dict[str, Any]:
    """A bare pod whose spec also has `spec`'s fields."""
    pod = bare_pod(name)
    pod["spec"] |= copy.deepcopy(spec)
    return pod


def deployment(name: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


async def causes_of(kube_api: KubeApi, body: dict[str, Any], path: str = PODS) -> list[tuple[str, str]]:
    """The (field, message) of each cause of the 422 the create gets."""
    err = await error_of(kube_api.request("POST", path, body=body))
    assert (err.status, err.reason) == (422, "Invalid"), err.message
    return [(cause["field"], cause["message"]) for cause in err.body["details"]["causes"]]


async def created(kube_api: KubeApi, body: dict[str, Any], path: str = PODS) -> dict[str, Any]:
    out: dict[str, Any] = await kube_api.request("POST", path, body=body)
    return out


# -- env -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [("A=B", '"A=B"'), ("caf\u00e9", '"caf\u00e9"'), ("TAB\tNAME", '"TAB\\tNAME"'), ("DEL\x7f", '"DEL\\x7f"')],
    ids=["equals", "non-ascii", "tab", "del"],
)
async def test_an_env_var_name_is_printable_ascii_other_than_equals(kube_api: KubeApi, name: str, shown: str) -> None:
    """The bad name is quoted as Go's %q does: a printable non-ASCII character as it is, a control escaped."""
    causes = await causes_of(kube_api, pod_with(env=[{"name": name, "value": "x"}]))
    assert causes == [(f"{C0}.env[0].name", f"Invalid value: {shown}: {ENV_NAME_RULE}")]


async def test_relaxed_env_var_names_that_1_32_accepts(kube_api: KubeApi) -> None:
    """Digits first, colons, spaces and a lone dot were refused before the relaxed rule; 1.32 takes them."""
    names = ["1ST", "Logging:LogLevel:Default", "WITH SPACE", ".", "a-b.c"]
    pod = pod_with(env=[{"name": name, "value": "v"} for name in names])
    out = await created(kube_api, pod)
    assert [var["name"] for var in out["spec"]["containers"][0]["env"]] == names
    causes = await causes_of(kube_api, pod_with("q", env=[{"value": "v"}]))
    assert causes == [(f"{C0}.env[0].name", "Required value")]


@pytest.mark.parametrize(
    ("var", "detail"),
    [
        (
            {"name": "A", "valueFrom": {}},
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
        ),
        ({"name": "A", "value": "x", "valueFrom": FIELD_REF_NAME}, "may not be specified when `value` is not empty"),
        (
            {"name": "A", "valueFrom": {**FIELD_REF_NAME, "secretKeyRef": {"name": "s", "key": "k"}}},
            "may not have more than one field specified at a time",
        ),
    ],
    ids=["no-source", "value-and-source", "two-sources"],
)
async def test_value_from_has_one_source_and_no_value_beside_it(
    kube_api: KubeApi, var: dict[str, Any], detail: str
) -> None:
    causes = await causes_of(kube_api, pod_with(env=[var]))
    assert causes == [(f"{C0}.env[0].valueFrom", f'Invalid value: "": {detail}')]
    out = await created(kube_api, pod_with("ok", env=[{"name": "A", "value": "", "valueFrom": FIELD_REF_NAME}]))
    assert out["spec"]["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["apiVersion"] == "v1"  # defaulted


@pytest.mark.parametrize(
    ("field_ref", "field", "message"),
    [
        (
            {"fieldPath": "status.phase"},
            "fieldPath",
            f'Unsupported value: "status.phase": supported values: {ENV_FIELDS}',
        ),
        (
            {"fieldPath": "metadata.labels"},
            "fieldPath",
            f'Unsupported value: "metadata.labels": supported values: {ENV_FIELDS}',
        ),
        (
            {"fieldPath": "spec.containers"},
            "fieldPath",
            'Invalid value: "spec.containers": error converting fieldPath: field label not supported: spec.containers',
        ),
        (
            {"fieldPath": "metadata.name['x']"},
            "fieldPath",
            "Invalid value: \"metadata.name['x']\": error converting fieldPath: "
            "field label does not support subscript: metadata.name['x']",
        ),
        (
            {"apiVersion": "v2", "fieldPath": "metadata.name"},
            "fieldPath",
            'Invalid value: "metadata.name": error converting fieldPath: unsupported pod version: v2',
        ),
        ({"apiVersion": "v1"}, "fieldPath", "Required value"),
        (
            {"fieldPath": "metadata.labels['bad key']"},
            "",
            "Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and "
            "must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', "
            "regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
        ),
    ],
    ids=["status-phase", "labels-without-key", "unknown", "subscript", "version", "no-path", "bad-label-key"],
)
async def test_an_env_field_ref_names_a_field_an_env_var_may_use(
    kube_api: KubeApi, field_ref: dict[str, Any], field: str, message: str
) -> None:
    pod = pod_with(env=[{"name": "A", "valueFrom": {"fieldRef": field_ref}}])
    path = f"{C0}.env[0].valueFrom.fieldRef" + (f".{field}" if field else "")
    assert await causes_of(kube_api, pod) == [(path, message)]


async def test_env_field_refs_the_server_accepts(kube_api: KubeApi) -> None:
    """Subscripted labels and annotations (an annotation key is checked lowercased), the old `spec.host`
    alias for the node name, and the pod's host IPs."""
    paths = ["metadata.labels['app']", "metadata.annotations['Example.com/Key']", "spec.host", "status.hostIPs"]
    env = [{"name": f"V{i}", "valueFrom": {"fieldRef": {"fieldPath": path}}} for i, path in enumerate(paths)]
    await created(kube_api, pod_with(env=env))
    bad = [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['-x']"}}}]
    (cause,) = await causes_of(kube_api, pod_with("q", env=bad))
    assert cause[0] == f"{C0}.env[0].valueFrom.fieldRef" and cause[1].startswith('Invalid value: "-x": name part')


async def test_an_annotation_subscript_is_lowercased_as_go_lowercases_it(kube_api: KubeApi) -> None:
    """An annotation key is checked once lowercased by Go's `strings.ToLower`, which maps U+0130 (capital I with
    a dot) to a plain "i", one character for one, where Python's `str.lower` adds a combining dot: the server
    takes a U+0130 subscript, and finds 63 "A"s and a U+0130 too long but well formed. The bad value it shows
    is the key as written."""
    dotted = "metadata.annotations['\u0130']"
    out = await created(kube_api, pod_with(env=[{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": dotted}}}]))
    assert out["spec"]["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == dotted
    key = "A" * 63 + "\u0130"
    bad = [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{key}']"}}}]
    err = await error_of(kube_api.request("POST", PODS, body=pod_with("q", env=bad)))
    assert (err.status, err.reason) == (422, "Invalid")
    assert err.message == (
        f'Pod "q" is invalid: {C0}.env[0].valueFrom.fieldRef: Invalid value: "{key}": '
        "name part must be no more than 63 characters"
    )


async def test_an_env_resource_field_ref_names_a_limit_or_request(kube_api: KubeApi) -> None:
    pod = pod_with(env=[{"name": "A", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}}])
    supported = (
        '"limits.cpu", "limits.ephemeral-storage", "limits.memory", "requests.cpu", '
        '"requests.ephemeral-storage", "requests.memory"'
    )
    path = f"{C0}.env[0].valueFrom.resourceFieldRef.resource"
    assert await causes_of(kube_api, pod) == [(path, f'Unsupported value: "limits.gpu": supported values: {supported}')]
    missing = pod_with("q", env=[{"name": "A", "valueFrom": {"resourceFieldRef": {"containerName": "c"}}}])
    assert await causes_of(kube_api, missing) == [(path, "Required value")]
    env = [
        {"name": "A", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
        {"name": "B", "valueFrom": {"resourceFieldRef": {"resource": "requests.hugepages-2Mi"}}},
    ]
    await created(kube_api, pod_with("ok", env=env))


@pytest.mark.parametrize(
    ("source", "field", "message"),
    [
        ({"configMapKeyRef": {"key": "k"}}, "configMapKeyRef.name", f'Invalid value: "": {SUBDOMAIN_HELP}'),
        (
            {"secretKeyRef": {"name": "Secret", "key": "k"}},
            "secretKeyRef.name",
            f'Invalid value: "Secret": {SUBDOMAIN_HELP}',
        ),
        ({"secretKeyRef": {"name": "s"}}, "secretKeyRef.key", "Required value"),
        (
            {"configMapKeyRef": {"name": "c", "key": "a/b"}},
            "configMapKeyRef.key",
            "Invalid value: \"a/b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
            "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
        ),
        (
            {"configMapKeyRef": {"name": "c", "key": ".."}},
            "configMapKeyRef.key",
            "Invalid value: \"..\": must not be '..'",
        ),
    ],
    ids=["no-name", "bad-name", "no-key", "bad-key", "dot-dot-key"],
)
async def test_an_env_key_ref_names_an_object_and_a_config_key(
    kube_api: KubeApi, source: dict[str, Any], field: str, message: str
) -> None:
    pod = pod_with(env=[{"name": "A", "valueFrom": source}])
    assert await causes_of(kube_api, pod) == [(f"{C0}.env[0].valueFrom.{field}", message)]


@pytest.mark.parametrize(
    ("item", "field", "message"),
    [
        ({}, "envFrom", 'Invalid value: "": must specify one of: `configMapRef` or `secretRef`'),
        (
            {"configMapRef": {"name": "c"}, "secretRef": {"name": "s"}},
            "envFrom",
            'Invalid value: "": may not have more than one field specified at a time',
        ),
        ({"prefix": "A=", "configMapRef": {"name": "c"}}, "envFrom[0].prefix", f'Invalid value: "A=": {ENV_NAME_RULE}'),
        ({"secretRef": {}}, "envFrom[0].secretRef.name", "Required value"),
        ({"configMapRef": {"name": "Cfg"}}, "envFrom[0].configMapRef.name", f'Invalid value: "Cfg": {SUBDOMAIN_HELP}'),
    ],
    ids=["no-source", "two-sources", "bad-prefix", "no-name", "bad-name"],
)
async def test_env_from_has_one_named_source_and_a_valid_prefix(
    kube_api: KubeApi, item: dict[str, Any], field: str, message: str
) -> None:
    """The source-count errors name the `envFrom` list itself, not the item, as the API server's do."""
    assert await causes_of(kube_api, pod_with(envFrom=[item])) == [(f"{C0}.{field}", message)]
    # A name is checked as a prefix: a trailing dash passes.
    await created(kube_api, pod_with("ok", envFrom=[{"prefix": "CFG_", "configMapRef": {"name": "cfg-"}}]))


# -- probes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"]
)
async def test_probe_counts_are_not_negative(kube_api: KubeApi, key: str) -> None:
    pod = pod_with(readinessProbe={**HTTP_PROBE, key: -1})
    assert await causes_of(kube_api, pod) == [(f"{C0}.readinessProbe.{key}", f"Invalid value: -1: {NOT_NEGATIVE}")]


@pytest.mark.parametrize("kind", ["livenessProbe", "startupProbe"])
async def test_liveness_and_startup_probes_succeed_once(kube_api: KubeApi, kind: str) -> None:
    pod = pod_with(**{kind: {**HTTP_PROBE, "successThreshold": 2}})
    assert await causes_of(kube_api, pod) == [(f"{C0}.{kind}.successThreshold", "Invalid value: 2: must be 1")]
    # 0 is Go's unset: defaulting makes it 1 before validation. A readiness probe may ask for more.
    ok = pod_with(
        "ok", **{kind: {**HTTP_PROBE, "successThreshold": 0}}, readinessProbe={**HTTP_PROBE, "successThreshold": 3}
    )
    out = await created(kube_api, ok)
    assert out["spec"]["containers"][0][kind]["successThreshold"] == 1


async def test_zero_probe_counts_take_the_defaults(kube_api: KubeApi) -> None:
    zeros = {"timeoutSeconds": 0, "periodSeconds": 0, "successThreshold": 0, "failureThreshold": 0}
    out = await created(kube_api, pod_with(readinessProbe={"httpGet": {"port": 8080, "path": ""}, **zeros}))
    probe = out["spec"]["containers"][0]["readinessProbe"]
    assert {key: probe[key] for key in zeros} == {
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    assert probe["httpGet"] == {"port": 8080, "path": "/", "scheme": "HTTP"}


async def test_a_probes_grace_period_is_positive_and_not_for_readiness(kube_api: KubeApi) -> None:
    path = f"{C0}.livenessProbe.terminationGracePeriodSeconds"
    pod = pod_with(livenessProbe={**HTTP_PROBE, "terminationGracePeriodSeconds": 0})
    assert await causes_of(kube_api, pod) == [(path, "Invalid value: 0: must be greater than 0")]
    readiness = pod_with("r", readinessProbe={**HTTP_PROBE, "terminationGracePeriodSeconds": 5})
    assert await causes_of(kube_api, readiness) == [
        (f"{C0}.readinessProbe.terminationGracePeriodSeconds", "Invalid value: 5: must not be set for readinessProbes")
    ]
    # The pod's own grace period may even be negative: deletion treats it as 1.
    ok = pod_with("ok", livenessProbe={**HTTP_PROBE, "terminationGracePeriodSeconds": 5})
    ok["spec"]["terminationGracePeriodSeconds"] = -1
    assert (await created(kube_api, ok))["spec"]["terminationGracePeriodSeconds"] == -1


async def test_an_exec_handler_needs_a_command(kube_api: KubeApi) -> None:
    pod = pod_with(readinessProbe={"exec": {}}, lifecycle={"preStop": {"exec": {"command": []}}})
    assert await causes_of(kube_api, pod) == [
        (f"{C0}.lifecycle.preStop.exec.command", "Required value"),
        (f"{C0}.readinessProbe.exec.command", "Required value"),
    ]


# -- security contexts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "value"),
    [
        (
            {"containers": [{"name": "c", "image": "i", "securityContext": {"runAsUser": -1}}]},
            f"{C0}.securityContext.runAsUser",
            -1,
        ),
        (
            {"containers": [{"name": "c", "image": "i", "securityContext": {"runAsGroup": 2147483648}}]},
            f"{C0}.securityContext.runAsGroup",
            2147483648,
        ),
        ({"securityContext": {"runAsUser": -2}}, "spec.securityContext.runAsUser", -2),
        ({"securityContext": {"runAsGroup": -3}}, "spec.securityContext.runAsGroup", -3),
        ({"securityContext": {"fsGroup": -4}}, "spec.securityContext.fsGroup", -4),
        ({"securityContext": {"supplementalGroups": [5, -5]}}, "spec.securityContext.supplementalGroups[1]", -5),
    ],
    ids=["container-user", "container-group", "pod-user", "pod-group", "fs-group", "supplemental-group"],
)
async def test_user_and_group_ids_are_non_negative_int32s(
    kube_api: KubeApi, spec: dict[str, Any], field: str, value: int
) -> None:
    assert await causes_of(kube_api, pod_spec_with(**spec)) == [(field, f"Invalid value: {value}: {ID_RANGE}")]
    edges = {"runAsUser": 0, "runAsGroup": 2147483647, "fsGroup": 2147483647, "supplementalGroups": [0, 2147483647]}
    await created(kube_api, pod_spec_with("ok", securityContext=edges))


@pytest.mark.parametrize(
    ("context", "detail"),
    [
        ({"privileged": True}, "cannot set `allowPrivilegeEscalation` to false and `privileged` to true"),
        (
            {"capabilities": {"add": ["NET_ADMIN", "CAP_SYS_ADMIN"]}},
            "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
        ),
    ],
    ids=["privileged", "cap-sys-admin"],
)
async def test_no_privilege_escalation_is_refused_beside_what_always_escalates(
    kube_api: KubeApi, context: dict[str, Any], detail: str
) -> None:
    pod = pod_with(securityContext={"allowPrivilegeEscalation": False, **context})
    ((field, message),) = await causes_of(kube_api, pod)
    assert field == f"{C0}.securityContext"
    assert message.startswith("Invalid value: core.SecurityContext{Capabilities:(*core.Capabilities)(")
    assert message.endswith(f"}}: {detail}")
    # Only the literal CAP_SYS_ADMIN counts; a privileged container may escalate.
    allowed = [
        {"allowPrivilegeEscalation": False, "capabilities": {"add": ["SYS_ADMIN"]}},
        {"allowPrivilegeEscalation": True, "privileged": True},
    ]
    for i, ok in enumerate(allowed):
        await created(kube_api, pod_with(f"ok{i}", securityContext=ok))


async def test_kubectl_prints_the_servers_words_for_a_bad_security_context_and_env_var(kubectl: Kubectl) -> None:
    manifest = """\
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: c
    image: i
    env: [{name: "A=B", value: x}]
    securityContext: {allowPrivilegeEscalation: false, privileged: true}
"""
    failed = await kubectl.run("apply", "-f", "-", stdin=manifest, check=False)
    assert failed.returncode != 0
    assert 'The Pod "p" is invalid: ' in failed.stderr
    assert f'* spec.containers[0].env[0].name: Invalid value: "A=B": {ENV_NAME_RULE}' in failed.stderr
    assert "* spec.containers[0].securityContext: Invalid value: core.SecurityContext{" in failed.stderr
    assert "}: cannot set `allowPrivilegeEscalation` to false and `privileged` to true" in failed.stderr


async def test_proc_mount_is_forced_to_default_with_1_32_gates(kube_api: KubeApi) -> None:
    """ProcMountType is off by default in 1.32: no value is refused, and none but Default is kept."""
    pod = pod_with(securityContext={"procMount": "Unmasked"})
    pod["spec"]["initContainers"] = [{"name": "init", "image": "i", "securityContext": {"procMount": "Bogus"}}]
    out = await created(kube_api, pod)
    assert out["spec"]["containers"][0]["securityContext"]["procMount"] == "Default"
    assert out["spec"]["initContainers"][0]["securityContext"]["procMount"] == "Default"


async def test_resize_policy_and_pod_level_resources_are_dropped_with_1_32_gates(kube_api: KubeApi) -> None:
    """InPlacePodVerticalScaling and PodLevelResources are alpha, so off, in 1.32: the registry drops a
    container's `resizePolicy` and the pod's `resources` before validation, so nothing about them is refused."""
    pod = pod_with(resizePolicy=[{"resourceName": "cpu", "restartPolicy": "Bogus"}])
    pod["spec"]["resources"] = {"limits": {"cpu": "-1"}}
    out = await created(kube_api, pod)
    assert "resizePolicy" not in out["spec"]["containers"][0]
    assert "resources" not in out["spec"]


async def test_a_new_pod_may_not_have_ephemeral_containers_nor_a_node_while_gated(kube_api: KubeApi) -> None:
    """`ValidatePodCreate`: ephemeral containers only come through the `ephemeralcontainers` subresource of a
    running pod (so `kubectl replace --force` of a pod that was debugged is refused once the pod is gone), and a
    pod with scheduling gates may not name its node yet."""
    pod = pod_with("debugged")
    pod["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox"}]
    assert await causes_of(kube_api, pod) == [("spec.ephemeralContainers", "Forbidden: cannot be set on create")]
    pod = pod_with("gated")
    pod["spec"] |= {"nodeName": "node-a", "schedulingGates": [{"name": "example.com/wait"}]}
    assert await causes_of(kube_api, pod) == [
        ("spec.nodeName", "Forbidden: cannot be set until all schedulingGates have been cleared")
    ]


PROFILE_TYPES = '"Localhost", "RuntimeDefault", "Unconfined"'


@pytest.mark.parametrize(
    ("profile", "field", "message"),
    [
        ({}, "type", "Required value: type is required when seccompProfile is set"),
        ({"type": "Custom"}, "type", f'Unsupported value: "Custom": supported values: {PROFILE_TYPES}'),
        ({"type": "Localhost"}, "localhostProfile", "Required value: must be set when seccomp type is Localhost"),
        (
            {"type": "Localhost", "localhostProfile": "/p.json"},
            "localhostProfile",
            'Invalid value: "/p.json": must be a relative path',
        ),
        (
            {"type": "Localhost", "localhostProfile": "a/../p.json"},
            "localhostProfile",
            "Invalid value: \"a/../p.json\": must not contain '..'",
        ),
    ],
    ids=["no-type", "unknown-type", "localhost-without-profile", "absolute", "backstep"],
)
@pytest.mark.parametrize("level", ["container", "pod"])
async def test_a_seccomp_profile_has_a_known_type_and_a_local_relative_path(
    kube_api: KubeApi, profile: dict[str, Any], field: str, message: str, level: str
) -> None:
    context = {"seccompProfile": profile}
    pod = pod_with(securityContext=context) if level == "container" else pod_spec_with(securityContext=context)
    base = f"{C0}.securityContext" if level == "container" else "spec.securityContext"
    assert await causes_of(kube_api, pod) == [(f"{base}.seccompProfile.{field}", message)]


async def test_only_a_localhost_seccomp_profile_names_a_file(kube_api: KubeApi) -> None:
    pod = pod_with(securityContext={"seccompProfile": {"type": "RuntimeDefault", "localhostProfile": "p.json"}})
    ((field, message),) = await causes_of(kube_api, pod)
    assert field == f"{C0}.securityContext.seccompProfile.localhostProfile"
    assert message.startswith('Invalid value: core.SeccompProfile{Type:"RuntimeDefault", LocalhostProfile:(*string)(')
    assert message.endswith("}: can only be set when seccomp type is Localhost")
    local = {"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/audit.json"}}
    await created(kube_api, pod_with("ok", securityContext=local))


@pytest.mark.parametrize(
    ("profile", "field", "message"),
    [
        ({}, "type", "Required value: type is required when appArmorProfile is set"),
        ({"type": "Complain"}, "type", f'Unsupported value: "Complain": supported values: {PROFILE_TYPES}'),
        ({"type": "Localhost"}, "localhostProfile", "Required value: must be set when AppArmor type is Localhost"),
        (
            {"type": "Localhost", "localhostProfile": ""},
            "localhostProfile",
            "Required value: must be set when AppArmor type is Localhost",
        ),
        (
            {"type": "Localhost", "localhostProfile": " p "},
            "localhostProfile",
            'Invalid value: " p ": must not be padded with whitespace',
        ),
        (
            {"type": "Unconfined", "localhostProfile": "p"},
            "localhostProfile",
            'Invalid value: "p": can only be set when AppArmor type is Localhost',
        ),
    ],
    ids=["no-type", "unknown-type", "localhost-without-profile", "empty", "padded", "not-localhost"],
)
@pytest.mark.parametrize("level", ["container", "pod"])
async def test_an_app_armor_profile_has_a_known_type_and_a_local_name(
    kube_api: KubeApi, profile: dict[str, Any], field: str, message: str, level: str
) -> None:
    context = {"appArmorProfile": profile}
    pod = pod_with(securityContext=context) if level == "container" else pod_spec_with(securityContext=context)
    base = f"{C0}.securityContext" if level == "container" else "spec.securityContext"
    assert await causes_of(kube_api, pod) == [(f"{base}.appArmorProfile.{field}", message)]
    await created(
        kube_api,
        pod_with("ok", securityContext={"appArmorProfile": {"type": "Localhost", "localhostProfile": "k8s-x"}}),
    )


async def test_a_pods_fs_group_policy_is_known_and_it_shares_pids_one_way(kube_api: KubeApi) -> None:
    policy = pod_spec_with(securityContext={"fsGroupChangePolicy": "Sometimes"})
    assert await causes_of(kube_api, policy) == [
        (
            "spec.securityContext.fsGroupChangePolicy",
            'Unsupported value: "Sometimes": supported values: "Always", "OnRootMismatch"',
        )
    ]
    shared = pod_spec_with("s", hostPID=True, shareProcessNamespace=True)
    assert await causes_of(kube_api, shared) == [
        (
            "spec.securityContext.shareProcessNamespace",
            "Invalid value: true: ShareProcessNamespace and HostPID cannot both be enabled",
        )
    ]
    await created(
        kube_api,
        pod_spec_with(
            "ok", hostPID=True, shareProcessNamespace=False, securityContext={"fsGroupChangePolicy": "OnRootMismatch"}
        ),
    )


# -- container lists -----------------------------------------------------------------------------


async def test_a_name_shared_by_an_init_and_a_regular_container_is_the_init_containers_duplicate(
    kube_api: KubeApi,
) -> None:
    """The regular containers are validated first; the init containers then check their names against all of
    theirs (`validateInitContainers`), so the init container is the duplicate, on any list position."""
    pod = pod_spec_with(initContainers=[{"name": "setup", "image": "i"}, {"name": "c", "image": "i"}])
    assert await causes_of(kube_api, pod) == [("spec.initContainers[1].name", 'Duplicate value: "c"')]
    pod["spec"]["initContainers"][1]["name"] = "setup"
    assert await causes_of(kube_api, pod) == [("spec.initContainers[1].name", 'Duplicate value: "setup"')]


async def test_container_causes_come_in_the_api_servers_order(kube_api: KubeApi) -> None:
    """Regular containers, then init containers (`ValidatePodSpec`). In each: the common checks (name, image,
    ...), then for a regular one its duplicate name, probes and restartPolicy, and the host ports of all of them
    after the list (`validateContainers`); for an init one its restartPolicy, duplicate name, own host ports and
    then its probes (`validateInitContainers`)."""
    ports = [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 8080}]
    pod = pod_spec_with(
        initContainers=[
            {"name": "c", "image": "", "restartPolicy": "Never", "ports": ports, "livenessProbe": HTTP_PROBE}
        ]
    )
    pod["spec"]["containers"] += [
        {"name": "c", "restartPolicy": "Always", "ports": [{"containerPort": 80, "hostPort": 8080}]},
        {
            "name": "d",
            "image": "i",
            "ports": [{"containerPort": 82, "hostPort": 8080}],
            "readinessProbe": {"httpGet": {"port": 0}},
        },
    ]
    assert await causes_of(kube_api, pod) == [
        ("spec.containers[1].image", "Required value"),
        ("spec.containers[1].name", 'Duplicate value: "c"'),
        ("spec.containers[1].restartPolicy", "Forbidden: may not be set for non-init containers"),
        ("spec.containers[2].readinessProbe.httpGet.port", "Invalid value: 0: must be between 1 and 65535, inclusive"),
        ("spec.containers[2].ports[0].hostPort", 'Duplicate value: "TCP//8080"'),
        ("spec.initContainers[0].image", "Required value"),
        ("spec.initContainers[0].restartPolicy", 'Unsupported value: "Never": supported values: "Always"'),
        ("spec.initContainers[0].name", 'Duplicate value: "c"'),
        ("spec.initContainers[0].ports[1].hostPort", 'Duplicate value: "TCP//8080"'),
        (
            "spec.initContainers[0].livenessProbe",
            "Forbidden: may not be set for init containers without restartPolicy=Always",
        ),
    ]


# -- pod-wide fields -----------------------------------------------------------------------------


@pytest.mark.parametrize("deadline", [0, -1, 2147483648])
async def test_active_deadline_is_a_positive_int32(kube_api: KubeApi, deadline: int) -> None:
    pod = pod_spec_with(activeDeadlineSeconds=deadline)
    assert await causes_of(kube_api, pod) == [
        ("spec.activeDeadlineSeconds", f"Invalid value: {deadline}: must be between 1 and 2147483647, inclusive")
    ]
    await created(kube_api, pod_spec_with("ok", activeDeadlineSeconds=1))


async def test_dns_policy_is_known_and_none_brings_its_own_nameservers(kube_api: KubeApi) -> None:
    unknown = pod_spec_with(dnsPolicy="ClusterFirstWithoutHostNet")
    assert await causes_of(kube_api, unknown) == [
        (
            "spec.dnsPolicy",
            'Unsupported value: "ClusterFirstWithoutHostNet": supported values: '
            '"ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"',
        )
    ]
    assert await causes_of(kube_api, pod_spec_with("n", dnsPolicy="None")) == [
        ("spec.dnsConfig", "Required value: must provide `dnsConfig` when `dnsPolicy` is None")
    ]
    assert await causes_of(kube_api, pod_spec_with("n", dnsPolicy="None", dnsConfig={"searches": ["a.b"]})) == [
        (
            "spec.dnsConfig.nameservers",
            "Required value: must provide at least one DNS nameserver when `dnsPolicy` is None",
        )
    ]
    await created(kube_api, pod_spec_with("ok", dnsPolicy="None", dnsConfig={"nameservers": ["10.0.0.10"]}))
    # An empty policy is Go's unset: it is defaulted, not refused.
    assert (await created(kube_api, pod_spec_with("empty", dnsPolicy="")))["spec"]["dnsPolicy"] == "ClusterFirst"


async def test_a_host_network_pods_host_ports_are_its_container_ports(kube_api: KubeApi) -> None:
    mismatched = pod_with(ports=[{"containerPort": 8080, "hostPort": 9090}])
    mismatched["spec"]["hostNetwork"] = True
    assert await causes_of(kube_api, mismatched) == [
        (f"{C0}.ports[0].hostPort", "Invalid value: 9090: must match `containerPort` when `hostNetwork` is true")
    ]
    defaulted = pod_with("ok", ports=[{"containerPort": 8080}])
    defaulted["spec"]["hostNetwork"] = True
    out = await created(kube_api, defaulted)
    assert out["spec"]["containers"][0]["ports"][0]["hostPort"] == 8080


async def test_a_host_network_template_may_leave_host_ports_to_its_pods(kube_api: KubeApi) -> None:
    spec: dict[str, Any] = {
        "hostNetwork": True,
        "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 8080}]}],
    }
    out = await created(kube_api, deployment("web", spec), DEPLOYMENTS)
    assert "hostPort" not in out["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    spec["containers"][0]["ports"][0]["hostPort"] = 9090
    assert await causes_of(kube_api, deployment("other", spec), DEPLOYMENTS) == [
        (
            "spec.template.spec.containers[0].ports[0].hostPort",
            "Invalid value: 9090: must match `containerPort` when `hostNetwork` is true",
        )
    ]


async def test_host_ports_do_not_collide_among_the_regular_containers(kube_api: KubeApi) -> None:
    pod = bare_pod("p")
    pod["spec"]["containers"] = [
        {"name": "a", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]},
        {"name": "b", "image": "i", "ports": [{"containerPort": 81, "hostPort": 8080}]},
    ]
    assert await causes_of(kube_api, pod) == [("spec.containers[1].ports[0].hostPort", 'Duplicate value: "TCP//8080"')]
    # Another protocol is another port; an init container runs alone, before the others.
    pod["metadata"]["name"] = "ok"
    pod["spec"]["containers"][1]["ports"][0]["protocol"] = "UDP"
    pod["spec"]["initContainers"] = [{"name": "init", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]
    await created(kube_api, pod)


async def test_a_templates_service_account_name_is_a_subdomain(kube_api: KubeApi) -> None:
    """Checked in a workload's template; a Pod naming such an account is refused earlier, by the
    ServiceAccount admission plugin, since no account can have that name."""
    spec = {"serviceAccountName": "Bad_Name", "containers": [{"name": "c", "image": "i"}]}
    assert await causes_of(kube_api, deployment("web", spec), DEPLOYMENTS) == [
        ("spec.template.spec.serviceAccountName", f'Invalid value: "Bad_Name": {SUBDOMAIN_HELP}')
    ]
    spec["serviceAccountName"] = "builder.v2"
    await created(kube_api, deployment("ok", spec), DEPLOYMENTS)


# -- tolerations -----------------------------------------------------------------------------------

T0 = "spec.tolerations[0]"
EMPTY_KEY_NEEDS_EXISTS = 'operator must be Exists when `key` is empty, which means "match all values and all keys"'
SECONDS_NEED_NO_EXECUTE = "effect must be 'NoExecute' when `tolerationSeconds` is set"
OPERATORS = '"Equal", "Exists"'
EFFECTS = '"NoSchedule", "PreferNoSchedule", "NoExecute"'


@pytest.mark.parametrize(
    ("toleration", "causes"),
    [
        (
            {"key": "bad key", "operator": "Exists"},
            [(f"{T0}.key", f'Invalid value: "bad key": name part {QUALIFIED_NAME_HELP}')],
        ),
        (
            {"key": "a/b/c", "operator": "Exists"},
            [
                (
                    f"{T0}.key",
                    f'Invalid value: "a/b/c": a qualified name {QUALIFIED_NAME_HELP} with an optional DNS subdomain '
                    "prefix and '/' (e.g. 'example.com/MyName')",
                )
            ],
        ),
        ({"operator": "Equal"}, [(f"{T0}.operator", f'Invalid value: "Equal": {EMPTY_KEY_NEEDS_EXISTS}')]),
        ({"effect": "NoSchedule"}, [(f"{T0}.operator", f'Invalid value: "": {EMPTY_KEY_NEEDS_EXISTS}')]),
        (
            {"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60},
            [(f"{T0}.effect", f'Invalid value: "NoSchedule": {SECONDS_NEED_NO_EXECUTE}')],
        ),
        ({"key": "k", "tolerationSeconds": 0}, [(f"{T0}.effect", f'Invalid value: "": {SECONDS_NEED_NO_EXECUTE}')]),
        ({"key": "k", "value": "has space"}, [(f"{T0}.operator", f'Invalid value: "has space": {LABEL_VALUE_HELP}')]),
        (
            {"key": "k", "operator": "Equal", "value": "v" * 63 + "-"},
            [
                (
                    f"{T0}.operator",
                    f'Invalid value: "{"v" * 63}-": must be no more than 63 characters;{LABEL_VALUE_HELP}',
                )
            ],
        ),
        (
            {"key": "k", "operator": "Exists", "value": "v"},
            [(f"{T0}.operator", "Invalid value: \"v\": value must be empty when `operator` is 'Exists'")],
        ),
        (
            {"key": "k", "operator": "In"},
            [(f"{T0}.operator", f'Unsupported value: "In": supported values: {OPERATORS}')],
        ),
        (
            {"key": "k", "operator": "Exists", "effect": "NoScheduleNoAdmit"},
            [(f"{T0}.effect", f'Unsupported value: "NoScheduleNoAdmit": supported values: {EFFECTS}')],
        ),
        (
            {"operator": "Lt", "value": "1", "effect": "Bogus", "tolerationSeconds": 5},
            [
                (f"{T0}.operator", f'Invalid value: "Lt": {EMPTY_KEY_NEEDS_EXISTS}'),
                (f"{T0}.effect", f'Invalid value: "Bogus": {SECONDS_NEED_NO_EXECUTE}'),
                (f"{T0}.operator", f'Unsupported value: "Lt": supported values: {OPERATORS}'),
                (f"{T0}.effect", f'Unsupported value: "Bogus": supported values: {EFFECTS}'),
            ],
        ),
    ],
    ids=[
        "key-not-qualified",
        "key-two-slashes",
        "empty-key-equal",
        "empty-key-empty-operator",
        "seconds-without-no-execute",
        "zero-seconds-count",
        "equal-value-not-a-label-value",
        "equal-value-two-problems",
        "exists-with-value",
        "unknown-operator",
        "unknown-effect",
        "every-rule-in-order",
    ],
)
async def test_a_toleration_is_refused_as_validate_tolerations_does(
    kube_api: KubeApi, toleration: dict[str, Any], causes: list[tuple[str, str]]
) -> None:
    """`ValidateTolerations`: a label value's problems and a value beside Exists are reported at `operator`,
    not at `value`; an empty operator means Equal; `tolerationSeconds: 0` is set, so it needs NoExecute."""
    assert await causes_of(kube_api, pod_spec_with(tolerations=[toleration])) == causes


async def test_toleration_causes_follow_the_active_deadline_and_a_templates_are_its_own(kube_api: KubeApi) -> None:
    """The tolerations come after the active deadline in `ValidatePodSpec`, and before what only a Pod's spec
    is checked for (an image's whitespace). A workload's template is checked by the same function, under its
    own path. The refused ones' neighbours are taken as they are: an empty key with Exists (which tolerates
    everything), an empty operator with a label value and no effect, zero seconds with NoExecute."""
    pod = pod_spec_with(activeDeadlineSeconds=0, tolerations=[{"key": "k", "operator": "Exists", "value": "v"}])
    pod["spec"]["containers"][0]["image"] = "nginx "
    assert await causes_of(kube_api, pod) == [
        ("spec.activeDeadlineSeconds", "Invalid value: 0: must be between 1 and 2147483647, inclusive"),
        (f"{T0}.operator", "Invalid value: \"v\": value must be empty when `operator` is 'Exists'"),
        (f"{C0}.image", 'Invalid value: "nginx ": must not have leading or trailing whitespace'),
    ]
    spec = {"tolerations": [{"key": "k", "operator": "Gt"}], "containers": [{"name": "c", "image": "i"}]}
    assert await causes_of(kube_api, deployment("web", spec), DEPLOYMENTS) == [
        ("spec.template.spec.tolerations[0].operator", f'Unsupported value: "Gt": supported values: {OPERATORS}')
    ]
    tolerations = [
        {"operator": "Exists"},
        {"key": "example.com/gpu", "value": "a100"},
        {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0},
    ]
    out = await created(kube_api, pod_spec_with("ok", tolerations=tolerations))
    assert out["spec"]["tolerations"] == tolerations


# -- pod-only checks -------------------------------------------------------------------------------
async def test_an_image_with_surrounding_whitespace_is_refused_for_a_pod_not_a_template(kube_api: KubeApi) -> None:
    """Only a Pod is checked (`validatePodMetadataAndSpec`, after the whole spec: containers, then init
    containers); a workload's template keeps such an image, for backward compatibility."""
    template = {"containers": [{"name": "c", "image": " nginx "}]}
    dry_run = [("dryRun", "All")]
    accepted = await kube_api.request("POST", DEPLOYMENTS, body=deployment("ws", template), query=dry_run)
    assert accepted["spec"]["template"]["spec"]["containers"][0]["image"] == " nginx "
    pod = pod_spec_with(dnsPolicy="Bogus", initContainers=[{"name": "i", "image": "busybox\t"}])
    pod["spec"]["containers"][0]["image"] = " nginx "
    assert await causes_of(kube_api, pod) == [
        (
            "spec.dnsPolicy",
            'Unsupported value: "Bogus": supported values: "ClusterFirstWithHostNet", "ClusterFirst", "Default", '
            '"None"',
        ),
        ("spec.containers[0].image", 'Invalid value: " nginx ": must not have leading or trailing whitespace'),
        ("spec.initContainers[0].image", 'Invalid value: "busybox\\t": must not have leading or trailing whitespace'),
    ]
    # Go's white space is not Python's: an ASCII separator control character is no space to Go
    await created(kube_api, pod_with("sep", image="nginx\x1c"))
