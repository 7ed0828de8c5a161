"""Unit tests of the one Retry-After reader the client and the token endpoint share."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict

from exporter.api.ratelimit import retry_after_delay

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7", 7.0), ("2.5", 2.5), (" 3 ", 3.0), ("0", 0.0)],
)
def test_seconds(value: str, seconds: float) -> None:
    assert retry_after_delay(CIMultiDict({"retry-after": value}), NOW) == seconds


def test_an_http_date_is_the_seconds_until_it_and_never_negative() -> None:
    later = format_datetime(datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    earlier = format_datetime(datetime(2024, 5, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert retry_after_delay(CIMultiDict({"Retry-After": later}), NOW) == 30.0
    assert retry_after_delay(CIMultiDict({"Retry-After": earlier}), NOW) == 0.0


@pytest.mark.parametrize("value", ["", "-1", "nan", "inf", "1e999", "soon", "Wed, 99 Foo"])
def test_what_is_neither_is_none(value: str) -> None:
    assert retry_after_delay(CIMultiDict({"Retry-After": value}), NOW) is None


def test_absent_is_none() -> None:
    assert retry_after_delay(CIMultiDict(), NOW) is None
