"""Where a backup is: one canonical location per `--out`/DIR for every command, and no credential in anything shown."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from exporter.backup.storage import Storage, redact_uri
from exporter.core.errors import ExitCode, UsageError
from tests.helpers.sim import TOKEN, StartSimulator, clean_env, spawn

KEY_ID = "AKIAEXAMPLEKEY77"
SECRET = "SeCrEt+Key/With=Signs-9"  # as it would be in a URI: percent-encoded where needed
SECRET_QUOTED = "SeCrEt%2BKey%2FWith%3DSigns-9"


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        (f"s3://{KEY_ID}:{SECRET_QUOTED}@bucket/p", "s3://bucket/p"),
        (f"s3://{KEY_ID}@bucket/p", "s3://bucket/p"),
        (
            f"s3://bucket/p?secret_key={SECRET_QUOTED}&region=eu-west-1",
            "s3://bucket/p?secret_key=***&region=eu-west-1",
        ),
        (
            f"gs://bucket/p?access_key={KEY_ID}&session_token=t0k",
            "gs://bucket/p?access_key=***&session_token=***",
        ),
        ("/plain/path", "/plain/path"),
        ("relative/dir#x", "relative/dir#x"),
    ],
)
def test_redact_uri(given: str, shown: str) -> None:
    assert redact_uri(given) == shown


def test_local_paths_are_normalised_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    bases = {
        Storage.open(given).base
        for given in (
            "x/../dd",
            "./dd",
            "dd/",
            "dd//",
            str(tmp_path / "dd"),
            f"file://{tmp_path}/x/../dd",
            "file:dd",  # no slashes: a relative path, made absolute like the others
            "file:x/../dd",
        )
    }
    assert bases == {(tmp_path / "dd").as_posix()}
    assert Storage.open("file:dd").display == f"file://{(tmp_path / 'dd').as_posix()}"
    assert Storage.open("dd/").display == "dd"  # so 'dd/' + '/_manifest.json' is not 'dd//...'
    assert Storage.open("hash#frag").base == (tmp_path / "hash#frag").as_posix()  # a file name
    with pytest.raises(UsageError, match="--out: an empty location"):
        Storage.open("")


@pytest.mark.parametrize("command", ["verify", "status", "compact", "restore"])
@pytest.mark.parametrize(
    ("location", "words"),
    [
        ("", ["empty location"]),
        ("  ", ["empty location"]),
        ("mock:///p", ["mock://"]),
        ("out\nx", ["control characters"]),
        ("~no-such-user-x/o", ["'~no-such-user-x/o'", "no such user"]),
        ("s3://[::1/p", ["not a path or a URI that parses"]),
    ],
)
def test_every_command_refuses_a_dir_as_export_refuses_its_out(
    command: str, location: str, words: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DIR of verify, status, compact and restore follows `export --out`'s rules (one
    `LocationType`): one line naming DIR, exit 2, never the current directory for ''."""
    from click.testing import CliRunner

    from exporter.commands.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "_manifest.json").write_text("{}")  # '' must not mean this directory
    extra = ["--base-url", "http://127.0.0.1:9/api/v2"] if command == "restore" else []
    result = CliRunner().invoke(main, [command, location, *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == ExitCode.USAGE, (result.exit_code, result.output)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: DIR: "), line
    for word in words:
        assert word in line, (word, line)


@pytest.mark.parametrize("prefix", ["x/../dd", "./dot", "a//b", "a/./b", "hash#frag", "p#"])
def test_ambiguous_object_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(UsageError) as caught:
        Storage.open(f"s3://bucket/{prefix}", flag="DIR")
    message = str(caught.value)
    assert message.startswith(f"DIR 's3://bucket/{prefix.split('#')[0]}")
    assert "\n" not in message


def test_trailing_slashes_are_one_prefix() -> None:
    storage = Storage.open("s3://bucket/p1/")
    assert (storage.base, storage.display) == ("bucket/p1", "s3://bucket/p1")
    assert storage.path("_manifest.json") == "bucket/p1/_manifest.json"


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await spawn(sys.executable, "-m", "exporter", *args, env=env or clean_env())
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


@pytest.mark.slow
async def test_credentials_in_the_uri_are_never_shown(
    s3_server: str,
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=200, seed=91)
    prefix = f"red-{uuid.uuid4().hex[:6]}"
    # moto takes any key; the variables must not be what makes it work.
    env = clean_env()
    env.pop("AWS_ACCESS_KEY_ID")
    env.pop("AWS_SECRET_ACCESS_KEY")
    locations = [
        f"s3://{KEY_ID}:{SECRET_QUOTED}@backups/{prefix}/a/",
        f"s3://backups/{prefix}/b?access_key={KEY_ID}&secret_key={SECRET_QUOTED}",
    ]
    for uri in locations:
        shown: list[str] = []
        base = [*("--base-url", running.base_url, "--token", TOKEN, "--rate-limit", "100000/1")]
        code, text = await run(
            "export",
            "--out",
            uri,
            *base,
            "--relationships",
            "none",
            "--log-format",
            "text",
            "-v",
            env=env,
        )
        assert code == 0, text
        # The result line names the manifest under the redacted location, once.
        [result] = [ln for ln in text.splitlines() if ln.startswith("run ") and "_manifest" in ln]
        assert result.endswith(
            f": s3://backups/{prefix}/{'a' if '@' in uri else 'b'}/_manifest.json"
        ), result
        shown.append(text)
        for command in (
            ["verify", uri],
            ["status", uri],
            ["verify", uri, "--json"],
            ["compact", uri],
        ):
            code, text = await run(*command, env=env)
            assert code == 0, text
            shown.append(text)
        missing = uri.replace("backups", "no-such-bucket")
        code, text = await run("verify", missing, env=env)
        assert code == ExitCode.USAGE and len(text.strip().splitlines()) == 1, text
        shown.append(text)
        for text in shown:
            assert "Traceback" not in text and "//_" not in text  # 'a/' + '/_manifest.json'
            for secret in (KEY_ID, SECRET, SECRET_QUOTED, "SeCrEt"):
                assert secret not in text, text
        assert f"s3://backups/{prefix}/" in shown[1]


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_the_export_result_names_the_manifest_once_under_the_location(
    log_format: str,
    start_simulator: StartSimulator,
    tmp_path: Path,
) -> None:
    running = await start_simulator(steps=20, seed=92)
    base = ["--base-url", running.base_url, "--token", TOKEN, "--relationships", "none"]
    process = await spawn(
        sys.executable,
        *("-m", "exporter", "export", "--out", f"{tmp_path}/p1//", *base),
        *("--log-format", log_format, "-q"),
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    last = out.decode().splitlines()[-1]
    if log_format == "json":
        assert orjson.loads(last)["manifest"] == f"{tmp_path}/p1/_manifest.json", last
    else:
        assert last.endswith(f": {tmp_path}/p1/_manifest.json"), last
    assert (tmp_path / "p1" / "_manifest.json").is_file()


@pytest.mark.slow
async def test_every_command_refuses_an_object_named_like_the_prefix(
    s3_server: str,
) -> None:
    name = f"objp-{uuid.uuid4().hex[:6]}"
    bucket = Storage.open("s3://backups")
    with bucket.fs.open_output_stream(bucket.path(name)) as handle:
        handle.write(b"not a backup")
    with bucket.fs.open_output_stream(bucket.path(f"{name}/_manifest.json")) as handle:
        handle.write(b"{}")
    uri = f"s3://backups/{name}"
    commands = [
        ["export", "--out", uri, "--token", "t", "--base-url", "http://127.0.0.1:9/api/v2"],
        ["verify", uri],
        ["status", uri],
        ["compact", uri],
        ["restore", uri, "--token", "t", "--base-url", "http://127.0.0.1:9/api/v2"],
    ]
    for command in commands:
        code, text = await run(*command, env={**clean_env(), "HOME": os.environ.get("HOME", "/")})
        assert code == ExitCode.USAGE, (command, text)
        [line] = text.strip().splitlines()
        assert "an object of that very name exists" in line, (command, line)
