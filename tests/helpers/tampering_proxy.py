"""A proxy on loopback before the simulator: forwards every request, and may replace an answer with a crafted one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web


@dataclass
class Crafted:
    status: int
    body: bytes
    content_type: str = "application/vnd.api+json"


# (request URL as the client sent it, the simulator's document) -> a crafted answer, or None
Tamper = Callable[[str, dict[str, Any]], Crafted | None]


@dataclass
class Proxy:
    root: str
    tamper: Tamper | None = None
    seen: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.root + "/api/v2"


@asynccontextmanager
async def site(app: web.Application, host: str) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, host, 0)
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def proxy_for(upstream: str) -> AsyncIterator[Proxy]:
    """Forwards every request to the simulator at `upstream`; `proxy.tamper` may replace answers."""
    session = aiohttp.ClientSession()
    proxy = Proxy(root="")

    async def handle(request: web.Request) -> web.StreamResponse:
        url = proxy.root + request.path_qs
        proxy.seen.append(url)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization",)}
        headers["Content-Type"] = request.headers.get("Content-Type", "")
        async with session.get(upstream + request.path_qs, headers=headers) as answer:
            raw = await answer.read()
            status = answer.status
        raw = raw.replace(upstream.encode(), proxy.root.encode())
        if proxy.tamper is not None and status == 200:
            crafted = proxy.tamper(url, orjson.loads(raw))
            if crafted is not None:
                return web.Response(
                    status=crafted.status,
                    body=crafted.body,
                    headers={"Content-Type": crafted.content_type},
                )
        return web.Response(
            status=status, body=raw, headers={"Content-Type": "application/vnd.api+json"}
        )

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    try:
        async with site(app, "127.0.0.1") as root:
            proxy.root = root
            yield proxy
    finally:
        await session.close()
