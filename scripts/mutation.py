"""`make mutation`: mutation testing of the critical code, scored per module, survivors listed.

mutmut (configured in pyproject.toml, `[tool.mutmut]`) rewrites source files, so it never runs in the
working tree: this script copies the tree (git's tracked and untracked, not ignored, files) to
`build/mutation/` and runs `mutmut run` there. An interrupted run can only leave that copy behind
(`make clean` removes it); the working tree is never written to.

The files to mutate and the tests that may kill mutants come from `[tool.mutmut]`; `SCOPE` below narrows
some files to the functions that decide something (the CA's authorisation, not its gRPC plumbing; a
generator's `needs_push`, not the resources it builds). Only mutants of those functions are run and
scored. The score is detected / total, where detected is killed or timed out (a mutant that makes the
tests hang is caught, if slowly); "no tests" counts as a survivor: no test even runs that code.

Usage: `python scripts/mutation.py [--jobs N] [--workdir DIR] [--only GLOB]... [--retest [--timeouts] | --report]`.
`--only` limits the run to the SCOPE files matching a glob (`certs/*`). `--retest` re-runs only the survivors
of the previous run in the same workdir (with `--timeouts`, its timed-out mutants too), against the current
tree: adding tests cannot revive a killed mutant, so this gives the new score without a full run (a function
whose source changed since is reset to not checked; the other verdicts are kept). After an interrupted run
(Ctrl-C), the mutants not checked are left out of the score and counted apart; `--report` prints the last
run's report again. Prints a table per module and every survivor as `file:line` with the mutated line
before and after; writes the same, and the timed-out mutants, to `<workdir>/report.json`. Exit status: 0
when the run completed (survivors are reported, not fatal), 1 when mutmut itself failed (its log is
`<workdir>/mutmut.log`), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import fnmatch
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEP = "ǁ"  # mutmut's separator between class and method in a mutant's name

#: Module path -> the functions to score (mutmut's keys: `x_<function>` or `xǁ<Class>ǁ<method>`), or
#: None for every function of the module. Every path must be listed in `[tool.mutmut] only_mutate`.
SCOPE: dict[str, tuple[str, ...] | None] = {
    "certs/identity.py": None,
    "certs/authority.py": None,
    "certs/signing.py": None,
    "certs/service.py": tuple(
        f"x{SEP}CertificateService{SEP}{m}"
        for m in ("__init__", "credentials_of", "identities_of", "authenticate", "create_certificate", "_sign")
    ),
    "certs/authenticate/__init__.py": None,
    "certs/authenticate/clientcert.py": None,
    "certs/authenticate/kubejwt.py": None,
    # Verifying a token is authentication; minting one, parsing `--ttl` and keeping the key file are the
    # `meshplane token` / `meshplane serve` side (see docs/mutation.md, "Scope").
    "certs/authenticate/localtoken.py": (
        "x__unb64",
        "x_check_token",
        f"x{SEP}LocalTokenAuthenticator{SEP}__init__",
        f"x{SEP}LocalTokenAuthenticator{SEP}authenticate",
    ),
    "certs/authenticate/tokencache.py": None,  # a cached verdict must honour the key and the validity window
    "certs/authenticate/reviewgate.py": None,  # what one client's tokens may cost the API server
    "certs/authenticate/issuerkeys.py": None,  # which tokens the cluster signed
    "certs/signslots.py": None,  # how much of the signing one client may hold
    "controlplane/peers.py": None,  # which client a call is charged to (review budget, open streams)
    # All but `PushRequest.__str__`, which only words a push for the logs.
    "discovery/pushqueue.py": (
        "x__names_by_kind",
        *(
            f"x{SEP}{c}{SEP}{m}"
            for c, methods in (
                ("PushRequest", ("from_change", "everything", "of_kind", "has", "merge")),
                ("PushQueue", ("__init__", "__len__", "enqueue", "dequeue", "done", "remove")),
                ("Debouncer", ("__init__", "add", "run")),
            )
            for m in methods
        ),
    ),
    "discovery/connection.py": None,
    "discovery/clients.py": None,  # how many streams one client address may hold
    "discovery/generators/cds.py": (f"x{SEP}ClusterGenerator{SEP}needs_push",),
    # EDS also decides which assignments a push carries (all, or the changed hosts' alone).
    "discovery/generators/eds.py": (
        "x_changed_hosts",
        f"x{SEP}EndpointGenerator{SEP}needs_push",
        f"x{SEP}EndpointGenerator{SEP}generate",
        f"x{SEP}EndpointGenerator{SEP}kept",
        f"x{SEP}EndpointGenerator{SEP}keep",
    ),
    "discovery/generators/lds.py": (f"x{SEP}ListenerGenerator{SEP}needs_push",),
    # SotW: what a request is answered with (all, or a grown EDS subscription's added names), and which
    # push is left out (a wildcard type whose content the client already has).
    "discovery/sotw.py": (f"x{SEP}SotwStream{SEP}handle", f"x{SEP}SotwStream{SEP}send"),
    # Every stream: whose identity may open it, node bounds, which types a push carries and how pushes merge,
    # and how a request's answer is generated (whole, or in pieces from one snapshot).
    "discovery/stream.py": (
        "x_check_identity",
        "x_check_node_size",
        *(f"x{SEP}StreamBase{SEP}{m}" for m in ("record", "push", "_push_pending", "_push", "_open", "answer")),
    ),
    # Delta: what a request and a push carry (changed resources, removals) and what the client then knows.
    "discovery/delta.py": (
        f"x{SEP}DeltaStream{SEP}handle",
        f"x{SEP}DeltaStream{SEP}_send",
        f"x{SEP}KnownVersions{SEP}__init__",
        f"x{SEP}KnownVersions{SEP}after",
        f"x{SEP}KnownVersions{SEP}_forget",
        "x__removed",
    ),
    "discovery/generators/rds.py": (f"x{SEP}RouteGenerator{SEP}needs_push",),
    "discovery/generators/grpc.py": tuple(
        f"x{SEP}{c}{SEP}needs_push" for c in ("_Base", "GrpcClusterGenerator", "GrpcEndpointGenerator")
    ),
    "webhook/policy.py": None,
}

DETECTED = {"killed", "timeout", "caught by type check"}
UNCHECKED = {"not checked", "check was interrupted by user"}  # an interrupted run: neither scored nor survivors
_HUNK = re.compile(r"^@@ -(\d+)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Survivor:
    name: str
    status: str
    location: str  # path:line
    before: tuple[str, ...]
    after: tuple[str, ...]


def module_of(path: str) -> str:
    """`certs/authenticate/__init__.py` -> `certs.authenticate` (mutmut's module naming)."""
    dotted = path.removesuffix(".py").replace("/", ".")
    return dotted.removesuffix(".__init__")


def patterns(scope: dict[str, tuple[str, ...] | None]) -> list[str]:
    """The mutant-name globs handed to `mutmut run`."""
    out: list[str] = []
    for path, functions in scope.items():
        module = module_of(path)
        if functions is None:
            out.append(f"{module}.x*")
        else:
            out += [f"{module}.{key}__mutmut_*" for key in functions]
    return out


def in_scope(path: str, mutant: str) -> bool:
    functions = SCOPE[path]
    key = mutant.rpartition(".")[2].partition("__mutmut_")[0]
    prefix = module_of(path) + "."
    if not mutant.startswith(prefix) or "." in mutant[len(prefix) :]:
        return False  # a mutant of a submodule (certs.authenticate.kubejwt under certs.authenticate)
    return functions is None or key in functions


def copy_tree(workdir: pathlib.Path, *, refresh: bool = False) -> None:
    """Copy git's view of the working tree (tracked and untracked files, not ignored ones) to `workdir`.

    `refresh` updates an existing copy in place and keeps mutmut's results in it: mutmut re-mutates a source
    that changed since and forgets the results of the functions that changed (they count as not checked)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    if refresh:
        shutil.rmtree(workdir / "tests", ignore_errors=True)  # so that a deleted test does not linger
    elif workdir.exists():
        shutil.rmtree(workdir)
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the working tree but still in the index
        target = workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


STOP_GRACE = 30.0  # seconds mutmut gets after SIGINT to stop its workers and save what it checked


def stop_group(proc: subprocess.Popen[bytes], *, grace: float) -> None:
    """End `proc`'s process group: SIGINT and up to `grace` seconds (mutmut saves on it), then SIGKILL.

    mutmut forks a worker per mutant into its group; a worker left running would go on mutating
    files in the work dir, so the whole group goes, also when mutmut itself has exited."""
    try:
        if grace > 0 and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone already
    proc.wait()


def run_mutmut(workdir: pathlib.Path, *, jobs: int, names: list[str]) -> int:
    mutmut = pathlib.Path(sys.executable).parent / "mutmut"
    log = workdir / "mutmut.log"
    print(f"mutmut: {len(names)} mutant patterns, {jobs} workers, log {log}")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(mutmut), "run", "--max-children", str(jobs), *names],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            start_new_session=True,  # its own process group: stopped as a whole below, workers included
        )
        try:
            proc.wait()
        except KeyboardInterrupt:
            print("interrupted: stopping mutmut, then reporting the mutants checked so far", flush=True)
            stop_group(proc, grace=STOP_GRACE)
        finally:
            stop_group(proc, grace=0)  # whatever happened, nothing of the run is left behind
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        print(f"mutmut run failed with exit status {proc.returncode}", file=sys.stderr)
    return proc.returncode


def _meta_path(workdir: pathlib.Path, path: str) -> pathlib.Path:
    return workdir / "mutants" / f"{path}.meta"


def saved_verdicts(workdir: pathlib.Path, scope: dict[str, tuple[str, ...] | None]) -> dict[str, dict[str, object]]:
    """mutmut's per-file results (verdicts and function hashes) as they stand, to restore after a retest."""
    out: dict[str, dict[str, object]] = {}
    for path in scope:
        meta = _meta_path(workdir, path)
        if meta.is_file():
            out[path] = json.loads(meta.read_text())
    return out


def restore_verdicts(workdir: pathlib.Path, saved: dict[str, dict[str, object]], *, retested: set[str]) -> int:
    """Put back the verdicts of mutants a retest did not run, if mutmut dropped them; return how many.

    mutmut forgets every result when the test selection in `[tool.mutmut]` changes (as it does when a
    new test file is added to it). A killed or timed-out mutant stays detected whatever tests are
    added, so its verdict is kept, unless its function's source changed since (then it stays not checked).
    """
    restored = 0
    for path, old in saved.items():
        meta = _meta_path(workdir, path)
        if not meta.is_file():
            continue
        new = json.loads(meta.read_text())
        codes, old_codes = new["exit_code_by_key"], old["exit_code_by_key"]
        hashes, old_hashes = new["hash_by_function_name"], old["hash_by_function_name"]
        assert isinstance(codes, dict) and isinstance(old_codes, dict)
        assert isinstance(hashes, dict) and isinstance(old_hashes, dict)
        for key, code in old_codes.items():
            function = key.rpartition(".")[2].partition("__mutmut_")[0]
            if key in retested or code is None or key not in codes or codes[key] is not None:
                continue
            if hashes.get(function) != old_hashes.get(function):
                continue
            codes[key] = code
            restored += 1
        meta.write_text(json.dumps(new, indent=4))
    return restored


def function_start(source: str, key: str) -> int:
    """The first line (decorators included) of the function or method that mutmut calls `key`."""
    cls, _, name = key[2:].rpartition(SEP) if key.startswith(f"x{SEP}") else ("", "", key[2:])
    cls = cls.strip(SEP)
    body: list[ast.stmt] = ast.parse(source).body
    if cls:
        body = next(n.body for n in body if isinstance(n, ast.ClassDef) and n.name == cls)
    node = next(n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name)
    return min([node.lineno, *(d.lineno for d in node.decorator_list)])


def describe(workdir: pathlib.Path, path: str, mutant: str, status: str) -> Survivor:
    """Where a mutant is (path:line in the source) and what it changed, from mutmut's own diff."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(mutant, path=path).splitlines()
    key = mutant.rpartition(".")[2].partition("__mutmut_")[0]
    start = function_start((workdir / path).read_text(), key)
    line = start
    before: list[str] = []
    after: list[str] = []
    offset: int | None = None
    for text in diff[2:]:
        hunk = _HUNK.match(text)
        if hunk:
            offset = int(hunk.group(1))
            continue
        if offset is None:
            continue
        if text.startswith("-"):
            if not before:
                line = start + offset - 1
            before.append(text[1:].strip())
        elif text.startswith("+"):
            after.append(text[1:].strip())
        elif not before:
            offset += 1
    return Survivor(name=mutant, status=status, location=f"{path}:{line}", before=tuple(before), after=tuple(after))


def report(
    workdir: pathlib.Path, *, scope: dict[str, tuple[str, ...] | None], elapsed: float, jobs: int
) -> dict[str, object]:
    os.chdir(workdir)  # mutmut's readers work relative to the directory it ran in
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    modules: list[dict[str, object]] = []
    survivors: list[Survivor] = []
    timeouts: list[str] = []
    for path in scope:
        data = SourceFileMutationData(path=path)
        data.load()
        counts: dict[str, int] = {}
        for mutant, code in sorted(data.exit_code_by_key.items(), key=lambda kv: _natural(kv[0])):
            if not in_scope(path, mutant):
                continue
            status = status_by_exit_code[code]
            counts[status] = counts.get(status, 0) + 1
            if status not in DETECTED | UNCHECKED:
                survivors.append(describe(workdir, path, mutant, status))
            elif status == "timeout":
                timeouts.append(mutant)
        total = sum(n for s, n in counts.items() if s not in UNCHECKED)
        detected = sum(n for s, n in counts.items() if s in DETECTED)
        modules.append({"module": path, "detected": detected, "total": total, "statuses": counts})
    detected = sum(int(m["detected"]) for m in modules)  # type: ignore[call-overload]
    total = sum(int(m["total"]) for m in modules)  # type: ignore[call-overload]
    return {
        "cores": os.cpu_count(),
        "jobs": jobs,
        "elapsed_seconds": round(elapsed, 1),
        "detected": detected,
        "total": total,
        "score": round(detected / total, 4) if total else None,
        "modules": modules,
        "survivors": [dataclasses.asdict(s) for s in survivors],
        "timeouts": timeouts,
    }


def _path_of(survivor: dict[str, str]) -> str:
    return survivor["location"].rpartition(":")[0]


def _natural(name: str) -> tuple[str, int]:
    head, _, number = name.rpartition("__mutmut_")
    return head, int(number) if number.isdigit() else 0


def print_report(result: dict[str, object]) -> None:
    print()
    print(f"{'module':40} {'killed':>7} {'total':>6} {'score':>7}  other")
    for m in result["modules"]:  # type: ignore[attr-defined]
        statuses = {s: n for s, n in m["statuses"].items() if s not in DETECTED}
        other = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        score = f"{100 * m['detected'] / m['total']:.1f}%" if m["total"] else "-"
        print(f"{m['module']:40} {m['detected']:>7} {m['total']:>6} {score:>7}  {other}")
    score = f"{100 * result['score']:.1f}%" if result["score"] is not None else "-"  # type: ignore[operator]
    print(f"{'TOTAL':40} {result['detected']:>7} {result['total']:>6} {score:>7}")
    print(f"({result['elapsed_seconds']} s on {result['cores']} cores, {result['jobs']} workers)")
    survivors = result["survivors"]
    print(f"\n{len(survivors)} survivors:")  # type: ignore[arg-type]
    for s in survivors:  # type: ignore[attr-defined]
        print(f"  {s['location']}  [{s['status']}]  {s['name'].rpartition('.')[2]}")
        for text in s["before"]:
            print(f"      - {text}")
        for text in s["after"]:
            print(f"      + {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants tested in parallel")
    parser.add_argument("--workdir", type=pathlib.Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB", help="SCOPE files to run (repeatable)")
    parser.add_argument("--report", action="store_true", help="only print the report of the last run in --workdir")
    parser.add_argument(
        "--retest", action="store_true", help="re-run the previous run's survivors with the current tests"
    )
    parser.add_argument(
        "--timeouts",
        action="store_true",
        help="with --retest: the timed-out mutants too (a run starved of CPU times out mutants no test kills)",
    )
    args = parser.parse_args(argv)
    if args.timeouts and not args.retest:
        parser.error("--timeouts: only with --retest")
    if args.jobs < 1:
        parser.error(f"--jobs: {args.jobs} must be at least 1")
    workdir = args.workdir.resolve()
    if workdir == ROOT or ROOT.is_relative_to(workdir):
        parser.error(f"--workdir: {workdir} must not contain the working tree (it is deleted and re-created)")
    unlisted = [p for p in SCOPE if not (ROOT / p).is_file()]
    if unlisted:
        parser.error(f"SCOPE names missing files: {', '.join(unlisted)}")
    scope = {p: f for p, f in SCOPE.items() if not args.only or any(fnmatch.fnmatch(p, g) for g in args.only)}
    if not scope:
        parser.error(f"--only: {', '.join(args.only)} matches none of {', '.join(SCOPE)}")
    previous = workdir / "report.json"
    started = time.monotonic()
    if args.report:
        if not (workdir / "mutants").is_dir():
            parser.error(f"--report: no run in {workdir}")
    elif args.retest:
        if not previous.is_file():
            parser.error(f"--retest: no previous run in {workdir} (run without --retest first)")
        last = json.loads(previous.read_text())
        names = [s["name"] for s in last["survivors"] if _path_of(s) in scope]
        if args.timeouts:
            names += [m for m in last.get("timeouts", ()) if any(in_scope(p, m) for p in scope)]
        if not names:
            print("--retest: the previous run left no survivors in scope")
            return 0
        saved = saved_verdicts(workdir, scope)
        copy_tree(workdir, refresh=True)
    else:
        names = patterns(scope)
        copy_tree(workdir)
    if not args.report and run_mutmut(workdir, jobs=args.jobs, names=names) != 0:
        return 1
    if args.retest:
        kept = restore_verdicts(workdir, saved, retested=set(names))
        if kept:
            print(f"kept the previous verdicts of {kept} mutants the retest did not run (mutmut had reset them)")
    result = report(workdir, scope=scope, elapsed=time.monotonic() - started, jobs=args.jobs)
    (workdir / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"\nreport: {workdir / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
