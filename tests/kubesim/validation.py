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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
LABEL_VALUE_HELP = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
    "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
IP_HELP = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
CIDR_HELP = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
ENV_VAR_NAME_HELP = "a valid environment variable name must consist only of printable ASCII characters other than '='"
DNS1035_HELP = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
    "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)


# Go's unicode.IsSpace: Python's str.strip() also strips \x1c-\x1f, which Go keeps.
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def go_len(text: str) -> int:
    """Go's `len` of a string read from JSON: its UTF-8 bytes. A lone surrogate, which Go's decoder reads as
    U+FFFD, is three bytes either way."""
    return len(text.encode("utf-8", "surrogatepass"))


# The one character Python lowercases to more than one (SpecialCasing's U+0130 -> "i\u0307"), with the one
# character of its simple mapping, which is all Go's `unicode.ToLower` applies.
_GO_LOWER_SPECIAL = {"\u0130": "i"}


def go_lower(value: str) -> str:
    """`strings.ToLower`: every character replaced by its simple lowercase mapping, one for one and regardless
    of its neighbours. Python's `str.lower` differs in two ways, both avoided here: U+0130 becomes two
    characters, and a capital sigma at the end of a word becomes the final sigma."""
    return "".join(_GO_LOWER_SPECIAL.get(char) or char.lower() for char in value)


def go_trim_space(value: str) -> str:
    """`strings.TrimSpace`: `value` without the leading and trailing white space Go's Unicode tables name."""
    return value.strip(GO_SPACE)


def strict_json(data: str | bytes, *, number: Callable[[str], float] = float) -> Any:
    """JSON as the API server's decoder reads it: no `NaN`/`Infinity`, no number beyond a float's range
    (Python's `json.loads` takes both, the second as infinity). `number` makes a float of a number's text."""
    return json.loads(data, parse_constant=_not_json, parse_float=lambda text: _finite(text, number))


def _not_json(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _finite(text: str, number: Callable[[str], float]) -> float:
    value = number(text)
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

    def too_long(self, path: str, limit: int) -> None:
        """A value over `limit` bytes; the value itself is not shown (`field.TooLong`)."""
        self.causes.append(Cause("FieldValueTooLong", path, f"Too long: may not be more than {limit} bytes"))

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


def too_long_problems(value: str, longest: int) -> list[str]:
    """The one message of a value longer than `longest` (`MaxLenError`). The limit is in bytes, as Go's `len`
    counts, though the message says characters."""
    return [f"must be no more than {longest} characters"] if go_len(value) > longest else []


def check_subdomain(errors: FieldErrors, path: str, value: str) -> None:
    for problem in subdomain_problems(value):
        errors.invalid(path, value, problem)


def subdomain_problems(value: str) -> list[str]:
    """Why `value` is not a DNS-1123 subdomain (`IsDNS1123Subdomain`), each reason a message."""
    return _name_problems(value, 253, DNS1123_SUBDOMAIN, SUBDOMAIN_HELP)


def check_label(errors: FieldErrors, path: str, value: str) -> None:
    for problem in dns_label_problems(value):
        errors.invalid(path, value, problem)


def dns_label_problems(value: str) -> list[str]:
    """Why `value` is not a DNS-1123 label (`IsDNS1123Label`): its length, then its characters; a valid
    subdomain is refused for its dots alone."""
    problems = too_long_problems(value, 63)
    if not DNS1123_LABEL.fullmatch(value):
        problems.append("must not contain dots" if DNS1123_SUBDOMAIN.fullmatch(value) else LABEL_HELP)
    return problems


def check_dns1035(errors: FieldErrors, path: str, value: str) -> None:
    for problem in dns1035_problems(value):
        errors.invalid(path, value, problem)


def dns1035_problems(value: str) -> list[str]:
    """Why `value` is not a DNS-1035 label (`IsDNS1035Label`): its length, then its characters."""
    return _name_problems(value, 63, DNS1035_LABEL, DNS1035_HELP)


def check_fully_qualified_name(errors: FieldErrors, path: str, value: str) -> None:
    """A name such as a webhook's (`IsFullyQualifiedName`): a subdomain of at least three labels, no trailing
    dot. Only the first thing wrong is reported; a subdomain's problems share one cause, joined by ','."""
    if not value:
        errors.required(path)
        return
    problems = subdomain_problems(value)
    if problems:
        errors.invalid(path, value, ",".join(problems))
    elif len(value.split(".")) < 3:
        errors.invalid(path, value, "should be a domain with at least three segments separated by dots")


def path_segment_problems(value: str) -> list[str]:
    """Why `value` cannot be a name in a URL path or a storage key (`IsValidPathSegmentName`): '.' and '..'
    are refused for that alone; otherwise each of '/' and '%' it contains is a reason. Any other character,
    and any length, is fine."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return path_segment_prefix_problems(value)


def path_segment_prefix_problems(value: str) -> list[str]:
    """Why `value` cannot start a path-segment name (`IsValidPathSegmentPrefix`): only the characters count,
    as a suffix follows."""
    return [f"may not contain '{char}'" for char in ("/", "%") if char in value]


def mask_trailing_dash(prefix: str) -> str:
    """A generateName as the name rules check it in prefix mode (`maskTrailingDash`): one of more than one
    byte that ends in '-' loses its last two bytes and gains an 'a'. Go cuts bytes: what is left of a
    character cut in two is kept as that many '_', which fail every name rule as the stray bytes do."""
    if go_len(prefix) <= 1 or not prefix.endswith("-"):
        return prefix
    cut = prefix[-2]
    return prefix[:-2] + "_" * (go_len(cut) - 1) + "a"


# What each name rule says of a name, and of a generateName (prefix mode). The DNS rules check a prefix as
# `maskTrailingDash` leaves it; "path_segment" is `ValidatePathSegmentName` (a kind whose strategy leaves its
# metadata to the registry's generic check), "rbac" `ValidateRBACName`, which ignores prefix mode.
NAME_RULE_PROBLEMS: dict[str, Callable[[str], list[str]]] = {
    "subdomain": subdomain_problems,
    "label": dns_label_problems,
    "dns1035": dns1035_problems,
    "path_segment": path_segment_problems,
    "rbac": path_segment_problems,
}
NAME_RULE_PREFIX_PROBLEMS: dict[str, Callable[[str], list[str]]] = {
    "subdomain": lambda prefix: subdomain_problems(mask_trailing_dash(prefix)),
    "label": lambda prefix: dns_label_problems(mask_trailing_dash(prefix)),
    "dns1035": lambda prefix: dns1035_problems(mask_trailing_dash(prefix)),
    "path_segment": path_segment_prefix_problems,
    "rbac": path_segment_problems,
}


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
    problems = too_long_problems(key, 253)
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
    name part of at most 63 bytes. Each reason is its own message, as the API server lists them."""
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
    else:
        problems.extend(f"name part {problem}" for problem in too_long_problems(name, 63))
    if not QUALIFIED_NAME.fullmatch(name):
        problems.append(f"name part {QUALIFIED_NAME_HELP}")
    return problems


def label_value_problems(value: str) -> list[str]:
    """Why `value` is not a label value (`IsValidLabelValue`): at most 63 bytes, empty or a qualified name's
    name part. Each reason is its own message."""
    problems = too_long_problems(value, 63)
    if value and not QUALIFIED_NAME.fullmatch(value):
        problems.append(LABEL_VALUE_HELP)
    return problems


def check_labels(errors: FieldErrors, path: str, labels: Mapping[Any, Any]) -> None:
    """A label map (`ValidateLabels`): each key a qualified name, each value a label value, every problem
    its own cause naming the map, with the key or the value as the bad value."""
    for key, value in labels.items():
        for problem in qualified_name_problems(str(key)):
            errors.invalid(path, key, problem)
        if not isinstance(value, str):
            errors.invalid(f"{path}.{key}", value, "must be a string")
            continue
        for problem in label_value_problems(value):
            errors.invalid(path, value, problem)


ANNOTATIONS_SIZE_LIMIT = 256 * 1024  # bytes (`TotalAnnotationSizeLimitB`)


def check_annotations(errors: FieldErrors, path: str, annotations: Mapping[Any, Any]) -> None:
    """An annotation map (`ValidateAnnotations`): each key a qualified name once lowercased (case does not
    matter in an annotation key), and at most 256 KiB of keys and values together, in bytes."""
    total = 0
    for key, value in annotations.items():
        for problem in qualified_name_problems(go_lower(str(key))):
            errors.invalid(path, key, problem)
        if not isinstance(value, str):
            errors.invalid(f"{path}.{key}", value, "must be a string")
            continue
        total += go_len(str(key)) + go_len(value)
    if total > ANNOTATIONS_SIZE_LIMIT:
        errors.too_long(path, ANNOTATIONS_SIZE_LIMIT)


def check_label_selector(
    errors: FieldErrors, path: str, selector: Any, *, allow_invalid_label_value: bool = False
) -> None:
    """A `metav1.LabelSelector` (`ValidateLabelSelector`): its matchLabels as labels, then each expression's
    operator (with whether it takes values), its key (a qualified name) and, unless `allow_invalid_label_value`
    (an update of an object already holding such a value), each of its values as a label value."""
    if not isinstance(selector, dict):
        return
    match_labels = selector.get("matchLabels")
    if isinstance(match_labels, dict):
        check_labels(errors, f"{path}.matchLabels", match_labels)
    expressions = selector.get("matchExpressions")
    for i, expression in enumerate(expressions if isinstance(expressions, list) else []):
        here = f"{path}.matchExpressions[{i}]"
        requirement: Mapping[str, Any] = expression if isinstance(expression, dict) else {}
        operator = requirement.get("operator", "")
        given = requirement.get("values")
        values: list[Any] = given if isinstance(given, list) else []
        if operator in ("In", "NotIn"):
            if not values:
                errors.required(f"{here}.values", "must be specified when `operator` is 'In' or 'NotIn'")
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                errors.forbidden(f"{here}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
        else:
            errors.invalid(f"{here}.operator", operator, "not a valid selector operator")
        key = requirement.get("key", "")
        for problem in qualified_name_problems(str(key)):
            errors.invalid(f"{here}.key", key, problem)
        if allow_invalid_label_value:
            continue
        for j, value in enumerate(values):
            for problem in label_value_problems(str(value)):
                errors.invalid(f"{here}.values[{j}]", value, problem)


def label_selector_invalid(selector: Any) -> bool:
    """Whether `metav1.LabelSelectorAsSelector` fails on `selector`: exactly when `ValidateLabelSelector`, with no
    allowance, finds something (`NewRequirement` checks the same keys, values and operators)."""
    found = FieldErrors()
    check_label_selector(found, "", selector)
    return bool(found)


def go_string_slice(values: Any, element_type: str = "string") -> GoSyntax:
    """Go's `%#v` of a string slice, how a 1.32 API server prints a list as the bad value of an error
    (`[]string{"10.96.0.5", "fd00::5"}`; a missing list is a nil slice). Named element types show their name
    (`[]core.IPFamily{"IPv4"}`)."""
    if values is None:
        return GoSyntax(f"[]{element_type}(nil)")
    items = values if isinstance(values, list) else [values]
    return GoSyntax(f"[]{element_type}{{{', '.join(go_string(str(v)) for v in items)}}}")


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
        problems = dns_label_problems(label)
        if problems:
            errors.invalid(path, label, ",".join(problems))
            return


def _name_problems(value: str, longest: int, rule: re.Pattern[str], help_text: str) -> list[str]:
    return too_long_problems(value, longest) + ([] if rule.fullmatch(value) else [help_text])


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
    """A Service's external IP: an address of either family, read as the 1.32 server reads it (`IsValidIP`,
    leading zeros allowed), that is not special (`ValidateNonSpecialIP`)."""
    ip = parse_ip_sloppy(value)
    if ip is None:
        errors.invalid(path, value, IP_HELP)
        return
    for problem in special_ip_problems(ip, value):
        errors.invalid(path, value, problem)


def parse_ip_sloppy(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address as Go's pre-1.17 parser reads it (`ParseIPSloppy`, which a 1.32 server validates with):
    IPv4 octets may have leading zeros, an IPv4-mapped IPv6 address is the IPv4 address, no zone. None
    when it is not an address. Whichever of '.' and ':' comes first decides the family, as in Go."""
    dot, colon = text.find("."), text.find(":")
    if colon == -1 and dot == -1:
        return None
    if colon == -1 or -1 < dot < colon:
        return _parse_ipv4_sloppy(text)
    head, sep, last = text.rpartition(":")
    if "." in last:
        embedded = _parse_ipv4_sloppy(last)
        if embedded is None:
            return None
        text = f"{head}{sep}{embedded}"
    if "%" in text:  # Go's parser has no zones
        return None
    try:
        ip = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip


def _parse_ipv4_sloppy(text: str) -> ipaddress.IPv4Address | None:
    """Four dot-separated decimal octets of at most 255 each, leading zeros allowed (Go's `parseIPv4`)."""
    octets = text.split(".")
    if len(octets) != 4 or not all(o.isascii() and o.isdigit() and int(o) <= 255 for o in octets):
        return None
    return ipaddress.IPv4Address(".".join(str(int(o)) for o in octets))


def parse_cidr_sloppy(text: str) -> bool:
    """Whether `text` is a CIDR as `ParseCIDRSloppy` reads it: an address (read as `parse_ip_sloppy` reads
    one, but not IPv4-mapped-as-IPv4 for the prefix length) and a decimal prefix length no longer than it."""
    address, slash, length = text.partition("/")
    ip = parse_ip_sloppy(address)
    if not slash or ip is None or not (length.isascii() and length.isdigit()):
        return False
    bits = 32 if ":" not in address else 128
    return int(length) <= bits


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


def check_metadata(
    errors: FieldErrors,
    obj: Mapping[str, Any],
    *,
    name_rule: str,
    name_problems: Sequence[str] = (),
    generate_name_problems: Sequence[str] | None = None,
) -> None:
    """The object's metadata (`ValidateObjectMeta`): on create (`generate_name_problems` given) a non-empty
    generateName by `name_rule` in prefix mode, then each of the kind's own `generate_name_problems`; its
    name by `name_rule`, then each of the kind's own `name_problems` with it (what the kind's name function
    adds); then its labels and annotations."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        errors.required("metadata")
        return
    prefix = meta.get("generateName")
    if generate_name_problems is not None and isinstance(prefix, str) and prefix:
        for problem in [*NAME_RULE_PREFIX_PROBLEMS[name_rule](prefix), *generate_name_problems]:
            errors.invalid("metadata.generateName", prefix, problem)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.required("metadata.name", "name or generateName is required")
    else:
        for problem in [*NAME_RULE_PROBLEMS[name_rule](name), *name_problems]:
            errors.invalid("metadata.name", name, problem)
    check_labels_and_annotations(errors, meta)


def check_labels_and_annotations(errors: FieldErrors, meta: Mapping[str, Any]) -> None:
    """The metadata's labels, then its annotations: what `ValidateObjectMetaUpdate` checks of the new metadata
    besides the fields that may not change."""
    for kind, check in (("labels", check_labels), ("annotations", check_annotations)):
        values = meta.get(kind)
        if values is None:
            continue
        if not isinstance(values, dict):
            errors.invalid(f"metadata.{kind}", values, "must be a map of strings")
            continue
        check(errors, f"metadata.{kind}", values)


# -- kinds ---------------------------------------------------------------------------------------


def check_config_data(errors: FieldErrors, obj: Mapping[str, Any], *, base64_values: bool) -> None:
    """A ConfigMap's `data` and `binaryData` (a Secret's `data`, base64): every key an `IsConfigMapKey`, and
    a key of both maps reported on `data` (`ValidateConfigMap`)."""
    binary = obj.get("binaryData") if not base64_values else None
    for section in ("data", "binaryData") if not base64_values else ("data",):
        values = obj.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            errors.invalid(section, values, "must be a map")
            continue
        for key, value in values.items():
            path = f"{section}[{key}]"
            for problem in config_key_problems(key):
                errors.invalid(path, key, problem)
            if section == "data" and isinstance(binary, dict) and key in binary:
                errors.invalid(path, key, "duplicate of key present in binaryData")
            if value is None and (base64_values or section == "binaryData"):
                continue  # a nil []byte, which the decoder leaves for a null
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


def check_unique_name(
    errors: FieldErrors, path: str, name: Any, seen: set[str], rule: Callable[[FieldErrors, str, str], None]
) -> None:
    """A required name that follows `rule` and is not among `seen` (the names before it in its list)."""
    if not name:
        errors.required(path)
        return
    rule(errors, path, str(name))
    if name in seen:
        errors.duplicate(path, name)
    seen.add(str(name))
