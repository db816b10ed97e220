"""Service defaulting and validation as a 1.32 API server does them: `SetDefaults_Service`, then
`ValidateService` with its causes in the server's order (kubectl prints them in that order), and the
checks `ValidateServiceUpdate` runs before it.

The order of `ValidateService`: the ports required; what the type rules out (a headless NodePort or
LoadBalancer; cluster IPs, IP families or policy on an ExternalName, and its name); each port (name,
number, protocol, target port, app protocol); the selector; session affinity; the cluster IPs, IP
families and policy (`cluster_ip_problems`); the external IPs; the type; node ports on a ClusterIP
Service, duplicate node ports, duplicate ports; the load balancer source ranges;
`allocateLoadBalancerNodePorts`; `loadBalancerClass`; the external traffic policy and health check node
port; the internal traffic policy; `trafficDistribution`.

`cluster_ip_problems` is also what the Service registry checks before it allocates
(`tests.kubesim.ipfamilies`), so a create with such a problem is refused with those causes alone.
A bad value that is a list is printed as Go prints it (`[]string{"10.96.0.5"}`): 1.32 renders
composite values with `%#v`.
"""

from __future__ import annotations

from typing import Any

from tests.kubesim.podspec import port_name_problems
from tests.kubesim.validation import (
    CIDR_HELP,
    IP_HELP,
    FieldErrors,
    GoSyntax,
    check_external_ip,
    check_label,
    check_labels,
    check_port,
    go_quote,
    go_string_slice,
    int_or_zero,
    parse_cidr_sloppy,
    parse_ip_sloppy,
    qualified_name_problems,
    subdomain_problems,
)

Obj = dict[str, Any]

SERVICE_TYPES = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]
EXTERNAL_TRAFFIC_POLICIES = ["Cluster", "Local"]
INTERNAL_TRAFFIC_POLICIES = ["Cluster", "Local"]
SESSION_AFFINITIES = ["ClientIP", "None"]
PORT_PROTOCOLS = ["SCTP", "TCP", "UDP"]
IP_FAMILIES = ["IPv4", "IPv6"]
IP_FAMILY_POLICIES = ["PreferDualStack", "RequireDualStack", "SingleStack"]
TRAFFIC_DISTRIBUTIONS = ["PreferClose"]
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400
SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges"
ONLY_LOAD_BALANCER = "may only be used when `type` is 'LoadBalancer'"


def _spec(obj: Obj) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def externally_accessible(spec: dict[str, Any]) -> bool:
    """Reachable from outside the cluster: NodePort, LoadBalancer, or a ClusterIP with external IPs."""
    kind = spec.get("type", "ClusterIP")
    return kind in ("NodePort", "LoadBalancer") or (kind == "ClusterIP" and bool(spec.get("externalIPs")))


def needs_health_check(spec: dict[str, Any]) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def is_headless(spec: dict[str, Any]) -> bool:
    """Headless as validation reads it: exactly one cluster IP, "None" (the registry has synced `clusterIPs`)."""
    return spec.get("clusterIPs") == ["None"]


def cluster_ips(spec: dict[str, Any]) -> list[str]:
    value = spec.get("clusterIPs")
    return [str(ip) for ip in value] if isinstance(value, list) else []


def ip_families(spec: dict[str, Any]) -> list[str]:
    value = spec.get("ipFamilies")
    return [str(family) for family in value] if isinstance(value, list) else []


def is_ipv6(ip: str) -> bool:
    """An IPv6 address as the server reads it; an IPv4-mapped one counts as IPv4."""
    parsed = parse_ip_sloppy(ip)
    return parsed is not None and parsed.version == 6


# -- defaulting ----------------------------------------------------------------------------------
def _unset(value: Any) -> bool:
    """Missing, null or Go's zero value: the defaulting cannot tell an explicit "" or 0 from an absent field."""
    return value in (None, "", 0) and not isinstance(value, bool)


def default_service(obj: Obj) -> None:
    """`SetDefaults_Service`: session affinity (for every type), type, port protocols and target ports,
    the traffic policies where they apply, and node port allocation for a LoadBalancer."""
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    _default_session_affinity(spec)
    if _unset(spec.get("type")):
        spec["type"] = "ClusterIP"
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            _default_port(port)
    if externally_accessible(spec) and _unset(spec.get("externalTrafficPolicy")):
        spec["externalTrafficPolicy"] = "Cluster"
    if spec["type"] in ("ClusterIP", "NodePort", "LoadBalancer") and spec.get("internalTrafficPolicy") is None:
        spec["internalTrafficPolicy"] = "Cluster"
    if spec["type"] == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True


def _default_session_affinity(spec: dict[str, Any]) -> None:
    """None unless set; None drops any config, ClientIP without a timeout gets the 3-hour one."""
    if _unset(spec.get("sessionAffinity")):
        spec["sessionAffinity"] = "None"
    if spec["sessionAffinity"] == "None":
        spec.pop("sessionAffinityConfig", None)
    elif spec["sessionAffinity"] == "ClientIP":
        config = spec.get("sessionAffinityConfig")
        client_ip = config.get("clientIP") if isinstance(config, dict) else None
        if not isinstance(client_ip, dict) or client_ip.get("timeoutSeconds") is None:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": DEFAULT_AFFINITY_TIMEOUT}}


def _default_port(port: Obj) -> None:
    """A port's protocol is TCP and its target port the port itself, unless set (0 and "" are unset)."""
    if _unset(port.get("protocol")):
        port["protocol"] = "TCP"
    if _unset(port.get("targetPort")) and "port" in port:
        port["targetPort"] = port["port"]


# -- validation ----------------------------------------------------------------------------------
def validate_service(obj: Obj, errors: FieldErrors) -> None:
    """`ValidateService` after the metadata, in its order (see the module's docstring)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errors.required("spec")
        return
    stype = spec.get("type")
    raw_ports = spec.get("ports")
    ports: list[Any] = raw_ports if isinstance(raw_ports, list) else []
    if not ports and not is_headless(spec) and stype != "ExternalName":
        errors.required("spec.ports")
    _validate_type_rules(spec, errors)
    _validate_ports(ports, errors)
    if isinstance(spec.get("selector"), dict):
        check_labels(errors, "spec.selector", spec["selector"])
    _validate_session_affinity(spec, errors)
    cluster_ip_problems(spec, errors)
    for i, ip in enumerate(spec.get("externalIPs") or []):
        check_external_ip(errors, f"spec.externalIPs[{i}]", str(ip))
    _validate_type(stype, errors)
    _validate_node_ports(ports, stype, errors)
    _validate_source_ranges(obj, errors)
    _validate_load_balancer_node_ports(spec, errors)
    _validate_load_balancer_class(spec, errors)
    _validate_external_traffic(spec, errors)
    _validate_internal_traffic(spec, errors)
    _validate_traffic_distribution(spec, errors)


def _validate_type_rules(spec: dict[str, Any], errors: FieldErrors) -> None:
    """What a type rules out: a NodePort or LoadBalancer may not be headless; an ExternalName has no cluster
    IPs, IP families or policy, and names a DNS subdomain (a trailing dot allowed)."""
    stype = spec.get("type")
    if stype in ("LoadBalancer", "NodePort") and is_headless(spec):
        errors.invalid("spec.clusterIPs[0]", "None", f"may not be set to 'None' for {stype} services")
    if stype != "ExternalName":
        return
    for key in ("clusterIPs", "ipFamilies"):
        if spec.get(key):
            errors.forbidden(f"spec.{key}", "may not be set for ExternalName services")
    if spec.get("ipFamilyPolicy") is not None:
        errors.forbidden("spec.ipFamilyPolicy", "may not be set for ExternalName services")
    name = str(spec.get("externalName") or "").removesuffix(".")
    if not name:
        errors.required("spec.externalName")
    for problem in subdomain_problems(name) if name else []:
        errors.invalid("spec.externalName", name, problem)


def _validate_ports(ports: list[Any], errors: FieldErrors) -> None:
    """Each port (`validateServicePort`): a name when there are several (DNS-1123 label, unique), the
    port number, the protocol, the target port (number or IANA name) and the app protocol (qualified name)."""
    names: set[str] = set()
    for i, port in enumerate(ports):
        path = f"spec.ports[{i}]"
        if not isinstance(port, dict):
            errors.invalid(path, port, "must be an object")
            continue
        _validate_port_name(port.get("name"), path, len(ports) > 1, names, errors)
        check_port(errors, f"{path}.port", port.get("port"))
        protocol = port.get("protocol")
        if not protocol:
            errors.required(f"{path}.protocol")
        elif protocol not in PORT_PROTOCOLS:
            errors.not_supported(f"{path}.protocol", protocol, PORT_PROTOCOLS)
        _validate_target_port(port.get("targetPort"), f"{path}.targetPort", errors)
        if port.get("appProtocol") is not None:
            for problem in qualified_name_problems(str(port["appProtocol"])):
                errors.invalid(f"{path}.appProtocol", port["appProtocol"], problem)


def _validate_port_name(name: Any, path: str, required: bool, names: set[str], errors: FieldErrors) -> None:
    """A DNS-1123 label (it may start with a digit), unique among the ports; required when there are several."""
    if not name:
        if required:
            errors.required(f"{path}.name")
        return
    check_label(errors, f"{path}.name", str(name))
    if name in names:
        errors.duplicate(f"{path}.name", name)
    names.add(str(name))


def _validate_target_port(target: Any, path: str, errors: FieldErrors) -> None:
    """`ValidatePortNumOrName`: a number 1-65535, or an IANA service name (each problem its own cause)."""
    if isinstance(target, str):
        for problem in port_name_problems(target):
            errors.invalid(path, target, problem)
    elif isinstance(target, int) and not isinstance(target, bool):
        check_port(errors, path, target)


def _validate_session_affinity(spec: dict[str, Any], errors: FieldErrors) -> None:
    """None or ClientIP; ClientIP's timeout (defaulted when missing) within a day."""
    affinity = spec.get("sessionAffinity")
    if not affinity:
        errors.required("spec.sessionAffinity")
    elif affinity not in SESSION_AFFINITIES:
        errors.not_supported("spec.sessionAffinity", affinity, SESSION_AFFINITIES)
    if affinity != "ClientIP":
        return
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    if isinstance(timeout, int) and not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
        path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
        errors.invalid(path, timeout, f"must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}")


def cluster_ip_problems(spec: dict[str, Any], errors: FieldErrors) -> None:
    """`ValidateServiceClusterIPsRelatedFields` (nothing for an ExternalName, checked by its type rules).

    `clusterIPs` starts with `clusterIP` (and is empty without it); each IP family is IPv4 or IPv6, once;
    the policy is known; each cluster IP is an address ("None" only alone); at most two. Unless an IP was
    malformed: at most one per family, and each of the family its `ipFamilies` entry names.
    """
    if spec.get("type") == "ExternalName":
        return
    _cluster_ip_matches_ips(spec, errors)
    _ip_families_known(ip_families(spec), errors)
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in IP_FAMILY_POLICIES:
        errors.not_supported("spec.ipFamilyPolicy", policy, IP_FAMILY_POLICIES)
    if not _cluster_ips_well_formed(cluster_ips(spec), errors):
        return
    ips = cluster_ips(spec)
    if len(ips) > 1 and len({is_ipv6(ip) for ip in ips}) < 2:
        errors.invalid("spec.clusterIPs", go_string_slice(ips), "may specify no more than one IP for each IP family")
    if not is_headless(spec):
        _cluster_ips_match_families(ips, ip_families(spec), errors)


def _cluster_ip_matches_ips(spec: dict[str, Any], errors: FieldErrors) -> None:
    cluster_ip, ips = spec.get("clusterIP"), cluster_ips(spec)
    if cluster_ip:
        if not ips:
            errors.required("spec.clusterIPs")
        elif ips[0] != cluster_ip:
            errors.invalid("spec.clusterIPs", go_string_slice(ips), "first value must match `clusterIP`")
    elif ips:
        errors.invalid("spec.clusterIPs", go_string_slice(ips), "must be empty when `clusterIP` is not specified")


def _ip_families_known(families: list[str], errors: FieldErrors) -> None:
    """Each family supported and named once (which also keeps a valid list to two)."""
    seen: set[str] = set()
    for i, family in enumerate(families):
        if family not in IP_FAMILIES:
            errors.not_supported(f"spec.ipFamilies[{i}]", family, IP_FAMILIES)
        if family in seen:
            errors.duplicate(f"spec.ipFamilies[{i}]", family)
        seen.add(family)


def _cluster_ips_well_formed(ips: list[str], errors: FieldErrors) -> bool:
    """Each an IP address, "None" only as the one value; at most two. False when one was malformed or
    misplaced, after which the server checks no more of them."""
    well_formed = True
    for i, ip in enumerate(ips):
        if i == 0 and ip == "None":
            if len(ips) > 1:
                well_formed = False
                errors.invalid("spec.clusterIPs", go_string_slice(ips), "'None' must be the first and only value")
            continue
        if parse_ip_sloppy(ip) is None:
            well_formed = False
            errors.invalid(f"spec.clusterIPs[{i}]", ip, IP_HELP)
    if len(ips) > 2:
        errors.invalid("spec.clusterIPs", go_string_slice(ips), "may only hold up to 2 values")
    return well_formed


def _cluster_ips_match_families(ips: list[str], families: list[str], errors: FieldErrors) -> None:
    for i, (ip, family) in enumerate(zip(ips, families, strict=False)):
        v6 = is_ipv6(ip)
        if family == "IPv4" and v6:
            errors.invalid(f"spec.clusterIPs[{i}]", ip, f"expected an IPv4 value as indicated by `ipFamilies[{i}]`")
        if family == "IPv6" and not v6:
            errors.invalid(f"spec.clusterIPs[{i}]", ip, f"expected an IPv6 value as indicated by `ipFamilies[{i}]`")


def _validate_type(stype: Any, errors: FieldErrors) -> None:
    if not stype:
        errors.required("spec.type")
    elif stype not in SERVICE_TYPES:
        errors.not_supported("spec.type", stype, SERVICE_TYPES)


def _validate_node_ports(ports: list[Any], stype: Any, errors: FieldErrors) -> None:
    """No node port on a ClusterIP Service (an ExternalName may name them: it is given none), then the
    duplicates: of node ports, then of ports, each by protocol."""
    numbered = [(i, port) for i, port in enumerate(ports) if isinstance(port, dict)]
    if stype == "ClusterIP":
        for i, port in numbered:
            if port.get("nodePort"):
                errors.forbidden(f"spec.ports[{i}].nodePort", "may not be used when `type` is 'ClusterIP'")
    _duplicate_node_ports(numbered, errors)
    _duplicate_ports(numbered, errors)


def _duplicate_node_ports(numbered: list[tuple[int, Obj]], errors: FieldErrors) -> None:
    """Two ports may share a node port only with different protocols."""
    seen: set[tuple[str, int]] = set()
    for i, port in numbered:
        node_port = int_or_zero(port.get("nodePort"))
        if not node_port:
            continue
        key = (str(port.get("protocol", "TCP")), node_port)
        if key in seen:
            errors.duplicate(f"spec.ports[{i}].nodePort", node_port)
        seen.add(key)


def _duplicate_ports(numbered: list[tuple[int, Obj]], errors: FieldErrors) -> None:
    """Two ports may share a port number only with different protocols.

    The API server names the duplicate by its key, a ServicePort with only the protocol and port set,
    printed in Go syntax.
    """
    seen: set[tuple[str, int]] = set()
    for i, port in numbered:
        protocol, number = str(port.get("protocol", "TCP")), int_or_zero(port.get("port"))
        if (protocol, number) in seen:
            errors.duplicate(f"spec.ports[{i}]", service_port_key(protocol, number))
        seen.add((protocol, number))


def service_port_key(protocol: str, port: int) -> GoSyntax:
    """The duplicate port's key as kubectl shows it: Go's `%#v` of an internal core.ServicePort."""
    return GoSyntax(
        f'core.ServicePort{{Name:"", Protocol:{go_quote(protocol)}, AppProtocol:(*string)(nil), Port:{port}, '
        'TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}'
    )


def _validate_source_ranges(obj: Obj, errors: FieldErrors) -> None:
    """Source ranges only on a LoadBalancer, each a CIDR (space padding allowed): the field, named with a
    capital L as the server names it, else the older annotation (comma-separated)."""
    spec = _spec(obj)
    ranges = spec.get("loadBalancerSourceRanges")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if ranges:
        path = "spec.LoadBalancerSourceRanges"
        values = [(f"{path}[{i}]", str(value).strip()) for i, value in enumerate(ranges)]
    elif isinstance(annotations, dict) and SOURCE_RANGES_ANNOTATION in annotations:
        path = f"metadata.annotations[{SOURCE_RANGES_ANNOTATION}]"
        listed = str(annotations[SOURCE_RANGES_ANNOTATION]).strip()
        values = [(path, value.strip()) for value in listed.split(",")] if listed else []
    else:
        return
    if spec.get("type") != "LoadBalancer":
        errors.forbidden(path, ONLY_LOAD_BALANCER)
    for value_path, value in values:
        if not parse_cidr_sloppy(value):
            errors.invalid(value_path, value, CIDR_HELP)


def _validate_load_balancer_node_ports(spec: dict[str, Any], errors: FieldErrors) -> None:
    """`allocateLoadBalancerNodePorts` is for LoadBalancers only, and one must have it (defaulting sets it).

    The real server names the missing field without its `spec.` prefix; so does this.
    """
    lb = spec.get("type") == "LoadBalancer"
    if spec.get("allocateLoadBalancerNodePorts") is not None and not lb:
        errors.forbidden("spec.allocateLoadBalancerNodePorts", ONLY_LOAD_BALANCER)
    if lb and spec.get("allocateLoadBalancerNodePorts") is None:
        errors.required("allocateLoadBalancerNodePorts")


def _validate_load_balancer_class(spec: dict[str, Any], errors: FieldErrors) -> None:
    """A LoadBalancer's class is a qualified name; no other type may have one."""
    value = spec.get("loadBalancerClass")
    if value is None:
        return
    if spec.get("type") != "LoadBalancer":
        errors.forbidden("spec.loadBalancerClass", ONLY_LOAD_BALANCER)
        return
    for problem in qualified_name_problems(str(value)):
        errors.invalid("spec.loadBalancerClass", value, problem)


def _validate_external_traffic(spec: dict[str, Any], errors: FieldErrors) -> None:
    """`externalTrafficPolicy` only for a Service reachable from outside; `healthCheckNodePort` only for a
    LoadBalancer with policy Local, which must have one (allocated for it when not given)."""
    policy = spec.get("externalTrafficPolicy")
    if not externally_accessible(spec):
        if policy:
            errors.invalid("spec.externalTrafficPolicy", policy, "may only be set for externally-accessible services")
    elif not policy:
        errors.required("spec.externalTrafficPolicy")
    elif policy not in EXTERNAL_TRAFFIC_POLICIES:
        errors.not_supported("spec.externalTrafficPolicy", policy, EXTERNAL_TRAFFIC_POLICIES)
    health_check = spec.get("healthCheckNodePort")
    if not needs_health_check(spec):
        if health_check:
            errors.invalid(
                "spec.healthCheckNodePort",
                health_check,
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            )
    elif not health_check:
        errors.required("spec.healthCheckNodePort")
    else:
        check_port(errors, "spec.healthCheckNodePort", health_check)


def _validate_internal_traffic(spec: dict[str, Any], errors: FieldErrors) -> None:
    """Required of the types with a cluster IP (defaulting sets it), and Cluster or Local when set."""
    policy = spec.get("internalTrafficPolicy")
    if policy is None:
        if spec.get("type") in ("ClusterIP", "NodePort", "LoadBalancer"):
            errors.required("spec.internalTrafficPolicy")
    elif policy not in INTERNAL_TRAFFIC_POLICIES:
        errors.not_supported("spec.internalTrafficPolicy", policy, INTERNAL_TRAFFIC_POLICIES)


def _validate_traffic_distribution(spec: dict[str, Any], errors: FieldErrors) -> None:
    """PreferClose is the one value 1.32 knows (ServiceTrafficDistribution is beta and on)."""
    value = spec.get("trafficDistribution")
    if value is not None and value not in TRAFFIC_DISTRIBUTIONS:
        errors.not_supported("spec.trafficDistribution", value, TRAFFIC_DISTRIBUTIONS)


# -- update --------------------------------------------------------------------------------------
def validate_service_update(new: Obj, old: Obj, errors: FieldErrors) -> None:
    """What `ValidateServiceUpdate` checks before `ValidateService`, in its order: the cluster IPs and the
    IP families may be added to or released (down to one, with policy SingleStack) but not changed, unless
    the type is or was ExternalName or the Service is headless; a LoadBalancer keeps its class; the health
    check node port stays while the Service needs one."""
    new_spec, old_spec = _spec(new), _spec(old)
    _cluster_ips_update(new_spec, old_spec, errors)
    _ip_families_update(new_spec, old_spec, errors)
    _load_balancer_class_update(new_spec, old_spec, errors)
    health_checked = needs_health_check(old_spec) and needs_health_check(new_spec)
    if health_checked and new_spec.get("healthCheckNodePort") != old_spec.get("healthCheckNodePort"):
        errors.forbidden("spec.healthCheckNodePort", "field is immutable")


def _cluster_ips_update(new: dict[str, Any], old: dict[str, Any], errors: FieldErrors) -> None:
    """`validateUpgradeDowngradeClusterIPs`: as many IPs, none changed; fewer, the primary kept (and there)
    with policy SingleStack when one is left; more, the primary kept."""
    if "ExternalName" in (new.get("type"), old.get("type")) or (is_headless(new) and is_headless(old)):
        return
    new_ips, old_ips = cluster_ips(new), cluster_ips(old)
    shown = go_string_slice(new.get("clusterIPs"))
    primary_changed = bool(old_ips and new_ips and new_ips[0] != old_ips[0])
    if len(new_ips) == len(old_ips):
        for i, ip in enumerate(old_ips):
            if new_ips[i] != ip:
                errors.invalid(f"spec.clusterIPs[{i}]", shown, "may not change once set")
    elif len(new_ips) > len(old_ips):
        if primary_changed:
            errors.invalid("spec.clusterIPs[0]", shown, "may not change once set")
    else:
        if not new_ips:
            errors.invalid("spec.clusterIPs[0]", shown, "primary clusterIP can not be unset")
        if primary_changed:
            errors.invalid("spec.clusterIPs[0]", shown, "may not change once set")
        if len(new_ips) == 1 and new.get("ipFamilyPolicy") != "SingleStack":
            detail = "must be set to 'SingleStack' when releasing the secondary clusterIP"
            errors.invalid("spec.ipFamilyPolicy", new.get("ipFamilyPolicy"), detail)


def _ip_families_update(new: dict[str, Any], old: dict[str, Any], errors: FieldErrors) -> None:
    """`validateUpgradeDowngradeIPFamilies`; a headless Service may change its families. The bad value of a
    changed primary family is the cluster IPs, as the server prints it."""
    if "ExternalName" in (new.get("type"), old.get("type")) or is_headless(new) or is_headless(old):
        return
    new_families, old_families = ip_families(new), ip_families(old)
    shown_ips = go_string_slice(new.get("clusterIPs"))
    if len(new_families) == len(old_families):
        for i, family in enumerate(old_families):
            if new_families[i] != family:
                shown = go_string_slice(new_families, "core.IPFamily")
                errors.invalid("spec.ipFamilies[0]", shown, "may not change once set")
        return
    primary_changed = bool(old_families and new_families and new_families[0] != old_families[0])
    if len(new_families) > len(old_families):
        if primary_changed:
            errors.invalid("spec.ipFamilies[0]", shown_ips, "may not change once set")
        return
    if not cluster_ips(new):
        shown = go_string_slice(new.get("ipFamilies"), "core.IPFamily")
        errors.invalid("spec.ipFamilies[0]", shown, "primary ipFamily can not be unset")
    if primary_changed:
        errors.invalid("spec.ipFamilies[0]", shown_ips, "may not change once set")
    if len(new_families) == 1 and new.get("ipFamilyPolicy") != "SingleStack":
        detail = "must be set to 'SingleStack' when releasing the secondary ipFamily"
        errors.invalid("spec.ipFamilyPolicy", new.get("ipFamilyPolicy"), detail)


def _load_balancer_class_update(new: dict[str, Any], old: dict[str, Any], errors: FieldErrors) -> None:
    """`validateLoadBalancerClassField` with the old Service: a LoadBalancer staying one keeps its class;
    then the class's own checks, which `ValidateService` repeats."""
    both = new.get("type") == old.get("type") == "LoadBalancer"
    if both and new.get("loadBalancerClass") != old.get("loadBalancerClass"):
        errors.invalid("spec.loadBalancerClass", new.get("loadBalancerClass"), "may not change once set")
    _validate_load_balancer_class(new, errors)
