"""Pod spec validation as the API server does it (`ValidatePodSpec` and what it calls), for Pods and
the pod templates of workloads: volumes and mounts, containers (ports, resources, probes and
lifecycle hooks, env, security contexts), host-network ports, DNS, tolerations (and which of them a Pod
update may change) and pod-level fields. Paths and messages are the real server's; its version is 1.32,
whose default feature gates decide two rules (relaxed environment variable names; `procMount` forced to
Default before validation, in `tests.kubesim.resources`). Not modelled: tolerations given in the
`scheduler.alpha.kubernetes.io/tolerations` annotation (`ValidateTolerationsInPodAnnotations`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeGuard

from tests.kubesim.kl_env import parse_quantity
from tests.kubesim.validation import (
    FieldErrors,
    GoSyntax,
    check_label,
    check_port,
    check_subdomain,
    check_unique_name,
    config_key_problems,
    env_var_name_problems,
    go_lower,
    go_pointer,
    go_quote,
    go_struct,
    go_trim_space,
    int_or_zero,
    label_value_problems,
    qualified_name_problems,
    subdomain_problems,
    too_long_problems,
)

Obj = dict[str, Any]

_PORT_PROTOCOLS = ["SCTP", "TCP", "UDP"]
_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc", "sleep")


def port_name_problems(name: str) -> list[str]:
    """Why `name` is not an IANA service name as Kubernetes allows it in a port (`IsValidPortName`): at most 15
    bytes, its characters, a letter, its hyphens. Each rule is checked on its own, every failure a message."""
    problems = too_long_problems(name, 15)
    if re.fullmatch(r"[-a-z0-9]+", name) is None:
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if re.search(r"[a-z]", name) is None:
        problems.append("must contain at least one letter (a-z)")
    if "--" in name:
        problems.append("must not contain consecutive hyphens")
    if name.startswith("-") or name.endswith("-"):
        problems.append("must not begin or end with a hyphen")
    return problems


def _validate_container_ports(ports: list[Any], path: str, errors: FieldErrors) -> None:
    """A container's ports: names unique in the container and IANA-style, a container port, an optional
    host port, a supported protocol (`validateContainerPorts`)."""
    names: set[str] = set()
    for i, raw in enumerate(ports):
        port = raw if isinstance(raw, dict) else {}
        name = port.get("name")
        if name:
            problems = port_name_problems(str(name))
            for problem in problems:
                errors.invalid(f"{path}[{i}].name", name, problem)
            if not problems and name in names:
                errors.duplicate(f"{path}[{i}].name", name)
            names.add(str(name))
        if not port.get("containerPort"):
            errors.required(f"{path}[{i}].containerPort")
        else:
            check_port(errors, f"{path}[{i}].containerPort", port["containerPort"])
        if port.get("hostPort"):
            check_port(errors, f"{path}[{i}].hostPort", port["hostPort"])
        protocol = port.get("protocol")
        if not protocol:
            errors.required(f"{path}[{i}].protocol")
        elif protocol not in _PORT_PROTOCOLS:
            errors.not_supported(f"{path}[{i}].protocol", protocol, _PORT_PROTOCOLS)


def _validate_resources(resources: Any, path: str, errors: FieldErrors) -> None:
    """Each request at most its limit (`ValidateResourceRequirements`; hugepages, which must be equal,
    are not modelled). A quantity that does not parse is left to the kubelet, which refuses it."""
    if not isinstance(resources, dict):
        return
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if not isinstance(limits, dict) or not isinstance(requests, dict):
        return
    for name, request in requests.items():
        if name not in limits:
            continue
        try:
            over = parse_quantity(request) > parse_quantity(limits[name])
        except ValueError:
            continue
        if over:
            errors.invalid(
                f"{path}.requests[{name}]",
                str(request),
                f"must be less than or equal to {name} limit of {limits[name]}",
            )


def _validate_handler(handler: Obj, path: str, errors: FieldErrors) -> None:
    """A probe or lifecycle hook names exactly one handler; an HTTP one a port by number or name, an exec
    one a command."""
    present = [kind for kind in _HANDLERS if handler.get(kind) is not None]
    if not present:
        errors.required(path, "must specify a handler type")
    for kind in present[1:]:
        errors.forbidden(f"{path}.{kind}", "may not specify more than 1 handler type")
    exec_action = handler.get("exec")
    if "exec" in present[:1] and isinstance(exec_action, dict) and not exec_action.get("command"):
        errors.required(f"{path}.exec.command")
    for kind in ("httpGet", "tcpSocket"):
        action = handler.get(kind)
        if kind in present[:1] and isinstance(action, dict):
            port = action.get("port")
            if isinstance(port, int) and not isinstance(port, bool):
                check_port(errors, f"{path}.{kind}.port", port)
            else:
                for problem in port_name_problems(str(port)):
                    errors.invalid(f"{path}.{kind}.port", port, problem)
    http = handler.get("httpGet")
    if "httpGet" in present[:1] and isinstance(http, dict) and http.get("scheme") not in (None, "HTTP", "HTTPS"):
        errors.not_supported(f"{path}.httpGet.scheme", http.get("scheme"), ["HTTP", "HTTPS"])


def _is_int(value: Any) -> TypeGuard[int]:
    """An integer field's value (JSON `true` is no integer); narrows `value` to `int` for the checker."""
    return isinstance(value, int) and not isinstance(value, bool)


_PROBE_COUNTS = ("initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold")


def _validate_probe(kind: str, probe: Obj, path: str, errors: FieldErrors) -> None:
    """A probe's handler, its counts (checked after defaulting, so an explicit 0 has become the default), its
    own grace period; a liveness or startup probe must succeed once, a readiness probe has no grace period
    (`validateProbe` and its liveness/readiness/startup wrappers)."""
    _validate_handler(probe, path, errors)
    for key in _PROBE_COUNTS:
        value = probe.get(key)
        if _is_int(value) and value < 0:
            errors.invalid(f"{path}.{key}", value, "must be greater than or equal to 0")
    grace = probe.get("terminationGracePeriodSeconds")
    if _is_int(grace) and grace <= 0:
        errors.invalid(f"{path}.terminationGracePeriodSeconds", grace, "must be greater than 0")
    threshold = probe.get("successThreshold")
    if kind in ("livenessProbe", "startupProbe") and _is_int(threshold) and threshold != 1:
        errors.invalid(f"{path}.successThreshold", threshold, "must be 1")
    if kind == "readinessProbe" and grace is not None:
        errors.invalid(f"{path}.terminationGracePeriodSeconds", grace, "must not be set for readinessProbes")


# -- container env ------------------------------------------------------------------------------

_ENV_SOURCES = ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")
# What a fieldRef may name in an env var (`validEnvDownwardAPIFieldPathExpressions`, sorted as printed).
_ENV_FIELD_PATHS = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
]
# Every pod field the downward API knows (`ConvertDownwardAPIFieldLabel`); the rest is refused earlier.
_DOWNWARD_FIELD_LABELS = {
    *_ENV_FIELD_PATHS,
    "metadata.annotations",
    "metadata.labels",
    "spec.restartPolicy",
    "spec.schedulerName",
    "status.phase",
}
_ENV_RESOURCES = [
    "limits.cpu",
    "limits.ephemeral-storage",
    "limits.memory",
    "requests.cpu",
    "requests.ephemeral-storage",
    "requests.memory",
]


def _split_subscript(field_path: str) -> tuple[str, str] | None:
    """`metadata.labels['key']` as (`metadata.labels`, `key`); None for a path without a subscript."""
    if not field_path.endswith("']"):
        return None
    base, bracket, key = field_path[:-2].partition("['")
    return (base, key) if bracket and base else None


def _convert_field_label(version: str, label: str) -> tuple[str, str | None]:
    """The internal field a v1 fieldRef names, or why there is none (`ConvertDownwardAPIFieldLabel`)."""
    if version != "v1":
        return "", f"unsupported pod version: {version}"
    subscripted = _split_subscript(label)
    if subscripted is not None:
        if subscripted[0] in ("metadata.annotations", "metadata.labels"):
            return label, None
        return "", f"field label does not support subscript: {label}"
    if label == "spec.host":  # what old clients sent for spec.nodeName
        return "spec.nodeName", None
    if label in _DOWNWARD_FIELD_LABELS:
        return label, None
    return "", f"field label not supported: {label}"


def _validate_env_field_ref(ref: Obj, path: str, errors: FieldErrors) -> None:
    """An env fieldRef: a version and a path the downward API converts, one an env var may use; a label or
    annotation subscript must be a qualified name, an annotation's once lowercased as Go lowercases it, and is
    reported as written (`validateObjectFieldSelector`)."""
    version, field_path = ref.get("apiVersion"), ref.get("fieldPath")
    if not version:
        errors.required(f"{path}.apiVersion")
        return
    if not field_path:
        errors.required(f"{path}.fieldPath")
        return
    label, problem = _convert_field_label(str(version), str(field_path))
    if problem is not None:
        errors.invalid(f"{path}.fieldPath", field_path, f"error converting fieldPath: {problem}")
        return
    subscripted = _split_subscript(label)
    if subscripted is None:
        if label not in _ENV_FIELD_PATHS:
            errors.not_supported(f"{path}.fieldPath", label, _ENV_FIELD_PATHS)
        return
    base, key = subscripted
    checked = go_lower(key) if base == "metadata.annotations" else key
    for name_problem in qualified_name_problems(checked):
        errors.invalid(path, key, name_problem)


def _validate_env_resource_ref(ref: Obj, path: str, errors: FieldErrors) -> None:
    """An env resourceFieldRef names a container limit or request (hugepages by prefix). Its divisor is
    not checked here."""
    resource = ref.get("resource")
    if not resource:
        errors.required(f"{path}.resource")
    elif resource not in _ENV_RESOURCES and not str(resource).startswith(("requests.hugepages-", "limits.hugepages-")):
        errors.not_supported(f"{path}.resource", resource, _ENV_RESOURCES)


def _validate_env_key_ref(ref: Obj, path: str, errors: FieldErrors) -> None:
    """A configMapKeyRef or secretKeyRef: an object name (a subdomain, so never empty) and a config key."""
    check_subdomain(errors, f"{path}.name", str(ref.get("name") or ""))
    key = ref.get("key")
    if not key:
        errors.required(f"{path}.key")
        return
    for problem in config_key_problems(str(key)):
        errors.invalid(f"{path}.key", key, problem)


_ENV_SOURCE_CHECKS: dict[str, Callable[[Obj, str, FieldErrors], None]] = {
    "fieldRef": _validate_env_field_ref,
    "resourceFieldRef": _validate_env_resource_ref,
    "configMapKeyRef": _validate_env_key_ref,
    "secretKeyRef": _validate_env_key_ref,
}


def _validate_env_value_from(var: Obj, path: str, errors: FieldErrors) -> None:
    """`valueFrom` has exactly one source and no `value` beside it (`validateEnvVarValueFrom`)."""
    source = var["valueFrom"] if isinstance(var["valueFrom"], dict) else {}
    present = [kind for kind in _ENV_SOURCES if source.get(kind) is not None]
    for kind in present:
        ref = source[kind]
        _ENV_SOURCE_CHECKS[kind](ref if isinstance(ref, dict) else {}, f"{path}.{kind}", errors)
    if not present:
        detail = "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"
        errors.invalid(path, "", detail)
    elif var.get("value"):
        errors.invalid(path, "", "may not be specified when `value` is not empty")
    elif len(present) > 1:
        errors.invalid(path, "", "may not have more than one field specified at a time")


def _validate_env(env: Any, path: str, errors: FieldErrors) -> None:
    """Each env var is named (printable ASCII but '=', as 1.32 allows) and sourced validly (`ValidateEnv`)."""
    for i, raw in enumerate(env if isinstance(env, list) else []):
        var = raw if isinstance(raw, dict) else {}
        name = var.get("name")
        if not name:
            errors.required(f"{path}[{i}].name")
        else:
            for problem in env_var_name_problems(str(name)):
                errors.invalid(f"{path}[{i}].name", name, problem)
        if var.get("valueFrom") is not None:
            _validate_env_value_from(var, f"{path}[{i}].valueFrom", errors)


def _mask_trailing_dash(name: str) -> str:
    """A name that is a prefix may end in '-': the API server swaps the end for a letter before checking it
    (`maskTrailingDash`, which replaces the last two characters)."""
    return name[:-2] + "a" if len(name) > 1 and name.endswith("-") else name


def _validate_env_from(env_from: Any, path: str, errors: FieldErrors) -> None:
    """Each envFrom has a valid prefix and exactly one of a ConfigMap or a Secret, named (`ValidateEnvFrom`).
    The source-count errors name the list itself, as the API server's do."""
    for i, raw in enumerate(env_from if isinstance(env_from, list) else []):
        item = raw if isinstance(raw, dict) else {}
        prefix = item.get("prefix")
        if prefix:
            for problem in env_var_name_problems(str(prefix)):
                errors.invalid(f"{path}[{i}].prefix", prefix, problem)
        present = [kind for kind in ("configMapRef", "secretRef") if item.get(kind) is not None]
        for kind in present:
            name = item[kind].get("name") if isinstance(item[kind], dict) else None
            if not name:
                errors.required(f"{path}[{i}].{kind}.name")
                continue
            for problem in subdomain_problems(_mask_trailing_dash(str(name))):
                errors.invalid(f"{path}[{i}].{kind}.name", name, problem)
        if not present:
            errors.invalid(path, "", "must specify one of: `configMapRef` or `secretRef`")
        elif len(present) > 1:
            errors.invalid(path, "", "may not have more than one field specified at a time")


# -- security contexts -------------------------------------------------------------------------

_ID_RANGE = "must be between 0 and 2147483647, inclusive"
_PROFILE_TYPES = ["Localhost", "RuntimeDefault", "Unconfined"]
# core.SecurityContext's pointer fields in declaration order, for the bad value Go prints.
_SECURITY_CONTEXT_FIELDS = {
    "Capabilities": ("core.Capabilities", "capabilities"),
    "Privileged": ("bool", "privileged"),
    "SELinuxOptions": ("core.SELinuxOptions", "seLinuxOptions"),
    "WindowsOptions": ("core.WindowsSecurityContextOptions", "windowsOptions"),
    "RunAsUser": ("int64", "runAsUser"),
    "RunAsGroup": ("int64", "runAsGroup"),
    "RunAsNonRoot": ("bool", "runAsNonRoot"),
    "ReadOnlyRootFilesystem": ("bool", "readOnlyRootFilesystem"),
    "AllowPrivilegeEscalation": ("bool", "allowPrivilegeEscalation"),
    "ProcMount": ("core.ProcMountType", "procMount"),
    "SeccompProfile": ("core.SeccompProfile", "seccompProfile"),
    "AppArmorProfile": ("core.AppArmorProfile", "appArmorProfile"),
}


def _security_context_go(context: Obj) -> GoSyntax:
    """A container securityContext as the API server prints it when refusing the whole context."""
    return go_struct(
        "core.SecurityContext",
        {
            name: go_pointer(pointer_type, context.get(key) is not None)
            for name, (pointer_type, key) in _SECURITY_CONTEXT_FIELDS.items()
        },
    )


def _check_id(errors: FieldErrors, path: str, value: Any) -> None:
    """A user or group ID is a non-negative int32 (`IsValidUserID`, `IsValidGroupID`)."""
    if _is_int(value) and not 0 <= value <= 2147483647:
        errors.invalid(path, value, _ID_RANGE)


def _check_local_descending_path(errors: FieldErrors, path: str, value: str) -> None:
    """A path below a base directory: relative, without a `..` element (`validateLocalDescendingPath`)."""
    if value.startswith("/"):
        errors.invalid(path, value, "must be a relative path")
    if ".." in value.split("/"):
        errors.invalid(path, value, "must not contain '..'")


def _validate_seccomp_profile(profile: Any, path: str, errors: FieldErrors) -> None:
    """A seccomp profile has a known type; a Localhost one, and only it, a relative profile path."""
    if not isinstance(profile, dict):
        return
    kind, local = profile.get("type"), profile.get("localhostProfile")
    if not kind:
        errors.required(f"{path}.type", "type is required when seccompProfile is set")
    elif kind not in _PROFILE_TYPES:
        errors.not_supported(f"{path}.type", kind, _PROFILE_TYPES)
    if kind == "Localhost":
        if local is None:
            errors.required(f"{path}.localhostProfile", "must be set when seccomp type is Localhost")
        else:
            _check_local_descending_path(errors, f"{path}.localhostProfile", str(local))
    elif local is not None:
        shown = go_struct(
            "core.SeccompProfile", {"Type": go_quote(kind or ""), "LocalhostProfile": go_pointer("string", True)}
        )
        errors.invalid(f"{path}.localhostProfile", shown, "can only be set when seccomp type is Localhost")


def _validate_app_armor_profile(profile: Any, path: str, errors: FieldErrors) -> None:
    """An AppArmor profile has a known type; a Localhost one, and only it, an unpadded profile name."""
    if not isinstance(profile, dict):
        return
    kind, local = profile.get("type"), profile.get("localhostProfile")
    if kind == "Localhost":
        missing = "must be set when AppArmor type is Localhost"
        if local is None:
            errors.required(f"{path}.localhostProfile", missing)
        elif str(local).strip() != local:
            errors.invalid(f"{path}.localhostProfile", local, "must not be padded with whitespace")
        elif not local:
            errors.required(f"{path}.localhostProfile", missing)
    elif kind in ("RuntimeDefault", "Unconfined"):
        if local is not None:
            errors.invalid(f"{path}.localhostProfile", local, "can only be set when AppArmor type is Localhost")
    elif not kind:
        errors.required(f"{path}.type", "type is required when appArmorProfile is set")
    else:
        errors.not_supported(f"{path}.type", kind, _PROFILE_TYPES)


def _validate_security_context(context: Any, path: str, errors: FieldErrors) -> None:
    """A container's securityContext (`ValidateSecurityContext`): IDs in range, valid profiles, and no
    `allowPrivilegeEscalation: false` beside what always escalates (privileged, CAP_SYS_ADMIN). `procMount`
    has been forced to Default by then (see `_force_default_proc_mount`)."""
    if not isinstance(context, dict):
        return
    _check_id(errors, f"{path}.runAsUser", context.get("runAsUser"))
    _check_id(errors, f"{path}.runAsGroup", context.get("runAsGroup"))
    _validate_seccomp_profile(context.get("seccompProfile"), f"{path}.seccompProfile", errors)
    if context.get("allowPrivilegeEscalation") is False:
        if context.get("privileged") is True:
            detail = "cannot set `allowPrivilegeEscalation` to false and `privileged` to true"
            errors.invalid(path, _security_context_go(context), detail)
        capabilities = context.get("capabilities")
        added = capabilities.get("add") if isinstance(capabilities, dict) else None
        for capability in added if isinstance(added, list) else []:
            if capability == "CAP_SYS_ADMIN":
                detail = "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN"
                errors.invalid(path, _security_context_go(context), detail)
    _validate_app_armor_profile(context.get("appArmorProfile"), f"{path}.appArmorProfile", errors)


def _validate_pod_security_context(spec: Obj, path: str, errors: FieldErrors) -> None:
    """The pod's securityContext (`validatePodSpecSecurityContext`). The internal type holds `hostPID` and
    `shareProcessNamespace` there, so their conflict is reported under `securityContext`."""
    context = spec.get("securityContext")
    if not isinstance(context, dict):
        return
    for key in ("fsGroup", "runAsUser", "runAsGroup"):
        _check_id(errors, f"{path}.{key}", context.get(key))
    groups = context.get("supplementalGroups")
    for i, group in enumerate(groups if isinstance(groups, list) else []):
        _check_id(errors, f"{path}.supplementalGroups[{i}]", group)
    if spec.get("shareProcessNamespace") is True and spec.get("hostPID") is True:
        detail = "ShareProcessNamespace and HostPID cannot both be enabled"
        errors.invalid(f"{path}.shareProcessNamespace", True, detail)
    policy = context.get("fsGroupChangePolicy")
    if policy is not None and policy not in ("Always", "OnRootMismatch"):
        errors.not_supported(f"{path}.fsGroupChangePolicy", policy, ["Always", "OnRootMismatch"])
    _validate_seccomp_profile(context.get("seccompProfile"), f"{path}.seccompProfile", errors)
    _validate_app_armor_profile(context.get("appArmorProfile"), f"{path}.appArmorProfile", errors)


# -- pod spec ------------------------------------------------------------------------------------


def _validate_volumes(spec: Obj, path: str, errors: FieldErrors) -> set[str]:
    """Each volume named (a DNS label, unique) with exactly one source; answers the names."""
    volumes: set[str] = set()
    for i, item in enumerate(spec.get("volumes") or []):
        volume = item if isinstance(item, dict) else {}
        check_unique_name(errors, f"{path}.volumes[{i}].name", volume.get("name"), volumes, check_label)
        sources = [key for key in volume if key != "name"]  # the schema admits only sources besides the name
        if not sources:
            errors.required(f"{path}.volumes[{i}]", "must specify a volume type")
        for source in sources[1:]:
            errors.forbidden(f"{path}.volumes[{i}].{source}", "may not specify more than 1 volume type")
    return volumes


def _validate_volume_mounts(container: Obj, cpath: str, volumes: set[str], errors: FieldErrors) -> None:
    mount_paths: set[str] = set()
    for j, mount in enumerate(container.get("volumeMounts") or []):
        mname = (mount or {}).get("name")
        if not mname:
            errors.required(f"{cpath}.volumeMounts[{j}].name")
        elif mname not in volumes:
            errors.not_found(f"{cpath}.volumeMounts[{j}].name", mname)
        mount_path = (mount or {}).get("mountPath")
        if not mount_path:
            errors.required(f"{cpath}.volumeMounts[{j}].mountPath")
        elif mount_path in mount_paths:
            errors.invalid(f"{cpath}.volumeMounts[{j}].mountPath", mount_path, "must be unique")
        mount_paths.add(str(mount_path))


_HOOKS_AND_PROBES = ("lifecycle", "livenessProbe", "readinessProbe", "startupProbe")


def _validate_hooks_and_probes(container: Obj, cpath: str, errors: FieldErrors) -> None:
    """A regular container's or a sidecar's lifecycle hooks, then its liveness, readiness and startup probes."""
    lifecycle = container.get("lifecycle")
    for hook in ("postStart", "preStop"):
        if isinstance(lifecycle, dict) and isinstance(lifecycle.get(hook), dict):
            _validate_handler(lifecycle[hook], f"{cpath}.lifecycle.{hook}", errors)
    for probe in _HOOKS_AND_PROBES[1:]:
        if isinstance(container.get(probe), dict):
            _validate_probe(probe, container[probe], f"{cpath}.{probe}", errors)


def _forbid_hooks_and_probes(container: Obj, cpath: str, errors: FieldErrors) -> None:
    """A plain init container (no restartPolicy Always) may have no lifecycle hooks and no probes."""
    for key in _HOOKS_AND_PROBES:
        if container.get(key) is not None:
            errors.forbidden(f"{cpath}.{key}", "may not be set for init containers without restartPolicy=Always")


def _name_of(container: Obj) -> str:
    """A container's name as the API server holds it ("" when unset)."""
    name = container.get("name")
    return "" if name is None else str(name)


def _validate_container_common(container: Obj, cpath: str, errors: FieldErrors, volumes: set[str]) -> None:
    """What every container is checked for, in the API server's order (`validateContainerCommon`): a name (a
    DNS label), an image, ports, env, envFrom, mounts, resources, securityContext. Whether the name is unique
    is for its list to say, after these."""
    name = _name_of(container)
    if not name:
        errors.required(f"{cpath}.name")
    else:
        check_label(errors, f"{cpath}.name", name)
    if not container.get("image"):
        errors.required(f"{cpath}.image")
    _validate_container_ports(container.get("ports") or [], f"{cpath}.ports", errors)
    _validate_env(container.get("env"), f"{cpath}.env", errors)
    _validate_env_from(container.get("envFrom"), f"{cpath}.envFrom", errors)
    _validate_volume_mounts(container, cpath, volumes, errors)
    _validate_resources(container.get("resources") or {}, f"{cpath}.resources", errors)
    _validate_security_context(container.get("securityContext"), f"{cpath}.securityContext", errors)


def _dicts(items: Any) -> list[Obj]:
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _check_host_port_conflicts(containers: list[Any], list_path: str, errors: FieldErrors) -> None:
    """No two ports of `containers` take the same host port, protocol and host IP (`checkHostPortConflicts`;
    called with all regular containers together, and with each init container alone, as they run one by one)."""
    taken: set[str] = set()
    for i, container in enumerate(containers):
        ports = container.get("ports") if isinstance(container, dict) else None
        for j, port in enumerate(ports if isinstance(ports, list) else []):
            host = int_or_zero(port.get("hostPort")) if isinstance(port, dict) else 0
            if host == 0:
                continue
            key = f"{port.get('protocol', '')}/{port.get('hostIP', '')}/{host}"
            if key in taken:
                errors.duplicate(f"{list_path}[{i}].ports[{j}].hostPort", key)
            taken.add(key)


def _validate_containers(containers: list[Any], list_path: str, errors: FieldErrors, volumes: set[str]) -> None:
    """The regular containers (`validateContainers`): each one's common checks, then a name unique among them,
    its hooks and probes and no restartPolicy; the host ports of them all after the list."""
    names: set[str] = set()
    for i, container in enumerate(containers):
        cpath = f"{list_path}[{i}]"
        if not isinstance(container, dict):
            errors.invalid(cpath, container, "must be an object")
            continue
        _validate_container_common(container, cpath, errors, volumes)
        name = _name_of(container)
        if name in names:
            errors.duplicate(f"{cpath}.name", name)
        names.add(name)
        _validate_hooks_and_probes(container, cpath, errors)
        if container.get("restartPolicy") is not None:
            errors.forbidden(f"{cpath}.restartPolicy", "may not be set for non-init containers")
    _check_host_port_conflicts(containers, list_path, errors)


def _validate_init_containers(
    init_containers: list[Any], containers: list[Any], list_path: str, errors: FieldErrors, volumes: set[str]
) -> None:
    """The init containers, after the regular ones (`validateInitContainers`): each one's common checks, then
    its restartPolicy (Always, if set), a name unique among all the containers (so the init container is the
    duplicate of a regular one), its own host ports, and hooks and probes for a sidecar, none for another."""
    names = {_name_of(container) for container in _dicts(containers)}
    for i, container in enumerate(init_containers):
        cpath = f"{list_path}[{i}]"
        if not isinstance(container, dict):
            errors.invalid(cpath, container, "must be an object")
            continue
        _validate_container_common(container, cpath, errors, volumes)
        policy = container.get("restartPolicy")
        if policy is not None and policy != "Always":
            errors.not_supported(f"{cpath}.restartPolicy", policy, ["Always"])
        name = _name_of(container)
        if name in names:
            errors.duplicate(f"{cpath}.name", name)
        elif name:
            names.add(name)
        _check_host_port_conflicts([container], list_path, errors)
        if policy == "Always":
            _validate_hooks_and_probes(container, cpath, errors)
        else:
            _forbid_hooks_and_probes(container, cpath, errors)


def _validate_host_network_ports(spec: Obj, path: str, errors: FieldErrors, *, resource_is_pod: bool) -> None:
    """With `hostNetwork`, a regular container's host port is its container port (`validatePodHostNetworkDeps`):
    a pod's was defaulted so, a template may leave it 0 for the pod's defaulting to fill."""
    if spec.get("hostNetwork") is not True:
        return
    for i, container in enumerate(spec.get("containers") or []):
        ports = container.get("ports") if isinstance(container, dict) else None
        for j, port in enumerate(_dicts(ports)):
            host, target = int_or_zero(port.get("hostPort")), int_or_zero(port.get("containerPort"))
            if (resource_is_pod or host != 0) and host != target:
                detail = "must match `containerPort` when `hostNetwork` is true"
                errors.invalid(f"{path}.containers[{i}].ports[{j}].hostPort", host, detail)


# -- tolerations -----------------------------------------------------------------------------------

_TOLERATION_OPERATORS = ["Equal", "Exists"]
_TAINT_EFFECTS = ["NoSchedule", "PreferNoSchedule", "NoExecute"]


def _toleration_field(toleration: Obj, key: str) -> str:
    """A string field of a toleration as its Go struct holds it: missing or null is the empty string."""
    value = toleration.get(key)
    return "" if value is None else str(value)


def validate_tolerations(tolerations: Any, path: str, errors: FieldErrors) -> None:
    """A pod spec's tolerations as `ValidateTolerations` checks them, each one's problems in this order: a key,
    when set, is a qualified name (`ValidateLabelName`, a cause per reason); an empty key needs operator Exists
    (the match-everything toleration); `tolerationSeconds` needs effect NoExecute; then the operator: Equal or
    empty (which means Equal) takes a label value, its reasons joined by ";" and reported at `operator`, not
    `value`; Exists takes no value (reported at `operator` too, with the value as the bad value, as 1.32 does);
    any other operator is unsupported; last, a non-empty effect is NoSchedule, PreferNoSchedule or NoExecute
    (`validateTaintEffect`)."""
    for i, raw in enumerate(tolerations if isinstance(tolerations, list) else []):
        toleration = raw if isinstance(raw, dict) else {}
        here = f"{path}[{i}]"
        key = _toleration_field(toleration, "key")
        operator = _toleration_field(toleration, "operator")
        value = _toleration_field(toleration, "value")
        effect = _toleration_field(toleration, "effect")
        for problem in qualified_name_problems(key) if key else []:
            errors.invalid(f"{here}.key", key, problem)
        if not key and operator != "Exists":
            errors.invalid(
                f"{here}.operator",
                operator,
                'operator must be Exists when `key` is empty, which means "match all values and all keys"',
            )
        if toleration.get("tolerationSeconds") is not None and effect != "NoExecute":
            errors.invalid(f"{here}.effect", effect, "effect must be 'NoExecute' when `tolerationSeconds` is set")
        if operator in ("Equal", ""):
            problems = label_value_problems(value)
            if problems:
                errors.invalid(f"{here}.operator", value, ";".join(problems))
        elif operator == "Exists":
            if value:
                errors.invalid(f"{here}.operator", value, "value must be empty when `operator` is 'Exists'")
        else:
            errors.not_supported(f"{here}.operator", operator, _TOLERATION_OPERATORS)
        if effect and effect not in _TAINT_EFFECTS:
            errors.not_supported(f"{here}.effect", effect, _TAINT_EFFECTS)


def _toleration_identity(toleration: Any) -> tuple[str, str, str, str]:
    """What of a toleration an update may not change: all of it but `tolerationSeconds`."""
    item = toleration if isinstance(toleration, dict) else {}
    key, operator = _toleration_field(item, "key"), _toleration_field(item, "operator")
    return key, operator, _toleration_field(item, "value"), _toleration_field(item, "effect")


def validate_only_added_tolerations(new: Any, old: Any, path: str, errors: FieldErrors) -> None:
    """A Pod update's tolerations (`validateOnlyAddedTolerations`): each old toleration must still be there,
    equal in all but its `tolerationSeconds` (which may change either way); the first one missing is one
    Forbidden cause naming the whole list, and nothing more is checked. Otherwise the new list is validated
    once more (`ValidateTolerations`), after the spec's own validation did it already, so each of its
    problems is a cause twice (the 422's message lists it once)."""
    kept = {_toleration_identity(t) for t in (new if isinstance(new, list) else [])}
    for toleration in old if isinstance(old, list) else []:
        if _toleration_identity(toleration) not in kept:
            errors.forbidden(path, "existing toleration can not be modified except its tolerationSeconds")
            return
    validate_tolerations(new, path, errors)


_DNS_POLICIES = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"]


def _validate_dns(spec: Obj, path: str, errors: FieldErrors) -> None:
    """A known dnsPolicy; `None` needs a dnsConfig with a nameserver (`validateDNSPolicy`, `validatePodDNSConfig`)."""
    policy = spec.get("dnsPolicy")
    if policy is not None and policy not in _DNS_POLICIES:
        errors.not_supported(f"{path}.dnsPolicy", policy, _DNS_POLICIES)
    if policy != "None":
        return
    config = spec.get("dnsConfig")
    if not isinstance(config, dict):
        errors.required(f"{path}.dnsConfig", "must provide `dnsConfig` when `dnsPolicy` is None")
    elif not config.get("nameservers"):
        errors.required(
            f"{path}.dnsConfig.nameservers", "must provide at least one DNS nameserver when `dnsPolicy` is None"
        )


def _validate_pod_fields(spec: Obj, path: str, errors: FieldErrors) -> None:
    """Pod-wide fields after the containers: restart and DNS policy, the pod securityContext, the service
    account's name, the active deadline and the tolerations. A negative terminationGracePeriodSeconds is
    allowed (deletion treats it as 1), so it is not checked."""
    restart = spec.get("restartPolicy")
    if restart not in (None, "Always", "OnFailure", "Never"):
        errors.not_supported(f"{path}.restartPolicy", restart, ["Always", "OnFailure", "Never"])
    _validate_dns(spec, path, errors)
    _validate_pod_security_context(spec, f"{path}.securityContext", errors)
    account = spec.get("serviceAccountName")
    if account:
        check_subdomain(errors, f"{path}.serviceAccountName", str(account))
    deadline = spec.get("activeDeadlineSeconds")
    if _is_int(deadline) and not 1 <= deadline <= 2147483647:
        errors.invalid(f"{path}.activeDeadlineSeconds", deadline, "must be between 1 and 2147483647, inclusive")
    validate_tolerations(spec.get("tolerations"), f"{path}.tolerations", errors)


def validate_pod_spec(spec: Any, path: str, errors: FieldErrors, *, resource_is_pod: bool = False) -> None:
    """A PodSpec as `ValidatePodSpec` checks it, after defaulting: volumes, the regular containers, the init
    containers, then the pod-wide fields. `resource_is_pod` is set for a Pod itself, not for a template
    embedded in a workload (the API server's `ResourceIsPod`)."""
    if not isinstance(spec, dict):
        errors.required(path)
        return
    volumes = _validate_volumes(spec, path, errors)
    containers = spec.get("containers")
    if isinstance(containers, list) and containers:
        _validate_containers(containers, f"{path}.containers", errors, volumes)
    else:
        errors.required(f"{path}.containers")
        containers = []
    init_containers = spec.get("initContainers") or []
    _validate_init_containers(init_containers, containers, f"{path}.initContainers", errors, volumes)
    _validate_host_network_ports(spec, path, errors, resource_is_pod=resource_is_pod)
    _validate_pod_fields(spec, path, errors)


def validate_pod_only(spec: Any, path: str, errors: FieldErrors) -> None:
    """What the API server checks of a Pod's spec but not of a workload's template, after the whole spec
    (`validatePodMetadataAndSpec`): no image with leading or trailing whitespace, in the containers, then
    the init containers. A template keeps such an image (kept for backward compatibility); the Pods made
    from it are refused."""
    if not isinstance(spec, dict):
        return
    for key in ("containers", "initContainers"):
        for i, container in enumerate(_dicts(spec.get(key))):
            image = container.get("image")
            if isinstance(image, str) and image != go_trim_space(image):
                errors.invalid(f"{path}.{key}[{i}].image", image, "must not have leading or trailing whitespace")
