"""The error taxonomy: every expected failure is one of these, with a message that says what to do.

Three families, and one function (`classify_status`) that sorts an HTTP answer into them:
- `UsageError`: the user's own input (a flag, a config file, an output directory). Exit 2.
- `RetriableError`: a passing fault (5xx, timeout, reset, truncated body). The client retries it;
  only after the last attempt does it become an `ApiError`.
- `ApiError` / `AuthError` / `ResponseError` / `OutputError`: fatal for this run; the checkpoint
  stays intact and the next run resumes.

Messages never contain a secret, and never more than one line: URLs are passed through
`redact_url` before they are quoted, and `ApiError`/`RetriableError` pass everything they are
given (message, error id, URL) through `clean_text`, which replaces every secret this process
knows (`remember_secret`: the token sources register each token they hold or receive) by `***`,
every control character (CR, LF, ESC, ...) by a space, and shortens what is too long. So text an
API sent (an error document's id, title or detail, OAuth's `error` and `error_description`)
cannot leak an echoed token nor forge a log line, wherever it is quoted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from enum import IntEnum
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


class ExitCode(IntEnum):
    """Documented process exit codes (README, "Exit codes")."""

    OK = 0
    FAILED = (
        1  # an API or data error stopped the run; the checkpoint is intact, run again to resume
    )
    USAGE = 2  # bad flag, config or environment value
    AUTH = 3  # credentials refused (401/403 after a refresh)
    OUTPUT = 4  # the backup's storage: unwritable, full, unreadable, or a committed file damaged
    UNREACHABLE = 5  # base URL unreachable
    VERIFY_MISMATCH = 6  # `verify` found a difference
    BUSY = 7  # another run is writing the same backup
    # `export --resources`: the run finished, but the token lacks the scope of some collections
    # (403 unauthorizedOauthScope); the others are exported, the manifest's `refused` lists them
    SCOPES_REFUSED = 8
    INTERRUPTED = 130  # SIGINT/SIGTERM: stopped cleanly after committing; run again to resume


class ExporterError(Exception):
    """Base of every expected failure; `str()` is the one line shown to the user."""

    exit_code: ExitCode = ExitCode.FAILED


class UsageError(ExporterError):
    exit_code = ExitCode.USAGE


class OutputError(ExporterError):
    exit_code = ExitCode.OUTPUT


class UnreachableError(ExporterError):
    exit_code = ExitCode.UNREACHABLE


class BusyError(ExporterError):
    """Another run is writing the same backup (or restore journal)."""

    exit_code = ExitCode.BUSY


# Every secret this process has held (tokens, the client secret, refresh tokens), so that any
# message built from server text can be scrubbed without being handed the token source.
_KNOWN_SECRETS: set[str] = set()
# The longest piece of server text quoted in one message, and the longest message.
LONGEST_QUOTE = 300
LONGEST_MESSAGE = 1000
_SPACES = re.compile(" {2,}")


def remember_secret(secret: str) -> None:
    """Register a secret: from now on no `ApiError` or `RetriableError` message shows it."""
    if secret:
        _KNOWN_SECRETS.add(secret)


def one_line(text: str, limit: int = LONGEST_QUOTE) -> str:
    """`text` on one printable line of at most about `limit` characters: control and format
    characters (CR, LF, ESC, bidi overrides, line separators) become spaces, runs of spaces one."""
    if not text.isprintable():
        text = "".join(
            ch if ch.isprintable() and unicodedata.category(ch) != "Cf" else " " for ch in text
        )
    text = _SPACES.sub(" ", text)
    if len(text) > limit:
        text = f"{text[:limit]}...({len(text) - limit} more characters)"
    return text


def clean_text(text: str, limit: int = LONGEST_QUOTE, secrets: Iterable[str] = ()) -> str:
    """Text from outside (an API's error text, a message quoting it) made safe to show:
    every known secret (and `secrets`) replaced by `***`, then `one_line`."""
    return one_line(scrub(text, [*_KNOWN_SECRETS, *secrets]), limit)


class ApiError(ExporterError):
    """The API answered with an error we do not retry (or ran out of retries).

    Everything given is cleaned (`clean_text`): the message and the error id may quote the API.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str = "",
        status: int | None = None,
        error_id: str | None = None,
        hint: str = "",
    ) -> None:
        message = clean_text(message, LONGEST_MESSAGE)
        error_id = clean_text(error_id, 100) if error_id is not None else None
        parts = [message]
        if status is not None:
            parts.append(f"status {status}")
        if error_id:
            parts.append(f"error id {error_id!r}")
        if url:
            parts.append(f"url {clean_text(shown_url(url), LONGEST_QUOTE)}")
        if hint:
            parts.append(clean_text(hint, LONGEST_QUOTE))
        super().__init__("; ".join(parts))
        self.message = message
        self.url = clean_text(redact_url(url), 2000) if url else ""
        self.status = status
        self.error_id = error_id


class AuthError(ApiError):
    exit_code = ExitCode.AUTH


class ResponseError(ApiError):
    """The API answered 200 with something we must not accept (wrong type, unsafe id, hostile link)."""


class RetriableError(Exception):
    """A passing fault; the client retries. Not an ExporterError: it never reaches the user as is."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(clean_text(message, LONGEST_MESSAGE))
        self.status = status
        self.error_id = clean_text(error_id, 100) if error_id is not None else None
        self.retry_after = retry_after


class Interrupted(ExporterError):
    exit_code = ExitCode.INTERRUPTED


# Query parameters whose values must never be printed.
_SECRET_PARAMS = frozenset(
    {"access_token", "token", "refresh_token", "client_secret", "code", "password", "api_key"}
)


def redact_url(url: str) -> str:
    """The URL without userinfo and with secret-looking query values replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="[],."
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def shown_url(url: str, longest_value: int = 60) -> str:
    """`redact_url`, with long query values (a batch's `filter[id]=1,2,...`) shortened, so an
    error about an 8,000-character URL still fits on one readable line."""
    shown = redact_url(url)
    base, sep, query = shown.partition("?")
    if not sep:
        return shown
    pairs = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if len(value) > longest_value:
            value = f"{value[:longest_value]}...({len(value) - longest_value} more characters)"
        pairs.append(key + eq + value)
    return base + "?" + "&".join(pairs)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of any of `secrets` replaced by `***`."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class StatusClass(IntEnum):
    OK = 0
    RETRY = 1  # back off and retry the same request
    RATE_LIMITED = 2  # wait for the window to reset, then retry
    SMALLER_PAGE = 3  # 502 on a big page: retry with a smaller page[size]
    REFRESH = 4  # 401: refresh the token once, then retry
    FATAL = 5


def classify_status(status: int, page_size: int | None = None) -> StatusClass:
    """The one place that decides what an HTTP status means for the client."""
    if 200 <= status < 300:
        return StatusClass.OK
    if status == 429:
        return StatusClass.RATE_LIMITED
    if status == 401:
        return StatusClass.REFRESH
    if status == 502 and page_size is not None and page_size > 1:
        return StatusClass.SMALLER_PAGE
    if status in (408, 425) or status >= 500:
        return StatusClass.RETRY
    return StatusClass.FATAL


def error_details(document: Any) -> tuple[str | None, str | None]:
    """(error id, detail) from a JSON:API errors document; tolerates the `details` spelling."""
    if not isinstance(document, dict):
        return None, None
    errors = document.get("errors")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, None
    first = errors[0]
    error_id = first.get("id")
    detail = first.get("detail", first.get("details", first.get("title")))
    return (
        str(error_id) if error_id is not None else None,
        str(detail) if detail is not None else None,
    )
