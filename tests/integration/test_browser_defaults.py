"""Browsers as people run them: WebRTC at its defaults, host candidates behind mDNS names.

Firefox ESR and Chromium (without --disable-features=WebRtcHideLocalIpsWithMdns) offer
only `<uuid>.local` host candidates. The browser runs in a namespace of this test's own,
whose mDNS traffic is dropped (as across the internet, nobody can resolve those names);
broker, egress and the Python client are on the host side of its veth, and there is no
STUN server. The client connects anyway, from the peer-reflexive candidate the browser's
connectivity checks reveal (unwall.transport.aiortc_engine.ice).

Both open unwall.browser.volunteer_page, a page of another origin that embeds the widget;
the widget's switch is clicked in its frame (the broker's origin), and what the frame shows
is reported: in Chromium by Playwright (drive_widget), in Firefox, which Playwright cannot
drive, over WebDriver BiDi (unwall.firefox_bidi, started by firefox_in).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from unwall.browser import (
    VolunteerPage,
    chromium_in,
    chromium_missing,
    drive_widget,
    firefox_in,
    firefox_missing,
    volunteer_page,
)
from unwall.local import DemoSite, LocalBridge, download_via_socks, local_bridge
from unwall.netns import NamespaceError, VethNamespace, namespaces_possible

# A /30 of its own per test run (203.0.113.0/24: test_browser.py uses 198.51.100.0/24).
_BASE = 4 * (os.getpid() % 60)
HOST_IP = f"203.0.113.{_BASE + 1}"
NS_IP = f"203.0.113.{_BASE + 2}"
SIZE = 5_000_000

_MDNS_HOST = re.compile(r"^[0-9a-f-]{36}\.local$")


@pytest.fixture
def namespace() -> Iterator[VethNamespace]:
    reason = namespaces_possible()
    if reason is not None:
        pytest.skip(reason)
    ns = VethNamespace(f"unwall-m{os.getpid() % 100000}", host_ip=HOST_IP, ns_ip=NS_IP)
    try:
        ns.create()
        # Nobody outside the namespace resolves the browser's names, as across the
        # internet: its mDNS responder neither hears queries nor answers. Then two
        # counters: name lookups (its resolver is 127.0.0.1, where nothing answers) and
        # unicast packets to anything but the test's own servers (multicast, such as the
        # IGMP report of the browser joining the mDNS group, stays on the test's link).
        for rule in (
            "INPUT -p udp --dport 5353 -j DROP",
            "OUTPUT -p udp --dport 5353 -j DROP",
            "OUTPUT -p udp --sport 5353 -j DROP",
            "OUTPUT -o lo -p udp --dport 53",
            "OUTPUT -o lo -p tcp --dport 53",
            f"OUTPUT ! -o lo ! -d {HOST_IP} -m addrtype --dst-type UNICAST",
        ):
            subprocess.run(
                ns.command("iptables", "-A", *rule.split()),
                check=True,
                capture_output=True,
                timeout=30,
            )
    except (NamespaceError, subprocess.CalledProcessError, FileNotFoundError) as exc:
        ns.delete()
        pytest.skip(f"cannot set up a network namespace here: {exc}")
    yield ns
    ns.delete()


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[LocalBridge]:
    async with local_bridge(tmp_path, host=HOST_IP, broker_answer_timeout=5.0) as running:
        # No --ice-server: host candidates only, as in the reported failure.
        await running.start_broker()
        await running.start_egress()
        yield running


def _packets(ns: VethNamespace, chain: str, rule_index: int) -> int:
    listing = subprocess.run(
        ns.command("iptables", "-L", chain, "-v", "-n", "-x"),
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return int(listing.splitlines()[2 + rule_index].split()[0])


def mdns_packets_dropped(ns: VethNamespace) -> int:
    """mDNS packets that reached the namespace: the client's queries, sent out through
    its pinned address (unwall.transport.aiortc_engine.ice), never through this machine's uplink."""
    return _packets(ns, "INPUT", 0)


def calls_elsewhere(ns: VethNamespace) -> dict[str, int]:
    """What the browser tried beyond the test's servers: name lookups, other packets."""
    return {
        "dns_queries": _packets(ns, "OUTPUT", 2) + _packets(ns, "OUTPUT", 3),
        "packets_elsewhere": _packets(ns, "OUTPUT", 4),
    }


def host_candidates(page: VolunteerPage) -> list[str]:
    """The connection addresses of the host candidates the browser offered."""
    found = []
    for line in page.latest.get("candidates", []):
        fields = str(line).split()
        if "typ" in fields and fields[fields.index("typ") + 1] == "host":
            found.append(fields[4])
    return found


async def carry_a_download(
    bridge: LocalBridge,
    page: VolunteerPage,
    site: DemoSite,
    ns: VethNamespace,
    timings: dict[str, float],
    *,
    signals_end_of_candidates: bool,
) -> None:
    """Start a client, let the browser volunteer carry SIZE bytes, check every byte."""
    _, digest = site.blob(SIZE)
    started = time.monotonic()
    await page.wait_for(lambda r: r.get("state") == "idle", "the idle state", timeout=60)
    timings["browser_ready_s"] = time.monotonic() - started

    started = time.monotonic()
    client = await bridge.start_client(extra=("--paths", "1"))
    timings["client_ready_s"] = time.monotonic() - started
    await page.wait_for(lambda r: r.get("clientsNow") == 1, "a person helped")

    started = time.monotonic()
    result = await download_via_socks(bridge.socks_port, f"{site.url}/blob/{SIZE}")
    timings["download_s"] = time.monotonic() - started
    assert result.status == 200
    assert result.sha256 == digest
    await page.wait_for(lambda r: r.get("bytesRelayed", 0) >= SIZE, "the bytes relayed")

    # The browser offered mDNS names only, so the client reached it through the address
    # its checks came from (the candidates are reported once gathering is complete).
    offered = host_candidates(page)
    assert offered, page.latest
    assert all(_MDNS_HOST.match(address) for address in offered), offered
    assert mdns_packets_dropped(ns) > 0
    if signals_end_of_candidates:
        # Firefox ends its candidates in the SDP, where aioice alone gave up (issue 8).
        client_log = client.log_path.read_text(errors="replace")
        assert "waiting for its checks" in client_log, client.log_tail()
    await client.stop()


def _report_timings(name: str, timings: dict[str, float]) -> None:
    print(f"{name}: " + ", ".join(f"{key} {value:.2f}" for key, value in timings.items()))


@pytest.mark.skipif(firefox_missing() is not None, reason=firefox_missing() or "")
async def test_firefox_esr_volunteer_carries_a_download(
    namespace: VethNamespace, bridge: LocalBridge, site: DemoSite, tmp_path: Path
) -> None:
    timings: dict[str, float] = {}
    async with (
        volunteer_page(HOST_IP, bridge.broker_url) as page,
        firefox_in(namespace.name, page.url, tmp_path) as firefox,
    ):
        try:
            await carry_a_download(
                bridge, page, site, namespace, timings, signals_end_of_candidates=True
            )
        except BaseException:
            print(f"firefox log:\n{firefox.log_tail(60)}")
            raise
        assert "Firefox" in page.latest.get("userAgent", "")
    # Counted once Firefox has exited: with its profile (unwall.browser.FIREFOX_PREFS) it
    # called home nowhere and looked no name up.
    assert calls_elsewhere(namespace) == {"dns_queries": 0, "packets_elsewhere": 0}
    _report_timings("firefox-esr", timings)


@pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")
async def test_chromium_default_webrtc_volunteer_carries_a_download(
    namespace: VethNamespace, bridge: LocalBridge, site: DemoSite, tmp_path: Path
) -> None:
    timings: dict[str, float] = {}
    async with (
        volunteer_page(HOST_IP, bridge.broker_url) as page,
        chromium_in(namespace, tmp_path, mdns=True) as browser,
    ):
        tab: Any = await browser.new_page()
        async with drive_widget(tab, page):
            await carry_a_download(
                bridge, page, site, namespace, timings, signals_end_of_candidates=False
            )
            assert "Chrome" in page.latest.get("userAgent", "")
    # Not asserted: Debian's Chromium looks names up even with --disable-background-networking.
    print("chromium, beyond the test's servers:", calls_elsewhere(namespace))
    _report_timings("chromium", timings)


async def test_volunteer_page_needs_no_browser_to_be_served() -> None:
    """The page itself: it embeds the broker's widget and takes reports."""
    import aiohttp

    async with volunteer_page("127.0.0.1", "http://127.0.0.1:9") as page:
        async with aiohttp.ClientSession() as http:
            async with http.get(page.url) as response:
                text = await response.text()
            assert '"http://127.0.0.1:9/widget/unwall-widget.js"' in text
            async with http.post(f"{page.url}report", json={"state": "idle"}) as response:
                assert response.status == 204
        assert (await page.wait_for(lambda r: r["state"] == "idle", "idle", 1))["state"] == "idle"
        with pytest.raises(TimeoutError):
            await page.wait_for(lambda r: r["state"] == "helping", "helping", 0.3)
