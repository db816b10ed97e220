"""Least privilege, checked: the chart's RBAC rules against the API calls kubesim recorded.

`rules_by_subject(objects)` resolves the rendered (Cluster)RoleBindings to the rules each user holds;
`compare(rules, kubesim.audit)` returns what was used but not granted (`missing`) and what was granted
but not used (`unused`). The end-to-end tests call it when they are done, for the control plane's user
`system:serviceaccount:<namespace>:istiod-<rev>`:

    missing, unused = compare(rules_by_subject(rendered), sim.audit)
    assert (missing, unused) == ([], [])

Grants exercised only in scenarios one run does not go through are listed in `EXERCISED_ELSEWHERE`
with the scenario and the test that goes through it; compare() counts them as used (never as
`unused`), whether or not the run used them. They are:

- secrets `update` (istio-system): the self-signed root is re-issued when 20% of its life remains, or
  `istio-ca-secret` changed under a running CA (tests/certs: rotation);
- configmaps `get` and `update` (an update reads the ConfigMap first): someone edited a namespace's
  `istio-ca-root-cert` by hand (restored by the leader; tests/e2e/test_kube_leader.py, issue 8
  must-show 6). A plain start reaches them only when a pass runs before the watch has shown the
  publisher its own create (the create then conflicts and becomes an update): a race, not a rule;
- leases `update` after `create`: kept for a second replica taking over, or the leader renewing, both
  within one run longer than a lease renewal (tests/controlplane: leader election);
- tokenreviews `create`: a workload asking the CA for a certificate with its service-account token
  (any test with a live sidecar; a control plane alone never does).
- peerauthentications `watch`: the PeerAuthentication CRD is installed (without it the informer's list
  answers 404 and it waits for the CRD; tests/charts/test_rbac.py installs it and checks the watch).

Everything else the chart grants must be used by a plain start: list/watch of the informers, the root
ConfigMap publisher's create, the CA secret's get/create on first start, the Lease, and the
caBundle patcher's list/watch/patch of the injector configurations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class AuditRecord(Protocol):
    """What compare() reads of one request (tests/kubesim/auth.py AuditRecord has these fields)."""

    @property
    def username(self) -> str: ...
    @property
    def verb(self) -> str: ...
    @property
    def api_group(self) -> str: ...
    @property
    def resource(self) -> str: ...
    @property
    def subresource(self) -> str: ...
    @property
    def namespace(self) -> str: ...


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One PolicyRule as it applies to a user: `namespace` None for a ClusterRole bound cluster-wide."""

    namespace: str | None
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Grant:
    """One verb on one resource (`resource` or `resource/subresource`) of one group, in one namespace or all."""

    username: str
    namespace: str | None
    api_group: str
    resource: str
    verb: str

    def sort_key(self) -> tuple[str, str, str, str, str]:
        return (self.username, self.namespace or "", self.api_group, self.resource, self.verb)

    def __str__(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace is not None else "cluster-wide"
        return f"{self.username}: {self.verb} {self.resource}.{self.api_group or 'core'} ({where})"


@dataclass(frozen=True, kw_only=True, order=True)
class Call:
    """One recorded request, reduced to what RBAC decides on."""

    username: str
    namespace: str
    api_group: str
    resource: str
    verb: str

    def __str__(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace else "cluster-scoped or all namespaces"
        return f"{self.username}: {self.verb} {self.resource}.{self.api_group or 'core'} ({where})"


# (api group, resource, verb) -> the scenario that exercises it; the module docstring says why.
EXERCISED_ELSEWHERE: Mapping[tuple[str, str, str], str] = {
    ("", "secrets", "update"): "CA root rotation (tests/certs)",
    ("", "configmaps", "get"): "istio-ca-root-cert edited by hand: read, then updated (tests/e2e/test_kube_leader.py)",
    ("", "configmaps", "update"): "istio-ca-root-cert edited by hand (tests/e2e/test_kube_leader.py)",
    ("coordination.k8s.io", "leases", "update"): "lease renewal and takeover (leader election tests)",
    ("authentication.k8s.io", "tokenreviews", "create"): "a workload asking for a certificate",
    ("security.istio.io", "peerauthentications", "watch"): "the PeerAuthentication CRD installed",
}


def _service_account_user(subject: Mapping[str, Any], binding_namespace: str) -> str | None:
    if subject.get("kind") == "ServiceAccount":
        return f"system:serviceaccount:{subject.get('namespace') or binding_namespace}:{subject['name']}"
    if subject.get("kind") == "User":
        return str(subject["name"])
    return None  # groups are not resolved: the chart binds service accounts only


def rules_by_subject(objects: Iterable[Mapping[str, Any]]) -> dict[str, list[Rule]]:
    """Username -> rules, from rendered ClusterRoles, Roles and their bindings.

    Raises ValueError naming the binding when it refers to a role not among `objects`, and naming the
    role when a rule uses resourceNames or nonResourceURLs (audit records carry neither, so such a rule
    could be neither proven used nor proven unused).
    """
    roles: dict[tuple[str, str | None, str], Sequence[Mapping[str, Any]]] = {}
    bindings = []
    for obj in objects:
        kind, meta = obj["kind"], obj["metadata"]
        if kind in ("ClusterRole", "Role"):
            for rule in obj.get("rules") or []:
                if rule.get("resourceNames") or rule.get("nonResourceURLs"):
                    raise ValueError(f"{kind} {meta['name']}: rules with resourceNames/nonResourceURLs are not checked")
            roles[kind, meta.get("namespace") if kind == "Role" else None, meta["name"]] = obj.get("rules") or []
        elif kind in ("ClusterRoleBinding", "RoleBinding"):
            bindings.append(obj)
    out: dict[str, list[Rule]] = {}
    for binding in bindings:
        meta, ref = binding["metadata"], binding["roleRef"]
        namespace = meta.get("namespace") if binding["kind"] == "RoleBinding" else None
        key = (ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])
        if key not in roles:
            raise ValueError(f"{binding['kind']} {meta['name']}: roleRef {ref['kind']} {ref['name']} is not rendered")
        for subject in binding.get("subjects") or []:
            user = _service_account_user(subject, namespace or "")
            if user is None:
                continue
            for rule in roles[key]:
                out.setdefault(user, []).append(
                    Rule(
                        namespace=namespace,
                        api_groups=tuple(rule.get("apiGroups") or ()),
                        resources=tuple(rule.get("resources") or ()),
                        verbs=tuple(rule.get("verbs") or ()),
                    )
                )
    return out


def _allows(rule: Rule, call: Call) -> bool:
    """Kubernetes RBAC's rule match (wildcards `*` and `*/<subresource>` included)."""
    if rule.namespace is not None and rule.namespace != call.namespace:
        return False
    if "*" not in rule.verbs and call.verb not in rule.verbs:
        return False
    if "*" not in rule.api_groups and call.api_group not in rule.api_groups:
        return False
    sub = call.resource.partition("/")[2]
    return any(r in ("*", call.resource) or (sub and r == f"*/{sub}") for r in rule.resources)


def _grants(username: str, rule: Rule) -> list[Grant]:
    return [
        Grant(username=username, namespace=rule.namespace, api_group=group, resource=resource, verb=verb)
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
    ]


def _covers(grant: Grant, call: Call) -> bool:
    rule = Rule(
        namespace=grant.namespace, api_groups=(grant.api_group,), resources=(grant.resource,), verbs=(grant.verb,)
    )
    return grant.username == call.username and _allows(rule, call)


def compare(
    rules: Mapping[str, Sequence[Rule]],
    audit_records: Iterable[AuditRecord],
    *,
    elsewhere: Mapping[tuple[str, str, str], str] = EXERCISED_ELSEWHERE,
) -> tuple[list[Call], list[Grant]]:
    """(missing, unused) for the users in `rules`; records of any other user are ignored.

    missing: each distinct call no rule of its user allows (sorted). unused: each grant (verb x
    resource x group of a rule, in its namespace or cluster-wide) no recorded call used and not in
    `elsewhere` (sorted). A call is in a namespace when the request named one: a cluster-wide list or
    watch needs a cluster-wide rule, as in Kubernetes.
    """
    calls = sorted(
        {
            Call(
                username=r.username,
                namespace=r.namespace,
                api_group=r.api_group,
                resource=f"{r.resource}/{r.subresource}" if r.subresource else r.resource,
                verb=r.verb,
            )
            for r in audit_records
            if r.username in rules
        }
    )
    missing = [call for call in calls if not any(_allows(rule, call) for rule in rules[call.username])]
    granted = sorted(
        {grant for user, user_rules in rules.items() for rule in user_rules for grant in _grants(user, rule)},
        key=Grant.sort_key,
    )
    unused = [
        grant
        for grant in granted
        if (grant.api_group, grant.resource, grant.verb) not in elsewhere
        and not any(_covers(grant, call) for call in calls)
    ]
    return missing, unused
