"""bench/soak: `meshplane serve` under mixed, churning load for minutes - memory must stay flat, `/ready` prompt.

Starts `meshplane serve` in local mode on a config dir holding a realistic mesh (`--services`
Services with their EndpointSlices and Pods, over 10 namespaces, one file per namespace) and edits
that dir every `--edit-every` seconds (an EndpointSlice changed; every third edit a Service added
or removed), each file replaced atomically, so pushes keep happening. At the same time, from
separate load-generator processes (never in the server's process):
- `--proxies` ADS proxies (bench/soak/proxies.py, split over `--proxy-procs` processes, one TCP
  connection each, plaintext port) with churning subscriptions: EDS and RDS names subscribed and
  dropped, streams closed and reopened every `--lifetime` seconds on average, some NACKs;
- webhook load (bench/soak/loadgen.py `webhook`): `--webhook-rate` admissions/s, plus `--slow`
  slow clients that trickle headers and hold half the body, within the documented timeouts;
- CSRs to the CA over the secure port at `--csr-rate`/s, with a token from `meshplane token`;
- a stall probe polling `/ready` every 50 ms for the whole run, recording every wait.

Reported: RSS of the server process, of its CA worker processes (summed) and of its TLS front end
(Envoy), each after warm-up (`--warmup` s, median of the samples in the 15 s after it) and at the
end (median of the last three samples, one every 5 s); the longest `/ready` wait and how many
exceeded 250 ms; requests and errors per kind. Bounds: each RSS at the end within 10% of its
after-warm-up value, no `/ready` wait over 250 ms, no errors. Prints a table, writes
bench/results/soak-<time>.json with the core count, and exits 1 when a bound is broken. Every
30 s the RSS sample also records the xDS cache's entries and bytes (`/debug/registryz`), so a
growth can be told apart from the cache filling towards its bounds.

On a shared machine other work adds noise to both RSS and waits; the result records the load
average at the start and the end. To find what holds the event loop when `/ready` waits,
`--asyncio-debug` runs the server in asyncio's debug mode, which logs each callback that ran over
100 ms; the slowest are printed and kept in the result (the mode slows the server: use it to
diagnose, not to measure). `--gc-log` starts the server with a hook that logs its garbage
collections (every full one, and any other over 50 ms) and lists the pauses that fell within the
slowest waits. A bare aiohttp `/ready` in its own process is polled the same way in the same run
(`control`): what the machine alone does to a wait.

Usage: python -m bench.soak [--minutes 10] [--proxies 1000] [--services 300] [--warmup 60] [--asyncio-debug]
       [--gc-log]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from typing import Any

from bench.ca.__main__ import NAMESPACE, SERVICE_ACCOUNT, make_csrs
from bench.common import median, percentile, table, write_result
from bench.soak.mesh import Mesh
from bench.soak.rss import ProcessRss
from bench.webhook.__main__ import review
from tests.helpers import serve
from tests.helpers.serve import Running, meshplane_cmd, start_serve

# `meshplane serve` with a hook that logs every full (generation 2) garbage collection and any other over 50 ms.
GC_BOOT = """
import gc, runpy, sys, time
started = [0.0]

def watch(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
        return
    took = time.perf_counter() - started[0]
    if info["generation"] == 2 or took > 0.05:
        print(f"gc-pause generation={info['generation']} seconds={took:.4f} end={time.time():.3f}", file=sys.stderr)
gc.callbacks.append(watch)
runpy.run_module("controlplane", run_name="__main__")
"""
STALL_BOUND = 0.250
RSS_BOUND = 0.10
SAMPLE_EVERY = 5.0
CACHE_EVERY = 6  # every 6th RSS sample also records the xDS cache's size (/debug/registryz)


def _cache_stats(http_url: str) -> dict[str, Any] | None:
    """The xDS cache's entries and bytes from `/debug/registryz`; None when it does not answer in 5 s."""
    try:
        with urllib.request.urlopen(f"{http_url}/debug/registryz", timeout=5) as resp:
            stats: dict[str, Any] = json.loads(resp.read())["cache"]
            return stats
    except (OSError, ValueError, KeyError):
        return None


def _spawn(stderr: pathlib.Path, module: str, *args: str) -> subprocess.Popen[bytes]:
    """`python -m module args` with stdout piped and stderr into the file `stderr` (a pipe could fill up)."""
    with stderr.open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=err)


def _collect(name: str, proc: subprocess.Popen[bytes], stderr: pathlib.Path, timeout: float) -> dict[str, Any]:
    """The JSON a load generator printed; an `errors` entry when it failed or printed nothing usable."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    try:
        return dict(json.loads(out))
    except ValueError:
        tail = stderr.read_text(errors="replace").strip().splitlines()[-3:]
        return {"requests": {}, "errors": {f"{name}_process": 1}, "examples": [f"exit {proc.returncode}: {tail}"]}


def _token(running: Running) -> str:
    cmd = [*meshplane_cmd(), "token", "--state-dir", str(running.state_dir), "--namespace", NAMESPACE,
           "--service-account", SERVICE_ACCOUNT, "--ttl", "24h"]  # fmt: skip
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _loadavg() -> list[float]:
    return [float(v) for v in pathlib.Path("/proc/loadavg").read_text().split()[:3]]


def run(a: argparse.Namespace, tmp: pathlib.Path) -> dict[str, Any]:
    """Start the server and every load generator, edit the mesh and sample RSS until the end; the raw results."""
    seconds = a.minutes * 60
    mesh = Mesh(directory=tmp / "config", services=a.services)
    mesh.write_all()
    env = {"MESHPLANE_LOG_LEVEL": "warning", **({"PYTHONASYNCIODEBUG": "1"} if a.asyncio_debug else {})}
    original = serve.meshplane_cmd
    if a.gc_log:
        serve.meshplane_cmd = lambda: [sys.executable, "-c", GC_BOOT]
    try:
        # All simulated proxies share one address: lift the per-address stream limit above their number.
        running = start_serve(
            tmp,
            "--config-dir",
            str(mesh.directory),
            "--log-level",
            "warning",
            "--max-streams-per-client",
            "100000",
            env=env,
        )
    finally:
        serve.meshplane_cmd = original
    procs: dict[str, subprocess.Popen[bytes]] = {}
    control: subprocess.Popen[bytes] | None = None
    edit_times: list[float] = []
    samples: list[dict[str, Any]] = []
    started, started_wall = time.monotonic(), time.time()
    try:
        files = {"csrs": tmp / "csrs.json", "token": tmp / "token", "body": tmp / "review.json"}
        files["csrs"].write_text(json.dumps(make_csrs(100)))
        files["token"].write_text(_token(running))
        files["body"].write_bytes(review(inject=True))
        common = ["--seconds", str(seconds)]
        procs["probe"] = _spawn(
            tmp / "probe.stderr", "bench.soak.loadgen", "probe", *common, "--http-addr", running.addr("http")
        )
        control = _spawn(tmp / "control.stderr", "bench.soak.loadgen", "control", *common)
        assert control.stdout is not None
        control_port = json.loads(control.stdout.readline())["port"]
        procs["control-probe"] = _spawn(
            tmp / "control-probe.stderr",
            "bench.soak.loadgen",
            "probe",
            *common,
            "--http-addr",
            f"127.0.0.1:{control_port}",
        )
        per = -(-a.proxies // a.proxy_procs)
        for n in range(a.proxy_procs):
            count = min(per, a.proxies - n * per)
            procs[f"proxies-{n}"] = _spawn(
                tmp / f"proxies-{n}.stderr",
                "bench.soak.proxies", *common, "--target", running.addr("grpc"), "--first", str(n * per),
                "--count", str(count), "--lifetime", str(a.lifetime),
            )  # fmt: skip
        procs["webhook"] = _spawn(
            tmp / "webhook.stderr",
            "bench.soak.loadgen", "webhook", *common, "--webhook-addr", running.addr("webhook"),
            "--root", str(running.root_cert), "--body", str(files["body"]), "--rate", str(a.webhook_rate),
            "--slow", str(a.slow),
        )  # fmt: skip
        procs["ca"] = _spawn(
            tmp / "ca.stderr",
            "bench.soak.loadgen", "ca", *common, "--ca-addr", running.addr("secure-grpc"),
            "--root", str(running.root_cert), "--csrs", str(files["csrs"]), "--token", str(files["token"]),
            "--rate", str(a.csr_rate),
        )  # fmt: skip
        rss = ProcessRss(running.proc.pid)
        next_edit = started + a.edit_every
        next_sample = started
        while (now := time.monotonic()) < started + seconds:
            if running.proc.poll() is not None:
                raise SystemExit(f"meshplane serve exited with {running.proc.returncode}:\n{running.logs()[-3000:]}")
            if now >= next_sample:
                samples.append({"t": round(now - started, 1), **rss.sample()})
                if len(samples) % CACHE_EVERY == 1:
                    samples[-1]["xds_cache"] = _cache_stats(running.http_url)
                next_sample = now + SAMPLE_EVERY
            if now >= next_edit:
                mesh.edit()
                edit_times.append(time.time())
                next_edit += a.edit_every
            time.sleep(max(0.0, min(next_sample, next_edit) - time.monotonic()))
        results = {name: _collect(name, proc, tmp / f"{name}.stderr", timeout=120) for name, proc in procs.items()}
    finally:
        if control is not None:
            procs["control"] = control
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        running.stop()
    lines = running.logs().splitlines()
    slow = [line for line in lines if "Executing <" in line]
    pauses = [
        [float(end), float(took), int(gen)]
        for gen, took, end in re.findall(r"gc-pause generation=(\d) seconds=([0-9.]+) end=([0-9.]+)", "\n".join(lines))
    ]
    # What the server logged, by message (the timestamp cut off), most frequent first.
    logged = Counter(
        re.split(r" \w+=", line[24:], maxsplit=1)[0][:140]
        for line in lines
        if "Executing <" not in line and "gc-pause" not in line
    )
    return {
        "started": started_wall,
        "samples": samples,
        "loadgen": results,
        "edits": edit_times,
        "slow_callbacks": slow,
        "gc_pauses": pauses,
        "server_log": logged.most_common(15),
    }


def _rss_at(samples: list[dict[str, Any]], key: str, *, warmup: float) -> tuple[float, float]:
    """(after warm-up, at the end) in MiB: medians of the samples in the 15 s after warm-up and of the last three."""
    after = [s[key] for s in samples if warmup <= s["t"] < warmup + 15] or [samples[0][key]]
    end = [s[key] for s in samples[-3:]]
    return median(after) / 2**20, median(end) / 2**20


def _waits(waits: list[list[float]]) -> dict[str, Any]:
    """Summary of one probe's [wall time, wait] pairs (ms), with the ten slowest."""
    values = [w for _, w in waits]
    slowest = sorted(waits, key=lambda tw: -tw[1])[:10]
    return {
        "polls": len(values), "p50_ms": percentile(values, 50) * 1000, "p99_ms": percentile(values, 99) * 1000,
        "max_ms": max(values, default=float("nan")) * 1000, "over_250ms": sum(1 for w in values if w > STALL_BOUND),
        "slowest": [[t, w * 1000] for t, w in slowest],  # wall time, ms
    }  # fmt: skip


def _took(line: str) -> float:
    """The seconds in an asyncio debug-mode line `Executing <...> took 0.123 seconds`."""
    match = re.search(r"took ([0-9.]+) seconds", line)
    return float(match.group(1)) if match else 0.0


def report(a: argparse.Namespace, raw: dict[str, Any], load_before: list[float]) -> tuple[dict[str, Any], bool]:
    """Print the tables; (the result document, whether every bound held)."""
    samples, loadgen = raw["samples"], raw["loadgen"]
    rss_rows, rss_out, ok = [], {}, True
    for key, label in (
        ("server", "server process"),
        ("ca_workers", "CA workers (sum)"),
        ("front_end", "TLS front end"),
    ):
        after, end = _rss_at(samples, key, warmup=a.warmup)
        if after == 0:
            continue
        growth = end / after - 1
        within = growth <= RSS_BOUND
        ok &= within
        rss_out[key] = {"after_warmup_mib": after, "end_mib": end, "growth": growth, "within_bound": within}
        rss_rows.append([label, after, end, f"{growth * 100:+.1f}%", "ok" if within else "BROKEN"])
    workers = max((s["ca_worker_count"] for s in samples), default=0)
    steady = [s for s in samples if s["t"] >= a.warmup] or samples
    cpu = (steady[-1]["server_cpu_s"] - steady[0]["server_cpu_s"]) / max(1e-9, steady[-1]["t"] - steady[0]["t"])
    print(f"soak: {a.minutes:g} min, {a.proxies} proxies, {a.services} services, {len(raw['edits'])} mesh edits, "
          f"{os.cpu_count()} cores (shared machine: load average {load_before} at start)")  # fmt: skip
    print(table(["RSS (MiB)", "after warm-up", "end", "growth", f"bound {RSS_BOUND:.0%}"], rss_rows))
    print(f"({workers} CA worker processes; server process CPU after warm-up: {cpu:.0%} of one core)\n")
    split = raw["started"] + a.warmup
    probes = {}
    for name in ("probe", "control-probe"):
        waits = loadgen[name].get("waits", [])
        probes[name] = {
            **_waits(waits), "during_warmup": _waits([w for w in waits if w[0] < split]),
            "after_warmup": _waits([w for w in waits if w[0] >= split]),
        }  # fmt: skip
    stall, control = probes["probe"], probes["control-probe"]
    ok &= stall["over_250ms"] == 0 and stall["polls"] > 0
    for slowest in stall["slowest"]:  # [wall time, ms, seconds since the last mesh edit before it]
        before = [t for t in raw["edits"] if t <= slowest[0]]
        slowest.append(round(slowest[0] - before[-1], 2) if before else None)
    rows = [
        [f"{label}{phase}", w["polls"], w["p50_ms"], w["p99_ms"], w["max_ms"], w["over_250ms"]]
        for label, whole in (("meshplane /ready", stall), ("control (bare aiohttp)", control))
        for phase, w in (("", whole), (" - warm-up", whole["during_warmup"]), (" - after", whole["after_warmup"]))
    ]
    print(table(["/ready polled every 50 ms", "polls", "p50 ms", "p99 ms", "max ms", "> 250 ms"], rows))
    since = ", ".join(f"{ms:.0f} ms at +{t - raw['started']:.0f} s ({edit} s after an edit)"
                      for t, ms, edit in stall["slowest"][:5])  # fmt: skip
    print(f"slowest meshplane waits: {since}")
    if a.gc_log:
        pauses = raw["gc_pauses"]  # [end wall time, seconds, generation]
        full = [took for _, took, gen in pauses if gen == 2]
        print(
            f"server GC: {len(full)} full collections, median {median(full) * 1000:.0f} ms, "
            f"max {max(full, default=0) * 1000:.0f} ms; other collections over 50 ms: {len(pauses) - len(full)}"
        )
        for slowest in stall["slowest"]:  # + the GC pauses (ms) that ended within the wait
            t, ms = slowest[0], slowest[1]
            slowest.append([round(took * 1000) for end, took, _ in pauses if t <= end <= t + ms / 1000])
        print("GC pauses within the five slowest waits (ms): " + "; ".join(str(s[-1]) for s in stall["slowest"][:5]))
    requests: dict[str, int] = {}
    errors: dict[str, int] = {}
    examples: list[str] = []
    for result in loadgen.values():
        for kind, n in result.get("requests", {}).items():
            requests[kind] = requests.get(kind, 0) + n
        for kind, n in result.get("errors", {}).items():
            errors[kind] = errors.get(kind, 0) + n
        examples += result.get("examples", [])
    ok &= not errors
    kinds = sorted(set(requests) | set(errors))
    print()
    print(table(["requests", "count", "errors"], [[k, requests.get(k, 0), errors.get(k, 0)] for k in kinds]))
    for example in examples[:10]:
        print(f"  error: {example}")
    responses: dict[str, int] = {}
    for name, result in loadgen.items():
        if name.startswith("proxies"):
            for kind, n in result.get("responses", {}).items():
                responses[kind] = responses.get(kind, 0) + n
    print(f"ADS responses received: {responses}")
    slow_callbacks = sorted(raw["slow_callbacks"], key=_took, reverse=True)
    for line in slow_callbacks[:10]:
        print(f"  slow callback: {line[:24]}{line[line.index('Executing <') : line.index('Executing <') + 160]}"
              f" ... {line[-40:]}")  # fmt: skip
    if errors or not ok:
        for message, count in raw["server_log"][:8]:
            print(f"  server log x{count}: {message}")
    document = {
        "cpu_count": os.cpu_count(), "shared_machine_noise": True, "settings": vars(a),
        "load_average": {"start": load_before, "end": _loadavg()}, "rss": rss_out,
        "server_cpu_after_warmup": cpu, "ready_probe": stall,
        "control_probe": control, "server_log_by_message": raw["server_log"],
        "requests": requests, "errors": errors, "error_examples": examples[:20], "ads_responses": responses,
        "started": raw["started"], "mesh_edits": raw["edits"], "rss_samples": samples,
        "slow_callbacks": slow_callbacks[:50], "gc_pauses": raw["gc_pauses"], "bounds_held": ok,
    }  # fmt: skip
    return document, ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--proxies", type=int, default=1000)
    p.add_argument("--proxy-procs", type=int, default=2, help="load-generator processes for the proxies")
    p.add_argument("--services", type=int, default=300)
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the first RSS reference")
    p.add_argument("--edit-every", type=float, default=10.0, help="seconds between config-dir edits")
    p.add_argument("--lifetime", type=float, default=60.0, help="mean ADS stream lifetime (s)")
    p.add_argument("--webhook-rate", type=float, default=10.0)
    p.add_argument("--slow", type=int, default=20, help="concurrent slow webhook clients")
    p.add_argument("--csr-rate", type=float, default=10.0)
    p.add_argument(
        "--gc-log",
        action="store_true",
        help="diagnosis: log the server's garbage-collection pauses and match them to the slowest /ready waits",
    )
    p.add_argument(
        "--asyncio-debug",
        action="store_true",
        help="diagnosis: run the server in asyncio debug mode, which logs every callback that holds the event loop "
        "over 100 ms (the slowest are printed); it slows the server, so its figures are not comparable",
    )
    a = p.parse_args()
    if a.minutes * 60 < a.warmup + 30:
        p.error(f"--minutes {a.minutes:g} leaves no time after the {a.warmup:g} s warm-up (need warm-up + 30 s)")
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        raw = run(a, pathlib.Path(tmp))
    document, ok = report(a, raw, load_before)
    path = write_result("soak", document)
    print(f"bounds: {'held' if ok else 'BROKEN'}; wrote {path}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
