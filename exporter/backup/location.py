"""Whether a text can name a backup's location (a directory or a URI), checked without opening it or importing a filesystem (the option table checks --out with it)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit


def check_location(text: str) -> None:
    """A directory or a URI to write a backup to: never empty (that would be the current
    directory), no control characters, a URI that parses, a `~user` that exists, and not
    pyarrow's `mock://` filesystem (memory: the backup would vanish with the process).
    ValueError says what is wrong."""
    if not text.strip():
        raise ValueError("an empty location; give a directory or a URI (s3://bucket/prefix)")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("a location with control characters (a newline?) is refused")
    try:
        scheme = urlsplit(text).scheme.lower()
    except ValueError as exc:
        raise ValueError(f"not a path or a URI that parses ({exc})") from None
    if scheme == "mock":
        raise ValueError("mock:// keeps files in memory only; give a directory or a URI")
    if text.startswith("~"):
        try:
            Path(text).expanduser()
        except RuntimeError:
            raise ValueError(f"{text[:60]!r}: no such user's home directory") from None
