"""Click the widget's switch in Firefox, and report what its frame shows, over WebDriver BiDi.

Playwright cannot drive Debian's firefox-esr, and the widget runs in a frame of the broker's
origin that the page embedding it cannot switch on (issue 22): so a test drives Firefox as
its owner, through the WebDriver BiDi server Firefox opens on its own loopback
(`--remote-debugging-port`). Run inside Firefox's network namespace by
`unwall.browser.firefox_in`:

    python -m unwall.firefox_bidi WS_URL PAGE_URL REPORT_URL

It records the ICE candidates of every realm (a preload script), opens PAGE_URL, waits for
the widget's frame, clicks its switch, and then twice a second POSTs what the frame shows
(unwall.browser.WIDGET_REPORT) as JSON to REPORT_URL, until it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
from typing import Any

import aiohttp

from unwall.browser import RECORD_ICE, WIDGET_READY, WIDGET_REPORT

log = logging.getLogger("unwall.firefox_bidi")


class BidiError(Exception):
    pass


class Bidi:
    """One WebDriver BiDi session: commands and their results, events ignored."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self.ids)
        await self.ws.send_json({"id": command_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") != command_id:
                continue  # an event
            if message.get("type") == "error":
                raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
            result: dict[str, Any] = message.get("result", {})
            return result

    async def value(self, context: str, function: str) -> Any:
        """What `function` (a JS function's source, maybe async) returns in `context`,
        when it returns a string, a number or a boolean; None otherwise."""
        result = await self.call(
            "script.callFunction",
            functionDeclaration=function,
            target={"context": context},
            awaitPromise=True,
            userActivation=True,
        )
        if result.get("type") != "success":
            return None
        return result.get("result", {}).get("value")


async def widget_context(bidi: Bidi, top: str, timeout: float = 30.0) -> str:
    """The browsing context of the widget's frame in `top`, once its panel is mounted."""
    async with asyncio.timeout(timeout):
        while True:
            tree = await bidi.call("browsingContext.getTree", root=top)
            for context in tree.get("contexts", []):
                for child in context.get("children") or []:
                    if "/widget/frame.html" in child.get("url", ""):
                        with contextlib.suppress(BidiError):
                            if await bidi.value(child["context"], WIDGET_READY) is True:
                                return str(child["context"])
            await asyncio.sleep(0.2)


async def drive(ws_url: str, page_url: str, report_url: str, interval: float = 0.5) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{ws_url.rstrip('/')}/session", max_msg_size=0) as ws,
    ):
        bidi = Bidi(ws)
        await bidi.call("session.new", capabilities={})
        await bidi.call("script.addPreloadScript", functionDeclaration=f"() => {{{RECORD_ICE}}}")
        tree = await bidi.call("browsingContext.getTree")
        top = tree["contexts"][0]["context"]
        await bidi.call("browsingContext.navigate", context=top, url=page_url, wait="complete")
        frame = await widget_context(bidi, top)
        await bidi.value(frame, "() => { document.querySelector('[role=switch]').click(); }")
        print(f"clicked the widget's switch in {page_url}", flush=True)
        report = f"async () => JSON.stringify(await ({WIDGET_REPORT})())"
        while True:
            try:
                text = await bidi.value(frame, report)
                if isinstance(text, str):
                    async with http.post(
                        report_url, data=text, headers={"Content-Type": "application/json"}
                    ) as response:
                        await response.read()
            except (aiohttp.ClientError, BidiError, OSError) as exc:
                print(f"report: {exc}", flush=True)
            await asyncio.sleep(interval)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(drive(argv[0], argv[1], argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
