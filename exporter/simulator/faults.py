"""The fault model: seeded dice that decide, per request, which misbehaviour (if any) a response gets."""

from __future__ import annotations

import random
from dataclasses import dataclass
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
