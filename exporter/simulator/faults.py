"""The fault model: seeded dice that decide, per request, which misbehaviour (if any) a response gets."""

from __future__ import annotations

import functools
import random
import zlib
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from enum import Enum

from .config import Faults


class Replacement(Enum):
    """Responses that replace the real answer before the handler runs."""

    SERVER_ERROR = "500"
    UNAVAILABLE = "503"
    BIG_PAGE_502 = "502 big page"
    HTML_502 = "html 502"
    HTML_200 = "html 200"


class BodyFault(Enum):
    """Damage done to a real 200 answer on its way out."""

    RESET = "reset"  # headers and part of the body, then the connection is cut
    TRUNCATE = "truncate"  # a complete HTTP response whose JSON body stops short
    MALFORMED = "malformed"  # a complete HTTP response whose JSON body is corrupted


@dataclass(frozen=True)
class Decision:
    replacement: Replacement | None = None
    body_fault: BodyFault | None = None
    slow: bool = False
    lose_write: bool = False  # apply the write, then drop the connection before answering
    cut_at: float = 0.5  # where a reset, truncation or corruption happens, as a share of the body


HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n"
)


class FaultDice:
    """Draws decisions from the fault settings passed in (read at each request: tests change them)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"{seed}:faults")

    def decide(self, f: Faults, page_size: int | None, *, write: bool = False) -> Decision:
        """One decision per API request. Each rate is drawn only when it is set, in a fixed order.

        A replacement answers instead of the handler, so a replaced write is not applied.
        """
        rng = self.rng
        cut = rng.random()
        if (
            f.big_page_502_above is not None
            and page_size is not None
            and page_size > f.big_page_502_above
        ):
            return Decision(replacement=Replacement.BIG_PAGE_502)
        if f.error_rate > 0 and rng.random() < f.error_rate:
            return Decision(
                replacement=Replacement.SERVER_ERROR
                if rng.random() < 0.5
                else Replacement.UNAVAILABLE
            )
        if f.html_rate > 0 and rng.random() < f.html_rate:
            return Decision(
                replacement=Replacement.HTML_502 if rng.random() < 0.5 else Replacement.HTML_200
            )
        if write and f.lost_write_rate > 0 and rng.random() < f.lost_write_rate:
            return Decision(lose_write=True, cut_at=cut)
        body_fault = None
        if f.reset_rate > 0 and rng.random() < f.reset_rate:
            body_fault = BodyFault.RESET
        elif f.truncate_rate > 0 and rng.random() < f.truncate_rate:
            body_fault = BodyFault.TRUNCATE
        elif f.malformed_rate > 0 and rng.random() < f.malformed_rate:
            body_fault = BodyFault.MALFORMED
        slow = f.slow_body_s > 0 and rng.random() < f.slow_body_rate
        return Decision(body_fault=body_fault, slow=slow, cut_at=cut)


def truncated(body: bytes, cut_at: float) -> bytes:
    """A strict prefix of `body` (never empty when the body is not), so it cannot parse as JSON."""
    if len(body) < 2:
        return b""
    return body[: max(1, min(len(body) - 1, int(len(body) * cut_at)))]


def malformed(body: bytes, cut_at: float) -> bytes:
    """`body` with a raw control byte spliced in: invalid JSON inside or outside a string."""
    position = int(len(body) * cut_at)
    return body[:position] + b"\x01\xff" + body[position:]


def date_header(f: Faults, now: float) -> dict[str, str]:
    """The `Date` header a server whose clock is `f.date_skew_s` off sends; {} (aiohttp's own,
    correct one) when it is not set."""
    if not f.date_skew_s:
        return {}
    return {"Date": formatdate(now + f.date_skew_s, usegmt=True)}


# -- hostile answers: the token endpoint's faults and API answers that attack the client ------


class TokenFault(Enum):
    """What `POST /oauth/token` answers instead of (or before) the real exchange."""

    SERVER_ERROR = "500"  # an errors document, status 500; the exchange is not made
    UNAVAILABLE = "503"  # the same, status 503
    RATE_LIMITED = "429"  # a 429 with `Retry-After: HostileFaults.token_retry_after`
    REDIRECT = "307"  # a 307 to `HostileFaults.redirect_to` + "/oauth/token" (the form re-posted)
    ECHO_SECRETS = "echo"  # 400 `invalid_request` whose error and description quote the form
    SLOW = "slow"  # the real exchange, answered after `HostileFaults.token_slow_s`


@dataclass
class HostileFaults:
    """Faults the seeded dice do not draw: each is a count of the next requests it hits (set
    a large number for "every one"), so a test knows exactly which request gets what.

    Mutable at runtime as `sim.hostile`; the counts go down as the faults are served.
    """

    token: list[TokenFault] = field(default_factory=list)  # the next token requests, in order
    token_retry_after: float = 1.0
    token_slow_s: float = 5.0
    redirect_to: str = "http://127.0.0.2:9"  # root URL cross-origin redirects point at
    # API GETs (the ones that passed the auth and rate-limit gates):
    trickle: int = 0  # answered 200 with the real body, `trickle_bytes_per_s` bytes a second
    trickle_bytes_per_s: int = 20
    gzip_bomb: int = 0  # answered 200, `Content-Encoding: gzip`, inflating to `gzip_bomb_bytes`
    gzip_bomb_bytes: int = 1 << 30
    redirect_cross: int = 0  # 307 to the same path and query under `redirect_to`
    redirect_same: int = 0  # 307 to the very same URL (relative Location): one more hop
    echo_auth: int = 0  # `echo_auth_status` errors document whose id, title and detail quote
    echo_auth_status: int = 400  # the request's Authorization header (detail with CR/LF/ESC)
    # Writes (POST/PATCH) answered 422 whose error detail and id quote the Authorization header
    # (with CR/LF/ESC), not applied:
    echo_auth_write: int = 0
    served: Counter[str] = field(default_factory=Counter)  # faults served, by name

    def take(self, name: str) -> bool:
        """Whether the next request gets fault `name` (counting it down)."""
        left: int = getattr(self, name)
        if left <= 0:
            return False
        setattr(self, name, left - 1)
        self.served[name] += 1
        return True

    def next_token_fault(self) -> TokenFault | None:
        if not self.token:
            return None
        fault = self.token.pop(0)
        self.served[f"token {fault.value}"] += 1
        return fault


@functools.lru_cache(maxsize=4)
def gzip_bomb(inflated: int) -> bytes:
    """A gzip stream of `inflated` bytes: the start of a JSON document, then spaces (~1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(b'{"data":[')]
    block = b" " * (1 << 20)
    left = inflated - 9
    while left > 0:
        parts.append(compressor.compress(block[: min(left, len(block))]))
        left -= len(block)
    parts.append(compressor.flush())
    return b"".join(parts)
