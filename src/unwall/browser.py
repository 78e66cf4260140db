"""Debian's browsers inside a network namespace of the test's own.

Never a downloaded browser. Chromium (/usr/bin/chromium, apt) is driven by Playwright and
started through `ip netns exec`, so that its WebRTC host candidate is the namespace's
TEST-NET address. Firefox ESR (/usr/bin/firefox-esr, apt) cannot be driven by Playwright:
it runs as a plain process on a page that needs no clicks (`volunteer_page`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unwall.netns import VethNamespace

log = logging.getLogger("unwall.browser")

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
# The flags above minus the mDNS one: WebRTC as people run it, host candidates hidden
# behind `<uuid>.local` names that unwall's peers cannot resolve (they learn the browser's
# address from its connectivity checks instead; see unwall.transport.rtc).
CHROMIUM_DEFAULT_WEBRTC_FLAGS = [flag for flag in CHROMIUM_FLAGS if "Mdns" not in flag]


def chromium_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return None


def _namespace_name(namespace: VethNamespace | str) -> str:
    return namespace if isinstance(namespace, str) else namespace.name


@contextlib.asynccontextmanager
async def chromium_in(
    namespace: VethNamespace | str, workdir: Path, mdns: bool = False
) -> AsyncIterator[Any]:
    """A Playwright Browser running Debian's Chromium inside `namespace` (an object or the
    name of an existing namespace). `mdns=False` makes Chromium offer its plain host
    address; `mdns=True` leaves WebRTC at the browser's defaults (`.local` names)."""
    from playwright.async_api import async_playwright

    wrapper = workdir / "chromium-in-namespace"
    wrapper.write_text(
        f"#!/bin/sh\nexec {shutil.which('ip') or 'ip'} netns exec {_namespace_name(namespace)} "
        f'{CHROMIUM} "$@"\n'
    )
    wrapper.chmod(0o755)
    flags = CHROMIUM_DEFAULT_WEBRTC_FLAGS if mdns else CHROMIUM_FLAGS
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(wrapper), headless=True, args=flags
        )
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def chromium_here(*args: str) -> AsyncIterator[Any]:
    """A Playwright Browser running Debian's Chromium in this machine's own network, for
    pages on loopback (the client's status page); `args` are extra command-line flags."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_FLAGS, *args]
        )
        try:
            yield browser
        finally:
            await browser.close()


# -- Firefox ESR --------------------------------------------------------------------------
#
# Playwright cannot drive Debian's firefox-esr (it needs its own patched build), so Firefox
# runs as a plain process: `firefox-esr --headless --profile DIR URL` inside the namespace,
# with a fresh profile whose user.js stops it calling home. WebRTC stays at its defaults
# (host candidates hidden behind mDNS names). A page that needs no clicks, such as the
# one `volunteer_page` serves, makes it a volunteer.

FIREFOX = "/usr/bin/firefox-esr"

#: Preferences for a profile that contacts nothing but the page it is given. Modelled on
#: the "recommended preferences" of Firefox's own remote agent (Marionette): telemetry,
#: updates, captive-portal and connectivity probes, Safe Browsing, Normandy and Nimbus
#: studies, remote settings, add-on and plugin (GMP) updates, push, the new-tab feeds,
#: DNS over HTTPS, speculative connections, and every first-run page are off.
FIREFOX_PREFS: dict[str, bool | int | str] = {
    # telemetry and data reporting
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.archive.enabled": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.shutdownPingSender.enabled": False,
    "toolkit.telemetry.firstShutdownPing.enabled": False,
    "toolkit.telemetry.newProfilePing.enabled": False,
    "toolkit.telemetry.updatePing.enabled": False,
    "toolkit.telemetry.bhrPing.enabled": False,
    "telemetry.fog.test.localhost_port": -1,  # Glean (FOG): uploads "succeed" unsent
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.policy.dataSubmissionPolicyBypassNotification": True,
    "browser.ping-centre.telemetry": False,
    "browser.crashReports.unsubmittedCheck.autoSubmit2": False,
    "toolkit.crashreporter.enabled": False,
    # updates of the browser, add-ons, plugins, search engines, system add-ons
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "app.update.checkInstallTime": False,
    "extensions.update.enabled": False,
    "extensions.update.autoUpdateDefault": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.systemAddon.update.url": "",
    "extensions.getAddons.cache.enabled": False,
    "extensions.getAddons.discovery.api_url": "",
    "extensions.blocklist.enabled": False,
    "browser.discovery.enabled": False,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-manager.url": "",
    "media.gmp-gmpopenh264.enabled": False,
    "media.gmp-gmpopenh264.autoupdate": False,
    "browser.search.update": False,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    # remote settings (blocklists, CRLite, intermediates, ...), Normandy, Nimbus, studies
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "security.remote_settings.crlite_filters.enabled": False,
    "security.remote_settings.intermediates.enabled": False,
    "app.normandy.enabled": False,
    "app.normandy.api_url": "",
    "app.shield.optoutstudies.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "nimbus.rollouts.enabled": False,
    # captive portal and connectivity detection, network time
    "network.captive-portal-service.enabled": False,
    "captivedetect.canonicalURL": "",
    "network.connectivity-service.enabled": False,
    "network.sntp.pools": "",
    # Safe Browsing
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.passwords.enabled": False,
    "browser.safebrowsing.provider.google.updateURL": "",
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    # push, sync, accounts, geolocation, OCSP, DNS over HTTPS
    "dom.push.connection.enabled": False,
    "dom.push.serverURL": "",
    "identity.fxaccounts.enabled": False,
    "geo.provider.network.url": "",
    "security.OCSP.enabled": 0,
    "network.trr.mode": 5,
    "doh-rollout.enabled": False,
    # speculative and background connections
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.predictor.enabled": False,
    "network.http.speculative-parallel-limit": 0,
    "browser.places.speculativeConnect.enabled": False,
    "browser.urlbar.speculativeConnect.enabled": False,
    "browser.urlbar.suggest.quicksuggest.sponsored": False,
    "browser.urlbar.suggest.quicksuggest.nonsponsored": False,
    "browser.topsites.contile.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.newtabpage.activity-stream.feeds.section.topstories": False,
    "browser.newtabpage.activity-stream.feeds.topsites": False,
    "browser.newtabpage.activity-stream.feeds.snippets": False,
    "browser.newtabpage.activity-stream.feeds.telemetry": False,
    "browser.newtabpage.activity-stream.telemetry": False,
    "browser.newtabpage.activity-stream.asrouter.providers.cfr": "",
    "browser.newtabpage.activity-stream.asrouter.providers.message-groups": "",
    "browser.newtabpage.activity-stream.asrouter.providers.messaging-experiments": "",
    # first run: no welcome, no default-browser question, no what's-new page
    "browser.aboutwelcome.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.homepage": "about:blank",
    "browser.startup.page": 0,
    "startup.homepage_welcome_url": "",
    "startup.homepage_welcome_url.additional": "",
    "datareporting.policy.firstRunURL": "",
    "browser.tabs.warnOnClose": False,
    "browser.sessionstore.resume_from_crash": False,
    # what the page logs goes to Firefox's stdout, for the test's log
    "devtools.console.stdout.content": True,
}


def firefox_missing() -> str | None:
    if not Path(FIREFOX).exists():
        return f"{FIREFOX} is not installed (apt-get install firefox-esr)"
    return None


def _pref_value(value: bool | int | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def write_firefox_profile(
    profile: Path, prefs: Mapping[str, bool | int | str] | None = None
) -> Path:
    """A fresh profile directory with FIREFOX_PREFS (and `prefs` over them) in user.js."""
    profile.mkdir(parents=True, exist_ok=True)
    lines = [
        f"user_pref({json.dumps(name)}, {_pref_value(value)});"
        for name, value in {**FIREFOX_PREFS, **(prefs or {})}.items()
    ]
    (profile / "user.js").write_text("\n".join(lines) + "\n")
    return profile


@dataclass
class FirefoxProcess:
    """Firefox running in a namespace; stdout and stderr (page console included) in `log`."""

    process: asyncio.subprocess.Process
    profile: Path
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@contextlib.asynccontextmanager
async def firefox_in(
    namespace: VethNamespace | str,
    url: str,
    workdir: Path,
    prefs: Mapping[str, bool | int | str] | None = None,
) -> AsyncIterator[FirefoxProcess]:
    """Debian's firefox-esr, headless, showing `url`, inside `namespace` (an object or the
    name of an existing namespace), with a fresh profile under `workdir`.

    Firefox forks content processes; it runs in a session of its own, and the whole
    session is ended on exit (SIGTERM, then SIGKILL after 10 s)."""
    profile = write_firefox_profile(workdir / "firefox-profile", prefs)
    log_path = workdir / "firefox.log"
    home = workdir / "firefox-home"  # Firefox writes caches under $HOME
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "MOZ_HEADLESS": "1",
        "MOZ_CRASHREPORTER_DISABLE": "1",
        "MOZ_DISABLE_AUTO_SAFE_MODE": "1",
        # Release builds ignore services.settings.server (remote settings) without it.
        "MOZ_REMOTE_SETTINGS_DEVTOOLS": "1",
    }
    env.pop("DISPLAY", None)
    with log_path.open("wb") as handle:
        process = await asyncio.create_subprocess_exec(
            shutil.which("ip") or "ip",
            "netns",
            "exec",
            _namespace_name(namespace),
            FIREFOX,
            "--headless",
            "--no-remote",
            "--new-instance",
            "--profile",
            str(profile),
            url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=handle,
            stderr=handle,
            env=env,
            start_new_session=True,
        )
    try:
        yield FirefoxProcess(process, profile, log_path)
    finally:
        await _end_session(process)


async def _end_session(process: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    """End the session `process` leads (it and every process it forked)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            continue
        if sig == signal.SIGTERM:
            # The leader is gone; give its children a moment, then make sure.
            await asyncio.sleep(0.2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        return


# -- a volunteer page for browsers nobody clicks in ----------------------------------------

VOLUNTEER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unwall volunteer</title>
<link rel="icon" href="data:,"></head>
<body><div data-unwall-widget></div>
<script type="module">
// The widget mounts when its module loads; turn it on (this is the visitor's click) and
// report what it shows to the page's own server twice a second.
const report = (extra) => fetch("/report", {{
  method: "POST", headers: {{"Content-Type": "application/json"}},
  body: JSON.stringify({{userAgent: navigator.userAgent, ...extra}}),
}}).catch(() => {{}});
addEventListener("error", (e) => report({{error: String(e.message)}}));
addEventListener("unhandledrejection", (e) => report({{error: String(e.reason)}}));
// The ICE candidates this browser offers (the widget's peer connections are made later).
const candidates = [];
const NativePeerConnection = window.RTCPeerConnection;
window.RTCPeerConnection = class extends NativePeerConnection {{
  constructor(...args) {{
    super(...args);
    this.addEventListener("icecandidate", (e) => {{
      if (!e.candidate?.candidate) return;
      candidates.push(e.candidate.candidate);
      if (candidates.length > 50) candidates.shift();
    }});
  }}
}};
const {{ mountedWidgets }} = await import({widget});
const [widget] = await mountedWidgets();
widget.setEnabled(true);
setInterval(() => {{
  const el = widget.element;
  report({{
    state: el.getAttribute("data-state"),
    clientsNow: Number(el.getAttribute("data-clients-now")),
    clientsTotal: Number(el.getAttribute("data-clients-total")),
    bytesRelayed: Number(el.getAttribute("data-bytes-relayed")),
    status: el.querySelector(".unwall-widget__status")?.textContent ?? "",
    carrier: el.getAttribute("data-carrier"),
    clientsOverMedia: widget.volunteer ? widget.volunteer.stats().clientsOverMedia : 0,
    candidates,
  }});
}}, 500);
</script></body></html>
"""


@dataclass
class VolunteerPage:
    """A page that turns the widget on at load and reports its state back (`reports`)."""

    url: str
    reports: list[dict[str, Any]] = field(default_factory=list)

    @property
    def latest(self) -> dict[str, Any]:
        return self.reports[-1] if self.reports else {}

    async def wait_for(
        self, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first report (from now on, or the latest) for which `check` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.reports and check(self.latest):
                return self.latest
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the widget never showed {what} in {timeout} s: {self.latest}")


@contextlib.asynccontextmanager
async def volunteer_page(host: str, broker_url: str) -> AsyncIterator[VolunteerPage]:
    """Serve VOLUNTEER_PAGE on `host` (a port of its own): another origin than the broker's,
    as on a site that embeds the widget. For browsers that no test drives, like Firefox."""
    from aiohttp import web

    body = VOLUNTEER_PAGE.format(widget=json.dumps(f"{broker_url}/widget/unwall-widget.js"))
    page = VolunteerPage(url="")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/html")

    async def report(request: web.Request) -> web.Response:
        data = await request.json()
        if isinstance(data, dict):
            if "error" in data:
                log.warning("volunteer page: %s", data["error"])
            page.reports.append(data)
            del page.reports[:-200]
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_post("/report", report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
        page.url = f"http://{host}:{runner.addresses[0][1]}/"
        yield page
    finally:
        await runner.cleanup()
