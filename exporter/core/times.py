"""Times as the exporter writes and reads them: ISO 8601 text in UTC (`Z`), epoch seconds, epoch microseconds.

Two spellings are written, on purpose:
- `iso` (and `utc_now`): milliseconds, for what the exporter stamps itself (run times, windows,
  the checkpoint and the manifest); these texts also sort as the times they name.
- `iso_exact`: every digit a datetime holds (microseconds), for values read from the data (a
  column's newest `updatedAt`), so nothing the API sent is rounded away.
Both end in `Z`. Reading accepts any ISO 8601 text with an offset or `Z`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_now() -> str:
    """Now, as `iso` writes it."""
    return iso(time.time())


def iso(seconds: float) -> str:
    """Epoch seconds as ISO text to the millisecond: `2024-05-01T12:00:00.123Z`."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def iso_exact(value: datetime) -> str:
    """A datetime as ISO text in UTC with all its digits (a naive one is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_exact_or_none(value: datetime | None) -> str | None:
    return None if value is None else iso_exact(value)


def epoch(text: str) -> float:
    """ISO text (`Z` or an offset) as epoch seconds; ValueError when it is not one."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def epoch_or_none(value: object) -> float | None:
    """`epoch` of a value an API sent, None when it is not an ISO time text."""
    if not isinstance(value, str):
        return None
    try:
        return epoch(value)
    except ValueError:
        return None


def micros(text: str) -> int:
    """ISO text as epoch microseconds (the unit of the Arrow timestamp columns)."""
    return int(epoch(text) * 1_000_000)
