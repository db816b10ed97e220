"""What a container runs: its command line (images mapped to local programs) and its environment.

Images are recognised by the last path component of the image name, tag and digest ignored:
- `pilot` (istiod): entrypoint `meshplane` (the chart's args begin with `serve`);
- `proxyv2`: entrypoint `meshplane agent` (args `proxy sidecar ...`), except args beginning with
  `istio-iptables`, which run `meshplane iptables ...` (the injected `istio-init`); a `command` beginning
  with `pilot-agent` runs `meshplane agent ...` (Istio's name, as the image's console script does);
- any other image with a `command` runs that command with the machine's programs (`sh`, `sleep` ...);
- any other image without one runs the stand-in app (`tests.kubesim.standin`) on the container's declared
  ports (gRPC where the port name starts with `grpc`).
`meshplane` is the one beside the running Python interpreter, whose directory also comes first on PATH.

Environment, as the kubelet builds it: `HOSTNAME`, `KUBERNETES_SERVICE_*`/`KUBERNETES_PORT*`, then `envFrom`,
then `env` in order, each value with `$(VAR)` expanded against what is defined before it (`$$` escapes);
command and args are expanded against the whole environment. A reference that cannot be resolved (a missing
ConfigMap or key that is not optional, an unsupported fieldPath) raises `ConfigError`, whose message the
kubelet reports as the `CreateContainerConfigError` of the container.
"""

from __future__ import annotations

import base64
import math
import os
import pathlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

Obj = Mapping[str, Any]
Lookup = Callable[[str, str], Obj | None]  # (namespace, name) -> object or None

BIN_DIR = pathlib.Path(sys.executable).parent
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
API_SERVICE_IP = "10.96.0.1"

_SUFFIXES = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?)$")
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ConfigError(Exception):
    """The container cannot be configured (reported as CreateContainerConfigError with this message)."""


def parse_quantity(text: Any) -> Fraction:
    """A Kubernetes resource quantity (`100m`, `128Mi`, `1e3`, `2`) as an exact number; ValueError if invalid."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(
            f"quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}"
        )
    number = Fraction(match.group(1))
    if match.group(2):
        return number * Fraction(10) ** int(match.group(2)[1:])
    return number * _SUFFIXES[match.group(3) or ""]


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, unknown ones kept verbatim, `$$` is `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return variables[name] if name in variables else match.group(0)

    return _VAR.sub(replace, text)


def image_name(image: str) -> str:
    """The image's last path component, tag and digest dropped (`docker.io/istio/proxyv2:1.2`: proxyv2)."""
    tail = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return tail.split(":", 1)[0]


def _standin(container: Obj) -> list[str]:
    argv = [sys.executable, "-m", "tests.kubesim.standin", "--name", str(container.get("name", "standin"))]
    ports = [p for p in container.get("ports") or [] if str(p.get("protocol", "TCP")) == "TCP"]
    for port in ports:
        flag = "--grpc" if str(port.get("name", "")).startswith("grpc") else "--http"
        argv += [flag, str(port["containerPort"])]
    if not ports:
        argv += ["--http", "0"]
    return argv


def command_line(container: Obj, env: Mapping[str, str]) -> list[str]:
    """The argv the container runs (see the module docstring), `$(VAR)` expanded against `env`."""
    command = [expand(str(c), env) for c in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    meshplane = str(BIN_DIR / "meshplane")
    kind = image_name(str(container.get("image", "")))
    if kind == "proxyv2" and command[:1] == ["pilot-agent"]:
        return [meshplane, "agent", *command[1:], *args]
    if command:
        return [*command, *args]
    if kind == "pilot":
        return [meshplane, *args]
    if kind == "proxyv2":
        if args[:1] == ["istio-iptables"]:
            return [meshplane, "iptables", *args[1:]]
        return [meshplane, "agent", *args]
    return [*_standin(container), *args]


@dataclass(frozen=True, kw_only=True)
class PodFacts:
    """What the downward API can tell a container about its pod."""

    pod: Obj
    pod_ip: str
    host_ip: str

    def field(self, path: str) -> str:
        """The value of a downward-API fieldPath; ConfigError for an unsupported one."""
        meta = self.pod.get("metadata") or {}
        spec = self.pod.get("spec") or {}
        simple = {
            "metadata.name": meta.get("name", ""),
            "metadata.namespace": meta.get("namespace", ""),
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            return format_map(meta.get(path.split(".")[1]) or {})
        raise ConfigError(
            f'unsupported fieldPath "{path}" (supported: {", ".join(sorted(simple))}, labels, annotations)'
        )


def format_map(values: Mapping[str, Any]) -> str:
    """Labels or annotations as the kubelet writes them in a downward-API file: sorted `key="value"` lines."""
    return "\n".join(f"{k}={_go_quote(str(v))}" for k, v in sorted(values.items()))


def _go_quote(value: str) -> str:
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def node_allocatable() -> dict[str, Fraction]:
    """The node's CPU (cores) and memory (bytes): what limits default to in the downward API."""
    memory = Fraction(0)
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = Fraction(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return {"cpu": Fraction(os.cpu_count() or 1), "memory": memory}


def resource_value(container: Obj, ref: Obj) -> str:
    """A resourceFieldRef in the kubelet's units: ceil(quantity / divisor); limits default to the node's."""
    resource = str(ref.get("resource", ""))
    section, _, name = resource.partition(".")
    if section not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise ConfigError(f'unsupported resource "{resource}" (want limits.cpu, limits.memory, requests.cpu ...)')
    resources = container.get("resources") or {}
    raw = (resources.get(section) or {}).get(name)
    if raw is None and section == "requests":
        raw = (resources.get("limits") or {}).get(name)
    try:
        # a zero divisor is the unset one ("0" is how the API server writes it back): 1, as in the kubelet's
        # `ExtractContainerResourceValue`
        divisor = parse_quantity(ref.get("divisor") or "1") or Fraction(1)
        value = parse_quantity(raw) if raw is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if value is None:
        value = node_allocatable().get(name, Fraction(0)) if section == "limits" else Fraction(0)
    if divisor <= 0:
        raise ConfigError(f'resourceFieldRef "{resource}": divisor must be positive')
    return str(math.ceil(value / divisor))


def _from_source(kind: str, ref: Obj, lookup: Lookup, namespace: str) -> tuple[Obj | None, bool]:
    name = str(ref.get("name", ""))
    optional = bool(ref.get("optional", False))
    obj = lookup(namespace, name)
    if obj is None and not optional:
        raise ConfigError(f'{kind} "{name}" not found')
    return obj, optional


def _data(kind: str, obj: Obj) -> dict[str, str]:
    if kind == "secret":
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
    return {k: str(v) for k, v in (obj.get("data") or {}).items()}


def _key_ref(kind: str, ref: Obj, lookup: Lookup, namespace: str) -> str | None:
    obj, optional = _from_source(kind, ref, lookup, namespace)
    if obj is None:
        return None
    data = _data(kind, obj)
    key = str(ref.get("key", ""))
    if key not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {key} in {kind.capitalize()} {namespace}/{ref.get('name')}")
    return data[key]


def container_env(
    container: Obj,
    facts: PodFacts,
    *,
    configmaps: Lookup,
    secrets: Lookup,
    api_service: tuple[str, int] = (API_SERVICE_IP, 443),
) -> dict[str, str]:
    """The container's environment (see the module docstring); ConfigError when a reference cannot be resolved."""
    meta = facts.pod.get("metadata") or {}
    namespace = str(meta.get("namespace", ""))
    host, port = api_service
    env: dict[str, str] = {
        "PATH": f"{BIN_DIR}:{SYSTEM_PATH}",
        "HOME": "/",  # what the container runtime sets for a user without a home in the image's passwd
        "HOSTNAME": str((facts.pod.get("spec") or {}).get("hostname") or meta.get("name", "")),
        "PYTHONPATH": str(REPO_ROOT),
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            if key in source:
                obj, _ = _from_source(kind, source[key], configmaps if kind == "configmap" else secrets, namespace)
                for name, value in _data(kind, obj or {}).items():
                    env[prefix + name] = value
    for var in container.get("env") or []:
        name = str(var["name"])
        resolved = _env_value(
            var, container, facts, configmaps=configmaps, secrets=secrets, namespace=namespace, env=env
        )
        if resolved is not None:
            env[name] = resolved
    return env


def _env_value(
    var: Obj,
    container: Obj,
    facts: PodFacts,
    *,
    configmaps: Lookup,
    secrets: Lookup,
    namespace: str,
    env: Mapping[str, str],
) -> str | None:
    if "valueFrom" not in var:
        return expand(str(var.get("value", "")), env)
    source = var["valueFrom"] or {}
    if "fieldRef" in source:
        return facts.field(str(source["fieldRef"].get("fieldPath", "")))
    if "resourceFieldRef" in source:
        return resource_value(container, source["resourceFieldRef"])
    if "configMapKeyRef" in source:
        return _key_ref("configmap", source["configMapKeyRef"], configmaps, namespace)
    if "secretKeyRef" in source:
        return _key_ref("secret", source["secretKeyRef"], secrets, namespace)
    raise ConfigError(f"env {var.get('name')}: valueFrom has no supported source")


def run_as(pod: Obj, container: Obj) -> tuple[int | None, int | None, Sequence[int]]:
    """(uid, gid, supplemental groups) the container runs as: its securityContext over the pod's; None = root.

    ConfigError when runAsNonRoot is asked and the container would run as root.
    """
    pod_ctx = (pod.get("spec") or {}).get("securityContext") or {}
    ctx = container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return ctx.get(key, pod_ctx.get(key))

    uid, gid = pick("runAsUser"), pick("runAsGroup")
    if pick("runAsNonRoot") and not uid:
        raise ConfigError("container has runAsNonRoot and image will run as root")
    groups = [int(g) for g in pod_ctx.get("supplementalGroups") or []]
    if pod_ctx.get("fsGroup") is not None:
        groups.append(int(pod_ctx["fsGroup"]))
    return (None if uid is None else int(uid)), (None if gid is None else int(gid)), groups
