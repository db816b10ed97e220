"""Run `meshplane serve` as a real subprocess for end-to-end tests.

`start_serve(tmp_path, *extra_args)` starts the process in local mode (a config dir under tmp_path
unless `--config-dir`/`--kubeconfig` is passed) with every listener on 127.0.0.1 port 0, reads the
ports it really bound from `<state-dir>/listening.json`, waits until `/ready` answers 200, and
returns a `Running` with every address. Always `stop()` it (the `serve` fixture in
tests/conftest.py does). `restart_serve(running)` starts the same command again on the same ports.

`closed_port()` holds a port where nothing listens (connections are refused) for tests of
unreachable servers.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[2]


# The `--*-addr` flag of each listener, keyed like `<state-dir>/listening.json`.
ADDR_FLAGS = {
    "grpc": "--grpc-addr",
    "secure-grpc": "--secure-grpc-addr",
    "webhook": "--webhook-addr",
    "monitoring": "--monitoring-addr",
    "http": "--http-addr",
}


@contextlib.contextmanager
def closed_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on `host` where connections are refused, and stay refused while the block runs.

    The socket is bound (so no other program can take the port) but never listens: Linux answers
    a connection attempt with a reset, i.e. "connection refused".
    """
    with socket.socket() as s:
        s.bind((host, 0))
        yield int(s.getsockname()[1])


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    state_dir: pathlib.Path
    config_dir: pathlib.Path | None
    log_path: pathlib.Path
    ports: dict[str, int] = field(default_factory=dict)

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def http_url(self) -> str:
        return f"http://{self.addr('http')}"

    @property
    def webhook_url(self) -> str:
        return f"https://{self.addr('webhook')}/inject"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.addr('monitoring')}/metrics"

    @property
    def root_cert(self) -> pathlib.Path:
        return self.state_dir / "root-cert.pem"

    def client_ssl_context(self) -> ssl.SSLContext:
        """Verifies the serving certificate against the mesh root. Use server_hostname=SERVER_NAME."""
        return ssl.create_default_context(cafile=str(self.root_cert))

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


SERVER_NAME = "istiod.istio-system.svc"  # a DNS SAN of the serving certificate


def meshplane_cmd() -> list[str]:
    return [sys.executable, "-m", "controlplane"]


# Runs argv[2:] with argv[1] file descriptors (RLIMIT_NOFILE, soft and hard).
_WITH_OPEN_FILES = (
    "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def with_open_files(count: int, cmd: list[str]) -> list[str]:
    """`cmd` run with `count` file descriptors (soft and hard limit)."""
    return [sys.executable, "-c", _WITH_OPEN_FILES, str(count), *cmd]


def start_serve(
    tmp_path: pathlib.Path,
    *extra: str,
    ready_timeout: float = 60.0,
    env: dict[str, str] | None = None,
    open_files: int | None = None,
) -> Running:
    """`meshplane serve` in local mode on free ports, ready; `open_files`: its RLIMIT_NOFILE (soft and hard)."""
    state_dir = tmp_path / "state"
    config_dir: pathlib.Path | None = None
    args = list(extra)
    if "--config-dir" not in args and "--kubeconfig" not in args:
        config_dir = tmp_path / "config"
        config_dir.mkdir(exist_ok=True)
        args += ["--config-dir", str(config_dir)]
    elif "--config-dir" in args:
        config_dir = pathlib.Path(args[args.index("--config-dir") + 1])
    listen = [arg for name, flag in ADDR_FLAGS.items() for arg in (flag, "127.0.0.1:0")]
    cmd = [*meshplane_cmd(), "serve", "--state-dir", str(state_dir), *listen, "--log-level", "debug", *args]
    return _launch(
        cmd,
        state_dir=state_dir,
        config_dir=config_dir,
        log_path=tmp_path / "serve.log",
        env=env,
        timeout=ready_timeout,
        open_files=open_files,
    )


def restart_serve(running: Running, *, ready_timeout: float = 60.0, env: dict[str, str] | None = None) -> Running:
    """The same `meshplane serve` command after `running` has exited: same state dir (same CA), same
    config dir, and every listener on the port it had, since clients keep dialling those addresses.

    The ports must be chosen before the program starts here: they were this test's a moment ago,
    but another program could take one in between (then this raises, with the log).
    """
    assert running.proc.poll() is not None, "stop or kill the running process first"
    args = running.proc.args
    assert isinstance(args, list), args  # _launch starts every process from a list
    cmd = [str(arg) for arg in args]
    for name, flag in ADDR_FLAGS.items():
        cmd += [flag, running.addr(name)]  # the flag given last wins
    log_path = running.log_path.with_name(f"{running.log_path.stem}-restarted.log")
    return _launch(
        cmd,
        state_dir=running.state_dir,
        config_dir=running.config_dir,
        log_path=log_path,
        env=env,
        timeout=ready_timeout,
    )


def _launch(
    cmd: list[str],
    *,
    state_dir: pathlib.Path,
    config_dir: pathlib.Path | None,
    log_path: pathlib.Path,
    env: dict[str, str] | None,
    timeout: float,
    open_files: int | None = None,
) -> Running:
    """Start `cmd` (with `open_files` descriptors when given), read its bound ports from listening.json,
    wait for /ready 200; stop it on failure."""
    if open_files is not None:
        cmd = with_open_files(open_files, cmd)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    running = Running(proc=proc, state_dir=state_dir, config_dir=config_dir, log_path=log_path)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"meshplane serve exited with {proc.returncode}:\n{running.logs()}")
            if not running.ports:
                running.ports = _listening(state_dir, pid=proc.pid)
            elif _ready(running):
                return running
            time.sleep(0.1)
    except BaseException:
        running.stop()
        raise
    running.stop()
    raise RuntimeError(f"meshplane serve not ready within {timeout}s:\n{running.logs()}")


def _listening(state_dir: pathlib.Path, *, pid: int) -> dict[str, int]:
    """{listener: port} from `<state-dir>/listening.json` once process `pid` has written it, else {}."""
    try:
        found = json.loads((state_dir / "listening.json").read_text())
    except FileNotFoundError:
        return {}
    if found["pid"] != pid:  # a previous process's file, not yet replaced
        return {}
    return {name: int(address.rpartition(":")[2]) for name, address in found["listeners"].items()}


def _ready(running: Running) -> bool:
    with (
        contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
        urllib.request.urlopen(f"{running.http_url}/ready", timeout=2) as resp,
    ):
        return bool(resp.status == 200)
    return False


class _MeshHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 that verifies the certificate for SERVER_NAME (a SAN it really has)."""

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._mesh_context.wrap_socket(sock, server_hostname=SERVER_NAME)

    _mesh_context: ssl.SSLContext


def post_webhook(
    running: Running,
    body: bytes,
    *,
    path: str = "/inject",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """POST to the webhook over verified TLS; (HTTP status, parsed JSON body or raw text)."""
    conn = _MeshHTTPSConnection("127.0.0.1", running.ports["webhook"], timeout=30)
    conn._mesh_context = running.client_ssl_context()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data.decode(errors="replace")


def admission_review(
    pod: Any, *, namespace: str = "default", uid: str = "test-uid", operation: str = "CREATE"
) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": operation,
                "object": pod,
            },
        }
    ).encode()


def apply_response(pod: Any, response: Any) -> Any:
    """The pod after the AdmissionReview response's JSONPatch (checked with the jsonpatch library)."""
    import jsonpatch

    if "patch" not in response:
        return pod
    assert response.get("patchType") == "JSONPatch", response
    patch = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(pod, patch)
