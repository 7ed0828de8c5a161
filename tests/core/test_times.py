"""Unit tests of the time texts: which spelling each helper writes, and what reading accepts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.core.times import (
    epoch,
    epoch_or_none,
    iso,
    iso_exact,
    iso_exact_or_none,
    micros,
    utc_now,
)


def test_iso_writes_milliseconds_and_z() -> None:
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1714564800.123456) == "2024-05-01T12:00:00.123Z"


def test_utc_now_is_iso_of_now() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    text = utc_now()
    after = datetime.now(UTC)
    assert len(text) == len("2024-05-01T12:00:00.123Z") and text.endswith("Z")
    assert before <= datetime.fromisoformat(text.replace("Z", "+00:00")) <= after


def test_iso_exact_keeps_every_digit_and_says_utc() -> None:
    aware = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert iso_exact(aware) == "2024-05-01T12:00:00.123456Z"
    assert iso_exact(datetime(2024, 5, 1, 12)) == "2024-05-01T12:00:00Z"  # naive: UTC
    paris = datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2)))
    assert iso_exact(paris) == "2024-05-01T12:00:00Z"
    assert iso_exact_or_none(None) is None
    assert iso_exact_or_none(aware) == iso_exact(aware)


def test_reading_accepts_z_and_offsets() -> None:
    assert epoch("1970-01-01T00:00:01Z") == 1.0
    assert epoch("1970-01-01T02:00:01+02:00") == 1.0
    assert micros("1970-01-01T00:00:01.5Z") == 1_500_000
    with pytest.raises(ValueError, match="Invalid isoformat string: 'yesterday'"):
        epoch("yesterday")


@pytest.mark.parametrize("value", [None, 17, "", "not a time", date(2024, 5, 1)])
def test_epoch_or_none_is_none_for_what_is_not_a_time_text(value: object) -> None:
    assert epoch_or_none(value) is None


@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_iso_and_micros_round_trip_at_the_millisecond(millis: int) -> None:
    # Within a microsecond: `micros` goes through float seconds (and truncates), as it always did.
    assert abs(micros(iso(millis / 1000)) - millis * 1000) <= 1
