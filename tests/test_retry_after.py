"""Parsing Retry-After: seconds, milliseconds, HTTP dates, garbage; always clamped."""

from __future__ import annotations

import email.utils

import pytest

from encharge_async._constants import RETRY_AFTER_MAX
from encharge_async._retry import parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "100000"}, RETRY_AFTER_MAX),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "oops", "retry-after": "2"}, 2.0),
        ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00"}, None),  # no zone: ambiguous
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_http_date_uses_the_wall_clock_by_default() -> None:
    import time

    value = parse_retry_after(
        {"retry-after": email.utils.formatdate(time.time() + 60, usegmt=True)}
    )
    assert value is not None
    assert 55 <= value <= 60
