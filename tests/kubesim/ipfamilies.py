"""How the Service registry fills in and checks a Service's IP families before it allocates a cluster IP
(`normalizeClusterIPs` and `initIPFamilyFields`), on a cluster with the families of its service CIDRs:
kubesim's has one, IPv4 (`SERVICE_FAMILIES`), as a kube-apiserver given one `--service-cluster-ip-range`.

On create `clusterIPs` follows a `clusterIP` given alone. Then, for any type but ExternalName: the policy
defaults to the old Service's on update, to RequireDualStack for a headless Service without a selector
(it may front endpoints of both families), else to SingleStack. `cluster_ip_problems` is checked
first, and its causes alone refuse the write (422), before any other check or allocation. Then:
releasing a secondary IP or family takes policy SingleStack; SingleStack may not come with two IPs or
families; a family is inferred for each cluster IP (refused when the cluster has none such). A headless
Service without a selector is then done: it gets the cluster's family, and the other one unless
SingleStack, whatever the cluster has. Any other is refused RequireDualStack on a single-stack cluster
and a family the cluster lacks; its families default to the cluster's primary one.

A PreferDualStack Service whose update keeps its type, cluster IPs and families is left as it is, so that
a cluster's change to or from dual-stack never adds or removes an IP by itself.
"""

from __future__ import annotations

from typing import Any

from tests.kubesim.servicespec import cluster_ip_problems, cluster_ips, ip_families, is_ipv6
from tests.kubesim.validation import FieldErrors, go_string_slice

SERVICE_FAMILIES = ("IPv4",)  # the families of the service CIDRs, the primary one first
NOT_DUAL_STACK = "this cluster is not configured for dual-stack services"


def normalize_cluster_ips(spec: dict[str, Any]) -> None:
    """On create, a `clusterIP` given without `clusterIPs` is the one cluster IP asked for."""
    if spec.get("clusterIP") and not spec.get("clusterIPs"):
        spec["clusterIPs"] = [spec["clusterIP"]]


def init_ip_families(spec: dict[str, Any], old: dict[str, Any] | None) -> FieldErrors:
    """Fill in `spec`'s policy and families as the registry does (see the module's docstring); `old` is the
    stored Service's spec on update. What refuses the write, in the registry's order (empty when none)."""
    errors = FieldErrors()
    if spec.get("type") == "ExternalName" or _unchanged_prefer_dual_stack(spec, old):
        return errors
    _default_policy(spec, old)
    cluster_ip_problems(spec, errors)
    if errors:
        return errors
    if old is not None:
        _release_secondaries(spec, old, errors)
    _policy_fits_counts(spec, errors)
    _infer_families(spec, errors)
    if errors:
        return errors
    if spec.get("clusterIP") == "None" and not spec.get("selector"):
        _headless_families(spec)
        return errors
    _families_configured(spec, errors)
    if not errors and not ip_families(spec):
        spec["ipFamilies"] = [SERVICE_FAMILIES[0]]  # one family: PreferDualStack has no second to add
    return errors


def _unchanged_prefer_dual_stack(spec: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """An update of a PreferDualStack Service that keeps its type (one with a cluster IP), policy, cluster
    IPs and families: nothing to do."""
    if old is None or spec.get("ipFamilyPolicy") is None or spec.get("type") != old.get("type"):
        return False
    if spec.get("type") not in ("ClusterIP", "NodePort", "LoadBalancer"):
        return False
    old_policy = old.get("ipFamilyPolicy")
    if spec.get("ipFamilyPolicy") != "PreferDualStack" or old_policy not in (None, "PreferDualStack"):
        return False
    return cluster_ips(spec) == cluster_ips(old) and ip_families(spec) == ip_families(old)


def _default_policy(spec: dict[str, Any], old: dict[str, Any] | None) -> None:
    if spec.get("ipFamilyPolicy") is not None:
        return
    if old is not None and old.get("ipFamilyPolicy") is not None:
        spec["ipFamilyPolicy"] = old["ipFamilyPolicy"]
    elif spec.get("clusterIP") == "None" and not spec.get("selector"):
        spec["ipFamilyPolicy"] = "RequireDualStack"
    else:
        spec["ipFamilyPolicy"] = "SingleStack"


def _release_secondaries(spec: dict[str, Any], old: dict[str, Any], errors: FieldErrors) -> None:
    """On update, SingleStack drops an unchanged secondary IP and family; another policy may not release one."""
    policy = spec["ipFamilyPolicy"]
    if policy == "SingleStack":
        if cluster_ips(spec) == cluster_ips(old) and len(cluster_ips(spec)) > 1:
            spec["clusterIPs"] = cluster_ips(spec)[:1]
        if ip_families(spec) == ip_families(old) and len(ip_families(spec)) > 1:
            spec["ipFamilies"] = ip_families(spec)[:1]
        return
    if cluster_ips(spec) and len(cluster_ips(spec)) < len(cluster_ips(old)):
        errors.invalid("spec.ipFamilyPolicy", policy, "must be 'SingleStack' to release the secondary cluster IP")
    if ip_families(spec) and len(ip_families(spec)) < len(ip_families(old)):
        errors.invalid("spec.ipFamilyPolicy", policy, "must be 'SingleStack' to release the secondary IP family")


def _policy_fits_counts(spec: dict[str, Any], errors: FieldErrors) -> None:
    policy = spec["ipFamilyPolicy"]
    if policy != "SingleStack":
        return
    wanted = "must be 'RequireDualStack' or 'PreferDualStack' when multiple"
    if len(cluster_ips(spec)) == 2:
        errors.invalid("spec.ipFamilyPolicy", policy, f"{wanted} cluster IPs are specified")
    if len(ip_families(spec)) == 2:
        errors.invalid("spec.ipFamilyPolicy", policy, f"{wanted} IP families are specified")


def _infer_families(spec: dict[str, Any], errors: FieldErrors) -> None:
    """Each cluster IP without a family entry gives its family, when the cluster has it."""
    ips, families = cluster_ips(spec), ip_families(spec)
    for i, ip in enumerate(ips):
        if ip == "None":
            break
        if i < len(families):
            continue
        family = "IPv6" if is_ipv6(ip) else "IPv4"
        if family not in SERVICE_FAMILIES:
            errors.invalid(f"spec.clusterIPs[{i}]", go_string_slice(ips), f"{family} is not configured on this cluster")
        else:
            families.append(family)
    if families:
        spec["ipFamilies"] = families


def _headless_families(spec: dict[str, Any]) -> None:
    """A headless Service without a selector: the cluster's family unless given, and the other one too
    unless SingleStack, whether or not the cluster has it (its endpoints are not the cluster's)."""
    families = ip_families(spec) or [SERVICE_FAMILIES[0]]
    if len(families) < 2 and spec["ipFamilyPolicy"] != "SingleStack":
        families.append("IPv6" if families[0] == "IPv4" else "IPv4")
    spec["ipFamilies"] = families


def _families_configured(spec: dict[str, Any], errors: FieldErrors) -> None:
    """RequireDualStack needs a dual-stack cluster; each family named must be one of the cluster's."""
    if spec["ipFamilyPolicy"] == "RequireDualStack" and len(SERVICE_FAMILIES) < 2:
        errors.invalid("spec.ipFamilyPolicy", spec["ipFamilyPolicy"], NOT_DUAL_STACK)
    for i, family in enumerate(ip_families(spec)):
        if family not in SERVICE_FAMILIES:
            errors.invalid(f"spec.ipFamilies[{i}]", family, "not configured on this cluster")
