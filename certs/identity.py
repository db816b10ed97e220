"""SPIFFE identities of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`."""

from __future__ import annotations

import re

# Kubernetes names: a namespace is a DNS-1123 label, a service account a DNS-1123 subdomain.
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


def check_namespace(value: str, *, field: str = "namespace") -> str:
    """Return `value` if it is a valid Kubernetes namespace name, else raise ValueError naming `field`."""
    if not _LABEL.match(value):
        raise ValueError(f"{field}: {value!r} is not a valid namespace name (lowercase DNS label, at most 63 chars)")
    return value


def check_service_account(value: str, *, field: str = "service account") -> str:
    """Return `value` if it is a valid service account name, else raise ValueError naming `field`."""
    if not _SUBDOMAIN.match(value):
        raise ValueError(f"{field}: {value!r} is not a valid service account name (lowercase DNS subdomain)")
    return value


def spiffe_id(*, trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def from_service_account_username(username: str) -> tuple[str, str]:
    """`system:serviceaccount:<ns>:<sa>` -> (ns, sa); ValueError for any other username."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        raise ValueError(f"username {username!r} is not a service account (system:serviceaccount:<ns>:<sa>)")
    parts = username[len(SERVICE_ACCOUNT_PREFIX) :].split(":")
    if len(parts) != 2:
        raise ValueError(f"username {username!r} is not system:serviceaccount:<ns>:<sa>")
    return check_namespace(parts[0]), check_service_account(parts[1])
