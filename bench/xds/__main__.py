"""bench/xds: the xDS server under many simulated proxies, each in real gRPC streams from other processes.

Measures, in one run:
(a) time until N proxies (default 1,000) on a mesh of 1,000 services / 4,000 endpoints are synced
    (every proxy ACKed CDS, EDS for all its clusters, LDS and RDS);
(b) one endpoint change: per proxy, time from the change until it ACKed the EDS push (p50/p99);
(c) one service added: time until every proxy ACKed the new CDS, LDS, RDS and the EDS that
    includes the new cluster;
(d) control-plane RSS with N and with 2N proxies;
(e) the floor for (c): the same responses, pre-serialized, written to the same streams, until every
    proxy ACKed them; reported as the ratio (c) / floor.

With --secure, the run measures the plaintext port with one connection per proxy first, then the
secure port as `meshplane serve` wires it (:15012: Envoy terminates TLS and forwards to the internal
gRPC server on a Unix socket; caller identity checked against the node), and prints the ratio of
(c) secure / plaintext (goal: at most 1.2) and both RSS figures (the secure one includes Envoy's).
The secure proxies trust `<state-dir>/root-cert.pem` (server name istiod.istio-system.svc) and send
`authorization: Bearer <token>`, one token per namespace/service account minted with
`meshplane token` before the clock starts. (e) then writes over the secure port too. Each (c)
round also reports the CPU seconds of the server (its process, and Envoy's) and of the simulated
proxies (their processes, TLS included). `--front-tuning JSON` (repeatable) measures the secure port
once per front-end tuning, one after another, each against the same plaintext figure; the first is
the headline.

Usage: python -m bench.xds [--proxies 1000] [--services 1000] [--endpoints 4] [--procs 4] [--secure]
       [--front-tuning '{"concurrency": 2}' ...]
Prints a table per port (its header names the port) and writes bench/results/xds-<time>.json
("port"; with --secure: "plaintext", "secure" and "c_ratio_secure_plaintext").
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


def latencies(times: list[float | None], start: float) -> tuple[list[float], int]:
    done = [t - start for t in times if t is not None]
    return done, len(times) - len(done)


def measure(args: argparse.Namespace, *, secure: bool, tuning: str = "") -> tuple[dict[str, Any], list[list[Any]], str]:
    """One server on one port, measured (a) to (e); returns results, table rows and the table's header.

    `tuning`: with `secure`, the front end's FrontTuning as a JSON object ("": the defaults)."""
    state = tempfile.TemporaryDirectory(prefix="bench-xds-")
    state_dir = pathlib.Path(state.name)
    secure_server = ["--secure-grpc-addr", args.secure_grpc_addr, "--state-dir", str(state_dir)] if secure else []
    if secure and tuning:
        secure_server += ["--front-tuning", tuning]
    server = Proc(
        [
            "bench.xds.server",
            "--services",
            str(args.services),
            "--endpoints",
            str(args.endpoints),
            "--debounce",
            str(args.debounce),
            *secure_server,
        ]
    )
    target = f"127.0.0.1:{server.ready['port']}"
    own = secure or args.connection_per_proxy
    port = {
        "kind": "secure" if secure else "plaintext",
        "role": f":15012 (Envoy TLS front end{', ' + tuning if tuning else ''})" if secure else ":15010",
        "address": target,
        "connections": "one per proxy" if own else "one per simulator process",
    }
    sims: list[Proc] = []
    results: dict[str, Any] = {"port": port}
    rows: list[list[Any]] = []
    try:
        extra = ["--connection-per-proxy"] if own and not secure else []
        if secure:
            # Tokens for every proxy of both N and 2N, before the clock starts; the server made the key.
            tokens = mint_tokens(state_dir, {identity(i) for i in range(2 * args.proxies)})
            (state_dir / "tokens.json").write_text(json.dumps(tokens))
            extra += [
                "--tls-root",
                str(state_dir / "root-cert.pem"),
                "--tls-name",
                TLS_NAME,
                "--tokens",
                str(state_dir / "tokens.json"),
            ]
        started = time.time()
        sims = start_sims(target, 0, args.proxies, args.procs, delta=args.delta, extra=extra)
        synced = ask_all(sims, cmd="synced", timeout=600)
        done, missing = latencies(synced, started)
        results["a_all_synced_s"] = max(done) if done else None
        results["a_missing"] = missing
        rows.append(["(a) all synced", f"{args.proxies} proxies", f"{max(done):.2f} s", f"missing {missing}"])
        results["rss_n"] = server.ask(cmd="rss")["rss"]

        eds: list[float] = []
        eds_missing = 0
        for _ in range(args.rounds):
            change = server.ask(cmd="endpoint")
            times = ask_all(sims, cmd="wait", types=["EDS"], version=change["version"], timeout=60)
            got, lost = latencies(times, change["t"])
            eds += got
            eds_missing += lost
            time.sleep(0.5)
        results["b_eds_p50_s"], results["b_eds_p99_s"] = median(eds), percentile(eds, 99)
        results["b_eds_max_s"], results["b_missing"] = max(eds), eds_missing
        rows.append(
            [
                "(b) endpoint change, ACKed",
                f"p50 {median(eds):.3f} s",
                f"p99 {percentile(eds, 99):.3f} s",
                f"max {max(eds):.3f} s",
            ]
        )

        full: list[float] = []
        last_cluster = ""
        cpu_before = server.ask(cmd="rss")
        proxies_before = sum(ask_all(sims, cmd="cpu"))
        for _ in range(args.rounds):
            change = server.ask(cmd="service")
            last_cluster = change["cluster"]
            # Delta sends only what changed: a new HTTP service changes no listener, so no LDS response.
            times = ask_all(
                sims,
                cmd="wait",
                types=["CDS", "RDS", "EDS"] if args.delta else ["CDS", "LDS", "RDS", "EDS"],
                version=change["version"],
                eds_complete=True,
                timeout=120,
            )
            got, lost = latencies(times, change["t"])
            full.append(max(got) if got and not lost else float("inf"))
            time.sleep(1.0)
        results["c_service_all_acked_s"] = full
        cpu_after = server.ask(cmd="rss")
        cpu = {k: (cpu_after[k] - cpu_before[k]) / args.rounds for k in ("cpu_process", "cpu_front_end")}
        cpu["cpu_proxies"] = (sum(ask_all(sims, cmd="cpu")) - proxies_before) / args.rounds
        results["c_cpu_s_per_push"] = cpu
        rows.append(["(c) service added, all ACKed", f"median {median(full):.2f} s", f"max {max(full):.2f} s", ""])
        rows.append(
            [
                "(c) CPU per push (incl. the 1 s pause)",
                f"process {cpu['cpu_process']:.2f} s",
                f"Envoy {cpu['cpu_front_end']:.2f} s" if secure else "",
                f"proxies {cpu['cpu_proxies']:.2f} s",
            ]
        )

        floors: list[float] = []
        for n in range(0 if args.delta else args.rounds):
            version = 10**9 + n
            sent = server.ask(cmd="floor", version=version, cluster=last_cluster)
            times = ask_all(
                sims, cmd="wait", types=["CDS", "LDS", "RDS", "EDS"], version=version, eds_complete=True, timeout=120
            )
            got, lost = latencies(times, sent["started"])
            floors.append(max(got) if got and not lost else float("inf"))
            results.setdefault("e_floor_write_s", []).append(sent["written"])
            time.sleep(1.0)
        if floors:
            results["e_floor_all_acked_s"] = floors
            ratio = median(full) / median(floors)
            results["e_ratio"] = ratio
            rows.append(
                [
                    "(e) floor: same bytes, all ACKed",
                    f"median {median(floors):.2f} s",
                    f"ratio (c)/floor {ratio:.2f}",
                    "",
                ]
            )

        more = start_sims(target, args.proxies, args.proxies, args.procs, delta=args.delta, extra=extra)
        sims += more
        ask_all(more, cmd="synced", timeout=600)
        rss_2n = server.ask(cmd="rss")
        results["rss_2n"] = rss_2n["rss"]
        results["rss_2n_parts"] = rss_2n
        results["server_stats"] = server.ask(cmd="stats")
        rows.append(
            [
                "(d) control-plane RSS" + (" (with Envoy)" if secure else ""),
                f"{args.proxies}: {results['rss_n'] / 2**20:.0f} MiB",
                f"{2 * args.proxies}: {results['rss_2n'] / 2**20:.0f} MiB",
                f"Envoy {rss_2n.get('rss_front_end', 0) / 2**20:.0f} MiB" if secure else "",
            ]
        )
    finally:
        for proc in [*sims, server]:
            proc.stop()
        state.cleanup()
    header = f"measure (xDS over {port['kind']} port {port['role']} at {target}, {port['connections']})"
    return results, rows, header


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
        help="with --secure: measure the secure port once per value (a JSON object of FrontTuning fields; "
        "'{}' is the defaults), each against the same plaintext run",
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
    results: dict[str, Any] = {"params": vars(args)}
    plain, rows, header = measure(args, secure=False)
    print(table([header, "", "", ""], rows))
    results.update(plain)
    if args.secure:
        variants: dict[str, Any] = {}
        for tuning in args.front_tuning or [""]:
            try:
                secure, rows, header = measure(args, secure=True, tuning=tuning)
            except RuntimeError as exc:  # a run that broke (e.g. a simulator exited): keep the others
                print(f"secure port {tuning or '{}'}: not measured: {exc}")
                variants[tuning or "{}"] = {"error": str(exc)}
                continue
            print(table([header, "", "", ""], rows))
            ratio = median(secure["c_service_all_acked_s"]) / median(plain["c_service_all_acked_s"])
            variants[tuning or "{}"] = {**secure, "c_ratio_secure_plaintext": ratio}
            verdict = "met" if ratio <= 1.2 else "NOT met"
            print(
                f"(c) service added, all ACKed: secure{' ' + tuning if tuning else ''} "
                f"{median(secure['c_service_all_acked_s']):.2f} s / plaintext "
                f"{median(plain['c_service_all_acked_s']):.2f} s = {ratio:.2f} (goal <= 1.2: {verdict}); RSS at "
                f"{2 * args.proxies} proxies: secure {secure['rss_2n'] / 2**20:.0f} MiB, plaintext "
                f"{plain['rss_2n'] / 2**20:.0f} MiB"
            )
        first = next(iter(variants.values()))
        results = {"params": vars(args), "plaintext": plain, "secure": first}
        results["c_ratio_secure_plaintext"] = first.get("c_ratio_secure_plaintext")
        if len(variants) > 1:
            results["secure_variants"] = variants
    path = write_result("xds", results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
