"""`meshplane proxy-status`: which proxies are connected to which istiod, and whether each has what it was sent.

    meshplane proxy-status [--revision R] [-n NS] [--istio-namespace NS] [--kubeconfig FILE] [--context NAME] [NAME]
    meshplane proxy-status --http-addr HOST:PORT [-n NS] [NAME]

Cluster mode (`--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`, else the in-cluster service
account): the istiod pods are listed through the API server (pods of `--istio-namespace` labelled `app=istiod`, of every
revision unless `--revision`), each is reached at its pod IP and its container port named
`http-debug` (8080 when no port has that name), and its `/debug/syncz` is read. ISTIOD is the pod
name and its revision; a proxy connected to two istiods (as during an upgrade) has two rows.
Local mode (`--http-addr`, env MESHPLANE_HTTP_ADDR, or nothing configured at all: 127.0.0.1:8080)
reads the one `meshplane serve` at that address.

Per type the status is SYNCED (the last response was ACKed), NOT SENT, STALE (sent, not yet ACKed)
or NACKED (rejected; `proxy-status NAME` shows the error). `-n NS` lists the proxies of one
namespace; NAME is `<pod>.<namespace>` or a node id (a bare pod name takes `-n`, else the current
namespace of the kubeconfig, else `default`).

Errors: an istiod that does not answer (no pod IP yet, refused, timed out, not a syncz answer) is one
warning line on stderr naming it, and the others still print. Exit status 0; 1 when no istiod is
found or none answers, when the named proxy is not connected, or when the cluster cannot be read;
2 for bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from controlplane.kube.client import KubeApi
from controlplane.ops.common import (
    CommandError,
    add_connection_flags,
    add_istio_namespace_flag,
    current_namespace,
    kubeconfig_files,
    run_against_cluster,
)

TYPES = ("CDS", "LDS", "EDS", "RDS")
HEADERS = ("NAME", "CLUSTER", *TYPES, "ISTIOD", "VERSION", "SUBSCRIBED TYPES")
PROG = "meshplane proxy-status"
ISTIOD_SELECTOR = "app=istiod"
REVISION_LABEL = "istio.io/rev"
DEBUG_PORT_NAME = "http-debug"
DEBUG_PORT = 8080  # istiod's and charts/istiod's debug port
LOCAL_DEFAULT = "127.0.0.1:8080"
SYNCZ_TIMEOUT = 10.0

SynczEntry = Mapping[str, Any]


class NoIstiodError(CommandError):
    """No istiod pod matches: the control plane is not installed there (or not that revision)."""


@dataclass(frozen=True, kw_only=True)
class Istiod:
    """One control-plane instance to ask: an istiod pod (cluster mode) or a `meshplane serve` (local mode).

    `address` is `host:port` of its debug server, None when the pod has no IP yet. `pod` is empty in
    local mode, where the ISTIOD column shows what the server calls itself.
    """

    pod: str = ""
    revision: str = ""
    image: str = ""
    address: str | None

    @property
    def label(self) -> str:
        """`<pod> (<revision>)`, or the address in local mode."""
        return f"{self.pod} ({self.revision})" if self.pod else str(self.address)


@dataclass(frozen=True, kw_only=True)
class Answer:
    """What one istiod said: its syncz entries, or `error` (one line) when it did not answer usably."""

    istiod: Istiod
    entries: tuple[SynczEntry, ...] = ()
    error: str = ""

    def warning(self) -> str:
        where = f" at {self.istiod.address}" if self.istiod.pod and self.istiod.address else ""
        return f"istiod {self.istiod.label}{where}: {self.error}"


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def istiod_of_pod(pod: Mapping[str, Any]) -> Istiod:
    """The istiod a pod object describes: revision from `istio.io/rev` (`default` without it), the
    `http-debug` container port (else 8080) on `status.podIP`, the image of container `discovery`
    (else the first). Never raises; malformed fields count as absent."""
    meta, spec, status = _dict(pod.get("metadata")), _dict(pod.get("spec")), _dict(pod.get("status"))
    containers = [_dict(c) for c in _list(spec.get("containers"))]
    port = next(
        (
            p.get("containerPort")
            for c in containers
            for p in map(_dict, _list(c.get("ports")))
            if p.get("name") == DEBUG_PORT_NAME and isinstance(p.get("containerPort"), int)
        ),
        DEBUG_PORT,
    )
    main = next((c for c in containers if c.get("name") == "discovery"), containers[0] if containers else {})
    ip = status.get("podIP")
    host = (f"[{ip}]" if ":" in ip else ip) if isinstance(ip, str) and ip else None
    return Istiod(
        pod=str(meta.get("name", "")),
        revision=str(_dict(meta.get("labels")).get(REVISION_LABEL) or "default"),
        image=str(main.get("image", "")),
        address=f"{host}:{port}" if host else None,
    )


async def find_istiods(api: KubeApi, *, namespace: str, revision: str | None) -> list[Istiod]:
    """The istiod pods of `namespace` (of `revision` only, when given), sorted by revision and name.

    Finished pods (Succeeded/Failed) are left out.
    Raises `NoIstiodError` naming the namespace, selector and the revisions found when there is none;
    `KubeApiError` and transport errors pass through for the caller to report.
    """
    page = await api.request("GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", ISTIOD_SELECTOR)])
    pods = [
        p for p in map(_dict, _list(page.get("items")))
        if _dict(p.get("status")).get("phase") not in ("Succeeded", "Failed")
    ]  # fmt: skip
    found = sorted((istiod_of_pod(p) for p in pods), key=lambda i: (i.revision, i.pod))
    chosen = [i for i in found if revision is None or i.revision == revision]
    if not chosen:
        what = f"no istiod pods in namespace {namespace!r} (labelled {ISTIOD_SELECTOR}"
        if revision is None:
            raise NoIstiodError(f"{what}); is the control plane installed there? (--istio-namespace)")
        others = ", ".join(sorted({i.revision for i in found})) or "none"
        raise NoIstiodError(f"{what},{REVISION_LABEL}={revision}); revisions running: {others}")
    return chosen


def _valid_syncz(data: Any) -> tuple[SynczEntry, ...] | None:
    if not isinstance(data, list):
        return None
    for entry in data:
        if not (
            isinstance(entry, dict) and isinstance(entry.get("proxy"), str) and isinstance(entry.get("types"), dict)
        ):
            return None
    return tuple(data)


async def _ask(session: aiohttp.ClientSession, istiod: Istiod) -> Answer:
    if istiod.address is None:
        return Answer(istiod=istiod, error="the pod has no IP yet (not scheduled or not started)")
    url = f"http://{istiod.address}/debug/syncz"
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return Answer(istiod=istiod, error=f"{url} answered HTTP {resp.status} {resp.reason or ''}".rstrip())
            data = await resp.json(content_type=None)
    except TimeoutError:
        return Answer(istiod=istiod, error=f"no answer from {url} within {session.timeout.total:g}s")
    except aiohttp.ClientConnectorError as exc:
        errno = exc.os_error.errno
        return Answer(istiod=istiod, error=f"cannot read {url}: {os.strerror(errno) if errno else exc.os_error}")
    except (aiohttp.ClientError, OSError) as exc:
        return Answer(istiod=istiod, error=f"cannot read {url}: {exc or type(exc).__name__}")
    except ValueError:
        return Answer(istiod=istiod, error=f"{url} did not answer JSON")
    entries = _valid_syncz(data)
    if entries is None:
        return Answer(istiod=istiod, error=f"{url} did not answer a list of proxies (not a meshplane debug port?)")
    return Answer(istiod=istiod, entries=entries)


async def ask_all(istiods: Sequence[Istiod], *, request_timeout: float = SYNCZ_TIMEOUT) -> list[Answer]:
    """Read `/debug/syncz` of every istiod concurrently; one Answer each, in order. Never raises for
    an istiod that cannot be read: its Answer carries the error."""
    client_timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session:
        return list(await asyncio.gather(*(_ask(session, i) for i in istiods)))


def _status(entry: SynczEntry, short: str) -> str:
    found = _dict(entry["types"].get(short))
    return str(found.get("status", "NOT SENT")) if found else "NOT SENT"


def rows(syncz: Sequence[SynczEntry], *, istiod: str | None = None) -> list[tuple[str, ...]]:
    """One table row per entry, sorted by proxy name; ISTIOD is `istiod` when given, else the entry's own."""
    out = []
    for entry in sorted(syncz, key=lambda e: str(e["proxy"])):
        subscribed = list(entry["types"])
        out.append(
            (
                str(entry["proxy"]),
                str(entry.get("cluster_id") or ""),
                *(_status(entry, t) for t in TYPES),
                istiod if istiod is not None else str(entry.get("istiod") or ""),
                str(entry.get("istio_version") or ""),
                f"{len(subscribed)} ({','.join(subscribed)})",
            )
        )
    return out


def table(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers, *body]) for i in range(len(headers))]
    lines = [
        "   ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *body]
    ]
    return "\n".join(lines)


def detail(entry: SynczEntry, *, istiod: str | None = None) -> str:
    lines = [
        f"Proxy:      {entry['proxy']} ({entry.get('id', '')})",
        f"Connection: {entry.get('connection')} from {entry.get('peer')}{' (delta)' if entry.get('delta') else ''}",
        f"Generator:  {entry.get('generator')}, interception {entry.get('interception_mode')}",
        f"Istiod:     {istiod if istiod is not None else entry.get('istiod')}",
    ]
    for short, value in entry["types"].items():
        state = _dict(value)
        sent, acked = state.get("version_sent") or "-", state.get("version_acked") or "-"
        line = f"  {short}: {state.get('status')} (sent {sent}, acked {acked})"
        if state.get("error"):
            line += f" error: {state['error']}"
        lines.append(line)
    return "\n".join(lines)


def proxy_namespace(entry: SynczEntry) -> str:
    """The namespace part of the proxy name `<pod>.<namespace>` (namespaces hold no dots)."""
    return str(entry["proxy"]).rpartition(".")[2]


def render(answers: Sequence[Answer], *, namespace: str | None, name: str | None, local: bool) -> tuple[str, int]:
    """The text to print and the exit status, from the answers that carry entries (errors are not shown here)."""

    def wanted(entry: SynczEntry) -> bool:
        in_namespace = namespace is None or proxy_namespace(entry) == namespace
        return in_namespace and (name is None or name in (entry["proxy"], entry.get("id")))

    selected = [(answer, entry) for answer in answers for entry in answer.entries if wanted(entry)]
    if name is not None:
        if not selected:
            return f"{PROG}: proxy {name!r} is not connected", 1
        return "\n\n".join(detail(e, istiod=None if local else a.istiod.label) for a, e in selected), 0
    body: list[tuple[str, ...]] = []
    for answer in answers:
        entries = [e for a, e in selected if a is answer]
        body += rows(entries, istiod=None if local else answer.istiod.label)
    body.sort(key=lambda row: (row[0], row[len(TYPES) + 2]))
    return table(HEADERS, body), 0


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "proxy-status",
        help="show the xDS sync status of connected proxies, across every revision",
        description=(
            "Show, per connected proxy and per xDS type, whether it ACKed what it was last sent. Finds the istiod "
            "pods of every revision through the Kubernetes API server and asks each; with --http-addr, asks one "
            "meshplane serve (local mode)."
        ),
    )
    p.add_argument("name", nargs="?", help="a proxy (<pod>.<namespace>, or a pod with -n) to show in detail")
    p.add_argument("--revision", "-r", default=None, help="ask only the istiods of this revision [default: all]")
    p.add_argument("-n", "--namespace", default=None, help="only proxies of this namespace [default: all]")
    add_istio_namespace_flag(p)
    add_connection_flags(p)
    env = os.environ.get("MESHPLANE_HTTP_ADDR")
    p.add_argument(
        "--http-addr",
        default=env,
        help=f"local mode: debug address of one meshplane serve [env MESHPLANE_HTTP_ADDR; default {LOCAL_DEFAULT} "
        "when no cluster is configured]",
    )
    p.set_defaults(func=run)


def cluster_configured(args: argparse.Namespace) -> bool:
    """A kubeconfig is given (flag or $KUBECONFIG), ~/.kube/config exists, or this runs in a pod."""
    return kubeconfig_files(args) is not None or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _proxy_name(args: argparse.Namespace, *, default_namespace: str) -> str | None:
    name: str | None = args.name
    if name is None or "." in name or "~" in name:
        return name
    return f"{name}.{args.namespace or default_namespace}"


def _report(answers: Sequence[Answer], args: argparse.Namespace, *, local: bool, default_namespace: str) -> int:
    for answer in answers:
        if answer.error:
            print(f"{PROG}: {answer.error}" if local else f"{PROG}: warning: {answer.warning()}", file=sys.stderr)
    if all(a.error for a in answers):
        if not local:
            print(f"{PROG}: none of the {len(answers)} istiod(s) answered", file=sys.stderr)
        return 1
    name = _proxy_name(args, default_namespace=default_namespace)
    text, code = render(answers, namespace=args.namespace, name=name, local=local)
    print(text, file=sys.stderr if code else sys.stdout)
    return code


def run(args: argparse.Namespace) -> int:
    """Local mode when --http-addr is set or no cluster is configured; cluster mode otherwise."""
    if args.http_addr and (args.kubeconfig or args.context):
        flag = "--kubeconfig" if args.kubeconfig else "--context"
        print(f"{PROG}: --http-addr and {flag}: choose one (one meshplane serve, or a cluster)", file=sys.stderr)
        return 2
    if args.http_addr or not cluster_configured(args):
        if args.revision:
            print(f"{PROG}: --revision needs a cluster (--kubeconfig); --http-addr asks one server", file=sys.stderr)
            return 2
        local = Istiod(address=args.http_addr or LOCAL_DEFAULT)
        return _report(asyncio.run(ask_all([local])), args, local=True, default_namespace="default")

    async def body(api: KubeApi) -> int:
        istiods = await find_istiods(api, namespace=args.istio_namespace, revision=args.revision)
        answers = await ask_all(istiods)
        return _report(answers, args, local=False, default_namespace=current_namespace(args))

    return run_against_cluster(PROG, args, body)
