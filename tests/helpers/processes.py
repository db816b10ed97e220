"""Run a program to its end from a test's event loop: its exit status and text output."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

PATIENCE_S = 60.0


async def run_process(*argv: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `argv`; killed, and TimeoutError raised, after `PATIENCE_S`."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=dict(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(PATIENCE_S):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()
