"""The RBAC kinds (Role, ClusterRole, RoleBinding, ClusterRoleBinding): their v1 defaults and their validation.

Defaults are `pkg/apis/rbac/v1/defaults.go`'s: a binding's roleRef and its User and Group subjects take the RBAC
group when they name none. Validation is `pkg/apis/rbac/validation/validation.go`'s as a 1.32 server's
strategies run it. A create is the kind's `Validate<Kind>` (the registry checks the metadata, then
`validate_*` the rest). An update is the strategy's `Validate<Kind>` followed by `Validate<Kind>Update`,
which runs `Validate<Kind>` again, metadata included, before `ValidateObjectMetaUpdate` and, for a binding,
the roleRef check: each of the new object's problems is reported twice (the message names it once).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.kubesim.validation import (
    FieldErrors,
    check_label_selector,
    check_labels_and_annotations,
    check_metadata,
    go_string,
    go_string_slice,
    go_struct,
    label_selector_invalid,
    path_segment_problems,
    subdomain_problems,
)

Obj = dict[str, Any]

GROUP = "rbac.authorization.k8s.io"
SUBJECT_KINDS = ["ServiceAccount", "User", "Group"]


def default_binding(obj: Obj) -> None:
    """`SetDefaults_RoleBinding` (and `SetDefaults_ClusterRoleBinding`): a roleRef without an apiGroup takes the
    RBAC group, a missing roleRef being an empty one; then each subject's `SetDefaults_Subject`: a User or a
    Group without an apiGroup takes the RBAC group, a ServiceAccount keeps none."""
    ref = obj.get("roleRef")
    if ref is None:
        ref = obj["roleRef"] = {}
    if isinstance(ref, dict) and not ref.get("apiGroup"):
        ref["apiGroup"] = GROUP
    subjects = obj.get("subjects")
    for subject in subjects if isinstance(subjects, list) else []:
        if isinstance(subject, dict) and not subject.get("apiGroup") and subject.get("kind") in ("User", "Group"):
            subject["apiGroup"] = GROUP


def _field(obj: Any, key: str) -> Any:
    """A string field of a struct the server decodes (absent: Go's zero value, "")."""
    value = obj.get(key, "") if isinstance(obj, dict) else ""
    return "" if value is None else value


def _items(obj: Any, key: str) -> list[Any]:
    """A list field of a struct the server decodes (absent or null: an empty slice)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


# -- roles ---------------------------------------------------------------------------------------


def check_policy_rule(errors: FieldErrors, path: str, rule: Any, *, namespaced: bool) -> None:
    """One rule (`ValidatePolicyRule`): verbs required; a rule with nonResourceURLs may not be a namespaced Role's
    and may name no API group, resource or resource name, and nothing more is checked of it; any other rule
    needs API groups and resources."""
    urls = _items(rule, "nonResourceURLs")
    if not _items(rule, "verbs"):
        errors.required(f"{path}.verbs", "verbs must contain at least one value")
    if urls:
        if namespaced:
            errors.invalid(
                f"{path}.nonResourceURLs", go_string_slice(urls), "namespaced rules cannot apply to non-resource URLs"
            )
        if _items(rule, "apiGroups") or _items(rule, "resources") or _items(rule, "resourceNames"):
            errors.invalid(
                f"{path}.nonResourceURLs",
                go_string_slice(urls),
                "rules cannot apply to both regular resources and non-resource URLs",
            )
        return
    if not _items(rule, "apiGroups"):
        errors.required(f"{path}.apiGroups", "resource rules must supply at least one api group")
    if not _items(rule, "resources"):
        errors.required(f"{path}.resources", "resource rules must supply at least one resource")


def _check_rules(errors: FieldErrors, obj: Obj, *, namespaced: bool) -> None:
    for i, rule in enumerate(_items(obj, "rules")):
        check_policy_rule(errors, f"rules[{i}]", rule, namespaced=namespaced)


def _check_aggregation_rule(errors: FieldErrors, obj: Obj, *, allow_invalid_label_value: bool) -> None:
    """A ClusterRole's aggregationRule, when it has one: at least one clusterRoleSelector, each a label selector
    (`ValidateLabelSelector`) that also converts to a selector; when it does not, the cause's value is the nil
    selector `LabelSelectorAsSelector` returned, printed as "null"."""
    if obj.get("aggregationRule") is None:
        return
    path = "aggregationRule.clusterRoleSelectors"
    selectors = _items(obj.get("aggregationRule"), "clusterRoleSelectors")
    if not selectors:
        errors.required(path, "at least one clusterRoleSelector required if aggregationRule is non-nil")
    for i, selector in enumerate(selectors):
        check_label_selector(errors, f"{path}[{i}]", selector, allow_invalid_label_value=allow_invalid_label_value)
        if label_selector_invalid(selector):
            errors.invalid(f"{path}[{i}]", "null", "invalid label selector.")


def _has_invalid_selector(obj: Obj) -> bool:
    """Whether a stored ClusterRole has an aggregation selector a create would refuse
    (`hasInvalidLabelValueInLabelSelector`): an update of it may then keep invalid label values."""
    if not isinstance(obj.get("aggregationRule"), dict):
        return False
    return any(label_selector_invalid(s) for s in _items(obj["aggregationRule"], "clusterRoleSelectors"))


def validate_role(obj: Obj, errors: FieldErrors) -> None:
    """`ValidateRole` after its metadata: each rule, as a namespaced one."""
    _check_rules(errors, obj, namespaced=True)


def validate_cluster_role(obj: Obj, errors: FieldErrors, *, allow_invalid_label_value: bool = False) -> None:
    """`ValidateClusterRole` after its metadata: each rule, then the aggregationRule."""
    _check_rules(errors, obj, namespaced=False)
    _check_aggregation_rule(errors, obj, allow_invalid_label_value=allow_invalid_label_value)


def _validate_again(errors: FieldErrors, obj: Obj) -> None:
    """The metadata as `ValidateObjectMeta` checks it inside the kind's validation: generateName, name, labels,
    annotations (`ValidateRBACName` for both names)."""
    check_metadata(errors, obj, name_rule="rbac", generate_name_problems=())


def validate_role_update(new: Obj, old: Obj, errors: FieldErrors) -> None:
    """An update: the strategy's `ValidateRole`, then `ValidateRoleUpdate`'s (the metadata and the rules again,
    then the labels and annotations `ValidateObjectMetaUpdate` checks)."""
    validate_role(new, errors)
    _validate_again(errors, new)
    validate_role(new, errors)
    check_labels_and_annotations(errors, new["metadata"])


def validate_cluster_role_update(new: Obj, old: Obj, errors: FieldErrors) -> None:
    """As `validate_role_update`, for a ClusterRole; both checks may keep the invalid label values the stored
    object's selectors already have."""
    allow = _has_invalid_selector(old)
    validate_cluster_role(new, errors, allow_invalid_label_value=allow)
    _validate_again(errors, new)
    validate_cluster_role(new, errors, allow_invalid_label_value=allow)
    check_labels_and_annotations(errors, new["metadata"])


# -- bindings ------------------------------------------------------------------------------------


def check_subject(errors: FieldErrors, path: str, subject: Any, *, namespaced: bool) -> None:
    """One subject (`ValidateRoleBindingSubject`): a name; then by kind, a ServiceAccount's name a DNS subdomain
    (`ValidateServiceAccountName`), no apiGroup, and in a ClusterRoleBinding a namespace; a User's or Group's
    apiGroup the RBAC group; any other kind refused with the three supported ones."""
    name, kind, api_group = _field(subject, "name"), _field(subject, "kind"), _field(subject, "apiGroup")
    if not name:
        errors.required(f"{path}.name")
    if kind == "ServiceAccount":
        if name:
            for problem in subdomain_problems(str(name)):
                errors.invalid(f"{path}.name", name, problem)
        if api_group:
            errors.not_supported(f"{path}.apiGroup", api_group, [""])
        if not namespaced and not _field(subject, "namespace"):
            errors.required(f"{path}.namespace")
    elif kind in ("User", "Group"):
        if api_group != GROUP:
            errors.not_supported(f"{path}.apiGroup", api_group, [GROUP])
    else:
        errors.not_supported(f"{path}.kind", kind, SUBJECT_KINDS)


def _check_binding(errors: FieldErrors, obj: Obj, *, namespaced: bool) -> None:
    """`ValidateRoleBinding` (`namespaced`) or `ValidateClusterRoleBinding` after the metadata: the roleRef's
    apiGroup, kind (a ClusterRoleBinding may bind only a ClusterRole) and name (`ValidateRBACName`), then each
    subject."""
    ref = obj.get("roleRef")
    api_group, kind, name = _field(ref, "apiGroup"), _field(ref, "kind"), _field(ref, "name")
    if api_group != GROUP:
        errors.not_supported("roleRef.apiGroup", api_group, [GROUP])
    kinds = ["Role", "ClusterRole"] if namespaced else ["ClusterRole"]
    if kind not in kinds:
        errors.not_supported("roleRef.kind", kind, kinds)
    if not name:
        errors.required("roleRef.name")
    else:
        for problem in path_segment_problems(str(name)):
            errors.invalid("roleRef.name", name, problem)
    for i, subject in enumerate(_items(obj, "subjects")):
        check_subject(errors, f"subjects[{i}]", subject, namespaced=namespaced)


def _role_ref(obj: Obj) -> tuple[Any, Any, Any]:
    ref = obj.get("roleRef")
    return _field(ref, "apiGroup"), _field(ref, "kind"), _field(ref, "name")


def _check_role_ref_unchanged(errors: FieldErrors, new: Obj, old: Obj) -> None:
    """`cannot change roleRef`, the new roleRef shown as Go prints the internal struct."""
    if _role_ref(new) == _role_ref(old):
        return
    shown: Mapping[str, str] = {
        field: go_string(str(value)) for field, value in zip(("APIGroup", "Kind", "Name"), _role_ref(new), strict=True)
    }
    errors.invalid("roleRef", go_struct("rbac.RoleRef", shown), "cannot change roleRef")


def validate_role_binding(obj: Obj, errors: FieldErrors) -> None:
    _check_binding(errors, obj, namespaced=True)


def validate_cluster_role_binding(obj: Obj, errors: FieldErrors) -> None:
    _check_binding(errors, obj, namespaced=False)


def validate_role_binding_update(new: Obj, old: Obj, errors: FieldErrors) -> None:
    """An update: the strategy's `ValidateRoleBinding`, then `ValidateRoleBindingUpdate`'s (the whole binding
    again, the labels and annotations of `ValidateObjectMetaUpdate`, then an unchanged roleRef)."""
    validate_role_binding(new, errors)
    _validate_again(errors, new)
    validate_role_binding(new, errors)
    check_labels_and_annotations(errors, new["metadata"])
    _check_role_ref_unchanged(errors, new, old)


def validate_cluster_role_binding_update(new: Obj, old: Obj, errors: FieldErrors) -> None:
    """As `validate_role_binding_update`, for a ClusterRoleBinding."""
    validate_cluster_role_binding(new, errors)
    _validate_again(errors, new)
    validate_cluster_role_binding(new, errors)
    check_labels_and_annotations(errors, new["metadata"])
    _check_role_ref_unchanged(errors, new, old)
