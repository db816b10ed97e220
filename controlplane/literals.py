"""Numbers and addresses as users write them, read as Kubernetes, Istio and Envoy (all Go) read them.

Python reads more than Go does: `str.isdigit` is true for `²` and for other scripts' digits, `int()`
reads `1_000`, surrounding spaces and Arabic-Indic or fullwidth digits, and raises on a number of
more than 4,300 digits; `ipaddress` keeps an IPv6 zone (`fe80::1%eth0`) that no Kubernetes address
has and that Envoy refuses when its machine lacks the interface. Every place that reads such a value
from a user, a client or a file reads it here.
"""

from __future__ import annotations

import ipaddress
import math
import re

INT64_MAX = 2**63 - 1
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
