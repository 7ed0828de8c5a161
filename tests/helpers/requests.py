"""What the simulator was asked: its GET log parsed into the ids each `filter[id]` request named, by type."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.helpers.sim import Running


@dataclass
class RequestLog:
    """The simulator's API GETs from the moment `watch` was called."""

    buffer: io.StringIO = field(default_factory=io.StringIO)

    def lines(self) -> list[str]:
        return [line for line in self.buffer.getvalue().splitlines() if line]

    def asked_ids(self, collection: str, *, sparse: bool | None = None) -> Counter[int]:
        """How often each id was named in a `filter[id]` GET of `collection` (the path's last
        part); `sparse` True: only requests with an empty sparse fieldset (the delete scan's),
        False: only the others, None: all."""
        asked: Counter[int] = Counter()
        for line in self.lines():
            parts = urlsplit(line)
            if parts.path.rstrip("/").rsplit("/", 1)[-1] != collection:
                continue
            query = parse_qs(parts.query, keep_blank_values=True)
            if "filter[id]" not in query:
                continue
            empty_fields = any(k.startswith("fields[") and v == [""] for k, v in query.items())
            if sparse is not None and empty_fields != sparse:
                continue
            for value in query["filter[id]"][0].split(","):
                asked[int(value)] += 1
        return asked

    def clear(self) -> None:
        self.buffer.seek(0)
        self.buffer.truncate()


def watch(running: Running) -> RequestLog:
    """Start logging `running`'s API GETs (its `request_log`)."""
    log = RequestLog()
    running.sim.request_log = log.buffer
    return log
