"""bench/xds: the xDS server under many simulated proxies, each in real gRPC streams from other processes.

Measures, in one run:
(a) time until N proxies (default 1,000) on a mesh of 1,000 services / 4,000 endpoints are synced
    (every proxy ACKed CDS, EDS for all its clusters, LDS and RDS);
(b) one endpoint change: per proxy, time from the change until it ACKed the EDS push (p50/p99);
(c) one service added: time until every proxy ACKed the new CDS, RDS and the EDS that includes
    the new cluster (a new HTTP service on a port that has a listener changes no listener, so
    neither protocol sends LDS);
(d) control-plane RSS with N and with 2N proxies, and the garbage collector's load: objects it tracks
    per stream (from N to 2N proxies) and how long a full collection takes with 2N (on the one event
    loop, so each is a pause for every client);
(e) the floor for (c): the same responses, pre-serialized, written to the same streams, until every
    proxy ACKed them; reported as the ratio (c) / floor.

With --secure, the run measures the plaintext port with one connection per proxy and the secure
port as `meshplane serve` wires it (:15012: Envoy terminates TLS and forwards to the internal gRPC
server on a Unix socket; caller identity checked against the node) side by side: both servers and
both sets of proxies run throughout, and each round of (b), (c) and (e) runs on one port, then on
the other, so the machine's changing load falls on both alike. It prints the ratio of the medians of
(c), secure / plaintext (goal: at most 1.2), the ratio round by round, and both RSS figures (the
secure one includes Envoy's). The secure proxies trust `<state-dir>/root-cert.pem` (server name
istiod.istio-system.svc) and send `authorization: Bearer <token>`, one token per namespace/service
account minted with `meshplane token` before the clock starts. Each (c) round also reports the CPU
seconds of the server (its process, and Envoy's, each with the share spent in the kernel) and of the
simulated proxies (their processes, TLS included). `--front-tuning JSON` (repeatable) adds one
secure port per front-end tuning, measured in the same rounds; the first is the headline.

Usage: python -m bench.xds [--proxies 1000] [--services 1000] [--endpoints 4] [--procs 4] [--secure]
       [--front-tuning '{"concurrency": 2}' ...]
Prints a table per port (its header names the port) and writes bench/results/xds-<time>.json
("port"; with --secure: "plaintext", "secure" and "c_ratio_secure_plaintext"; "secure" also holds
"e_floor_ratio_secure_plaintext" where the floor was measured).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

from bench.common import median, percentile, table, write_result
from bench.xds.proxies import TLS_NAME, identity


class Proc:
    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.ready = self.read()

    def read(self) -> Any:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args} exited with {self.proc.wait()}")
        return json.loads(line)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def ask(self, **cmd: Any) -> Any:
        self.send(**cmd)
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def ask_all(procs: list[Proc], **cmd: Any) -> list[Any]:
    for p in procs:
        p.send(**cmd)
    return [item for p in procs for item in p.read()]


def mint_tokens(state_dir: pathlib.Path, pairs: set[tuple[str, str]]) -> dict[str, str]:
    """`meshplane token` for each namespace/service account, keyed "<ns>/<sa>"; raises if one fails."""
    runs = {
        f"{ns}/{sa}": subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlplane",
                "token",
                "--namespace",
                ns,
                "--service-account",
                sa,
                "--ttl",
                "2h",
                "--state-dir",
                str(state_dir),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for ns, sa in sorted(pairs)
    }
    tokens = {}
    for key, run in runs.items():
        out, _ = run.communicate(timeout=120)
        if run.returncode != 0:
            raise RuntimeError(f"meshplane token for {key} exited with {run.returncode}")
        tokens[key] = out.strip()
    return tokens


def start_sims(
    target: str, first: int, count: int, procs: int, *, delta: bool, extra: list[str] | None = None
) -> list[Proc]:
    """`extra`: more arguments for the simulators (TLS root, server name, tokens; connection per proxy)."""
    share = -(-count // procs)
    return [
        Proc(
            [
                "bench.xds.proxies",
                "--target",
                target,
                "--first",
                str(first + n * share),
                "--count",
                str(min(share, count - n * share)),
                *(["--delta"] if delta else []),
                *(extra or []),
            ]
        )
        for n in range(procs)
        if count - n * share > 0
    ]


def kernel_share(cpu: dict[str, float], part: str) -> str:
    """The share of `part`'s CPU time spent in the kernel (on loopback: sends, receives, wake-ups), in percent."""
    total = cpu[f"cpu_{part}"]
    return f"{100 * cpu[f'kernel_{part}'] / total:.0f}%" if total > 0 else "-"


def latencies(times: list[float | None], start: float) -> tuple[list[float], int]:
    done = [t - start for t in times if t is not None]
    return done, len(times) - len(done)


class Port:
    """One server on one port and its N simulated proxies, measured (a) to (e) step by step.

    `tuning`: with `secure`, the front end's FrontTuning as a JSON object ("": the defaults)."""

    def __init__(self, args: argparse.Namespace, *, secure: bool, tuning: str = "") -> None:
        self.args, self.secure, self.tuning = args, secure, tuning
        self.state = tempfile.TemporaryDirectory(prefix="bench-xds-")
        self.sims: list[Proc] = []
        self.server: Proc | None = None
        self.results: dict[str, Any] = {}
        self.rows: list[list[Any]] = []
        self.eds: list[float] = []
        self.eds_missing = 0
        self.full: list[float] = []
        self.cpu = dict.fromkeys(
            ("cpu_process", "cpu_front_end", "kernel_process", "kernel_front_end", "cpu_proxies"), 0.0
        )
        self.last_cluster = ""
        self.floors: list[float] = []
        self.extra: list[str] = []
        self.target = ""

    @property
    def name(self) -> str:
        return f"secure {self.tuning}".strip() if self.secure else "plaintext"

    def start(self) -> None:
        """Start the server and N proxies; (a) and the RSS at N."""
        args, state_dir = self.args, pathlib.Path(self.state.name)
        secure_server = ["--secure-grpc-addr", args.secure_grpc_addr, "--state-dir", str(state_dir)]
        secure_server += ["--front-tuning", self.tuning] if self.tuning else []
        self.server = server = Proc(
            [
                "bench.xds.server",
                "--services",
                str(args.services),
                "--endpoints",
                str(args.endpoints),
                "--debounce",
                str(args.debounce),
                *(secure_server if self.secure else []),
            ]
        )
        self.target = f"127.0.0.1:{server.ready['port']}"
        own = self.secure or args.connection_per_proxy
        self.results["port"] = {
            "kind": "secure" if self.secure else "plaintext",
            "role": f":15012 (Envoy TLS front end{', ' + self.tuning if self.tuning else ''})"
            if self.secure
            else ":15010",
            "address": self.target,
            "connections": "one per proxy" if own else "one per simulator process",
        }
        self.extra = ["--connection-per-proxy"] if own and not self.secure else []
        if self.secure:
            # Tokens for every proxy of both N and 2N, before the clock starts; the server made the key.
            tokens = mint_tokens(state_dir, {identity(i) for i in range(2 * args.proxies)})
            (state_dir / "tokens.json").write_text(json.dumps(tokens))
            self.extra += ["--tls-root", str(state_dir / "root-cert.pem"), "--tls-name", TLS_NAME]
            self.extra += ["--tokens", str(state_dir / "tokens.json")]
        started = time.time()
        self.sims = start_sims(self.target, 0, args.proxies, args.procs, delta=args.delta, extra=self.extra)
        done, missing = latencies(ask_all(self.sims, cmd="synced", timeout=600), started)
        self.results["a_all_synced_s"] = max(done) if done else None
        self.results["a_missing"] = missing
        self.rows.append(["(a) all synced", f"{args.proxies} proxies", f"{max(done):.2f} s", f"missing {missing}"])
        self.results["rss_n"] = server.ask(cmd="rss")["rss"]
        self.results["gc_n"] = server.ask(cmd="gc")

    def endpoint_round(self) -> None:
        """(b) One endpoint change, until every proxy ACKed its EDS."""
        assert self.server is not None
        change = self.server.ask(cmd="endpoint")
        times = ask_all(self.sims, cmd="wait", types=["EDS"], version=change["version"], timeout=60)
        got, lost = latencies(times, change["t"])
        self.eds += got
        self.eds_missing += lost
        time.sleep(0.5)

    def service_round(self) -> None:
        """(c) One service added, until every proxy ACKed all of it; the CPU this took, the pause included."""
        assert self.server is not None
        before, proxies_before = self.server.ask(cmd="rss"), sum(ask_all(self.sims, cmd="cpu"))
        change = self.server.ask(cmd="service")
        self.last_cluster = change["cluster"]
        # Only what changed is sent: a new HTTP service changes no listener, so there is no LDS response.
        times = ask_all(
            self.sims,
            cmd="wait",
            types=["CDS", "RDS", "EDS"],
            version=change["version"],
            eds_complete=True,
            timeout=120,
        )
        got, lost = latencies(times, change["t"])
        self.full.append(max(got) if got and not lost else float("inf"))
        time.sleep(1.0)
        after = self.server.ask(cmd="rss")
        for key in ("cpu_process", "cpu_front_end", "kernel_process", "kernel_front_end"):
            self.cpu[key] += after[key] - before[key]
        self.cpu["cpu_proxies"] += sum(ask_all(self.sims, cmd="cpu")) - proxies_before

    def floor_round(self, n: int) -> None:
        """(e) The last service addition's responses, pre-serialized, written to every stream; until all ACKed."""
        assert self.server is not None
        version = 10**9 + n
        sent = self.server.ask(cmd="floor", version=version, cluster=self.last_cluster)
        times = ask_all(
            self.sims, cmd="wait", types=["CDS", "RDS", "EDS"], version=version, eds_complete=True, timeout=120
        )
        got, lost = latencies(times, sent["started"])
        self.floors.append(max(got) if got and not lost else float("inf"))
        self.results.setdefault("e_floor_write_s", []).append(sent["written"])
        time.sleep(1.0)

    def finish(self) -> None:
        """(d) N more proxies and the RSS at 2N; then the results and table rows of (b), (c) and (e)."""
        assert self.server is not None
        args, results, eds, full = self.args, self.results, self.eds, self.full
        results["b_eds_p50_s"], results["b_eds_p99_s"] = median(eds), percentile(eds, 99)
        results["b_eds_max_s"], results["b_missing"] = max(eds), self.eds_missing
        self.rows.append(
            [
                "(b) endpoint change, ACKed",
                f"p50 {median(eds):.3f} s",
                f"p99 {percentile(eds, 99):.3f} s",
                f"max {max(eds):.3f} s",
            ]
        )
        results["c_service_all_acked_s"] = full
        cpu = results["c_cpu_s_per_push"] = {key: value / len(full) for key, value in self.cpu.items()}
        self.rows.append(["(c) service added, all ACKed", f"median {median(full):.2f} s", f"max {max(full):.2f} s", ""])
        self.rows.append(
            [
                "(c) CPU per push (incl. the 1 s pause)",
                f"process {cpu['cpu_process']:.2f} s ({kernel_share(cpu, 'process')} kernel)",
                f"Envoy {cpu['cpu_front_end']:.2f} s ({kernel_share(cpu, 'front_end')} kernel)" if self.secure else "",
                f"proxies {cpu['cpu_proxies']:.2f} s",
            ]
        )
        if self.floors:
            results["e_floor_all_acked_s"] = self.floors
            ratio = results["e_ratio"] = median(full) / median(self.floors)
            self.rows.append(
                [
                    "(e) floor: same bytes, all ACKed",
                    f"median {median(self.floors):.2f} s",
                    f"ratio (c)/floor {ratio:.2f}",
                    "",
                ]
            )
        more = start_sims(self.target, args.proxies, args.proxies, args.procs, delta=args.delta, extra=self.extra)
        self.sims += more
        ask_all(more, cmd="synced", timeout=600)
        rss_2n = self.server.ask(cmd="rss")
        results["rss_2n"] = rss_2n["rss"]
        results["rss_2n_parts"] = rss_2n
        results["server_stats"] = self.server.ask(cmd="stats")
        gc_2n = results["gc_2n"] = self.server.ask(cmd="gc")
        per_stream = results["gc_tracked_per_stream"] = (gc_2n["tracked"] - results["gc_n"]["tracked"]) / args.proxies
        self.rows.append(
            [
                "(d) control-plane RSS" + (" (with Envoy)" if self.secure else ""),
                f"{args.proxies}: {results['rss_n'] / 2**20:.0f} MiB",
                f"{2 * args.proxies}: {results['rss_2n'] / 2**20:.0f} MiB",
                f"Envoy {rss_2n.get('rss_front_end', 0) / 2**20:.0f} MiB" if self.secure else "",
            ]
        )
        self.rows.append(
            [
                "(d) garbage collector",
                f"{per_stream:.0f} objects per stream",
                f"{2 * args.proxies}: {gc_2n['tracked']} objects",
                f"full collection {gc_2n['full_gc_s'] * 1000:.0f} ms",
            ]
        )

    def stop(self) -> None:
        """Stop the proxies (their N and 2N) and the server; drop the state dir. Safe to call twice."""
        for proc in [*self.sims, *([self.server] if self.server is not None else [])]:
            proc.stop()
        self.state.cleanup()

    def table(self) -> str:
        port = self.results["port"]
        header = f"measure (xDS over {port['kind']} port {port['role']} at {self.target}, {port['connections']})"
        return table([header, "", "", ""], self.rows)


def measure(args: argparse.Namespace, ports: list[Port]) -> None:
    """Measure every port, their rounds interleaved: round r of (b), (c) and (e) runs on each port in turn.

    Every port's proxies stay connected throughout (idle while another port is measured), so a change in
    the machine's load between rounds falls on all ports alike."""
    try:
        for port in ports:
            port.start()
        for _ in range(args.rounds):
            for port in ports:
                port.endpoint_round()
        for _ in range(args.rounds):
            for port in ports:
                port.service_round()
        for n in range(0 if args.delta else args.rounds):
            for port in ports:
                port.floor_round(n)
        for port in ports:
            port.finish()
    finally:
        for port in ports:
            port.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=4)
    parser.add_argument("--procs", type=int, default=4, help="simulator processes per N proxies")
    parser.add_argument("--debounce", type=float, default=0.1, help="debounce quiet time, seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delta", action="store_true", help="simulated proxies use Delta ADS (no floor measure)")
    parser.add_argument(
        "--secure",
        action="store_true",
        help="also measure the secure port (Envoy TLS front end, bearer tokens) against the plaintext port "
        "with one connection per proxy, in the same run",
    )
    parser.add_argument(
        "--front-tuning",
        action="append",
        default=[],
        help="with --secure: one secure port per value (a JSON object of FrontTuning fields; "
        "'{}' is the defaults), all measured in the same rounds as the plaintext port",
    )
    parser.add_argument(
        "--secure-grpc-addr", default="127.0.0.1:0", help="with --secure: the secure port's address (port 0: any)"
    )
    parser.add_argument(
        "--connection-per-proxy",
        action="store_true",
        help="plaintext: one TCP connection per proxy (default: gRPC shares one per simulator process); "
        "over TLS every proxy always has its own",
    )
    args = parser.parse_args()
    if args.secure:
        args.connection_per_proxy = True  # the plaintext baseline must have as many connections as the secure run
    plain = Port(args, secure=False)
    secure = [Port(args, secure=True, tuning=tuning) for tuning in args.front_tuning or [""]] if args.secure else []
    measure(args, [plain, *secure])
    for port in [plain, *secure]:
        print(port.table())
    results: dict[str, Any] = {"params": vars(args), **plain.results}
    if secure:
        base = plain.results["c_service_all_acked_s"]
        variants: dict[str, Any] = {}
        for port in secure:
            full = port.results["c_service_all_acked_s"]
            ratio = median(full) / median(base)
            paired = [s / p for s, p in zip(full, base, strict=True)]
            variants[port.tuning or "{}"] = {
                **port.results,
                "c_ratio_secure_plaintext": ratio,
                "c_ratio_rounds": paired,
            }
            verdict = "met" if ratio <= 1.2 else "NOT met"
            print(
                f"(c) service added, all ACKed: {port.name} {median(full):.2f} s / plaintext {median(base):.2f} s = "
                f"{ratio:.2f} (goal <= 1.2: {verdict}; round by round {', '.join(f'{r:.2f}' for r in paired)}); "
                f"RSS at {2 * args.proxies} proxies: secure {port.results['rss_2n'] / 2**20:.0f} MiB, plaintext "
                f"{plain.results['rss_2n'] / 2**20:.0f} MiB"
            )
            secure_floor, plain_floor = (p.results.get("e_floor_all_acked_s") for p in (port, plain))
            if secure_floor and plain_floor:
                floor_ratio = median(secure_floor) / median(plain_floor)
                variants[port.tuning or "{}"]["e_floor_ratio_secure_plaintext"] = floor_ratio
                print(
                    f"(e) floor, the same bytes only relayed: {port.name} {median(secure_floor):.2f} s / plaintext "
                    f"{median(plain_floor):.2f} s = {floor_ratio:.2f}: what the relay and the clients' TLS cost "
                    "before any of the server's own work"
                )
        first = next(iter(variants.values()))
        results = {"params": vars(args), "plaintext": plain.results, "secure": first}
        results["c_ratio_secure_plaintext"] = first["c_ratio_secure_plaintext"]
        if len(variants) > 1:
            results["secure_variants"] = variants
    path = write_result("xds", results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
