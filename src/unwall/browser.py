"""Debian's Chromium, driven by Playwright, inside a namespace of the test's own.

Never a downloaded browser: `executable_path` is /usr/bin/chromium (apt), started through
`ip netns exec` so that its WebRTC host candidate is the namespace's TEST-NET address.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from unwall.netns import VethNamespace

CHROMIUM = "/usr/bin/chromium"

CHROMIUM_FLAGS = [
    "--no-sandbox",  # we run as root in CI
    "--disable-gpu",
    "--disable-background-networking",  # no calls home: the machine has no internet
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    # Chromium hides host candidates behind random .local mDNS names; the peers here
    # cannot resolve those, so tests ask for the plain address. (Real clients would
    # resolve mDNS or, across the internet, use STUN/TURN candidates anyway.)
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def chromium_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return None


@contextlib.asynccontextmanager
async def chromium_in(namespace: VethNamespace, workdir: Path) -> AsyncIterator[Any]:
    """A Playwright Browser running Debian's Chromium inside `namespace`."""
    from playwright.async_api import async_playwright

    wrapper = workdir / "chromium-in-namespace"
    wrapper.write_text(
        f"#!/bin/sh\nexec {shutil.which('ip') or 'ip'} netns exec {namespace.name} "
        f'{CHROMIUM} "$@"\n'
    )
    wrapper.chmod(0o755)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(wrapper), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            await browser.close()
