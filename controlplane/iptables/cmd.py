"""`meshplane iptables`: the `istio-init` job, setting up a pod's traffic capture (like `istio-iptables`).

    meshplane iptables [istio-iptables] -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020

Takes the flags the injector gives the `istio-init` container (a leading `istio-iptables` word is accepted and
ignored, so the container's args work as they are) and installs the rules in the current network namespace's
`nat` table, or prints them with `--dry-run`, or removes them with `--cleanup`.

Exit status: 0 done; 2 a bad flag value (nothing touched; the message names the flag); 1 iptables missing, not
permitted or refusing the change (the table is left as it was).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import Any

from controlplane.iptables.apply import Iptables, IptablesError, cleanup, install
from controlplane.iptables.rules import FLAGS, CaptureOptions, RuleSet, build_rules, parse_options
from controlplane.quietparse import QuietParser

PROGRAM = "istio-iptables"
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal", "none")  # Istio's, quietest last

DESCRIPTION = """\
Set up the pod's traffic capture in the current network namespace (the istio-init job): outbound TCP is
redirected to the proxy's port (-p), inbound TCP to the inbound capture port (-z), except traffic of the
proxy's user and group (-u, -g). Installs the chains ISTIO_INBOUND, ISTIO_IN_REDIRECT, ISTIO_OUTPUT and
ISTIO_REDIRECT in the nat table (IPv4) in one atomic iptables-restore, and jumps to them from PREROUTING and
OUTPUT. Running it again rebuilds the chains and leaves exactly the same rules. Needs root or NET_ADMIN,
except with --dry-run. Lists are comma-separated; defaults are Istio's (nothing is captured until -i/-b say so).
"""
EPILOG = """\
example (what the injected istio-init container runs):
  meshplane iptables istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' \\
    -d 15090,15021,15020 --log_output_level=default:info

exit status: 0 done; 2 bad flag value (nothing touched); 1 iptables missing, not permitted or failing
(the table is left as it was).
"""

# field -> (extra spellings, default, metavar, help)
_OPTIONS: dict[str, tuple[tuple[str, ...], str | None, str, str]] = {
    "proxy_port": ((), "15001", "PORT", "port all captured outbound TCP is redirected to (Envoy) [15001]"),
    "inbound_capture_port": ((), "15006", "PORT", "port all captured inbound TCP is redirected to [15006]"),
    "inbound_tunnel_port": ((), "15008", "PORT", "inbound tunnel port, never captured [15008]"),
    "proxy_uid": ((), "1337", "UIDS", "user id(s) of the proxy, whose traffic is not captured [1337]"),
    "proxy_gid": ((), None, "GIDS", "group id(s) of the proxy, whose traffic is not captured [the -u ids]"),
    "mode": (
        (),
        "REDIRECT",
        "MODE",
        "inbound interception mode: REDIRECT; NONE installs nothing; TPROXY is not supported [REDIRECT]",
    ),
    "include_ranges": ((), "", "CIDRS", "outbound destinations to capture: '*' for all, else CIDRs; empty: none ['']"),
    "exclude_ranges": ((), "", "CIDRS", "outbound destinations never captured (CIDRs) ['']"),
    "inbound_ports": (
        (),
        "",
        "PORTS",
        "inbound ports to capture: '*' for all but those of -d, else ports; empty: none ['']",
    ),
    "inbound_exclude_ports": ((), "", "PORTS", "inbound ports not captured when -b is '*' ['']"),
    "outbound_include_ports": (
        ("--istio-include-outbound-ports",),
        "",
        "PORTS",
        "outbound TCP ports captured whatever the destination (unless excluded by -x) ['']",
    ),
    "outbound_exclude_ports": (
        ("--istio-exclude-outbound-ports",),
        "",
        "PORTS",
        "outbound TCP and UDP ports never captured ['']",
    ),
    "virtual_interfaces": (
        (),
        "",
        "IFACES",
        "virtual interfaces (a VM's) whose inbound traffic is captured as outbound, to the -i destinations ['']",
    ),
}


# Every option that takes a value, in all its spellings.
VALUE_OPTIONS = frozenset(
    {
        spelling
        for field_name, (aliases, *_) in _OPTIONS.items()
        for spelling in (*FLAGS[field_name].split("/"), *aliases)
    }
    | {"--log_output_level"}
)


def attach_values(argv: Sequence[str]) -> list[str]:
    """`argv` with each value-taking option joined to the argument after it (`-k -x` -> `-k=-x`), as
    istio-iptables (Go's pflag) reads them: the next argument is the value, even one starting with `-`,
    which argparse would take for an option (an interface annotation of `-1,80` failed to parse)."""
    joined: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        value = next(arguments, None) if argument in VALUE_OPTIONS else None
        joined.append(argument if value is None else f"{argument}={value}")
    return joined


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "iptables",
        help="set up a pod's traffic capture with iptables (the istio-init job)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    configure(p)


def configure(p: argparse.ArgumentParser) -> None:
    """Make `p` the parser of `meshplane iptables` (its values joined to their options: `attach_values`)."""
    p.add_argument("program", nargs="?", metavar=PROGRAM, help="accepted and ignored (the injected container's args)")
    for field_name, (aliases, default, metavar, text) in _OPTIONS.items():
        p.add_argument(
            *FLAGS[field_name].split("/"), *aliases, dest=field_name, default=default, metavar=metavar, help=text
        )
    p.add_argument(
        "-n", "--dry-run", action="store_true", help="print the rules (iptables-save format) instead; needs no root"
    )
    p.add_argument(
        "--cleanup",
        "--cleanup-only",
        action="store_true",
        help="remove the jumps into ISTIO_* chains and those chains from the nat table; a no-op when there are "
        "none (with --dry-run: print the removal of the rules these flags would install)",
    )
    p.add_argument(
        "--log_output_level",
        default="default:info",
        metavar="SCOPE:LEVEL",
        help=f"Istio-style output level of the default scope ({', '.join(LOG_LEVELS)}); debug also prints "
        "the iptables-restore input, error and quieter print only errors [default:info]",
    )
    p.set_defaults(func=run)


def log_level(text: str) -> str:
    """The level of the default scope in `scope:level,...` (a bare level is the default scope's).

    Raises ValueError naming the flag for an unknown level or an empty item.
    """
    level = "info"
    for item in (part.strip() for part in text.split(",")):
        scope, _, name = item.rpartition(":")
        if name not in LOG_LEVELS:
            raise ValueError(
                f"--log_output_level: {item!r} does not end in a level; use SCOPE:LEVEL with a level out of "
                f"{', '.join(LOG_LEVELS)}, e.g. default:info"
            )
        if scope in ("", "default", "all"):
            level = name
    return level


def _read(args: argparse.Namespace) -> tuple[str, CaptureOptions]:
    """The log level and the capture options of parsed flags. Raises ValueError (OptionError among
    them) naming the flag."""
    if args.program not in (None, PROGRAM):
        raise ValueError(f"unexpected argument {args.program!r}: the only positional argument allowed is {PROGRAM}")
    return log_level(args.log_output_level), parse_options(**{name: getattr(args, name) for name in _OPTIONS})


@functools.cache
def _quiet_parser() -> argparse.ArgumentParser:
    parser = QuietParser(prog="istio-iptables", allow_abbrev=False)
    configure(parser)
    return parser


def options_for(argv: Sequence[str]) -> CaptureOptions:
    """The capture options `meshplane iptables argv` runs with (argv: the `istio-init` container's
    args): what the injector checks the container it writes with. Raises ValueError with the
    message the command would exit 2 with."""
    return _read(_quiet_parser().parse_args(attach_values(argv)))[1]


def run(args: argparse.Namespace) -> int:
    try:
        level, options = _read(args)
    except ValueError as exc:
        print(f"meshplane iptables: {exc}", file=sys.stderr)
        return 2
    say = _Say(level)
    rules = build_rules(options)
    for note in rules.notes:
        say.warn(note)
    if args.dry_run:
        _print_dry_run(rules, cleanup_only=args.cleanup, mode=options.mode)
        return 0
    if options.mode == "NONE" and not args.cleanup:
        say.info("interception mode NONE: no iptables rules installed, traffic is not captured")
        return 0
    try:
        if args.cleanup:
            plan = cleanup(iptables=Iptables())
            if plan is None:
                say.info("nothing to clean up: the nat table has no ISTIO_* chains")
            else:
                say.debug("iptables-restore --noflush input:\n" + plan.document)
                say.info(f"removed chains {', '.join(plan.removed_chains)} and the jumps into them from the nat table")
            return 0
        plan = install(rules, iptables=Iptables())
    except IptablesError as exc:
        print(f"meshplane iptables: {exc}", file=sys.stderr)
        return 1
    say.debug("iptables-restore --noflush input:\n" + plan.document)
    stale = f"; removed stale chains {', '.join(plan.removed_chains)}" if plan.removed_chains else ""
    say.info(
        f"installed {len(rules.rules)} rules in chains {', '.join(rules.chains)} of the nat table "
        f"({plan.kept_jumps} jump(s) were already in place){stale}"
    )
    return 0


def _print_dry_run(rules: RuleSet, *, cleanup_only: bool, mode: str) -> None:
    if mode == "NONE" and not cleanup_only:
        print("# interception mode NONE: no rules")
        return
    if cleanup_only:
        print("# meshplane iptables --cleanup --dry-run: removes these jumps and chains (IPv4, nat table)")
        print(rules.cleanup_document(), end="")
    else:
        print("# meshplane iptables --dry-run: iptables-restore --noflush input for the nat table (IPv4)")
        print(rules.restore_document(), end="")


class _Say:
    """Messages at the level --log_output_level allows: info and debug on stdout, warnings on stderr."""

    def __init__(self, level: str) -> None:
        self._rank = LOG_LEVELS.index(level)

    def debug(self, text: str) -> None:
        if self._rank <= LOG_LEVELS.index("debug"):
            print(f"meshplane iptables: {text}", end="" if text.endswith("\n") else "\n")

    def info(self, text: str) -> None:
        if self._rank <= LOG_LEVELS.index("info"):
            print(f"meshplane iptables: {text}")

    def warn(self, text: str) -> None:
        if self._rank <= LOG_LEVELS.index("warn"):
            print(f"meshplane iptables: warning: {text}", file=sys.stderr)
