"""On an object store: a damaged object is named and mended by `--repair`; `--restart` leaves a user's objects alone."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

from exporter.api.auth import StaticToken
from exporter.backup.damage import DamagedFileError
from exporter.backup.storage import Storage
from exporter.core.errors import Interrupted
from exporter.core.secrets import Secret
from exporter.export.run import Export
from exporter.simulator import Faults
from tests.helpers.runs import command_settings
from tests.helpers.s3 import assert_exact_on_s3
from tests.helpers.sim import TOKEN, StartSimulator

pytestmark = pytest.mark.slow  # every test starts or uses a moto S3 server


async def test_a_damaged_object_is_named_then_repaired_on_s3(
    s3_server: str,
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=1500, seed=81, faults=Faults(latency_s=0.004))
    uri = "s3://backups/acme/repair"
    storage = Storage.open(uri)
    job = Export(command_settings(running.base_url, uri), StaticToken(Secret(TOKEN)))
    task = asyncio.create_task(job.run())
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        raw = await asyncio.to_thread(storage.read_document, "_checkpoint.json")
        with contextlib.suppress(orjson.JSONDecodeError):  # a read racing a replacement
            if raw and len(orjson.loads(raw)["resources"]["sequenceStep"]["files"]) >= 3:
                break
        assert not task.done(), "the export finished before it could be stopped"
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("no 3 step files committed within 60 s")
    job.request_stop()
    with pytest.raises(Interrupted, match=r"stopped before the export finished; [\d,]+ "):
        await task
    state = orjson.loads(storage.read_bytes("_checkpoint.json") or b"{}")
    victim = state["resources"]["sequenceStep"]["files"][1]["path"]
    data = storage.read_bytes(victim) or b""
    with storage.fs.open_output_stream(storage.path(victim)) as handle:
        handle.write(data[: len(data) // 3])

    again = Export(command_settings(running.base_url, uri), StaticToken(Secret(TOKEN)))
    with pytest.raises(DamagedFileError, match=victim):
        await again.run()
    fixed = Export(command_settings(running.base_url, uri), StaticToken(Secret(TOKEN)), repair=True)
    result = await fixed.run()
    assert result.resumed
    assert_exact_on_s3(running, uri)
    assert storage.exists(f"{victim}.damaged-{state['run_id']}")


async def test_restart_on_s3_keeps_a_users_objects(
    s3_server: str,
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=300, seed=82)
    uri = "s3://backups/acme/restart"
    storage = Storage.open(uri)
    theirs = {"tasks/notes.txt": b"mine", "sequenceSteps/part-mine.parquet": b"also mine"}
    for relative, content in theirs.items():
        with storage.fs.open_output_stream(storage.path(relative)) as handle:
            handle.write(content)
    await Export(
        command_settings(running.base_url, uri, relationships="none", restart=True),
        StaticToken(Secret(TOKEN)),
    ).run()
    await Export(
        command_settings(running.base_url, uri, relationships="none", restart=True),
        StaticToken(Secret(TOKEN)),
    ).run()
    for relative, content in theirs.items():
        assert storage.read_bytes(relative) == content
    manifest = orjson.loads(storage.read_bytes("_manifest.json") or b"{}")
    assert sum(f["rows"] for f in manifest["files"]) == 300
