"""Settings of an export: flags, then OUTREACH_* environment variables, then a TOML file, then defaults.

click resolves the first three in that order by itself (command line, `envvar`, `default_map`);
this module reads the TOML file's table (the option table's types, exporter/commands/options.py,
check each value before it reaches the `default_map`), parses the values click cannot (`--rate-limit N/SECONDS`), and holds the
resolved `ExportSettings`.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter.core.errors import UsageError
from exporter.core.files import read_small_file
from exporter.core.secrets import Secret

DEFAULT_BASE_URL = "https://api.outreach.io/api/v2"
MAX_PAGE_SIZE = 1000
# The collection an export crawls whole (its root); every other type it writes is reached from
# the root's records by the relationship walk. A backup does not record its root (`parameters()`
# leaves it out), so compaction assumes this one.
DEFAULT_ROOT_TYPE = "sequenceStep"
# `--resources`: the collections an export crawls whole, each as a root (`export.selection`).
DEFAULT_RESOURCES = "sequenceSteps"


@dataclass(frozen=True)
class RateLimit:
    requests: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.requests}/{self.seconds:g}"


MAX_RATE_REQUESTS = 1_000_000_000
MAX_RATE_SECONDS = 31 * 86_400.0
_RATE_LIMIT = re.compile(r"(\d{1,10})/(\d{1,10}(?:\.\d{1,9})?)")


# `--concurrency`: requests in flight at once. Adaptive by default (`api.inflight`): it starts at
# ADAPTIVE_START and moves between 1 and the ceiling (MAX_CONCURRENCY unless `auto:N` says).
MAX_CONCURRENCY = 64
ADAPTIVE_START = 8
AUTO = "auto"


@dataclass(frozen=True)
class Concurrency:
    """Requests in flight at once: pinned at `pinned`, or adaptive (`pinned` None) from
    `min(ADAPTIVE_START, ceiling)` between 1 and `ceiling`."""

    pinned: int | None = None
    ceiling: int = MAX_CONCURRENCY

    def __post_init__(self) -> None:
        if self.pinned is not None and not 1 <= self.pinned <= MAX_CONCURRENCY:
            raise ValueError(f"a pinned concurrency is 1 to {MAX_CONCURRENCY}")
        if not 1 <= self.ceiling <= MAX_CONCURRENCY:
            raise ValueError(f"an adaptive ceiling is 1 to {MAX_CONCURRENCY}")

    @property
    def adaptive(self) -> bool:
        return self.pinned is None

    @property
    def start(self) -> int:
        """The bound of the first requests."""
        return self.pinned if self.pinned is not None else min(ADAPTIVE_START, self.ceiling)

    @property
    def most(self) -> int:
        """The bound it can ever reach (what fetch workers and connections are sized for)."""
        return self.pinned if self.pinned is not None else self.ceiling

    def __str__(self) -> str:
        if self.pinned is not None:
            return str(self.pinned)
        return AUTO if self.ceiling == MAX_CONCURRENCY else f"{AUTO}:{self.ceiling}"


_CONCURRENCY = re.compile(r"(?:(auto)(?::(\d{1,3}))?|(\d{1,3}))")


def parse_concurrency(text: str) -> Concurrency:
    """`auto` (adaptive, up to 64), `auto:N` (adaptive, up to N) or `N` (pinned), 1 <= N <= 64."""
    match = _CONCURRENCY.fullmatch(text.strip().lower())
    parsed: Concurrency | None = None
    if match and match[3] is not None and 1 <= int(match[3]) <= MAX_CONCURRENCY:
        parsed = Concurrency(pinned=int(match[3]))
    elif match and match[1] is not None:
        ceiling = MAX_CONCURRENCY if match[2] is None else int(match[2])
        parsed = Concurrency(ceiling=ceiling) if 1 <= ceiling <= MAX_CONCURRENCY else None
    if parsed is None:
        raise ValueError(
            f"{text[:40]!r} is not auto, auto:N or N with 1 <= N <= {MAX_CONCURRENCY} "
            "(requests in flight: adaptive, adaptive up to N, or pinned at N)"
        )
    return parsed


def parse_rate_limit(text: str) -> RateLimit:
    """`N/SECONDS`, e.g. `10000/3600`: decimal digits only, finite and bounded."""
    match = _RATE_LIMIT.fullmatch(text.strip())
    parsed = RateLimit(int(match[1]), float(match[2])) if match else None
    if (
        parsed is None
        or not 1 <= parsed.requests <= MAX_RATE_REQUESTS
        or not 0 < parsed.seconds <= MAX_RATE_SECONDS
    ):
        raise ValueError(
            f"{text[:40]!r} is not N/SECONDS with 1 <= N <= {MAX_RATE_REQUESTS:,} and "
            f"0 < SECONDS <= {MAX_RATE_SECONDS:,.0f}, e.g. 10000/3600"
        )
    return parsed


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed request is asked again: at most `attempts` sends, waiting `backoff_base`
    seconds doubled after each failure (with jitter), never more than `backoff_max`.

    Without one (the default) an export uses the API client's own: 6 sends, 0.5 s to 30 s.
    Shorter waits are for tests and soaks against the simulator, longer ones for slow links:
    `ExportSettings(retry=...)` in a program, or OUTREACH_RETRY_BACKOFF=ATTEMPTS/BASE/MAX (e.g.
    `3/0.005/0.05`) for any export, one started as a subprocess too. Not a command-line option,
    and not recorded in the manifest: it changes no byte of the output."""

    attempts: int
    backoff_base: float
    backoff_max: float


RETRY_BACKOFF_VARIABLE = "OUTREACH_RETRY_BACKOFF"
_RETRY = re.compile(r"(\d{1,3})/(\d{1,5}(?:\.\d{1,9})?)/(\d{1,5}(?:\.\d{1,9})?)")


def parse_retry_policy(text: str) -> RetryPolicy:
    """`ATTEMPTS/BASE/MAX`, e.g. `3/0.005/0.05`: 1 to 100 sends, 0 < BASE <= MAX <= 3600 s."""
    match = _RETRY.fullmatch(text.strip())
    parsed = RetryPolicy(int(match[1]), float(match[2]), float(match[3])) if match else None
    if (
        parsed is None
        or not 1 <= parsed.attempts <= 100
        or not 0 < parsed.backoff_base <= parsed.backoff_max <= 3600
    ):
        raise ValueError(
            f"{text[:40]!r} is not ATTEMPTS/BASE/MAX with 1 <= ATTEMPTS <= 100 and "
            "0 < BASE <= MAX <= 3600 seconds, e.g. 3/0.005/0.05"
        )
    return parsed


def retry_policy_from_environment() -> RetryPolicy | None:
    """OUTREACH_RETRY_BACKOFF's policy, or None (the client's own) when it is unset or empty."""
    text = os.environ.get(RETRY_BACKOFF_VARIABLE, "")
    if not text:
        return None
    try:
        return parse_retry_policy(text)
    except ValueError as exc:
        raise UsageError(f"{RETRY_BACKOFF_VARIABLE}: {exc}") from None


def check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL, e.g. {DEFAULT_BASE_URL}")
    if parts.username or parts.password:
        raise ValueError("the base URL must not carry credentials; use --token or OAuth flags")
    return url.rstrip("/")


def token_url_for(base_url: str) -> str:
    """Outreach serves `/oauth/token` at the API host's root."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}/oauth/token"


def default_token_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "outreach-exporter" / "refresh-token.json"


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's content; a missing, unreadable or invalid file is one clear UsageError."""
    try:
        return tomllib.loads(read_small_file(path, what))
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what} {path} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise UsageError(f"{what} {path} is not usable TOML: nested too deeply") from None


def load_toml_table(path: Path) -> dict[str, Any]:
    """A config file's settings: its `[export]` table, or its top level when it has none.

    Beside an `[export]` table nothing else may stand: a key there would be silently ignored."""
    data = read_toml(path, "config file")
    if "export" not in data:
        return data
    table = data["export"]
    if not isinstance(table, dict):
        raise UsageError(f"config file {path}: export must be a table ([export])")
    others = sorted(k for k in data if k != "export")
    if others:
        raise UsageError(
            f"config file {path}: {', '.join(others)} stand(s) outside the [export] table; "
            "move every setting into [export] (or drop the [export] line)"
        )
    return table


@dataclass(frozen=True)
class ExportSettings:
    out: Path | str  # a directory, or a URI (s3://bucket/prefix, file://...)
    base_url: str = DEFAULT_BASE_URL
    token: Secret | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    refresh_token: Secret | None = None
    redirect_uri: str | None = None
    token_file: Path | None = None
    page_size: int = MAX_PAGE_SIZE
    # Requests in flight: adaptive by default; a whole number pins it (`in_flight` reads both).
    concurrency: Concurrency | int = field(default_factory=Concurrency)
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(10_000, 3600.0))
    restart: bool = False
    commit_interval: float = 30.0
    file_rows: int = 1_000_000
    file_bytes: int = 256 << 20
    incremental: bool = False
    overlap: float = 300.0  # seconds an incremental window reaches back past the last mark
    detect_deletes: bool = False
    relationships: str = "all"  # of the root type
    root_type: str = DEFAULT_ROOT_TYPE
    resources: str = DEFAULT_RESOURCES  # collections crawled whole: a comma list, or `all`
    max_url_length: int = 8000
    read_timeout: float = 120.0  # seconds an answer may go silent before the request is retried
    request_deadline: float = 300.0  # seconds from sending a request to its answer's last byte
    max_response_mib: int = 256  # MiB of one answer's body after decompression
    initial_partitions: int | None = None  # default: two per worker (tests set it to force splits)
    source: str | None = None  # what the run records as its source (default: the base URL)
    # None: the API client's own retries; OUTREACH_RETRY_BACKOFF sets them (see RetryPolicy)
    retry: RetryPolicy | None = field(default_factory=retry_policy_from_environment)

    @property
    def in_flight(self) -> Concurrency:
        """`concurrency` as a `Concurrency` (a whole number pins it)."""
        c = self.concurrency
        return c if isinstance(c, Concurrency) else Concurrency(pinned=c)

    @property
    def oauth(self) -> bool:
        """OAuth credentials: a refresh token given, or a client id without a static token
        (a later run, whose refresh token is the rotated one saved in `token_file`)."""
        return self.refresh_token is not None or (self.client_id is not None and self.token is None)

    def parameters(self) -> dict[str, Any]:
        """What the manifest and checkpoint record: no secret, no credential (`resources` only
        when it is not the default, so a default run records what it always has)."""
        selection = {} if self.resources == DEFAULT_RESOURCES else {"resources": self.resources}
        return {
            "page_size": self.page_size,
            # A pinned bound as the number it always was; adaptive as `auto` (or `auto:N`).
            "concurrency": self.in_flight.pinned or str(self.in_flight),
            "rate_limit": str(self.rate_limit),
            "auth": "oauth" if self.oauth else "token",
            "commit_interval": self.commit_interval,
            "file_rows": self.file_rows,
            "file_bytes": self.file_bytes,
            "relationships": self.relationships,
            "incremental": self.incremental,
            "overlap": self.overlap,
            "detect_deletes": self.detect_deletes,
            **selection,
        }
