"""The README's "First steps", run as a new user runs them: in a fresh clone, beside `make run`.

The test clones its own checkout with `git clone`, so it sees committed files only (HEAD): a file
that works here but was never committed, or a README edit not yet committed, is not what it tests.
Commit first, then run it. In the clone, `.venv` is a link to the virtualenv running the tests, and
PYTHONPATH points at the clone, so the clone's code is what runs.

The control plane is started with the command of the clone's `make run` (as `make -n` prints it),
on the README's fixed ports; when one of them is taken on this machine the test fails naming it.
Then the fenced `sh` block of the clone's "First steps" section runs with bash in the clone, and
the test checks what a user looks at: the webhook allows the pod with a JSON Patch that adds the
sidecar, and the certificate line names spiffe://cluster.local/ns/shop/sa/cart.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import jsonpatch
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


@dataclass
class ControlPlane:
    clone: pathlib.Path
    proc: subprocess.Popen[bytes]
    log_path: pathlib.Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def first_steps_block(readme: str) -> str:
    """The first fenced `sh` block under the heading `## First steps`, before the next `## ` heading."""
    section = re.search(r"^## First steps\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section, "README.md has no '## First steps' section"
    block = re.search(r"^```sh\n(.*?)^```$", section.group(1), re.M | re.S)
    assert block, "the First steps section has no fenced sh block"
    return block.group(1)


def make_run_command(clone: pathlib.Path) -> str:
    """What `make run` runs in `clone`, variables expanded, without re-installing the virtualenv."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "-n", "-o", ".venv/.installed", "run"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    command = result.stdout.replace("\\\n", " ").strip()
    assert command and "\n" not in command, f"make run is expected to run one command, got:\n{result.stdout}"
    return command


def fixed_ports(command: str) -> list[int]:
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", command)]
    assert ports, f"no 127.0.0.1:PORT address in {command!r}"
    return ports


def fail_if_taken(ports: list[int]) -> None:
    """Fail naming the first port that another program holds (bound as the servers bind it)."""
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                pytest.fail(f"port {port} on 127.0.0.1 is taken; the README's make run needs it free")


def user_env(clone: pathlib.Path) -> dict[str, str]:
    """This environment without meshplane's own settings (a new user has none), running the clone's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHPLANE_")}
    env["PYTHONPATH"] = str(clone)
    return env


def wait_ready(plane: ControlPlane, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if plane.proc.poll() is not None:
            pytest.fail(f"make run's command exited with {plane.proc.returncode}:\n{plane.logs()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within {READY_TIMEOUT:.0f} s:\n{plane.logs()}")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group the command leads (serve, its Envoy and CA workers), then SIGKILL what is left."""
    pgid = proc.pid  # started with start_new_session: its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture
def control_plane(tmp_path: pathlib.Path) -> Iterator[ControlPlane]:
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO.name} is not a git checkout, so there is nothing to clone")
    clone = tmp_path / "meshplane"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    (clone / ".venv").symlink_to(pathlib.Path(sys.prefix))
    command = make_run_command(clone)
    fail_if_taken(fixed_ports(command))
    log_path = tmp_path / "make-run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=clone,
            env=user_env(clone),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    plane = ControlPlane(clone=clone, proc=proc, log_path=log_path)
    try:
        http = re.search(r"--http-addr (\S+)", command)
        assert http, command
        wait_ready(plane, f"http://{http.group(1)}/ready")
        yield plane
    finally:
        stop_group(proc)


def test_first_steps_inject_a_pod_and_get_a_certificate_from_a_fresh_clone(control_plane: ControlPlane) -> None:
    clone = control_plane.clone
    block = first_steps_block((clone / "README.md").read_text())
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block],
        cwd=clone,
        env=user_env(clone),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    shown = f"block:\n{block}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\nserver:\n{control_plane.logs()}"
    assert result.returncode == 0, shown
    lines = result.stdout.splitlines()
    assert lines[0] == "ready", shown

    reviews = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(reviews) == 1, shown
    sent = json.loads((clone / "examples" / "admission-review.json").read_text())
    response = reviews[0]["response"]
    assert response["uid"] == sent["request"]["uid"], shown
    assert response["allowed"] is True, shown
    assert response["patchType"] == "JSONPatch", shown
    pod = jsonpatch.apply_patch(sent["request"]["object"], json.loads(base64.b64decode(response["patch"])))
    containers = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    assert {"istio-init", "istio-proxy"} <= {c["name"] for c in containers}, pod

    certificate = re.compile(
        r"spiffe://cluster\.local/ns/shop/sa/cart valid until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, "
        r"issued by O=cluster\.local"
    )
    assert certificate.fullmatch(lines[-1]), shown
