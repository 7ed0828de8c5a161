"""`exporter restore DIR`: options to `RestoreSettings`, the restore under signals, its plan or report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from exporter.api.client import STOP_GRACE
from exporter.backup import manifest
from exporter.backup.storage import Storage
from exporter.commands.credentials import command_token_source, credential_settings
from exporter.commands.exits import fail
from exporter.commands.running import run_stoppable
from exporter.commands.values import (
    BaseUrlType,
    RateLimitType,
    credential_options,
)
from exporter.core.bounds import BoundedInt, FiniteFloat
from exporter.core.config import DEFAULT_BASE_URL, ExportSettings, RateLimit
from exporter.core.errors import ExporterError, UsageError
from exporter.restore.restore import (
    MAX_ID,
    Mode,
    Restore,
    RestoreReport,
    RestoreSettings,
    render,
)


class IdList(click.ParamType[tuple[int, ...]]):
    name = "ID,ID,..."

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        if not parts or not all(p.isascii() and p.isdigit() for p in parts):
            self.fail(
                f"{str(value)[:60]!r} is not a comma list of step ids, e.g. 1,2,3", param, ctx
            )
        ids = tuple(int(p) for p in parts if len(p) <= 19)
        if len(ids) < len(parts) or not all(1 <= i <= MAX_ID for i in ids):
            self.fail(f"a step id is a number from 1 to {MAX_ID}", param, ctx)
        return ids


@click.command("restore")
@click.argument("directory", metavar="DIR")
@click.option("--run", "run_id", help="Restore the state as of this run id.  [default: newest]")
@click.option("--ids", type=IdList(), help="Only these backed-up step ids (comma list).")
@click.option(
    "--sequence", type=BoundedInt(1, MAX_ID), help="Only the backed-up steps of this sequence."
)
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default=Mode.BOTH.value,
    show_default=True,
    help="recreate: only create gone steps; rollback: only patch changed ones; both.",
)
@click.option(
    "--apply", is_flag=True, help="Write. Without it restore only reads and prints its plan."
)
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write journal.  [default: DIR/_restore/<target account>-journal.jsonl; for a backup "
    "on an object store, $XDG_STATE_HOME/outreach-exporter/restore/]",
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
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Requests in flight at once.",
)
@click.option(
    "--rate-limit",
    type=RateLimitType(),
    default="10000/3600",
    show_default=True,
    envvar="OUTREACH_RATE_LIMIT",
    help="Request budget as N/SECONDS.",
)
@click.option(
    "--lookup-delay",
    type=FiniteFloat(0, 3600),
    default=2.0,
    show_default=True,
    help="Seconds to wait after a write whose answer was lost before looking it up (a create "
    "not found is never sent again on that account; see --resend-lost).",
)
@click.option(
    "--resend-lost",
    is_flag=True,
    help="Send again the creates whose answer was lost and that a last lookup does not find. "
    "Only once you have checked the target yourself: a lost create may still land later.",
)
@click.option(
    "--into-another-account",
    is_flag=True,
    help="Restore a backup of another account: only create its steps (never patch by id).",
)
def restore_command(
    directory: str,
    run_id: str | None,
    ids: tuple[int, ...] | None,
    sequence: int | None,
    mode: str,
    apply: bool,
    journal: Path | None,
    base_url: str,
    token: str | None,
    client_id: str | None,
    client_secret: str | None,
    refresh_token: str | None,
    redirect_uri: str | None,
    token_file: Path | None,
    concurrency: int,
    rate_limit: RateLimit,
    lookup_delay: float,
    resend_lost: bool,
    into_another_account: bool,
) -> None:
    """Put sequence steps back from a backup: plan (default), or --apply the creates and patches."""
    try:
        if ids is not None and sequence is not None:
            raise UsageError("--ids and --sequence select steps in two ways; pass one of them")
        backup = Storage.open(directory, flag="DIR")
        if not backup.exists(manifest.MANIFEST_NAME):
            raise UsageError(f"{backup.display} holds no finished export to restore from")
        auth = ExportSettings(
            out=directory,
            base_url=base_url,
            **credential_settings(
                token, client_id, client_secret, refresh_token, redirect_uri, token_file
            ),
        )
        settings = RestoreSettings(
            directory=directory,
            base_url=base_url,
            run_id=run_id,
            ids=ids,
            sequence=sequence,
            mode=Mode(mode),
            apply=apply,
            journal=journal,
            concurrency=concurrency,
            rate_limit=rate_limit,
            lookup_delay=lookup_delay,
            resend_lost=resend_lost,
            into_another_account=into_another_account,
        )
        job = Restore(settings, command_token_source(auth))
        # Bounded: see "Stopping" in this module's docstring.
        report: RestoreReport = run_stoppable(job.run, job.request_stop, grace=STOP_GRACE)
    except ExporterError as exc:
        fail(exc)
    for line in render(report):
        click.echo(line)
    problem = report.error_line()
    if problem is not None:
        click.echo(f"error: {problem}", err=True)
    raise SystemExit(int(report.exit_code))
