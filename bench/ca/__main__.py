"""bench/ca: certificates signed per second by the CA over gRPC+TLS, and a burst of CSRs.

Pre-generates ECDSA P-256 CSRs (each asking for the token's identity), starts a server for every
setting, then runs the load generator (bench/ca/loadgen.py) as a separate process sharing the
machine's cores with them (not pinned) against each server in turn, round after round (the order
rotated each round), so every setting sees the same noise of a shared machine. Server settings:
- `all cores`: `meshplane serve` (local mode, a token from `meshplane token`) free to use every
  core, `--ca-workers auto`, as in production: TLS in its Envoy front end, signing in workers;
- `bare signer`: the floor, bench/ca/baresigner.py: one grpc.aio process with native TLS that
  parses the CSR, signs and returns, nothing else;
- `1 core` (only with `--setting "1 core"`): `meshplane serve` pinned to the first core with
  `--ca-workers 0` (the event loop signs);
- `N workers` (with `--workers N`, repeatable): `meshplane serve --ca-workers N`.
Each round runs, per setting:
- `rate`: `--concurrency` CSRs in flight over `--channels` TLS connections for `--seconds`,
  `--rounds` times: signatures per second and latency;
- `burst`: `--clients` clients, each on its own TLS connection (connected before the clock
  starts), send `--total` CSRs between them: the time from the first send to the last answer;
- the server's CPU time per signature during `rate` (from /proc: the server process, its Envoy and
  its signing workers), since on a saturated machine signatures/s follow CPU per signature.

Usage: python -m bench.ca [--seconds 5] [--rounds 3] [--clients 200] [--total 2000] [--setting NAME] [--workers N]
Prints a table and writes bench/results/ca-<time>.json. Goals (for `all cores`): at least the bare
signer's signatures/s measured in the same run (ratio >= 1.0), >= 1,500 signatures/s, burst < 3 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.common import median, percentile, table, write_result
from tests.helpers.serve import SERVER_NAME, meshplane_cmd, start_serve

NAMESPACE, SERVICE_ACCOUNT = "bench", "load"
IDENTITY = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}"


def make_csrs(count: int) -> list[str]:
    """`count` distinct ECDSA P-256 CSRs asking for IDENTITY, as an agent would send."""
    out = []
    for _ in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench")]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(IDENTITY)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where the load generator sends CSRs: address, root certificate file, token file; the server's pid."""

    addr: str
    root: pathlib.Path
    files: dict[str, pathlib.Path]
    pid: int


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) of `pid` and of its children, keyed by role: `server`, `envoy`, `workers`."""
    out = {"server": 0.0, "envoy": 0.0, "workers": 0.0}
    for child in [pid, *_child_pids(pid)]:
        try:
            fields = pathlib.Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            comm = pathlib.Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        role = "server" if child == pid else "envoy" if comm == "envoy" else "workers"
        out[role] += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return out


def _loadgen(target: Target, mode: str, **kw: Any) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.ca.loadgen", mode, "--target", target.addr,
        "--root", str(target.root), "--server-name", SERVER_NAME,
        "--csrs", str(target.files["csrs"]), "--token", str(target.files["token"]),
    ]  # fmt: skip
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    result = dict(json.loads(out.stdout))
    if result["error_count"]:
        raise SystemExit(f"{mode}: {result['error_count']} errors, e.g. {result['errors']}")
    return result


@dataclass(frozen=True, kw_only=True)
class Setting:
    name: str
    server_cores: frozenset[int] | None  # None: not pinned
    ca_workers: str  # "" for the bare signer


def settings_for(cores: list[int], workers: list[int]) -> list[Setting]:
    """The named settings, then one `N workers` setting per `--workers N`."""
    return [
        Setting(name="1 core", server_cores=frozenset({cores[0]}), ca_workers="0"),
        Setting(name="all cores", server_cores=None, ca_workers="auto"),
        Setting(name="bare signer", server_cores=None, ca_workers=""),
        *(Setting(name=f"{n} workers", server_cores=None, ca_workers=str(n)) for n in workers),
    ]


def start_bare(stack: contextlib.ExitStack, csrs: list[str]) -> tuple[Target, dict[str, Any]]:
    """The bare signer in its own process, stopped when `stack` closes."""
    tmp_path = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ca-bare-")))
    files = {"csrs": tmp_path / "csrs.json", "token": tmp_path / "token"}
    files["csrs"].write_text(json.dumps(csrs))
    files["token"].write_text("unused")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ca.baresigner", "--dir", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip

    def stop() -> None:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)
    assert proc.stdout is not None
    port = json.loads(proc.stdout.readline())["port"]
    info = {"server_cores": "all (not pinned)", "ca_workers": "-", "worker_processes": 0}
    return Target(addr=f"127.0.0.1:{port}", root=tmp_path / "root-cert.pem", files=files, pid=proc.pid), info


def start_setting(setting: Setting, stack: contextlib.ExitStack, csrs: list[str]) -> tuple[Target, dict[str, Any]]:
    """Start the server as `setting` says (stopped when `stack` closes); its target and description."""
    if not setting.ca_workers:
        return start_bare(stack, csrs)
    tmp_path = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ca-")))
    files = {"csrs": tmp_path / "csrs.json", "token": tmp_path / "token"}
    files["csrs"].write_text(json.dumps(csrs))
    running = start_serve(
        tmp_path,
        "--log-level", "warning", "--ca-workers", setting.ca_workers,
        env={"MESHPLANE_LOG_LEVEL": "warning"},
    )  # fmt: skip
    stack.callback(running.stop)
    if setting.server_cores is not None:
        # With `--ca-workers 0` there is no worker process to pin along with the server.
        os.sched_setaffinity(running.proc.pid, setting.server_cores)
    token = subprocess.run(
        [*meshplane_cmd(), "token", "--state-dir", str(running.state_dir), "--namespace", NAMESPACE,
         "--service-account", SERVICE_ACCOUNT, "--ttl", "1h"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    files["token"].write_text(token)
    info = {
        "server_cores": sorted(setting.server_cores) if setting.server_cores is not None else "all (not pinned)",
        "ca_workers": setting.ca_workers,
        "worker_processes": _children(running.proc.pid) - 1,  # less the front end's Envoy
    }
    target = Target(addr=running.addr("secure-grpc"), root=running.root_cert, files=files, pid=running.proc.pid)
    return target, info


def measure_all(targets: dict[str, Target], a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every server started at once and idle but for the one measured; each round measures them all,
    in an order rotated by one each round, so a noisy minute on a shared machine hits all of them."""
    out: dict[str, dict[str, Any]] = {
        name: {"rate": {"signatures_per_s": [], "p50_ms": [], "p99_ms": []}, "cpu_ms_per_signature": [],
               "burst": {"seconds": [], "connect_seconds": [], "p99_ms": []}}
        for name in targets
    }  # fmt: skip
    names = list(targets)
    for n in range(a.rounds):
        order = names[n % len(names) :] + names[: n % len(names)]
        for name in order:
            before = cpu_seconds(targets[name].pid)
            r = _loadgen(
                targets[name],
                "rate",
                seconds=a.seconds,
                warmup=a.warmup,
                concurrency=a.concurrency,
                channels=a.channels,
            )
            after = cpu_seconds(targets[name].pid)
            lat = r["latencies"]
            # Includes the load generator's warm-up second, in proportion: a per-signature cost, not a total.
            signed = len(lat) * (1 + a.warmup / a.seconds)
            out[name]["cpu_ms_per_signature"].append({k: (after[k] - before[k]) * 1000 / signed for k in after})
            out[name]["rate"]["signatures_per_s"].append(len(lat) / r["elapsed"])
            out[name]["rate"]["p50_ms"].append(percentile(lat, 50) * 1000)
            out[name]["rate"]["p99_ms"].append(percentile(lat, 99) * 1000)
        for name in order:
            r = _loadgen(targets[name], "burst", clients=a.clients, total=a.total)
            assert len(r["latencies"]) == a.total
            out[name]["burst"]["seconds"].append(r["elapsed"])
            out[name]["burst"]["connect_seconds"].append(r["connect_s"])
            out[name]["burst"]["p99_ms"].append(percentile(r["latencies"], 99) * 1000)
    for result in out.values():
        cpu = result["cpu_ms_per_signature"]
        result["median_cpu_ms_per_signature"] = {k: median([c[k] for c in cpu]) for k in cpu[0]}
        result["median_cpu_ms_per_signature"]["total"] = median([sum(c.values()) for c in cpu])
        result["rate"]["median_signatures_per_s"] = median(result["rate"]["signatures_per_s"])
        result["burst"]["median_seconds"] = median(result["burst"]["seconds"])
    return out


def _child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _children(pid: int) -> int:
    """How many child processes (signing workers and the front end) the server has."""
    return len(_child_pids(pid))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each rate measurement")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--total", type=int, default=2000)
    p.add_argument("--csrs", type=int, default=500, help="distinct pre-generated CSRs (reused round-robin)")
    p.add_argument("--setting", action="append", help="run only these settings ('all cores', 'bare signer', '1 core')")
    p.add_argument("--workers", type=int, action="append", default=[], help="also `meshplane serve --ca-workers N`")
    a = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    chosen = [*(a.setting or ["all cores", "bare signer"]), *(f"{n} workers" for n in a.workers)]
    settings = [s for s in settings_for(cores, a.workers) if s.name in chosen]
    csrs = make_csrs(a.csrs)
    with contextlib.ExitStack() as stack:
        started = {s.name: start_setting(s, stack, csrs) for s in settings}
        measured = measure_all({name: target for name, (target, _) in started.items()}, a)
    results = {name: {**info, **measured[name]} for name, (_, info) in started.items()}
    print(
        f"CA over gRPC+TLS on {len(cores)} cores; load generator not pinned; ECDSA P-256 CSRs; "
        f"{a.rounds} rounds, interleaved (medians)"
    )
    rows = []
    for s in settings:
        r = results[s.name]
        if not s.ca_workers:
            label = "bare signer (one grpc.aio process, native TLS)"
        else:
            where = f"server on core {cores[0]}" if s.server_cores is not None else "server on all cores"
            label = f"{s.name} ({where}, --ca-workers {s.ca_workers} -> {r['worker_processes']} workers)"
        rows.append(
            [
                label,
                "signatures/s",
                median(r["rate"]["signatures_per_s"]),
                median(r["rate"]["p50_ms"]),
                median(r["rate"]["p99_ms"]),
                f"{a.concurrency} in flight, {a.channels} conns",
            ]
        )
        rows.append(
            [
                "",
                f"burst of {a.total} (s)",
                median(r["burst"]["seconds"]),
                float("nan"),
                median(r["burst"]["p99_ms"]),
                f"{a.clients} clients",
            ]
        )
        rows.append(["", f"connect {a.clients} clients (s)", median(r["burst"]["connect_seconds"]), float("nan"),
                     float("nan"), "before the burst"])  # fmt: skip
        cpu = r["median_cpu_ms_per_signature"]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in cpu.items() if k != "total" and v)
        rows.append(["", "server CPU ms/signature", cpu["total"], float("nan"), float("nan"), parts])
    print(table(["setting", "measure", "value", "p50 ms", "p99 ms", "load"], rows))
    goals: dict[str, Any] = {}
    production = results.get("all cores")
    verdict = {True: "met", False: "NOT met"}
    if production is not None:
        rate = production["rate"]["median_signatures_per_s"]
        goals["signatures_per_s"] = rate >= 1500
        goals["burst"] = production["burst"]["median_seconds"] < 3.0
        line = f"goal (all cores) >= 1500 signatures/s: {verdict[goals['signatures_per_s']]}; "
        line += f"burst < 3 s: {verdict[goals['burst']]}"
        if "bare signer" in results:
            ratio = rate / results["bare signer"]["rate"]["median_signatures_per_s"]
            goals["ratio_to_bare_signer"] = ratio
            goals["at_least_bare_signer"] = ratio >= 1.0
            line += f"; vs bare signer {ratio:.2f}x (goal >= 1.0: {verdict[ratio >= 1.0]})"
        print(line)
    path = write_result(
        "ca",
        {
            "cpu_count": os.cpu_count(), "client_pinned": False, "settings": vars(a),
            "servers": results, "goal_met": goals,
        },
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
