"""`exporter export`: options to `ExportSettings`, the run under signals, its summary line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import orjson
from click.core import ParameterSource

from exporter.api.client import STOP_GRACE
from exporter.commands.credentials import command_token_source, credential_settings
from exporter.commands.display import ProgressDisplay
from exporter.commands.exits import errors_as_json, fail
from exporter.commands.running import run_stoppable
from exporter.commands.values import (
    EXPORT_VALUE_TYPES,
    BaseUrlType,
    LocationType,
    credential_options,
    toml_defaults,
)
from exporter.core.bounds import DAY, BoundedInt, FiniteFloat
from exporter.core.config import (
    DEFAULT_BASE_URL,
    MAX_PAGE_SIZE,
    ExportSettings,
    RateLimit,
    load_toml_table,
)
from exporter.core.errors import ExporterError, UsageError
from exporter.core.events import configure_logging, event
from exporter.core.progress import Snapshot
from exporter.core.secrets import Secret
from exporter.model.schema import RESOURCE_TYPES

DEMO_TOKEN = "demo-token"  # noqa: S105 - the simulator's static token, not a secret


def _output_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--quiet, --verbose and --log-format, shared by commands that run for a while."""
    command = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        envvar="OUTREACH_LOG_FORMAT",
        help="json: one JSON object per line on stderr (progress, events, errors), for schedulers.",
    )(command)
    command = click.option(
        "--verbose", "-v", is_flag=True, help="Also log every request (method, URL, status, time)."
    )(command)
    command = click.option("--quiet", "-q", is_flag=True, help="Print only errors and the result.")(
        command
    )
    command = click.option(
        "--progress-interval",
        type=FiniteFloat(0.05, DAY),
        default=10.0,
        show_default=True,
        envvar="OUTREACH_PROGRESS_INTERVAL",
        help="Seconds between progress lines when stderr is not a terminal.",
    )(command)
    return command


def _reporter_factory(
    log_format: str, quiet: bool, interval: float
) -> Callable[[Callable[[], Snapshot]], ProgressDisplay]:
    from exporter.model.schema import RESOURCE_TYPES, resource_type

    if quiet:
        mode = "quiet"
    elif log_format == "json":
        mode = "json"
    elif sys.stderr.isatty():
        mode = "tty"
    else:
        mode = "lines"
    collections = {t: resource_type(t).collection for t in RESOURCE_TYPES}
    return lambda snapshot: ProgressDisplay(
        mode, snapshot, collections=collections, interval=interval
    )


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Eager: fill click's default_map from the TOML file before other options are resolved."""
    if value is None:
        return None
    table = load_toml_table(Path(value))
    params = [p for p in ctx.command.params if p.name != "config"]
    defaults = toml_defaults(table, params, f"config file {value}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


@contextlib.contextmanager
def _demo_server(steps: int, seed: int) -> Iterator[str]:
    from exporter.simulator import Simulator, SimulatorConfig, serve_in_thread

    simulator = Simulator(SimulatorConfig(steps=steps, seed=seed, static_token=DEMO_TOKEN))
    with serve_in_thread(simulator) as root_url:
        yield root_url + "/api/v2"


def _refuse_beside_demo(ctx: click.Context) -> None:
    """--demo exports from the built-in simulator: a base URL given as well (by flag, variable
    or config file) would be silently ignored, so the two are refused together."""
    source = ctx.get_parameter_source("base_url")
    named = (
        {
            ParameterSource.COMMANDLINE: "--base-url",
            ParameterSource.ENVIRONMENT: "OUTREACH_BASE_URL",
            ParameterSource.DEFAULT_MAP: "base_url in the config file",
        }.get(source)
        if source is not None
        else None
    )
    if named is not None:
        raise UsageError(
            f"--demo exports from the built-in simulator, so {named} would be ignored; "
            "drop one of the two"
        )


@click.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    help="TOML file with defaults for any option below (keys as option names, e.g. page_size).",
)
@click.option(
    "--out",
    type=LocationType(),
    required=True,
    envvar="OUTREACH_OUT",
    help="Output directory, or a URI: s3://bucket/prefix (endpoint, region and credentials from "
    "the AWS_* variables), file://...  [env: OUTREACH_OUT]",
)
@click.option(
    "--base-url",
    type=BaseUrlType(),
    default=DEFAULT_BASE_URL,
    show_default=True,
    envvar="OUTREACH_BASE_URL",
    help="API base URL.  [env: OUTREACH_BASE_URL]",
)
@credential_options
@click.option(
    "--page-size",
    type=EXPORT_VALUE_TYPES["page_size"],
    default=MAX_PAGE_SIZE,
    show_default=True,
    envvar="OUTREACH_PAGE_SIZE",
    help="Records per page (the API's maximum is 1000).  [env: OUTREACH_PAGE_SIZE]",
)
@click.option(
    "--concurrency",
    type=EXPORT_VALUE_TYPES["concurrency"],
    default=8,
    show_default=True,
    envvar="OUTREACH_CONCURRENCY",
    help="Requests in flight at once.  [env: OUTREACH_CONCURRENCY]",
)
@click.option(
    "--rate-limit",
    type=EXPORT_VALUE_TYPES["rate_limit"],
    default="10000/3600",
    show_default=True,
    envvar="OUTREACH_RATE_LIMIT",
    help="Request budget as N/SECONDS (Outreach allows 10,000 an hour per user).  "
    "[env: OUTREACH_RATE_LIMIT]",
)
@click.option(
    "--relationships",
    type=EXPORT_VALUE_TYPES["relationships"],
    default="all",
    show_default=True,
    envvar="OUTREACH_RELATIONSHIPS",
    help="Related records to export beside the steps: all, none, or a comma list of sequence, "
    "creator, updater, callPurpose, taskPriority, sequenceTemplates, mailings, calls, tasks "
    "(or type names such as users).  [env: OUTREACH_RELATIONSHIPS]",
)
@click.option(
    "--max-url-length",
    type=EXPORT_VALUE_TYPES["max_url_length"],
    default=8000,
    show_default=True,
    envvar="OUTREACH_MAX_URL_LENGTH",
    help="Longest request URL the batched relationship fetches may build.",
)
@click.option(
    "--incremental",
    is_flag=True,
    envvar="OUTREACH_INCREMENTAL",
    help="Add only what changed since the last finished run in --out (a full run first if none), "
    "in <type>/run=<id>/.  [env: OUTREACH_INCREMENTAL]",
)
@click.option(
    "--overlap",
    type=EXPORT_VALUE_TYPES["overlap"],
    default=300.0,
    show_default=True,
    envvar="OUTREACH_OVERLAP",
    help="Seconds an incremental window reaches back before the last run's mark (the API can be "
    "eventually consistent); records already exported are not written twice.",
)
@click.option(
    "--detect-deletes",
    is_flag=True,
    envvar="OUTREACH_DETECT_DELETES",
    help="Check every id of the backup against the API and write tombstones for the gone ones.",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Discard the backup in --out first: only files this tool wrote (README, Resuming).",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Set damaged committed files aside and fetch their records again; rebuild a lost "
    "checkpoint of a finished backup from its manifest (with --incremental).",
)
@click.option(
    "--commit-interval",
    type=EXPORT_VALUE_TYPES["commit_interval"],
    default=30.0,
    show_default=True,
    envvar="OUTREACH_COMMIT_INTERVAL",
    help="Seconds between commits: the most work a kill can lose.  [env: OUTREACH_COMMIT_INTERVAL]",
)
@click.option(
    "--read-timeout",
    type=EXPORT_VALUE_TYPES["read_timeout"],
    default=120.0,
    show_default=True,
    envvar="OUTREACH_READ_TIMEOUT",
    help="Seconds an answer may stay silent (before its headers or between bytes of its body) "
    "before the request is retried.  [env: OUTREACH_READ_TIMEOUT]",
)
@click.option(
    "--request-deadline",
    type=EXPORT_VALUE_TYPES["request_deadline"],
    default=300.0,
    show_default=True,
    envvar="OUTREACH_REQUEST_DEADLINE",
    metavar="SECONDS",
    help="Seconds from sending a request to the last byte of its answer, however it trickles, "
    "before the request is retried.  [env: OUTREACH_REQUEST_DEADLINE]",
)
@click.option(
    "--max-response-mib",
    type=EXPORT_VALUE_TYPES["max_response_mib"],
    default=256,
    show_default=True,
    envvar="OUTREACH_MAX_RESPONSE_MIB",
    metavar="N",
    help="MiB one answer may hold once decompressed; a bigger one is refused as a fault.  "
    "[env: OUTREACH_MAX_RESPONSE_MIB]",
)
@click.option(
    "--file-rows",
    type=EXPORT_VALUE_TYPES["file_rows"],
    default=1_000_000,
    show_default=True,
    envvar="OUTREACH_FILE_ROWS",
    help="Roll to a new Parquet file after this many rows.",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Start the built-in simulator on a free loopback port and export from it.",
)
@click.option(
    "--demo-steps",
    type=BoundedInt(1, 5_000_000),
    default=10_000,
    show_default=True,
    help="Sequence steps the demo simulator holds.",
)
@click.option(
    "--demo-seed",
    type=BoundedInt(0, 2**32 - 1),
    default=1,
    show_default=True,
    help="Seed of the demo data.",
)
@_output_options
def export(
    out: str,
    base_url: str,
    token: str | None,
    client_id: str | None,
    client_secret: str | None,
    refresh_token: str | None,
    redirect_uri: str | None,
    token_file: Path | None,
    page_size: int,
    concurrency: int,
    rate_limit: RateLimit,
    relationships: str,
    max_url_length: int,
    incremental: bool,
    overlap: float,
    detect_deletes: bool,
    restart: bool,
    repair: bool,
    commit_interval: float,
    read_timeout: float,
    request_deadline: float,
    max_response_mib: int,
    file_rows: int,
    demo: bool,
    demo_steps: int,
    demo_seed: int,
    quiet: bool,
    verbose: bool,
    log_format: str,
    progress_interval: float,
) -> None:
    """Export sequence steps to typed Parquet files in --out, resuming an unfinished run there."""
    from exporter.export.relationships import parse_selection
    from exporter.export.run import Export

    if demo:
        _refuse_beside_demo(click.get_current_context())
    settings = ExportSettings(
        out=out,
        base_url=base_url,
        **credential_settings(
            token, client_id, client_secret, refresh_token, redirect_uri, token_file
        ),
        page_size=page_size,
        concurrency=concurrency,
        rate_limit=rate_limit,
        relationships=relationships,
        max_url_length=max_url_length,
        incremental=incremental,
        overlap=overlap,
        detect_deletes=detect_deletes,
        restart=restart,
        commit_interval=commit_interval,
        read_timeout=read_timeout,
        request_deadline=request_deadline,
        max_response_mib=max_response_mib,
        file_rows=file_rows,
    )
    errors_as_json(log_format == "json")
    configure_logging(log_format, verbose, quiet)
    with contextlib.ExitStack() as stack:
        if demo:
            demo_url = stack.enter_context(_demo_server(demo_steps, demo_seed))
            event(
                "demo", f"demo: simulator with {demo_steps} steps at {demo_url}", base_url=demo_url
            )
            settings = ExportSettings(
                **{
                    **settings.__dict__,
                    "base_url": demo_url,
                    "token": Secret(DEMO_TOKEN),
                    "refresh_token": None,
                    # The port changes every time; the data does not: name it by its seed.
                    "source": f"demo simulator ({demo_steps} steps, seed {demo_seed})",
                }
            )
        try:
            parse_selection(settings.relationships)
            job = Export(
                settings,
                command_token_source(settings),
                _reporter_factory(log_format, quiet, progress_interval),
                repair=repair,
            )
            result = run_stoppable(job.run, job.request_stop, grace=STOP_GRACE)
        except ExporterError as exc:
            fail(exc)
    order = {name: i for i, name in enumerate(RESOURCE_TYPES)}
    rows = dict(sorted(result.rows.items(), key=lambda item: order.get(item[0], len(order))))
    total = sum(rows.values())
    rate = total / result.seconds if result.seconds else 0.0
    if log_format == "json":
        click.echo(
            orjson.dumps(
                {
                    "run_id": result.state.run_id,
                    "kind": result.state.kind,
                    "rows": rows,
                    "seconds": round(result.seconds, 3),
                    "requests": result.requests,
                    "resumed": result.resumed,
                    "manifest": job.storage.shown("_manifest.json"),
                }
            ).decode()
        )
        return
    verb = "resumed and finished" if result.resumed else "exported"
    click.echo(
        f"{verb} {total:,} records ("
        + ", ".join(f"{name} {count:,}" for name, count in rows.items())
        + f") in {result.seconds:.1f}s, {rate:,.0f} records/s, {result.requests:,} requests"
    )
    click.echo(f"run {result.state.run_id}: {job.storage.shown('_manifest.json')}")
