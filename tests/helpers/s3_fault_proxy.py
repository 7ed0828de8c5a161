"""A fault-injecting HTTP proxy on loopback in front of the moto S3 server: 5xx, resets, lost answers, delays.

It runs its own event loop in a thread, so synchronous clients (pyarrow, botocore) in the test
process and `python -m exporter` subprocesses (through AWS_ENDPOINT_URL) go through it alike.
Faults are rules matched in order against each request (method and a regular expression on the
path with its query); a rule fires a set number of times (or forever), optionally after letting
some matching requests pass:

- `status`: answer that status (500, 503) without forwarding: the store did nothing;
- `reset`: close the connection without an answer, without forwarding;
- `lost`: forward (the store applies the request), then close without an answer;
- `delay`: wait, then forward.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
    "content-length",
}


@dataclass
class Fault:
    kind: str  # status | reset | lost | delay
    method: str | None = None  # None: any
    path: str = ""  # a regular expression searched in the path (with its query)
    times: int | None = 1  # None: every matching request
    skip: int = 0  # matching requests let through first
    status: int = 500
    seconds: float = 0.0
    fired: int = 0
    seen: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and re.search(
            self.path, path
        ) is not None


@dataclass
class FaultProxy:
    upstream: str  # http://127.0.0.1:port
    port: int = 0
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, outcome
    _lock: threading.Lock = field(default_factory=threading.Lock)
    session: aiohttp.ClientSession | None = None  # to the upstream, in the proxy's loop

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def _choose(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if not fault.matches(method, path):
                    continue
                fault.seen += 1
                if fault.seen <= fault.skip:
                    continue
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                fault.fired += 1
                return fault
            return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path_qs
        fault = self._choose(request.method, path)
        outcome = fault.kind if fault else "pass"
        with self._lock:
            self.requests.append((request.method, path, outcome))
        body = await request.read()
        if fault is not None and fault.kind == "status":
            return web.Response(
                status=fault.status, text="<Error><Code>InternalError</Code></Error>"
            )
        if fault is not None and fault.kind == "reset":
            return self._drop(request)
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        session = self.session
        assert session is not None
        async with session.request(
            request.method, self.upstream + path, headers=headers, data=body
        ) as answer:
            payload = await answer.read()
            if fault is not None and fault.kind == "lost":
                return self._drop(request)  # applied upstream; the answer never arrives
            response = web.StreamResponse(status=answer.status)
            for key, value in answer.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            length = answer.headers.get("Content-Length")
            response.content_length = int(length) if length is not None else len(payload)
            await response.prepare(request)
            if request.method != "HEAD":
                await response.write(payload)
            await response.write_eof()
            return response

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=599)  # never sent: the connection is gone


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """Run a FaultProxy for `upstream` on a free loopback port until the block ends."""
    proxy = FaultProxy(upstream)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        app = web.Application(client_max_size=1 << 30)
        proxy.session = aiohttp.ClientSession(auto_decompress=False)
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        proxy.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set()
        try:
            await stop.wait()
        finally:
            await proxy.session.close()
            await runner.cleanup()

    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert started.wait(30) and not failure, f"the fault proxy did not start: {failure}"
        yield proxy
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
