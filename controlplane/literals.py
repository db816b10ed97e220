"""Numbers, durations and addresses as users write them, read as Kubernetes, Istio and Envoy (Go) do.

Python reads more than Go does: `str.isdigit` is true for `²` and for other scripts' digits, `int()`
reads `1_000`, surrounding spaces and Arabic-Indic or fullwidth digits, and raises on a number of
more than 4,300 digits; `ipaddress` keeps an IPv6 zone (`fe80::1%eth0`) that no Kubernetes address
has and that Envoy refuses when its machine lacks the interface; and durations had four readers
that took different units, none bounded before a timer, a gRPC option or a protobuf overflowed.
Every place that reads such a value from a user, a client or a file reads it here.
"""

from __future__ import annotations

import ipaddress
import math
import re

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1  # the API's and the protos' int32 fields
_INT64_DIGITS = len(str(INT64_MAX))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NO_ZONE = "a zone (%...) is not part of one"


class ZoneError(ValueError):
    """An IPv6 address or CIDR with a zone (`%eth0`)."""


def ascii_digits(text: str) -> bool:
    """True when `text` is one or more of the digits 0-9 and nothing else."""
    return text.isascii() and text.isdigit()


def natural(text: str) -> int | None:
    """`text` as a number >= 0 when it is ASCII digits only, else None.

    As Go's strconv reads an int64, a number too large for one saturates at `INT64_MAX`: past any
    range a caller checks, and never the 4,300-digit conversion `int()` refuses."""
    if not ascii_digits(text):
        return None
    significant = text.lstrip("0")  # int() counts leading zeros towards its limit too
    if len(significant) > _INT64_DIGITS:
        return INT64_MAX
    return min(int(significant or "0"), INT64_MAX)


def whole_number(text: str) -> int | None:
    """`text` as an integer written in ASCII digits with an optional sign, else None."""
    sign = -1 if text[:1] == "-" else 1
    value = natural(text[1:] if text[:1] in ("-", "+") else text)
    return None if value is None else sign * value


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def decimal(text: str) -> float | None:
    """`text` as a finite number written in ASCII (`10`, `0.5`, `.5`, `1e3`), else None: `float()` also
    reads `nan`, `inf`, `1_0`, other scripts' digits and surrounding spaces, and `1e400` as infinity."""
    if _DECIMAL.fullmatch(text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def boolean(text: str) -> bool | None:
    """`text` as Go's `strconv.ParseBool` reads it (`1`, `t`, `true`, `TRUE`, `True`; `0`, `f`, ...),
    else None: Istio reads its boolean environment variables so."""
    return True if text in _TRUE else False if text in _FALSE else None


# Go's time.ParseDuration: a sign, then numbers with a unit each (`1h30m`, `1.5s`, `300ms`, `2us`).
_NS_PER_UNIT = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,  # micro sign
    "\u03bcs": 10**3,  # Greek mu
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_UNIT = "|".join(sorted(_NS_PER_UNIT, key=len, reverse=True))  # `ms` before `m` and `s`
_DURATION_PART = re.compile(rf"([0-9]*)(?:\.([0-9]*))?({_UNIT})")
_DURATION = re.compile(rf"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:{_UNIT}))+")
_FRACTION_DIGITS = 30  # more than any unit's nanoseconds need; Go ignores what overflows too


def duration(text: str, *, bare_seconds: bool = False) -> float | None:
    """`text` as a Go duration (`1h30m`, `1.5s`, `500ms`, `2us`, `0`; a sign allowed) in seconds, else
    None; with `bare_seconds`, a number without a unit (`90`, `0.5`) is seconds too, as flags take it.

    Like Go, a duration is a whole number of nanoseconds that fits an int64 (at most ~292 years): a
    longer one is not a duration, where Python would carry `9999999999999999999h` on to overflow an
    option, a timer or a protobuf `Duration` that Envoy refuses."""
    if bare_seconds and _DECIMAL.fullmatch(text) and not any(c in text for c in "eE+-"):
        text += "s"
    negative = text[:1] == "-"
    if text.lstrip("+-") == "0":
        return 0.0
    if _DURATION.fullmatch(text) is None:
        return None
    total = 0
    for whole, fraction, unit in _DURATION_PART.findall(text):
        per_unit = _NS_PER_UNIT[unit]
        if len(whole.lstrip("0")) > _INT64_DIGITS:
            return None
        digits = fraction[:_FRACTION_DIGITS]
        total += int(whole or "0") * per_unit + int(digits or "0") * per_unit // 10 ** len(digits)
    if total > INT64_MAX + negative:  # Go's limit: -2^63 ns fits, 2^63 ns does not
        return None
    return (-total if negative else total) / 1e9


def ip_address(text: str) -> IPAddress:
    """`text` as an IPv4 or IPv6 address without a zone; ValueError (ZoneError for a zone) naming it."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ZoneError(f"{text!r} is not an IP address: {NO_ZONE}")
    return address


def ip_network(text: str) -> IPNetwork:
    """`text` as a CIDR (`10.0.0.0/8`, `fd00::/8`; host bits allowed), without a zone: Python keeps
    one (`fe80::%eth0/64`) or drops it without a word (`fe80::1%eth0/64`), Go refuses both."""
    if "/" not in text:
        raise ValueError(f"{text!r} is not a CIDR (write it with a prefix length, e.g. {text}/32)")
    if "%" in text:
        raise ZoneError(f"{text!r} is not a CIDR: {NO_ZONE}")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR (examples: 10.0.0.0/8, fd00::/8)") from None


# Kubernetes' object names (apimachinery's validation): lowercase DNS-1123 labels (namespaces),
# DNS-1035 labels (Services) and DNS-1123 subdomains (service accounts, pods, ConfigMaps, ...).
K8S_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
K8S_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
K8S_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253
LABEL_RULE = (
    "a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit; at most 63)"
)
DNS1035_RULE = (
    "a DNS-1035 label (lowercase letters, digits and '-', starting with a letter and ending with a letter or digit; "
    "at most 63)"
)
SUBDOMAIN_RULE = (
    "a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', each dot-separated part starting and ending "
    "with a letter or digit; at most 253)"
)

_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


def host_port(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` as Istio reads a proxy's discovery address (Go's `net.SplitHostPort`):
    the host an IP address without a zone or a DNS name, the port 1-65535. ValueError saying what is
    wrong, to follow `text` as the caller names it ("has no port: ...")."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError("has no port: write it as host:port, e.g. istiod.istio-system.svc:15012")
    if ":" in host and not host.startswith("["):
        raise ValueError("needs brackets around an IPv6 address, e.g. [fd00::1]:15012")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("is not host:port: write it as host:port, e.g. istiod.istio-system.svc:15012")
        host = host[1:-1]
    port = natural(port_text)
    if port is None or not 0 < port < 65536:
        raise ValueError(f"has port {port_text!r}, not one of 1-65535")
    if DNS_NAME.fullmatch(host) is None:
        try:
            ip_address(host)
        except ValueError:
            raise ValueError(f"has host {host!r}, neither an IP address nor a DNS name") from None
    return host, port
