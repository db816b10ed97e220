"""How often a misbehaving stream may write the same warning: once every ten seconds, by default."""

from __future__ import annotations

from discovery.connection import LogThrottle


def test_a_repeated_warning_is_let_through_again_after_ten_seconds() -> None:
    now = [1000.0]
    throttle = LogThrottle(clock=lambda: now[0])
    assert throttle.allow("nack lds") == 0
    now[0] += 9.999
    assert throttle.allow("nack lds") is None
    now[0] = 1010.0
    assert throttle.allow("nack lds") == 1  # the line, saying one was held back
