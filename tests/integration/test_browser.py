"""The widget in Debian's Chromium, as a real volunteer for a real Python client.

Chromium runs in a network namespace of this test's own (198.51.100.2), broker and egress
listen on the host side of its veth (198.51.100.1), and the client offers that address as
its ICE host candidate. See unwall.netns and unwall.browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pages import one_page

from unwall.browser import chromium_in, chromium_missing, widget_frame, widget_switch
from unwall.local import DemoSite, LocalBridge, RoleProcess, download_via_socks, local_bridge
from unwall.netns import NamespaceError, VethNamespace, namespaces_possible

# A /30 of its own per test run, so that concurrent runs never share an address.
_BASE = 4 * (os.getpid() % 60)
HOST_IP = f"198.51.100.{_BASE + 1}"
NS_IP = f"198.51.100.{_BASE + 2}"

_reason = namespaces_possible() or chromium_missing()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


@pytest.fixture
def namespace() -> Any:
    ns = VethNamespace(f"unwall-b{os.getpid() % 100000}", host_ip=HOST_IP, ns_ip=NS_IP)
    try:
        ns.create()
    except NamespaceError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    yield ns
    ns.delete()


@pytest.fixture
async def browser_bridge(tmp_path: Path) -> AsyncIterator[LocalBridge]:
    async with local_bridge(tmp_path, host=HOST_IP, broker_answer_timeout=5.0) as bridge:
        yield bridge


async def _widget_attr(page: Any, name: str) -> str:
    """What the widget's frame told the page (data-state, counts), on its placeholder."""
    value = await page.get_attribute("[data-unwall-widget]", name)
    return value or ""


async def _widget_text(page: Any) -> str:
    """What the widget shows, in its frame (the broker's origin)."""
    text: str = await widget_frame(page).locator("body").inner_text()
    return text


async def _wait_attr(
    page: Any, name: str, wanted: str | tuple[str, ...], timeout: float = 20.0
) -> None:
    accepted = (wanted,) if isinstance(wanted, str) else wanted
    async with asyncio.timeout(timeout):
        while await _widget_attr(page, name) not in accepted:
            await asyncio.sleep(0.1)


async def _start_client(bridge: LocalBridge, *extra: str) -> RoleProcess:
    return await bridge.start_client(extra=("--paths", "1", *extra))


@pytest.mark.parametrize("dtls_role", ["client", "server"])
async def test_browser_volunteer_carries_a_download(
    namespace: VethNamespace,
    browser_bridge: LocalBridge,
    site: DemoSite,
    tmp_path: Path,
    artifacts: Path,
    dtls_role: str,
) -> None:
    bridge = browser_bridge
    # 4 MB, more than the relay's 1 MiB queues and the streams' windows: what a browser
    # volunteer moves per second is the benchmarks' business, not this test's.
    size = 4_000_000
    _, digest = site.blob(size)
    await bridge.start_broker()
    await bridge.start_egress()
    async with chromium_in(namespace, tmp_path) as browser:
        page = await browser.new_page()
        await page.goto(f"{bridge.broker_url}/")
        switch = widget_switch(page)
        # First visit: off.
        assert await switch.get_attribute("aria-checked") == "false"
        await _wait_attr(page, "data-state", "off")
        await switch.click()
        assert await switch.get_attribute("aria-checked") == "true"
        await _wait_attr(page, "data-state", "idle")
        shown = await _widget_text(page)
        assert "Ready. No one needs help right now." in shown

        client = await _start_client(bridge, "--dtls-role", dtls_role)
        await _wait_attr(page, "data-clients-now", "1")
        result = await download_via_socks(bridge.socks_port, f"{site.url}/blob/{size}")
        assert result.status == 200
        assert result.sha256 == digest
        # The counters moved.
        await asyncio.sleep(1.2)
        relayed = int(await _widget_attr(page, "data-bytes-relayed"))
        assert relayed >= size
        assert int(await _widget_attr(page, "data-clients-total")) >= 1
        assert "Helping 1 person now" in await _widget_text(page)
        await page.screenshot(path=str(artifacts / f"widget-helping-{dtls_role}.png"))

        if dtls_role != "client":
            return  # what follows does not depend on the DTLS role: checked once

        # Off: every connection closes at once; the client notices and says so.
        await switch.click()
        assert await switch.get_attribute("aria-checked") == "false"
        await _wait_attr(page, "data-state", "off")
        await _wait_attr(page, "data-clients-now", "0")
        await bridge.wait_log(client, "lost", timeout=15)

        # The state survives a reload: off stays off, on stays on (and works again).
        await page.reload()
        await _wait_attr(page, "data-state", "off")
        await switch.click()
        # The client's waiting offer may be taken on the first poll: idle or helping.
        await _wait_attr(page, "data-state", ("idle", "helping"))
        await page.reload()
        assert await switch.get_attribute("aria-checked") == "true"
        await _wait_attr(page, "data-clients-now", "1", timeout=60)
        again = await download_via_socks(bridge.socks_port, f"{site.url}/")
        assert again.status == 200


async def test_widget_shows_broker_unreachable(
    namespace: VethNamespace, browser_bridge: LocalBridge, tmp_path: Path, artifacts: Path
) -> None:
    bridge = browser_bridge
    broker = await bridge.start_broker()
    await bridge.start_egress()
    async with chromium_in(namespace, tmp_path) as browser:
        page = await browser.new_page()
        await page.goto(f"{bridge.broker_url}/")
        await widget_switch(page).click()
        await _wait_attr(page, "data-state", "idle")
        await broker.stop()
        await _wait_attr(page, "data-state", "error", timeout=40)
        text = await _widget_text(page)
        assert "Can't reach the unwall server" in text
        await page.screenshot(path=str(artifacts / "widget-broker-unreachable.png"))


# -- the widget on a page of another origin, as sites embed it ------------------------------

NEWS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A news site</title>
<script type="module" src="{broker}/widget/unwall-widget.js"></script></head>
<body><h1>Today's news</h1><p>Help readers elsewhere get past censorship:</p>
<div data-unwall-widget></div></body></html>
"""


@contextlib.asynccontextmanager
async def embedding_site(host: str, broker_url: str) -> AsyncIterator[str]:
    """Another origin (same address, another port) whose page embeds the widget."""
    async with one_page(host, NEWS_PAGE.format(broker=broker_url)) as origin:
        yield origin


def _cors_complaints(messages: list[str]) -> list[str]:
    return [m for m in messages if "CORS" in m or "Access-Control" in m]


async def test_widget_on_another_origin_carries_a_download(
    namespace: VethNamespace,
    browser_bridge: LocalBridge,
    site: DemoSite,
    tmp_path: Path,
    artifacts: Path,
) -> None:
    """On another site's page the widget runs in its frame, of the broker's origin, and
    carries a download as on the broker's own page; nothing complains of CORS."""
    bridge = browser_bridge
    size = 5_000_000
    _, digest = site.blob(size)
    await bridge.start_broker(extra=("--ice-server", f"stun:{HOST_IP}:9"))
    await bridge.start_egress()
    async with (
        embedding_site(HOST_IP, bridge.broker_url) as news_url,
        chromium_in(namespace, tmp_path) as browser,
    ):
        assert news_url.rsplit(":", 1)[1] != str(bridge.broker_port)
        page = await browser.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        await page.goto(f"{news_url}/")
        await widget_switch(page).click()
        await _wait_attr(page, "data-state", "idle")

        client = await _start_client(bridge)
        await _wait_attr(page, "data-clients-now", "1")
        result = await download_via_socks(bridge.socks_port, f"{site.url}/blob/{size}")
        assert result.status == 200
        assert result.sha256 == digest
        await asyncio.sleep(1.2)
        assert int(await _widget_attr(page, "data-bytes-relayed")) >= size
        assert await _widget_attr(page, "data-state") == "helping"
        assert "Can't reach" not in await _widget_text(page)
        assert not _cors_complaints(console), console
        await page.screenshot(path=str(artifacts / "widget-on-another-origin.png"))
        await client.stop()


async def test_widget_says_so_when_it_cannot_connect_to_a_person(
    namespace: VethNamespace, browser_bridge: LocalBridge, tmp_path: Path, artifacts: Path
) -> None:
    """A client the browser cannot reach (it offers only 127.0.0.1) is never "helped"."""
    bridge = browser_bridge
    await bridge.start_broker()
    await bridge.start_egress()
    bridge.make_key()
    async with chromium_in(namespace, tmp_path) as browser:
        page = await browser.new_page()
        await page.goto(f"{bridge.broker_url}/")
        await widget_switch(page).click()
        await _wait_attr(page, "data-state", "idle")
        client = await bridge.spawn(
            "client",
            "client",
            "--broker",
            bridge.broker_url,
            "--pin",
            bridge.pin,
            "--socks",
            f"127.0.0.1:{bridge.socks_port}",
            "--http",
            f"127.0.0.1:{bridge.http_port}",
            "--host-address",
            "127.0.0.1",
            "--paths",
            "1",
        )
        seen_now: set[str] = set()
        async with asyncio.timeout(60):
            while await _widget_attr(page, "data-state") != "error":
                seen_now.add(await _widget_attr(page, "data-clients-now"))
                await asyncio.sleep(0.1)
        text = await _widget_text(page)
        assert "Couldn't connect to a person who needed help" in text
        assert "their network or yours blocks it" in text
        assert seen_now == {"0"}, "counted as helped though nothing connected"
        assert await _widget_attr(page, "data-clients-total") == "0"
        assert "Helping" not in text
        await page.screenshot(path=str(artifacts / "widget-cannot-connect.png"))
        await client.stop()
