"""`meshplane demo` for real: the control plane, agents, Envoys and apps on loopback addresses.

Every mesh here runs on random 127.x.y.0/24 ranges (tests/demo/helpers.py), so these tests run beside
each other and beside a user's demo on the default addresses.
"""

from __future__ import annotations

import pathlib
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from controlplane.demo.mesh import DemoMesh
from controlplane.demo.plan import AddressPlan, required_binds, workloads
from controlplane.demo.procs import taken
from tests.demo.helpers import free_plan, kill_processes_mentioning, processes_mentioning
from tests.e2e.envoyproxy import wait_for


def plan_flags(plan: AddressPlan) -> list[str]:
    return [
        "--pod-prefix",
        plan.pod_prefix,
        "--loopback-prefix",
        plan.loopback_prefix,
        "--control-plane",
        plan.control_plane,
    ]


class Demo:
    """`meshplane demo` as a subprocess, its output in a file; `close()` leaves nothing behind."""

    def __init__(self, tmp_path: pathlib.Path, *args: str) -> None:
        self.output = tmp_path / "demo.out"
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controlplane", "demo", *args], stdout=out, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def workdir(self) -> str:
        found = wait_for(lambda: re.search(r"^meshplane demo: work dir (\S+)$", self.text(), re.M), what="work dir")
        return found.group(1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        found = re.search(r"^meshplane demo: work dir (\S+)$", self.text(), re.M)
        if found:
            kill_processes_mentioning(found.group(1))


@pytest.fixture
def demo(tmp_path: pathlib.Path) -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for d in started:
        d.close()


def assert_nothing_left(workdir: str, plan: AddressPlan) -> None:
    assert processes_mentioning(workdir) == {}
    assert taken(required_binds(plan, workloads(plan))) == []


def test_bad_flags_are_named(tmp_path: pathlib.Path) -> None:
    for flags, message in [
        (["--pod-prefix", "10.0.0"], "meshplane: --pod-prefix: '10.0.0' must be three octets inside 127.0.0.0/8"),
        (["--rps", "0"], "meshplane: --rps: '0' must be positive"),
        (["--rps", "nan"], "meshplane: --rps: 'nan' is not a number"),  # float() reads it
        (["--rps", "1_0"], "meshplane: --rps: '1_0' is not a number"),  # and this
        (["--duration", "soon"], "meshplane: --duration: 'soon' is not a duration"),
        (["--cert-ttl", "1x"], "meshplane: --cert-ttl: '1x' is not a duration"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "controlplane", "demo", *flags],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result
        assert message in result.stderr and "Traceback" not in result.stderr


def test_a_taken_port_stops_the_start_naming_it_and_what_to_do(tmp_path: pathlib.Path) -> None:
    plan = free_plan()
    with socket.socket() as blocker:
        blocker.bind((plan.control_plane, 15012))
        blocker.listen()
        result = subprocess.run(
            [sys.executable, "-m", "controlplane", "demo", *plan_flags(plan), "--workdir", str(tmp_path / "w")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"{plan.control_plane}:15012 (control plane secure-grpc): in use" in result.stderr
    assert "Is another meshplane demo running?" in result.stderr and "Traceback" not in result.stderr
    assert processes_mentioning(str(tmp_path / "w")) == {}


def test_a_work_dir_in_use_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "demo", *plan_flags(free_plan()), "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"work dir {tmp_path / 'w'} is not an empty directory: pass a new or empty one" in result.stderr
    assert (tmp_path / "w" / "notes.txt").read_text() == "mine"


def test_a_20_second_demo_has_no_failures_and_leaves_nothing_behind(tmp_path: pathlib.Path, demo: list[Demo]) -> None:
    plan = free_plan()
    run = Demo(tmp_path, *plan_flags(plan), "--duration", "20", "--interval", "5")
    demo.append(run)
    workdir = run.workdir()
    assert run.proc.wait(120) == 0, run.text()
    out = run.text()
    assert "OK:" in out and "none failed" in out
    final = out[out.index("stopping:") :]
    assert re.search(r"^frontend -> reviews: (\d+) sent, 0 failed, .*answered by v1 \d+, v2 \d+$", final, re.M)
    assert re.search(r"^greeter-client -> greeter: (\d+) sent, 0 failed, .*answered by greeter \d+$", final, re.M)
    # Mutual TLS all the way: each server's sidecar saw the caller's own certificate.
    assert "reviews-v1: " in final and "callers by certificate: spiffe://cluster.local/ns/demo/sa/frontend" in final
    assert "callers by certificate: spiffe://cluster.local/ns/demo/sa/greeter-client" in final
    for name in ("frontend", "reviews-v1", "reviews-v2", "greeter", "greeter-client"):
        assert re.search(rf"^{name} +spiffe://cluster.local/ns/demo/sa/\S+ +[0-9a-f]{{12}} .*SYNCED \(4\)", final, re.M)
    assert f"work dir {workdir} removed" in out and not pathlib.Path(workdir).exists()
    assert_nothing_left(workdir, plan)


def test_sigterm_in_the_middle_stops_everything_cleanly(tmp_path: pathlib.Path, demo: list[Demo]) -> None:
    plan = free_plan()
    run = Demo(tmp_path, *plan_flags(plan), "--interval", "1")
    demo.append(run)
    workdir = run.workdir()
    wait_for(lambda: re.search(r"control plane ready; [1-9]\d* requests sent", run.text()), timeout=90, what="traffic")
    assert processes_mentioning(workdir)  # the mesh is running
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(90) == 0, run.text()
    assert "stopping: apps, then agents and their Envoys, then the control plane" in run.text()
    assert_nothing_left(workdir, plan)


def test_demo_mesh_in_python_reports_certificates_sync_and_counters(tmp_path: pathlib.Path) -> None:
    plan = free_plan()
    mesh = DemoMesh(tmp_path / "w", plan=plan, rps=10)
    try:
        mesh.start()
        mesh.wait_for_traffic()
        status = mesh.status()
        assert status.control_plane == "ready"
        for row in status.workloads:
            assert row.cert is not None and row.cert.identity == row.workload.identity, row
            assert row.connected and set(row.xds.values()) == {"SYNCED"}, row
        stats = mesh.app_stats()
        assert stats["frontend"] is not None and stats["frontend"].failed == 0
        assert (mesh.config_dir / "reviews.yaml").exists() and (mesh.logs_dir / "serve.log").exists()
    finally:
        mesh.stop()
        kill_processes_mentioning(str(mesh.workdir))
    assert mesh.dead() == []
    assert_nothing_left(str(mesh.workdir), plan)
