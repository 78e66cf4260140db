"""The widget's volunteer, in Debian's Chromium, refuses a broker's private relay (issue 22,
row 5), and still relays to its broker's own egress.

Chromium runs in a network namespace of this test's own; broker and egress listen on the
host side of its veth (a TEST-NET address: to the widget, a public broker). The host side
also holds a private address, 10.255.244.1, routed from the namespace, where a listener of
the test's records every connection. The broker's operator list (`--egress PIN=URL`) sends
one pin's clients there: a broker that would have the browser relay into the LAN it stands
in. The page drives the widget's BrowserVolunteer (volunteer.js, as the widget's frame does)
without its switch, so that this test does not depend on the widget's markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from unwall.browser import chromium_in, chromium_missing
from unwall.egress.identity import generate_identity
from unwall.local import DemoSite, LocalBridge, download_via_socks, free_port, local_bridge
from unwall.netns import NamespaceError, VethNamespace, namespaces_possible

# A /30 of its own (test_browser.py takes 198.51.100.1 to .240, test_widget_frame.py
# 203.0.113.240 to .255).
HOST_IP = "198.51.100.245"
NS_IP = "198.51.100.246"
#: a LAN address on this side, routed from the namespace: where a hostile broker points
LAN_IP = "10.255.244.1"

_reason = namespaces_possible() or chromium_missing()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

START = """async () => {
  window.__warnings = [];
  const { BrowserVolunteer } = await import("/widget/volunteer.js");
  const volunteer = new BrowserVolunteer({
    brokerUrl: location.origin,
    warn: (line) => { window.__warnings.push(line); console.warn(line); },
  });
  window.__volunteer = volunteer;
  volunteer.start();
}"""


@dataclass
class Listener:
    seen: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2):
                self.seen.append(await reader.read(300))
        writer.close()


@pytest.fixture
def namespace() -> Any:
    ns = VethNamespace(f"unwall-r{os.getpid() % 100000}", host_ip=HOST_IP, ns_ip=NS_IP)
    try:
        ns.create()
        subprocess.run(
            ["ip", "addr", "add", f"{LAN_IP}/32", "dev", ns.host_if], check=True, timeout=30
        )
        subprocess.run(
            ns.command("ip", "route", "add", f"{LAN_IP}/32", "via", HOST_IP), check=True, timeout=30
        )
    except (NamespaceError, subprocess.CalledProcessError) as exc:
        ns.delete()
        pytest.skip(f"cannot create a network namespace here: {exc}")
    yield ns
    ns.delete()  # the host side of the veth, and LAN_IP with it


@pytest.fixture
async def browser_bridge(tmp_path: Path) -> AsyncIterator[LocalBridge]:
    async with local_bridge(tmp_path, host=HOST_IP, broker_answer_timeout=5.0) as bridge:
        yield bridge


async def _warnings(page: Any) -> list[str]:
    return list(await page.evaluate("() => window.__warnings ?? []"))


async def test_widget_refuses_a_public_brokers_lan_relay(
    namespace: VethNamespace, browser_bridge: LocalBridge, site: DemoSite, tmp_path: Path
) -> None:
    bridge = browser_bridge
    listener = Listener()
    server = await asyncio.start_server(listener.handle, LAN_IP, 0)
    lan_port = server.sockets[0].getsockname()[1]
    lan_relay = f"ws://{LAN_IP}:{lan_port}/v1/relay"
    pin = bridge.make_key()
    lan_pin = generate_identity().pin
    try:
        await bridge.start_broker(
            extra=("--egress", f"{pin}={bridge.egress_url}", "--egress", f"{lan_pin}={lan_relay}")
        )
        await bridge.start_egress()
        async with chromium_in(namespace, tmp_path) as browser:
            page = await browser.new_page()
            await page.goto(f"{bridge.broker_url}/")
            await page.evaluate(START)

            # A client whose bridge line names the pin the broker sends into the LAN.
            lan_client = await bridge.start_client(
                pin=lan_pin,
                wait_ready=False,
                extra=("--paths", "1"),
                socks_port=free_port(),
                http_port=free_port(),
            )
            async with asyncio.timeout(60):
                while not listener.seen and not await _warnings(page):
                    await asyncio.sleep(0.2)
            await asyncio.sleep(2.0)  # time for a connection that is on its way
            assert listener.seen == [], f"the widget relayed into the LAN: {listener.seen}"
            [line, *_] = await _warnings(page)
            assert line == (
                "unwall: not answering an offer: the broker named the relay "
                f"ws://{LAN_IP}:{lan_port}, refused (a private address, from a public broker)"
            )
            await lan_client.stop()

            # The broker's own egress still works.
            await bridge.start_client(extra=("--paths", "1"))
            result = await download_via_socks(bridge.socks_port, f"{site.url}/")
            assert result.status == 200
            assert listener.seen == []
            await page.evaluate("() => window.__volunteer.stop()")
        # The broker served its widgets the operator's list, LAN entry and all: the widget
        # held it to the rules all the same.
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{bridge.broker_url}/v1/volunteer/config") as response,
        ):
            config = await response.json()
        assert config["relay_urls"] == sorted([bridge.egress_url, lan_relay])
    finally:
        server.close()
        await server.wait_closed()
