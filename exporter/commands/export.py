"""`exporter export`: options to `ExportSettings`, the run under signals, its summary line."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Unpack

import click
import orjson
from click.core import ParameterSource

from exporter.commands.credentials import (
    CredentialOptions,
    command_token_source,
    credential_settings,
)
from exporter.commands.exits import errors_as_json, fail
from exporter.commands.metrics import RunOutcome, check_metrics_path, write_metrics
from exporter.commands.options import CREDENTIALS, options
from exporter.core.config import DEFAULT_RESOURCES, Concurrency, ExportSettings, RateLimit
from exporter.core.errors import ExitCode, ExporterError, UsageError
from exporter.core.events import configure_logging, event
from exporter.core.secrets import Secret
from exporter.model.schema import RESOURCE_TYPES

DEMO_TOKEN = "demo-token"  # noqa: S105 - the simulator's static token, not a secret
# With --resources other than the default, the demo simulates the whole account around its
# steps: this many prospects, and the other collections in proportion (docs/simulator.md).
DEMO_PROSPECTS = 1000


@contextlib.contextmanager
def _demo_server(steps: int, seed: int, prospects: int) -> Iterator[str]:
    from exporter.simulator import Simulator, SimulatorConfig, serve_in_thread

    config = SimulatorConfig(
        steps=steps,
        seed=seed,
        static_token=DEMO_TOKEN,
        prospects=prospects,
        readable_text=True,  # the tour's queries read plainly; the tests keep the hostile text
    )
    simulator = Simulator(config)
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


def demo_source(steps: int, seed: int, prospects: int = 0) -> str:
    """What a demo run records as its source: the port changes every time, the data does not."""
    if prospects:
        return f"demo simulator ({steps} steps, {prospects} prospects, seed {seed})"
    return f"demo simulator ({steps} steps, seed {seed})"


def _demo_again(settings: ExportSettings, source: str) -> bool:
    """Before any server starts: is --out a finished export of this same demo? Then running the
    quick start again adds what changed since (an incremental run), rather than refusing. A
    backup of anything else in --out is refused here, before the simulator starts."""
    from exporter.backup import catalog
    from exporter.backup.storage import Storage

    if settings.restart or settings.incremental:
        return False
    storage = Storage.open(str(settings.out), flag="--out")
    state = catalog.read(storage).state
    if state is None:
        return False
    if state.source != source:
        raise UsageError(
            f"{storage.display} holds a backup of {state.source}, not of the {source}: "
            "choose another --out for the demo (or pass --restart to replace it)"
        )
    return state.status == "complete"


@click.command()
@options(
    "config",
    "out",
    "base_url",
    *CREDENTIALS,
    "page_size",
    "concurrency",
    "rate_limit",
    "relationships",
    "resources",
    "max_url_length",
    "incremental",
    "overlap",
    "detect_deletes",
    "restart",
    "repair",
    "commit_interval",
    "read_timeout",
    "request_deadline",
    "max_response_mib",
    "file_rows",
    "demo",
    "demo_steps",
    "demo_seed",
    "progress_interval",
    "metrics_file",
    "quiet",
    "verbose",
    "log_format",
)
def export(
    out: str,
    base_url: str,
    page_size: int,
    concurrency: Concurrency,
    rate_limit: RateLimit,
    relationships: str,
    resources: str,
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
    metrics_file: Path | None,
    **credentials: Unpack[CredentialOptions],
) -> None:
    """Export sequence steps (or, with --resources, any or all of the account's collections) to
    typed Parquet files in --out, resuming an unfinished run there."""
    # The run's modules (aiohttp, pyarrow, rich) are imported here, not with the command:
    # `--help` and a refused flag never wait for them.
    from exporter.api.client import STOP_GRACE
    from exporter.commands.display import progress_display
    from exporter.commands.running import run_stoppable
    from exporter.export.links import parse_selection
    from exporter.export.run import Export

    if demo:
        _refuse_beside_demo(click.get_current_context())
    settings = ExportSettings(
        out=out,
        base_url=base_url,
        **credential_settings(credentials),
        page_size=page_size,
        concurrency=concurrency,
        rate_limit=rate_limit,
        relationships=relationships,
        resources=resources,
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
    if metrics_file is not None:
        try:
            check_metrics_path(metrics_file)
        except ExporterError as exc:
            fail(exc)
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        if demo:
            prospects = 0 if settings.resources == DEFAULT_RESOURCES else DEMO_PROSPECTS
            source = demo_source(demo_steps, demo_seed, prospects)
            try:
                again = _demo_again(settings, source)
            except ExporterError as exc:
                fail(exc)
            if again:
                event(
                    "demo",
                    f"demo: {out} already holds this demo's export; adding what changed since "
                    "(--incremental)",
                )
            demo_url = stack.enter_context(_demo_server(demo_steps, demo_seed, prospects))
            around = f" and an account of {prospects:,} prospects" if prospects else ""
            event(
                "demo",
                f"demo: simulator with {demo_steps} steps{around} at {demo_url}",
                base_url=demo_url,
            )
            settings = ExportSettings(
                **{
                    **settings.__dict__,
                    "base_url": demo_url,
                    "token": Secret(DEMO_TOKEN),
                    "refresh_token": None,
                    "source": source,
                    "incremental": settings.incremental or again,
                }
            )
        try:
            parse_selection(settings.relationships)
            job = Export(
                settings,
                command_token_source(settings, has_demo=True),
                progress_display(log_format, quiet, progress_interval),
                repair=repair,
            )
            result = run_stoppable(job.run, job.request_stop, grace=STOP_GRACE)
        except ExporterError as exc:
            if metrics_file is not None:
                outcome = RunOutcome(str(out), int(exc.exit_code), time.monotonic() - began)
                with contextlib.suppress(ExporterError):  # the run's own error is the one to say
                    write_metrics(metrics_file, outcome)
            fail(exc)
    order = {name: i for i, name in enumerate(RESOURCE_TYPES)}
    rows = dict(sorted(result.rows.items(), key=lambda item: order.get(item[0], len(order))))
    total = sum(rows.values())
    if metrics_file is not None:
        requests = {t: p.pages for t, p in job.snapshot().resources.items() if t in order}
        outcome = RunOutcome(
            str(out),
            0,
            result.seconds,
            records=rows,
            requests=dict(sorted(requests.items(), key=lambda item: order[item[0]])),
            all_requests=result.requests,
        )
        try:
            write_metrics(metrics_file, outcome)
        except ExporterError as exc:
            fail(exc)
    rate = total / result.seconds if result.seconds else 0.0
    refused = ", ".join(f"{t} ({scope})" for t, scope in sorted(result.refused.items()))
    if log_format == "json":
        click.echo(
            orjson.dumps(
                {
                    **({"refused": result.refused} if result.refused else {}),
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
        if result.refused:
            raise SystemExit(int(ExitCode.SCOPES_REFUSED))
        return
    verb = "resumed and finished" if result.resumed else "exported"
    click.echo(
        f"{verb} {total:,} records ("
        + ", ".join(f"{name} {count:,}" for name, count in rows.items())
        + f") in {result.seconds:.1f}s, {rate:,.0f} records/s, {result.requests:,} requests"
    )
    click.echo(f"run {result.state.run_id}: {job.storage.shown('_manifest.json')}")
    if result.refused:
        # One line, and its own exit code: never a silent 0 with collections missing.
        click.echo(
            f"refused: {refused}: the token lacks these scopes; add them and run again "
            "with --incremental to export those collections",
            err=True,
        )
        raise SystemExit(int(ExitCode.SCOPES_REFUSED))
