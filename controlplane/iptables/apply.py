"""Installing and removing the capture rules in the current network namespace's `nat` table.

Every change is one `iptables-restore --noflush` transaction, so it applies completely or not at all (the kernel
commits a table at `COMMIT`; iptables-nft sends one netlink batch): a refused rule leaves the table as it was.
The transaction is planned from what `iptables-save -t nat` shows just before:

- install: each of our chains is declared (`:CHAIN - [0:0]` creates it, or flushes it when it exists), then
  filled again; a jump into our chains from a built-in chain is kept when it is wanted as it is, deleted when it is
  not, and added when missing (so a second run changes nothing and never adds a jump twice); any other
  `ISTIO_*` chain (left by another version) is flushed and deleted.
- cleanup: every jump into an `ISTIO_*` chain is deleted, then every `ISTIO_*` chain is flushed and deleted.

`plan_install` and `plan_cleanup` are pure; `Iptables` runs the binaries and turns their failures into
`IptablesError` (missing binaries, no permission, anything else iptables refuses), each saying nothing changed.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass

from controlplane.iptables.rules import CHAIN_PREFIX, TABLE, RuleSet

SAVE = "iptables-save"
RESTORE = "iptables-restore"
_DENIED = ("permission denied", "must be root", "operation not permitted")


class IptablesError(Exception):
    """iptables could not be run, or refused the change; the table was left as it was."""


@dataclass(frozen=True)
class SavedRule:
    """A rule as `iptables-save` printed it: `-A <chain> <text>`, `text` verbatim (quoting included)."""

    chain: str
    text: str

    @property
    def line(self) -> str:
        return f"-A {self.chain} {self.text}"

    @property
    def target(self) -> str:
        try:
            words = shlex.split(self.text)
        except ValueError:
            words = self.text.split()
        for flag in ("-j", "-g"):
            if flag in words[:-1]:
                return words[words.index(flag) + 1]
        return ""


@dataclass(frozen=True, kw_only=True)
class NatState:
    """Our chains (`ISTIO_*`) that exist in the nat table, and all of the table's rules, in order."""

    chains: tuple[str, ...] = ()
    rules: tuple[SavedRule, ...] = ()

    @property
    def jumps(self) -> tuple[SavedRule, ...]:
        """Rules outside our chains that jump into one of them."""
        return tuple(
            rule
            for rule in self.rules
            if not rule.chain.startswith(CHAIN_PREFIX) and rule.target.startswith(CHAIN_PREFIX)
        )


def parse_save(text: str) -> NatState:
    """The nat section of `iptables-save` output (other tables and comments are skipped)."""
    chains: list[str] = []
    rules: list[SavedRule] = []
    in_nat = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            in_nat = line[1:].strip() == TABLE
        elif not in_nat or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(CHAIN_PREFIX):
                chains.append(name)
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            rules.append(SavedRule(chain, rest[0] if rest else ""))
    return NatState(chains=tuple(chains), rules=tuple(rules))


@dataclass(frozen=True, kw_only=True)
class Plan:
    """An `iptables-restore --noflush` document and what it does, for the summary printed to the user."""

    document: str
    kept_jumps: int = 0  # wanted jumps that were already in place (left untouched)
    removed_chains: tuple[str, ...] = ()


def plan_install(desired: RuleSet, current: NatState) -> Plan:
    """The transaction that turns `current` into `desired` (see the module docstring)."""
    wanted = [rule.line for rule in desired.jumps]
    deletes: list[str] = []
    kept = 0
    for jump in current.jumps:
        if jump.line in wanted:
            wanted.remove(jump.line)
            kept += 1
        else:
            deletes.append("-D" + jump.line[2:])
    stale = tuple(chain for chain in current.chains if chain not in desired.chains)
    adds = [rule.line for rule in desired.rules if rule.chain.startswith(CHAIN_PREFIX) or rule.line in wanted]
    lines = [
        "*" + TABLE,
        *(f":{chain} - [0:0]" for chain in desired.chains),
        *deletes,
        *(f"-F {chain}" for chain in stale),
        *(f"-X {chain}" for chain in stale),
        *adds,
        "COMMIT",
        "",
    ]
    return Plan(document="\n".join(lines), kept_jumps=kept, removed_chains=stale)


def plan_cleanup(current: NatState) -> Plan | None:
    """The transaction that removes every jump into our chains and the chains; None when there is nothing."""
    if not current.chains and not current.jumps:
        return None
    lines = [
        "*" + TABLE,
        *("-D" + jump.line[2:] for jump in current.jumps),
        *(f"-F {chain}" for chain in current.chains),
        *(f"-X {chain}" for chain in current.chains),
        "COMMIT",
        "",
    ]
    return Plan(document="\n".join(lines), removed_chains=current.chains)


@dataclass(frozen=True, kw_only=True)
class Iptables:
    """The iptables binaries on PATH, run in the caller's network namespace."""

    timeout: float = 60.0  # bounds a wait for the xtables lock held by someone else

    def save(self) -> NatState:
        return parse_save(self._run(SAVE, "-t", TABLE))

    def restore(self, document: str) -> None:
        self._run(RESTORE, "--noflush", "--wait=10", document=document)

    def _run(self, name: str, *args: str, document: str | None = None) -> str:
        binary = shutil.which(name)
        if binary is None:
            raise IptablesError(f"iptables not found on PATH: install the iptables package (no {name} found)")
        try:
            done = subprocess.run(
                [binary, *args], input=document, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise IptablesError(
                f"{name} did not finish within {self.timeout:g} s (is another process holding the xtables lock?); "
                "no rules were changed"
            ) from None
        except OSError as exc:
            raise IptablesError(f"cannot run {binary}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            said = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
            if any(marker in said.lower() for marker in _DENIED):
                raise IptablesError(
                    "not permitted to change iptables: this needs the NET_ADMIN capability (run as root, or give "
                    f"the container NET_ADMIN and NET_RAW); {name} said: {said}"
                )
            raise IptablesError(f"{name} failed; no rules were changed. It said: {said}")
        return done.stdout


def install(desired: RuleSet, *, iptables: Iptables) -> Plan:
    """Install `desired` (see the module docstring). Raises IptablesError, leaving the table as it was."""
    plan = plan_install(desired, iptables.save())
    iptables.restore(plan.document)
    return plan


def cleanup(*, iptables: Iptables) -> Plan | None:
    """Remove our jumps and chains; None (and nothing run but iptables-save) when there are none."""
    plan = plan_cleanup(iptables.save())
    if plan is not None:
        iptables.restore(plan.document)
    return plan
