"""What the injected lifecycle asks of the sidecar, run as Istio's template writes it, against real agents and Envoys.

`pilot-agent request --debug-port=15020 POST drain` (the native sidecar's preStop hook), `pilot-agent
wait` (the postStart hook of `holdApplicationUntilProxyStarts`), the startup/readiness path on 15021,
and application lifecycle hooks proxied at `/app-lifecycle/<container>/{prestopz,poststartz}`. The
agents run against a real `meshplane serve` (interception NONE, each workload on loopback addresses).
"""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.agent.conftest import pick_loopback
from tests.agent.test_agent_process import PORT, Agent, Workload, get, ready, start_agent
from tests.discovery import meshdata as m
from tests.e2e.envoyproxy import wait_for
from tests.helpers.serve import Running, start_serve

NS = "shop"
PILOT_AGENT = pathlib.Path(sys.executable).parent / "pilot-agent"


@dataclass(frozen=True)
class Mesh:
    running: Running
    client: Workload
    server: Workload  # behind the Service `web`
    late: Workload  # started only by the test of `wait`


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("lifecycle-mesh")
    client, server, late = (Workload(name, pick_loopback(), pick_loopback()) for name in ("client", "web", "late"))
    config = tmp / "config"
    config.mkdir()
    objects = [
        m.namespace(NS),
        m.service("web", NS, port=PORT, target=PORT, cluster_ip="10.96.40.5"),
        m.endpoint_slice("web", NS, ips=[server.ip], port=PORT),
        m.pod("web-1", server.ip, NS, app="web", sa="web"),
        m.pod("client-1", client.ip, NS, app="client", sa="client"),
        m.pod("late-1", late.ip, NS, app="late", sa="late"),
    ]
    (config / "mesh.yaml").write_text(m.dump_yaml(objects))
    running = start_serve(tmp, "--config-dir", str(config), env={"PILOT_DEBOUNCE_AFTER": "0s"})
    try:
        yield Mesh(running, client, server, late)
    finally:
        running.stop()


@pytest.fixture(scope="module")
def workdir() -> Iterator[pathlib.Path]:
    import shutil
    import tempfile

    path = pathlib.Path(tempfile.mkdtemp(prefix="mp-life-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
    leftover = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True, check=False).stdout.split()
    assert leftover == [], "Envoy or agent processes outlived their agent"


@pytest.fixture(scope="module")
def client_agent(mesh: Mesh, workdir: pathlib.Path) -> Iterator[Agent]:
    """The client workload's agent, ready (its Envoy has its configuration); stopped after the module.

    Its container `web` has lifecycle hooks, as the injector moves them into `ISTIO_KUBE_APP_PROBERS`:
    preStop an httpGet and postStart a tcpSocket of the application (see `app`); container `cache` a
    postStart tcpSocket of a port nobody listens on.
    """
    app = mesh.server.loopback
    with socket.socket() as closed:
        closed.bind((app, 0))
        probers = {
            "/app-lifecycle/web/prestopz": {"httpGet": {"path": "/shutdown", "port": PORT, "host": app}},
            "/app-lifecycle/web/poststartz": {"tcpSocket": {"port": PORT, "host": app}},
            "/app-lifecycle/cache/poststartz": {"tcpSocket": {"port": closed.getsockname()[1], "host": app}},
        }
        agent = start_agent(mesh.running, mesh.client, workdir, env={"ISTIO_KUBE_APP_PROBERS": json.dumps(probers)})
        try:
            wait_for(lambda: ready(agent), timeout=60, what="the client's agent ready on 15021")
            yield agent
        finally:
            assert stopped(agent) == 0


def pilot_agent(workload: Workload, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run Istio's command line in the workload's container environment (the env vars the agent reads)."""
    return subprocess.run(
        [str(PILOT_AGENT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=container_env(workload),
        check=False,
    )


def container_env(workload: Workload) -> dict[str, str]:
    return {
        **os.environ,
        "MESHPLANE_BIND_ADDRESS": workload.ip,
        "ISTIO_META_LOOPBACK_ADDRESS": workload.loopback,
    }


class Held(http.server.BaseHTTPRequestHandler):
    """The application: `/slow` answers once the test releases it; every path is recorded."""

    release = threading.Event()
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.path == "/slow":
            self.release.wait(30)
        body = b"done\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def app(mesh: Mesh) -> Iterator[type[Held]]:
    server = mesh.server

    class App(Held):  # state of its own per test
        release = threading.Event()
        seen: list[str] = []

    handler = App
    httpd = http.server.ThreadingHTTPServer((server.loopback, PORT), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield handler
    finally:
        handler.release.set()
        httpd.shutdown()
        httpd.server_close()


def stopped(agent: Agent) -> int:
    code = agent.stop()
    assert "Traceback" not in agent.logs(), agent.logs()[-3000:]
    return code


def connects(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def test_request_reaches_the_status_and_admin_ports_and_fails_on_an_error_status(client_agent: Agent) -> None:
    client = client_agent.workload
    answer = pilot_agent(client, "request", "--debug-port=15020", "GET", "healthz/ready")
    assert (answer.returncode, answer.stdout) == (0, "ready\n\n"), answer.stderr
    certs = pilot_agent(client, "request", "--debug-port", "15020", "GET", "/debug/certs")
    assert json.loads(certs.stdout)["identity"] == f"spiffe://cluster.local/ns/{NS}/sa/client"
    info = pilot_agent(client, "request", "GET", "server_info")  # the default port: Envoy's admin API
    assert info.returncode == 0 and json.loads(info.stdout)["state"] == "LIVE"

    wrong_method = pilot_agent(client, "request", "--debug-port=15020", "GET", "drain")
    assert wrong_method.returncode == 1
    assert "received unsuccessful status code 405" in wrong_method.stderr
    assert pilot_agent(client, "request", "--debug-port=15020", "GET", "no/such/path").returncode == 0  # as Istio
    refused = pilot_agent(client, "request", "--debug-port=15004", "GET", "debug")
    assert refused.returncode == 1 and "Connection refused" in refused.stderr
    not_allowed = pilot_agent(client, "request", "--debug-port=22", "GET", "x")
    assert not_allowed.returncode == 2 and "--debug-port 22 is not in the allowed list" in not_allowed.stderr
    assert ready(client_agent), "a GET of /drain must not have drained anything"


def test_wait_returns_once_the_proxy_is_ready_and_times_out_without_one(mesh: Mesh, workdir: pathlib.Path) -> None:
    late = mesh.late
    nobody = Workload("nobody", pick_loopback(), pick_loopback())
    timed_out = pilot_agent(nobody, "wait", "--timeoutSeconds=1", "--periodMillis=100")
    assert timed_out.returncode == 1
    assert "timeout waiting for Envoy proxy to become ready" in timed_out.stderr
    assert "Connection refused" in timed_out.stderr  # the last error

    waiting = subprocess.Popen(  # started before the agent, as the postStart hook is
        [str(PILOT_AGENT), "wait", "--periodMillis=100"],
        env=container_env(late),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    agent: Agent | None = None
    try:
        assert not connects(late.ip, 15021)  # the startup probe fails until Envoy listens
        agent = start_agent(mesh.running, late, workdir)
        _, err = waiting.communicate(timeout=90)
        assert waiting.returncode == 0, err
        assert "Envoy is ready!" in err
        assert get(f"http://{late.ip}:15021/healthz/ready") == (200, "ready\n")  # Istio's startup probe path
        again = pilot_agent(late, "wait", "--timeout=5", "--periodMillis=50")
        assert again.returncode == 0, again.stderr
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
        if agent is not None:
            assert stopped(agent) == 0


def test_drain_stops_new_inbound_connections_while_an_in_flight_request_completes(
    mesh: Mesh, workdir: pathlib.Path, app: type[Held], client_agent: Agent
) -> None:
    client, server = mesh.client, mesh.server
    agent = start_agent(mesh.running, server, workdir)
    try:
        wait_for(lambda: ready(agent), timeout=60, what="the server's agent ready")
        host = f"web.{NS}.svc.cluster.local"
        wait_for(lambda: get(f"http://{client.loopback}:{PORT}/", host=host)[0] == 200, what="a call through both")
        in_flight: list[tuple[int, str]] = []
        caller = threading.Thread(
            target=lambda: in_flight.append(get(f"http://{client.loopback}:{PORT}/slow", host=host)), daemon=True
        )
        caller.start()
        wait_for(lambda: "/slow" in app.seen, what="the slow request to reach the application")
        assert connects(server.ip, PORT)  # the inbound listener accepts

        drained = pilot_agent(server, "request", "--debug-port=15020", "POST", "drain")  # Istio's preStop hook
        assert (drained.returncode, drained.stdout) == (0, "OK\n"), drained.stderr

        assert not connects(server.ip, PORT)  # no new inbound connection
        status, reason = get(f"http://{server.ip}:15020/healthz/ready")
        assert (status, reason) == (503, "draining: the pod is shutting down\n")
        assert get(f"http://{server.ip}:15021/healthz/ready")[0] == 503
        assert pilot_agent(server, "request", "--debug-port=15020", "POST", "drain").returncode == 0  # idempotent

        app.release.set()
        caller.join(30)
        assert in_flight == [(200, "done\n")]  # the in-flight request completed through the drained sidecar
        assert agent.proc.poll() is None  # Envoy keeps running until SIGTERM
    finally:
        app.release.set()
        code = stopped(agent)
    assert code == 0  # SIGTERM after the drain still exits cleanly
    assert "was drained before: stopping it now" in agent.logs()
    leftover = subprocess.run(["pgrep", "-f", str(workdir / server.name)], capture_output=True, text=True, check=False)
    assert leftover.stdout.split() == [], "Envoy outlived its agent"


def test_application_lifecycle_hooks_run_through_the_agent(mesh: Mesh, client_agent: Agent, app: type[Held]) -> None:
    url = f"http://{client_agent.workload.ip}:15020"  # the kubelet's httpGet of the hooks the injector rewrote
    assert get(f"{url}/app-lifecycle/web/poststartz") == (
        200,
        f"TCP connection to {mesh.server.loopback}:{PORT} opened\n",
    )
    assert get(f"{url}/app-lifecycle/web/prestopz")[0] == 200
    assert app.seen == ["/shutdown"]  # the application's own preStop handler ran
    status, body = get(f"{url}/app-lifecycle/cache/poststartz")
    assert status == 500 and "Connection refused" in body  # a failing hook fails, naming why
    missing = get(f"{url}/app-lifecycle/other/prestopz")
    assert missing[0] == 404 and "/app-lifecycle/other/prestopz" in missing[1]
    assert (
        pilot_agent(
            client_agent.workload, "request", "--debug-port=15020", "POST", "app-lifecycle/web/prestopz"
        ).returncode
        == 1
    )  # GET only
