"""The Kubernetes name rules, in one place: every name meshplane takes from outside is checked here.

Which rule applies is Kubernetes' own choice per object: a Namespace name is a DNS-1123 label, a
Service name a DNS-1035 label, a ServiceAccount, Pod, ConfigMap or EndpointSlice name a DNS-1123
subdomain. Every check matches the whole string (`re.fullmatch`), so a trailing newline, a leading
'-', an uppercase letter or a non-ASCII look-alike is refused, never silently accepted.

Each check returns the value unchanged or raises `ObjectError` whose `field` is the name of the
field checked and whose message quotes the value and states the rule.
"""

from __future__ import annotations

import re
from typing import Any

from controlplane.model.fields import ObjectError

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

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


def _check(value: Any, field: str, pattern: re.Pattern[str], limit: int, rule: str) -> str:
    if not isinstance(value, str):
        raise ObjectError(field, f"must be a string, got {type(value).__name__}")
    if len(value) > limit or pattern.fullmatch(value) is None:
        shown = value if len(value) <= 80 else f"{value[:80]}..."
        raise ObjectError(field, f"{shown!r} is not {rule}")
    return value


def dns1123_label(value: Any, *, field: str) -> str:
    """`value` if it is a DNS-1123 label (namespace names); else ObjectError naming `field`."""
    return _check(value, field, _LABEL, LABEL_MAX, LABEL_RULE)


def dns1035_label(value: Any, *, field: str) -> str:
    """`value` if it is a DNS-1035 label (Service names: a DNS-1123 label starting with a letter)."""
    return _check(value, field, _DNS1035, LABEL_MAX, DNS1035_RULE)


def dns1123_subdomain(value: Any, *, field: str) -> str:
    """`value` if it is a DNS-1123 subdomain (ServiceAccount, Pod, ConfigMap, EndpointSlice names)."""
    return _check(value, field, _SUBDOMAIN, SUBDOMAIN_MAX, SUBDOMAIN_RULE)


def namespace_name(value: Any, *, field: str = "namespace") -> str:
    """A Namespace name: a DNS-1123 label."""
    return dns1123_label(value, field=field)


def service_account_name(value: Any, *, field: str = "service account") -> str:
    """A ServiceAccount name: a DNS-1123 subdomain (Kubernetes' `ValidateServiceAccountName`)."""
    return dns1123_subdomain(value, field=field)
