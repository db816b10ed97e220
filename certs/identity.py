"""SPIFFE identities of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

The namespace and service account names follow Kubernetes' rules (`controlplane.model.names`): a
namespace is a DNS-1123 label, a service account a DNS-1123 subdomain. Every way an identity enters
the CA (a token's subject, a client certificate's URI SAN, a CSR's URI SAN) goes through here, and
every failure raises ValueError naming the field and the rule.
"""

from __future__ import annotations

import re

from controlplane.model import names

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
SPIFFE_SCHEME = "spiffe://"
# SPIFFE trust domain names: lowercase letters, digits, '.', '-' and '_' (SPIFFE-ID spec, section 2.1).
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")


def check_namespace(value: str, *, field: str = "namespace") -> str:
    """Return `value` if it is a valid Kubernetes namespace name, else raise ValueError naming `field`."""
    return names.namespace_name(value, field=field)


def check_service_account(value: str, *, field: str = "service account") -> str:
    """Return `value` if it is a valid service account name, else raise ValueError naming `field`."""
    return names.service_account_name(value, field=field)


def spiffe_id(*, trust_domain: str, namespace: str, service_account: str) -> str:
    return f"{SPIFFE_SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"


def parse_spiffe_id(uri: str, *, field: str) -> tuple[str, str, str]:
    """`spiffe://<td>/ns/<ns>/sa/<sa>` -> (td, ns, sa); ValueError naming `field` for any other shape or bad name."""
    shape = "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    if not uri.startswith(SPIFFE_SCHEME):
        raise ValueError(f"{field}: {uri!r} is not {shape}")
    parts = uri[len(SPIFFE_SCHEME) :].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        raise ValueError(f"{field}: {uri!r} is not {shape}")
    trust_domain, namespace, service_account = parts[0], parts[2], parts[4]
    if _TRUST_DOMAIN.fullmatch(trust_domain) is None:
        raise ValueError(
            f"{field}: trust domain {trust_domain!r} of {uri!r} is not a SPIFFE trust domain "
            "(lowercase letters, digits, '.', '-' and '_')"
        )
    check_namespace(namespace, field=f"{field} namespace")
    check_service_account(service_account, field=f"{field} service account")
    return trust_domain, namespace, service_account


def from_service_account_username(username: str) -> tuple[str, str]:
    """`system:serviceaccount:<ns>:<sa>` -> (ns, sa); ValueError for any other username or a bad name."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        raise ValueError(f"username {username!r} is not a service account (system:serviceaccount:<ns>:<sa>)")
    parts = username[len(SERVICE_ACCOUNT_PREFIX) :].split(":")
    if len(parts) != 2:
        raise ValueError(f"username {username!r} is not system:serviceaccount:<ns>:<sa>")
    return check_namespace(parts[0], field="namespace"), check_service_account(parts[1], field="service account")
