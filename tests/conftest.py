"""Shared fixtures: real simulators on loopback ports, and a moto S3 server (helpers are in tests/helpers/)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from exporter.simulator import Simulator, SimulatorConfig, serve
from tests.helpers.s3 import admin_filesystem, start_moto
from tests.helpers.sim import TOKEN, Running, StartSimulator


@pytest.fixture(autouse=True)
def forget_secrets_of_other_tests() -> Iterator[None]:
    """The secrets a test registers (`errors.remember_secret`, process-wide by design: one
    process, one user's secrets) are forgotten after it. Without this, a test that passed a
    token such as "00" made every later error message in that test process read "5***"."""
    from exporter.core import errors

    held = set(errors._KNOWN_SECRETS)
    yield
    errors._KNOWN_SECRETS.clear()
    errors._KNOWN_SECRETS.update(held)


@pytest.fixture
async def start_simulator() -> AsyncIterator[StartSimulator]:
    """Start simulators on free loopback ports; all are stopped at the end of the test."""
    async with AsyncExitStack() as stack:

        async def start(**config: Any) -> Running:
            config.setdefault("static_token", TOKEN)
            sim = Simulator(SimulatorConfig(**config))
            root_url = await stack.enter_async_context(serve(sim, host="127.0.0.1", port=0))
            return Running(sim, root_url)

        yield start


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with the AWS variables pointing at it."""
    process, port = start_moto()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
    )
    try:
        admin_filesystem(port).create_dir("backups")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
