"""Run `meshplane serve` as a real subprocess for end-to-end tests.

`start_serve(tmp_path, *extra_args)` picks free loopback ports, starts the process in local mode
(a config dir under tmp_path unless `--config-dir`/`--kubeconfig` is passed), waits until
`/ready` answers 200, and returns a `Running` with every address. Always `stop()` it (the
`serve` fixture in tests/conftest.py does).
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
from dataclasses import dataclass, field
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def start_serve(
    tmp_path: pathlib.Path, *extra: str, ready_timeout: float = 60.0, env: dict[str, str] | None = None
) -> Running:
    state_dir = tmp_path / "state"
    config_dir: pathlib.Path | None = None
    args = list(extra)
    if "--config-dir" not in args and "--kubeconfig" not in args:
        config_dir = tmp_path / "config"
        config_dir.mkdir(exist_ok=True)
        args += ["--config-dir", str(config_dir)]
    elif "--config-dir" in args:
        config_dir = pathlib.Path(args[args.index("--config-dir") + 1])
    ports = {name: free_port() for name in ("grpc", "secure-grpc", "webhook", "monitoring", "http")}
    log_path = tmp_path / "serve.log"
    cmd = [
        *meshplane_cmd(),
        "serve",
        "--state-dir", str(state_dir),
        "--grpc-addr", f"127.0.0.1:{ports['grpc']}",
        "--secure-grpc-addr", f"127.0.0.1:{ports['secure-grpc']}",
        "--webhook-addr", f"127.0.0.1:{ports['webhook']}",
        "--monitoring-addr", f"127.0.0.1:{ports['monitoring']}",
        "--http-addr", f"127.0.0.1:{ports['http']}",
        "--log-level", "debug",
        *args,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    running = Running(proc=proc, state_dir=state_dir, config_dir=config_dir, log_path=log_path, ports=ports)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"meshplane serve exited with {proc.returncode}:\n{running.logs()}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(f"{running.http_url}/ready", timeout=2) as resp,
        ):
            if resp.status == 200:
                return running
        time.sleep(0.1)
    running.stop()
    raise RuntimeError(f"meshplane serve not ready within {ready_timeout}s:\n{running.logs()}")


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
