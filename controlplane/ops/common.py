"""What the operator commands share: connection flags, one-line errors, the current namespace, tables.

`add_connection_flags` adds `--kubeconfig`; without it a command reads what kubectl reads: the files
of `$KUBECONFIG`, merged, else `~/.kube/config`, else the in-cluster service account
(`controlplane.kube.kubeconfig`). `run_against_cluster(prog, args, body)` connects,
runs `body(api)` and turns every failure a user can cause or meet into one line on stderr and exit
status 1: a missing or unusable kubeconfig, no kubeconfig outside a cluster, an unreachable API
server, an error answer (named with the request it answered).
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from controlplane.kube import kubeconfig
from controlplane.kube.client import KubeApi, KubeApiError
from controlplane.kube.kubeconfig import KubeconfigFiles
from controlplane.ops.cluster import ClusterState, read_cluster
from controlplane.settings import SettingsError

NO_KUBECONFIG_HINT = "pass --kubeconfig FILE or set $KUBECONFIG (~/.kube/config is read when it exists)"
IN_CLUSTER_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """`--kubeconfig` (`-c`, as istioctl's) and `--context`."""
    parser.add_argument(
        "-c",
        "--kubeconfig",
        default=None,
        help="kubeconfig file [default: as kubectl: the files of $KUBECONFIG, merged, else ~/.kube/config, "
        "else the in-cluster service account]",
    )
    parser.add_argument(
        "--context",
        default=None,
        help="the kubeconfig context to use, as kubectl's --context [default: the kubeconfig's current-context]",
    )


def add_istio_namespace_flag(parser: argparse.ArgumentParser) -> None:
    """The control plane's namespace: `--istio-namespace`, or istioctl's `-i` and `--istioNamespace`."""
    parser.add_argument(
        "-i",
        "--istio-namespace",
        "--istioNamespace",
        dest="istio_namespace",
        default="istio-system",
        help="the control plane's namespace [default: istio-system]",
    )


def kubeconfig_files(args: argparse.Namespace) -> KubeconfigFiles | None:
    """`--kubeconfig`, else `$KUBECONFIG`'s files, else `~/.kube/config` if it exists; None: in-cluster."""
    return kubeconfig.locate(args.kubeconfig)


def current_namespace(args: argparse.Namespace) -> str:
    """The namespace of the kubeconfig's current context, or of `--context` (in a pod: the pod's), else
    `default`.

    Reads leniently: anything unreadable falls back to `default` (connecting reports real problems).
    """
    files = kubeconfig_files(args)
    if files is not None:
        return kubeconfig.current_namespace(files, args.context) or "default"
    try:
        return IN_CLUSTER_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    except (OSError, UnicodeDecodeError):
        return "default"


class CommandError(Exception):
    """A failure the command reports as one line (`message`) and exit status `code`."""

    def __init__(self, message: str, *, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def describe_api_error(exc: KubeApiError, *, what: str) -> str:
    """`what` failed, with the server's reason and message (e.g. 403 Forbidden: ...)."""
    if exc.status == 404 and exc.message:
        return exc.message
    return f"cannot {what}: {exc.status} {exc.reason}: {exc.message}".rstrip(": ")


async def read_or_fail(api: KubeApi, *, namespace: str | None, pods: bool = True) -> ClusterState:
    """`read_cluster`, with a missing `namespace` reported as a CommandError naming it."""
    try:
        return await read_cluster(api, namespace=namespace, pods=pods)
    except KubeApiError as exc:
        if exc.status == 404 and namespace and exc.body.get("details", {}).get("kind") == "namespaces":
            raise CommandError(f"namespace {namespace!r} does not exist (kubectl get namespaces lists them)") from None
        raise


def run_against_cluster(prog: str, args: argparse.Namespace, body: Callable[[KubeApi], Awaitable[int]]) -> int:
    """Connect, run `body`, close; report failures as one line on stderr (see the module docstring)."""

    async def main() -> int:
        api = await KubeApi.connect(
            kubeconfig=kubeconfig_files(args), context=args.context, no_kubeconfig_hint=NO_KUBECONFIG_HINT
        )
        try:
            return await body(api)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise CommandError(f"cannot reach the Kubernetes API server at {api.host}: {reason}") from None
        finally:
            await api.close()

    try:
        return asyncio.run(main())
    except SettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except KubeApiError as exc:
        print(f"{prog}: {describe_api_error(exc, what='read the cluster')}", file=sys.stderr)
        return 1
    except CommandError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return exc.code


def table(rows: Sequence[Sequence[Any]], *, padding: int = 1) -> str:
    """Columns padded to their widest cell plus `padding` spaces; the last column is not padded
    (Go's tabwriter as istioctl configures it)."""
    if not rows:
        return ""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(max(len(r) for r in cells))]
    lines = []
    for row in cells:
        parts = [cell.ljust(widths[i] + padding) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("".join(parts))
    return "\n".join(lines)
