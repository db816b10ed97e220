"""The rules `meshplane iptables` builds from the injector's flags, its plans, and its command line (no root needed)."""

from __future__ import annotations

import pathlib

import pytest

from controlplane.cli import main
from controlplane.iptables.apply import parse_save, plan_cleanup, plan_install
from controlplane.iptables.rules import OptionError, build_rules, parse_options

# The istio-init args the webhook injects by default (tests/webhook/testdata/*.injected).
INJECTED = [
    "istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
    "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info",
]  # fmt: skip

# What Istio's istio-iptables installs for those args (its capture golden files, in iptables-save's spelling).
INJECTED_RULES = """\
*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"""

BASE = {"include_ranges": "*", "inbound_ports": "*", "inbound_exclude_ports": "15090,15021,15020"}


def lines(**flags: str) -> list[str]:
    """The `-A` lines built for the injected defaults overridden by `flags`."""
    return [rule.line for rule in build_rules(parse_options(**{**BASE, **flags})).rules]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["iptables", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_injected_defaults_give_istios_rules() -> None:
    assert build_rules(parse_options(**BASE)).restore_document() == INJECTED_RULES


@pytest.mark.parametrize(
    ("flags", "present", "absent"),
    [
        pytest.param(
            {"include_ranges": "10.0.0.0/8,172.16.0.0/12"},
            ["-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT", "-A ISTIO_OUTPUT -d 172.16.0.0/12 -j ISTIO_REDIRECT"],
            ["-A ISTIO_OUTPUT -j ISTIO_REDIRECT"],
            id="include-ranges-capture-only-those",
        ),
        pytest.param(
            {"include_ranges": ""},
            ["-A OUTPUT -j ISTIO_OUTPUT"],
            ["-A ISTIO_OUTPUT -j ISTIO_REDIRECT"],
            id="empty-include-captures-no-outbound",
        ),
        pytest.param(
            {"include_ranges": "10.1.2.3/8"},
            ["-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT"],
            [],
            id="host-bits-are-cleared-as-iptables-does",
        ),
        pytest.param(
            {"include_ranges": "127.1.2.3/32"},
            ["-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT"],
            ["-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN"],
            id="included-loopback-range-is-captured-even-from-the-app",
        ),
        pytest.param(
            {"inbound_ports": "8080,9090"},
            [
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 9090 -j ISTIO_IN_REDIRECT",
            ],
            ["-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT", "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN"],
            id="inbound-port-list-ignores-the-exclusions",
        ),
        pytest.param(
            {"inbound_ports": ""},
            ["-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN"],
            ["-A PREROUTING -p tcp -j ISTIO_INBOUND"],
            id="no-inbound-ports-no-prerouting-jump",
        ),
        pytest.param(
            {"outbound_include_ports": "5432,6379", "include_ranges": ""},
            [
                "-A ISTIO_OUTPUT -p tcp -m tcp --dport 5432 -j ISTIO_REDIRECT",
                "-A ISTIO_OUTPUT -p tcp -m tcp --dport 6379 -j ISTIO_REDIRECT",
            ],
            [],
            id="include-outbound-ports",
        ),
        pytest.param(
            {"outbound_exclude_ports": "25"},
            [
                "-A ISTIO_OUTPUT -p tcp -m tcp --dport 25 -j RETURN",
                "-A ISTIO_OUTPUT -p udp -m udp --dport 25 -j RETURN",
            ],
            [],
            id="exclude-outbound-ports-tcp-and-udp",
        ),
        pytest.param(
            {"proxy_uid": "1000,1001", "proxy_gid": "2000"},
            [
                "-A ISTIO_OUTPUT -m owner --uid-owner 1000 -j RETURN",
                "-A ISTIO_OUTPUT -m owner --uid-owner 1001 -j RETURN",
                "-A ISTIO_OUTPUT -m owner --gid-owner 2000 -j RETURN",
                "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 2000 -j RETURN",
            ],
            [
                "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -m owner --gid-owner 1001 -j RETURN",
            ],
            id="uids-and-gid",
        ),
        pytest.param(
            {"virtual_interfaces": "k6t-eth0,tap0"},
            ["-A PREROUTING -i k6t-eth0 -j ISTIO_REDIRECT", "-A PREROUTING -i tap0 -j ISTIO_REDIRECT"],
            [],
            id="virtual-interfaces-captured-as-outbound",
        ),
        pytest.param(
            {"virtual_interfaces": "k6t-eth0", "include_ranges": "10.96.0.0/12"},
            ["-A PREROUTING -i k6t-eth0 -d 10.96.0.0/12 -j ISTIO_REDIRECT"],
            ["-A PREROUTING -i k6t-eth0 -j ISTIO_REDIRECT"],
            id="virtual-interfaces-to-the-included-ranges-only",
        ),
        pytest.param(
            {"proxy_port": "16001", "inbound_capture_port": "16006", "inbound_tunnel_port": "16008"},
            [
                "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
                "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 16008 -j RETURN",
            ],
            [],
            id="ports",
        ),
    ],
)
def test_flags_change_the_rules(flags: dict[str, str], present: list[str], absent: list[str]) -> None:
    built = lines(**flags)
    assert [line for line in present if line not in built] == []
    assert [line for line in absent if line in built] == []


def test_excluded_ranges_and_ports_come_before_the_capture_rules() -> None:
    built = lines(exclude_ranges="10.96.0.1/32,192.168.0.0/16", outbound_include_ports="80")
    capture = built.index("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
    assert built.index("-A ISTIO_OUTPUT -d 10.96.0.1/32 -j RETURN") < capture
    assert built.index("-A ISTIO_OUTPUT -d 192.168.0.0/16 -j RETURN") < capture
    assert built.index("-A ISTIO_OUTPUT -d 192.168.0.0/16 -j RETURN") < built.index(
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 80 -j ISTIO_REDIRECT"
    )


def test_mode_none_gives_no_rules() -> None:
    rules = build_rules(parse_options(**BASE, mode="NONE"))
    assert rules.rules == () and rules.chains == ()


def test_ipv6_ranges_give_a_note_and_no_rule() -> None:
    rules = build_rules(parse_options(**{**BASE, "include_ranges": "10.0.0.0/8,fd00::/8", "exclude_ranges": "::1/128"}))
    assert rules.notes == ("IPv6 ranges ignored (IPv4 rules only): fd00::/8, ::1/128",)
    assert not [rule for rule in rules.rules if ":" in rule.line]


@pytest.mark.parametrize(
    ("flags", "flag", "says"),
    [
        ({"proxy_port": "0"}, "-p/--envoy-port", "port 0 is out of range"),
        ({"proxy_port": "70000"}, "-p/--envoy-port", "port 70000 is out of range"),
        ({"inbound_capture_port": "http"}, "-z/--inbound-capture-port", "'http' is not a port number"),
        ({"inbound_exclude_ports": "15090,x"}, "-d/--istio-local-exclude-ports", "'x' is not a port number"),
        ({"inbound_ports": "*,80"}, "-b/--istio-inbound-ports", "cannot be combined"),
        ({"outbound_include_ports": "-1"}, "-q/--istio-outbound-ports", "'-1' is not a port number"),
        ({"outbound_exclude_ports": "65536"}, "-o/--istio-local-outbound-ports-exclude", "out of range"),
        ({"include_ranges": "10.0.0.0/33"}, "-i/--istio-service-cidr", "'10.0.0.0/33' is not a CIDR"),
        ({"include_ranges": "10.0.0.1"}, "-i/--istio-service-cidr", "'10.0.0.1' is not a CIDR"),
        ({"include_ranges": "*,10.0.0.0/8"}, "-i/--istio-service-cidr", "cannot be combined"),
        ({"exclude_ranges": "*"}, "-x/--istio-service-exclude-cidr", "'*' is not allowed here"),
        ({"exclude_ranges": "banana/8"}, "-x/--istio-service-exclude-cidr", "'banana/8' is not a CIDR"),
        ({"exclude_ranges": "fe80::%eth0/64"}, "-x/--istio-service-exclude-cidr", "a zone (%...) is not part of"),
        ({"include_ranges": "fe80::1%eth0/64"}, "-i/--istio-service-cidr", "a zone (%...) is not part of one"),
        ({"proxy_port": "1" * 5000}, "-p/--envoy-port", "is out of range"),
        ({"proxy_uid": "1" * 5000}, "-u/--proxy-uid", "is not a numeric user id"),
        ({"proxy_uid": "istio-proxy"}, "-u/--proxy-uid", "'istio-proxy' is not a numeric user id"),
        ({"proxy_uid": ""}, "-u/--proxy-uid", "no user id given"),
        ({"proxy_gid": "4294967295"}, "-g/--proxy-gid", "not a numeric group id"),
        ({"mode": "TPROXY"}, "-m/--istio-inbound-interception-mode", "meshplane supports REDIRECT only"),
        ({"mode": "redirect"}, "-m/--istio-inbound-interception-mode", "'redirect' is not an interception mode"),
    ],
)
def test_bad_values_are_refused_naming_the_flag(flags: dict[str, str], flag: str, says: str) -> None:
    with pytest.raises(OptionError) as caught:
        parse_options(**{**BASE, **flags})
    assert caught.value.flag == flag
    assert str(caught.value).startswith(f"{flag}: ")
    assert says in str(caught.value)


# -- plans against what iptables-save shows ----------------------------------------------------------------

SAVED = """\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ISTIO_FILTER_IS_NOT_OURS
COMMIT
*nat
:PREROUTING ACCEPT [10:600]
:OUTPUT ACCEPT [3:180]
:ISTIO_INBOUND - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_OUTPUT_DNS - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -m comment --comment "kube services" -j KUBE-SERVICES
-A OUTPUT -j ISTIO_OUTPUT
-A OUTPUT -p udp -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS
COMMIT
"""


def test_install_keeps_wanted_jumps_and_removes_stale_ones_and_chains() -> None:
    desired = build_rules(parse_options(**{**BASE, "inbound_ports": ""}))  # no PREROUTING jump wanted any more
    plan = plan_install(desired, parse_save(SAVED))
    doc = plan.document.splitlines()
    assert plan.kept_jumps == 1  # OUTPUT -> ISTIO_OUTPUT stays where it is
    assert "-A OUTPUT -j ISTIO_OUTPUT" not in doc
    assert "-D PREROUTING -p tcp -j ISTIO_INBOUND" in doc
    assert "-D OUTPUT -p udp -j ISTIO_OUTPUT_DNS" in doc
    assert doc.index("-F ISTIO_OUTPUT_DNS") < doc.index("-X ISTIO_OUTPUT_DNS")
    assert plan.removed_chains == ("ISTIO_OUTPUT_DNS",)
    assert not [line for line in doc if "KUBE-SERVICES" in line or "ISTIO_FILTER" in line]
    assert [line for line in doc if line.startswith(":")] == [f":{chain} - [0:0]" for chain in desired.chains]


def test_cleanup_removes_every_jump_into_our_chains_then_the_chains() -> None:
    plan = plan_cleanup(parse_save(SAVED))
    assert plan is not None
    assert plan.document.splitlines() == [
        "*nat",
        "-D PREROUTING -p tcp -j ISTIO_INBOUND",
        "-D OUTPUT -j ISTIO_OUTPUT",
        "-D OUTPUT -p udp -j ISTIO_OUTPUT_DNS",
        "-F ISTIO_INBOUND",
        "-F ISTIO_OUTPUT",
        "-F ISTIO_OUTPUT_DNS",
        "-X ISTIO_INBOUND",
        "-X ISTIO_OUTPUT",
        "-X ISTIO_OUTPUT_DNS",
        "COMMIT",
    ]
    assert plan_cleanup(parse_save("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j KUBE-SERVICES\nCOMMIT\n")) is None


# -- the command line ----------------------------------------------------------------------------------------


def test_dry_run_of_the_injected_args_prints_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli([*INJECTED, "--dry-run"], capsys)
    assert (code, err) == (0, "")
    assert [line for line in out.splitlines() if not line.startswith("#")] == INJECTED_RULES.splitlines()
    # without the leading program word, and with Istio's long flags, it is the same
    long_form = [
        "--envoy-port", "15001", "--inbound-capture-port", "15006", "--proxy-uid", "1337", "--proxy-gid", "1337",
        "--istio-inbound-interception-mode", "REDIRECT", "--istio-service-cidr", "*", "--istio-service-exclude-cidr",
        "", "--istio-inbound-ports", "*", "--istio-local-exclude-ports", "15090,15021,15020", "-n",
    ]  # fmt: skip
    assert cli(long_form, capsys) == (0, out, "")


def test_outbound_port_flags_have_both_spellings(capsys: pytest.CaptureFixture[str]) -> None:
    short = cli(["-q", "80", "-o", "25", "-n"], capsys)
    spelled = cli(["--istio-include-outbound-ports", "80", "--istio-exclude-outbound-ports", "25", "-n"], capsys)
    istio = cli(["--istio-outbound-ports", "80", "--istio-local-outbound-ports-exclude", "25", "-n"], capsys)
    assert short == spelled == istio
    assert "-A ISTIO_OUTPUT -p tcp -m tcp --dport 80 -j ISTIO_REDIRECT" in short[1].splitlines()


def test_a_value_starting_with_a_dash_is_the_options_value_as_in_istio_iptables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Go's pflag takes the argument after an option as its value whatever it starts with; argparse took
    `-1,80` for an option, so a pod the webhook injected with kubevirtInterfaces `-1,80` never started."""
    code, out, err = cli(["-i", "*", "-k", "-1,80", "-n"], capsys)
    assert (code, err) == (0, "")
    assert "-A PREROUTING -i -1 -j ISTIO_REDIRECT" in out.splitlines()
    assert "-A PREROUTING -i 80 -j ISTIO_REDIRECT" in out.splitlines()
    assert (
        cli(["-i", "*", "--kube-virt-interfaces", "-x", "-n"], capsys)[:2]
        == cli(["-i", "*", "-k=-x", "-n"], capsys)[:2]
    )


def test_mode_none_says_it_installs_nothing_and_needs_no_iptables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code, out, err = cli(["-m", "NONE", "-i", "*", "-b", "*"], capsys)
    assert (code, err) == (0, "")
    assert "interception mode NONE: no iptables rules installed" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-p", "abc"], "-p/--envoy-port: 'abc' is not a port number"),
        (["-m", "TPROXY"], "TPROXY is not supported: meshplane supports REDIRECT only (for now)"),
        (["--log_output_level=default:loud"], "--log_output_level: 'default:loud' does not end in a level"),
        (["iptables-restore", "-p", "15001"], "unexpected argument 'iptables-restore'"),
    ],
)
def test_bad_flags_exit_2_before_touching_iptables(
    argv: list[str],
    says: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # were iptables run, the error would be "not found"
    code, out, err = cli(argv, capsys)
    assert (code, out) == (2, "")
    assert err.startswith("meshplane iptables: ") and says in err


def test_missing_iptables_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for argv in (INJECTED, ["--cleanup"]):
        code, _, err = cli(argv, capsys)
        assert code == 1
        assert "iptables not found on PATH: install the iptables package" in err
        assert "Traceback" not in err


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["iptables", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    for flag in ("-p", "-z", "-u", "-g", "-m", "-i", "-x", "-b", "-d", "-q", "-o", "--dry-run", "--cleanup"):
        assert f"  {flag}" in out or f", {flag}" in out, flag
    assert "--log_output_level" in out and "TPROXY is not supported" in out
