"""bench/ca: certificates signed per second by the CA over gRPC+TLS, and a burst of CSRs.

Starts `meshplane serve` (local mode) pinned to one core, pre-generates ECDSA P-256 CSRs (each
asking for the token's identity) and a token with `meshplane token`, then runs the load generator
(bench/ca/loadgen.py) as a separate process pinned to the other core:
- `rate`: `--concurrency` CSRs in flight over `--channels` TLS connections for `--seconds`,
  `--rounds` times: signatures per second and latency;
- `burst`: `--clients` clients, each on its own TLS connection (connected before the clock
  starts), send `--total` CSRs between them: the time from the first send to the last answer.

Usage: python -m bench.ca [--seconds 5] [--rounds 3] [--clients 200] [--total 2000]
Prints a table and writes bench/results/ca-<time>.json. Goal: >= 1,500 signatures/s, burst < 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.common import median, percentile, table, write_result
from tests.helpers.serve import SERVER_NAME, Running, meshplane_cmd, start_serve

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


def _loadgen(
    running: Running, files: dict[str, pathlib.Path], mode: str, core: int | None, **kw: Any
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.ca.loadgen", mode, "--target", running.addr("secure-grpc"),
        "--root", str(running.root_cert), "--server-name", SERVER_NAME,
        "--csrs", str(files["csrs"]), "--token", str(files["token"]),
    ]  # fmt: skip
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    result = dict(json.loads(out.stdout))
    if result["error_count"]:
        raise SystemExit(f"{mode}: {result['error_count']} errors, e.g. {result['errors']}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--total", type=int, default=2000)
    p.add_argument("--csrs", type=int, default=500, help="distinct pre-generated CSRs (reused round-robin)")
    a = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    with tempfile.TemporaryDirectory(prefix="bench-ca-") as tmp:
        tmp_path = pathlib.Path(tmp)
        files = {"csrs": tmp_path / "csrs.json", "token": tmp_path / "token"}
        files["csrs"].write_text(json.dumps(make_csrs(a.csrs)))
        running = start_serve(tmp_path, "--log-level", "warning", env={"MESHPLANE_LOG_LEVEL": "warning"})
        try:
            if server_core is not None:
                os.sched_setaffinity(running.proc.pid, {server_core})
            token = subprocess.run(
                [*meshplane_cmd(), "token", "--state-dir", str(running.state_dir), "--namespace", NAMESPACE,
                 "--service-account", SERVICE_ACCOUNT, "--ttl", "1h"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            files["token"].write_text(token)
            rates, p50s, p99s = [], [], []
            for _ in range(a.rounds):
                r = _loadgen(
                    running, files, "rate", client_core,
                    seconds=a.seconds, concurrency=a.concurrency, channels=a.channels,
                )  # fmt: skip
                lat = r["latencies"]
                rates.append(len(lat) / r["elapsed"])
                p50s.append(percentile(lat, 50) * 1000)
                p99s.append(percentile(lat, 99) * 1000)
            bursts, connects, burst_p99 = [], [], []
            for _ in range(a.rounds):
                r = _loadgen(running, files, "burst", client_core, clients=a.clients, total=a.total)
                assert len(r["latencies"]) == a.total
                bursts.append(r["elapsed"])
                connects.append(r["connect_s"])
                burst_p99.append(percentile(r["latencies"], 99) * 1000)
        finally:
            running.stop()
    rate_goal, burst_goal = median(rates) >= 1500, median(bursts) < 3.0
    print(
        f"CA over gRPC+TLS; server pinned to core {server_core}, load generator to core {client_core}; "
        f"ECDSA P-256 CSRs; {a.rounds} rounds (medians)"
    )
    print(
        table(
            ["measure", "value", "p50 ms", "p99 ms", "setting"],
            [
                [
                    "signatures/s",
                    median(rates),
                    median(p50s),
                    median(p99s),
                    f"{a.concurrency} in flight, {a.channels} conns",
                ],
                [f"burst of {a.total} (s)", median(bursts), float("nan"), median(burst_p99), f"{a.clients} clients"],
                [f"connect {a.clients} clients (s)", median(connects), float("nan"), float("nan"), "before the burst"],
            ],
        )
    )
    verdict = {True: "met", False: "NOT met"}
    print(f"goal >= 1500 signatures/s: {verdict[rate_goal]}; burst < 3 s: {verdict[burst_goal]}")
    path = write_result(
        "ca",
        {
            "cpu_count": os.cpu_count(), "server_core": server_core, "client_core": client_core,
            "settings": vars(a),
            "rate": {"signatures_per_s": rates, "p50_ms": p50s, "p99_ms": p99s,
                     "median_signatures_per_s": median(rates)},
            "burst": {"seconds": bursts, "connect_seconds": connects, "p99_ms": burst_p99,
                      "median_seconds": median(bursts)},
            "goal_met": {"signatures_per_s": rate_goal, "burst": burst_goal},
        },
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
