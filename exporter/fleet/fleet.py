"""Many accounts at once: the fleet file, one export task per account, run here or on a Dask cluster."""

# How the pieces fit:
# 1. `load_fleet` reads the TOML file into `Account`s: options checked, credentials kept as
#    references (an environment variable's name, a file's path), never as values. A fleet file
#    that holds a secret is refused.
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
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import click

from exporter.api.auth import (
    OAuthCredentials,
    OAuthTokens,
    RefreshTokenStore,
    Secret,
    StaticToken,
    TokenSource,
)
from exporter.api.client import STOP_GRACE
from exporter.backup import manifest
from exporter.commands.options import (
    CREDENTIAL_RULE,
    EXPORT_VALUE_TYPES,
    LocationType,
    header_safe,
    toml_value,
)
from exporter.core.config import (
    DEFAULT_BASE_URL,
    ExportSettings,
    check_base_url,
    read_toml,
    token_url_for,
)
from exporter.core.errors import (
    ExitCode,
    ExporterError,
    Interrupted,
    UnreachableError,
    UsageError,
    redact_url,
    scrub,
)
from exporter.core.files import MAX_SECRET_BYTES, read_small_file
from exporter.export.plan import FinishedExport
from exporter.export.run import Export, utc_now

ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Keys that would hold a secret's value; the fleet file names where secrets are instead.
INLINE_SECRETS = {
    "token": "token_env or token_file",
    "access_token": "token_env or token_file",
    "client_secret": "client_secret_env or client_secret_file",
    "refresh_token": "refresh_token_env or refresh_token_file",
    "password": "a *_env or *_file reference",
}
OAUTH_ONLY_KEYS = (
    "client_secret_env",
    "client_secret_file",
    "refresh_token_env",
    "refresh_token_file",
    "redirect_uri",
)
CREDENTIAL_KEYS = ("token_env", "token_file", "client_id", *OAUTH_ONLY_KEYS)

# Export options an account (or [defaults]) may set: the same value types as `export`'s flags.
OPTION_KEYS = tuple(EXPORT_VALUE_TYPES)
# `repair = true`: as `export --repair` (damaged files set aside and fetched again; with
# `incremental = true`, a lost checkpoint rebuilt from the manifest).
ACCOUNT_KEYS = ("name", "base_url", "out", *CREDENTIAL_KEYS, *OPTION_KEYS, "repair")
DEFAULT_KEYS = tuple(k for k in ACCOUNT_KEYS if k != "name")


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


# -- the fleet file --------------------------------------------------------------------------


def load_fleet(path: Path) -> list[Account]:
    return parse_fleet(read_toml(path, "fleet file"), str(path))


def parse_fleet(data: Mapping[str, Any], source: str = "fleet file") -> list[Account]:
    """The accounts of a parsed fleet file, each with [defaults] under its own keys."""
    unknown = sorted(set(data) - {"defaults", "account"})
    if unknown:
        raise UsageError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; "
            "expected a [defaults] table and [[account]] tables"
        )
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UsageError(f"{source}: [defaults] must be a table")
    _check_keys(defaults, DEFAULT_KEYS, f"{source}: [defaults]")
    tables = data.get("account", [])
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"{source}: no accounts; add [[account]] tables with name, out, ...")
    accounts: list[Account] = []
    for number, table in enumerate(tables, 1):
        if not isinstance(table, dict):
            raise UsageError(f"{source}: account {number} must be a table")
        name = table.get("name")
        if not isinstance(name, str) or not ACCOUNT_NAME.fullmatch(name):
            raise UsageError(
                f"{source}: account {number} needs a name of letters, digits, '.', '_' or '-' "
                "(at most 64)"
            )
        where = f"{source}: account {name!r}"
        _check_keys(table, ACCOUNT_KEYS, where)
        accounts.append(_account(name, {**defaults, **table}, where))
    _check_distinct(accounts, source)
    return accounts


def _check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse inline secrets first (naming the key, never its value), then unknown keys."""
    for key in table:
        if key in INLINE_SECRETS:
            raise UsageError(
                f"{where}: {key} would put a secret in the fleet file; refused. Name where it "
                f"is instead, with {INLINE_SECRETS[key]}"
            )
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )


def _account(name: str, merged: dict[str, Any], where: str) -> Account:
    def text(key: str) -> str | None:
        value = merged.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise UsageError(f"{where}: {key} must be a non-empty string")
        # {name} makes one [defaults] path serve every account, e.g. "/backups/{name}".
        return value.replace("{name}", name)

    try:
        base_url = check_base_url(text("base_url") or DEFAULT_BASE_URL)
    except ValueError as exc:
        raise UsageError(f"{where}: base_url: {exc}") from None
    out = text("out")
    if out is None:
        raise UsageError(f"{where}: out is missing (the account's output directory)")
    out = toml_value(LocationType(), out, f"{where}: out")
    references = {key: text(key) for key in CREDENTIAL_KEYS}
    for key, value in references.items():
        if key.endswith("_env") and value is not None and not ENV_NAME.fullmatch(value):
            # Not echoed: a value that is no variable name may be the secret itself.
            raise UsageError(
                f"{where}: {key} must be the name of an environment variable "
                "(letters, digits and _), not the secret itself"
            )
    for key in ("client_id", "redirect_uri"):
        if references[key] is not None and not header_safe(references[key] or ""):
            raise UsageError(f"{where}: {key} must be {CREDENTIAL_RULE}")
    credentials = Credentials(**references)
    _check_credentials(credentials, where)
    options = {key: _option(key, merged[key], where) for key in OPTION_KEYS if key in merged}
    repair = toml_value(click.BOOL, merged.get("repair", False), f"{where}: repair")
    return Account(
        name=name,
        base_url=base_url,
        out=out,
        credentials=credentials,
        options=options,
        repair=bool(repair),
    )


def _check_credentials(c: Credentials, where: str) -> None:
    oauth_only = [k for k in OAUTH_ONLY_KEYS if getattr(c, k) is not None]
    if not c.oauth:
        if oauth_only:
            raise UsageError(f"{where}: {', '.join(oauth_only)} need client_id (OAuth)")
        if (c.token_env is None) == (c.token_file is None):
            raise UsageError(
                f"{where}: give the token by reference with one of token_env or token_file, "
                "or OAuth (client_id, client_secret_env, refresh_token_env, redirect_uri, "
                "token_file)"
            )
        return
    if c.token_env is not None:
        raise UsageError(f"{where}: token_env is for a static token; with OAuth leave it out")
    missing = []
    for label, refs in (
        ("client_secret_env or client_secret_file", (c.client_secret_env, c.client_secret_file)),
        ("refresh_token_env or refresh_token_file", (c.refresh_token_env, c.refresh_token_file)),
    ):
        given = sum(ref is not None for ref in refs)
        if given == 0:
            missing.append(label)
        elif given == 2:
            raise UsageError(f"{where}: give one of {label}, not both")
    if c.redirect_uri is None:
        missing.append("redirect_uri")
    if c.token_file is None:
        # Every run of the account must find the refresh token the last one rotated in, on
        # whichever worker it runs: a per-machine default would lose it.
        missing.append("token_file (where the rotated refresh token is kept; every worker's path)")
    if missing:
        raise UsageError(f"{where}: OAuth needs {', '.join(missing)}")


def _option(key: str, value: Any, where: str) -> Any:
    return toml_value(EXPORT_VALUE_TYPES[key], value, f"{where}: {key}")


def canonical_location(location: str, where: str = "") -> tuple[str, ...]:
    """Where a backup (or a token store) is, spelled one way, so that two spellings of one place
    compare equal: a local path resolved (`~`, `.`, `..`, symbolic links, trailing slashes),
    `file://` URIs as their path, other URIs as (scheme, bucket, prefix segments) with the
    bucket's case, credentials, port, query, `.` and empty segments left out."""
    try:
        parts = urlsplit(location)
        scheme = parts.scheme.lower()
        if not scheme or len(scheme) == 1:  # a path (C: on Windows)
            return ("file", *Path(os.path.realpath(os.path.expanduser(location))).parts)
        if scheme == "file":
            return ("file", *Path(os.path.realpath(unquote(parts.path) or "/")).parts)
        bucket = (parts.hostname or "").lower()
    except ValueError as exc:
        raise UsageError(f"{where}{redact_url(location)!r} is not a path or a URI: {exc}") from None
    segments: list[str] = []
    for segment in unquote(parts.path).split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return (scheme, bucket, *segments)


def _check_distinct(accounts: list[Account], source: str) -> None:
    """Two accounts in one directory (or one inside the other's), or rotating one refresh-token
    store, would break both; the same place spelled two ways is still the same place."""
    names: set[str] = set()
    for account in accounts:
        if account.name in names:
            raise UsageError(f"{source}: two accounts share name {account.name!r}")
        names.add(account.name)
    outs: dict[tuple[str, ...], Account] = {}
    for account in accounts:
        where = f"{source}: account {account.name!r}: out "
        location = canonical_location(account.out, where)
        other = outs.get(location)
        if other is not None:
            raise UsageError(
                f"{source}: accounts {other.name!r} and {account.name!r} share one backup: "
                f"out {redact_url(other.out)!r} and {redact_url(account.out)!r} are the same place"
            )
        outs[location] = account
    for location, account in outs.items():
        for depth in range(1, len(location)):
            outer = outs.get(location[:depth])
            if outer is not None:
                raise UsageError(
                    f"{source}: account {account.name!r}'s out {redact_url(account.out)!r} lies "
                    f"inside account {outer.name!r}'s out {redact_url(outer.out)!r}; give each "
                    "account a place of its own"
                )
    stores: dict[tuple[str, ...], Account] = {}
    for account in accounts:
        if not account.credentials.oauth or account.credentials.token_file is None:
            continue
        token_file = account.credentials.token_file
        store = canonical_location(token_file, f"{source}: account {account.name!r}: token_file ")
        other = stores.get(store)
        if other is not None:
            raise UsageError(
                f"{source}: accounts {other.name!r} and {account.name!r} share token_file "
                f"{token_file!r}: each OAuth account rotates its own refresh token"
            )
        stores[store] = account
        for depth in range(1, len(store)):
            holder = outs.get(store[:depth])
            if holder is not None:
                raise UsageError(
                    f"{source}: account {account.name!r}'s token_file {token_file!r} is inside "
                    f"account {holder.name!r}'s out: backups get copied and shared, and the "
                    "refresh token must not travel with them; keep it elsewhere"
                )


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
        return settings, StaticToken(token)
    import aiohttp

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
    credentials = OAuthCredentials(
        client_id=c.client_id,
        client_secret=client_secret,
        refresh_token=refresh_token,
        redirect_uri=c.redirect_uri,
        token_url=token_url_for(account.base_url),
    )
    store = RefreshTokenStore(Path(c.token_file))
    return settings, OAuthTokens(credentials, store, lambda: aiohttp.ClientSession())


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
    """One line, without any secret this account's token source knows."""
    return " ".join(scrub(text, known).split())[:500]


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


# -- the command -----------------------------------------------------------------------------


def summary_table(results: list[AccountResult]) -> str:
    rows = [
        (r.account, f"{r.total:,}", f"{r.requests:,}", f"{r.seconds:.1f}s", r.outcome)
        for r in results
    ]
    failures = sum(not r.ok for r in results)
    rows.append(
        (
            "total",
            f"{sum(r.total for r in results):,}",
            f"{sum(r.requests for r in results):,}",
            "",
            f"{len(results) - failures} ok, {failures} failed",
        )
    )
    header = ("account", "records", "requests", "duration", "outcome")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        name, *numbers, outcome = row
        cells = [
            name.ljust(widths[0]),
            *(n.rjust(w) for n, w in zip(numbers, widths[1:], strict=True)),
        ]
        lines.append("  ".join([*cells, outcome]))
    return "\n".join(lines)


def _progress(result: AccountResult) -> None:
    click.echo(
        f"{result.account}: {result.outcome} ({result.total:,} records, {result.seconds:.1f}s"
        + (f", on {result.process})" if result.process else ")"),
        err=True,
    )


@click.command("fleet")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Fleet file (TOML): [defaults] and one [[account]] table per account.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    help="local: this process; dask: the Dask cluster at --scheduler.",
)
@click.option(
    "--scheduler",
    envvar="DASK_SCHEDULER_ADDRESS",
    help="Dask scheduler address, e.g. tcp://10.0.0.5:8786.  [env: DASK_SCHEDULER_ADDRESS]",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="local: accounts exported at once (dask: the cluster's worker threads decide).",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 10),
    default=2,
    show_default=True,
    help="dask: reruns of an account's task after an unexpected error (a dead worker's task is "
    "rerun by the scheduler).",
)
def fleet_command(
    config_path: Path, executor: str, scheduler: str | None, parallel: int, retries: int
) -> None:
    """Export many accounts concurrently, each with its own credentials, output and rate budget."""
    try:
        accounts = load_fleet(config_path)
        if executor == "dask":
            if not scheduler:
                raise UsageError("--executor dask needs --scheduler ADDRESS (tcp://host:8786)")
            results = run_dask(accounts, scheduler, retries, _progress)
        else:
            if scheduler:
                raise UsageError("--scheduler is for --executor dask")
            results = asyncio.run(run_local(accounts, parallel, _progress))
    except ExporterError as exc:
        prefix = "stopped" if exc.exit_code is ExitCode.INTERRUPTED else "error"
        click.echo(f"{prefix}: {exc}", err=True)
        sys.exit(int(exc.exit_code))
    click.echo(summary_table(results))
    failures = [r.account for r in results if not r.ok]
    if failures:
        stopped = all(r.outcome.startswith("stopped") for r in results if not r.ok)
        click.echo(
            f"{'stopped' if stopped else 'error'}: {len(failures)} of {len(results)} "
            f"account(s) did not finish: {', '.join(failures)} (see the table); an unfinished "
            "export resumes when the fleet runs again",
            err=True,
        )
        sys.exit(int(ExitCode.INTERRUPTED if stopped else ExitCode.FAILED))


__all__ = [
    "Account",
    "AccountResult",
    "Credentials",
    "export_account",
    "fleet_command",
    "load_fleet",
    "parse_fleet",
    "run_account",
    "run_dask",
    "run_local",
]
