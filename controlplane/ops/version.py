"""`meshplane version`: the client's version, the control-plane revisions running, and the proxies on each.

    meshplane version [--short] [-o json|yaml] [--revision R] [--istio-namespace NS]
                      [--kubeconfig FILE] [--context NAME]

The control plane is read as `meshplane proxy-status` reads it: the istiod pods of `--istio-namespace`
(label `app=istiod`, every revision unless `--revision`) through the API server, and each one's
`/debug/syncz` for the proxies connected to it. An istiod's version is the tag of its image (the
container `discovery`); a proxy's is the `ISTIO_VERSION` of its node metadata.

Text output: `client version: V`, then a table `REVISION ISTIOD VERSION PROXIES` with one row per
istiod pod, PROXIES counting the connected proxies per version (`1.40.0 (2 proxies)`, `none`,
`unreachable`). `--short` prints istioctl's three lines: client, control plane (one version, or
`V (revision)` for each when they differ) and data plane (each proxy counted once, also when it is
connected to two istiods). `-o json|yaml` prints istioctl's keys (`clientVersion`, `meshVersion`,
`dataPlaneVersion`) with the pod, revision and image added.

Errors: without a reachable cluster (none configured, an unusable `$KUBECONFIG`, an API server that
does not answer or refuses, no istiod pods) only the client version is printed, plus one line on
stderr saying why the rest is missing; exit 0, except 1 when `--kubeconfig` was given explicitly and
cannot be used or reached. An istiod that does not answer is one warning line on stderr naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml

from controlplane import __version__
from controlplane.kube.client import KubeApi, KubeApiError
from controlplane.model import yamltext
from controlplane.ops.common import (
    NO_KUBECONFIG_HINT,
    CommandError,
    add_connection_flags,
    add_istio_namespace_flag,
    describe_api_error,
    kubeconfig_files,
    table,
)
from controlplane.proxystatuscmd import Answer, NoIstiodError, ask_all, cluster_configured, find_istiods
from controlplane.settings import SettingsError

PROG = "meshplane version"
UNKNOWN = "unknown"


@dataclass(frozen=True, kw_only=True)
class ProxyInfo:
    id: str
    istio_version: str


@dataclass(frozen=True, kw_only=True)
class ControlPlaneInfo:
    """One istiod pod. `proxies` is None when it did not answer (`error` says why)."""

    revision: str
    pod: str
    image: str
    version: str
    proxies: tuple[ProxyInfo, ...] | None
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class VersionReport:
    """`control_planes` is None when the cluster could not be read; `missing` then says why."""

    client: str
    control_planes: tuple[ControlPlaneInfo, ...] | None = None
    missing: str = ""


def image_version(image: str) -> str:
    """The tag of an image reference (`hub/pilot:1.2.3@sha256:...` -> `1.2.3`); `latest` without a tag,
    as Kubernetes pulls it; `unknown` for a digest-only or empty reference."""
    name, _, digest = image.partition("@")
    last = name.rpartition("/")[2]
    if ":" in last:
        return last.rpartition(":")[2] or UNKNOWN
    return UNKNOWN if digest or not name else "latest"


def control_plane(answer: Answer) -> ControlPlaneInfo:
    proxies = None
    if not answer.error:
        proxies = tuple(
            ProxyInfo(id=str(e.get("id") or e["proxy"]), istio_version=str(e.get("istio_version") or UNKNOWN))
            for e in sorted(answer.entries, key=lambda e: str(e["proxy"]))
        )
    istiod = answer.istiod
    return ControlPlaneInfo(
        revision=istiod.revision,
        pod=istiod.pod,
        image=istiod.image,
        version=image_version(istiod.image),
        proxies=proxies,
        error=answer.error,
    )


def proxy_versions(proxies: Sequence[ProxyInfo]) -> str:
    """`1.40.0 (2 proxies), 1.41.0 (1 proxy)` (versions sorted), or `none`."""
    counts = Counter(p.istio_version for p in proxies)
    if not counts:
        return "none"
    return ", ".join(f"{v} ({n} prox{'y' if n == 1 else 'ies'})" for v, n in sorted(counts.items()))


def render_text(report: VersionReport, *, short: bool) -> str:
    lines = [f"client version: {report.client}"]
    planes = report.control_planes
    if planes is None:
        return lines[0]
    if short:
        pairs = sorted({(p.revision, p.version) for p in planes})
        versions = {v for _, v in pairs}
        cp = versions.pop() if len(versions) == 1 else ", ".join(f"{v} ({r})" for r, v in pairs)
        lines.append(f"control plane version: {cp}")
        answered = [p for p in planes if p.proxies is not None]
        if answered:
            unique = {proxy.id: proxy for p in answered for proxy in p.proxies or ()}
            lines.append(f"data plane version: {proxy_versions(list(unique.values()))}")
        else:
            lines.append(f"data plane version: {UNKNOWN} (no istiod answered)")
        return "\n".join(lines)
    rows = [
        (p.revision, p.pod, p.version, "unreachable" if p.proxies is None else proxy_versions(p.proxies))
        for p in planes
    ]
    return "\n".join([*lines, table([("REVISION", "ISTIOD", "VERSION", "PROXIES"), *rows], padding=3)])


def render_data(report: VersionReport) -> dict[str, Any]:
    """istioctl's JSON shape, with `Pod`, `Image` (and `Error` for an istiod that did not answer) added."""
    data: dict[str, Any] = {"clientVersion": {"version": report.client}}
    if report.control_planes is None:
        return data
    mesh = []
    for p in report.control_planes:
        entry: dict[str, Any] = {
            "Component": "istiod",
            "Revision": p.revision,
            "Pod": p.pod,
            "Image": p.image,
            "Info": {"version": p.version},
        }
        if p.error:
            entry["Error"] = p.error
        mesh.append(entry)
    data["meshVersion"] = mesh
    data["dataPlaneVersion"] = [
        {"ID": proxy.id, "IstioVersion": proxy.istio_version, "Istiod": p.pod, "Revision": p.revision}
        for p in report.control_planes
        for proxy in p.proxies or ()
    ]
    return data


async def _read(api: KubeApi, args: argparse.Namespace) -> tuple[ControlPlaneInfo, ...]:
    istiods = await find_istiods(api, namespace=args.istio_namespace, revision=args.revision)
    answers = await ask_all(istiods)
    for answer in answers:
        if answer.error:
            print(f"{PROG}: warning: {answer.warning()}", file=sys.stderr)
    return tuple(control_plane(a) for a in answers)


async def _remote(args: argparse.Namespace) -> tuple[ControlPlaneInfo, ...]:
    """Raises SettingsError, CommandError (with the reason as message) or KubeApiError."""
    api = await KubeApi.connect(
        kubeconfig=kubeconfig_files(args), context=args.context, no_kubeconfig_hint=NO_KUBECONFIG_HINT
    )
    try:
        return await _read(api, args)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise CommandError(f"cannot reach the Kubernetes API server at {api.host}: {reason}") from None
    finally:
        await api.close()


def report(args: argparse.Namespace) -> tuple[VersionReport, bool]:
    """The report, and whether the failure to read the cluster is an error (explicit --kubeconfig)."""
    client = __version__
    if not cluster_configured(args):
        missing = "no cluster configured (no --kubeconfig, $KUBECONFIG unset, no ~/.kube/config, not in a pod)"
        return VersionReport(client=client, missing=missing), False
    try:
        return VersionReport(client=client, control_planes=asyncio.run(_remote(args))), False
    except SettingsError as exc:
        missing = str(exc)
    except KubeApiError as exc:
        missing = describe_api_error(exc, what="list the istiod pods")
    except NoIstiodError as exc:
        return VersionReport(client=client, missing=exc.message), False
    except CommandError as exc:
        missing = exc.message
    return VersionReport(client=client, missing=missing), args.kubeconfig is not None


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "version",
        help="print the version of meshplane, its control planes and their proxies",
        description="Print the version of meshplane. With a cluster (--kubeconfig, $KUBECONFIG, ~/.kube/config or "
        "in a pod), also the control plane revisions running (istiod pods and their image versions) and the "
        "versions of the proxies connected to each.",
    )
    p.add_argument("-s", "--short", action="store_true", help="one line each: client, control plane, data plane")
    p.add_argument("-o", "--output", choices=("json", "yaml"), default=None, help="print JSON or YAML instead")
    p.add_argument("--revision", "-r", default=None, help="only the istiods of this revision [default: all]")
    add_istio_namespace_flag(p)
    add_connection_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0; 1 when an explicit --kubeconfig cannot be used or reached (see the module docstring)."""
    found, failed = report(args)
    if args.output == "json":
        print(json.dumps(render_data(found), indent=2))
    elif args.output == "yaml":
        print(yaml.dump(render_data(found), Dumper=yamltext.YamlDumper, sort_keys=False), end="")
    else:
        print(render_text(found, short=args.short))
    if found.missing:
        print(f"{PROG}: control plane not shown: {found.missing}", file=sys.stderr)
    return 1 if failed else 0
