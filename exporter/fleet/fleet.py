"""Many accounts at once: one export task per account of the fleet file, run here or on a Dask cluster."""

# How the pieces fit:
# 1. `commands.fleet_file.load_fleet` reads the TOML file into `Account`s: options checked,
#    credentials kept as references (an environment variable's name, a file's path), never as
#    values. A fleet file that holds a secret is refused.
# 2. One task per account: `run_account(account, fleet_started)` resolves the references in the
#    process that runs it (so secrets never pass through a Dask scheduler), runs the ordinary
#    `Export` there, and returns an `AccountResult` (counts, time, outcome; no secret). The whole
#    export of an account runs in that one process, so its rate budget (an aiolimiter in that
#    process) holds however many workers the fleet has.
# 3. Invariant: an account's task can run again at any time (a worker died, an error was retried)
#    and still produce the exact output: the rerun resumes the unfinished run from the account's
#    checkpoint, or finds that an earlier attempt of this fleet run already finished it. The
#    same holds for the whole fleet run again (after a kill): finished accounts are "ok, already
#    done" (incremental ones run an incremental), unfinished ones resume. "Done" is only ever
#    the export's own verdict (`FinishedExport`), after it confirmed the account by a request.
# 4. `--executor local` runs the tasks in this process, a bounded number at once;
#    `--executor dask` submits them to a `distributed` scheduler, which reruns the task of a
#    worker that died on another worker (up to its `allowed-failures`).

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from exporter.api.auth import StaticToken, TokenSource, token_source
from exporter.api.client import STOP_GRACE
from exporter.backup import manifest
from exporter.core.config import ExportSettings
from exporter.core.errors import (
    ExporterError,
    Interrupted,
    UnreachableError,
    UsageError,
    scrub,
)
from exporter.core.files import MAX_SECRET_BYTES, read_small_file
from exporter.core.secrets import CREDENTIAL_RULE, Secret, header_safe
from exporter.core.times import utc_now
from exporter.export.plan import FinishedExport
from exporter.export.run import Export


@dataclass(frozen=True)
class Credentials:
    """Where an account's secrets are: environment variable names and file paths, no values.

    A static token: `token_env` or `token_file` (a file holding the token). OAuth: `client_id`,
    `client_secret_env`/`_file`, `refresh_token_env`/`_file`, `redirect_uri`, and `token_file`,
    the store of the newest rotated refresh token (as `exporter export --token-file`)."""

    token_env: str | None = None
    token_file: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    client_secret_file: str | None = None
    refresh_token_env: str | None = None
    refresh_token_file: str | None = None
    redirect_uri: str | None = None

    @property
    def oauth(self) -> bool:
        return self.client_id is not None


@dataclass(frozen=True)
class Account:
    """One account of the fleet: what the task needs, with credentials by reference only."""

    name: str
    base_url: str
    out: str
    credentials: Credentials
    options: Mapping[str, Any] = field(default_factory=dict)  # ExportSettings fields
    repair: bool = False  # `Export(repair=)`, as `export --repair`


@dataclass(frozen=True)
class AccountResult:
    """What a task reports back: small, and without any secret."""

    account: str
    ok: bool
    # "ok", "ok, resumed", "ok, finished by an earlier attempt", "ok, already done (...)",
    # "failed: ...", "stopped: ..."
    outcome: str
    records: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    seconds: float = 0.0
    run_id: str | None = None
    process: str = ""  # host:pid that ran the last attempt

    @property
    def total(self) -> int:
        return sum(self.records.values())


class AccountCrashed(RuntimeError):
    """An unexpected error in an account's task, with secrets scrubbed (Dask may retry it)."""


# -- one account's task (runs on a worker) ---------------------------------------------------


def resolve(account: Account) -> tuple[ExportSettings, TokenSource]:
    """The account's settings and token source, with its secrets read here, in this process."""
    c = account.credentials
    where = f"account {account.name!r}"
    options = dict(account.options)
    out = account.out  # a directory or a URI (s3://...), as `export --out` takes it
    if not c.oauth:
        token = _read_secret(where, "token", c.token_env, c.token_file)
        settings = ExportSettings(out=out, base_url=account.base_url, token=token, **options)
        key = f"token_env ({c.token_env})" if c.token_env else f"token_file ({c.token_file})"
        named = f"{where}'s {key} in the fleet file"
        remedy = (
            f"Put a valid one where {named} points, or give the account OAuth keys "
            "(client_id, client_secret_env, refresh_token_env, redirect_uri, token_file) so the "
            "exporter can refresh it"
        )
        return settings, token_source(settings, lambda t: StaticToken(t, named, remedy))
    assert c.client_id and c.redirect_uri and c.token_file
    client_secret = _read_secret(where, "client_secret", c.client_secret_env, c.client_secret_file)
    refresh_token = _read_secret(where, "refresh_token", c.refresh_token_env, c.refresh_token_file)
    settings = ExportSettings(
        out=out,
        base_url=account.base_url,
        client_id=c.client_id,
        client_secret=client_secret,
        refresh_token=refresh_token,
        redirect_uri=c.redirect_uri,
        token_file=Path(c.token_file),
        **options,
    )
    return settings, token_source(settings)


def _read_secret(where: str, what: str, env: str | None, path: str | None) -> Secret:
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise UsageError(
                f"{where}: {what}_env names {env}, which is not set in the environment of the "
                "process exporting it (with --executor dask: the worker's)"
            )
        if not header_safe(value):
            raise UsageError(f"{where}: the {what} in {env} must be {CREDENTIAL_RULE}")
        return Secret(value)
    assert path is not None
    try:
        value = read_small_file(path, f"{what}_file", MAX_SECRET_BYTES).strip()
    except FileNotFoundError:
        raise UsageError(
            f"{where}: {what}_file {path} does not exist where it is exported "
            "(with --executor dask: on the worker)"
        ) from None
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    if not value:
        raise UsageError(f"{where}: {what}_file {path} is empty")
    if not header_safe(value):
        raise UsageError(f"{where}: the {what} in {what}_file {path} must be {CREDENTIAL_RULE}")
    return Secret(value)


def _process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _one_line(text: str, known: Iterable[str]) -> str:
    """One line, without any secret this account's token source knows, the export's flags
    named as the account's keys (`as_fleet_keys`)."""
    return as_fleet_keys(" ".join(scrub(text, known).split()))[:500]


# An export's messages name its flags (`pass --incremental`, `with --repair`); in a fleet what
# the user can change is the account's key in the fleet file, so a hint names that instead.
_SECRET_KEYS = {
    "token": "token_env (or token_file)",
    "refresh-token": "refresh_token_env (or refresh_token_file)",
    "client-secret": "client_secret_env (or client_secret_file)",
}
_FLAG_KEYS = {"repair", "incremental", "detect-deletes"}  # true or false in a fleet file
_NO_KEY = {"restart": "`exporter export --restart` on the account's out (a fleet has no restart)"}
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z-]*)")


def as_fleet_keys(message: str) -> str:
    """`message` with each export flag named as the fleet file's key for it."""

    def key(match: re.Match[str]) -> str:
        flag = match[1]
        if flag in _SECRET_KEYS:
            return _SECRET_KEYS[flag]
        if flag in _NO_KEY:
            return _NO_KEY[flag]
        name = flag.replace("-", "_")
        asked = message[: match.start()].rstrip().endswith(("pass", "with", "add"))
        return f"{name} = true" if flag in _FLAG_KEYS and asked else name

    return _FLAG.sub(key, message)


def _already_done(account: Account, done: FinishedExport) -> AccountResult:
    """The result of an account whose export found a finished backup of this very account
    (`FinishedExport`, raised only after the account was confirmed by a request, never on the
    path or URL alone: a fleet file whose tokens were swapped between accounts gets the
    export's refusal instead). `done.recent`: it finished during this fleet run, so an earlier
    attempt of this task did it (a worker died after the export, before its result reached
    the scheduler)."""
    state = done.state
    this_run = done.recent
    try:
        stats = manifest.load(account.out).get("stats", {})
    except UsageError:
        stats = {}
    return AccountResult(
        account=account.name,
        ok=True,
        outcome=(
            "ok, finished by an earlier attempt"
            if this_run
            else f"ok, already done (run {state.run_id} finished {state.finished_at})"
        ),
        records={k: v.rows for k, v in state.resources.items()},
        requests=int(stats.get("requests", 0)) if this_run else 0,
        seconds=float(stats.get("seconds", 0.0)) if this_run else 0.0,
        run_id=state.run_id,
        process=_process(),
    )


async def export_account(
    account: Account,
    fleet_started: str,
    *,
    started: Callable[[Export], None] | None = None,
) -> AccountResult:
    """Export one account; an expected failure is an outcome, not an exception.

    Running it again brings the account to "finished" and redoes nothing finished: an
    unfinished export resumes; a finished one of this account (`FinishedExport`, after the
    export's own account check) is "ok, already done", unless the account is incremental,
    which adds a run on top; one that finished during this fleet run (`fleet_started`) is an
    earlier attempt's, "ok, finished by an earlier attempt", incremental or not.
    An unexpected error is raised as `AccountCrashed`."""
    clock = time.monotonic()
    tokens: TokenSource | None = None
    job: Export | None = None
    try:
        settings, tokens = resolve(account)
        # What a finished backup means here is the export's plan (`plan.plan_export`): one
        # that finished since `fleet_started` is done, even for an incremental account.
        job = Export(settings, tokens, repair=account.repair, finished_since=fleet_started)
        if started is not None:
            started(job)
        result = await job.run()
    except FinishedExport as done:
        return _already_done(account, done)
    except ExporterError as exc:
        verb = "stopped" if isinstance(exc, Interrupted) else "failed"
        known = tokens.secrets() if tokens is not None else []
        return AccountResult(
            account=account.name,
            ok=False,
            outcome=f"{verb}: {_one_line(str(exc), known)}",
            requests=job.client.stats.requests if job is not None and job.client else 0,
            seconds=time.monotonic() - clock,
            process=_process(),
        )
    except Exception as exc:  # noqa: BLE001 - one account's bug must not take the fleet down
        known = tokens.secrets() if tokens is not None else []
        raise AccountCrashed(
            f"account {account.name!r}: unexpected {type(exc).__name__}: {_one_line(str(exc), known)}"
        ) from None
    return AccountResult(
        account=account.name,
        ok=True,
        outcome="ok, resumed" if result.resumed else "ok",
        records=result.rows,
        requests=result.requests,
        seconds=time.monotonic() - clock,
        run_id=result.state.run_id,
        process=_process(),
    )


def run_account(account: Account, fleet_started: str) -> AccountResult:
    """The Dask task: one account's whole export, in the worker process that runs it."""
    return asyncio.run(export_account(account, fleet_started))


def failed(account: Account, message: str) -> AccountResult:
    return AccountResult(account=account.name, ok=False, outcome=f"failed: {message}")


# -- executors -------------------------------------------------------------------------------


async def run_local(
    accounts: list[Account],
    parallel: int,
    on_done: Callable[[AccountResult], None] = lambda _result: None,
) -> list[AccountResult]:
    """Every account in this process, `parallel` at once. SIGINT/SIGTERM stop the running exports
    cleanly (each commits what it fetched) and start no more; exports still running
    `STOP_GRACE` seconds later, or at a second signal, have their requests in flight cancelled
    (what they fetched is committed) and are reported as stopped."""
    fleet_started = utc_now()
    gate = asyncio.Semaphore(parallel)
    running: set[Export] = set()
    exporting: set[asyncio.Task[Any]] = set()
    stopping = False
    cancelled = False

    async def one(account: Account) -> AccountResult:
        async with gate:
            if stopping:
                result = AccountResult(account.name, ok=False, outcome="stopped: not started")
            else:
                task = asyncio.current_task()
                assert task is not None
                exporting.add(task)
                try:
                    result = await export_account(account, fleet_started, started=running.add)
                except AccountCrashed as exc:
                    result = failed(account, str(exc))
                except asyncio.CancelledError:
                    if not cancelled:
                        raise
                    result = AccountResult(
                        account.name,
                        ok=False,
                        outcome="stopped: requests in flight cancelled; what was fetched is "
                        "committed",
                    )
                finally:
                    exporting.discard(task)
        on_done(result)
        return result

    def cancel() -> None:
        nonlocal cancelled
        if not cancelled:
            cancelled = True
            for task in exporting:
                task.cancel()

    def stop() -> None:
        nonlocal stopping
        if stopping:
            cancel()  # a second signal: stop now
            return
        click.echo(
            f"stopping: committing the running exports (at most {STOP_GRACE:g} s), starting no "
            "more (signal again to stop now)",
            err=True,
        )
        stopping = True
        for job in running:
            job.request_stop()
        loop.call_later(STOP_GRACE, cancel)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        return list(await asyncio.gather(*(one(a) for a in accounts)))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if cancelled:  # fetchers the cancelled exports left behind end here, not at shutdown
            this = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not this]
            for other in others:
                other.cancel()
            if others:
                await asyncio.wait(others, timeout=5)


def import_distributed() -> ModuleType:
    """`distributed`, imported only for `--executor dask`, so the base install works without it."""
    try:
        import distributed
    except ImportError:
        raise UsageError(
            "--executor dask needs Dask distributed; install it with "
            "pip install 'outreach-exporter[fleet]' (or pip install 'dask[distributed]')"
        ) from None
    return distributed


def run_dask(
    accounts: list[Account],
    scheduler: str,
    retries: int,
    on_done: Callable[[AccountResult], None] = lambda _result: None,
    *,
    connect_timeout: float = 30.0,
) -> list[AccountResult]:
    """One task per account on the cluster behind `scheduler`; results in the fleet file's order.

    A worker that dies while exporting an account: the scheduler runs the task again on another
    worker (up to its `distributed.scheduler.allowed-failures`), and it resumes from the checkpoint.
    `retries` reruns a task that raised an unexpected error."""
    distributed = import_distributed()
    fleet_started = utc_now()
    try:
        client = distributed.Client(scheduler, timeout=f"{connect_timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UnreachableError(
            f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__}); start one "
            "with `dask scheduler` and pass its address, e.g. tcp://10.0.0.5:8786"
        ) from None
    results: dict[str, AccountResult] = {}
    nonce = secrets.token_hex(4)
    with client:
        futures = {
            client.submit(
                run_account,
                account,
                fleet_started,
                key=f"export-{account.name}-{nonce}",
                retries=retries,
                pure=False,
            ): account
            for account in accounts
        }
        try:
            for future in distributed.as_completed(list(futures), loop=client.loop):
                account = futures[future]
                try:
                    result = future.result()
                except distributed.KilledWorker as exc:
                    result = failed(
                        account,
                        f"{exc.allowed_failures + 1} workers died exporting it; its checkpoint "
                        "is intact: run the fleet again to resume it",
                    )
                except AccountCrashed as exc:
                    result = failed(account, str(exc))
                except Exception as exc:  # noqa: BLE001 - e.g. cancelled: reported, not raised
                    result = failed(account, f"the task ended with {type(exc).__name__}")
                results[account.name] = result
                on_done(result)
        except KeyboardInterrupt:
            client.cancel(list(futures))
            raise Interrupted(
                "stopped; accounts not finished keep their checkpoints: run the same command "
                "to resume them"
            ) from None
    return [results[a.name] for a in accounts]


__all__ = [
    "Account",
    "AccountResult",
    "Credentials",
    "export_account",
    "run_account",
    "run_dask",
    "run_local",
]
