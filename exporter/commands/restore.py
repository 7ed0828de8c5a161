"""`exporter restore DIR`: options to `RestoreSettings`, the restore under signals, its plan or report."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

import click

from exporter.commands.credentials import (
    CredentialOptions,
    command_token_source,
    credential_settings,
)
from exporter.commands.exits import fail
from exporter.commands.options import CREDENTIALS, RESTORE_VARIANTS, options
from exporter.core.config import ExportSettings, RateLimit
from exporter.core.errors import ExporterError, UsageError
from exporter.restore.modes import Mode


@click.command("restore")
@click.argument("directory", metavar="DIR")
@options(
    "run_id",
    "ids",
    "sequence",
    "mode",
    "apply",
    "journal",
    "base_url",
    *CREDENTIALS,
    "concurrency",
    "rate_limit",
    "lookup_delay",
    "resend_lost",
    "into_another_account",
    variants=RESTORE_VARIANTS,
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
    concurrency: int,
    rate_limit: RateLimit,
    lookup_delay: float,
    resend_lost: bool,
    into_another_account: bool,
    **credentials: Unpack[CredentialOptions],
) -> None:
    """Put sequence steps back from a backup: plan (default), or --apply the creates and patches."""
    from exporter.api.client import STOP_GRACE
    from exporter.backup import manifest
    from exporter.backup.storage import Storage
    from exporter.commands.running import run_stoppable
    from exporter.restore.report import RestoreReport, render
    from exporter.restore.restore import Restore, RestoreSettings

    try:
        if ids is not None and sequence is not None:
            raise UsageError("--ids and --sequence select steps in two ways; pass one of them")
        backup = Storage.open(directory, flag="DIR")
        if not backup.exists(manifest.MANIFEST_NAME):
            raise UsageError(f"{backup.display} holds no finished export to restore from")
        auth = ExportSettings(
            out=directory,
            base_url=base_url,
            **credential_settings(credentials),
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
