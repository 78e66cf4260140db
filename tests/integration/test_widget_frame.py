"""The page that embeds the widget does not own it (issue 22, row 6), in Debian's Chromium.

The widget runs in a frame of the broker's origin. A page of another origin that embeds it,
and does all it can before and after (consent pre-set in its localStorage, the old
`element.unwallVolunteer`/`unwallWidget` API, messages to the frame, its document, WebRTC
and fetch hooked in its own realm, every message it receives recorded), can neither switch
it on nor learn a client's offer or address; a click in the frame switches it on, and it
then carries a client's download. Nothing else of the broker may be framed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pages import one_page

from unwall.broker.server import BrokerConfig, create_app
from unwall.browser import chromium_here, chromium_in, chromium_missing
from unwall.local import (
    LOOPBACK,
    DemoSite,
    LocalBridge,
    download_via_socks,
    free_port,
    local_bridge,
)
from unwall.netns import NamespaceError, VethNamespace, namespaces_possible

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))

# A /30 of its own per test run, from TEST-NET-3's top (test_browser_defaults.py and
# test_client_page.py take 203.0.113.0 to .239; never 192.0.2.0/24, this machine's uplink).
_BASE = 240 + 4 * (os.getpid() % 4)
HOST_IP = f"203.0.113.{_BASE + 1}"
NS_IP = f"203.0.113.{_BASE + 2}"

#: A site that wants its visitors to volunteer without asking, and to see whom they help.
HOSTILE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A site that wants more</title>
<script>
// Before the widget loads: consent pre-set in this origin's storage, and this realm's
// WebRTC, fetch and messages recorded.
for (const [key, value] of [["unwall.enabled", "1"], ["unwall.totalHelped", "99"]]) {{
  localStorage.setItem(key, value);
}}
window.__seen = [];
const record = (what, value) => window.__seen.push([what, String(value ?? "").slice(0, 20000)]);
const NativePC = window.RTCPeerConnection;
window.RTCPeerConnection = class extends NativePC {{
  constructor(...args) {{
    super(...args);
    this.addEventListener("icecandidate", (e) => record("candidate", e.candidate?.candidate));
  }}
  setRemoteDescription(d) {{ record("remote", d?.sdp); return super.setRemoteDescription(d); }}
  setLocalDescription(d) {{ record("local", d?.sdp); return super.setLocalDescription(d); }}
}};
const nativeFetch = window.fetch;
window.fetch = async (...args) => {{
  const response = await nativeFetch(...args);
  response.clone().text().then((text) => record("fetch", text), () => {{}});
  return response;
}};
addEventListener("message", (e) => record("message", JSON.stringify(e.data)));
</script>
<script type="module" src="{broker}/widget/unwall-widget.js"></script></head>
<body><h1>Today's news</h1>
<div data-unwall-widget></div>
<iframe name="demo" src="{broker}/"></iframe>
</body></html>
"""

#: Run in the hostile page once the widget is there: every way in it can think of.
ATTEMPTS = """async () => {
  const el = document.querySelector("[data-unwall-widget]");
  const tried = {};
  // The old API: the volunteer and the widget on the element, the list on window.
  const there = (value) => (value === undefined ? "undefined" : "there");
  tried.unwallVolunteer = there(el.unwallVolunteer);
  tried.unwallWidget = there(el.unwallWidget);
  tried.unwallWidgets = there(window.unwallWidgets);
  try { el.unwallWidget?.setEnabled(true); } catch (e) { tried.setEnabled = String(e); }
  const frame = el.querySelector("iframe");
  tried.frame = Boolean(frame);
  if (frame) {
    for (const message of [
      {type: "unwall-widget", enabled: true}, {type: "enable"}, "on", {setEnabled: true},
    ]) frame.contentWindow.postMessage(message, "*");
    try {
      frame.contentWindow.document.querySelector("[role=switch]").click();
      tried.document = "reached";
    } catch (e) { tried.document = e.name; }
    try {
      tried.storage = frame.contentWindow.localStorage.getItem("unwall.enabled");
    } catch (e) { tried.storage = e.name; }
    const url = new URL(frame.src);
    for (const name of ["enabled", "on", "autostart", "consent"]) url.searchParams.set(name, "1");
    frame.src = url.href;
  } else {
    // The widget in this page's own realm: its switch is a button here.
    el.querySelector("[role=switch]")?.setAttribute("data-reachable", "yes");
    tried.document = "reached";
  }
  return tried;
}"""

#: What of a WebRTC session would tell the page whom the visitor helps.
SECRETS = ("v=0", "a=candidate", "candidate:", "ice-ufrag", "a=fingerprint", "offer_id")


async def _state(page: Any) -> str:
    return await page.get_attribute("[data-unwall-widget]", "data-state") or ""


async def _switch_of(page: Any) -> Any:
    """The widget's switch: in its frame (or, before it had one, in the page: so that this
    test runs, and fails, against the widget of before)."""
    if await page.query_selector("[data-unwall-widget] iframe"):
        return page.frame_locator("[data-unwall-widget] iframe").locator("[role=switch]")
    return page.locator("[data-unwall-widget] [role=switch]")


@pytest.fixture
async def loopback_broker() -> AsyncIterator[tuple[str, list[str]]]:
    """A broker on loopback (its egress a closed port), and the paths it was asked for."""
    asked: list[str] = []

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        asked.append(request.path)

    app = create_app(BrokerConfig(poll_timeout=1.0, egress_url=f"ws://{LOOPBACK}:9/v1/relay"))
    app.on_response_prepare.append(count)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    yield f"http://{LOOPBACK}:{port}", asked
    await runner.cleanup()


async def test_the_embedding_page_cannot_switch_the_widget_on(
    loopback_broker: tuple[str, list[str]], artifacts: Path
) -> None:
    """Consent pre-set in the page's storage, the old API, messages, the frame's document
    and its URL: the widget stays off and never asks the broker for work."""
    broker_url, asked = loopback_broker
    async with (
        one_page(LOOPBACK, HOSTILE_PAGE.format(broker=broker_url)) as site,
        chromium_here() as browser,
    ):
        assert site != broker_url
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{site}/")
        await page.wait_for_selector("[data-unwall-widget][data-state]", timeout=15_000)
        tried = await page.evaluate(ATTEMPTS)
        await asyncio.sleep(3)  # time to start, had anything switched it on
        assert tried["unwallVolunteer"] == "undefined", tried
        assert tried["unwallWidget"] == "undefined", tried
        assert tried["unwallWidgets"] == "undefined", tried
        assert tried["document"] == "SecurityError", tried
        assert tried["storage"] == "SecurityError", tried

        switch = await _switch_of(page)
        assert await switch.get_attribute("aria-checked") == "false"
        assert await _state(page) == "off"
        assert await page.get_attribute("[data-unwall-widget]", "data-enabled") == "false"
        # Its own total, not the page's 99.
        assert await page.get_attribute("[data-unwall-widget]", "data-clients-total") == "0"
        assert not [path for path in asked if path.startswith("/v1/volunteer/")], asked

        # Nothing else of the broker can be framed: the demo page, with its own switch,
        # is refused in the page's frame.
        demo = page.frame(name="demo")
        assert demo is not None
        assert not demo.url.startswith(broker_url), demo.url
        assert await demo.query_selector("[data-unwall-widget]") is None
        await page.screenshot(path=str(artifacts / "widget-on-a-hostile-page.png"))

        # The visitor's click, in the frame: on.
        await switch.click()
        assert await switch.get_attribute("aria-checked") == "true"
        async with asyncio.timeout(15):
            while await _state(page) in ("off", ""):
                await asyncio.sleep(0.1)
        assert await page.get_attribute("[data-unwall-widget]", "data-enabled") == "true"
        await context.close()


#: A page that hides the widget's frame under bait: the frame is transparent and on top of
#: a "play" button, so that a visitor who clicks the button clicks the switch (clickjacking).
BAIT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A video</title>
<script type="module" src="{broker}/widget/unwall-widget.js"></script>
<style>
  #bait {{ position: absolute; left: 0; top: 0; width: 400px; height: 300px; }}
  [data-unwall-widget] {{ position: absolute; left: 0; top: 0; width: 400px; z-index: 2; }}
  body.hidden [data-unwall-widget] iframe {{ opacity: 0; }}
</style></head>
<body class="hidden"><button id="bait">Play the video</button>
<div data-unwall-widget></div>
</body></html>
"""


async def test_a_click_on_a_hidden_widget_does_not_switch_it_on(
    loopback_broker: tuple[str, list[str]], artifacts: Path
) -> None:
    """Clickjacking: the page makes the frame transparent over its bait. A real click on
    the switch's place (the visitor meant the bait) leaves the widget off and says why;
    once the frame is shown, a click switches it on. (Chromium tells a frame's visibility:
    IntersectionObserver v2. Browsers that cannot take every click, as before.)"""
    broker_url, _ = loopback_broker
    async with (
        one_page(LOOPBACK, BAIT_PAGE.format(broker=broker_url)) as site,
        chromium_here() as browser,
    ):
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{site}/")
        await page.wait_for_selector("[data-unwall-widget][data-state]", timeout=15_000)
        frame = await (await page.query_selector("[data-unwall-widget] iframe")).content_frame()
        switch = await frame.wait_for_selector("[role=switch]")
        box = await switch.bounding_box()
        assert box is not None
        await asyncio.sleep(2)  # as long as anyone could want: it never was visible
        await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        await asyncio.sleep(0.5)
        assert await switch.get_attribute("aria-checked") == "false"
        assert await frame.evaluate("document.querySelector('[role=switch][data-armed]')") is None
        assert await _state(page) == "off"
        note = await frame.evaluate(
            "[...document.querySelectorAll('.unwall-widget__note')]"
            ".filter((n) => !n.hidden).map((n) => n.textContent)"
        )
        assert any("fully visible" in text for text in note), note
        # Shown as it is, the same click is the visitor's own.
        await page.evaluate("document.body.classList.remove('hidden')")
        await frame.wait_for_selector("[role=switch][data-armed]", timeout=5_000)
        await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        async with asyncio.timeout(5):
            while await switch.get_attribute("aria-checked") != "true":
                await asyncio.sleep(0.1)
        await page.screenshot(path=str(artifacts / "widget-shown-after-bait.png"))
        await context.close()


# -- a real client, through the widget the page embeds ---------------------------------------


@pytest.fixture
def namespace() -> Iterator[VethNamespace]:
    reason = namespaces_possible()
    if reason is not None:
        pytest.skip(reason)
    ns = VethNamespace(f"unwall-f{os.getpid() % 100000}", host_ip=HOST_IP, ns_ip=NS_IP)
    try:
        ns.create()
    except NamespaceError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    yield ns
    ns.delete()


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[LocalBridge]:
    async with local_bridge(tmp_path, host=HOST_IP, broker_answer_timeout=5.0) as running:
        await running.start_broker()
        await running.start_egress()
        yield running


async def test_the_embedding_page_learns_nothing_of_whom_the_widget_helps(
    namespace: VethNamespace, bridge: LocalBridge, site: DemoSite, tmp_path: Path
) -> None:
    """A client waits; the page's tricks do not switch the widget on; the visitor's click
    in the frame does, and the widget carries the client's download. Through it all the
    page saw no offer, answer, candidate or address, only words and counts."""
    size = 2_000_000
    _, digest = site.blob(size)
    client = await bridge.start_client(wait_ready=False, extra=("--paths", "1"))
    async with (
        one_page(HOST_IP, HOSTILE_PAGE.format(broker=bridge.broker_url)) as origin,
        chromium_in(namespace, tmp_path) as browser,
    ):
        assert origin.rsplit(":", 1)[1] != str(bridge.broker_port)
        page = await browser.new_page()
        await page.goto(f"{origin}/")
        await page.wait_for_selector("[data-unwall-widget][data-state]", timeout=15_000)
        await page.evaluate(ATTEMPTS)
        await asyncio.sleep(3)
        # (Asserted at the end, after what the page saw.)
        served_unasked = "tunnel ready" in client.log_path.read_text(errors="replace")

        switch = await _switch_of(page)
        if await switch.get_attribute("aria-checked") != "true":
            await switch.click()  # the visitor's click
        async with asyncio.timeout(60):
            while await page.get_attribute("[data-unwall-widget]", "data-clients-now") != "1":
                await asyncio.sleep(0.1)
        await bridge.wait_log(client, "tunnel ready", timeout=30)
        result = await download_via_socks(bridge.socks_port, f"{site.url}/blob/{size}")
        assert result.status == 200
        assert result.sha256 == digest
        await asyncio.sleep(1.2)
        assert (
            int(await page.get_attribute("[data-unwall-widget]", "data-bytes-relayed") or 0) >= size
        )

        seen: list[list[str]] = await page.evaluate("window.__seen")
        leaked = [(what, text[:200]) for what, text in seen if any(s in text for s in SECRETS)]
        assert leaked == [], leaked
        addresses = [(what, text[:200]) for what, text in seen if NS_IP in text or HOST_IP in text]
        assert addresses == [], addresses
        # What it did get: the frame's reports, words and counts.
        assert [what for what, _ in seen] and {what for what, _ in seen} <= {"message"}, seen
        assert not served_unasked, "the widget served a client before the visitor's click"
        await client.stop()
