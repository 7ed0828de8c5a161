"""The option table: every option of the exporter's commands, declared once (flags, value type with its bounds, default, OUTREACH_* variable, help)."""

# How a command takes its options: `@options("out", "base_url", *CREDENTIALS, ...)` applies the
# table's declarations by name, in the order given (the order `--help` lists them). A config
# file (`export --config`) is checked by the same click types (`load_config`), and so is a fleet
# file's account (`ACCOUNT_OPTIONS`, `OPTIONS[key].value_type`): a bound written here holds for
# a flag, a variable, a config file and a fleet file alike.
#
# Where a command has always taken an option differently, the difference is declared here too,
# beside the table (`RESTORE_VARIANTS`), not in the command.

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from exporter.commands.values import (
    BaseUrlType,
    ConcurrencyType,
    CredentialType,
    IdList,
    LocationType,
    RateLimitType,
    RelationshipsType,
    ResourcesType,
    toml_defaults,
)
from exporter.core.bounds import DAY, BoundedInt, FiniteFloat
from exporter.core.config import DEFAULT_BASE_URL, MAX_PAGE_SIZE, load_toml_table
from exporter.restore.modes import MAX_ID, Mode

F = Callable[..., Any]


class _NoDefault:
    """An option declared without a default (click's own rules then apply)."""

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT = _NoDefault()

# The help of the few flags that are never read from a variable says why, in these words.
NOT_FROM_ENV = "Never read from the environment: "


@dataclass(frozen=True)
class OptionSpec:
    """One option as the user sees it; `decls` are click's: the flags, and the parameter's
    name where it is not the long flag's (`--run` is `run_id`)."""

    decls: tuple[str, ...]
    help: str
    type: click.ParamType[Any] | None = None
    default: object = NO_DEFAULT
    show_default: bool = False
    # Every option has its OUTREACH_* variable (a tuple: others read too, the first wins), or
    # says in its help why it is never read from the environment (`NOT_FROM_ENV`).
    envvar: str | tuple[str, ...] | None = None
    metavar: str | None = None
    is_flag: bool = False
    required: bool = False
    # --config only: read first, its file fills the other options' defaults.
    callback: Callable[[click.Context, click.Parameter, Any], Any] | None = None
    is_eager: bool = False
    expose_value: bool = True

    @property
    def value_type(self) -> click.ParamType[Any]:
        """The type a value of this option is checked and converted by (a flag's: a boolean)."""
        if self.is_flag:
            return click.BOOL
        return self.type or click.STRING

    @property
    def envvars(self) -> tuple[str, ...]:
        """The variables this option is read from, in the order click tries them."""
        if self.envvar is None:
            return ()
        return (self.envvar,) if isinstance(self.envvar, str) else self.envvar

    def decorator(self) -> Callable[[F], F]:
        help = self.help
        if self.envvars and not all(name in help for name in self.envvars):
            help += f"  [env: {' or '.join(self.envvars)}]"
        attrs: dict[str, Any] = {"help": help}
        for name, value in (
            ("type", self.type),
            ("show_default", self.show_default),
            ("envvar", list(self.envvars) if len(self.envvars) > 1 else self.envvar),
            ("metavar", self.metavar),
            ("is_flag", self.is_flag),
            ("required", self.required),
            ("callback", self.callback),
            ("is_eager", self.is_eager),
        ):
            if value:
                attrs[name] = value
        if self.default is not NO_DEFAULT:
            attrs["default"] = self.default
        if not self.expose_value:
            attrs["expose_value"] = False
        return click.option(*self.decls, **attrs)


def load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Eager: fill click's default_map from the TOML file before other options are resolved."""
    if value is None:
        return None
    table = load_toml_table(Path(value))
    params = [p for p in ctx.command.params if p.name != "config"]
    defaults = toml_defaults(table, params, value)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


OPTIONS: dict[str, OptionSpec] = {
    # -- where from, where to
    "config": OptionSpec(
        ("--config",),
        envvar="OUTREACH_CONFIG",
        type=click.Path(dir_okay=False),
        callback=load_config,
        is_eager=True,
        expose_value=False,
        help="TOML file with defaults for any option below (keys as option names, e.g. page_size).",
    ),
    "out": OptionSpec(
        ("--out",),
        type=LocationType(),
        required=True,
        envvar="OUTREACH_OUT",
        help="Output directory, or a URI: s3://bucket/prefix (endpoint, region and credentials "
        "from the AWS_* variables), file://...  [env: OUTREACH_OUT]",
    ),
    "base_url": OptionSpec(
        ("--base-url",),
        type=BaseUrlType(),
        default=DEFAULT_BASE_URL,
        show_default=True,
        envvar="OUTREACH_BASE_URL",
        help="API base URL.  [env: OUTREACH_BASE_URL]",
    ),
    # -- credentials: --token, or the OAuth refresh-token grant
    "token": OptionSpec(
        ("--token",),
        type=CredentialType(),
        envvar="OUTREACH_TOKEN",
        help="Static access token.  [env: OUTREACH_TOKEN]",
    ),
    "client_id": OptionSpec(
        ("--client-id",),
        type=CredentialType(),
        envvar="OUTREACH_CLIENT_ID",
        help="OAuth client id.  [env: OUTREACH_CLIENT_ID]",
    ),
    "client_secret": OptionSpec(
        ("--client-secret",),
        type=CredentialType(),
        envvar="OUTREACH_CLIENT_SECRET",
        help="OAuth client secret.  [env: OUTREACH_CLIENT_SECRET]",
    ),
    "refresh_token": OptionSpec(
        ("--refresh-token",),
        type=CredentialType(),
        envvar="OUTREACH_REFRESH_TOKEN",
        help="OAuth refresh token (first run; later runs use the rotated one saved in "
        "--token-file).  [env: OUTREACH_REFRESH_TOKEN]",
    ),
    "redirect_uri": OptionSpec(
        ("--redirect-uri",),
        type=CredentialType(),
        envvar="OUTREACH_REDIRECT_URI",
        help="OAuth redirect URI registered for the app.  [env: OUTREACH_REDIRECT_URI]",
    ),
    "token_file": OptionSpec(
        ("--token-file",),
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="OUTREACH_TOKEN_FILE",
        help="Where the newest refresh token is kept (mode 0600).  "
        "[default: ~/.config/outreach-exporter/refresh-token.json; env: OUTREACH_TOKEN_FILE]",
    ),
    # -- how an export asks the API
    "page_size": OptionSpec(
        ("--page-size",),
        type=BoundedInt(1, MAX_PAGE_SIZE),
        default=MAX_PAGE_SIZE,
        show_default=True,
        envvar="OUTREACH_PAGE_SIZE",
        help="Records per page (the API's maximum is 1000).  [env: OUTREACH_PAGE_SIZE]",
    ),
    "concurrency": OptionSpec(
        ("--concurrency",),
        type=ConcurrencyType(),
        metavar="auto|auto:N|N",
        default="auto",
        show_default=True,
        envvar="OUTREACH_CONCURRENCY",
        help="Requests in flight at once: auto (adaptive: from 8, between 1 and 64; grows while "
        "pages wait on latency and the request budget has room, shrinks on 429s, 5xx, timeouts "
        "and rising latency), auto:N (adaptive up to N), or N to pin it (1 to 64).  "
        "[env: OUTREACH_CONCURRENCY]",
    ),
    "rate_limit": OptionSpec(
        ("--rate-limit",),
        type=RateLimitType(),
        default="10000/3600",
        show_default=True,
        envvar="OUTREACH_RATE_LIMIT",
        help="Request budget as N/SECONDS (Outreach allows 10,000 an hour per user).  "
        "[env: OUTREACH_RATE_LIMIT]",
    ),
    "relationships": OptionSpec(
        ("--relationships",),
        type=RelationshipsType(),
        default="all",
        show_default=True,
        envvar="OUTREACH_RELATIONSHIPS",
        help="Related records to export beside the steps: all, none, or a comma list of "
        "sequence, creator, updater, callPurpose, taskPriority, sequenceTemplates, mailings, "
        "calls, tasks (or type names such as users).  [env: OUTREACH_RELATIONSHIPS]",
    ),
    "resources": OptionSpec(
        ("--resources",),
        type=ResourcesType(),
        default="sequenceSteps",
        show_default=True,
        envvar="OUTREACH_RESOURCES",
        help="Collections to export whole, each a root: a comma list of collection names "
        "(sequenceSteps, prospects, accounts, ...) or all (every readable collection).  "
        "[env: OUTREACH_RESOURCES]",
    ),
    "max_url_length": OptionSpec(
        ("--max-url-length",),
        type=BoundedInt(1024, 65536),
        default=8000,
        show_default=True,
        envvar="OUTREACH_MAX_URL_LENGTH",
        help="Longest request URL the batched relationship fetches may build.",
    ),
    # -- what an export does
    "incremental": OptionSpec(
        ("--incremental",),
        is_flag=True,
        envvar="OUTREACH_INCREMENTAL",
        help="Add only what changed since the last finished run in --out (a full run first if "
        "none), in <type>/run=<id>/.  [env: OUTREACH_INCREMENTAL]",
    ),
    "overlap": OptionSpec(
        ("--overlap",),
        type=FiniteFloat(0.0, 365 * DAY),
        default=300.0,
        show_default=True,
        envvar="OUTREACH_OVERLAP",
        help="Seconds an incremental window reaches back before the last run's mark (the API can "
        "be eventually consistent); records already exported are not written twice.",
    ),
    "detect_deletes": OptionSpec(
        ("--detect-deletes",),
        is_flag=True,
        envvar="OUTREACH_DETECT_DELETES",
        help="Check every id of the backup against the API and write tombstones for the gone ones.",
    ),
    "restart": OptionSpec(
        ("--restart",),
        is_flag=True,
        help="Discard the backup in --out first: only files this tool wrote (README, Resuming). "
        + NOT_FROM_ENV
        + "a variable left set would discard every later backup too.",
    ),
    "repair": OptionSpec(
        ("--repair",),
        envvar="OUTREACH_REPAIR",
        is_flag=True,
        help="Set damaged committed files aside and fetch their records again; rebuild a lost "
        "checkpoint of a finished backup from its manifest (with --incremental).",
    ),
    # -- how long things may take, how big they may grow
    "commit_interval": OptionSpec(
        ("--commit-interval",),
        type=FiniteFloat(0.05, DAY),
        default=30.0,
        show_default=True,
        envvar="OUTREACH_COMMIT_INTERVAL",
        help="Seconds between commits: the most work a kill can lose.  "
        "[env: OUTREACH_COMMIT_INTERVAL]",
    ),
    "read_timeout": OptionSpec(
        ("--read-timeout",),
        type=FiniteFloat(0.1, 3600.0),
        default=120.0,
        show_default=True,
        envvar="OUTREACH_READ_TIMEOUT",
        help="Seconds an answer may stay silent (before its headers or between bytes of its body) "
        "before the request is retried.  [env: OUTREACH_READ_TIMEOUT]",
    ),
    "request_deadline": OptionSpec(
        ("--request-deadline",),
        type=FiniteFloat(1.0, DAY),
        default=300.0,
        show_default=True,
        envvar="OUTREACH_REQUEST_DEADLINE",
        metavar="SECONDS",
        help="Seconds from sending a request to the last byte of its answer, however it "
        "trickles, before the request is retried.  [env: OUTREACH_REQUEST_DEADLINE]",
    ),
    "max_response_mib": OptionSpec(
        ("--max-response-mib",),
        type=BoundedInt(1, 16 * 1024),
        default=256,
        show_default=True,
        envvar="OUTREACH_MAX_RESPONSE_MIB",
        metavar="N",
        help="MiB one answer may hold once decompressed; a bigger one is refused as a fault.  "
        "[env: OUTREACH_MAX_RESPONSE_MIB]",
    ),
    "file_rows": OptionSpec(
        ("--file-rows",),
        type=BoundedInt(1, 1_000_000_000),
        default=1_000_000,
        show_default=True,
        envvar="OUTREACH_FILE_ROWS",
        help="Roll to a new Parquet file after this many rows.",
    ),
    # -- the built-in demo
    "demo": OptionSpec(
        ("--demo",),
        envvar="OUTREACH_DEMO",
        is_flag=True,
        help="Start the built-in simulator on a free loopback port and export from it.",
    ),
    "demo_steps": OptionSpec(
        ("--demo-steps",),
        envvar="OUTREACH_DEMO_STEPS",
        type=BoundedInt(1, 5_000_000),
        default=10_000,
        show_default=True,
        help="Sequence steps the demo simulator holds.",
    ),
    "demo_seed": OptionSpec(
        ("--demo-seed",),
        envvar="OUTREACH_DEMO_SEED",
        type=BoundedInt(0, 2**32 - 1),
        default=1,
        show_default=True,
        help="Seed of the demo data.",
    ),
    # -- what a long run prints
    "progress_interval": OptionSpec(
        ("--progress-interval",),
        type=FiniteFloat(0.05, DAY),
        default=10.0,
        show_default=True,
        envvar="OUTREACH_PROGRESS_INTERVAL",
        help="Seconds between progress lines when stderr is not a terminal.",
    ),
    "metrics_file": OptionSpec(
        ("--metrics-file",),
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="OUTREACH_METRICS_FILE",
        metavar="PATH",
        help="Write the run's outcome here in the Prometheus text format, atomically (for the "
        "node exporter's textfile collector: name it *.prom): exit code, end time, last "
        "success time, duration, records and requests per type.",
    ),
    "quiet": OptionSpec(
        ("--quiet", "-q"),
        envvar="OUTREACH_QUIET",
        is_flag=True,
        help="Print only errors and the result.",
    ),
    "verbose": OptionSpec(
        ("--verbose", "-v"),
        envvar="OUTREACH_VERBOSE",
        is_flag=True,
        help="Also log every request (method, URL, status, time).",
    ),
    "log_format": OptionSpec(
        ("--log-format",),
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        envvar="OUTREACH_LOG_FORMAT",
        help="json: one JSON object per line on stderr (progress, events, errors), for schedulers.",
    ),
    # -- restore
    "run_id": OptionSpec(
        ("--run", "run_id"),
        envvar="OUTREACH_RESTORE_RUN",
        help="Restore the state as of this run id.  [default: newest]",
    ),
    "ids": OptionSpec(
        ("--ids",),
        envvar="OUTREACH_RESTORE_IDS",
        type=IdList(MAX_ID),
        help="Only these backed-up step ids (comma list).",
    ),
    "sequence": OptionSpec(
        ("--sequence",),
        envvar="OUTREACH_RESTORE_SEQUENCE",
        type=BoundedInt(1, MAX_ID),
        help="Only the backed-up steps of this sequence.",
    ),
    "mode": OptionSpec(
        ("--mode",),
        envvar="OUTREACH_RESTORE_MODE",
        type=click.Choice([m.value for m in Mode]),
        default=Mode.BOTH.value,
        show_default=True,
        help="recreate: only create gone steps; rollback: only patch changed ones; both.",
    ),
    "apply": OptionSpec(
        ("--apply",),
        is_flag=True,
        help="Write. Without it restore only reads and prints its plan. "
        + NOT_FROM_ENV
        + "writing to an account is asked for on the command line each time.",
    ),
    "journal": OptionSpec(
        ("--journal",),
        envvar="OUTREACH_RESTORE_JOURNAL",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write journal.  [default: DIR/_restore/<target account>-journal.jsonl; for a "
        "backup on an object store, $XDG_STATE_HOME/outreach-exporter/restore/]",
    ),
    "lookup_delay": OptionSpec(
        ("--lookup-delay",),
        envvar="OUTREACH_LOOKUP_DELAY",
        type=FiniteFloat(0, 3600),
        default=2.0,
        show_default=True,
        help="Seconds to wait after a write whose answer was lost before looking it up (a create "
        "not found is never sent again on that account; see --resend-lost).",
    ),
    "resend_lost": OptionSpec(
        ("--resend-lost",),
        is_flag=True,
        help="Send again the creates whose answer was lost and that a last lookup does not find. "
        "Only once you have checked the target yourself: a lost create may still land later. "
        + NOT_FROM_ENV
        + "a variable left set would skip that check on every later restore.",
    ),
    "into_another_account": OptionSpec(
        ("--into-another-account",),
        envvar="OUTREACH_INTO_ANOTHER_ACCOUNT",
        is_flag=True,
        help="Restore a backup of another account: only create its steps (never patch by id).",
    ),
    # -- fleet
    "config_path": OptionSpec(
        ("--config", "config_path"),
        envvar="OUTREACH_FLEET_CONFIG",
        type=click.Path(dir_okay=False, path_type=Path),
        required=True,
        help="Fleet file (TOML): [defaults] and one [[account]] table per account.",
    ),
    "executor": OptionSpec(
        ("--executor",),
        envvar="OUTREACH_FLEET_EXECUTOR",
        type=click.Choice(["local", "dask"]),
        default="local",
        show_default=True,
        help="local: this process; dask: the Dask cluster at --scheduler.",
    ),
    "scheduler": OptionSpec(
        ("--scheduler",),
        envvar=("OUTREACH_SCHEDULER", "DASK_SCHEDULER_ADDRESS"),
        help="Dask scheduler address, e.g. tcp://10.0.0.5:8786.",
    ),
    "parallel": OptionSpec(
        ("--parallel",),
        envvar="OUTREACH_FLEET_PARALLEL",
        type=click.IntRange(1, 256),
        default=4,
        show_default=True,
        help="local: accounts exported at once (dask: the cluster's worker threads decide).",
    ),
    "retries": OptionSpec(
        ("--retries",),
        envvar="OUTREACH_FLEET_RETRIES",
        type=click.IntRange(0, 10),
        default=2,
        show_default=True,
        help="dask: reruns of an account's task after an unexpected error (a dead worker's task "
        "is rerun by the scheduler).",
    ),
    # -- verify, status, compact
    "as_json": OptionSpec(
        ("--json", "as_json"),
        envvar="OUTREACH_JSON",
        is_flag=True,
        help="Print a machine-readable JSON report.",
    ),
    "shown": OptionSpec(
        ("--runs", "shown"),
        envvar="OUTREACH_STATUS_RUNS",
        default="10",
        show_default=True,
        metavar="N|all",
        help="How many of the newest runs to list (the totals always cover every run).",
    ),
    "into": OptionSpec(
        ("--into",),
        envvar="OUTREACH_COMPACT_INTO",
        help="Where to publish the current state (_current.json naming gen-*/<collection>.parquet)."
        "  [default: DIR/_current]",
    ),
}

CREDENTIALS = ("token", "client_id", "client_secret", "refresh_token", "redirect_uri", "token_file")

# The export options a fleet account (or its [defaults]) may set, beside base_url, out and
# repair; checked by the same types as the flags.
ACCOUNT_OPTIONS = (
    "page_size",
    "concurrency",
    "rate_limit",
    "relationships",
    "resources",
    "max_url_length",
    "overlap",
    "commit_interval",
    "read_timeout",
    "request_deadline",
    "max_response_mib",
    "file_rows",
    "incremental",
    "detect_deletes",
)

# `restore` has always taken these two differently from `export`: fewer requests in flight by
# default, its own variable (OUTREACH_RESTORE_CONCURRENCY: an export's is no restore's), a plain whole number (click's IntRange, which reads `1_0`),
# and a shorter help line.
RESTORE_VARIANTS = {
    "concurrency": replace(
        OPTIONS["concurrency"],
        type=click.IntRange(1, 64),
        default=4,
        metavar=None,
        envvar="OUTREACH_RESTORE_CONCURRENCY",
        help="Requests in flight at once.",
    ),
    "rate_limit": replace(OPTIONS["rate_limit"], help="Request budget as N/SECONDS."),
}


def options(*names: str, variants: Mapping[str, OptionSpec] | None = None) -> Callable[[F], F]:
    """The table's options `names` (or a command's `variants` of them), in `--help` order."""
    specs = [(variants or {}).get(name) or OPTIONS[name] for name in names]

    def apply(command: F) -> F:
        for spec in reversed(specs):
            command = spec.decorator()(command)
        return command

    return apply
