"""From `istio-iptables` options to the IPv4 `nat` rules that capture a pod's traffic. Pure: no I/O.

`parse_options` turns the flag values (strings, exactly as given on the command line) into `CaptureOptions`,
raising `OptionError` that names the flag and says what to write instead. `build_rules` turns the options into
a `RuleSet`: Istio's chains (`ISTIO_INBOUND`, `ISTIO_IN_REDIRECT`, `ISTIO_OUTPUT`, `ISTIO_REDIRECT`), the jumps
to them from `PREROUTING` and `OUTPUT`, and their rules in Istio's order (tools/istio-iptables, REDIRECT mode).

Rules are written in the canonical form `iptables-save` prints (`-s`/`-d` before `-i`/`-o` before `-p`, the
`-m tcp` that `--dport` implies spelled out), so a rule read back from the kernel compares equal as text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from controlplane.literals import ZoneError, ip_network, natural

TABLE = "nat"
INBOUND = "ISTIO_INBOUND"
IN_REDIRECT = "ISTIO_IN_REDIRECT"
OUTPUT = "ISTIO_OUTPUT"
REDIRECT = "ISTIO_REDIRECT"
CHAIN_PREFIX = "ISTIO_"  # every nat chain with this prefix is ours to flush and delete
PASSTHROUGH_SOURCE = "127.0.0.6/32"  # Envoy's inbound passthrough connects from here; never captured
LOOPBACK = "127.0.0.1/32"
MODES = ("REDIRECT", "TPROXY", "NONE")
MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel

# Option field -> the flag that sets it (short/long), as errors name it; the CLI is built from these.
FLAGS: dict[str, str] = {
    "proxy_port": "-p/--envoy-port",
    "inbound_capture_port": "-z/--inbound-capture-port",
    "inbound_tunnel_port": "-e/--inbound-tunnel-port",
    "proxy_uid": "-u/--proxy-uid",
    "proxy_gid": "-g/--proxy-gid",
    "mode": "-m/--istio-inbound-interception-mode",
    "include_ranges": "-i/--istio-service-cidr",
    "exclude_ranges": "-x/--istio-service-exclude-cidr",
    "inbound_ports": "-b/--istio-inbound-ports",
    "inbound_exclude_ports": "-d/--istio-local-exclude-ports",
    "outbound_include_ports": "-q/--istio-outbound-ports",
    "outbound_exclude_ports": "-o/--istio-local-outbound-ports-exclude",
    "virtual_interfaces": "-k/--kube-virt-interfaces",
}


class OptionError(ValueError):
    """A flag value that cannot be used. `flag` names it as the user wrote it (short/long form)."""

    def __init__(self, field_name: str, message: str) -> None:
        self.flag = FLAGS[field_name]
        super().__init__(f"{self.flag}: {message}")


@dataclass(frozen=True, kw_only=True)
class IpRanges:
    """`*` (everything), or a list of CIDRs split by family; empty means none."""

    wildcard: bool = False
    v4: tuple[ipaddress.IPv4Network, ...] = ()
    v6: tuple[ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True, kw_only=True)
class InboundPorts:
    """`*` (every port but the excluded ones), or the ports to capture; empty means no inbound capture."""

    wildcard: bool = False
    ports: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class CaptureOptions:
    """What to capture and where to send it. Defaults are Istio's (which capture nothing until -i/-b say so)."""

    proxy_port: int = 15001
    inbound_capture_port: int = 15006
    inbound_tunnel_port: int = 15008
    proxy_uids: tuple[int, ...] = (1337,)
    proxy_gids: tuple[int, ...] = (1337,)
    mode: str = "REDIRECT"
    include_ranges: IpRanges = field(default_factory=IpRanges)
    exclude_ranges: IpRanges = field(default_factory=IpRanges)
    inbound_ports: InboundPorts = field(default_factory=InboundPorts)
    inbound_exclude_ports: tuple[int, ...] = ()
    outbound_include_ports: tuple[int, ...] = ()
    outbound_exclude_ports: tuple[int, ...] = ()
    virtual_interfaces: tuple[str, ...] = ()  # traffic arriving on these (a VM's) is captured as outbound


@dataclass(frozen=True)
class Rule:
    """One rule of the nat table: `-A <chain> <spec...>`."""

    chain: str
    spec: tuple[str, ...]

    @property
    def line(self) -> str:
        return " ".join(("-A", self.chain, *self.spec))

    @property
    def target(self) -> str:
        for flag in ("-j", "-g"):
            if flag in self.spec:
                return self.spec[self.spec.index(flag) + 1]
        return ""


@dataclass(frozen=True, kw_only=True)
class RuleSet:
    """The chains to create (in order), the rules to append (in order), and notes for the user."""

    chains: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def jumps(self) -> tuple[Rule, ...]:
        """The rules that live in built-in chains (the entry points into ours)."""
        return tuple(rule for rule in self.rules if not rule.chain.startswith(CHAIN_PREFIX))

    def restore_document(self) -> str:
        """`iptables-restore --noflush` input that installs the rules into a table that has none of ours."""
        lines = ["*" + TABLE, *(f":{chain} - [0:0]" for chain in self.chains), *(r.line for r in self.rules)]
        return "\n".join([*lines, "COMMIT", ""])

    def cleanup_document(self) -> str:
        """`iptables-restore --noflush` input that removes exactly these jumps and chains."""
        lines = ["*" + TABLE, *("-D" + rule.line[2:] for rule in reversed(self.jumps))]
        lines += [f"-F {chain}" for chain in self.chains] + [f"-X {chain}" for chain in self.chains]
        return "\n".join([*lines, "COMMIT", ""])


# -- parsing -----------------------------------------------------------------------------------------------


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _port(text: str, *, field_name: str) -> int:
    value = text.strip()
    port = natural(value)
    if port is None:
        raise OptionError(field_name, f"{value!r} is not a port number; write a number from 1 to 65535")
    if not 1 <= port <= 65535:
        raise OptionError(field_name, f"port {port} is out of range; write a number from 1 to 65535")
    return port


def _ports(text: str, *, field_name: str) -> tuple[int, ...]:
    items = _items(text)
    if "*" in items:
        where = "combined with ports" if field_name == "inbound_ports" else "used here; list the ports"
        raise OptionError(field_name, f"'*' (every port) cannot be {where}")
    ports = [_port(item, field_name=field_name) for item in items]
    return tuple(dict.fromkeys(ports))


def _ids(text: str, *, field_name: str, what: str) -> tuple[int, ...]:
    ids: list[int] = []
    for item in _items(text):
        number = natural(item)
        if number is None or number > MAX_ID:
            raise OptionError(field_name, f"{item!r} is not a numeric {what} id (0-{MAX_ID}); use e.g. 1337")
        ids.append(number)
    if not ids:
        raise OptionError(field_name, f"no {what} id given; use e.g. 1337 (the proxy's {what})")
    return tuple(dict.fromkeys(ids))


def _ranges(text: str, *, field_name: str, wildcard_allowed: bool) -> IpRanges:
    items = _items(text)
    if "*" in items:
        if not wildcard_allowed:
            raise OptionError(field_name, "'*' is not allowed here; list the CIDRs to exclude, e.g. 10.0.0.0/8")
        if len(items) > 1:
            raise OptionError(field_name, "'*' means every address and cannot be combined with CIDRs")
        return IpRanges(wildcard=True)
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for item in items:
        try:
            network = ip_network(item)
        except ZoneError as exc:
            raise OptionError(field_name, str(exc)) from None
        except ValueError:
            raise OptionError(field_name, f"{item!r} is not a CIDR; write e.g. 10.96.0.0/12 or fd00::/8") from None
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
        else:
            v6.append(network)
    return IpRanges(v4=tuple(dict.fromkeys(v4)), v6=tuple(dict.fromkeys(v6)))


def parse_options(
    *,
    proxy_port: str = "15001",
    inbound_capture_port: str = "15006",
    inbound_tunnel_port: str = "15008",
    proxy_uid: str = "1337",
    proxy_gid: str | None = None,
    mode: str = "REDIRECT",
    include_ranges: str = "",
    exclude_ranges: str = "",
    inbound_ports: str = "",
    inbound_exclude_ports: str = "",
    outbound_include_ports: str = "",
    outbound_exclude_ports: str = "",
    virtual_interfaces: str = "",
) -> CaptureOptions:
    """Validate every flag value and build the options; `proxy_gid` None means the same ids as `proxy_uid`.

    Raises OptionError for the first bad value: a port that is not a number or not in 1-65535, a CIDR that does
    not parse, `*` where it is not allowed, a non-numeric uid/gid, an unknown mode, and TPROXY (not supported).
    """
    if mode not in MODES:
        raise OptionError("mode", f"{mode!r} is not an interception mode; use REDIRECT (or NONE to capture nothing)")
    if mode == "TPROXY":
        raise OptionError("mode", "TPROXY is not supported: meshplane supports REDIRECT only (for now)")
    uids = _ids(proxy_uid, field_name="proxy_uid", what="user")
    inbound = inbound_ports.strip()
    return CaptureOptions(
        proxy_port=_port(proxy_port, field_name="proxy_port"),
        inbound_capture_port=_port(inbound_capture_port, field_name="inbound_capture_port"),
        inbound_tunnel_port=_port(inbound_tunnel_port, field_name="inbound_tunnel_port"),
        proxy_uids=uids,
        proxy_gids=uids if proxy_gid is None else _ids(proxy_gid, field_name="proxy_gid", what="group"),
        mode=mode,
        include_ranges=_ranges(include_ranges, field_name="include_ranges", wildcard_allowed=True),
        exclude_ranges=_ranges(exclude_ranges, field_name="exclude_ranges", wildcard_allowed=False),
        inbound_ports=InboundPorts(wildcard=True)
        if inbound == "*"
        else InboundPorts(ports=_ports(inbound, field_name="inbound_ports")),
        inbound_exclude_ports=_ports(inbound_exclude_ports, field_name="inbound_exclude_ports"),
        outbound_include_ports=_ports(outbound_include_ports, field_name="outbound_include_ports"),
        outbound_exclude_ports=_ports(outbound_exclude_ports, field_name="outbound_exclude_ports"),
        virtual_interfaces=_interfaces(virtual_interfaces),
    )


_INTERFACE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


def _interfaces(text: str) -> tuple[str, ...]:
    names = tuple(_items(text))
    for name in names:
        if not _INTERFACE.fullmatch(name):
            raise OptionError("virtual_interfaces", f"{name!r} is not a network interface name (1-15 characters)")
    return names


# -- building ----------------------------------------------------------------------------------------------


def _tcp_port(port: int, *, negate: bool = False) -> tuple[str, ...]:
    return ("-p", "tcp", "-m", "tcp", *(("!",) if negate else ()), "--dport", str(port))


def build_rules(options: CaptureOptions) -> RuleSet:
    """The rules for `options`, in Istio's order. Mode NONE gives an empty set. IPv6 ranges only add a note."""
    o = options
    if o.mode == "NONE":
        return RuleSet()
    rules: list[Rule] = []

    def add(chain: str, *spec: str) -> None:
        rules.append(Rule(chain, spec))

    add(INBOUND, *_tcp_port(o.inbound_tunnel_port), "-j", "RETURN")
    add(REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(o.proxy_port))
    add(IN_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(o.inbound_capture_port))

    # A VM's traffic arriving on a virtual interface is the VM calling out: captured as outbound, to the
    # included destinations (istio-iptables puts these first in PREROUTING).
    for interface in o.virtual_interfaces:
        if o.include_ranges.wildcard:
            add("PREROUTING", "-i", interface, "-j", REDIRECT)
        for network in o.include_ranges.v4:
            add("PREROUTING", "-i", interface, "-d", str(network), "-j", REDIRECT)

    # Inbound: everything but the excluded ports, or only the listed ports, goes to the inbound capture port.
    if o.inbound_ports.wildcard or o.inbound_ports.ports:
        add("PREROUTING", "-p", "tcp", "-j", INBOUND)
        if o.inbound_ports.wildcard:
            for port in o.inbound_exclude_ports:
                add(INBOUND, *_tcp_port(port), "-j", "RETURN")
            add(INBOUND, "-p", "tcp", "-j", IN_REDIRECT)
        else:
            for port in o.inbound_ports.ports:
                add(INBOUND, *_tcp_port(port), "-j", IN_REDIRECT)

    # Outbound, first match wins: excluded ports, the passthrough source, the proxy's own traffic, loopback.
    add("OUTPUT", "-j", OUTPUT)
    for port in o.outbound_exclude_ports:
        add(OUTPUT, *_tcp_port(port), "-j", "RETURN")
        add(OUTPUT, "-p", "udp", "-m", "udp", "--dport", str(port), "-j", "RETURN")
    add(OUTPUT, "-s", PASSTHROUGH_SOURCE, "-o", "lo", "-j", "RETURN")
    loopback_included = any(network.network_address.is_loopback for network in o.include_ranges.v4)
    owners = [("--uid-owner", str(uid)) for uid in o.proxy_uids] + [("--gid-owner", str(gid)) for gid in o.proxy_gids]
    for match, owner in owners:
        # The proxy calling the pod's own IP (app -> VIP -> outbound proxy -> pod IP): through inbound capture.
        to_pod_ip = ("!", "-d", LOOPBACK, "-o", "lo", *_tcp_port(o.inbound_tunnel_port, negate=True))
        add(OUTPUT, *to_pod_ip, "-m", "owner", match, owner, "-j", IN_REDIRECT)
        if not loopback_included:  # the app calling its own pod IP stays direct
            add(OUTPUT, "-o", "lo", "-m", "owner", "!", match, owner, "-j", "RETURN")
        add(OUTPUT, "-m", "owner", match, owner, "-j", "RETURN")
    add(OUTPUT, "-d", LOOPBACK, "-j", "RETURN")
    for network in o.exclude_ranges.v4:
        add(OUTPUT, "-d", str(network), "-j", "RETURN")
    for port in o.outbound_include_ports:
        add(OUTPUT, *_tcp_port(port), "-j", REDIRECT)
    if o.include_ranges.wildcard:
        add(OUTPUT, "-j", REDIRECT)
    for network in o.include_ranges.v4:
        add(OUTPUT, "-d", str(network), "-j", REDIRECT)

    ignored = [*o.include_ranges.v6, *o.exclude_ranges.v6]
    notes = (f"IPv6 ranges ignored (IPv4 rules only): {', '.join(map(str, ignored))}",) if ignored else ()
    return RuleSet(chains=_chains(rules), rules=tuple(rules), notes=notes)


def _chains(rules: Iterable[Rule]) -> tuple[str, ...]:
    """Our chains in order of first mention, as a rule's chain or its jump target."""
    names = (name for rule in rules for name in (rule.chain, rule.target))
    return tuple(dict.fromkeys(name for name in names if name.startswith(CHAIN_PREFIX)))
