"""REDIRECT mode for real: two pods in network namespaces, `meshplane iptables`, real agents and Envoys.

The test makes a client pod and a server pod (tests/e2e/netns.py: on kubesim's node network, which routes
every pod packet) and runs `meshplane serve` in the host namespace with its xDS/CA ports on the host's address
on that network.
In each pod, `meshplane iptables` installs the rules with the injector's arguments and `meshplane agent` (default
interception REDIRECT) gets its certificate and runs Envoy. The server app answers with the
`x-forwarded-client-cert` header it got; the client is curl with no proxy settings calling the service IP.

Which user runs what. Istio runs the agent and Envoy as uid/gid 1337, and the rules let that user's traffic
through (`-m owner --uid-owner 1337` and `--gid-owner 1337`: the gid defaults to the uid). Here the interpreter
the agent runs on may live where uid 1337 cannot reach (a virtualenv whose Python is under a mode-0700 home), and
the test must not change the machine to fix that. So the agent (and the Envoy it starts) runs as uid 0 with gid
1337 and no supplementary groups: the rules installed are exactly the injector's, and the proxy's connections
leave unredirected through their `--gid-owner 1337` rule. (The uid rules come first; for traffic to the pod's
own non-127.0.0.1 addresses over `lo`, uid 0 makes them differ from a uid-1337 proxy, a path this test does not
take.) Rewriting the rules to `-u 0 -g 0` was rejected: it would test other rules than the injected ones. The
apps are not the proxy's user, so their traffic is captured: the client is curl as uid/gid 1000 and the server
app runs as root. The plaintext probe is curl as uid/gid 1337: the client's rules let it out as it is, plaintext
straight to the server pod, as a caller without a sidecar would send it.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from certs.authenticate.localtoken import load_or_create_key, mint
from controlplane.demo.procs import Child, StartError, stop_all, wait_until
from controlplane.demo.status import http_ok
from tests.discovery import meshdata as m
from tests.e2e.netns import Pod, PodNetwork, in_ns, pod_network
from tests.helpers.serve import REPO, SERVER_NAME, Running, start_serve

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and iptables")

NS = "shop"
SERVICE_IP, SERVICE_PORT, APP_PORT = "10.96.77.7", 80, 8080
SA = {"client": "sleep", "server": "web"}
OUTBOUND_CLUSTER = f"outbound|{SERVICE_PORT}||web.{NS}.svc.cluster.local"
INBOUND_CLUSTER = f"inbound|{APP_PORT}||"
PROXY_UID = PROXY_GID = 1337
APP_UID = 1000
INJECTED = [
    "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
    "-d", "15090,15021,15020",
]  # fmt: skip
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent"}
READY_TIMEOUT = 45.0
RELEVANT_PREFIXES = ("cluster.outbound|", "cluster.inbound|", "listener.0.0.0.0_")  # shown when a check fails
RELEVANT_SUFFIXES = (
    "downstream_cx_total",
    "no_filter_chain_match",
    "ssl.handshake",
    "TLSv1.3",
    "upstream_rq_200",
    "_5xx",
)


def identity(sa: str) -> str:
    return f"spiffe://cluster.local/ns/{NS}/sa/{sa}"


@dataclass
class Mesh:
    network: PodNetwork
    app_log: pathlib.Path  # the server app writes one `served ...` line per request

    @property
    def client(self) -> Pod:
        return self.network.pods["client"]

    @property
    def server(self) -> Pod:
        return self.network.pods["server"]

    def app_requests(self) -> int:
        return self.app_log.read_text(errors="replace").count("served ")


@dataclass(frozen=True)
class Reply:
    exit_status: int  # curl's
    http_status: str  # "000" when no HTTP answer came
    body: str
    error: str  # curl's stderr

    def __str__(self) -> str:
        return f"curl exit {self.exit_status}, HTTP {self.http_status}: {self.body}{self.error}"


def curl(pod: Pod, url: str, *, uid: int, gid: int) -> Reply:
    """GET `url` from inside `pod` as uid/gid, with no proxy settings (no proxy env vars, no .curlrc)."""
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    argv += ["curl", "-q", "-sS", "--max-time", "10", "-w", "\n%{http_code}", url]
    done = in_ns(pod.ns, *argv, env=CLEAN_ENV)
    body, _, status = done.stdout.rpartition("\n")
    return Reply(exit_status=done.returncode, http_status=status, body=body, error=done.stderr)


def envoy_stats(pod: Pod) -> dict[str, int]:
    """Counters and gauges from the pod's Envoy admin API (127.0.0.1:15000 inside the pod)."""
    done = in_ns(pod.ns, "curl", "-q", "-sS", "--max-time", "5", "http://127.0.0.1:15000/stats", env=CLEAN_ENV)
    assert done.returncode == 0, f"Envoy admin in {pod.ns}: {done.stderr}"
    stats = {}
    for line in done.stdout.splitlines():
        name, _, value = line.rpartition(": ")
        if value.isdigit():
            stats[name] = int(value)
    return stats


def wait_for_stats(pod: Pod, what: str, check: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """Poll the Envoy's stats until `check` holds (counters can trail the response by a moment)."""
    seen: dict[str, int] = {}

    def holds() -> bool:
        nonlocal seen
        seen = envoy_stats(pod)
        return check(seen)

    try:
        wait_until(holds, what=what, timeout=15)
    except StartError as exc:
        relevant = {k: v for k, v in seen.items() if k.startswith(RELEVANT_PREFIXES) and k.endswith(RELEVANT_SUFFIXES)}
        raise AssertionError(f"{exc}\n{pod.name}'s Envoy stats: {json.dumps(relevant, indent=1)}") from None
    return seen


def wait_for(child: Child, check: Callable[[], bool], *, what: str) -> None:
    """Poll `check`; AssertionError with the end of the child's log when it exits or READY_TIMEOUT passes."""
    try:
        wait_until(check, what=what, timeout=READY_TIMEOUT, watch=[child])
    except StartError as exc:
        raise AssertionError(f"{exc}\n{child.name}'s log ends with:\n{child.log_tail(30)}") from None


def config(network: PodNetwork) -> str:
    client, server = network.pods["client"], network.pods["server"]
    return m.dump_yaml(
        [
            m.namespace(NS),
            m.service("web", NS, port=SERVICE_PORT, target=APP_PORT, cluster_ip=SERVICE_IP),
            m.endpoint_slice("web", NS, ips=[server.ip], port=APP_PORT),
            m.pod("sleep-1", client.ip, NS, app="sleep", sa=SA["client"]),
            m.pod("web-1", server.ip, NS, app="web", sa=SA["server"], ports={"http": APP_PORT}),
            m.peer_authentication("default", NS, "STRICT"),
        ]
    )


def agent(pod: Pod, *, serve: Running, workdir: pathlib.Path, host_ip: str) -> Child:
    """The pod's agent, as uid 0 / gid 1337 inside the pod (see the module docstring)."""
    pod_dir = workdir / pod.name
    (pod_dir / "proxy").mkdir(parents=True)
    app = "web" if pod.name == "server" else "sleep"
    (pod_dir / "labels").write_text(f'app="{app}"\nsecurity.istio.io/tlsMode="istio"\n')
    key = load_or_create_key(serve.state_dir)
    (pod_dir / "token").write_text(mint(key=key, namespace=NS, service_account=SA[pod.name]))
    argv = [
        "ip", "netns", "exec", pod.ns, "setpriv", f"--regid={PROXY_GID}", "--clear-groups", "--",
        sys.executable, "-m", "controlplane", "agent", "proxy", "sidecar",
        "--pod-name", f"{app}-1",
        "--pod-namespace", NS,
        "--instance-ip", pod.ip,
        "--service-account", SA[pod.name],
        "--bind-address", "0.0.0.0",
        "--loopback-address", "127.0.0.1",
        "--discovery-address", f"{host_ip}:15012",
        "--istiod-san", SERVER_NAME,
        "--token-file", str(pod_dir / "token"),
        "--root-cert", str(serve.root_cert),
        "--labels-file", str(pod_dir / "labels"),
        "--proxy-dir", str(pod_dir / "proxy"),
        "--sds-socket", str(pod_dir / "sds.sock"),
        "--drain-duration", "1s",
        "--log-level", "info",
    ]  # fmt: skip
    return Child(name=f"{pod.name} agent", argv=argv, log_path=workdir / f"{pod.name}-agent.log")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    for tool in ("curl", "setpriv", "iptables-restore"):
        assert shutil.which(tool), f"{tool} is needed on PATH (packages curl, util-linux, iptables)"
    workdir = tmp_path_factory.mktemp("redirect")
    with pod_network("client", "server") as network:
        config_dir = workdir / "config"
        config_dir.mkdir()
        (config_dir / "mesh.yaml").write_text(config(network))
        # start_serve binds everything on 127.0.0.1; the later flags move xDS and the CA to the pods' side
        serve = start_serve(
            workdir,
            "--config-dir", str(config_dir),
            "--grpc-addr", f"{network.host_ip}:15010",
            "--secure-grpc-addr", f"{network.host_ip}:15012",
        )  # fmt: skip
        children: list[Child] = []
        try:
            for pod in network.pods.values():
                done = in_ns(pod.ns, sys.executable, "-m", "controlplane", "iptables", *INJECTED)
                assert done.returncode == 0, f"meshplane iptables in {pod.ns}: {done.stderr}"
            agents = [
                agent(pod, serve=serve, workdir=workdir, host_ip=network.host_ip) for pod in network.pods.values()
            ]
            children += agents
            app = Child(
                name="server app",
                argv=["ip", "netns", "exec", network.pods["server"].ns, sys.executable, "-m", __name__, "echo"],
                log_path=workdir / "server-app.log",
                env={"PYTHONPATH": str(REPO)},
            )
            children.append(app)
            for child in children:
                child.start()
            for pod, child in zip(network.pods.values(), agents, strict=True):
                url = f"http://{pod.ip}:15020/healthz/ready"
                wait_for(child, functools.partial(http_ok, url), what=f"{pod.name}'s sidecar to be ready ({url})")
            wait_for(app, lambda: "listening" in app.log_path.read_text(), what="the server app to listen")
            yield Mesh(network=network, app_log=app.log_path)
            stop_all(children, timeout=20)
            left = network.processes()
            assert left == {}, f"processes still running in the pods after their agents stopped: {left}"
        finally:
            stop_all(children, timeout=20)
            serve.stop()


def test_a_client_without_proxy_settings_reaches_the_service_ip_through_both_sidecars_over_mtls(mesh: Mesh) -> None:
    reply = curl(mesh.client, f"http://{SERVICE_IP}/", uid=APP_UID, gid=APP_UID)
    assert (reply.exit_status, reply.http_status) == (0, "200"), reply
    seen = json.loads(reply.body)
    xfcc = (seen["xfcc"] or "").split(";")
    assert f"URI={identity(SA['client'])}" in xfcc, seen
    assert f"By={identity(SA['server'])}" in xfcc, seen
    assert seen["peer"] == "127.0.0.1"  # the app was called by its sidecar, not by the client directly

    # 0.0.0.0_80 binds no socket: its connections can only have been handed over by 15001 (use_original_dst)
    wait_for_stats(
        mesh.client,
        "the client's Envoy to count the request on 0.0.0.0_80 and to the outbound cluster over TLS",
        lambda s: (
            s.get("listener.0.0.0.0_80.downstream_cx_total", 0) >= 1
            and s.get(f"cluster.{OUTBOUND_CLUSTER}.upstream_rq_200", 0) >= 1
            and s.get(f"cluster.{OUTBOUND_CLUSTER}.ssl.handshake", 0) >= 1
            and s.get(f"cluster.{OUTBOUND_CLUSTER}.ssl.versions.TLSv1.3", 0) >= 1
        ),
    )
    wait_for_stats(
        mesh.server,
        "the server's Envoy to count the mTLS connection on 15006 and the request to the app",
        lambda s: (
            s.get("listener.0.0.0.0_15006.downstream_cx_total", 0) >= 1
            and s.get("listener.0.0.0.0_15006.ssl.handshake", 0) >= 1
            and s.get(f"cluster.{INBOUND_CLUSTER}.upstream_rq_200", 0) >= 1
        ),
    )


def test_plaintext_to_the_server_pod_is_refused_by_its_sidecar_under_strict(mesh: Mesh) -> None:
    before = envoy_stats(mesh.server).get("listener.0.0.0.0_15006.no_filter_chain_match", 0)
    served = mesh.app_requests()

    # as the proxy's uid, the client's rules let the request out as it is: plaintext, straight to the pod IP
    reply = curl(mesh.client, f"http://{mesh.server.ip}:{APP_PORT}/", uid=PROXY_UID, gid=PROXY_GID)

    assert reply.exit_status != 0 and reply.http_status == "000", f"expected no HTTP answer: {reply}"
    wait_for_stats(
        mesh.server,
        "the server's Envoy to refuse a plaintext connection on 15006",
        lambda s: s.get("listener.0.0.0.0_15006.no_filter_chain_match", 0) > before,
    )
    assert mesh.app_requests() == served


# -- the server app, run inside the server pod: `python -m tests.e2e.test_redirect_netns echo` --------------------


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers GET with JSON: the XFCC header it got and the address the connection came from."""

    def do_GET(self) -> None:
        peer = self.client_address[0]
        body = json.dumps({"xfcc": self.headers.get("x-forwarded-client-cert"), "peer": peer}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print(f"served {self.path} to {peer}", flush=True)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=__name__)
    parser.add_argument("what", choices=["echo"])
    parser.parse_args(argv)
    server = http.server.ThreadingHTTPServer(("0.0.0.0", APP_PORT), _Echo)
    print("listening", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
