"""`exporter fleet`: the fleet file, many accounts at once, a failing account, and a Dask worker killed mid-export."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from exporter.backup import checkpoint
from exporter.commands.fleet_file import parse_fleet
from exporter.core.config import Concurrency
from exporter.core.errors import ExitCode, UsageError
from exporter.core.times import utc_now
from exporter.fleet.fleet import Account, export_account, resolve
from exporter.simulator import Faults, Simulator, SimulatorConfig, serve_in_thread
from tests.helpers.checks import assert_exact_for_seed
from tests.helpers.runs import run_exporter
from tests.helpers.sim import TOKEN, StartSimulator, clean_env
from tests.helpers.truth import (
    assert_rows_equal,
    expected_steps,
)

IDENTITY = 1  # requests an export spends confirming whose backup `out` holds (`account.identify`)
FAST = {"rate_limit": "100000/1", "relationships": "none", "page_size": 100, "concurrency": 2}


def parse(text: str) -> list[Account]:
    import tomllib

    return parse_fleet(tomllib.loads(text), "fleet.toml")


def fleet_toml(defaults: dict[str, Any], accounts: list[dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return orjson.dumps(v).decode() if isinstance(v, str) else str(v)

    lines = ["[defaults]", *(f"{k} = {value(v)}" for k, v in defaults.items())]
    for account in accounts:
        lines += ["", "[[account]]", *(f"{k} = {value(v)}" for k, v in account.items())]
    return "\n".join(lines) + "\n"


def assert_no_secret(secret: str, *texts: str, under: Path) -> None:
    for text in texts:
        assert secret not in text
    for produced in under.rglob("*"):
        if produced.is_file():
            assert secret.encode() not in produced.read_bytes(), produced


# -- the fleet file ----------------------------------------------------------------------------


def test_fleet_file_defaults_overrides_and_references() -> None:
    accounts = parse(
        """
        [defaults]
        base_url = "http://127.0.0.1:9/api/v2"
        out = "/backups/{name}"
        concurrency = 4
        rate_limit = "5000/3600"
        relationships = "none"

        [[account]]
        name = "acme"
        token_env = "ACME_TOKEN"
        concurrency = 2
        incremental = true

        [[account]]
        name = "globex"
        out = "/elsewhere/globex"
        client_id = "app-1"
        client_secret_env = "APP_SECRET"
        refresh_token_file = "/run/secrets/globex-refresh"
        redirect_uri = "https://example.invalid/cb"
        token_file = "/state/{name}.json"
        """
    )
    acme, globex = accounts
    assert (acme.name, acme.out, acme.base_url) == (
        "acme",
        "/backups/acme",
        "http://127.0.0.1:9/api/v2",
    )
    assert acme.options["concurrency"] == Concurrency(pinned=2)
    assert acme.options["incremental"] is True
    assert str(acme.options["rate_limit"]) == "5000/3600"
    assert acme.credentials.token_env == "ACME_TOKEN" and not acme.credentials.oauth
    assert globex.out == "/elsewhere/globex" and globex.options["concurrency"] == Concurrency(
        pinned=4
    )
    assert globex.credentials.oauth and globex.credentials.token_file == "/state/globex.json"
    assert "incremental" not in globex.options


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("token", "sk-live-123456", ["'acme'", "token", "token_env"]),
        ("client_secret", "shh-987654", ["'acme'", "client_secret", "client_secret_env"]),
        ("refresh_token", "rt-555555", ["'acme'", "refresh_token", "refresh_token_file"]),
    ],
)
def test_inline_secrets_are_refused_naming_account_and_key(
    key: str, value: str, words: list[str]
) -> None:
    with pytest.raises(UsageError) as caught:
        parse(f'[[account]]\nname = "acme"\nout = "/o"\ntoken_env = "T"\n{key} = "{value}"\n')
    message = str(caught.value)
    assert value not in message
    assert "secret" in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '[[account]]\nname = "acme"\nout = "/o"\ntoken_env = "T"\npagesize = 5\n',
            ["'acme'", "pagesize"],
        ),
        (
            '[defaults]\nconcurency = 2\n[[account]]\nname = "a"\nout = "/o"\ntoken_env = "T"\n',
            ["[defaults]", "concurency"],
        ),
        (
            '[export]\npage_size = 5\n[[account]]\nname = "a"\nout = "/o"\ntoken_env = "T"\n',
            ["export"],
        ),
        ('[[account]]\nname = "acme"\nout = "/o"\n', ["'acme'", "token_env or token_file"]),
        ('[[account]]\nname = "acme"\ntoken_env = "T"\n', ["'acme'", "out"]),
        (
            '[[account]]\nname = "acme"\nout = "/o"\ntoken_env = "not a name!"\n',
            ["'acme'", "token_env", "environment variable"],
        ),
        (
            '[[account]]\nname = "acme"\nout = "/o"\ntoken_env = "T"\npage_size = 5000\n',
            ["'acme'", "page_size"],
        ),
        (
            '[[account]]\nname = "acme"\nout = "/o"\ntoken_env = "T"\nrate_limit = "fast"\n',
            ["'acme'", "rate_limit"],
        ),
        (
            '[[account]]\nname = "acme"\nout = "/o"\ntoken_env = "T"\nrelationships = "prospects"\n',
            ["'acme'", "prospects"],
        ),
        (
            '[[account]]\nname = "acme"\nout = "/o"\ntoken_env = "T"\nbase_url = "ftp://x"\n',
            ["'acme'", "base_url"],
        ),
        (
            '[[account]]\nname = "a"\nout = "/o"\ntoken_env = "T"\n[[account]]\nname = "b"\nout = "/o"\ntoken_env = "U"\n',
            ["'a'", "'b'", "share one backup", "/o"],
        ),
        (
            '[[account]]\nname = "acme"\nout = "/o"\nclient_id = "c"\nclient_secret_env = "S"\nrefresh_token_env = "R"\nredirect_uri = "https://x.invalid/cb"\n',
            ["'acme'", "token_file"],
        ),
        ('[[account]]\nname = "../etc"\nout = "/o"\ntoken_env = "T"\n', ["account 1", "name"]),
    ],
)
def test_bad_fleet_files_are_refused_with_a_clear_error(text: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as caught:
        parse(text)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_references_resolve_where_the_task_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "secret"
    token_file.write_text("from-a-file-123\n")
    [by_env, by_file] = parse(
        f'[[account]]\nname = "env"\nout = "{tmp_path}/e"\ntoken_env = "FLEET_TEST_TOKEN"\n'
        f'[[account]]\nname = "file"\nout = "{tmp_path}/f"\ntoken_file = "{token_file}"\n'
    )
    monkeypatch.delenv("FLEET_TEST_TOKEN", raising=False)
    with pytest.raises(
        UsageError, match=r"account 'env': token_env names FLEET_TEST_TOKEN, which is not set"
    ):
        resolve(by_env)
    monkeypatch.setenv("FLEET_TEST_TOKEN", "from-the-env-456")
    settings, tokens = resolve(by_env)
    assert tokens.secrets() == ["from-the-env-456"] and str(settings.out) == f"{tmp_path}/e"
    _settings, tokens = resolve(by_file)
    assert tokens.secrets() == ["from-a-file-123"]
    token_file.unlink()
    with pytest.raises(UsageError, match=r"account 'file': token_file .* does not exist"):
        resolve(by_file)


def test_missing_dask_is_a_clear_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.fleet.fleet import import_distributed

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(UsageError, match=r"pip install 'outreach-exporter\[fleet\]'"):
        import_distributed()


# -- one account's task ------------------------------------------------------------------------


async def test_rerun_after_a_finished_attempt_counts_as_success(
    start_simulator: StartSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies after the export finished, before reporting: the rerun is a success."""
    running = await start_simulator(steps=300, seed=4)
    monkeypatch.setenv("FLEET_TEST_TOKEN", TOKEN)
    [account] = parse(
        f'[[account]]\nname = "acme"\nout = "{tmp_path}"\nbase_url = "{running.base_url}"\n'
        'token_env = "FLEET_TEST_TOKEN"\nrate_limit = "100000/1"\nrelationships = "none"\n'
    )
    fleet_started = utc_now()
    first = await export_account(account, fleet_started)
    assert first.ok and first.outcome == "ok" and first.records == {"sequenceStep": 300}
    requests = running.sim.counters.requests
    again = await export_account(account, fleet_started)
    assert again.ok and again.outcome == "ok, finished by an earlier attempt"
    assert again.records == first.records and again.run_id == first.run_id
    # Nothing fetched twice: one request, the export's check of whose backup it is.
    assert running.sim.counters.requests == requests + IDENTITY
    # A later fleet run (the fleet run again after a kill): the finished backup is done.
    later = await export_account(account, utc_now())
    assert later.ok and later.outcome.startswith(f"ok, already done (run {first.run_id} ")
    assert later.records == first.records and later.run_id == first.run_id
    assert running.sim.counters.requests == requests + 2 * IDENTITY
    # The same account, incremental: a later fleet run adds what changed since.
    incremental = replace(account, options={**account.options, "incremental": True})
    nightly = await export_account(incremental, utc_now())
    assert nightly.ok and nightly.outcome == "ok" and nightly.run_id != first.run_id
    state = checkpoint.load(tmp_path)
    assert state is not None and state.kind == "incremental" and state.run_id == nightly.run_id


# -- the command, local executor ---------------------------------------------------------------


@contextlib.contextmanager
def simulators_in_threads(*specs: tuple[int, int]) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        urls = []
        for steps, seed in specs:
            sim = Simulator(
                SimulatorConfig(
                    steps=steps, seed=seed, static_token=TOKEN, faults=Faults(latency_s=0.002)
                )
            )
            urls.append(stack.enter_context(serve_in_thread(sim)) + "/api/v2")
        yield urls


@pytest.mark.slow
def test_local_fleet_exports_every_account_exactly(tmp_path: Path) -> None:
    (tmp_path / "beta-token").write_text(TOKEN)
    with simulators_in_threads((1200, 21), (700, 22)) as (alpha_url, beta_url):
        config = tmp_path / "fleet.toml"
        config.write_text(
            fleet_toml(
                {**FAST, "out": f"{tmp_path}/out/{{name}}"},
                [
                    {"name": "alpha", "base_url": alpha_url, "token_env": "ALPHA_TOKEN"},
                    {
                        "name": "beta",
                        "base_url": beta_url,
                        "token_file": str(tmp_path / "beta-token"),
                        "concurrency": 1,
                    },
                ],
            )
        )
        result = run_exporter("fleet", "--config", str(config), env={"ALPHA_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["account", "records", "requests", "duration", "outcome"]
    assert lines[1].split()[:2] == ["alpha", "1,200"] and lines[1].endswith("  ok")
    assert lines[2].split()[:2] == ["beta", "700"] and lines[2].endswith("  ok")
    assert lines[3].split()[:2] == ["total", "1,900"] and lines[3].endswith("2 ok, 0 failed")
    assert_exact_for_seed(tmp_path / "out" / "alpha", 1200, 21)
    assert_exact_for_seed(tmp_path / "out" / "beta", 700, 22)
    beta_manifest = orjson.loads((tmp_path / "out" / "beta" / "_manifest.json").read_bytes())
    assert beta_manifest["parameters"]["concurrency"] == 1  # the account's own override
    assert_no_secret(TOKEN, result.stdout, result.stderr, under=tmp_path / "out")


@pytest.mark.slow
def test_one_failing_account_is_named_and_the_others_finish(tmp_path: Path) -> None:
    with simulators_in_threads((900, 23), (400, 24)) as (good_url, bad_url):
        config = tmp_path / "fleet.toml"
        config.write_text(
            fleet_toml(
                {**FAST, "out": f"{tmp_path}/out/{{name}}"},
                [
                    {"name": "bad-token", "base_url": bad_url, "token_env": "WRONG_TOKEN"},
                    {"name": "good", "base_url": good_url, "token_env": "GOOD_TOKEN"},
                    {"name": "no-env", "base_url": good_url, "token_env": "UNSET_TOKEN"},
                ],
            )
        )
        wrong = "wrong-token-0c4e7a"
        result = run_exporter(
            "fleet", "--config", str(config), env={"GOOD_TOKEN": TOKEN, "WRONG_TOKEN": wrong}
        )
    assert result.returncode == ExitCode.FAILED, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "401" in rows["bad-token"] and "failed:" in rows["bad-token"]
    assert int(rows["bad-token"].split()[2]) >= 1  # its requests are counted all the same
    assert rows["good"].split()[1] == "900" and rows["good"].endswith("  ok")
    assert "UNSET_TOKEN" in rows["no-env"] and "not set" in rows["no-env"]
    assert rows["total"].endswith("1 ok, 2 failed")
    [summary] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "bad-token, no-env" in summary and "good" not in summary.replace("no-env", "")
    assert_exact_for_seed(tmp_path / "out" / "good", 900, 23)
    assert_no_secret(wrong, result.stdout, result.stderr, under=tmp_path / "out")


@pytest.mark.slow
def test_bad_fleet_file_exits_2_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text('[[account]]\nname = "acme"\nout = "/o"\ntoken = "sk-inline-778899"\n')
    result = run_exporter("fleet", "--config", str(config), env={})
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.count("\n") == 1 and "'acme'" in result.stderr
    assert "sk-inline-778899" not in result.stderr


# -- the command, Dask executor: a worker killed mid-export ------------------------------------


@contextlib.contextmanager
def simulator_process(steps: int, seed: int, latency: float) -> Iterator[str]:
    command = [
        sys.executable, "-m", "exporter", "simulate", "--host", "127.0.0.1", "--port", "0",
        "--steps", str(steps), "--seed", str(seed), "--token", TOKEN,
        "--rate-limit", "100000/1", "--latency", str(latency),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = next(w for w in line.split() if w.startswith("http://127.0.0.1:"))
        yield url.rstrip("/")
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def committed_files(out: Path) -> tuple[str, int] | None:
    with contextlib.suppress(UsageError, FileNotFoundError):
        state = checkpoint.load(out)
        if state is not None and state.committed_files():
            return state.run_id, len(state.committed_files())
    return None


@pytest.mark.slow
def test_dask_worker_killed_mid_export_resumes_elsewhere_exactly(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    specs = {"alpha": (3000, 31), "beta": (2000, 32)}
    with contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(simulator_process(steps, seed, latency=0.08))
            for name, (steps, seed) in specs.items()
        }
        cluster = stack.enter_context(
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                # Its HTTP server starts even without a dashboard (on 0.0.0.0:8787 unless told
                # otherwise): keep it on loopback, on a free port.
                dashboard_address="127.0.0.1:0",
            )
        )
        client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
        config = tmp_path / "fleet.toml"
        config.write_text(
            fleet_toml(
                {
                    **FAST,
                    "page_size": 50,
                    "commit_interval": 0.1,
                    "out": f"{tmp_path}/out/{{name}}",
                    "token_file": str(token_file),
                },
                [{"name": name, "base_url": url} for name, url in urls.items()],
            )
        )
        env = clean_env()
        fleet = subprocess.Popen(
            [sys.executable, "-m", "exporter", "fleet", "--config", str(config),
             "--executor", "dask", "--scheduler", cluster.scheduler_address],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        stack.callback(lambda: fleet.poll() is None and fleet.kill())

        # Wait until alpha has committed files, then kill the worker process exporting it.
        alpha_out = tmp_path / "out" / "alpha"
        deadline = time.monotonic() + 60
        while (before := committed_files(alpha_out)) is None:
            assert time.monotonic() < deadline, "alpha never committed a file"
            assert fleet.poll() is None, fleet.communicate()
            time.sleep(0.05)
        processing = client.processing()
        [address] = [w for w, keys in processing.items() if any("alpha" in str(k) for k in keys)]
        [nanny] = [n for n in cluster.workers.values() if n.worker_address == address]
        killed = nanny.process.pid
        os.kill(killed, signal.SIGKILL)
        assert not (alpha_out / "_manifest.json").exists()  # killed mid-export, not after

        stdout, stderr = fleet.communicate(timeout=90)
    assert fleet.returncode == 0, (stdout, stderr)
    rows = {line.split()[0]: line for line in stdout.splitlines()[1:]}
    assert rows["alpha"].endswith("ok, resumed"), stdout  # the rerun went on from the checkpoint
    assert rows["beta"].split()[1] == "2,000" and "ok" in rows["beta"]
    assert rows["alpha"].split()[1] == "3,000"
    manifest = orjson.loads((alpha_out / "_manifest.json").read_bytes())
    assert manifest["run_id"] == before[0]  # the same run, finished by another worker
    for name, (steps, seed) in specs.items():
        assert_exact_for_seed(tmp_path / "out" / name, steps, seed)
    assert_no_secret(TOKEN, stdout, stderr, under=tmp_path / "out")


# -- one backup per account, however its place is spelled --------------------------------------


def two_accounts(out_a: str, out_b: str) -> str:
    return (
        f'[[account]]\nname = "a"\nout = "{out_a}"\ntoken_env = "T"\n'
        f'[[account]]\nname = "b"\nout = "{out_b}"\ntoken_env = "U"\n'
    )


@pytest.mark.parametrize(
    ("out_a", "out_b"),
    [
        ("/x/o/same", "/x/o/./same/"),
        ("/x/o/same", "/x/o/other/../same"),
        ("/x/o/same", "//x//o/same"),
        ("/x/o/same", "file:///x/o/same"),
        ("s3://bucket/p", "s3://BUCKET/./p/"),
        ("s3://bucket/p", "s3://bucket//p"),
        ("s3://bucket/p", "s3://bucket:443/p"),
    ],
)
def test_one_place_spelled_two_ways_is_one_backup(out_a: str, out_b: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse(two_accounts(out_a, out_b))
    message = str(caught.value)
    assert "'a'" in message and "'b'" in message and "share one backup" in message


def test_a_symlinked_spelling_of_one_place_is_one_backup(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UsageError, match="share one backup"):
        parse(two_accounts(f"{tmp_path}/real/acme", f"{tmp_path}/link/acme"))


def test_credentials_in_an_s3_out_are_not_echoed() -> None:
    with pytest.raises(UsageError) as caught:
        parse(two_accounts("s3://bucket/p", "s3://AKIAKEY:sEcReT-8812@bucket/p/"))
    assert "share one backup" in str(caught.value) and "sEcReT-8812" not in str(caught.value)


@pytest.mark.parametrize(
    ("out_a", "out_b"),
    [("/x/o", "/x/o/acme"), ("/x/o/acme/sequenceSteps", "/x/o/./acme"), ("s3://b/p", "s3://b/p/q")],
)
def test_one_account_inside_another_is_refused(out_a: str, out_b: str) -> None:
    with pytest.raises(UsageError, match="lies inside account"):
        parse(two_accounts(out_a, out_b))


@pytest.mark.parametrize(
    ("out_a", "out_b"),
    [
        ("/x/o", "/x/o2"),
        ("s3://b/p1", "s3://b/p10"),
        ("s3://b/p", "s3://c/p"),
        ("/x/o", "s3://x/o"),
    ],
)
def test_distinct_places_are_accepted(out_a: str, out_b: str) -> None:
    assert [a.out for a in parse(two_accounts(out_a, out_b))] == [out_a, out_b]


def oauth_account(name: str, out: str, token_file: str) -> str:
    return (
        f'[[account]]\nname = "{name}"\nout = "{out}"\nclient_id = "c"\nclient_secret_env = "S"\n'
        f'refresh_token_env = "R"\nredirect_uri = "https://x.invalid/cb"\n'
        f'token_file = "{token_file}"\n'
    )


def test_one_token_store_spelled_two_ways_is_refused() -> None:
    text = oauth_account("a", "/o/a", "/s/t.json") + oauth_account("b", "/o/b", "/s/./t.json")
    with pytest.raises(UsageError, match="share token_file"):
        parse(text)


def test_a_token_store_inside_an_out_is_refused() -> None:
    text = oauth_account("a", "/o/a", "/o/b/secrets/t.json") + (
        '[[account]]\nname = "b"\nout = "/o/b"\ntoken_env = "T"\n'
    )
    with pytest.raises(UsageError, match=r"token_file '/o/b/secrets/t.json' is inside account 'b'"):
        parse(text)


@pytest.mark.slow
def test_shared_out_is_refused_by_the_command_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(two_accounts(f"{tmp_path}/o/same", f"{tmp_path}/o/./same/"))
    result = run_exporter("fleet", "--config", str(config), env={})
    assert result.returncode == ExitCode.USAGE, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "share one backup" in result.stderr
    assert not (tmp_path / "o").exists()


# -- running the fleet again after it was killed -----------------------------------------------


@pytest.mark.slow
def test_fleet_killed_and_run_again_finishes_everything_without_redoing(tmp_path: Path) -> None:
    """SIGKILL the fleet after one account finished and while another is half done: the next
    run reports the finished one as done (nothing fetched again) and resumes the other."""
    specs = {"alpha": (200, 41), "beta": (3000, 42)}
    sims = {
        "alpha": Simulator(SimulatorConfig(steps=200, seed=41, static_token=TOKEN)),
        "beta": Simulator(
            SimulatorConfig(steps=3000, seed=42, static_token=TOKEN, faults=Faults(latency_s=0.15))
        ),
    }
    with contextlib.ExitStack() as stack:
        urls = {n: stack.enter_context(serve_in_thread(s)) + "/api/v2" for n, s in sims.items()}
        config = tmp_path / "fleet.toml"
        config.write_text(
            fleet_toml(
                {**FAST, "page_size": 50, "commit_interval": 0.1, "out": f"{tmp_path}/{{name}}"},
                [
                    {"name": name, "base_url": url, "token_env": "FLEET_TOKEN"}
                    for name, url in urls.items()
                ],
            )
        )
        env = clean_env()
        fleet = subprocess.Popen(
            [sys.executable, "-m", "exporter", "fleet", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**env, "FLEET_TOKEN": TOKEN},
        )  # fmt: skip
        stack.callback(lambda: fleet.poll() is None and fleet.kill())
        alpha, beta = tmp_path / "alpha", tmp_path / "beta"
        deadline = time.monotonic() + 90
        while not ((alpha / "_manifest.json").exists() and committed_files(beta) is not None):
            assert time.monotonic() < deadline, "alpha never finished or beta never committed"
            assert fleet.poll() is None, fleet.communicate()
            time.sleep(0.05)
        fleet.kill()  # SIGKILL: no handler runs, nothing is committed on the way out
        fleet.communicate()
        assert not (beta / "_manifest.json").exists()  # killed mid-export, not after
        alpha_state = checkpoint.load(alpha)
        assert alpha_state is not None and alpha_state.status == "complete"
        alpha_requests = sims["alpha"].counters.requests

        again = run_exporter("fleet", "--config", str(config), env={"FLEET_TOKEN": TOKEN})
        assert again.returncode == 0, (again.stdout, again.stderr)
        assert "Traceback" not in again.stderr
        rows = {line.split()[0]: line for line in again.stdout.splitlines()[1:]}
        assert f"ok, already done (run {alpha_state.run_id} finished" in rows["alpha"]
        assert rows["alpha"].split()[1] == "200"
        assert rows["beta"].endswith("ok, resumed") and rows["beta"].split()[1] == "3,000"
        assert rows["total"].endswith("2 ok, 0 failed")
        # Nothing fetched again: one request, the export's check of whose backup it is.
        assert sims["alpha"].counters.requests == alpha_requests + IDENTITY

        # And once more: both are done now.
        third = run_exporter("fleet", "--config", str(config), env={"FLEET_TOKEN": TOKEN})
        assert third.returncode == 0, (third.stdout, third.stderr)
        assert third.stdout.count("ok, already done") == 2
    for name, (steps, seed) in specs.items():
        assert_exact_for_seed(tmp_path / name, steps, seed)
    manifest = checkpoint.load(alpha)
    assert manifest is not None and manifest.run_id == alpha_state.run_id


async def test_a_rerun_never_counts_another_sources_backup_as_done(
    start_simulator: StartSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'already done' only for a finished backup of the account's own source (its base URL,
    however spelled); another source's finished backup is refused by the export's own check
    of whose backup it is (one request), naming both."""
    first, other = await start_simulator(steps=50, seed=6), await start_simulator(steps=50, seed=7)
    monkeypatch.setenv("FLEET_TEST_TOKEN", TOKEN)

    def account(base_url: str) -> Account:
        [parsed] = parse(
            f'[[account]]\nname = "acme"\nout = "{tmp_path}"\nbase_url = "{base_url}"\n'
            'token_env = "FLEET_TEST_TOKEN"\nrate_limit = "100000/1"\nrelationships = "none"\n'
        )
        return parsed

    done = await export_account(account(first.base_url), utc_now())
    assert done.ok and done.outcome == "ok"
    respelled = first.base_url.replace("http://127.0.0.1", "HTTP://127.0.0.1") + "/"
    again = await export_account(account(respelled), utc_now())
    assert again.ok and again.outcome.startswith("ok, already done"), again.outcome
    elsewhere = await export_account(account(other.base_url), utc_now())
    assert not elsewhere.ok and "holds a backup of" in elsewhere.outcome, elsewhere.outcome
    assert other.sim.counters.requests == IDENTITY  # refused before anything is fetched


async def test_swapped_tokens_never_report_another_orgs_backup_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: "already done" compared only the source URL, so after the fleet file's
    tokens were swapped between two accounts of one API host, each account was reported done
    holding the other org's backup. Only the export's `FinishedExport` (raised after it
    confirmed the account) counts as done now."""
    from exporter.simulator import serve

    monkeypatch.setenv("FLEET_TEST_TOKEN", TOKEN)
    first = Simulator(SimulatorConfig(steps=60, seed=8, static_token=TOKEN, org_guid="org-acme"))
    async with contextlib.AsyncExitStack() as stack:
        root = await stack.enter_async_context(serve(first, port=0))
        [account] = parse(
            f'[[account]]\nname = "acme"\nout = "{tmp_path}"\nbase_url = "{root}/api/v2"\n'
            'token_env = "FLEET_TEST_TOKEN"\nrate_limit = "100000/1"\nrelationships = "none"\n'
        )
        done = await export_account(account, utc_now())
        assert done.ok and done.outcome == "ok", done.outcome
        again = await export_account(account, utc_now())
        assert again.ok and again.outcome.startswith("ok, already done"), again.outcome
    # The same host and port now answers this token for another org (the tokens were swapped).
    port = int(root.rsplit(":", 1)[1])
    other = Simulator(SimulatorConfig(steps=60, seed=9, static_token=TOKEN, org_guid="org-globex"))
    async with serve(other, port=port):
        swapped = await export_account(account, utc_now())
    assert not swapped.ok, swapped.outcome
    assert "holds a backup of" in swapped.outcome and "not of" in swapped.outcome, swapped.outcome
    assert other.counters.requests == IDENTITY  # refused before anything is fetched
    state = checkpoint.load(tmp_path)
    assert state is not None and state.run_id == done.run_id  # the backup is untouched


def test_repair_is_a_fleet_key_validated_like_the_others(tmp_path: Path) -> None:
    [plain, mended] = parse(
        f'[defaults]\ntoken_env = "T"\nout = "{tmp_path}/{{name}}"\n'
        '[[account]]\nname = "a"\n[[account]]\nname = "b"\nrepair = true\nincremental = true\n'
    )
    assert (plain.repair, mended.repair) == (False, True)
    with pytest.raises(UsageError, match=r"""account 'a'.*repair = "yes": must be true or false"""):
        parse(f'[[account]]\nname = "a"\nout = "{tmp_path}"\ntoken_env = "T"\nrepair = "yes"\n')


async def test_a_fleet_account_with_repair_mends_a_damaged_backup(
    start_simulator: StartSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`repair = true` reaches the export (`Export(repair=True)`): a truncated committed file is
    set aside and its records fetched again, where without it the account fails naming it."""
    running = await start_simulator(steps=400, seed=10)
    monkeypatch.setenv("FLEET_TEST_TOKEN", TOKEN)
    text = (
        f'[[account]]\nname = "acme"\nout = "{tmp_path}"\nbase_url = "{running.base_url}"\n'
        'token_env = "FLEET_TEST_TOKEN"\nrate_limit = "100000/1"\nrelationships = "none"\n'
        # Pages of 50, so files roll at 100 rows (one page of 1000 would hold every step).
        "file_rows = 100\npage_size = 50\nincremental = true\n"
    )
    [account] = parse(text)
    assert (await export_account(account, utc_now())).ok
    files = sorted((tmp_path / "sequenceSteps").glob("*.parquet"))
    assert len(files) >= 2
    files[1].write_bytes(files[1].read_bytes()[:50])  # truncated
    refused = await export_account(account, utc_now())
    assert not refused.ok and "with repair = true" in refused.outcome, refused.outcome
    [mending] = parse(text + "repair = true\n")
    mended = await export_account(mending, utc_now())
    assert mended.ok, mended.outcome
    rows = [
        row
        for path in sorted((tmp_path / "sequenceSteps").rglob("*.parquet"))
        for row in pq.read_table(path).to_pylist()
    ]
    assert_rows_equal(sorted(rows, key=lambda r: r["id"]), expected_steps(running.sim))
