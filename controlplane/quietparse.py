"""An argparse parser that raises where argparse would print and exit.

For reading a command line that another process will run: the injector reads the args it writes
for the sidecar's containers with the parsers of the commands that run them (`meshplane agent`,
`meshplane iptables`), and a refusal must become an error it reports, not an exit of its own.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn


class ArgumentsRefused(ValueError):
    """The command line is one the command would refuse (exit 2), or would only print help for."""


class QuietParser(argparse.ArgumentParser):
    """Raises `ArgumentsRefused` (with argparse's message) instead of printing and exiting; its
    subcommands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentsRefused(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise ArgumentsRefused(message or f"the command would exit with status {status} (help)")

    def _print_message(self, message: str, file: Any = None) -> None:
        pass
