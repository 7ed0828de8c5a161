"""Simulator settings: data sizes and ratios, auth and rate-limit knobs, and the runtime-mutable fault model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Faults:
    """Misbehaviour injected into responses; mutable at runtime (`sim.faults.error_rate = 0.2`).

    Rates are probabilities per request in [0, 1], drawn from a seeded RNG so a run is reproducible.
    """

    latency_s: float = 0.0  # fixed delay before every API response
    latency_per_record_s: float = 0.0  # extra delay per record on a page
    error_rate: float = 0.0  # share of API requests answered 500 or 503 (errors document)
    big_page_502_above: int | None = None  # page[size] above this answers 502
    reset_rate: float = 0.0  # share of responses whose connection is reset mid-body
    truncate_rate: float = 0.0  # share of 200 responses whose JSON body is cut short
    malformed_rate: float = 0.0  # share of 200 responses whose JSON body is corrupted
    html_rate: float = 0.0  # share of requests answered with an HTML error page (502 or 200)
    slow_body_s: float = 0.0  # when > 0, bodies are trickled in chunks over this many seconds
    slow_body_rate: float = 1.0  # share of responses trickled when slow_body_s > 0
    mutation_rate: float = 0.0  # background inserts/updates/deletes per second while serving
    # Share of writes (POST/PATCH) applied and then answered by a dropped connection, no bytes
    # sent: the client cannot tell whether its write happened.
    lost_write_rate: float = 0.0
    seed: int | None = None  # fault RNG seed; None = the data seed
    # Seconds added to the clock in every API answer's Date header: a server clock that is wrong.
    date_skew_s: float = 0.0
    # Relationship filters the API handles unlike the documented one, "type.relationship" ->
    # "refuse" (400 naming it) or "ignore" (answered as if absent), e.g.
    # {"sequenceTemplate.sequenceStep": "refuse"}; see `query.parse_query`'s refused/ignored.
    relation_filters: dict[str, str] = field(default_factory=dict)

    def relation_policy(self, type_name: str) -> tuple[list[str], list[str]]:
        """(refused, ignored) relationship filters of `type_name`, for `parse_query`."""
        chosen = {
            key.partition(".")[2]: how
            for key, how in self.relation_filters.items()
            if key.partition(".")[0] == type_name
        }
        return (
            [name for name, how in chosen.items() if how == "refuse"],
            [name for name, how in chosen.items() if how == "ignore"],
        )


@dataclass
class SimulatorConfig:
    """Everything a `Simulator` is built from. Sizes follow `steps` through the ratios below."""

    steps: int = 1000
    seed: int = 0
    # Related record counts, relative to the number of sequence steps.
    sequences_per_step: float = 1 / 6
    users_per_step: float = 1 / 200
    min_users: int = 3
    call_purposes: int = 8
    task_priorities: int = 3
    templates_per_email_step: float = 0.6
    mailings_per_email_step: float = 2.0
    calls_per_call_step: float = 1.0
    tasks_per_step: float = 1.0
    # The rest of the account: every other readable collection of the OpenAPI file (prospects,
    # accounts, sequence states, events, ...), sized per `account.SIZES` for this many
    # prospects. 0 (the default) leaves them out: the nine step-world types only, as before.
    prospects: int = 0
    # Exact record counts of types beyond the step world, overriding `account.SIZES`; naming
    # one brings the rest of the account in (at 1,000 prospects unless `prospects` says).
    sizes: dict[str, int] = field(default_factory=dict)
    # Paging.
    page_max: int = 1000
    page_default: int = 50
    # Auth.
    token_ttl: float = 7200.0
    mint_interval: float = 60.0
    # The simulator's well-known test credentials: not secrets.
    static_token: str | None = "sim-token"  # noqa: S105
    client_id: str = "sim-client"
    client_secret: str = "sim-secret"  # noqa: S105
    refresh_token: str = "sim-refresh-0"  # noqa: S105
    redirect_uri: str = "http://127.0.0.1/callback"
    # The account the simulator stands for, as its API root states it (`GET /api/v2`); None:
    # derived from the seed, so two simulators with one seed serve one account.
    org_guid: str | None = None
    # The token's read scopes, `<collection>.read`: None grants every served collection's but
    # `denied_scopes`. A collection whose scope is not granted answers 403 unauthorizedOauthScope;
    # OAuth tokens minted here carry the granted ones as their `scope`.
    scope: str | None = None
    denied_scopes: frozenset[str] = frozenset()
    # Rate limit: a fixed window of `rate_window` seconds allowing `rate_limit` API requests.
    rate_limit: int = 10_000
    rate_window: float = 3600.0
    retry_after: bool = False
    # Bytes of serialized records kept in memory (first in, first out beyond this).
    record_cache_bytes: int = 512 * 1024 * 1024
    # Text attributes in plain words (the demo: readable in a terminal and a SQL shell) instead
    # of the hostile mix every test gets (scripts, emoji, tabs, line breaks, control characters).
    readable_text: bool = False
    # Every member JSON:API allows that the default world leaves out, none of which changes a
    # record's data: records carry `links.self` and `meta`, to-many relationships `links`
    # beside their `data`, pages `meta`, and a response that could include records an empty
    # `included`. Off by default (the default world's bytes are unchanged).
    wire_extras: bool = False
    faults: Faults = field(default_factory=Faults)
    clock: Callable[[], float] = time.time

    @property
    def account_world(self) -> bool:
        """Whether the types beyond the step world are simulated."""
        return self.prospects > 0 or bool(self.sizes)
