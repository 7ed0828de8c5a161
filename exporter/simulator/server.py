"""The Simulator object (data, state, counters) and the ways to serve it: in this loop or in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from aiohttp import web

from exporter.model.schema import readable_types, resource_type

from .account import populate
from .app import build_app
from .auth import TokenAuthority
from .config import Faults, SimulatorConfig
from .data import generate
from .faults import FaultDice, HostileFaults
from .listing import Lister
from .ratelimit import FixedWindow
from .store import RecordId, Store
from .writes import WritePolicy


@dataclass
class Counters:
    """What the server has seen, for tests to assert on."""

    requests: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    tokens_minted: int = 0
    writes_applied: int = 0  # POST/PATCH requests that changed the store (lost ones included)
    writes_lost: int = 0  # writes applied whose answer was dropped (Faults.lost_write_rate)

    def count_request(self, route: str) -> None:
        self.requests += 1
        self.by_route[route] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def finish_request(self) -> None:
        self.in_flight -= 1


class Truth:
    """The records as the API would serve them right now, read without going through HTTP."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def types(self) -> list[str]:
        """The simulated types: the step world's nine, or every readable one (in that order)."""
        return [name for name in readable_types() if name in self._store.tables]

    def records(self, type_name: str) -> Iterator[dict[str, Any]]:
        """Current resource objects of a type, exactly as served (full fieldset), ascending id."""
        return self._store.records(type_name)

    def get(self, type_name: str, record_id: RecordId) -> dict[str, Any] | None:
        return self._store.get(type_name, self._store.record_id(type_name, record_id))

    def ids(self, type_name: str) -> list[RecordId]:
        """Ids of the records that exist now, ascending, as served (auditLog's are UUIDs)."""
        return self._store.wire_ids(type_name, self._store.ids(type_name))

    def deleted_ids(self, type_name: str) -> set[RecordId]:
        """Ids of the records deleted since the simulator was built (inserted ones included)."""
        return set(self._store.wire_ids(type_name, sorted(self._store.deleted_ids(type_name))))

    def count(self, type_name: str) -> int:
        return len(self._store.ids(type_name))


class Simulator:
    """An Outreach API v2 look-alike over deterministic data. Use it from the loop that serves it."""

    def __init__(self, cfg: SimulatorConfig | None = None) -> None:
        self.cfg = cfg = cfg if cfg is not None else SimulatorConfig()
        self.faults: Faults = cfg.faults
        tables = generate(cfg)
        if cfg.account_world:
            populate(tables, cfg)
        self.store = Store(
            tables,
            clock=cfg.clock,
            seed=cfg.seed,
            cache_bytes=cfg.record_cache_bytes,
            wire_extras=cfg.wire_extras,
        )
        # In the OpenAPI file's order: the step world's nine first, as the token always said.
        served = [resource_type(n).read_scope for n in readable_types() if n in tables]
        granted = cfg.scope.split() if cfg.scope is not None else served
        denied = {s if s.endswith(".read") else s + ".read" for s in cfg.denied_scopes}
        # The read scopes the token has: a collection outside them answers 403.
        self.granted_scopes = frozenset(granted) - denied
        scope = " ".join(s for s in granted if s not in denied)
        self.truth = Truth(self.store)
        self.lister = Lister(self.store)
        self.auth = TokenAuthority(
            clock=cfg.clock,
            ttl=cfg.token_ttl,
            mint_interval=cfg.mint_interval,
            static_token=cfg.static_token,
            client_id=cfg.client_id,
            client_secret=cfg.client_secret,
            redirect_uri=cfg.redirect_uri,
            refresh_token=cfg.refresh_token,
            scope=scope,
        )
        self.rate = FixedWindow(cfg.rate_limit, cfg.rate_window, cfg.clock)
        fault_seed = cfg.faults.seed if cfg.faults.seed is not None else cfg.seed
        self.dice = FaultDice(fault_seed)
        # The faults the dice do not draw (counted down as served) and how writes behave;
        # both mutable at runtime, like `faults`.
        self.hostile = HostileFaults()
        self.write_policy = WritePolicy()
        self.counters = Counters()
        # Every API GET's path and query, one a line (`simulate --request-log FILE`).
        self.request_log: TextIO | None = None
        self.base_url = self.store.base_url

    def mutate(self, count: int) -> None:
        """Apply `count` random inserts, updates and deletes across every type, now."""
        self.store.mutate(count)

    def app(self) -> web.Application:
        return build_app(self)

    def set_base_url(self, base_url: str) -> None:
        """The API base (`http://host:port/api/v2`) used in absolute links; `serve` sets it."""
        self.base_url = base_url
        self.store.set_base_url(base_url)


@asynccontextmanager
async def serve(sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `sim` on the running loop; yields the root URL (`http://host:port`), API under `/api/v2`."""
    runner = web.AppRunner(
        sim.app(),
        access_log=None,
        handle_signals=False,
        max_line_size=131_072,
        max_field_size=65_536,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        root = f"http://{shown}:{bound_port}"
        sim.set_base_url(root + "/api/v2")
        yield root
    finally:
        await runner.cleanup()


@contextmanager
def serve_in_thread(sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `sim` from a daemon thread with its own loop; yields the root URL.

    The simulator then belongs to that thread: do not mutate it or read `truth` while requests run.
    """
    started = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = stop
        try:
            async with serve(sim, host, port) as root:
                state["root"] = root
                started.set()
                await stop.wait()
        except BaseException as error:
            state["error"] = error
            started.set()
            raise

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as error:  # noqa: BLE001 - reported to the caller below
            state.setdefault("error", error)
            started.set()

    thread = threading.Thread(target=run, name="outreach-simulator", daemon=True)
    thread.start()
    started.wait()
    if "error" in state:
        thread.join()
        raise RuntimeError("the simulator did not start") from state["error"]
    try:
        yield str(state["root"])
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join()
