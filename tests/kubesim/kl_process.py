"""A container as a process: the pod's network namespace, its own mount and UTS namespaces, its user.

The launcher is `ip netns exec <netns> unshare --mount --uts --propagation private sh -c <script> ...`:
the script sets the hostname, bind-mounts each volume at its mountPath (parents first, read-only when
asked), changes to the working directory and `exec`s the program, through `setpriv` when the container
runs as a non-root user. Every step `exec`s, so the process the kubelet holds *is* the container's main
process: SIGTERM reaches the program itself. Each container is the leader of its own process group, and
the group is SIGKILLed once the main process is gone, so helpers it started (Envoy under the agent) go too.
Output (stdout and stderr) is appended to the container's log file.

Exit codes follow the container runtime: a process killed by signal N exits 128+N (137 for SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pathlib
import shlex
import signal
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SIGNAL_BASE = 128


@dataclass(frozen=True, kw_only=True)
class Mount:
    source: pathlib.Path
    target: str
    read_only: bool = False


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    """Everything needed to start one container's process."""

    netns: str
    argv: Sequence[str]
    env: Mapping[str, str]
    mounts: Sequence[Mount]
    workdir: str
    hostname: str
    log_path: pathlib.Path
    uid: int | None = None
    gid: int | None = None
    groups: Sequence[int] = ()


def _user_prefix(uid: int | None, gid: int | None, groups: Sequence[int]) -> list[str]:
    if uid is None and gid is None and not groups:
        return []
    prefix = ["setpriv", "--reuid", str(uid or 0), "--regid", str(gid or 0)]
    prefix += ["--groups", ",".join(str(g) for g in groups)] if groups else ["--clear-groups"]
    return [*prefix, "--"]


@functools.cache
def hidden_interpreter() -> tuple[str, str] | None:
    """(ancestor, directory below it) when this Python lives below a directory other users cannot search.

    A virtualenv made from an interpreter under root's home (pyenv's default) cannot be started by a
    container running as another user; a container image would have its own interpreter. The launcher
    then shows that one directory (e.g. `/root/.pyenv`) inside an otherwise empty tmpfs over the ancestor,
    in the container's mount namespace only.
    """
    real = pathlib.Path(os.path.realpath(sys.executable))
    for parent in reversed(real.parents):
        if parent != pathlib.Path("/") and not parent.stat().st_mode & stat.S_IXOTH:
            return str(parent), str(parent / real.relative_to(parent).parts[0])
    return None


def launch_script(spec: LaunchSpec) -> str:
    """The shell script run inside the new mount namespace (see the module docstring)."""
    q = shlex.quote
    steps = ["set -e", f"hostname {q(spec.hostname)}"]
    hidden = hidden_interpreter()
    if hidden is not None and spec.uid:
        ancestor, exposed = hidden
        stage = q(str(spec.log_path.parent / ".interpreter"))
        steps += [
            f"mkdir -p {stage}",
            f"mount --bind {q(exposed)} {stage}",
            f"mount -t tmpfs -o mode=0755,size=1m kubesim-hidden {q(ancestor)}",
            f"mkdir -p {q(exposed)}",
            f"mount --move {stage} {q(exposed)}",
        ]
    for mount in sorted(spec.mounts, key=lambda m: len(pathlib.PurePosixPath(m.target).parts)):
        target = q(mount.target)
        if mount.source.is_dir():
            steps.append(f"mkdir -p {target}")
        steps.append(f"mount --bind {q(str(mount.source))} {target}")
        if mount.read_only:
            steps.append(f"mount -o remount,bind,ro {target}")
    steps.append(f"cd {q(spec.workdir)}")
    steps.append('exec "$@"')
    return "\n".join(steps)


def launcher_argv(spec: LaunchSpec) -> list[str]:
    program = [*_user_prefix(spec.uid, spec.gid, spec.groups), *spec.argv]
    return [
        *("ip", "netns", "exec", spec.netns),
        *("unshare", "--mount", "--uts", "--propagation", "private", "--"),
        *("sh", "-c", launch_script(spec), "container", *program),
    ]


def exit_code(returncode: int) -> int:
    return SIGNAL_BASE - returncode if returncode < 0 else returncode


class Process:
    """One running container process. Start with `await Process.start(spec)`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid = proc.pid

    @classmethod
    async def start(cls, spec: LaunchSpec) -> Process:
        """Start the container; OSError when the launcher itself cannot run."""
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                *launcher_argv(spec),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env=dict(spec.env),
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        return cls(proc)

    @property
    def returncode(self) -> int | None:
        code = self._proc.returncode
        return None if code is None else exit_code(code)

    async def wait(self) -> int:
        """Wait for the main process to exit, kill what is left of its group, return the exit code."""
        code = await self._proc.wait()
        self.kill_group()
        return exit_code(code)

    def signal(self, sig: int) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def terminate(self, grace: float) -> int:
        """SIGTERM the main process, SIGKILL the group after `grace` seconds; the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), timeout=max(grace, 0.0))
        except TimeoutError:
            self.kill_group()
            return await self.wait()


async def exec_in(
    pid: int,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    uid: int | None,
    gid: int | None,
    time_limit: float,
) -> tuple[int, bytes]:
    """Run `argv` in the network, mount and UTS namespaces of process `pid` (an exec probe or hook).

    Returns (exit code, output); a command still running after `time_limit` seconds is killed and
    reported as TimeoutError (`time_limit` seconds).
    """
    full = [
        *("nsenter", "--target", str(pid), "--net", "--mount", "--uts", "--"),
        *_user_prefix(uid, gid, ()),
        *argv,
    ]
    proc = await asyncio.create_subprocess_exec(
        *full,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=time_limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    return exit_code(proc.returncode or 0), out
