"""Every hint is something the user can do in the command that printed it: restore has no --demo, a fleet file has no --token, a wrong base URL path is the user's to fix (exit 2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.backup.damage import REPAIR_ADVICE
from exporter.core.errors import ExitCode
from exporter.fleet.fleet import as_fleet_keys
from exporter.simulator import Simulator, SimulatorConfig, serve_in_thread
from tests.helpers.checks import assert_refused
from tests.helpers.commands import invoke
from tests.helpers.runs import run_exporter
from tests.helpers.sim import TOKEN


@pytest.fixture(scope="module")
def api_root() -> Iterator[str]:
    """A small simulator on a loopback port: its root URL (the API is at /api/v2)."""
    with serve_in_thread(Simulator(SimulatorConfig(steps=20, static_token=TOKEN))) as root:
        yield root


def test_restore_without_credentials_does_not_offer_demo(tmp_path: Path, api_root: str) -> None:
    out = tmp_path / "o"
    code, _, stderr = invoke(
        ["export", "--out", str(out), "--base-url", api_root + "/api/v2", "--token", TOKEN, "-q"]
    )
    assert code == 0, stderr
    code, _, stderr = invoke(["restore", str(out), "--base-url", api_root + "/api/v2"])
    assert_refused(code, stderr, "no credentials", "--token")
    assert "--demo" not in stderr


def test_export_without_credentials_still_offers_demo(tmp_path: Path) -> None:
    code, _, stderr = invoke(["export", "--out", str(tmp_path / "o")])
    assert_refused(code, stderr, "no credentials", "--demo")


def fleet_of_one(tmp_path: Path, base_url: str) -> Path:
    """A fleet file with one account, acme, whose token is in ACME_TOKEN."""
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[[account]]\nname = "acme"\nbase_url = "{base_url}"\n'
        f'out = "{tmp_path / "acme"}"\ntoken_env = "ACME_TOKEN"\n'
    )
    return fleet


@pytest.mark.slow
def test_a_fleet_token_refused_names_the_fleet_files_key(tmp_path: Path, api_root: str) -> None:
    fleet = fleet_of_one(tmp_path, api_root + "/api/v2")
    result = run_exporter("fleet", "--config", str(fleet), env={"ACME_TOKEN": "wrong"})
    assert result.returncode == ExitCode.FAILED, result.stderr
    outcome = result.stderr + result.stdout
    assert "401" in outcome
    assert "token_env (ACME_TOKEN) in the fleet file" in outcome
    assert "--token" not in outcome and "wrong" not in outcome


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/api/v3", "/v2", ""])
def test_a_wrong_base_url_path_says_check_base_url(
    tmp_path: Path, api_root: str, path: str
) -> None:
    out = tmp_path / "o"
    result = run_exporter(
        "export", "--out", str(out), "--base-url", api_root + path, "--token", TOKEN
    )
    assert result.returncode == ExitCode.USAGE, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "404" in line
    assert "check --base-url (Outreach's is https://api.outreach.io/api/v2)" in line
    assert "resume" not in line and "run the same command" not in line.lower()
    # Nothing to resume was left behind: the next run with the right URL is a plain full run.
    result = run_exporter(
        "export", "--out", str(out), "--base-url", api_root + "/api/v2", "--token", TOKEN, "-q"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("exported ")


def test_restore_with_a_wrong_base_url_path_says_check_base_url(
    tmp_path: Path, api_root: str
) -> None:
    out = tmp_path / "o"
    code, _, stderr = invoke(
        ["export", "--out", str(out), "--base-url", api_root + "/api/v2", "--token", TOKEN, "-q"]
    )
    assert code == 0, stderr
    code, _, stderr = invoke(
        ["restore", str(out), "--base-url", api_root + "/api/v9", "--token", TOKEN]
    )
    assert_refused(
        code, stderr, "404", "check --base-url (Outreach's is https://api.outreach.io/api/v2)"
    )


@pytest.mark.slow
def test_a_fleet_hint_names_the_fleet_files_key_not_a_flag(tmp_path: Path, api_root: str) -> None:
    fleet = fleet_of_one(tmp_path, api_root + "/v9")
    result = run_exporter("fleet", "--config", str(fleet), env={"ACME_TOKEN": TOKEN})
    assert result.returncode == ExitCode.FAILED, result.stderr
    outcome = result.stderr + result.stdout
    assert "404" in outcome and "check base_url (Outreach's is" in outcome
    assert "--base-url" not in outcome


@pytest.mark.parametrize(
    ("message", "fleet_says"),
    [
        (REPAIR_ADVICE, "Run the same command with repair = true"),
        (
            "pass --incremental to add what changed since (with --repair to mend damaged files)",
            "pass incremental = true to add what changed since (with repair = true to mend",
        ),
        (
            "resume it with the same --relationships and --detect-deletes, or pass --restart",
            "resume it with the same relationships and detect_deletes, or pass `exporter export "
            "--restart` on the account's out (a fleet has no restart)",
        ),
        ("remove the file and pass --refresh-token", "refresh_token_env (or refresh_token_file)"),
        ("cannot reach http://h--x/api; check --base-url", "http://h--x/api; check base_url"),
    ],
)
def test_an_exports_flags_are_named_as_fleet_keys(message: str, fleet_says: str) -> None:
    assert fleet_says in as_fleet_keys(message)
