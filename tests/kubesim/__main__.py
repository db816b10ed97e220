"""`python -m tests.kubesim [--tls] --port N --kubeconfig-out FILE`: run kubesim until interrupted.

With `--tls` the server speaks HTTPS with its own CA and requires bearer tokens; the kubeconfig carries
the CA and the admin token. Exit status 1 (and a one-line message) when an address cannot be listened on.

`python -m tests.kubesim cluster --kubeconfig-out FILE [--state-dir DIR]`: a one-machine cluster (API
server over HTTPS, controllers, kube-proxy, a kubelet running pods in network namespaces; needs root)
until interrupted; prints `cluster ready` once it serves, and leaves nothing running when stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pathlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence

from tests.kubesim.server import KubeSim


async def _serve(args: argparse.Namespace) -> int:
    sim = KubeSim(window=args.window, bookmark_interval=args.bookmark_interval, tls=args.tls)
    try:
        await sim.start(host=args.host, port=args.port, extra_hosts=tuple(args.also_listen))
    except OSError as exc:
        print(f"kubesim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.kubeconfig_out:
        sim.write_kubeconfig(args.kubeconfig_out)
    print(f"kubesim serving on {sim.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await sim.stop()
    return 0


async def _cluster(args: argparse.Namespace) -> int:
    from tests.kubesim.cluster import Cluster

    if os.geteuid() != 0:
        print("kubesim cluster: needs root (network namespaces, veths, iptables)", file=sys.stderr)
        return 1
    state_dir = pathlib.Path(args.state_dir or tempfile.mkdtemp(prefix="kubesim-cluster-"))
    cluster = Cluster(state_dir=state_dir, port=args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await cluster.start()
        if args.kubeconfig_out:
            shutil.copyfile(cluster.kubeconfig, args.kubeconfig_out)
        print(f"cluster ready: API server {cluster.sim.url if cluster.sim else '?'}, state in {state_dir}", flush=True)
        await stop.wait()
    finally:
        await cluster.stop()
    return 0


def build_cluster_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.kubesim cluster", description="a one-machine Kubernetes cluster (needs root)"
    )
    parser.add_argument("--port", type=int, default=0, help="API server port (0: any free port)")
    parser.add_argument("--kubeconfig-out", default=None, help="write the cluster's kubeconfig here")
    parser.add_argument("--state-dir", default=None, help="container logs and volumes (default: a new temp dir)")
    parser.set_defaults(run=_cluster)
    return parser


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The API server's flags (shared by every form that runs one)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--also-listen", action="append", default=[], metavar="HOST", help="another address, same port")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS and require bearer tokens")
    parser.add_argument("--kubeconfig-out", default=None, help="write a kubeconfig for this server here")
    parser.add_argument("--window", type=int, default=1000, help="events retained for watch resumption")
    parser.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between watch bookmarks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.kubesim", description="Kubernetes API server emulator")
    add_server_arguments(parser)
    parser.set_defaults(run=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cluster = argv[:1] == ["cluster"]
    args = (build_cluster_parser() if cluster else build_parser()).parse_args(argv[1:] if cluster else argv)
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        code: int = asyncio.run(args.run(args))
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
