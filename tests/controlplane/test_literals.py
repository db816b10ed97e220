"""controlplane.literals reads numbers and addresses as Go does, refusing what only Python reads."""

from __future__ import annotations

import pytest

from controlplane.literals import INT64_MAX, ZoneError, decimal, ip_address, ip_network, natural, whole_number


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
