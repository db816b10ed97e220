"""The text the API server writes back for values whose Go types encode themselves.

A built-in object is decoded into its Go struct and what is stored and answered is that struct encoded again
(`tests.kubesim.decoding.encode`), so these values come back in their types' own form, not as they were sent:

- `resource.Quantity`: `ParseQuantity` then `MarshalJSON`. A quantity whose text `ParseQuantity` finds canonical
  already (its fast path: at most 18 digits, no finer than nano; a decimal one with a scale that is a multiple of
  3, not ending in "000", with a non-zero first digit; a binary one whose number is not a multiple of 8) keeps
  that text as it was written (`+1`, `01` and `1.500` too). Any other is rewritten by `CanonicalizeBytes` in the
  format its suffix chose (DecimalSI, BinarySI, DecimalExponent): factors of ten moved into an exponent that is a
  multiple of 3 (`1000m` is `1`, `0.5` is `500m`, `1.5e3` is `1500`), a binary value below 1024 in magnitude or
  not whole written as DecimalSI (`0.5Ki` is `512`), a binary one in the largest power of 1024 it is a multiple of
  (`1024Mi` is `1Gi`). A value finer than nano is rounded up, away from zero, to nano (`0.5n` is `1n`), a binary
  one capped at 2^63-1; a decimal exponent is read into an int32, and one past `E` (10^18) has no DecimalSI
  suffix, so it is written with none, as Go does.
- `metav1.Time` and `MicroTime`: `MarshalJSON` of what `time.Parse` read: the instant in UTC, to the second
  (RFC 3339) or the microsecond (RFC3339Micro); the zero time (0001-01-01T00:00:00Z) is `null`.
- `[]byte`: base64 (`StdEncoding`), which skips line breaks when decoding, written again with padding and none.
"""

from __future__ import annotations

import base64
import functools
import re

INT64_MAX = 2**63 - 1
DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_BY_EXPONENT = {exponent: suffix for suffix, exponent in DECIMAL_SUFFIXES.items()}
_BINARY_BY_EXPONENT = {exponent: suffix for suffix, exponent in BINARY_SUFFIXES.items()}
_DIGITS = "0123456789"
MAX_INT64_FACTORS = 18  # the decimal digits an int64 holds, as `ParseQuantity`'s fast path counts them
NANO = -9


def _scan(text: str) -> tuple[bool, str, str, str]:
    """`parseQuantityString` of a quantity known to parse: its sign, the whole digits without leading zeros
    ("0" when none are left), the fraction digits and the suffix."""
    pos, end = 0, len(text)
    positive = True
    if text[:1] in ("+", "-"):
        positive = text[0] == "+"
        pos = 1
    while pos < end and text[pos] == "0":
        pos += 1
    if pos == end:
        return positive, "0", "", ""
    start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    num = text[start:pos] or "0"
    denom = ""
    if pos < end and text[pos] == ".":
        start = pos = pos + 1
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        denom = text[start:pos]
    return positive, num, denom, text[pos:]


def int32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31


def _interpret(suffix: str) -> tuple[int, int, str]:
    """`quantitySuffixer.interpret`: the base, the exponent and the format a suffix stands for."""
    if suffix in DECIMAL_SUFFIXES:
        return 10, DECIMAL_SUFFIXES[suffix], "DecimalSI"
    if suffix in BINARY_SUFFIXES:
        return 2, BINARY_SUFFIXES[suffix], "BinarySI"
    return 10, int32(int(suffix[1:])), "DecimalExponent"  # `e<int64>`, kept as an int32


def parse_quantity(text: str) -> tuple[int, int, str, bool]:
    """`ParseQuantity(text)` of a `text` that parses: its value as `(unscaled, scale)` (`unscaled * 10**scale`), its
    format, and whether the text is kept as the quantity's string (canonical already)."""
    if text == "0":
        return 0, 0, "DecimalSI", True
    positive, num, denom, suffix = _scan(text)
    base, exponent, form = _interpret(suffix)
    sign = 1 if positive else -1
    if form == "BinarySI":
        fast = exponent >= 0 and not denom
        precision = 15 - len(num) - exponent * 3 // 10 - 1 if fast else -1
        scale = -len(denom)
    else:
        precision = MAX_INT64_FACTORS - len(num) - len(denom)
        scale = exponent - len(denom)
    if precision >= 0 and scale >= NANO:
        shifted = num + denom
        value = int(shifted) * (1 << exponent if base == 2 else 1)
        if value <= INT64_MAX:
            if base == 2:
                return sign * value, 0, form, int(shifted) & 7 != 0
            kept = scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0"
            return sign * value, scale, form, kept
    # the slow path (`inf.Dec`): the exact value, rounded up to nano and, when binary, capped
    unscaled = int(num + denom)
    scale = -len(denom)
    if base == 2:
        unscaled <<= exponent
    else:
        scale += exponent
    if unscaled and scale < NANO:
        places = NANO - scale
        unscaled = 1 if len(str(unscaled)) <= places else -(-unscaled // 10**places)
        scale = NANO
    if form == "BinarySI" and _exceeds(unscaled, scale, INT64_MAX):
        unscaled, scale = INT64_MAX, 0
    if form == "BinarySI" and scale < 0 and 0 < unscaled < 10**-scale:
        form = "DecimalSI"  # between 0 and 1
    return sign * unscaled, scale, form, False


@functools.lru_cache(maxsize=4096)
def quantity(text: str) -> str:
    """`Quantity.MarshalJSON` of `ParseQuantity(text)`, for a `text` that parses (spaces trimmed already)."""
    unscaled, scale, form, kept = parse_quantity(text)
    return text if kept else canonicalize(unscaled, scale, form)


def _exceeds(unscaled: int, scale: int, bound: int) -> bool:
    """Whether `unscaled * 10**scale` is above `bound` (for a scale no bigger than a binary quantity's)."""
    return bool(unscaled * 10**scale > bound if scale >= 0 else unscaled > bound * 10**-scale)


def canonicalize(unscaled: int, scale: int, form: str) -> str:
    """`Quantity.CanonicalizeBytes` of the value `unscaled * 10**scale` in `form`."""
    if unscaled == 0:
        return "0"
    if form == "BinarySI":
        whole = unscaled * 10**scale if scale >= 0 else None
        if whole is None and unscaled % 10**-scale == 0:
            whole = unscaled // 10**-scale
        if whole is not None and abs(whole) >= 1024:
            times = 0
            while abs(whole) >= 1024 and whole % 1024 == 0:
                whole //= 1024
                times += 1
            return f"{whole}{_BINARY_BY_EXPONENT.get(times * 10, '')}"
        form = "DecimalSI"  # below 1024 in magnitude, or not whole: written as decimal
    while unscaled % 10 == 0:
        unscaled //= 10
        scale += 1
    shift = scale % 3
    unscaled *= 10**shift
    scale -= shift
    if form == "DecimalSI":
        return f"{unscaled}{_DECIMAL_BY_EXPONENT.get(scale, '')}"  # none past E, as in Go
    return f"{unscaled}e{scale}" if scale else str(unscaled)


_TIME = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})T(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2}):"
    r"(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]+))?(?:Z|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))"
)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


_ZERO_TIME = _days_from_civil(1, 1, 1) * 86400


@functools.lru_cache(maxsize=4096)
def timestamp(text: str, *, micro: bool) -> str | None:
    """`Time.MarshalJSON` (or `MicroTime`'s) of what `UnmarshalJSON` read from `text`, an RFC 3339 time that
    parses: UTC, to the second or to the microsecond (the fraction cut, not rounded); None for the zero time."""
    match = _TIME.fullmatch(text)
    if match is None:
        return text
    parts = {key: int(value) for key, value in match.groupdict().items() if value and key not in ("fraction", "sign")}
    offset = (parts.get("oh", 0) * 60 + parts.get("om", 0)) * 60 * (-1 if match["sign"] == "-" else 1)
    fraction = (match["fraction"] or "")[:9].ljust(9, "0")
    days = _days_from_civil(parts["year"], parts["month"], parts["day"])
    seconds = days * 86400 + parts["hour"] * 3600 + parts["minute"] * 60 + parts["second"] - offset
    if seconds == _ZERO_TIME and int(fraction) == 0:
        return None
    year, month, day = _civil_from_days(seconds // 86400)
    rest = seconds % 86400
    shown = f"-{-year:04d}" if year < 0 else f"{year:04d}"
    clock = f"{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return f"{shown}-{month:02d}-{day:02d}T{clock}{'.' + fraction[:6] if micro else ''}Z"


def base64_bytes(text: str) -> str:
    """A `[]byte` decoded from base64 `text` (that decodes) and encoded again."""
    return base64.b64encode(base64.b64decode(text.replace("\r", "").replace("\n", ""))).decode()


def byte_list(numbers: list[int]) -> str:
    """A `[]byte` decoded from a JSON array of numbers, encoded as base64."""
    return base64.b64encode(bytes(numbers)).decode()
