"""controlplane.literals reads numbers and addresses as Go does, refusing what only Python reads."""

from __future__ import annotations

import re

import pytest

from controlplane.literals import (
    INT64_MAX,
    ZoneError,
    boolean,
    decimal,
    duration,
    host_port,
    ip_address,
    ip_network,
    natural,
    whole_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("080", 80),
        ("9223372036854775807", INT64_MAX),
        ("9223372036854775808", INT64_MAX),  # out of an int64's range saturates, as Go's strconv does
        ("9" * 5000, INT64_MAX),  # int() raises on more than 4,300 digits
        ("0" * 5000 + "7", 7),
        ("", None),
        (" 80", None),
        ("+80", None),
        ("1_000", None),
        ("\u00b2", None),  # isdigit() is true for a superscript two, which int() refuses
        ("\u0668\u0660", None),  # Arabic-Indic 80, which int() reads
        ("\uff18\uff10", None),  # fullwidth 80
    ],
)
def test_natural_reads_ascii_digits_only(text: str, expected: int | None) -> None:
    assert natural(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("-5", -5), ("+5", 5), ("-", None), ("--5", None), ("-" + "9" * 5000, -INT64_MAX)]
)
def test_whole_number_takes_one_sign(text: str, expected: int | None) -> None:
    assert whole_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10", 10.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("5.", 5.0),
        ("-1e3", -1000.0),
        ("nan", None),
        ("inf", None),
        ("1e400", None),  # float() reads it as infinity
        ("1_0", None),
        ("\u0661\u0660", None),
        (" 1", None),
        ("0x10", None),
        (".", None),
    ],
)
def test_decimal_reads_finite_ascii_numbers_only(text: str, expected: float | None) -> None:
    assert decimal(text) == expected


def test_an_address_or_cidr_with_a_zone_is_refused() -> None:
    assert str(ip_address("fd00::1")) == "fd00::1"
    with pytest.raises(ZoneError, match="'fe80::1%eth0' is not an IP address: a zone"):
        ip_address("fe80::1%eth0")
    assert str(ip_network("10.1.2.3/8")) == "10.0.0.0/8"
    for text in ("fe80::%eth0/64", "fe80::1%eth0/64"):  # Python keeps the first zone and drops the second
        with pytest.raises(ZoneError, match="is not a CIDR: a zone"):
            ip_network(text)
    with pytest.raises(ValueError, match="write it with a prefix length"):
        ip_network("10.0.0.1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("2us", 2e-6),
        ("2\u00b5s", 2e-6),  # micro sign
        ("2\u03bcs", 2e-6),  # Greek mu
        ("1h1m1s1ms1us1ns", 3661.001001001),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("0", 0.0),
        ("-5s", -5.0),
        ("+5s", 5.0),
        ("9223372036854775807ns", INT64_MAX / 1e9),  # Go's longest, ~292 years
        ("2562047h47m16.854775807s", INT64_MAX / 1e9),
        ("9223372036854775808ns", None),
        ("2562048h", None),
        ("9" * 5000 + "h", None),  # int() raises past 4,300 digits, float() makes it infinity
        ("5", None),  # Go wants a unit (but see bare_seconds)
        ("1d", None),
        ("5 s", None),
        (" 5s", None),
        ("5sm", None),
        ("1e3s", None),
        ("\u0665s", None),
        ("", None),
        ("s", None),
    ],
)
def test_duration_reads_go_durations_within_an_int64_of_nanoseconds(text: str, expected: float | None) -> None:
    assert duration(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("90", 90.0), ("0.5", 0.5), ("0", 0.0), ("1e3", None), ("-5", None)])
def test_a_bare_number_is_seconds_where_asked(text: str, expected: float | None) -> None:
    assert duration(text, bare_seconds=True) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("istiod.istio-system.svc:15012", ("istiod.istio-system.svc", 15012)),
        ("10.0.0.1:15012", ("10.0.0.1", 15012)),
        ("[fd00::1]:15012", ("fd00::1", 15012)),
        ("istiod.:15012", ("istiod.", 15012)),
    ],
)
def test_host_port_splits_as_go_does(text: str, expected: tuple[str, int]) -> None:
    assert host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("istiod", "has no port"),
        (":15012", "has no port"),
        ("fd00::1:15012", "needs brackets around an IPv6 address"),
        ("[fd00::1:15012", "is not host:port"),
        ("istiod:0", "has port '0', not one of 1-65535"),
        ("istiod:\u0661\u0665", "not one of 1-65535"),
        ("a b:15012", "has host 'a b', neither an IP address nor a DNS name"),
        ("[fe80::1%eth0]:15012", "neither an IP address nor a DNS name"),  # a zone is no address of a pod
    ],
)
def test_host_port_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        host_port(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *((t, True) for t in ("1", "t", "T", "TRUE", "true", "True")),
        *((t, False) for t in ("0", "f", "F", "FALSE", "false", "False")),
        *((t, None) for t in ("", "yes", "TrUe", " true", "2", "on")),
    ],
)
def test_boolean_reads_what_go_parsebool_reads(text: str, expected: bool | None) -> None:
    assert boolean(text) is expected
