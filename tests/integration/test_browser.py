"""The widget in Debian's Chromium, as a real volunteer for a real Python client.

Chromium runs in a network namespace of this test's own (198.51.100.2), broker and egress
listen on the host side of its veth (198.51.100.1), and the client offers that address as
its ICE host candidate. See unwall.netns and unwall.browser.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from unwall.browser import chromium_in, chromium_missing
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
    value = await page.get_attribute("[data-unwall-widget]", name)
    return value or ""


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
    size = 20_000_000
    _, digest = site.blob(size)
    await bridge.start_broker()
    await bridge.start_egress()
    async with chromium_in(namespace, tmp_path) as browser:
        page = await browser.new_page()
        await page.goto(f"{bridge.broker_url}/")
        switch = page.locator("[data-unwall-widget] [role=switch]")
        # First visit: off.
        assert await switch.get_attribute("aria-checked") == "false"
        assert await _widget_attr(page, "data-state") == "off"
        await switch.click()
        assert await switch.get_attribute("aria-checked") == "true"
        await _wait_attr(page, "data-state", "idle")
        assert "Waiting for someone to help" in await page.inner_text("[data-unwall-widget]")

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
        assert "Helping 1 person now" in await page.inner_text("[data-unwall-widget]")
        await page.screenshot(path=str(artifacts / f"widget-helping-{dtls_role}.png"))

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
        await page.locator("[data-unwall-widget] [role=switch]").click()
        await _wait_attr(page, "data-state", "idle")
        await broker.stop()
        await _wait_attr(page, "data-state", "error", timeout=40)
        text = await page.inner_text("[data-unwall-widget]")
        assert "Can't reach the unwall server" in text
        await page.screenshot(path=str(artifacts / "widget-broker-unreachable.png"))
