"""`meshplane agent` as a process, against a real `meshplane serve`, with real Envoys.

Two workloads (interception NONE, each on its own loopback addresses): their agents get
certificates, Envoy becomes ready through 15021, a call crosses both sidecars over mTLS; then the
faults: Envoy killed, SIGTERM, a missing Envoy binary, a taken status port, bad options.
"""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.agent.conftest import pick_loopback, refused_port
from tests.certs.test_e2e_serve import token
from tests.discovery import meshdata as m
from tests.e2e.envoyproxy import wait_for
from tests.helpers.serve import Running, meshplane_cmd, start_serve

NS = "shop"
PORT = 9080


@dataclass
class Workload:
    name: str
    ip: str  # the pod IP: Envoy's inbound listener, 15020/15021/15090
    loopback: str  # the pod's loopback: the app, Envoy's admin and outbound listeners


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    log: pathlib.Path
    workload: Workload

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def get(url: str, *, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Workload, Workload]]:
    tmp = tmp_path_factory.mktemp("agent-mesh")
    client = Workload("client", pick_loopback(), pick_loopback())
    server = Workload("web", pick_loopback(), pick_loopback())
    config = tmp / "config"
    config.mkdir()
    objects = [
        m.namespace(NS),
        m.service("web", NS, port=PORT, target=PORT, cluster_ip="10.96.40.4"),
        m.endpoint_slice("web", NS, ips=[server.ip], port=PORT),
        m.pod("web-1", server.ip, NS, app="web", sa="web"),
        m.pod("client-1", client.ip, NS, app="client", sa="client"),
    ]
    (config / "mesh.yaml").write_text(m.dump_yaml(objects))
    running = start_serve(tmp, "--config-dir", str(config), env={"PILOT_DEBOUNCE_AFTER": "0s"})
    try:
        yield running, client, server
    finally:
        running.stop()


def start_agent(
    running: Running, workload: Workload, workdir: pathlib.Path, *extra: str, env: dict[str, str] | None = None
) -> Agent:
    base = workdir / workload.name
    base.mkdir(parents=True, exist_ok=True)
    (base / "token").write_text(token(running, "--namespace", NS, "--service-account", workload.name))
    (base / "labels").write_text(f'app="{workload.name}"\nsecurity.istio.io/tlsMode="istio"\n')
    log = base / "agent.log"
    cmd = [
        *meshplane_cmd(), "agent", "proxy", "sidecar",
        "--pod-name", f"{workload.name}-1", "--pod-namespace", NS, "--instance-ip", workload.ip,
        "--service-account", workload.name,
        "--discovery-address", running.addr("secure-grpc"), "--istiod-san", "istiod.istio-system.svc",
        "--token-file", str(base / "token"), "--root-cert", str(running.root_cert),
        "--labels-file", str(base / "labels"), "--proxy-dir", str(base / "proxy"),
        "--sds-socket", str(base / "sds.sock"),
        "--loopback-address", workload.loopback, "--bind-address", workload.ip,
        "--cert-ttl", "1h", "--drain-duration", "2s", *extra,
    ]  # fmt: skip
    environment = {
        **os.environ,
        "ISTIO_META_INTERCEPTION_MODE": "NONE",
        "PROXY_CONFIG": json.dumps({"concurrency": 1}),
        **(env or {}),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environment)
    return Agent(proc, log, workload)


def ready(agent: Agent) -> bool:
    if agent.proc.poll() is not None:
        raise AssertionError(f"agent exited with {agent.proc.returncode}:\n{agent.logs()}")
    return get(f"http://{agent.workload.ip}:15021/healthz/ready")[0] == 200


@pytest.fixture
def workdir() -> Iterator[pathlib.Path]:
    import shutil
    import tempfile

    path = pathlib.Path(tempfile.mkdtemp(prefix="mp-agentp-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _App(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"xfcc": self.headers.get("x-forwarded-client-cert")}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def envoy_pid(agent: Agent) -> int | None:
    """The pid of the agent's Envoy, None while it has none."""
    out = subprocess.run(
        ["pgrep", "-P", str(agent.proc.pid), "-x", "envoy"], capture_output=True, text=True, check=False
    )
    pids = out.stdout.split()
    assert len(pids) <= 1, f"expected at most one Envoy child of the agent, found {pids}"
    return int(pids[0]) if pids else None


def test_two_sidecars_carry_mtls_and_survive_an_envoy_kill(
    mesh: tuple[Running, Workload, Workload], workdir: pathlib.Path
) -> None:
    running, client, server = mesh
    app = http.server.ThreadingHTTPServer((server.loopback, PORT), _App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    agents = [start_agent(running, w, workdir) for w in (client, server)]
    try:
        for agent in agents:
            wait_for(lambda agent=agent: ready(agent), timeout=60, what=f"{agent.workload.name} ready on 15021")
        url = f"http://{client.loopback}:{PORT}/"
        host = f"web.{NS}.svc.cluster.local"
        _, body = wait_for(lambda: (r := get(url, host=host))[0] == 200 and r, what="a call through both")
        assert f"URI=spiffe://cluster.local/ns/{NS}/sa/client" in json.loads(body)["xfcc"]
        certs = json.loads(get(f"http://{client.ip}:15020/debug/certs")[1])
        assert certs["identity"] == f"spiffe://cluster.local/ns/{NS}/sa/client" and certs["rotations"] == 1
        assert "istio_agent_cert_expiry_timestamp" in get(f"http://{client.ip}:15020/stats/prometheus")[1]

        old = envoy_pid(agents[0])
        assert old is not None
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: envoy_pid(agents[0]) not in (old, None), timeout=30, what="the agent to restart Envoy")
        wait_for(lambda: ready(agents[0]), timeout=60, what="the restarted Envoy to be ready")
        assert wait_for(lambda: get(url, host=host)[0] == 200, what="calls after the restart")
        assert "restart" in agents[0].logs().lower()
    finally:
        codes = [a.stop() for a in agents]
        app.shutdown()
        app.server_close()
    assert codes == [0, 0], [a.logs()[-2000:] for a in agents]
    leftover = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True, check=False).stdout.split()
    assert leftover == [], "Envoy or agent processes outlived the agent"
    assert not (workdir / "client" / "sds.sock").exists()


def test_missing_envoy_binary_exits_1_naming_it(
    mesh: tuple[Running, Workload, Workload], workdir: pathlib.Path
) -> None:
    running, client, _ = mesh
    agent = start_agent(running, client, workdir, "--envoy", str(workdir / "no-envoy"))
    assert agent.proc.wait(30) == 1
    assert str(workdir / "no-envoy") in agent.logs()


def test_taken_status_port_exits_1_naming_the_address(
    mesh: tuple[Running, Workload, Workload], workdir: pathlib.Path
) -> None:
    import socket

    running, _, _ = mesh
    client = Workload("client", pick_loopback(), pick_loopback())
    with socket.socket() as holder:
        holder.bind((client.ip, 15020))
        holder.listen()
        agent = start_agent(running, client, workdir)
        assert agent.proc.wait(30) == 1
    assert f"{client.ip}:15020" in agent.logs()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--cert-ttl", "soon"], {}, "--cert-ttl"),
        (["--instance-ip", "not-an-ip"], {}, "--instance-ip"),
        # the control plane refuses a zone in the node's id: the agent says so at start
        (["--instance-ip", "fe80::1%lo"], {}, "--instance-ip (env INSTANCE_IP): 'fe80::1%lo' is not an IP address: a"),
        ([], {"ISTIO_META_INTERCEPTION_MODE": "SIDEWAYS"}, "ISTIO_META_INTERCEPTION_MODE"),
        ([], {"PROXY_CONFIG": "{not json"}, "PROXY_CONFIG"),
        ([], {"ISTIO_KUBE_APP_PROBERS": '{"/app-health/web/readyz": {"httpGet": {"port": "http"}}}'}, "port"),
    ],
)
def test_bad_options_exit_2_naming_the_field(
    mesh: tuple[Running, Workload, Workload], workdir: pathlib.Path, args: list[str], env: dict[str, str], message: str
) -> None:
    running, client, _ = mesh
    agent = start_agent(running, client, workdir, *args, env=env)
    assert agent.proc.wait(30) == 2
    assert message in agent.logs()
    assert "Traceback" not in agent.logs()


def test_unreachable_discovery_server_is_named_in_readiness_and_the_agent_keeps_running(
    mesh: tuple[Running, Workload, Workload], workdir: pathlib.Path
) -> None:
    running, _, _ = mesh
    client = Workload("client", pick_loopback(), pick_loopback())
    closed = f"127.0.0.1:{refused_port()}"
    agent = start_agent(  # the flag given last wins
        running, client, workdir, "--ca-addr", running.addr("secure-grpc"), "--discovery-address", closed
    )
    try:

        def reason() -> str | None:
            # Envoy opens 15021 only once it has its first configuration: ask the agent itself
            status, body = get(f"http://{client.ip}:15020/healthz/ready")
            return body if status == 503 and "failed connections to the discovery address" in body else None

        body = wait_for(reason, timeout=60, what="readiness naming the unreachable discovery server")
        assert "has not received clusters" in body
        assert json.loads(get(f"http://{client.ip}:15020/debug/certs")[1])["rotations"] == 1  # the CA still works
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0


def test_unreachable_ca_keeps_the_agent_running_and_says_what_it_waits_for(
    mesh: tuple[Running, Workload, Workload], workdir: pathlib.Path
) -> None:
    running, _, _ = mesh
    client = Workload("client", pick_loopback(), pick_loopback())
    agent = start_agent(running, client, workdir, "--ca-addr", f"127.0.0.1:{refused_port()}")
    try:

        def reason() -> str | None:
            status, body = get(f"http://{client.ip}:15020/healthz/ready")
            return body if status == 503 and "UNAVAILABLE" in body else None

        body = wait_for(reason, timeout=60, what="readiness naming the unreachable CA")
        assert "no certificate yet" in body
        assert "waiting for the CA" in agent.logs()
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0
