"""bench/mesh: what the data plane costs - the same app called directly and through two sidecars with mTLS.

Starts `meshplane serve` (local mode), two sidecars (`meshplane agent`, each running its Envoy) for the
demo's workloads `reviews-v1` (the server) and `frontend` (the client), on free random 127.x.y.0/24
ranges, and one app behind the server's sidecar: `python -m bench.mesh.loadgen serve`, a bare asyncio
HTTP/1.1 keep-alive server answering 200 with a 16-byte body. Then, in the same run:

- Path A (baseline): the load generator calls the app directly on its address.
- Path B: the load generator calls the client's sidecar as the demo's frontend does (interception NONE:
  the client's loopback address and the service port, Host `reviews.demo.svc.cluster.local`): client
  Envoy -> mTLS -> server Envoy -> app. The run fails unless the client's Envoy shows mTLS handshakes.

Each round runs A then B with the same keep-alive connections, warm-up and window; the load generator
(`python -m bench.mesh.loadgen load`) is a separate process. Reported: requests/s, p50 and p99 per path
(medians over rounds), B/A throughput, the latency B adds, errors (must be 0); and for each agent and
each Envoy separately, RSS (VmRSS) and CPU (utime+stime, % of one core) over an idle window before any
traffic (certificates issued), plus RSS after the load. With two or more cores the load generator gets
a core of its own and everything else shares the rest.

Usage: python -m bench.mesh [--seconds 10] [--rounds 3] [--connections 8] [--warmup 1] [--idle-seconds 30]
Prints two tables and writes bench/results/mesh-<time>.json. Exits 1 when a request failed.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from bench.common import median, table, write_result
from bench.mesh.loadgen import SELF, cpu_seconds, positive, positive_int
from controlplane.demo import plan as p
from controlplane.demo.mesh import MAX_SOCKET_PATH, DemoMesh, find_envoy
from controlplane.demo.procs import Child, StartError, taken, wait_until
from controlplane.demo.status import get_json, http_ok

PATHS = {"A": "direct to the app", "B": "client sidecar -> mTLS -> server sidecar -> app"}
SERVER, CLIENT = "reviews-v1", "frontend"
APP = "bench.mesh.loadgen serve: one asyncio process, bare HTTP/1.1 protocol, 200 with a 16-byte body"
READY_TIMEOUT = 60.0


class BenchError(RuntimeError):
    """The run cannot go on; the message says what failed and where to look."""


@dataclass(frozen=True, kw_only=True)
class Cores:
    """Where the processes run: `load` for the load generator, `mesh` for everything else (None: not pinned)."""

    load: int | None
    mesh: frozenset[int] | None

    @classmethod
    def split(cls) -> Cores:
        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2:
            return cls(load=None, mesh=None)
        return cls(load=usable[-1], mesh=frozenset(usable[:-1]))

    def describe(self) -> str:
        if self.load is None or self.mesh is None:
            return "not pinned (one usable core)"
        rest = ",".join(map(str, sorted(self.mesh)))
        return f"load generator on core {self.load}; app, agents, Envoys and control plane on core(s) {rest}"


def rss_mib(pid: int) -> float:
    """A process's resident memory now (VmRSS). Raises OSError when it is gone."""
    found = re.search(r"^VmRSS:\s+(\d+) kB", pathlib.Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(found.group(1)) / 1024 if found else 0.0


# -- the mesh --------------------------------------------------------------------------------------


def free_plan() -> p.AddressPlan:
    """An address plan on random 127.x.y.0/24 ranges where every address the two workloads need is free."""
    rng = random.Random()
    for _ in range(50):
        x, y = rng.randint(1, 254), rng.randint(0, 250)
        plan = p.AddressPlan(
            pod_prefix=f"127.{x}.{y}", loopback_prefix=f"127.{x}.{y + 1}", control_plane=f"127.{x}.{y + 2}.1"
        )
        if not taken(p.required_binds(plan, pair(plan))):
            return plan
    raise StartError("no free 127.x.y.0/24 ranges found: is something listening on most of 127.0.0.0/8?")


def pair(plan: p.AddressPlan) -> tuple[p.Workload, p.Workload]:
    """The demo's server and client workloads (reviews-v1, frontend) of `plan`."""
    by_name = {w.name: w for w in p.workloads(plan)}
    return by_name[SERVER], by_name[CLIENT]


def start_mesh(mesh: DemoMesh) -> None:
    """Start serve, both sidecars and the app (registered in `mesh.apps`, so `mesh.stop()` stops it).
    Raises StartError naming the part that did not start; the caller stops the mesh."""
    server, client = mesh.workloads
    mesh.preflight()
    if len(str(mesh.sds_socket(server))) > MAX_SOCKET_PATH:
        raise StartError(f"the work dir {mesh.workdir} is too long for Unix sockets: set TMPDIR to a shorter directory")
    p.write_config_dir(mesh.config_dir, mesh.workloads)
    for w in mesh.workloads:
        (mesh.pod_dir(w) / "proxy").mkdir(parents=True, exist_ok=True)
        (mesh.pod_dir(w) / "labels").write_text(p.labels_file(w), encoding="utf-8")
    mesh.refresh_tokens(force=True)
    mesh.progress("starting the control plane")
    mesh.start_control_plane()
    mesh.progress("starting the two sidecars (certificates, then Envoy)")
    for w in mesh.workloads:
        agent = Child(
            name=f"{w.name} agent",
            argv=mesh.agent_argv(w),
            log_path=mesh.logs_dir / f"{w.name}-agent.log",
            env={"ISTIO_META_INTERCEPTION_MODE": "NONE"},
        )
        mesh.agents[w.name] = agent
        agent.start()
    for w in mesh.workloads:
        url = f"http://{w.pod_ip}:{p.AGENT_PORT}/healthz/ready"
        watch = [mesh.agents[w.name], *([mesh.serve] if mesh.serve else [])]
        ready = functools.partial(http_ok, url)
        wait_until(ready, what=f"{w.name}'s sidecar to be ready ({url})", timeout=READY_TIMEOUT, watch=watch)
    app = Child(
        name="bench app",
        argv=[sys.executable, "-m", "bench.mesh.loadgen", "serve", "--listen", f"{server.loopback}:{p.REVIEWS.port}"],
        log_path=mesh.logs_dir / "app.log",
    )
    mesh.apps[server.name] = app
    app.start()
    for path, target in targets(server, client).items():
        wait_until(
            functools.partial(answers, target),
            what=f"a first 200 on path {path} (http://{target[0]}:{target[1]}/)",
            timeout=READY_TIMEOUT,
            watch=mesh.children(),
        )


def targets(server: p.Workload, client: p.Workload) -> dict[str, tuple[str, int]]:
    """Where the load generator connects for each path."""
    return {"A": (server.loopback, p.REVIEWS.port), "B": (client.loopback, p.REVIEWS.port)}


def answers(target: tuple[str, int]) -> bool:
    """Whether one GET with the service's Host header gets a 200 now."""
    conn = http.client.HTTPConnection(*target, timeout=2)
    try:
        conn.request("GET", "/", headers={"Host": p.REVIEWS.hostname})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def sidecar_processes(mesh: DemoMesh) -> dict[str, int]:
    """`<workload> agent` / `<workload> Envoy` -> pid, for both workloads. Raises BenchError for an agent that
    runs no Envoy."""
    parents = {}
    for entry in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            if (entry / "comm").read_text().strip() == "envoy":
                parents[int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])] = int(entry.name)
        except OSError:
            continue  # exited meanwhile
    out = {}
    for w in mesh.workloads:
        agent = mesh.agents[w.name].pid
        if agent not in parents:
            raise BenchError(f"{w.name}'s agent (pid {agent}) runs no Envoy: see {mesh.logs_dir}")
        out[f"{w.name} agent"], out[f"{w.name} Envoy"] = agent, parents[agent]
    return out


def envoy_facts(pid: int) -> dict[str, str]:
    """Envoy's version and worker threads (its --concurrency), as it runs."""
    argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    concurrency = argv[argv.index("--concurrency") + 1] if "--concurrency" in argv else "default"
    binary = find_envoy() or "envoy"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    version = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return {"version": version.group(1) if version else out.strip(), "concurrency": concurrency}


def idle_usage(pids: Mapping[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """CPU (% of one core) over `seconds` of wall time and RSS (MiB) at its end, per process."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    return {
        name: {"rss_mib": rss_mib(pid), "cpu_percent": (cpu_seconds(pid) - before[name]) / wall * 100}
        for name, pid in pids.items()
    }


def mtls_evidence(client: p.Workload, server: p.Workload) -> dict[str, int]:
    """Counters showing path B's traffic went over mTLS: the client Envoy's cluster for reviews and the server
    Envoy's inbound listener. Raises OSError/ValueError when an admin API does not answer."""
    cluster = f"cluster.outbound|{p.REVIEWS.port}||{p.REVIEWS.hostname}."

    def stats(w: p.Workload, pattern: str) -> dict[str, int]:
        query = urllib.parse.urlencode({"format": "json", "filter": pattern})
        found = get_json(f"http://{w.loopback}:{p.ENVOY_ADMIN_PORT}/stats?{query}", timeout=5)
        return {s["name"]: int(s["value"]) for s in found.get("stats", []) if "value" in s}

    out = stats(client, "^" + re.escape(cluster) + r"(ssl\.handshake|upstream_rq_total|upstream_cx_total)$")
    listener = re.escape(f"{server.pod_ip}_{p.REVIEWS.port}")
    out |= stats(server, rf"^listener\.{listener}\.(ssl\.handshake|downstream_cx_total)$")
    return out


# -- the load --------------------------------------------------------------------------------------


def run_load(
    target: tuple[str, int], *, args: argparse.Namespace, core: int | None, watch: Mapping[str, int]
) -> dict[str, Any]:
    """One round on one path, by the load generator in its own process (pinned to `core`), which also reads the
    CPU of the `watch` processes over its window."""
    cmd = [
        sys.executable, "-m", "bench.mesh.loadgen", "load", "--target", f"{target[0]}:{target[1]}",
        "--host", p.REVIEWS.hostname, "--connections", str(args.connections),
        "--seconds", str(args.seconds), "--warmup", str(args.warmup),
        *(f"--watch={name}={pid}" for name, pid in watch.items()),
    ]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        if core is not None:
            os.sched_setaffinity(proc.pid, {core})
        try:
            out, err = proc.communicate(timeout=args.warmup + args.seconds + 60)
        except subprocess.TimeoutExpired:
            raise BenchError("the load generator did not finish a minute after its window") from None
        finally:
            if proc.poll() is None:  # timed out, or interrupted
                proc.kill()
    if proc.returncode != 0:
        raise BenchError(f"the load generator failed ({proc.returncode}):\n{err.decode(errors='replace')}")
    return dict(json.loads(out))


def summarise(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One path's rounds, their medians and all their errors."""
    return {
        "rounds": list(rounds),
        **{f"median_{key}": median([r[key] for r in rounds]) for key in ("rps", "p50_ms", "p99_ms")},
        "median_cpu_percent": {k: median([r["cpu_percent"][k] for r in rounds]) for k in rounds[0]["cpu_percent"]},
        "error_count": sum(r["error_count"] for r in rounds),
        "errors": dict(sum((Counter(r["errors"]) for r in rounds), Counter())),
    }


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def _progress(text: str) -> None:
    print(f"... {text}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mesh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=positive, default=10.0, help="measured seconds per round and path")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds (each runs path A, then B)")
    parser.add_argument("--connections", type=positive_int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--warmup", type=positive, default=1.0, help="unmeasured seconds of load before each window")
    parser.add_argument("--idle-seconds", type=positive, default=30.0, help="the idle window for RSS and CPU")
    return parser.parse_args(argv)


@dataclass(frozen=True, kw_only=True)
class Measured:
    """What one run measured, before any arithmetic."""

    rounds: Mapping[str, Sequence[Mapping[str, Any]]]  # path -> the load generator's result per round
    idle: Mapping[str, Mapping[str, float]]  # process -> rss_mib, cpu_percent
    rss_after_load_mib: Mapping[str, float]
    envoy: Mapping[str, str]
    mtls_evidence: Mapping[str, int]


def measure(args: argparse.Namespace, cores: Cores) -> Measured:
    """Start the mesh, measure idle, run the rounds, stop the mesh (also on failure). Raises StartError naming
    what did not start, BenchError what failed later, OSError/ValueError when a process or an admin API vanished."""
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as tmp:
        mesh = DemoMesh(pathlib.Path(tmp) / "mesh", plan=free_plan(), log_level="warning", progress=_progress)
        mesh.workloads = pair(mesh.plan)
        server, client = mesh.workloads
        try:
            start_mesh(mesh)
            pids = sidecar_processes(mesh)
            app_pid = mesh.apps[server.name].pid
            assert app_pid is not None
            watch = {"app": app_pid, **{name: pid for name, pid in pids.items() if name.endswith("Envoy")}}
            envoy = envoy_facts(pids[f"{server.name} Envoy"])
            _progress(f"idle: sampling RSS and CPU of the agents and Envoys for {args.idle_seconds:g}s")
            idle = idle_usage(pids, args.idle_seconds)
            rounds: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
            for n in range(1, args.rounds + 1):
                for path, target in targets(server, client).items():
                    _progress(f"round {n}/{args.rounds}, path {path} ({PATHS[path]})")
                    rounds[path].append(run_load(target, args=args, core=cores.load, watch=watch))
                    if dead := mesh.dead():
                        raise BenchError("a part of the mesh exited during the load: " + "; ".join(dead))
            return Measured(
                rounds=rounds,
                idle=idle,
                rss_after_load_mib={name: rss_mib(pid) for name, pid in pids.items()},
                envoy=envoy,
                mtls_evidence=mtls_evidence(client, server),
            )
        finally:
            mesh.stop()


def report(args: argparse.Namespace, cores: Cores, measured: Measured, *, load_before: float) -> int:
    """Print the tables, write the result file; the number of failed requests."""
    results = {path: summarise(rs) for path, rs in measured.rounds.items()}
    a, b = results["A"], results["B"]
    comparison = {
        "rps_ratio_b_over_a": b["median_rps"] / a["median_rps"],
        "added_p50_ms": b["median_p50_ms"] - a["median_p50_ms"],
        "added_p99_ms": b["median_p99_ms"] - a["median_p99_ms"],
    }
    errors = int(a["error_count"] + b["error_count"])
    envoy = measured.envoy
    print(f"bench/mesh: HTTP/1.1 GET, {args.connections} keep-alive connections, {args.warmup:g}s warm-up + "
          f"{args.seconds:g}s x {args.rounds} rounds per path, A and B alternating (medians over rounds)")  # fmt: skip
    print(f"app: {APP}")
    print(f"sidecars: meshplane agent + Envoy {envoy['version']} (--concurrency {envoy['concurrency']}), STRICT mTLS")
    print(f"machine: {os.cpu_count()} cores, {cores.describe()}; load average before: {load_before:.2f}")
    print()
    rows = []
    for path, r in results.items():
        cpu = r["median_cpu_percent"]
        envoys = sum(v for k, v in cpu.items() if k.endswith("Envoy"))
        rows.append([f"{path}: {PATHS[path]}", r["median_rps"], r["median_p50_ms"], r["median_p99_ms"],
                     r["error_count"], cpu["app"], envoys, cpu[SELF]])  # fmt: skip
    print(table(["path", "requests/s", "p50 ms", "p99 ms", "errors", "app CPU%", "Envoys CPU%", "loadgen CPU%"], rows))
    print("(CPU%: of one core, over the measured window; Envoys: both sidecars' Envoys together)")
    print(f"B/A throughput {comparison['rps_ratio_b_over_a']:.2f}; the two sidecars add "
          f"{comparison['added_p50_ms']:.2f} ms at p50, {comparison['added_p99_ms']:.2f} ms at p99; "
          f"errors {errors}")  # fmt: skip
    print()
    after = measured.rss_after_load_mib
    rows = [[name, u["rss_mib"], u["cpu_percent"], after[name]] for name, u in measured.idle.items()]
    print(table(["process", "idle RSS MiB", f"idle CPU% ({args.idle_seconds:g}s)", "RSS after load MiB"], rows))
    written = write_result(
        "mesh",
        {
            "settings": {"seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
                         "warmup_s": args.warmup, "idle_seconds": args.idle_seconds},
            "paths": PATHS,
            "app": APP,
            "envoy": dict(envoy),
            "pinning": {"load_core": cores.load, "mesh_cores": sorted(cores.mesh) if cores.mesh else None,
                        "description": cores.describe()},
            "load_average_before": load_before,
            "results": results,
            "comparison": comparison,
            "idle": dict(measured.idle),
            "rss_after_load_mib": dict(after),
            "mtls_evidence": dict(measured.mtls_evidence),
        },
    )  # fmt: skip
    print(f"wrote {written}")
    if errors:
        print(f"{errors} requests failed ({a['errors'] | b['errors']}): the figures are void", file=sys.stderr)
    return errors


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the mesh as Ctrl-C does
    cores = Cores.split()
    load_before = os.getloadavg()[0]
    own_cores = os.sched_getaffinity(0)
    if cores.mesh is not None:
        os.sched_setaffinity(0, cores.mesh)  # every child of the mesh inherits it
    try:
        measured = measure(args, cores)
    except (StartError, BenchError, OSError, ValueError) as exc:
        raise SystemExit(f"bench/mesh: {exc}") from None
    except KeyboardInterrupt:
        raise SystemExit("bench/mesh: interrupted (everything it started is stopped)") from None
    finally:
        os.sched_setaffinity(0, own_cores)  # the result file records the cores this process may use
    handshakes = measured.mtls_evidence.get(f"cluster.outbound|{p.REVIEWS.port}||{p.REVIEWS.hostname}.ssl.handshake")
    if not handshakes:
        raise SystemExit(f"bench/mesh: path B made no TLS handshake on the client's Envoy: not mTLS "
                         f"({dict(measured.mtls_evidence)})")  # fmt: skip
    if report(args, cores, measured, load_before=load_before):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
