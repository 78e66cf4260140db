"""The broker serves the widget, its demo page and the volunteer config, with CORS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from unwall.broker.server import BrokerConfig, create_app
from unwall.local import free_port, local_bridge


@pytest.fixture
async def broker_url() -> AsyncIterator[str]:
    config = BrokerConfig(
        poll_timeout=0.5, egress_url="ws://198.51.100.1:7000/v1/relay", ice_servers=("stun:x:1",)
    )
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_demo_page_and_widget_files(broker_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(broker_url + "/") as response:
            assert response.status == 200
            page = await response.text()
        assert 'src="/widget/unwall-widget.js"' in page
        assert "data-unwall-widget" in page
        for name, kind in (
            ("unwall-widget.js", "javascript"),
            ("frame.html", "text/html"),
            ("frame.js", "javascript"),
            ("panel.js", "javascript"),
            ("volunteer.js", "javascript"),
            ("logic.js", "javascript"),
            ("unwall-widget.css", "text/css"),
        ):
            async with http.get(f"{broker_url}/widget/{name}") as response:
                assert response.status == 200, name
                assert kind in response.headers["Content-Type"], name
                # Other sites embed it as a module script: that needs CORS.
                assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_only_the_widgets_frame_may_be_framed(broker_url: str) -> None:
    """The widget's frame: any site may frame it, and what runs in it loads only the
    broker's own scripts. Everything else: no site may frame it (issue 22, row 6)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{broker_url}/widget/frame.html?lang=fa&capacity=2") as response:
            assert response.status == 200
            assert "text/html" in response.headers["Content-Type"]
            assert "X-Frame-Options" not in response.headers
            policy = response.headers["Content-Security-Policy"]
            assert "frame-ancestors" not in policy
            directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
            assert directives["default-src"] == "'none'"
            assert directives["script-src"] == "'self'"
            assert directives["worker-src"] == "'self'"
            assert response.headers["Referrer-Policy"] == "no-referrer"
            page = await response.text()
            etag = response.headers.get("ETag")
            modified = response.headers.get("Last-Modified")
        assert 'src="frame.js"' in page
        assert 'id="unwall-widget"' in page
        # A revalidation's 304 carries the same headers (a cache keeps them).
        conditional = {"If-None-Match": etag} if etag else {"If-Modified-Since": modified or ""}
        async with http.get(f"{broker_url}/widget/frame.html", headers=conditional) as response:
            assert response.status in (200, 304)
            assert "X-Frame-Options" not in response.headers
            assert "frame-ancestors" not in response.headers["Content-Security-Policy"]
        for path in ("/", "/widget/unwall-widget.js", "/widget/panel.js", "/v1/health", "/nope"):
            async with http.get(broker_url + path) as response:
                assert response.headers["X-Frame-Options"] == "DENY", path
                policy = response.headers["Content-Security-Policy"]
                assert "frame-ancestors 'none'" in policy, path


async def test_volunteer_config(broker_url: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(broker_url + "/v1/volunteer/config") as response,
    ):
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert await response.json() == {
            "version": 1,
            "egress_url": "ws://198.51.100.1:7000/v1/relay",
            "ice_servers": ["stun:x:1"],
        }


async def test_cors_preflight_and_errors_carry_headers(broker_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.options(
            broker_url + "/v1/volunteer/poll",
            headers={
                "Origin": "https://news.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        ) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
        async with http.post(broker_url + "/v1/volunteer/poll", data=b"{not json") as response:
            assert response.status == 400
            assert response.headers["Access-Control-Allow-Origin"] == "*"
        # The client API is not for web pages: no CORS there.
        async with http.post(broker_url + "/v1/client/offer", data=b"{}") as response:
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_config_without_egress_is_503() -> None:
    runner = web.AppRunner(create_app(BrokerConfig()))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/v1/volunteer/config") as response,
        ):
            assert response.status == 503
            body = await response.json()
            assert body["error"] == "no_egress"
            assert "--egress-url" in body["message"]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        pytest.param((), True, id="browser-volunteers-without-stun"),
        pytest.param(("--ice-server", "stun:198.51.100.9:3478"), False, id="with-stun"),
    ],
)
async def test_broker_without_stun_warns_once(
    tmp_path: Path, extra: tuple[str, ...], warned: bool
) -> None:
    """Browsers offer only mDNS names as host candidates: say so, and what to do, once."""
    async with local_bridge(tmp_path) as bridge:
        broker = await bridge.start_broker(extra=extra)
        await bridge.wait_log(broker, "broker listening on")
        await asyncio.sleep(0.3)
        lines = broker.log_path.read_text().splitlines()
    warnings = [line for line in lines if "WARNING" in line]
    if not warned:
        assert warnings == []
        return
    [line] = warnings
    assert "no STUN server" in line
    assert "mDNS" in line
    assert "only clients with public addresses" in line
    assert "--ice-server stun:HOST:PORT" in line


async def test_broker_without_egress_does_not_warn_about_stun(tmp_path: Path) -> None:
    """Without --egress-url there are no browser volunteers to warn about."""
    async with local_bridge(tmp_path) as bridge:
        broker = await bridge.spawn("broker", "broker", "--listen", f"127.0.0.1:{free_port()}")
        await bridge.wait_log(broker, "broker listening on")
        await asyncio.sleep(0.3)
        assert "STUN" not in broker.log_path.read_text()
