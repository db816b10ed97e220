"""Roles, ClusterRoles and their bindings as a 1.32 API server defaults and validates them, over HTTP and kubectl."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.fixtures import Kubectl
from tests.kubesim.rbac import validate_cluster_role_update
from tests.kubesim.validation import LABEL_VALUE_HELP, QUALIFIED_NAME_HELP, SUBDOMAIN_HELP, FieldErrors

GROUP = "rbac.authorization.k8s.io"
RBAC = f"/apis/{GROUP}/v1"
ROLES = f"{RBAC}/namespaces/default/roles"
CLUSTER_ROLES = f"{RBAC}/clusterroles"
ROLE_BINDINGS = f"{RBAC}/namespaces/default/rolebindings"
CLUSTER_ROLE_BINDINGS = f"{RBAC}/clusterrolebindings"
VIEW = {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"}
VERBS_REQUIRED = "Required value: verbs must contain at least one value"
BAD_LABEL = f'Invalid value: "not ok!": {LABEL_VALUE_HELP}'


def rbac(kind: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": {"name": name}, **fields}


async def refused(kube_api: KubeApi, method: str, path: str, body: dict[str, Any]) -> KubeApiError:
    with pytest.raises(KubeApiError) as info:
        await kube_api.request(method, path, body=body)
    assert (info.value.status, info.value.reason) == (422, "Invalid")
    return info.value


def causes(error: KubeApiError) -> list[tuple[str, str]]:
    return [(c["field"], c["message"]) for c in error.body["details"]["causes"]]


async def test_a_roles_rules_are_checked_as_validate_policy_rule_does(kube_api: KubeApi) -> None:
    """`ValidatePolicyRule` of a namespaced rule: verbs first; a rule with nonResourceURLs is refused in a Role and
    with resources, shown as Go prints the list, and nothing else is asked of it; any other rule needs API groups
    and resources. Resource names over several resources are fine, as an empty API group is."""
    rules = [
        {},
        {"nonResourceURLs": ["/healthz", "/metrics"], "resources": ["pods"]},
        {"verbs": ["get"], "apiGroups": [""], "resources": ["pods", "secrets"], "resourceNames": ["a"]},
        {"verbs": ["get"], "apiGroups": ["apps"]},
    ]
    error = await refused(kube_api, "POST", ROLES, rbac("Role", "r", rules=rules))
    urls = '[]string{"/healthz", "/metrics"}'
    assert causes(error) == [
        ("rules[0].verbs", VERBS_REQUIRED),
        ("rules[0].apiGroups", "Required value: resource rules must supply at least one api group"),
        ("rules[0].resources", "Required value: resource rules must supply at least one resource"),
        ("rules[1].verbs", VERBS_REQUIRED),
        ("rules[1].nonResourceURLs", f"Invalid value: {urls}: namespaced rules cannot apply to non-resource URLs"),
        (
            "rules[1].nonResourceURLs",
            f"Invalid value: {urls}: rules cannot apply to both regular resources and non-resource URLs",
        ),
        ("rules[3].resources", "Required value: resource rules must supply at least one resource"),
    ]
    assert error.message.startswith(f'Role.{GROUP} "r" is invalid: [rules[0].verbs: {VERBS_REQUIRED}, ')
    created = await kube_api.request("POST", ROLES, body=rbac("Role", "fine", rules=rules[2:3]))
    assert created["rules"] == rules[2:3]


async def test_a_cluster_role_may_grant_non_resource_urls_alone(kube_api: KubeApi) -> None:
    """A ClusterRole's rules are not namespaced: nonResourceURLs with verbs are a whole rule, but not beside
    resource names."""
    rule = {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}
    created = await kube_api.request("POST", CLUSTER_ROLES, body=rbac("ClusterRole", "probe", rules=[rule]))
    assert created["rules"] == [rule]
    mixed = {**rule, "resourceNames": ["x"]}
    error = await refused(kube_api, "POST", CLUSTER_ROLES, rbac("ClusterRole", "mixed", rules=[mixed]))
    assert causes(error) == [
        (
            "rules[0].nonResourceURLs",
            'Invalid value: []string{"/healthz"}: rules cannot apply to both regular resources and non-resource URLs',
        )
    ]


async def test_an_aggregation_rule_needs_selectors_that_are_valid_label_selectors(kube_api: KubeApi) -> None:
    """`ValidateClusterRole`'s aggregationRule: at least one selector when it is there at all; each selector by
    `ValidateLabelSelector` (labels, then each expression's operator and values, key and values), followed by
    one "invalid label selector." cause on the selector when it does not convert, its value the nil selector."""
    error = await refused(kube_api, "POST", CLUSTER_ROLES, rbac("ClusterRole", "empty", aggregationRule={}))
    assert causes(error) == [
        (
            "aggregationRule.clusterRoleSelectors",
            "Required value: at least one clusterRoleSelector required if aggregationRule is non-nil",
        )
    ]
    expressions = [
        {"key": "k", "operator": "In"},
        {"key": "k", "operator": "Exists", "values": ["v"]},
        {"key": "bad key", "operator": "Has", "values": ["not ok!"]},
    ]
    selectors = [{"matchLabels": {"a/b/c": "x"}}, {"matchExpressions": expressions}, {"matchLabels": {"agg": "yes"}}]
    body = rbac("ClusterRole", "agg", aggregationRule={"clusterRoleSelectors": selectors})
    error = await refused(kube_api, "POST", CLUSTER_ROLES, body)
    first, second = "aggregationRule.clusterRoleSelectors[0]", "aggregationRule.clusterRoleSelectors[1]"
    qualified = (
        f"a qualified name {QUALIFIED_NAME_HELP} with an optional DNS subdomain prefix and '/' "
        "(e.g. 'example.com/MyName')"
    )
    assert causes(error) == [
        (f"{first}.matchLabels", f'Invalid value: "a/b/c": {qualified}'),
        (first, 'Invalid value: "null": invalid label selector.'),
        (
            f"{second}.matchExpressions[0].values",
            "Required value: must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            f"{second}.matchExpressions[1].values",
            "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        (f"{second}.matchExpressions[2].operator", 'Invalid value: "Has": not a valid selector operator'),
        (f"{second}.matchExpressions[2].key", f'Invalid value: "bad key": name part {QUALIFIED_NAME_HELP}'),
        (f"{second}.matchExpressions[2].values[0]", BAD_LABEL),
        (second, 'Invalid value: "null": invalid label selector.'),
    ]
    body = rbac("ClusterRole", "agg", aggregationRule={"clusterRoleSelectors": selectors[2:]})
    created = await kube_api.request("POST", CLUSTER_ROLES, body=body)
    assert created["aggregationRule"] == {"clusterRoleSelectors": [{"matchLabels": {"agg": "yes"}}]}


async def test_a_role_bindings_role_ref_and_subjects_are_checked_in_the_servers_order(kube_api: KubeApi) -> None:
    """`ValidateRoleBinding`: the roleRef's apiGroup, kind and name (a path segment), then each subject
    (`ValidateRoleBindingSubject`): a name, then by kind: a ServiceAccount's a DNS subdomain with no apiGroup,
    a User's or Group's apiGroup the RBAC group, an unknown kind refused with the three there are. A
    ServiceAccount in a RoleBinding needs no namespace; a Group without an apiGroup is given the RBAC one."""
    role_ref = {"apiGroup": "rbac", "kind": "Roles", "name": "a/b"}
    subjects = [
        {"kind": "ServiceAccount", "name": "Bad_Name", "apiGroup": GROUP},
        {"kind": "User", "apiGroup": "users"},
        {"kind": "Robot", "name": "r2"},
        {"kind": "Group", "name": "devs"},
        {"kind": "ServiceAccount", "name": "web"},
    ]
    body = rbac("RoleBinding", "rb", roleRef=role_ref, subjects=subjects)
    error = await refused(kube_api, "POST", ROLE_BINDINGS, body)
    assert causes(error) == [
        ("roleRef.apiGroup", f'Unsupported value: "rbac": supported values: "{GROUP}"'),
        ("roleRef.kind", 'Unsupported value: "Roles": supported values: "Role", "ClusterRole"'),
        ("roleRef.name", "Invalid value: \"a/b\": may not contain '/'"),
        ("subjects[0].name", f'Invalid value: "Bad_Name": {SUBDOMAIN_HELP}'),
        ("subjects[0].apiGroup", f'Unsupported value: "{GROUP}": supported values: ""'),
        ("subjects[1].name", "Required value"),
        ("subjects[1].apiGroup", f'Unsupported value: "users": supported values: "{GROUP}"'),
        ("subjects[2].kind", 'Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group"'),
    ]


async def test_a_cluster_role_binding_binds_only_cluster_roles_and_namespaced_service_accounts(
    kube_api: KubeApi,
) -> None:
    """`ValidateClusterRoleBinding`: only a ClusterRole may be bound, and a ServiceAccount subject names its
    namespace. A binding without a roleRef has the defaulted apiGroup, so only its kind and name are wrong."""
    role_ref = {"apiGroup": GROUP, "kind": "Role", "name": "view"}
    body = rbac("ClusterRoleBinding", "crb", roleRef=role_ref, subjects=[{"kind": "ServiceAccount", "name": "web"}])
    error = await refused(kube_api, "POST", CLUSTER_ROLE_BINDINGS, body)
    assert causes(error) == [
        ("roleRef.kind", 'Unsupported value: "Role": supported values: "ClusterRole"'),
        ("subjects[0].namespace", "Required value"),
    ]
    error = await refused(kube_api, "POST", CLUSTER_ROLE_BINDINGS, rbac("ClusterRoleBinding", "bare"))
    assert causes(error) == [
        ("roleRef.kind", 'Unsupported value: "": supported values: "ClusterRole"'),
        ("roleRef.name", "Required value"),
    ]


async def test_bindings_take_the_v1_defaults_of_their_role_ref_and_subjects(kube_api: KubeApi) -> None:
    """`SetDefaults_RoleBinding` and `SetDefaults_Subject`: a roleRef and a User or Group subject without an
    apiGroup get the RBAC group; a ServiceAccount gets none."""
    subjects = [
        {"kind": "User", "name": "alice"},
        {"kind": "Group", "name": "devs"},
        {"kind": "ServiceAccount", "name": "web", "namespace": "default"},
    ]
    body = rbac("ClusterRoleBinding", "defaulted", roleRef={"kind": "ClusterRole", "name": "view"}, subjects=subjects)
    created = await kube_api.request("POST", CLUSTER_ROLE_BINDINGS, body=body)
    assert created["roleRef"] == VIEW
    assert created["subjects"] == [
        {"kind": "User", "name": "alice", "apiGroup": GROUP},
        {"kind": "Group", "name": "devs", "apiGroup": GROUP},
        {"kind": "ServiceAccount", "name": "web", "namespace": "default"},
    ]


async def test_an_update_reports_each_problem_twice_and_refuses_a_new_role_ref(kube_api: KubeApi) -> None:
    """A 1.32 update runs `ValidateRoleBinding` and then `ValidateRoleBindingUpdate`, which runs it again before
    `ValidateObjectMetaUpdate` and the roleRef check: each problem of the new object is a cause twice (a label
    three times), listed once in the message; a changed roleRef is shown as Go prints the struct."""
    body = rbac("RoleBinding", "rb", roleRef=VIEW, subjects=[{"kind": "ServiceAccount", "name": "web"}])
    stored = await kube_api.request("POST", ROLE_BINDINGS, body=body)
    changed = {**stored, "roleRef": {**VIEW, "name": "edit"}}
    changed["metadata"] = {**stored["metadata"], "labels": {"a": "not ok!"}}
    changed["subjects"] = [{"kind": "Robot", "name": "r2"}]
    error = await refused(kube_api, "PUT", f"{ROLE_BINDINGS}/rb", changed)
    robot = ("subjects[0].kind", 'Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group"')
    ref = f'rbac.RoleRef{{APIGroup:"{GROUP}", Kind:"ClusterRole", Name:"edit"}}'
    assert causes(error) == [
        ("metadata.labels", BAD_LABEL),
        robot,
        ("metadata.labels", BAD_LABEL),
        robot,
        ("metadata.labels", BAD_LABEL),
        ("roleRef", f"Invalid value: {ref}: cannot change roleRef"),
    ]
    assert error.message == (
        f'RoleBinding.{GROUP} "rb" is invalid: [metadata.labels: {BAD_LABEL}, {robot[0]}: {robot[1]}, '
        f"roleRef: Invalid value: {ref}: cannot change roleRef]"
    )
    patch = {"roleRef": {"name": "edit"}}
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("PATCH", f"{ROLE_BINDINGS}/rb", body=patch, content_type="application/merge-patch+json")
    assert causes(info.value) == [("roleRef", f"Invalid value: {ref}: cannot change roleRef")]


async def test_an_update_checks_the_generate_name_and_the_rules_twice(kube_api: KubeApi) -> None:
    """`ValidateRoleUpdate` runs `ValidateObjectMeta`, which checks a generateName too (`ValidateRBACName`),
    where other kinds' updates check none; the rules are checked by both `ValidateRole` calls."""
    stored = await kube_api.request(
        "POST", ROLES, body=rbac("Role", "r", rules=[{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}])
    )
    changed = {**stored, "metadata": {**stored["metadata"], "generateName": "a%"}, "rules": [{}]}
    error = await refused(kube_api, "PUT", f"{ROLES}/r", changed)
    generate_name = ("metadata.generateName", "Invalid value: \"a%\": may not contain '%'")
    rule = [
        ("rules[0].verbs", VERBS_REQUIRED),
        ("rules[0].apiGroups", "Required value: resource rules must supply at least one api group"),
        ("rules[0].resources", "Required value: resource rules must supply at least one resource"),
    ]
    assert causes(error) == [generate_name, *rule, generate_name, *rule]


ROLE_REF_CHANGE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: readers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: %s}
subjects: [{kind: Group, name: readers}]
"""


async def test_kubectl_apply_of_a_new_role_ref_is_refused_as_by_the_server(kubectl: Kubectl) -> None:
    """A Group subject without an apiGroup is stored with the defaulted one: applied again, kubectl sees the
    subjects (a list it replaces whole) differ and sends them, which changes nothing on the server ("configured",
    the resourceVersion kept), as against a real one. A changed roleRef is refused in the server's words."""
    out = await kubectl.apply(ROLE_REF_CHANGE % "view")
    assert out.stdout.strip() == f"clusterrolebinding.{GROUP}/readers created"
    before = await kubectl.json("get", "clusterrolebinding", "readers")
    assert before["subjects"] == [{"kind": "Group", "name": "readers", "apiGroup": GROUP}]
    out = await kubectl.apply(ROLE_REF_CHANGE % "view")
    assert out.stdout.strip() == f"clusterrolebinding.{GROUP}/readers configured"
    after = await kubectl.json("get", "clusterrolebinding", "readers")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    refused_apply = await kubectl.run("apply", "-f", "-", stdin=ROLE_REF_CHANGE % "edit", check=False)
    assert refused_apply.returncode != 0
    assert (
        f'The ClusterRoleBinding "readers" is invalid: roleRef: Invalid value: rbac.RoleRef{{APIGroup:"{GROUP}", '
        'Kind:"ClusterRole", Name:"edit"}: cannot change roleRef'
    ) in refused_apply.stderr


def test_an_update_may_keep_the_invalid_label_values_the_stored_selectors_have() -> None:
    """`hasInvalidLabelValueInLabelSelector`: a ClusterRole stored with a selector a create refuses (from an older
    server) may keep invalid label values on update; the selector still does not convert, which is reported."""
    selector = {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["not ok!"]}]}
    old = rbac("ClusterRole", "agg", aggregationRule={"clusterRoleSelectors": [selector]})
    new = {**old, "metadata": {"name": "agg", "labels": {"v": "2"}}}
    errors = FieldErrors()
    validate_cluster_role_update(new, old, errors)
    path = "aggregationRule.clusterRoleSelectors[0]"
    assert [(c.field, c.message) for c in errors.causes] == [
        (path, 'Invalid value: "null": invalid label selector.')
    ] * 2
    fine = rbac("ClusterRole", "agg", aggregationRule={"clusterRoleSelectors": [{"matchLabels": {"tier": "web"}}]})
    errors = FieldErrors()
    validate_cluster_role_update(new, fine, errors)
    assert [c.field for c in errors.causes] == [f"{path}.matchExpressions[0].values[0]", path] * 2
