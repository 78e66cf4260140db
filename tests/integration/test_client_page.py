"""The client's status page in Debian's Chromium (Playwright), its PAC file used by
Chromium, and the terminal's status line: real roles on loopback, as a user runs them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from listening import listening_ports
from pages import one_page

from unwall.browser import chromium_here, chromium_missing
from unwall.egress.identity import generate_identity
from unwall.local import LOOPBACK, TEST_PAGE, DemoSite, LocalBridge, RoleProcess, free_port
from unwall.netns import NamespaceError, VethNamespace, namespaces_possible

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))

PAGE_RE = re.compile(r"status page on (http://127\.0\.0\.1:\d+/)")


async def page_url(bridge: LocalBridge, client: RoleProcess) -> str:
    await bridge.wait_log(client, "status page on http://", timeout=30)
    match = PAGE_RE.search(client.log_path.read_text())
    assert match, client.log_tail()
    return match.group(1)


async def states_seen(page: Any, want: str, timeout: float) -> list[str]:
    """Every state the page shows (data-state), in order, until it shows `want`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await page.get_attribute("#state", "data-state")
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == want:
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"the page never showed {want!r}; it showed {seen}")


async def egress_streams_ok(bridge: LocalBridge) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{LOOPBACK}:{bridge.egress_port}/metrics") as response,
    ):
        text = await response.text()
    match = re.search(r'^unwall_egress_streams_total\{status="ok"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_the_page_follows_the_tunnel_and_its_chart_moves(
    bridge: LocalBridge, site: DemoSite, artifacts: Path
) -> None:
    """No volunteer, then one: connecting, no volunteer, connected; during a download the
    chart and the figures move; the self-test comes through; nothing names the site."""
    await bridge.start_broker(extra=("--answer-timeout", "4"))
    await bridge.start_egress()
    size = 24 * 1024 * 1024
    _, _digest = site.blob(size)
    async with chromium_here() as browser:
        page = await browser.new_page()
        # The browser first, so that the page is open while the client still connects.
        client = await bridge.start_client(
            wait_ready=False, extra=("--self-test-url", f"{site.url}/blob/1000")
        )
        url = await page_url(bridge, client)
        await page.goto(url)
        seen = await states_seen(page, "no_volunteer", timeout=30)
        assert seen[0] in ("loading", "connecting"), seen
        assert "connecting" in seen, seen
        assert await page.text_content("#title") == "No volunteer is free right now"
        assert "keeps trying" in (await page.text_content("#advice") or "")
        await page.screenshot(path=str(artifacts / "client-page-no-volunteer.png"))

        await bridge.start_volunteer()
        await states_seen(page, "connected", timeout=60)
        assert await page.text_content("#title") == "Connected"
        # the default engine: said as it is, not "a video call"
        seen = await page.text_content("#seen-as") or ""
        assert "data channel" in seen and "not a browser's" in seen, seen
        assert await page.text_content("#volunteers") != "0"
        assert f"127.0.0.1:{bridge.http_port}" == await page.text_content("#http")
        assert f"127.0.0.1:{bridge.socks_port}" == await page.text_content("#socks")
        assert (await page.text_content("#pac") or "").endswith("/proxy.pac")

        # A download through the HTTP proxy: the chart gets a peak, and moves.
        before = await page.get_attribute("#chart-down", "points")
        downloading = asyncio.create_task(_download(bridge, f"{site.url}/blob/{size}"))
        try:
            peaks: list[str] = []
            shapes: set[str] = set()
            for _ in range(40):
                shapes.add(await page.get_attribute("#chart-down", "points") or "")
                peaks.append(await page.text_content("#down-now") or "")
                if len(shapes) >= 3 and any(p.endswith(("kB/s", "MB/s")) for p in peaks):
                    break
                await asyncio.sleep(0.5)
            await page.screenshot(path=str(artifacts / "client-page-connected.png"))
        finally:
            got = await downloading
        assert got == size
        assert len(shapes - {before}) >= 2, "the chart did not move during the download"
        assert any(p.endswith(("kB/s", "MB/s")) for p in peaks), peaks

        await page.click("#self-test")
        await page.wait_for_selector('#self-test-result[data-ok="true"]', timeout=30_000)
        assert "It works" in (await page.text_content("#self-test-result") or "")
        body = await page.content()
    status = await _status_json(url)
    assert site.url.split("//")[1] not in str(status)  # no destination in what it serves
    assert str(site.port) not in body.replace(str(bridge.http_port), "")
    log = client.log_path.read_text()
    assert "\x1b[2K" not in log  # not a terminal: plain log lines, no status line
    assert f":{site.port}" not in log


async def _download(bridge: LocalBridge, url: str) -> int:
    proxy = f"http://{LOOPBACK}:{bridge.http_port}"
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(timeout=timeout, trust_env=False) as http,
        http.get(url, proxy=proxy) as response,
    ):
        got = 0
        async for chunk in response.content.iter_chunked(65536):
            got += len(chunk)
            await asyncio.sleep(0)  # let the page's chart have a few samples
        return got


async def _status_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url + "status.json") as response:
        result: dict[str, Any] = await response.json()
        return result


async def test_the_page_says_what_is_wrong(bridge: LocalBridge, artifacts: Path) -> None:
    """A broker that does not answer, and an egress that is not the bridge line's: each in
    plain words, with what to do."""
    await bridge.start_broker()
    await bridge.start_egress()
    await bridge.start_volunteer()
    nowhere = f"http://{LOOPBACK}:{free_port()}"
    lost = await bridge.start_client(wait_ready=False, broker=nowhere)
    impostor_pin = generate_identity().pin
    deceived = await bridge.start_client(
        wait_ready=False,
        pin=impostor_pin,
        socks_port=free_port(),
        http_port=free_port(),
    )
    async with chromium_here() as browser:
        page = await browser.new_page()
        await page.goto(await page_url(bridge, lost))
        await states_seen(page, "broker_unreachable", timeout=30)
        assert await page.text_content("#title") == "Cannot reach the broker"
        assert "--front" in (await page.text_content("#advice") or "")
        await page.screenshot(path=str(artifacts / "client-page-broker-unreachable.png"))

        await page.goto(await page_url(bridge, deceived))
        await states_seen(page, "pin_mismatch", timeout=60)
        assert await page.text_content("#title") == "This is not your egress"
        assert "fresh bridge line" in (await page.text_content("#advice") or "")
        await page.screenshot(path=str(artifacts / "client-page-pin-mismatch.png"))

        # The client stops: the page says so rather than freezing on the last state.
        await deceived.stop()
        await states_seen(page, "stopped", timeout=10)


async def test_chromium_loads_a_page_through_unwall_with_the_pac_file(
    bridge: LocalBridge,
) -> None:
    """Chromium sends nothing for loopback to a proxy, whatever the PAC file says: the page
    it loads is served on the host's side of a veth pair of the test's own namespace."""
    reason = namespaces_possible()
    if reason is not None:
        pytest.skip(reason)
    base = 4 * (os.getpid() % 60)
    ns = VethNamespace(
        f"unwall-p{os.getpid() % 100000}", host_ip=f"203.0.113.{base + 1}",
        ns_ip=f"203.0.113.{base + 2}",
    )  # fmt: skip
    try:
        ns.create()
    except NamespaceError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")

    try:
        async with one_page(ns.host_ip, TEST_PAGE) as site:
            await bridge.start_broker()
            await bridge.start_egress(allow=(f"{ns.host_ip}/32",))
            await bridge.start_volunteer()
            client = await bridge.start_client()
            url = await page_url(bridge, client)
            before = await egress_streams_ok(bridge)
            async with chromium_here(f"--proxy-pac-url={url}proxy.pac") as browser:
                page = await browser.new_page()
                response = await page.goto(f"{site}/")
                assert response is not None and response.status == 200
                assert TEST_PAGE in await response.body()
            assert await egress_streams_ok(bridge) > before  # it came through the egress
    finally:
        ns.delete()


async def test_the_page_answers_only_to_localhost(bridge: LocalBridge) -> None:
    await bridge.start_broker()
    await bridge.start_egress()
    await bridge.start_volunteer()
    nobody = f"http://{LOOPBACK}:{free_port()}/"
    client = await bridge.start_client(extra=("--self-test-url", nobody))
    url = await page_url(bridge, client)
    async with aiohttp.ClientSession() as http:
        # A site that rebinds its name to 127.0.0.1 is still a stranger.
        async with http.get(url + "status.json", headers={"Host": "evil.test"}) as response:
            assert response.status == 403
        headers = {"Origin": "http://evil.test"}
        async with http.post(url + "self-test", headers=headers) as response:
            assert response.status == 403
        async with http.post(url + "self-test") as response:
            result = await response.json()
        # Its URL is a port nobody listens on: the page says what went wrong.
        assert result["ok"] is False, result
        assert result["error"].startswith("unwall could not reach"), result
        async with http.get(url + "proxy.pac") as response:
            assert response.content_type == "application/x-ns-proxy-autoconfig"
            assert f"PROXY 127.0.0.1:{bridge.http_port}" in await response.text()


async def test_a_terminal_gets_one_status_line(bridge: LocalBridge) -> None:
    """Under a terminal (a pty) the client draws its state in place, with log lines above."""
    await bridge.start_broker()
    await bridge.start_egress()
    await bridge.start_volunteer()
    master, slave = pty.openpty()
    socks_port, http_port = free_port(), free_port()
    client = bridge.client_args(extra=("--page", "off"), socks_port=socks_port, http_port=http_port)
    args = [sys.executable, "-m", "unwall", *client]
    process = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=slave, stderr=slave,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "200"},
    )  # fmt: skip
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and b"\x1b[2Kunwall: connected" not in output:
            chunk = await asyncio.to_thread(_read_some, master)
            output += chunk
        assert b"\x1b[2Kunwall: connected \xc2\xb7 " in output, output[-2000:]
        assert b"\x1b[2Kunwall: connecting" in output
        # Log lines are written on a wiped line, and the status line drawn again after.
        assert re.search(rb"\r\x1b\[2K\d\d:\d\d:\d\d INFO .*tunnel ready", output), output[-2000:]
        # --page off: no page listens, only the two proxies (issue 22, row 10).
        assert listening_ports(process.pid) == {socks_port, http_port}
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await asyncio.wait_for(process.wait(), 20)
        os.close(master)


def _read_some(fd: int) -> bytes:
    import select

    ready, _, _ = select.select([fd], [], [], 0.5)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
