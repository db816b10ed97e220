"""`meshplane iptables` for real, in network namespaces made for each test (root only).

A "pod" namespace is joined to a "peer" namespace by a veth pair (10.250.0.1/30 and 10.250.0.2/30); the peer
also holds the service address 10.96.0.10 and a server on port 80, the pod's default route points at the peer.
Stand-ins listen in the pod where Envoy (15001, 15006), the agent (15020, 15021, 15090) and the app (8080) would,
and answer each connection with their name and the connection's original destination (SO_ORIGINAL_DST).

This file is also the helper run inside the namespaces:
`python -m tests.controlplane.iptables.test_netns serve|connect|without-net-admin ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import pathlib
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PYTHON = sys.executable
HELPER = "tests.controlplane.iptables.test_netns"
PREFIX = "mp-ipt-"
POD_IP, PEER_IP, SERVICE_IP = "10.250.0.1", "10.250.0.2", "10.96.0.10"
INJECTED = [
    "istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
    "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info",
]  # fmt: skip
POD_LISTENERS = ["outbound=15001", "inbound=15006", "app=8080", "agent=15020", "envoy=15021", "stats=15090"]
SO_ORIGINAL_DST = 80
PR_CAPBSET_DROP, CAP_NET_ADMIN = 24, 12


# -- namespaces ------------------------------------------------------------------------------------------------


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


def in_ns(ns: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60, cwd=REPO, env=env, check=False
    )


def meshplane_iptables(ns: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return in_ns(ns, PYTHON, "-m", "controlplane", "iptables", *args, env=env)


def nat_table(ns: str) -> list[str]:
    """`iptables-save -t nat` without comments and with counters zeroed: comparable across runs."""
    out = in_ns(ns, "iptables-save", "-t", "nat")
    assert out.returncode == 0, out.stderr
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in out.stdout.splitlines() if not line.startswith("#")]


def ours(table: list[str]) -> dict[str, list[str]]:
    """chain -> its rules, for our chains, plus the jumps into them from the built-in chains (keyed by chain)."""
    chains: dict[str, list[str]] = {}
    for line in table:
        if line.startswith("-A "):
            chain = line.split()[1]
            if chain.startswith("ISTIO_") or re.search(r" -j ISTIO_\S+$", line):
                chains.setdefault(chain, []).append(line)
    return chains


@dataclass
class Namespaces:
    """Creates namespaces named mp-ipt-<random>; `close` kills what runs in them and deletes them."""

    names: list[str]
    procs: list[subprocess.Popen[str]]

    def add(self) -> str:
        name = PREFIX + secrets.token_hex(4)
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def pod_and_peer(self) -> tuple[str, str]:
        """Two namespaces joined by a veth pair created inside them (nothing touches the host's links)."""
        pod, peer = self.add(), self.add()
        sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer)
        for ns, address in ((pod, POD_IP), (peer, PEER_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{address}/30", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", peer, "addr", "add", f"{SERVICE_IP}/32", "dev", "lo")
        sh("ip", "-n", pod, "route", "add", "default", "via", PEER_IP)
        return pod, peer

    def serve(self, ns: str, listeners: list[str]) -> None:
        """Start the stand-in servers (`name=port` on all addresses) in `ns` and wait until they listen."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, PYTHON, "-m", HELPER, "serve", *listeners],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line == "ready\n", f"servers in {ns} did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for name in self.names:
            pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)
        left = [name for name in sh("ip", "netns", "list").stdout.split() if name in self.names]
        assert left == [], f"network namespaces left behind: {left}"


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    made = Namespaces(names=[], procs=[])
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def pod() -> Iterator[tuple[str, str]]:
    """A pod with the injected rules and the stand-ins running, and its peer; shared by the traffic tests."""
    made = Namespaces(names=[], procs=[])
    try:
        pod, peer = made.pod_and_peer()
        made.serve(pod, POD_LISTENERS)
        made.serve(peer, ["service=80"])
        done = meshplane_iptables(pod, *INJECTED)
        assert done.returncode == 0, done.stderr
        yield pod, peer
    finally:
        made.close()


def connect(ns: str, address: str, port: int, *, uid: int = 0, gid: int = 0, bind: str = "") -> str:
    """Connect from `ns` as uid/gid (from `bind` if given); what the server answered, or `error: <reason>`."""
    argv = [PYTHON, "-m", HELPER, "connect", address, str(port), "--uid", str(uid), "--gid", str(gid)]
    done = in_ns(ns, *argv, *(["--bind", bind] if bind else []))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# -- rules in the table ----------------------------------------------------------------------------------------


def test_installs_the_dry_run_rules_idempotently_and_cleanup_restores_the_table(namespaces: Namespaces) -> None:
    ns = namespaces.add()
    for rule in (["PREROUTING", "-p", "udp", "-j", "ACCEPT"], ["OUTPUT", "-d", "192.0.2.0/24", "-j", "ACCEPT"]):
        assert in_ns(ns, "iptables", "-t", "nat", "-A", *rule).returncode == 0  # someone else's rules
    before = nat_table(ns)

    dry = meshplane_iptables(ns, *INJECTED, "--dry-run")
    expected: dict[str, list[str]] = {}
    for line in dry.stdout.splitlines():
        if line.startswith("-A "):
            expected.setdefault(line.split()[1], []).append(line)

    first = meshplane_iptables(ns, *INJECTED)
    assert first.returncode == 0, first.stderr
    assert "installed 18 rules" in first.stdout
    installed = nat_table(ns)
    assert ours(installed) == expected
    assert [line for line in before if line not in installed] == []  # the other rules are still there

    second = meshplane_iptables(ns, *INJECTED)
    assert second.returncode == 0, second.stderr
    assert nat_table(ns) == installed

    removed = meshplane_iptables(ns, "--cleanup")
    assert removed.returncode == 0, removed.stderr
    assert nat_table(ns) == before
    again = meshplane_iptables(ns, "--cleanup")
    assert (again.returncode, nat_table(ns)) == (0, before)
    assert "nothing to clean up" in again.stdout


def test_new_flags_replace_the_rules_and_stale_chains_and_jumps_go(namespaces: Namespaces) -> None:
    ns = namespaces.add()
    assert meshplane_iptables(ns, *INJECTED).returncode == 0
    # what an older version might have left: a chain of ours we no longer make, with jumps into it
    for argv in (["-N", "ISTIO_OUTPUT_DNS"], ["-A", "OUTPUT", "-p", "udp", "-j", "ISTIO_OUTPUT_DNS"]):
        assert in_ns(ns, "iptables", "-t", "nat", *argv).returncode == 0

    done = meshplane_iptables(ns, "-i", "10.0.0.0/8", "-b", "", "-u", "1337")
    assert done.returncode == 0, done.stderr
    assert "removed stale chains ISTIO_OUTPUT_DNS" in done.stdout
    table = nat_table(ns)
    assert [line for line in table if "ISTIO_OUTPUT_DNS" in line] == []
    assert [line for line in table if line.startswith("-A PREROUTING")] == []
    assert [line for line in table if line.startswith("-A OUTPUT")] == ["-A OUTPUT -j ISTIO_OUTPUT"]
    assert "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT" in table
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" not in table

    refused = meshplane_iptables(ns, "-i", "10.0.0.0/33")
    assert refused.returncode == 2 and "-i/--istio-service-cidr" in refused.stderr
    assert nat_table(ns) == table


def test_a_refused_transaction_leaves_the_table_as_it_was(namespaces: Namespaces, tmp_path: pathlib.Path) -> None:
    ns = namespaces.add()
    assert meshplane_iptables(ns, *INJECTED).returncode == 0
    before = nat_table(ns)
    # an iptables-restore that slips a rule iptables refuses into the end of each transaction
    shim = os.path.join(str(tmp_path), "iptables-restore")
    real = shutil.which("iptables-restore")
    with open(shim, "w", encoding="utf-8") as handle:
        handle.write(f'#!/bin/sh\nsed "s/^COMMIT$/-A ISTIO_OUTPUT -j NO_SUCH_CHAIN\\nCOMMIT/" | exec {real} "$@"\n')
    os.chmod(shim, 0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}

    for args in (["-i", "10.0.0.0/8", "-b", "8080"], ["--cleanup"]):
        done = meshplane_iptables(ns, *args, env=env)
        assert done.returncode == 1
        assert "no rules were changed" in done.stderr and "NO_SUCH_CHAIN" in done.stderr
        assert "Traceback" not in done.stderr
        assert nat_table(ns) == before


def test_without_net_admin_it_fails_with_exit_1_and_changes_nothing(namespaces: Namespaces) -> None:
    ns = namespaces.add()
    before = nat_table(ns)
    # root without CAP_NET_ADMIN, as in a container that was not given it
    argv = [PYTHON, "-m", HELPER, "without-net-admin", PYTHON, "-m", "controlplane", "iptables", *INJECTED]
    done = in_ns(ns, *argv)
    assert done.returncode == 1
    assert "needs the NET_ADMIN capability" in done.stderr and "Traceback" not in done.stderr
    assert nat_table(ns) == before


# -- traffic -----------------------------------------------------------------------------------------------------


def test_outbound_connection_reaches_15001_with_its_original_destination(pod: tuple[str, str]) -> None:
    assert connect(pod[0], SERVICE_IP, 80) == f"outbound {SERVICE_IP}:80"
    assert connect(pod[0], PEER_IP, 9000, uid=1000, gid=1000) == f"outbound {PEER_IP}:9000"


def test_the_proxys_own_connections_are_not_redirected(pod: tuple[str, str]) -> None:
    assert connect(pod[0], SERVICE_IP, 80, uid=1337, gid=1337) == f"service {SERVICE_IP}:80"
    assert connect(pod[0], SERVICE_IP, 80, uid=1000, gid=1337) == f"service {SERVICE_IP}:80"  # by group too


def test_inbound_connection_from_the_peer_reaches_15006(pod: tuple[str, str]) -> None:
    assert connect(pod[1], POD_IP, 8080) == f"inbound {POD_IP}:8080"
    assert connect(pod[1], POD_IP, 9999) == f"inbound {POD_IP}:9999"


@pytest.mark.parametrize(("port", "name"), [(15020, "agent"), (15021, "envoy"), (15090, "stats")])
def test_excluded_inbound_ports_are_reached_directly(pod: tuple[str, str], port: int, name: str) -> None:
    assert connect(pod[1], POD_IP, port) == f"{name} {POD_IP}:{port}"


def test_loopback_the_app_calls_itself_directly_the_proxy_through_inbound_capture(pod: tuple[str, str]) -> None:
    assert connect(pod[0], POD_IP, 8080) == f"app {POD_IP}:8080"
    assert connect(pod[0], "127.0.0.1", 8080) == "app 127.0.0.1:8080"
    assert connect(pod[0], POD_IP, 8080, uid=1337, gid=1337) == f"inbound {POD_IP}:8080"
    # Envoy's inbound passthrough connects from 127.0.0.6: left alone
    assert connect(pod[0], POD_IP, 8080, uid=1337, gid=1337, bind="127.0.0.6") == f"app {POD_IP}:8080"


def test_after_cleanup_nothing_is_captured(namespaces: Namespaces) -> None:
    pod, peer = namespaces.pod_and_peer()
    namespaces.serve(pod, POD_LISTENERS)
    namespaces.serve(peer, ["service=80"])
    assert meshplane_iptables(pod, *INJECTED).returncode == 0
    assert connect(pod, SERVICE_IP, 80) == f"outbound {SERVICE_IP}:80"
    assert meshplane_iptables(pod, "--cleanup").returncode == 0
    assert connect(pod, SERVICE_IP, 80) == f"service {SERVICE_IP}:80"
    assert connect(peer, POD_IP, 8080) == f"app {POD_IP}:8080"


# -- the helper processes run inside the namespaces ----------------------------------------------------------------


def _original_destination(conn: socket.socket) -> str:
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, packed = struct.unpack_from("!2xH4s", raw)
        return f"{socket.inet_ntoa(packed)}:{port}"
    except OSError:  # not NATed and not tracked: the address it came to
        host, port = conn.getsockname()[:2]
        return f"{host}:{port}"


def _serve(listeners: list[str]) -> int:
    sockets: dict[socket.socket, str] = {}
    for item in listeners:
        name, port = item.split("=")
        sock = socket.create_server(("0.0.0.0", int(port)), reuse_port=False)
        sockets[sock] = name
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select(list(sockets), [], [])
        for sock in readable:
            conn, _ = sock.accept()
            with conn:
                conn.sendall(f"{sockets[sock]} {_original_destination(conn)}\n".encode())


def _connect(args: argparse.Namespace) -> int:
    os.setgroups([])
    os.setgid(args.gid)
    os.setuid(args.uid)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            if args.bind:
                sock.bind((args.bind, 0))
            sock.connect((args.address, args.port))
            print(sock.makefile().readline().strip())
    except OSError as exc:
        print(f"error: {exc}")
    return 0


def _helper(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=HELPER)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("serve").add_argument("listeners", nargs="+")
    client = sub.add_parser("connect")
    client.add_argument("address")
    client.add_argument("port", type=int)
    client.add_argument("--uid", type=int, default=0)
    client.add_argument("--gid", type=int, default=0)
    client.add_argument("--bind", default="")
    sub.add_parser("without-net-admin").add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.what == "serve":
        return _serve(args.listeners)
    if args.what == "connect":
        return _connect(args)
    # Out of the bounding set, CAP_NET_ADMIN is gone from the program run next and from its children.
    if ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_NET_ADMIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_NET_ADMIN)")
    os.execv(args.command[0], args.command)


if __name__ == "__main__":
    sys.exit(_helper(sys.argv[1:]))
