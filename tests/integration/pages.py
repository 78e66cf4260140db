"""One web page of the test's own, served on `host` at a free port: another origin, or a
destination on an address Chromium will send through a proxy."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def one_page(host: str, body: str | bytes, port: int = 0) -> AsyncIterator[str]:
    """Serve `body` (HTML) at / on host:port; yields the page's origin, http://host:port."""

    async def index(_: web.Request) -> web.Response:
        return web.Response(
            body=body.encode() if isinstance(body, str) else body, content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
