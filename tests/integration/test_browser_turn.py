"""The widget in Debian's Chromium reaches a client only through the broker's TURN server.

Chromium runs in a namespace of this test's own (203.0.113.24x); the broker, the egress,
a real coturn and the Python client are on the host side of its veth. The namespace lets
the browser's UDP out and in only to and from coturn's listening port, so no direct ICE
pair (browser host or server-reflexive candidate to the client's host candidate) can carry
anything: only the browser's relay candidate works, and the browser gets one only by using
the credentials the broker mints with --turn-secret (coturn's `use-auth-secret`, the same
secret). The client has no ICE server at all.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from coturn import Coturn, coturn, free_port, require_coturn

from unwall.browser import chromium_in, chromium_missing, widget_frame, widget_realm, widget_switch
from unwall.local import DemoSite, LocalBridge, download_via_socks, local_bridge
from unwall.netns import NamespaceError, VethNamespace, namespaces_possible

# A /30 of its own (test_browser.py and test_browser_defaults.py take .0 to .239).
_BASE = 240 + 4 * (os.getpid() % 4)
HOST_IP = f"203.0.113.{_BASE + 1}"
NS_IP = f"203.0.113.{_BASE + 2}"
SECRET = "broker-and-coturn-share-this-too"
SIZE = 5_000_000

# coturn REST-API credentials: "<10-digit expiry>:<token_urlsafe(9)>" and a base64 SHA-1.
_USERNAME = re.compile(r"\b\d{10}:[A-Za-z0-9_-]{12}\b")
_PASSWORD = re.compile(r"[A-Za-z0-9+/]{27}=")

_reason = namespaces_possible() or chromium_missing()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

# What the page gave RTCPeerConnection, minus the secrets: per server its URLs and whether
# it had a username and a credential.
RECORD_ICE = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__iceConfigs = [];
  window.RTCPeerConnection = class extends Native {
    constructor(config, ...rest) {
      window.__iceConfigs.push((config?.iceServers ?? []).map((s) => ({
        urls: [].concat(s.urls), username: typeof s.username === "string" && s.username !== "",
        credential: typeof s.credential === "string" && s.credential !== "" })));
      super(config, ...rest);
    }
  };
})();
"""


@pytest.fixture
def namespace() -> Iterator[VethNamespace]:
    ns = VethNamespace(f"unwall-t{os.getpid() % 100000}", host_ip=HOST_IP, ns_ip=NS_IP)
    try:
        ns.create()
    except NamespaceError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def turn_server(namespace: VethNamespace, tmp_path: Path) -> Iterator[Coturn]:
    require_coturn()
    with coturn(
        tmp_path / "coturn", (HOST_IP,), port=free_port(HOST_IP), stun_only=False,
        auth_secret=SECRET, verbose=True,
    ) as server:  # fmt: skip
        yield server


def only_turn_for_udp(namespace: VethNamespace, turn_port: int) -> None:
    """UDP leaves and enters the namespace only to and from coturn's port."""
    for rule in (
        f"OUTPUT ! -o lo -p udp ! --dport {turn_port} -j DROP",
        f"INPUT ! -i lo -p udp ! --sport {turn_port} -j DROP",
    ):
        subprocess.run(namespace.command("iptables", "-A", *rule.split()), check=True, timeout=30)


def dropped_packets(namespace: VethNamespace) -> int:
    out = subprocess.run(
        namespace.command("iptables", "-L", "-v", "-n", "-x"),
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return sum(int(line.split()[0]) for line in out.splitlines() if " DROP " in f" {line} ")


def relayed_to_peers(log: str) -> int:
    """Bytes coturn sent from relay addresses to peers, summed over its usage reports."""
    return sum(int(n) for n in re.findall(r"peer usage: .*?\bsb=(\d+)", log))


@pytest.fixture
async def turn_bridge(tmp_path: Path) -> AsyncIterator[LocalBridge]:
    async with local_bridge(tmp_path, host=HOST_IP, broker_answer_timeout=5.0) as bridge:
        yield bridge


async def _widget_attr(page: Any, name: str) -> str:
    return await page.get_attribute("[data-unwall-widget]", name) or ""


async def test_widget_reaches_a_client_only_through_the_brokers_turn_server(
    namespace: VethNamespace,
    turn_server: Coturn,
    turn_bridge: LocalBridge,
    site: DemoSite,
    tmp_path: Path,
    artifacts: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bridge = turn_bridge
    only_turn_for_udp(namespace, turn_server.port)
    _, digest = site.blob(SIZE)
    monkeypatch.setenv("UNWALL_TURN_SECRET", SECRET)  # a secret is never on a command line
    await bridge.start_broker(
        extra=("--ice-server", turn_server.stun_url, "--turn-url", turn_server.turn_url("udp"))
    )
    await bridge.start_egress()
    async with chromium_in(namespace, tmp_path) as browser:
        page = await browser.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        await page.add_init_script(RECORD_ICE)
        await page.goto(f"{bridge.broker_url}/")
        await widget_switch(page).click()  # in the widget's frame, the broker's origin
        async with asyncio.timeout(20):
            while await _widget_attr(page, "data-state") != "idle":
                await asyncio.sleep(0.1)

        client = await bridge.start_client(wait_ready=False, extra=("--paths", "1"))
        try:
            async with asyncio.timeout(45):
                while await _widget_attr(page, "data-clients-now") != "1":
                    await asyncio.sleep(0.1)
        except TimeoutError:
            text = await widget_frame(page).locator("body").inner_text()
            raise AssertionError(
                f"the widget never connected to the client: {text!r}\n{client.log_tail(30)}"
            ) from None
        await bridge.wait_log(client, "tunnel ready", timeout=30)
        result = await download_via_socks(bridge.socks_port, f"{site.url}/blob/{SIZE}")
        assert result.status == 200
        assert result.sha256 == digest
        await asyncio.sleep(1.2)
        assert int(await _widget_attr(page, "data-bytes-relayed")) >= SIZE

        frame = await widget_realm(page)  # the init script ran in it too
        configs = await frame.evaluate("window.__iceConfigs")
        shown = await page.content() + await page.inner_text("body")
        shown += await frame.content() + await frame.inner_text("body")
        await page.screenshot(path=str(artifacts / "widget-through-turn.png"))
        await client.stop()

    # The widget gave Chromium the operator's STUN server and, for the client, the broker's
    # TURN server with the credentials of a poll answer (the config has none: its self-check,
    # before the first poll, had STUN only), and nothing of those credentials was logged or
    # shown.
    assert len(configs) >= 2, configs
    stun = {"urls": [turn_server.stun_url], "username": False, "credential": False}
    assert configs[0] == [stun]
    assert configs[-1] == [
        stun,
        {"urls": [turn_server.turn_url("udp")], "username": True, "credential": True},
    ]
    for text in (*console, shown):
        assert not _USERNAME.search(text), text
        assert not _PASSWORD.search(text), text
    # Direct paths were tried and refused by the namespace; coturn relayed the download to
    # the client, for the broker's usernames, which appear nowhere the page shows or logs.
    assert dropped_packets(namespace) > 0
    async with asyncio.timeout(10):  # coturn reports usage by interval and at the end
        while relayed_to_peers(log := turn_server.log_text()) < SIZE:
            await asyncio.sleep(0.2)
    users = set(re.findall(r"user <([^>]+)>", log))
    assert users
    assert not any(user in text for user in users for text in (*console, shown))
