"""The widget and the broker's demo page in every language, in Debian's Chromium: chosen
from the browser's languages or data-lang, Persian laid out right to left, nothing left in
English (screenshots in artifacts/)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pages import one_page

from unwall.broker.server import STATIC_DIR, BrokerConfig, create_app
from unwall.browser import chromium_here, chromium_missing, widget_realm
from unwall.local import LOOPBACK, free_port

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))

LOCALES = {
    "en": "en-US",
    "zh-Hans": "zh-CN",
    "zh-Hant": "zh-TW",
    "fa": "fa-IR",
    "ru": "ru-RU",
    "es": "es-MX",
}


def catalogue(lang: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((STATIC_DIR / "i18n" / f"{lang}.json").read_text())
    return result


@pytest.fixture
async def broker_url() -> AsyncIterator[str]:
    config = BrokerConfig(egress_url=f"ws://{LOOPBACK}:9/v1/relay")
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    yield f"http://{LOOPBACK}:{port}"
    await runner.cleanup()


async def _ready(page: Any, lang: str) -> None:
    await page.wait_for_function(
        "lang => document.documentElement.dataset.i18nReady === lang"
        " && document.querySelector('[data-unwall-widget][data-state]')",
        arg=lang,
        timeout=15_000,
    )


async def test_every_language_from_the_browser(broker_url: str, artifacts: Path) -> None:
    english = catalogue("en")
    english_texts = {v for v in english.values() if isinstance(v, str) and len(v) > 12}
    async with chromium_here() as browser:
        for lang, locale in LOCALES.items():
            words = catalogue(lang)
            context = await browser.new_context(locale=locale)
            page = await context.new_page()
            await page.goto(broker_url + "/")
            await _ready(page, lang)
            assert await page.text_content("h1") == words["page.heading"]
            assert await page.title() == words["page.title"]
            widget = page.locator("[data-unwall-widget]")
            # The widget is in its frame (the broker's origin), in the page's language.
            frame = await widget_realm(page)
            assert await frame.get_attribute(".unwall-widget", "lang") == lang
            assert await frame.text_content(".unwall-widget__title") == words["widget.title"]
            assert await frame.text_content(".unwall-widget__status") == words["status.off"]
            assert await frame.text_content(".unwall-widget__label") == words["widget.switch"]
            stats = await frame.locator(".unwall-widget__stat").all_text_contents()
            assert stats[0].startswith(words["widget.now"].strip()), stats
            assert await widget.locator("iframe").get_attribute("title") == words["widget.title"]
            if lang != "en":
                shown = await page.evaluate("document.body.innerText")
                shown += await frame.evaluate("document.body.innerText")
                left = [text for text in english_texts if text in shown]
                assert left == [], f"{lang}: still in English: {left}"
            await page.screenshot(path=str(artifacts / f"widget-page-{lang}.png"), full_page=True)
            await widget.screenshot(path=str(artifacts / f"widget-{lang}.png"))
            if lang == "fa":
                await _right_to_left(page, frame)
            else:
                assert await page.evaluate("getComputedStyle(document.body).direction") == "ltr"
            await context.close()


async def _right_to_left(page: Any, frame: Any) -> None:
    """Persian: the page and the widget run right to left, the switch's track sits on the
    right of its label, headings hug the right edge."""
    assert await page.evaluate("document.documentElement.dir") == "rtl"
    assert (
        await frame.evaluate("getComputedStyle(document.querySelector('.unwall-widget')).direction")
        == "rtl"
    )
    track = await frame.locator(".unwall-widget__track").bounding_box()
    label = await frame.locator(".unwall-widget__label").bounding_box()
    assert track and label and track["x"] > label["x"] + label["width"] - 1, (track, label)
    main = await page.locator("main").bounding_box()
    h1 = await page.evaluate(
        "(() => { const r = document.createRange();"
        " r.selectNodeContents(document.querySelector('h1'));"
        " const b = r.getBoundingClientRect(); return {x: b.x, width: b.width}; })()"
    )
    assert main is not None
    right_gap = (main["x"] + main["width"]) - (h1["x"] + h1["width"])
    left_gap = h1["x"] - main["x"]
    assert right_gap < left_gap, (right_gap, left_gap)
    # The code sample stays left to right.
    assert await page.evaluate("getComputedStyle(document.querySelector('pre')).direction") == "ltr"


async def test_data_lang_wins_on_another_site(broker_url: str, artifacts: Path) -> None:
    """An embedding site names the widget's language; the browser's is English."""
    page_html = (
        "<!doctype html><html lang='ru'><head><meta charset='utf-8'></head><body>"
        f"<script type='module' src='{broker_url}/widget/unwall-widget.js'></script>"
        "<div data-unwall-widget data-lang='ru'></div></body></html>"
    )

    async with one_page(LOOPBACK, page_html) as site, chromium_here() as browser:
        context = await browser.new_context(locale="en-US")
        page = await context.new_page()
        await page.goto(f"{site}/")
        await page.wait_for_selector("[data-unwall-widget][data-state]", timeout=15_000)
        frame = await widget_realm(page)
        words = catalogue("ru")
        assert await frame.text_content(".unwall-widget__title") == words["widget.title"]
        assert await frame.text_content(".unwall-widget__onoff") == words["widget.off"]
        await page.screenshot(path=str(artifacts / "widget-data-lang-ru.png"))
        await context.close()


async def test_the_widget_says_what_is_wrong_in_its_language(
    broker_url: str, artifacts: Path
) -> None:
    """Switched on against a broker whose egress does not answer (its URL is a closed
    port): the self-check says so, in Spanish."""
    words = catalogue("es")
    async with chromium_here() as browser:
        context = await browser.new_context(locale="es-ES")
        page = await context.new_page()
        await page.goto(broker_url + "/")
        await _ready(page, "es")
        frame = await widget_realm(page)
        await frame.click(".unwall-widget__switch[data-armed]")
        await page.wait_for_function(
            "() => document.querySelector('[data-unwall-widget]').dataset.state === 'error'",
            timeout=20_000,
        )
        shown = await frame.text_content(".unwall-widget__status") or ""
        expected = words["error.egress"].split("{seconds}")[0]
        assert shown.startswith(expected), shown
        assert await frame.text_content(".unwall-widget__onoff") == words["widget.on"]
        await page.screenshot(path=str(artifacts / "widget-egress-unreachable-es.png"))
        await context.close()
