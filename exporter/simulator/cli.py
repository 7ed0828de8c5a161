"""The `exporter simulate` command: flags to a SimulatorConfig, then serve until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from exporter.core.bounds import DAY, BoundedInt, FiniteFloat

from .account import account_types
from .config import Faults, SimulatorConfig
from .faults import HostileFaults, TokenFault

if TYPE_CHECKING:
    from .server import Simulator

# Every number is finite and bounded (`nan`, `inf`, `1e20` refused): a simulator told to
# generate 1e20 steps or to wait inf seconds would only hang or crash later, far from the flag.
_RATE = FiniteFloat(0.0, 1.0)
_SECONDS = FiniteFloat(0.0, 3600.0)  # a delay on one response
_RATIO = FiniteFloat(0.0, 1000.0)  # records of one type per step
_COUNT = BoundedInt(1, 1_000_000)
_SEED = BoundedInt(-(2**63), 2**63 - 1)
_HITS = BoundedInt(0, 1_000_000_000)  # how many of the next requests a hostile fault hits

F = Callable[..., Any]


def _share(flag: str, help: str, default: float = 0.0) -> Callable[[F], F]:
    """A share of requests (0 to 1) a fault hits."""
    return click.option(flag, type=_RATE, default=default, help=help)


def _seconds(flag: str, help: str, default: float = 0.0) -> Callable[[F], F]:
    """Seconds a fault holds one answer back."""
    return click.option(flag, type=_SECONDS, default=default, help=help)


def _next_requests(flag: str, what: str) -> Callable[[F], F]:
    """A hostile fault that hits the next N requests (none by default)."""
    return click.option(flag, type=_HITS, default=0, help=f"The next N {what}")


class TokenFaultsType(click.ParamType[tuple[TokenFault, ...]]):
    """A comma list of token-endpoint faults, served in order: 500,503,429,307,echo,slow."""

    name = "FAULT,..."

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[TokenFault, ...]:
        if isinstance(value, tuple):
            return value
        names = {fault.value: fault for fault in TokenFault}
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        unknown = [p for p in parts if p not in names]
        if unknown or len(parts) > 10_000:
            self.fail(f"{str(value)[:60]!r} is not a comma list of {', '.join(names)}", param, ctx)
        return tuple(names[p] for p in parts)


class TypeSizeType(click.ParamType[tuple[str, int]]):
    """`TYPE=N`: how many records of a type beyond the step world (`--size stage=5`)."""

    name = "TYPE=N"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        if isinstance(value, tuple):
            return (str(value[0]), int(value[1]))
        name, equals, count = str(value).partition("=")
        known = account_types()
        if not equals or name not in known:
            self.fail(
                f"{str(value)[:60]!r} is not TYPE=N with TYPE one of {', '.join(sorted(known))}"
            )
        if not count.isdigit() or int(count) > 100_000_000:
            self.fail(f"{str(value)[:60]!r}: N must be a whole number up to 100,000,000")
        return (name, int(count))


class RateLimitType(click.ParamType[tuple[int, float]]):
    """`N/SECONDS`, e.g. `10000/3600` or `20/2.0`."""

    name = "N/SECONDS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, float]:
        if isinstance(value, tuple):
            return (int(value[0]), float(value[1]))
        limit_text, slash, window_text = str(value).partition("/")
        try:
            limit, window = int(limit_text), float(window_text)
            if not math.isfinite(window):
                raise ValueError(window_text)
        except ValueError:
            self.fail(f"{value!r} is not N/SECONDS (e.g. 10000/3600)", param, ctx)
        if not slash or not 1 <= limit <= 10**9 or not (0 < window <= 31 * DAY):
            self.fail(f"{value!r} needs N >= 1 and SECONDS > 0 (e.g. 10000/3600)", param, ctx)
        return (limit, window)


@click.command(context_settings={"show_default": True})
@click.option("--host", default="127.0.0.1", help="Address to listen on (keep it loopback).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, help="Port; 0 picks a free one."
)
@click.option(
    "--steps", type=BoundedInt(1, 100_000_000), default=1000, help="Number of sequence steps."
)
@click.option("--seed", type=_SEED, default=0, help="Seed of all generated data.")
@click.option(
    "--org-guid",
    default=None,
    help="The account's id, as the API root states it (default: sim-org-<seed>).",
)
@click.option(
    "--sequences-per-step",
    type=_RATIO,
    default=1 / 6,
    show_default="1/6",
    help="Sequences per step.",
)
@click.option("--users-per-step", type=_RATIO, default=1 / 200, help="Users per step.")
@click.option("--min-users", type=_COUNT, default=3, help="At least this many users.")
@click.option("--call-purposes", type=_COUNT, default=8, help="Call purposes.")
@click.option("--task-priorities", type=_COUNT, default=3, help="Task priorities.")
@click.option(
    "--templates-per-email-step",
    type=_RATIO,
    default=0.6,
    help="Sequence templates per email step.",
)
@click.option(
    "--mailings-per-email-step", type=_RATIO, default=2.0, help="Mailings per email step."
)
@click.option("--calls-per-call-step", type=_RATIO, default=1.0, help="Calls per call step.")
@click.option("--tasks-per-step", type=_RATIO, default=1.0, help="Tasks per step.")
@click.option(
    "--prospects",
    type=BoundedInt(0, 10_000_000),
    default=0,
    help="Simulate the whole account (every readable collection) sized for this many "
    "prospects; 0: the step world's nine types only.",
)
@click.option(
    "--size",
    "sizes",
    type=TypeSizeType(),
    multiple=True,
    help="Records of one type beyond the step world, e.g. stage=5 (repeatable; brings the "
    "whole account in, at 1,000 prospects unless --prospects says).",
)
@click.option(
    "--deny-scope",
    "denied_scopes",
    multiple=True,
    help="A read scope the token lacks, e.g. prospects.read (repeatable): that collection "
    "answers 403 unauthorizedOauthScope.",
)
@click.option("--page-max", type=BoundedInt(1, 1_000_000), default=1000, help="Largest page[size].")
@click.option(
    "--token", default="sim-token", help="Static bearer token that never expires ('' = none)."
)
@click.option(
    "--token-ttl",
    type=FiniteFloat(0.0, 366 * DAY, min_open=True),
    default=7200.0,
    help="Seconds an OAuth access token lives.",
)
@click.option(
    "--mint-interval", type=FiniteFloat(0.0, DAY), default=60.0, help="Seconds between token mints."
)
@click.option("--client-id", default="sim-client", help="OAuth client_id.")
@click.option("--client-secret", default="sim-secret", help="OAuth client_secret.")
@click.option("--refresh-token", default="sim-refresh-0", help="The first valid refresh token.")
@click.option("--redirect-uri", default="http://127.0.0.1/callback", help="OAuth redirect_uri.")
@click.option(
    "--rate-limit",
    type=RateLimitType(),
    default="10000/3600",
    help="Requests per fixed window, as N/SECONDS.",
)
@click.option("--retry-after/--no-retry-after", default=False, help="Send Retry-After on 429.")
@_seconds("--latency", "Seconds added to every API response.")
@_seconds("--latency-per-record", "Seconds added per record.")
@_share("--error-rate", "Share of requests answered 500/503.")
@click.option(
    "--big-page-502-above",
    type=BoundedInt(1, 1_000_000),
    default=None,
    help="Answer 502 to page[size] above this.",
)
@_share("--reset-rate", "Share of connections reset mid-body.")
@_share("--truncate-rate", "Share of 200s with truncated JSON.")
@_share("--malformed-rate", "Share of 200s with malformed JSON.")
@_share("--html-rate", "Share answered by an HTML page (502/200).")
@_seconds("--slow-body", "Trickle bodies over this many seconds.")
@_share("--slow-body-rate", "Share of bodies trickled.", default=1.0)
@click.option(
    "--mutation-rate",
    type=FiniteFloat(0.0, 1_000_000.0),
    default=0.0,
    help="Inserts/updates/deletes per second while serving.",
)
@_share("--lost-write-rate", "Share of writes applied, then answered by a dropped connection.")
@click.option(
    "--cache-mib",
    type=BoundedInt(0, 1 << 20),
    default=512,
    help="MiB of serialized records kept in memory.",
)
@click.option(
    "--fault-seed", type=_SEED, default=None, help="Seed of the fault dice (default: --seed)."
)
@click.option(
    "--date-skew",
    type=FiniteFloat(-366 * DAY, 366 * DAY),
    default=0.0,
    help="Seconds the API's Date header is off (a wrong server clock; negative = behind).",
)
@_seconds(
    "--write-apply-delay",
    "Seconds every accepted write waits before it is applied (applied even if the "
    "client is gone by then).",
)
@click.option(
    "--token-faults",
    type=TokenFaultsType(),
    default="",
    show_default="none",
    help="Faults of the next POST /oauth/token requests, in order: 500, 503, 429 (with "
    "--token-retry-after), 307 (to --redirect-to), echo (a 400 quoting the secrets), slow.",
)
@_seconds("--token-retry-after", "Retry-After of a token 429 (--token-faults 429).", default=1.0)
@_seconds("--token-slow", "Seconds a `slow` token answer takes.", default=5.0)
@click.option(
    "--redirect-to",
    default=HostileFaults.redirect_to,
    help="Root URL that cross-origin redirects (--redirect-cross, token 307) point at.",
)
@_next_requests("--trickle", "API GETs trickle their body at --trickle-bytes-per-s.")
@click.option(
    "--trickle-bytes-per-s",
    type=BoundedInt(1, 1 << 30),
    default=20,
    help="Bytes a second of a trickled body.",
)
@_next_requests("--gzip-bomb", "API GETs answer a gzip body inflating to --gzip-bomb-bytes.")
@click.option(
    "--gzip-bomb-bytes",
    type=BoundedInt(16, 1 << 34),
    default=1 << 30,
    show_default="1 GiB",
    help="Inflated size of a gzip bomb.",
)
@_next_requests("--redirect-cross", "API GETs answer 307 to the same path under --redirect-to.")
@_next_requests("--redirect-same", "API GETs answer 307 to their own URL (one more hop).")
@_next_requests(
    "--echo-auth", "API GETs answer an errors document quoting the Authorization header."
)
@click.option(
    "--echo-auth-status",
    type=BoundedInt(400, 599),
    default=400,
    help="Status of an --echo-auth answer.",
)
@_next_requests(
    "--echo-auth-write", "writes answer 422 whose detail quotes the Authorization header."
)
@click.option(
    "--wire-extras/--no-wire-extras",
    default=False,
    help="Serve every member JSON:API allows beside the data: records' links.self and meta, "
    "to-many relationships' links beside data, pages' meta, an empty included.",
)
@click.option(
    "--request-log",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Append every API GET's path and query to this file (a benchmark replays them).",
)
def simulate(**options: Any) -> None:
    """Serve an Outreach-compatible API v2 simulator over deterministic data.

    Prints one line (the API base URL and the static token) when ready, then serves until
    SIGINT or SIGTERM.
    """
    from .server import Simulator  # aiohttp: only to serve

    limit, window = options["rate_limit"]
    faults = Faults(
        latency_s=options["latency"],
        latency_per_record_s=options["latency_per_record"],
        error_rate=options["error_rate"],
        big_page_502_above=options["big_page_502_above"],
        reset_rate=options["reset_rate"],
        truncate_rate=options["truncate_rate"],
        malformed_rate=options["malformed_rate"],
        html_rate=options["html_rate"],
        slow_body_s=options["slow_body"],
        slow_body_rate=options["slow_body_rate"],
        mutation_rate=options["mutation_rate"],
        lost_write_rate=options["lost_write_rate"],
        seed=options["fault_seed"],
        date_skew_s=options["date_skew"],
    )
    cfg = SimulatorConfig(
        steps=options["steps"],
        seed=options["seed"],
        org_guid=options["org_guid"],
        sequences_per_step=options["sequences_per_step"],
        users_per_step=options["users_per_step"],
        min_users=options["min_users"],
        call_purposes=options["call_purposes"],
        task_priorities=options["task_priorities"],
        templates_per_email_step=options["templates_per_email_step"],
        mailings_per_email_step=options["mailings_per_email_step"],
        calls_per_call_step=options["calls_per_call_step"],
        tasks_per_step=options["tasks_per_step"],
        prospects=options["prospects"],
        sizes=dict(options["sizes"]),
        denied_scopes=frozenset(options["denied_scopes"]),
        page_max=options["page_max"],
        token_ttl=options["token_ttl"],
        mint_interval=options["mint_interval"],
        static_token=options["token"] or None,
        client_id=options["client_id"],
        client_secret=options["client_secret"],
        refresh_token=options["refresh_token"],
        redirect_uri=options["redirect_uri"],
        rate_limit=limit,
        rate_window=window,
        retry_after=options["retry_after"],
        record_cache_bytes=options["cache_mib"] * 1024 * 1024,
        wire_extras=options["wire_extras"],
        faults=faults,
    )
    sim = Simulator(cfg)
    configure_hostile(sim.hostile, options)
    sim.write_policy.apply_delay_s = options["write_apply_delay"]
    with contextlib.ExitStack() as stack:
        if options["request_log"]:
            sim.request_log = stack.enter_context(
                open(options["request_log"], "a", encoding="utf-8", buffering=1)
            )
        asyncio.run(_serve_until_signalled(sim, options["host"], options["port"]))


def configure_hostile(faults: HostileFaults, options: dict[str, Any]) -> None:
    """Set the hostile faults (`HostileFaults`) the flags name."""
    faults.token = list(options["token_faults"])
    faults.token_retry_after = options["token_retry_after"]
    faults.token_slow_s = options["token_slow"]
    faults.redirect_to = options["redirect_to"].rstrip("/")
    for name in ("trickle", "trickle_bytes_per_s", "gzip_bomb", "gzip_bomb_bytes"):
        setattr(faults, name, options[name])
    for name in ("redirect_cross", "redirect_same", "echo_auth", "echo_auth_status"):
        setattr(faults, name, options[name])
    faults.echo_auth_write = options["echo_auth_write"]


async def _serve_until_signalled(sim: Simulator, host: str, port: int) -> None:
    from .server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with serve(sim, host, port) as root:
            token = sim.cfg.static_token or "-"
            click.echo(f"Outreach API simulator serving {root}/api/v2 token {token}")
            sys.stdout.flush()
            await stop.wait()
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror}") from error
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
