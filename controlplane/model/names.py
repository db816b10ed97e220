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

from controlplane.literals import (
    DNS1035_RULE,
    K8S_DNS1035,
    K8S_LABEL,
    K8S_SUBDOMAIN,
    LABEL_MAX,
    LABEL_RULE,
    SUBDOMAIN_MAX,
    SUBDOMAIN_RULE,
)
from controlplane.model.fields import ObjectError


def _check(value: Any, field: str, pattern: re.Pattern[str], limit: int, rule: str) -> str:
    if not isinstance(value, str):
        raise ObjectError(field, f"must be a string, got {type(value).__name__}")
    if len(value) > limit or pattern.fullmatch(value) is None:
        shown = value if len(value) <= 80 else f"{value[:80]}..."
        raise ObjectError(field, f"{shown!r} is not {rule}")
    return value


def dns1123_label(value: Any, *, field: str) -> str:
    """`value` if it is a DNS-1123 label (namespace names); else ObjectError naming `field`."""
    return _check(value, field, K8S_LABEL, LABEL_MAX, LABEL_RULE)


def dns1035_label(value: Any, *, field: str) -> str:
    """`value` if it is a DNS-1035 label (Service names: a DNS-1123 label starting with a letter)."""
    return _check(value, field, K8S_DNS1035, LABEL_MAX, DNS1035_RULE)


def dns1123_subdomain(value: Any, *, field: str) -> str:
    """`value` if it is a DNS-1123 subdomain (ServiceAccount, Pod, ConfigMap, EndpointSlice names)."""
    return _check(value, field, K8S_SUBDOMAIN, SUBDOMAIN_MAX, SUBDOMAIN_RULE)


def namespace_name(value: Any, *, field: str = "namespace") -> str:
    """A Namespace name: a DNS-1123 label."""
    return dns1123_label(value, field=field)


def service_account_name(value: Any, *, field: str = "service account") -> str:
    """A ServiceAccount name: a DNS-1123 subdomain (Kubernetes' `ValidateServiceAccountName`)."""
    return dns1123_subdomain(value, field=field)
