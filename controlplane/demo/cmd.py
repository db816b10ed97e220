"""`meshplane demo`: a real mesh on one machine - control plane, sidecars, mTLS and traffic - without root."""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.live import Live

from certs.authenticate.localtoken import parse_duration
from controlplane.demo.mesh import DemoMesh
from controlplane.demo.plan import CONTROL_PLANE_PORTS, ENVOY_ADMIN_PORT, AddressPlan, PlanError
from controlplane.demo.procs import Interrupted, StartError
from controlplane.demo.table import plain, rich_table, summary, verdict
from controlplane.literals import decimal
from controlplane.settings import SettingsError

LIVE_REFRESH = 1.0  # seconds between redraws of the live table

DESCRIPTION = """\
Run a small mesh on this machine, without root and without Kubernetes, and watch it work.

It starts `meshplane serve` in local mode and five workloads in namespace `demo`, each an app with
its own `meshplane agent` (which gets the workload's certificate from the control plane's CA and
runs Envoy, or in proxyless mode writes the gRPC xDS bootstrap):

  frontend        sends --rps requests a second to reviews through its sidecar
  reviews-v1/v2   the two workloads of Service reviews; answer with their version and the
                  x-forwarded-client-cert header their sidecar added (who called, by certificate)
  greeter         a gRPC server behind an Envoy sidecar
  greeter-client  a proxyless gRPC client (grpcio's xDS client, xDS credentials, no Envoy)

A PeerAuthentication makes the namespace STRICT: every request between workloads is mutual TLS.
Interception is NONE (no iptables): workload N listens on its own loopback addresses, pod IP
<pod-prefix>.N (Envoy inbound, agent 15020, Envoy 15021/15090) and pod loopback <loopback-prefix>.N
(the app, Envoy admin 15000 and the outbound listeners: the app calls
http://<pod loopback>:<service port> with the service's Host header).

The table shows per workload its SPIFFE identity, certificate serial, expiry and next rotation
(from the agent's /debug/certs), the xDS state of its proxy (from the control plane's /debug/syncz),
and for the callers the requests sent and failed, p50/p99 latency and which backends answered.
When stdout is not a terminal, the table is printed every --interval seconds instead.

The config dir printed at start is live: edit it to remove or add an endpoint of reviews, or to set
the PeerAuthentication to PERMISSIVE, and watch the table. Every child logs to a file
under the work dir. Ctrl-C (or SIGTERM) stops the apps, then the agents (which drain and stop their
Envoys), then the control plane.

Exit status: 0 when every request succeeded, 1 when any failed or a part of the mesh did not start
or died, 2 for bad flags.
"""


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="run a real mesh on this machine (control plane, sidecars, mTLS, traffic) and watch it",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = AddressPlan()
    p.add_argument("--duration", help="run this long (seconds or 90s, 5m), then stop and report; default: until Ctrl-C")
    p.add_argument("--cert-ttl", default="24h", help="workload certificate lifetime, e.g. 30s to watch rotation [24h]")
    p.add_argument("--rps", default="20", help="requests per second of each caller [20]")
    p.add_argument("--interval", default="5", help="seconds between tables when stdout is not a terminal [5]")
    p.add_argument("--workdir", help="directory for config, state and logs (new or empty; kept) [a fresh temp dir]")
    p.add_argument("--keep", action="store_true", help="keep the fresh temporary work dir at exit")
    p.add_argument("--pod-prefix", default=d.pod_prefix, help=f"first three octets of the pod IPs [{d.pod_prefix}]")
    p.add_argument(
        "--loopback-prefix",
        default=d.loopback_prefix,
        help=f"first three octets of the pod loopbacks [{d.loopback_prefix}]",
    )
    ports = ", ".join(str(port) for port in CONTROL_PLANE_PORTS.values())
    p.add_argument(
        "--control-plane",
        default=d.control_plane,
        help=f"address of the control plane (ports {ports}) [{d.control_plane}]",
    )
    p.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="children's log level"
    )
    p.set_defaults(func=run)


def _positive(text: str, *, flag: str) -> float:
    value = decimal(text.strip())
    if value is None:
        raise SettingsError(f"{flag}: {text!r} is not a number")
    if value <= 0:
        raise SettingsError(f"{flag}: {text!r} must be positive")
    return value


def _duration(text: str, *, flag: str) -> float:
    try:
        seconds = parse_duration(text, field=flag).total_seconds()
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if seconds <= 0:
        raise SettingsError(f"{flag}: {text!r} must be positive")
    return seconds


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` instead of interrupting; the previous handlers come back afterwards."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say(text: str) -> None:
    print(text, flush=True)


def _watch(mesh: DemoMesh, stop: threading.Event, *, until: float | None, interval: float, live: bool) -> None:
    """Show the table until `stop` is set or the monotonic time `until` passes."""

    def remaining() -> float:
        return float("inf") if until is None else until - time.monotonic()

    def wait(seconds: float) -> bool:
        """Sleep up to `seconds`; True when it is time to finish."""
        return stop.wait(max(min(seconds, remaining()), 0)) or remaining() <= 0

    if live:
        caption = f"config dir (edit live): {mesh.config_dir}\nlogs: {mesh.logs_dir}\nCtrl-C stops the demo"
        with Live(rich_table(mesh.status(), caption=caption), console=Console(), auto_refresh=False) as display:
            while not wait(LIVE_REFRESH):
                mesh.refresh_tokens()
                display.update(rich_table(mesh.status(), caption=caption), refresh=True)
        return
    while not wait(interval):
        mesh.refresh_tokens()
        _say(plain(mesh.status()) + "\n")


def run(args: argparse.Namespace) -> int:
    rps = _positive(args.rps, flag="--rps")
    interval = _positive(args.interval, flag="--interval")
    duration = _duration(args.duration, flag="--duration") if args.duration else None
    _duration(args.cert_ttl, flag="--cert-ttl")
    try:
        plan = AddressPlan(
            pod_prefix=args.pod_prefix, loopback_prefix=args.loopback_prefix, control_plane=args.control_plane
        )
    except PlanError as exc:
        raise SettingsError(str(exc)) from None
    fresh = args.workdir is None
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="meshplane-demo-")) if fresh else pathlib.Path(args.workdir)
    stop = threading.Event()
    mesh = DemoMesh(
        workdir, plan=plan, cert_ttl=args.cert_ttl, rps=rps, log_level=args.log_level, stop_event=stop, progress=_say
    )
    with _stop_on_signals(stop):
        try:
            return _run(mesh, stop, duration=duration, interval=interval)
        finally:
            mesh.stop()
            if fresh and not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
                _say(f"work dir {workdir} removed (--keep keeps it)")
            elif workdir.exists():
                _say(f"work dir kept: {workdir}")


def _run(mesh: DemoMesh, stop: threading.Event, *, duration: float | None, interval: float) -> int:
    _say(f"meshplane demo: work dir {mesh.workdir}")
    _say(f"  config dir: {mesh.config_dir} (watched: edit it live)")
    _say(f"  logs:       {mesh.logs_dir}/ (serve.log, <workload>-agent.log, <workload>-app.log)")
    _say(f"  control plane: {mesh.plan.control_plane}, debug http://{mesh.control_plane_http}/debug/syncz")
    try:
        mesh.start()
    except StartError as exc:
        print(f"meshplane demo: {exc}", file=sys.stderr, flush=True)
        return 1
    except Interrupted:
        _say("meshplane demo: interrupted while starting; stopped")
        return 130
    for w in mesh.workloads:
        kind = "proxyless" if w.proxyless else f"Envoy admin {w.loopback}:{ENVOY_ADMIN_PORT}"
        _say(f"  {w.name:<15} pod IP {w.pod_ip:<14} loopback {w.loopback:<14} {w.identity} ({kind})")
    _say("running" + (f" for {duration:g}s" if duration else "; Ctrl-C stops"))
    until = time.monotonic() + duration if duration else None
    _watch(mesh, stop, until=until, interval=interval, live=sys.stdout.isatty())
    _say("stopping: apps, then agents and their Envoys, then the control plane")
    dead = mesh.dead()
    last = mesh.status()  # certificates and xDS state while every proxy is still connected
    mesh.stop_apps()
    final = last.with_stats(mesh.app_stats())  # with the counters the apps wrote as they exited
    _say(plain(final))
    _say(summary(final))
    code, sentence = verdict(final, dead=dead)
    _say(sentence)
    return code
