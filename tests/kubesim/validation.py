"""Field validation with the API server's error shapes.

Validators append `Cause`s to a `FieldErrors`; a non-empty list becomes a 422 Invalid Status
whose message reads like the real one: `ConfigMap "Bad" is invalid: metadata.name: Invalid
value: "Bad": a lowercase RFC 1123 subdomain must ...`, with one `details.causes` entry per field.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.kubesim.selectors import label_key_problem, label_value_problem

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_HELP = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and "
    "end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
CONFIG_KEY_HELP = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
    "'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
)
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
QUALIFIED_NAME_HELP = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
    "character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
ENV_VAR_NAME_HELP = "a valid environment variable name must consist only of printable ASCII characters other than '='"
DNS1035_HELP = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
    "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def strict_json(data: str | bytes) -> Any:
    """JSON as the API server's decoder reads it: no `NaN`/`Infinity`, no number beyond a float's range
    (Python's `json.loads` takes both, the second as infinity)."""
    return json.loads(data, parse_constant=_not_json, parse_float=_finite)


def _not_json(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


class GoSyntax(str):
    """A bad value the API server prints in Go syntax (`%#v` of an internal type), rendered as it is."""


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_string(value: str) -> str:
    """Go's `%q` of a string (`strconv.Quote`), how the API server quotes a bad value: printable characters,
    non-ASCII ones too, as they are; others as Go escapes them (`\\t`, `\\x7f`, `\\u0085`)."""
    out = []
    for char in value:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char == " " or char.isprintable():
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def go_quote(value: Any) -> str:
    """Render a bad value roughly the way the API server's messages do."""
    if isinstance(value, GoSyntax):
        return str(value)
    if isinstance(value, str):
        return go_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class Cause:
    reason: str  # FieldValueInvalid, FieldValueRequired, ...
    field: str
    message: str  # "Invalid value: \"x\": detail"

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass
class FieldErrors:
    causes: list[Cause] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.causes)

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.causes.append(Cause("FieldValueInvalid", path, f"Invalid value: {go_quote(value)}: {detail}"))

    def required(self, path: str, detail: str = "") -> None:
        self.causes.append(Cause("FieldValueRequired", path, "Required value" + (f": {detail}" if detail else "")))

    def not_found(self, path: str, value: Any) -> None:
        self.causes.append(Cause("FieldValueNotFound", path, f"Not found: {go_quote(value)}"))

    def duplicate(self, path: str, value: Any) -> None:
        self.causes.append(Cause("FieldValueDuplicate", path, f"Duplicate value: {go_quote(value)}"))

    def forbidden(self, path: str, detail: str) -> None:
        self.causes.append(Cause("FieldValueForbidden", path, f"Forbidden: {detail}"))

    def too_many(self, path: str, count: int, limit: int) -> None:
        self.causes.append(Cause("FieldValueTooMany", path, f"Too many: {count}: must have at most {limit} items"))

    def not_supported(self, path: str, value: Any, supported: list[str]) -> None:
        listed = ", ".join(json.dumps(s) for s in supported)
        self.causes.append(
            Cause("FieldValueNotSupported", path, f"Unsupported value: {go_quote(value)}: supported values: {listed}")
        )


def invalid_cause(path: str, value: Any, detail: str) -> Cause:
    """One FieldValueInvalid cause, for an error built outside a `FieldErrors` collection."""
    errors = FieldErrors()
    errors.invalid(path, value, detail)
    return errors.causes[0]


# -- names ---------------------------------------------------------------------------------------


def check_subdomain(errors: FieldErrors, path: str, value: str) -> None:
    for problem in subdomain_problems(value):
        errors.invalid(path, value, problem)


def subdomain_problems(value: str) -> list[str]:
    """Why `value` is not a DNS-1123 subdomain (`IsDNS1123Subdomain`), each reason a message."""
    return _name_problems(value, 253, DNS1123_SUBDOMAIN, SUBDOMAIN_HELP)


def check_label(errors: FieldErrors, path: str, value: str) -> None:
    if len(value) > 63:
        errors.invalid(path, value, "must be no more than 63 characters")
    if not DNS1123_LABEL.fullmatch(value):
        errors.invalid(path, value, LABEL_HELP)


def check_dns1035(errors: FieldErrors, path: str, value: str) -> None:
    if len(value) > 63:
        errors.invalid(path, value, "must be no more than 63 characters")
    if not DNS1035_LABEL.fullmatch(value):
        errors.invalid(path, value, DNS1035_HELP)


NAME_RULES = {"subdomain": check_subdomain, "label": check_label, "dns1035": check_dns1035}


def env_var_name_problems(name: str) -> list[str]:
    """Why `name` is not an environment variable name, as a 1.32 server checks it.

    From 1.32 the RelaxedEnvironmentVariableValidation gate is on by default (beta): any printable
    ASCII character but '=' may appear (`IsRelaxedEnvVarName`); the older C-identifier-like rule is gone.
    """
    if any(not " " <= char <= "~" or char == "=" for char in name):
        return [ENV_VAR_NAME_HELP]
    return []


def config_key_problems(key: str) -> list[str]:
    """Why `key` is not a ConfigMap or Secret key (`IsConfigMapKey`): length, characters, no `.`/`..` start."""
    problems = ["must be no more than 253 characters"] if len(key) > 253 else []
    if not CONFIG_KEY.fullmatch(key):
        problems.append(CONFIG_KEY_HELP)
    if key == ".":
        problems.append("must not be '.'")
    elif key == "..":
        problems.append("must not be '..'")
    elif key.startswith(".."):
        problems.append("must not start with '..'")
    return problems


def qualified_name_problems(value: str) -> list[str]:
    """Why `value` is not a qualified name (`IsQualifiedName`): an optional subdomain prefix and '/', then a
    name part of at most 63 characters. Each reason is its own message, as the API server lists them."""
    parts = value.split("/")
    if len(parts) > 2:
        return [
            f"a qualified name {QUALIFIED_NAME_HELP} with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    problems = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            problems.extend(f"prefix part {problem}" for problem in subdomain_problems(prefix))
    name = parts[-1]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    if not QUALIFIED_NAME.fullmatch(name):
        problems.append(f"name part {QUALIFIED_NAME_HELP}")
    return problems


def go_struct(type_name: str, fields: Mapping[str, str]) -> GoSyntax:
    """Go's `%#v` of an internal struct, as the API server prints one as the bad value of an Invalid error.
    `fields` maps each field, in declaration order, to its rendered value (see `go_pointer`)."""
    shown = ", ".join(f"{name}:{value}" for name, value in fields.items())
    return GoSyntax(f"{type_name}{{{shown}}}")


def go_pointer(pointer_type: str, present: bool) -> str:
    """A pointer field in Go's `%#v`: its type and address, or nil. A real address differs in every
    response; a set pointer shows a fixed one here."""
    return f"(*{pointer_type})({'0xc000010000' if present else 'nil'})"


def check_fqdn(errors: FieldErrors, path: str, value: str) -> None:
    """A fully qualified domain name: a subdomain of at least two labels, a trailing dot allowed."""
    if not value:
        errors.required(path)
        return
    name = value.removesuffix(".")
    problems = _name_problems(name, 253, DNS1123_SUBDOMAIN, SUBDOMAIN_HELP)
    if problems:
        errors.invalid(path, name, ",".join(problems))
        return
    labels = name.split(".")
    if len(labels) < 2:
        errors.invalid(path, name, "should be a domain with at least two segments separated by dots")
        return
    for label in labels:
        problems = _name_problems(label, 63, DNS1123_LABEL, LABEL_HELP)
        if problems:
            errors.invalid(path, label, ",".join(problems))
            return


def _name_problems(value: str, longest: int, rule: re.Pattern[str], help_text: str) -> list[str]:
    problems = [f"must be no more than {longest} characters"] if len(value) > longest else []
    return problems + ([] if rule.fullmatch(value) else [help_text])


def check_endpoint_ip(errors: FieldErrors, path: str, value: str, *, family: int) -> None:
    """An address of an IPv4 or IPv6 EndpointSlice: of that family, and not one the API server calls
    special (unspecified, loopback, link-local, link-local multicast)."""
    try:
        if "%" in value:  # Go's parser has no zones
            raise ValueError(value)
        ip = ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            raise ValueError(value)  # Go reads it as IPv4
    except ValueError:
        errors.invalid(path, value, f"must be a valid IPv{family} address")
        return
    for problem in special_ip_problems(ip, value):
        errors.invalid(path, value, problem)


def check_external_ip(errors: FieldErrors, path: str, value: str) -> None:
    """A Service's external IP: an address of either family that is not special."""
    try:
        if "%" in value:
            raise ValueError(value)
        ip = ipaddress.ip_address(value)
    except ValueError:
        errors.invalid(path, value, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")
        return
    for problem in special_ip_problems(ip, value):
        errors.invalid(path, value, problem)


def special_ip_problems(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> list[str]:
    """What the API server says of an endpoint or external IP it refuses (`ValidateNonSpecialIP`)."""
    problems = []
    if ip.is_unspecified:
        problems.append(f"may not be unspecified ({text})")
    if ip.is_loopback:
        problems.append("may not be in the loopback range (127.0.0.0/8, ::1/128)")
    if ip.is_link_local:
        problems.append("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
    packed = ip.packed
    if packed[:3] == bytes((224, 0, 0)) if ip.version == 4 else packed[0] == 0xFF and packed[1] & 0x0F == 0x02:
        problems.append("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")
    return problems


def check_metadata(errors: FieldErrors, obj: Mapping[str, Any], *, name_rule: str) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        errors.required("metadata")
        return
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.required("metadata.name", "name or generateName is required")
    else:
        NAME_RULES[name_rule](errors, "metadata.name", name)
    for kind in ("labels", "annotations"):
        values = meta.get(kind)
        if values is None:
            continue
        if not isinstance(values, dict):
            errors.invalid(f"metadata.{kind}", values, "must be a map of strings")
            continue
        total = 0
        for key, value in values.items():
            problem = label_key_problem(str(key))
            if problem is not None:
                errors.invalid(f"metadata.{kind}", key, problem)
            if not isinstance(value, str):
                errors.invalid(f"metadata.{kind}.{key}", value, "must be a string")
                continue
            total += len(key) + len(value)
            if kind == "labels":
                vproblem = label_value_problem(value)
                if vproblem is not None:
                    errors.invalid("metadata.labels", value, vproblem)
        if kind == "annotations" and total > 256 * 1024:
            errors.invalid("metadata.annotations", "", "Too long: must have at most 262144 bytes")


# -- kinds ---------------------------------------------------------------------------------------


def check_config_data(errors: FieldErrors, obj: Mapping[str, Any], *, base64_values: bool) -> None:
    seen: set[str] = set()
    for section in ("data", "binaryData") if not base64_values else ("data",):
        values = obj.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            errors.invalid(section, values, "must be a map")
            continue
        for key, value in values.items():
            path = f"{section}[{key}]"
            if not CONFIG_KEY.fullmatch(key) or len(key) > 253:
                errors.invalid(path, key, CONFIG_KEY_HELP)
            if key in seen:
                errors.invalid(path, key, "duplicate of key present in data")
            seen.add(key)
            if not isinstance(value, str):
                errors.invalid(path, value, "must be a string")
            elif base64_values or section == "binaryData":
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    errors.invalid(path, value, "illegal base64 data")


def check_port(errors: FieldErrors, path: str, value: Any) -> None:
    """A port number field: an integer 1-65535."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        errors.invalid(path, value, "must be between 1 and 65535, inclusive")


def int_or_zero(value: Any) -> int:
    """An integer field's value as the API server holds it (0 when unset)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
