"""Regenerate `protos/gen/` from the `.proto` sources under `protos/`.

Usage: `python -m protos.generate` rewrites `protos/gen/`; `python -m protos.generate --check`
exits 1 (listing the differing files) when the committed code is stale, and writes nothing.

protoc names a generated module after its proto path (`istio/v1/auth/ca.proto` ->
`istio.v1.auth.ca_pb2`), and the gRPC plugin imports sibling modules by that absolute name. We
keep the canonical proto paths (so descriptors and method names are Istio's) but place the code
under `protos.gen`, so the imports between generated modules are rewritten to
`protos.gen.istio...`. This keeps the top-level name `istio` free for any dependency that owns it.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
GEN_DIR = PROTO_ROOT / "gen"
GEN_PACKAGE = "protos.gen"


class GenerateError(RuntimeError):
    """protoc failed; the message carries its exit status and the sources it was given."""


def proto_sources() -> list[pathlib.Path]:
    """Every `.proto` under `protos/` except generated output, as paths relative to `protos/`."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto") if GEN_DIR not in p.parents)


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Compile every proto source into `out` (created if missing); return the files written, relative to `out`.

    Raises GenerateError when protoc rejects a source.
    """
    from grpc_tools import protoc  # imported lazily: only this command needs the compiler

    sources = proto_sources()
    out.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s) for s in sources),
    ]
    status = protoc.main(args)
    if status != 0:
        raise GenerateError(f"protoc exited with {status} compiling {', '.join(map(str, sources))}")
    ours = sorted({s.parts[0] for s in sources})
    pattern = re.compile(rf"^(from|import) ({'|'.join(map(re.escape, ours))})(\.|\s)", re.MULTILINE)
    written: list[pathlib.Path] = []
    for path in sorted(out.rglob("*.py*")):
        if path.suffix not in {".py", ".pyi"}:
            continue
        text = path.read_text()
        fixed = pattern.sub(lambda m: f"{m.group(1)} {GEN_PACKAGE}.{m.group(2)}{m.group(3)}", text)
        if fixed != text:
            path.write_text(fixed)
        written.append(path.relative_to(out))
    packages = {out}
    for module in out.rglob("*_pb2.py"):
        packages.update(p for p in module.parents if p == out or out in p.parents)
    for package in sorted(packages):
        init = package / "__init__.py"
        if not init.exists():
            init.write_text("")
            written.append(init.relative_to(out))
    return sorted(set(written))


def stale_files(committed: pathlib.Path = GEN_DIR) -> list[str]:
    """Files that differ between `committed` and a fresh generation (missing, extra, or changed)."""
    with tempfile.TemporaryDirectory(prefix="meshplane-protos-") as tmp:
        fresh = pathlib.Path(tmp)
        expected = {str(p) for p in generate(fresh)}
        actual = {str(p.relative_to(committed)) for p in committed.rglob("*.py*") if p.suffix in {".py", ".pyi"}}
        differing = expected ^ actual
        for name in expected & actual:
            if not filecmp.cmp(fresh / name, committed / name, shallow=False):
                differing.add(name)
    return sorted(differing)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether protos/gen is up to date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("protos/gen is stale; run `python -m protos.generate`. Differing files:", *stale, sep="\n  ")
            return 1
        print("protos/gen is up to date")
        return 0
    with tempfile.TemporaryDirectory(prefix="meshplane-protos-", dir=PROTO_ROOT) as tmp:
        files = generate(pathlib.Path(tmp))
        shutil.rmtree(GEN_DIR, ignore_errors=True)
        shutil.copytree(tmp, GEN_DIR)
    for name in files:
        print(f"wrote protos/gen/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
