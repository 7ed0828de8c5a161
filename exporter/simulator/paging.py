"""Keyset cursors: the opaque base64 `page[after]` token and its encoding of the last record's sort key."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

# Values a sort key may hold once normalized: epoch seconds for date-times, strings, numbers, bools.
KeyValue = int | float | str | bool | None


class CursorError(ValueError):
    """A `page[after]` token that is not one of ours, or was issued for another sort order."""


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: the sort order it was issued for and the last record's key."""

    sort: tuple[str, ...]  # e.g. ("-updatedAt", "-id")
    key: tuple[KeyValue, ...]  # the last record's value for each sort key, in order


def encode_cursor(cursor: Cursor) -> str:
    """URL-safe base64 without padding, so the token needs no escaping inside a query string."""
    raw = orjson.dumps({"s": list(cursor.sort), "k": list(cursor.key)})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _valid_value(value: Any) -> bool:
    return value is None or isinstance(value, int | float | str | bool)


def decode_cursor(token: str, sort: tuple[str, ...]) -> Cursor:
    """The cursor inside `token`; CursorError when it is malformed or belongs to another sort."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        loaded = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as error:
        raise CursorError("page[after] is not a valid cursor") from error
    if not isinstance(loaded, dict):
        raise CursorError("page[after] is not a valid cursor")
    spec = loaded.get("s")
    key = loaded.get("k")
    if not isinstance(spec, list) or not isinstance(key, list) or len(spec) != len(key):
        raise CursorError("page[after] is not a valid cursor")
    if tuple(spec) != sort:
        raise CursorError("page[after] was issued for a different sort order")
    if not all(_valid_value(value) for value in key):
        raise CursorError("page[after] is not a valid cursor")
    return Cursor(sort=tuple(str(s) for s in spec), key=tuple(key))


def compare_keys(
    a: tuple[KeyValue, ...], b: tuple[KeyValue, ...], descending: tuple[bool, ...]
) -> int:
    """-1, 0 or 1: whether key `a` comes before, with or after `b` in the sort order (nulls first)."""
    for x, y, desc in zip(a, b, descending, strict=True):
        if x == y:
            continue
        if x is None:
            result = -1
        elif y is None:
            result = 1
        else:
            result = -1 if x < y else 1  # type: ignore[operator]
        return -result if desc else result
    return 0
