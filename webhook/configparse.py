"""Reading the injection configuration (`webhook.config.InjectionConfig`) from its ConfigMaps.

`parse_injection_config()` reads the `data` of two ConfigMaps, as Istio lays them out:
- `istio-sidecar-injector[-<rev>]`: key `config` (YAML: policy, neverInjectSelector,
  alwaysInjectSelector, templates, defaultTemplates, injectedAnnotations) and key `values` (YAML or
  JSON shaped like Istio's Helm values; the supported fields are listed in `VALUES_FIELDS`);
- `istio[-<rev>]`: key `mesh` (MeshConfig YAML; injection reads defaultConfig, trustDomain,
  enablePrometheusMerge; other MeshConfig fields are accepted and left to the components that use
  them) and optionally `meshNetworks` (left to discovery).
`config.templates` maps names to Jinja2 templates (`webhook.templates`); they add to, or replace by
name, the built-in ones, which are always available. Each template is compiled and test-rendered
against a sample pod when the ConfigMap is read: one that does not compile, fails to render or
renders something injection cannot merge is refused, naming the template and the line.
Anything invalid raises `ConfigError` naming the ConfigMap key and the field. An unknown field is an
error, not ignored: in `config` and `values` because meshplane would not honour it, in `mesh`
because it is not a MeshConfig field at all (usually a typo).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from controlplane.model import yamltext
from controlplane.model.meshconfig import MAX_MESH_BYTES, Requirement
from webhook import validate as v
from webhook.config import (
    DEFAULT_HUB,
    DEFAULT_IMAGE_NAME,
    DEFAULT_TAG,
    POLICIES,
    ConfigError,
    InjectionConfig,
    LabelSelector,
    Resources,
    image_ref,
)
from webhook.limits import MAX_CONFIG_KEY_BYTES, MAX_VALUE_DEPTH
from webhook.templates import TemplateError, TemplateSet, builtin_sources

log = logging.getLogger(__name__)


class _Reader:
    """Typed reads from one decoded ConfigMap key, raising ConfigError with the field path."""

    def __init__(self, key: str) -> None:
        self.key = key

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(key=self.key, field=path, problem=problem)

    def mapping(self, value: Any, path: str, allowed: Sequence[str] | None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be an object, got {v.type_name(value)}")
        if allowed is not None:
            for name in value:
                if name not in allowed:
                    hint = v.unknown_field(str(name), list(allowed))
                    raise self.fail(_join(path, str(name)), f"{hint}; supported here: {', '.join(allowed)}")
        return value

    def string(self, value: Any, path: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {v.type_name(value)} (quote it)")
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {v.type_name(value)}")
        return value

    def string_list(self, value: Any, path: str) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(path, f"must be a list of strings, got {v.type_name(value)}")
        return tuple(value)

    def parsed(self, value: Any, path: str, parser: Callable[[str], Any]) -> Any:
        text = self.string(value, path)
        if text is None:
            return None
        try:
            return parser(text)
        except ValueError as exc:
            raise self.fail(path, f"{v.show_value(text)}: {exc}") from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _load(key: str, text: str) -> Any:
    most = MAX_MESH_BYTES if key == "mesh" else MAX_CONFIG_KEY_BYTES
    try:
        return yamltext.load_yaml(text, max_depth=MAX_VALUE_DEPTH, max_bytes=most)
    except ValueError as exc:
        raise ConfigError(key=key, field="", problem=str(exc)) from None


def _selectors(r: _Reader, value: Any, path: str) -> tuple[LabelSelector, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.fail(path, f"must be a list of label selectors, got {v.type_name(value)}")
    out: list[LabelSelector] = []
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        raw = r.mapping(item, where, ("matchLabels", "matchExpressions"))
        labels = r.mapping(raw.get("matchLabels"), f"{where}.matchLabels", None)
        for key, label in labels.items():
            if not isinstance(label, str):
                raise r.fail(f"{where}.matchLabels.{key}", f"must be a string, got {v.type_name(label)} (quote it)")
        expressions: list[Requirement] = []
        raw_expressions = raw.get("matchExpressions") or []
        if not isinstance(raw_expressions, list):
            raise r.fail(f"{where}.matchExpressions", "must be a list")
        for j, expr in enumerate(raw_expressions):
            epath = f"{where}.matchExpressions[{j}]"
            e = r.mapping(expr, epath, ("key", "operator", "values"))
            req_key = r.string(e.get("key"), f"{epath}.key")
            if not req_key:
                raise r.fail(f"{epath}.key", "is required")
            op = r.string(e.get("operator"), f"{epath}.operator")
            if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
                raise r.fail(f"{epath}.operator", f"{op!r} is not one of In, NotIn, Exists, DoesNotExist")
            values = r.string_list(e.get("values"), f"{epath}.values") or ()
            if op in ("In", "NotIn") and not values:
                raise r.fail(f"{epath}.values", f"operator {op} needs at least one value")
            if op in ("Exists", "DoesNotExist") and values:
                raise r.fail(f"{epath}.values", f"operator {op} takes no values")
            expressions.append(Requirement(key=req_key, operator=op, values=frozenset(values)))
        if not labels and not expressions:
            raise r.fail(where, "an empty selector would match every pod; give matchLabels or matchExpressions")
        out.append(LabelSelector(match_labels=MappingProxyType(dict(labels)), match_expressions=tuple(expressions)))
    return tuple(out)


def _resources(r: _Reader, value: Any, path: str) -> Resources | None:
    if value is None:
        return None
    raw = r.mapping(value, path, ("requests", "limits"))
    parsed: dict[str, dict[str, str]] = {}
    amounts: dict[str, dict[str, Any]] = {}
    for section in ("requests", "limits"):
        entries = r.mapping(raw.get(section), f"{path}.{section}", ("cpu", "memory", "ephemeral-storage"))
        parsed[section] = {}
        amounts[section] = {}
        for name, given in entries.items():
            quantity = str(given) if isinstance(given, int) and not isinstance(given, bool) else given
            amounts[section][name] = r.parsed(quantity, f"{path}.{section}.{name}", v.parse_quantity)
            parsed[section][name] = quantity
    for name, request in amounts["requests"].items():
        limit = amounts["limits"].get(name)
        if limit is not None and request > limit:
            raise r.fail(
                f"{path}.requests.{name}",
                f"request {parsed['requests'][name]} exceeds limit {parsed['limits'][name]}",
            )
    return Resources(
        requests=MappingProxyType(parsed["requests"]),
        limits=MappingProxyType(parsed["limits"]),
    )


# The `values` fields meshplane honours, as a tree; a leaf names how to read it.
VALUES_FIELDS: dict[str, Any] = {
    "global": {
        "hub": "string",
        "tag": "string",
        "imagePullPolicy": "pullPolicy",
        "imagePullSecrets": "stringList",
        "meshID": "string",
        "network": "string",
        "proxy": {
            "image": "string",
            "resources": "resources",
            "includeIPRanges": "cidrs",
            "excludeIPRanges": "cidrs",
            "includeInboundPorts": "portsOrStar",
            "excludeInboundPorts": "ports",
            "includeOutboundPorts": "ports",
            "excludeOutboundPorts": "ports",
            "logLevel": "logLevel",
            "componentLogLevel": "componentLogLevel",
            "interceptionMode": "interceptionMode",
        },
        "proxy_init": {"image": "string"},
    },
    "sidecarInjectorWebhook": {"nativeSidecar": "boolean", "rewriteAppHTTPProbe": "boolean"},
}


def _read_values(r: _Reader, value: Any, spec: Mapping[str, Any], path: str, out: dict[str, Any]) -> None:
    raw = r.mapping(value, path, list(spec))
    for name, item in raw.items():
        here = _join(path, name)
        kind = spec[name]
        if isinstance(kind, dict):
            _read_values(r, item, kind, here, out)
            continue
        if item is None:
            continue
        if kind == "string":
            out[here] = r.string(item, here)
        elif kind == "boolean":
            out[here] = r.boolean(item, here)
        elif kind == "stringList":
            out[here] = r.string_list(item, here)
        elif kind == "resources":
            out[here] = _resources(r, item, here)
        elif kind == "pullPolicy":
            policy = r.string(item, here)
            if policy not in ("", *v.PULL_POLICIES):
                raise r.fail(here, f"{policy!r} is not one of {', '.join(v.PULL_POLICIES)}")
            out[here] = policy
        else:
            parser: Callable[[str], Any] = {
                "cidrs": v.parse_cidr_list,
                "ports": lambda text: v.parse_port_list(text, allow_star=False),
                "portsOrStar": lambda text: v.parse_port_list(text, allow_star=True),
                "logLevel": v.parse_log_level,
                "componentLogLevel": v.parse_component_log_level,
                "interceptionMode": v.parse_interception_mode,
            }[kind]
            out[here] = r.parsed(item, here, parser)


# Top-level fields of istio.mesh.v1alpha1.MeshConfig (JSON names).
MESH_FIELDS = (
    "proxyListenPort",
    "proxyInboundListenPort",
    "proxyHttpPort",
    "connectTimeout",
    "protocolDetectionTimeout",
    "tcpKeepalive",
    "ingressClass",
    "ingressService",
    "ingressControllerMode",
    "ingressSelector",
    "enableTracing",
    "accessLogFile",
    "accessLogFormat",
    "accessLogEncoding",
    "enableEnvoyAccessLogService",
    "disableEnvoyListenerLog",
    "defaultConfig",
    "outboundTrafficPolicy",
    "inboundTrafficPolicy",
    "configSources",
    "enableAutoMtls",
    "trustDomain",
    "trustDomainAliases",
    "caCertificates",
    "defaultServiceExportTo",
    "defaultVirtualServiceExportTo",
    "defaultDestinationRuleExportTo",
    "rootNamespace",
    "localityLbSetting",
    "dnsRefreshRate",
    "h2UpgradePolicy",
    "inboundClusterStatName",
    "outboundClusterStatName",
    "certificates",
    "serviceSettings",
    "enablePrometheusMerge",
    "verifyCertificateAtClient",
    "ca",
    "extensionProviders",
    "defaultProviders",
    "discoverySelectors",
    "pathNormalization",
    "defaultHttpRetryPolicy",
    "meshMTLS",
    "tlsDefaults",
    "compliancePolicy",
)

INJECTOR_KEYS = ("config", "values")
MESH_KEYS = ("mesh", "meshNetworks")
CONFIG_FIELDS = (
    "policy",
    "neverInjectSelector",
    "alwaysInjectSelector",
    "templates",
    "defaultTemplates",
    "injectedAnnotations",
)


def _data(data: Mapping[str, str] | None, allowed: tuple[str, ...], what: str) -> Mapping[str, str]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(key="(data)", field="", problem=f"the {what} ConfigMap data must be a map of strings")
    for key, text in data.items():
        if key not in allowed:
            raise ConfigError(key=str(key), field="", problem=f"unknown key in the {what} ConfigMap; use {allowed}")
        if not isinstance(text, str):
            raise ConfigError(key=key, field="", problem=f"must be a string, got {v.type_name(text)}")
    return data


def parse_injection_config(*, injector: Mapping[str, str] | None, mesh: Mapping[str, str] | None) -> InjectionConfig:
    """Build the config from the injector ConfigMap's data and the mesh ConfigMap's data.

    Either may be None (ConfigMap absent) or lack keys; what is absent keeps its default.
    Raises `ConfigError` for anything invalid or unknown.
    """
    injector_data = _data(injector, INJECTOR_KEYS, "injector")
    mesh_data = _data(mesh, MESH_KEYS, "mesh")
    kwargs: dict[str, Any] = {}

    # -- key `config` ---------------------------------------------------------------------------
    r = _Reader("config")
    raw = r.mapping(_load("config", injector_data.get("config", "")), "", CONFIG_FIELDS)
    policy = r.string(raw.get("policy"), "policy")
    if policy is not None:
        if policy not in POLICIES:
            raise r.fail("policy", f"{policy!r} is not one of {', '.join(POLICIES)}")
        kwargs["policy"] = policy
    kwargs["never_inject_selector"] = _selectors(r, raw.get("neverInjectSelector"), "neverInjectSelector")
    kwargs["always_inject_selector"] = _selectors(r, raw.get("alwaysInjectSelector"), "alwaysInjectSelector")
    template_set = _templates(r, raw.get("templates"))
    kwargs["templates"] = template_set
    defaults = r.string_list(raw.get("defaultTemplates"), "defaultTemplates")
    if defaults is not None:
        if not defaults:
            raise r.fail("defaultTemplates", "name at least one template (Istio's default is [sidecar])")
        for name in defaults:
            if name not in template_set.sources:
                raise r.fail("defaultTemplates", f"unknown template {name!r}; known: {', '.join(template_set.names)}")
        if len(set(defaults)) != len(defaults):
            raise r.fail("defaultTemplates", "a template is listed twice")
        kwargs["default_templates"] = defaults
    annotations = r.mapping(raw.get("injectedAnnotations"), "injectedAnnotations", None)
    for key, value in annotations.items():
        r.string(value, f"injectedAnnotations.{key}")
    kwargs["injected_annotations"] = MappingProxyType(dict(annotations))

    # -- key `values` ---------------------------------------------------------------------------
    r = _Reader("values")
    values: dict[str, Any] = {}
    _read_values(r, _load("values", injector_data.get("values", "")), VALUES_FIELDS, "", values)
    hub = values.get("global.hub") or DEFAULT_HUB
    tag = values.get("global.tag") or DEFAULT_TAG
    kwargs["hub"], kwargs["tag"] = hub, tag
    for path, image_key in (("global.proxy.image", "proxy_image"), ("global.proxy_init.image", "proxy_init_image")):
        image = image_ref(hub, values.get(path) or DEFAULT_IMAGE_NAME, tag)
        try:
            kwargs[image_key] = v.parse_image(image)
        except ValueError as exc:
            raise r.fail(path if path in values else "global.hub", f"{v.show_value(image)}: {exc}") from None
    simple = {
        "global.imagePullPolicy": "image_pull_policy",
        "global.imagePullSecrets": "image_pull_secrets",
        "global.meshID": "mesh_id",
        "global.network": "network",
        "global.proxy.resources": "resources",
        "global.proxy.includeIPRanges": "include_outbound_ip_ranges",
        "global.proxy.excludeIPRanges": "exclude_outbound_ip_ranges",
        "global.proxy.includeInboundPorts": "include_inbound_ports",
        "global.proxy.excludeInboundPorts": "exclude_inbound_ports",
        "global.proxy.includeOutboundPorts": "include_outbound_ports",
        "global.proxy.excludeOutboundPorts": "exclude_outbound_ports",
        "global.proxy.logLevel": "proxy_log_level",
        "global.proxy.componentLogLevel": "proxy_component_log_level",
        "global.proxy.interceptionMode": "interception_mode",
        "sidecarInjectorWebhook.nativeSidecar": "native_sidecar",
        "sidecarInjectorWebhook.rewriteAppHTTPProbe": "rewrite_app_probes",
    }
    for path, name in simple.items():
        if values.get(path) is not None:
            kwargs[name] = values[path]

    # -- key `mesh` -----------------------------------------------------------------------------
    r = _Reader("mesh")
    raw_mesh = r.mapping(_load("mesh", mesh_data.get("mesh", "")), "", MESH_FIELDS)
    trust_domain = r.string(raw_mesh.get("trustDomain"), "trustDomain")
    if trust_domain:
        kwargs["trust_domain"] = trust_domain
    merge = r.boolean(raw_mesh.get("enablePrometheusMerge"), "enablePrometheusMerge")
    if merge is not None:
        kwargs["enable_prometheus_merge"] = merge
    if raw_mesh.get("defaultConfig") is not None:
        try:
            proxy_config = v.check_proxy_config(raw_mesh["defaultConfig"])
        except ValueError as exc:
            raise r.fail("defaultConfig", str(exc)) from None
        kwargs["proxy_config"] = MappingProxyType(proxy_config)
    config = InjectionConfig(**kwargs)
    builtin = builtin_sources()
    _try_templates(config, user=[name for name, text in template_set.sources.items() if builtin.get(name) != text])
    return config


def _templates(r: _Reader, value: Any) -> TemplateSet:
    """The built-in templates with `config.templates` added over them; compiled."""
    given = r.mapping(value, "templates", None)
    sources = dict(builtin_sources())
    for name, source in given.items():
        path = f"templates.{name}"
        if not isinstance(name, str) or not name or any(ch in name for ch in ", \t\n"):
            raise r.fail(path, "a template name must be non-empty, without commas or spaces")
        text = r.string(source, path)
        sources[name] = text or ""
    try:
        return TemplateSet(sources)
    except TemplateError as exc:
        raise r.fail(f"templates.{exc.template}", str(exc)) from None


def _try_templates(config: InjectionConfig, *, user: list[str]) -> None:
    """Inject a sample pod with each user template after the defaults, then with the defaults."""
    from webhook.sample import try_injection  # the sample injects, and injection imports this module
    from webhook.sidecarcheck import SidecarWouldNotStart
    from webhook.strip import PROXY

    defaults = tuple(config.default_templates)
    trials = [
        (defaults[: defaults.index(name) + 1] if name in defaults else (*defaults, name), f"templates.{name}")
        for name in user
    ]
    trials.append((defaults, "defaultTemplates"))
    for names, where in trials:
        try:
            problem = try_injection(config, templates=names)
        except SidecarWouldNotStart as exc:
            if exc.variable:  # the sample pod has no annotations: the mesh's defaultConfig set it
                raise ConfigError(
                    key="mesh",
                    field=f"defaultConfig.proxyMetadata.{exc.variable}",
                    problem=f"the injected {PROXY} container would not start: {exc.problem}",
                ) from None
            problem = str(exc)
        if problem is not None:
            raise ConfigError(
                key="config", field=where, problem=f"injecting a sample pod with {','.join(names)} fails: {problem}"
            )
