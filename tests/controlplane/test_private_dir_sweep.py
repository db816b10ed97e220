"""A `meshplane serve` killed without cleaning up (SIGKILL, OOM) leaves its secure port's private
directory (Unix sockets, Envoy's bootstrap and log) in the temp dir; the next start removes it, and
never a directory whose owner still runs."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from controlplane.grpcserver import OWNER_FILE, PRIVATE_PREFIX, UNOWNED_GRACE, sweep_orphaned_private_dirs
from tests.helpers.serve import start_serve


def _private_dirs(tmp: pathlib.Path) -> list[pathlib.Path]:
    return sorted(tmp.glob(f"{PRIVATE_PREFIX}*"))


def test_a_killed_serve_leaves_its_private_dir_and_the_next_start_removes_it(tmp_path: pathlib.Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = start_serve(tmp_path / "first", env=env)
    try:
        (killed,) = _private_dirs(tmp)
        assert (killed / OWNER_FILE).read_text().strip() == str(first.proc.pid)
        first.stop(sig=signal.SIGKILL)
        assert killed.exists()  # nothing could clean up
        second = start_serve(tmp_path / "second", env=env)
        try:
            (live,) = _private_dirs(tmp)
            assert live != killed and (live / OWNER_FILE).read_text().strip() == str(second.proc.pid)
            assert f"removed {killed}, left by a secure port whose process is gone" in second.logs()
        finally:
            second.stop()
        assert _private_dirs(tmp) == []  # a clean stop removes its own
    finally:
        first.stop(sig=signal.SIGKILL)


def test_the_sweep_keeps_running_owners_young_unowned_and_other_users_dirs(tmp_path: pathlib.Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()

        def private(name: str, owner: str | None) -> pathlib.Path:
            path = tmp_path / f"{PRIVATE_PREFIX}{name}"
            path.mkdir(mode=0o700)
            (path / "grpc.sock").write_text("")
            if owner is not None:
                (path / OWNER_FILE).write_text(owner)
            return path

        running = private("running", f"{sleeper.pid}\n")
        orphan = private("orphan", f"{dead.pid}\n")
        young = private("young", None)  # being created: no owner file yet
        old = private("old", "garbage")
        past = time.time() - UNOWNED_GRACE - 5
        os.utime(old, (past, past))
        foreign = private("foreign", f"{dead.pid}\n")
        os.chown(foreign, 65534, 65534)
        unrelated = tmp_path / "meshplane-state"
        unrelated.mkdir()

        removed = sweep_orphaned_private_dirs(tmp_path)

        assert sorted(removed) == sorted([orphan, old])
        assert not orphan.exists() and not old.exists()
        assert running.exists() and young.exists() and foreign.exists() and unrelated.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
