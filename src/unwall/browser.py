"""Debian's browsers inside a network namespace of the test's own.

Never a downloaded browser. Chromium (/usr/bin/chromium, apt) is driven by Playwright and
started through `ip netns exec`, so that its WebRTC host candidate is the namespace's
TEST-NET address. Firefox ESR (/usr/bin/firefox-esr, apt) cannot be driven by Playwright:
it runs as a plain process, and WebDriver BiDi (unwall.firefox_bidi) clicks the widget's
switch on the page it opens (`volunteer_page`).

The widget runs in a frame of the broker's origin inside the page that embeds it (issue
22): its switch and figures are in that frame (`widget_switch`, `widget_realm`), which a
test reaches as the browser's owner; the embedding page cannot.

Never as root, never without the browser's sandbox: started by root (as in CI), Chromium
runs as an unprivileged user id of its own (`unwall.transport.chromium.engine.
browser_user`), through `setpriv`, with its profile, home and temporary files in a
directory of that user that Playwright removes afterwards, and with its sandbox on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from unwall.netns import VethNamespace
from unwall.transport.chromium.engine import (
    BrowserUser,
    browser_home,
    browser_user,
    remove_browser_home,
    sandbox_missing,
)

log = logging.getLogger("unwall.browser")

CHROMIUM = "/usr/bin/chromium"

CHROMIUM_FLAGS = [
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
# address from its connectivity checks instead; see unwall.transport.aiortc_engine.ice).
CHROMIUM_DEFAULT_WEBRTC_FLAGS = [flag for flag in CHROMIUM_FLAGS if "Mdns" not in flag]


# -- the widget's frame --------------------------------------------------------------------

#: The widget's frame in a page that embeds it (unwall-widget.js puts it in the placeholder).
WIDGET_FRAME = "[data-unwall-widget] iframe"


def widget_frame(page: Any) -> Any:
    """The widget's frame in a Playwright `page` (a FrameLocator)."""
    return page.frame_locator(WIDGET_FRAME)


def widget_switch(page: Any) -> Any:
    """The widget's on/off switch in a Playwright `page` (a Locator, in the frame), once
    it takes a click: in Chromium only after the frame has been fully visible for a moment
    (panel.js, visibilityGate), so a click through this locator waits for that."""
    return widget_frame(page).locator("[role=switch][data-armed]")


async def widget_realm(page: Any, timeout: float = 15.0) -> Any:
    """The widget's frame in a Playwright `page` as a Frame (to read or evaluate in),
    once its panel is mounted."""
    handle = await page.wait_for_selector(WIDGET_FRAME, timeout=timeout * 1000)
    frame = await handle.content_frame()
    if frame is None:
        raise RuntimeError("the widget's iframe has no frame")
    await frame.wait_for_selector(".unwall-widget[data-state]", timeout=timeout * 1000)
    return frame


#: Run in every realm before its scripts (a Playwright init script, a BiDi preload
#: script): the ICE candidates of the realm's peer connections, in window.__unwallCandidates.
RECORD_ICE = """
const candidates = (window.__unwallCandidates = []);
const NativePeerConnection = window.RTCPeerConnection;
if (NativePeerConnection) {
  window.RTCPeerConnection = class extends NativePeerConnection {
    constructor(...args) {
      super(...args);
      this.addEventListener("icecandidate", (e) => {
        if (!e.candidate?.candidate) return;
        candidates.push(e.candidate.candidate);
        if (candidates.length > 50) candidates.shift();
      });
    }
  };
}
"""

#: True in the widget's frame once its panel is mounted.
WIDGET_READY = "() => Boolean(document.querySelector('.unwall-widget[data-state]'))"

#: Evaluated in the widget's frame: what it shows, and how many clients rode video.
WIDGET_REPORT = """async () => {
  const el = document.querySelector(".unwall-widget");
  const { widgets } = await import(new URL("panel.js", location.href).href);
  const volunteer = widgets[0]?.volunteer;
  return {
    userAgent: navigator.userAgent,
    state: el?.getAttribute("data-state") ?? null,
    clientsNow: Number(el?.getAttribute("data-clients-now") ?? 0),
    clientsTotal: Number(el?.getAttribute("data-clients-total") ?? 0),
    bytesRelayed: Number(el?.getAttribute("data-bytes-relayed") ?? 0),
    status: el?.querySelector(".unwall-widget__status")?.textContent ?? "",
    carrier: el?.getAttribute("data-carrier") ?? null,
    clientsOverMedia: volunteer ? volunteer.stats().clientsOverMedia : 0,
    candidates: window.__unwallCandidates ?? [],
  };
}"""


def chromium_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return sandbox_missing()


def _namespace_name(namespace: VethNamespace | str) -> str:
    return namespace if isinstance(namespace, str) else namespace.name


def _as_user(user: BrowserUser | None) -> list[str]:
    """The command prefix that drops to `user` (none when this process is not root)."""
    if user is None:
        return []
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--"]


def _in_namespace(namespace: VethNamespace | str | None) -> list[str]:
    if namespace is None:
        return []
    return [shutil.which("ip") or "ip", "netns", "exec", _namespace_name(namespace)]


def write_chromium_wrapper(
    path: Path, namespace: VethNamespace | str | None, user: BrowserUser | None
) -> Path:
    """The executable Playwright starts as "Chromium": it gives the profile Playwright made
    (`--user-data-dir`, a 0700 directory of this process's user) to the browser's user,
    puts the browser's home and temporary files in it, and starts Debian's Chromium (in
    `namespace`, if one) as that user. Playwright removes the profile after."""
    command = shlex.join([*_in_namespace(namespace), *_as_user(user), CHROMIUM])
    owner = "" if user is None else f'chown -R {user.uid}:{user.gid} "$profile"\n'
    path.write_text(
        "#!/bin/sh\n"
        "# Written by unwall.browser: Debian's Chromium, never as root, with its sandbox.\n"
        "profile=\n"
        "for arg; do\n"
        '  case "$arg" in --user-data-dir=*) profile="${arg#--user-data-dir=}";; esac\n'
        "done\n"
        '[ -n "$profile" ] || { echo "$0: no --user-data-dir" >&2; exit 1; }\n'
        'mkdir -p "$profile/tmp"\n'
        f"{owner}"
        'export HOME="$profile" XDG_CONFIG_HOME="$profile/.config" '
        'XDG_CACHE_HOME="$profile/.cache" TMPDIR="$profile/tmp"\n'
        f'exec {command} "$@"\n'
    )
    path.chmod(0o755)
    return path


@contextlib.asynccontextmanager
async def _chromium(namespace: VethNamespace | str | None, args: list[str]) -> AsyncIterator[Any]:
    """Playwright's Chromium through `write_chromium_wrapper`, with its sandbox on
    (Playwright adds `--no-sandbox` unless told `chromium_sandbox=True`)."""
    from playwright.async_api import async_playwright

    wrappers = Path(tempfile.mkdtemp(prefix="unwall-chromium-wrapper-"))
    try:
        wrapper = write_chromium_wrapper(wrappers / "chromium", namespace, browser_user())
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(wrapper), headless=True, args=args, chromium_sandbox=True
            )
            try:
                yield browser
            finally:
                await browser.close()
    finally:
        shutil.rmtree(wrappers, ignore_errors=True)


@contextlib.asynccontextmanager
async def chromium_in(
    namespace: VethNamespace | str, workdir: Path, mdns: bool = False
) -> AsyncIterator[Any]:
    """A Playwright Browser running Debian's Chromium inside `namespace` (an object or the
    name of an existing namespace). `mdns=False` makes Chromium offer its plain host
    address; `mdns=True` leaves WebRTC at the browser's defaults (`.local` names).
    (`workdir` is not used: what the browser writes stays in its own profile.)"""
    flags = CHROMIUM_DEFAULT_WEBRTC_FLAGS if mdns else CHROMIUM_FLAGS
    async with _chromium(namespace, flags) as browser:
        yield browser


@contextlib.asynccontextmanager
async def chromium_here(*args: str) -> AsyncIterator[Any]:
    """A Playwright Browser running Debian's Chromium in this machine's own network, for
    pages on loopback (the client's status page); `args` are extra command-line flags."""
    async with _chromium(None, [*CHROMIUM_FLAGS, *args]) as browser:
        yield browser


# -- Firefox ESR --------------------------------------------------------------------------
#
# Playwright cannot drive Debian's firefox-esr (it needs its own patched build), so Firefox
# runs as a plain process: `firefox-esr --headless --profile DIR` inside the namespace,
# with a fresh profile whose user.js stops it calling home, and its WebDriver BiDi server
# on the namespace's loopback, through which unwall.firefox_bidi opens the page, clicks the
# widget's switch in its frame (the visitor's click) and reports what the frame shows.
# WebRTC stays at its defaults (host candidates hidden behind mDNS names).

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
    *,
    click_widget: bool = True,
    report_url: str | None = None,
) -> AsyncIterator[FirefoxProcess]:
    """Debian's firefox-esr, headless, showing `url`, inside `namespace` (an object or the
    name of an existing namespace), with a fresh profile (under `workdir` unless root
    started it) and its log in `workdir`.

    With `click_widget`, `url` is a page that embeds the widget (`volunteer_page`, the
    lab's /volunteer): unwall.firefox_bidi opens it, switches the widget on with a click in
    its frame, and POSTs what the frame shows to `report_url` (default: /report of the
    page's origin) twice a second; its log is `driver.log` in `workdir`.

    Firefox forks content processes; it runs in a session of its own, and the whole
    session is ended on exit (SIGTERM, then SIGKILL after 10 s). Started by root, Firefox
    runs as an unprivileged user of its own (`browser_user`), its profile and home in a
    0700 directory of that user (not under `workdir`), removed on exit."""
    user = browser_user()
    outer: Path | None = None
    if user is None:
        home = workdir / "firefox-home"  # Firefox writes caches under $HOME
        home.mkdir(exist_ok=True)
        profile = write_firefox_profile(workdir / "firefox-profile", prefs)
    else:
        outer, home = browser_home("unwall-firefox-", user)
        profile = write_firefox_profile(home / "firefox-profile", prefs)
        for path in (profile, *profile.iterdir()):
            os.chown(path, user.uid, user.gid)
    log_path = workdir / "firefox.log"
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
    if user is not None:
        env["TMPDIR"] = str(home / "tmp")
    with log_path.open("wb") as handle:
        process = await asyncio.create_subprocess_exec(
            shutil.which("ip") or "ip",
            "netns",
            "exec",
            _namespace_name(namespace),
            *_as_user(user),
            FIREFOX,
            "--headless",
            "--no-remote",
            "--new-instance",
            "--profile",
            str(profile),
            *(("--remote-debugging-port=0",) if click_widget else (url,)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=handle,
            stderr=handle,
            env=env,
            start_new_session=True,
        )
    driver: asyncio.subprocess.Process | None = None
    try:
        if click_widget:
            ws_url = await _bidi_url(log_path, process)
            with (workdir / "driver.log").open("wb") as driver_log:
                driver = await asyncio.create_subprocess_exec(
                    shutil.which("ip") or "ip", "netns", "exec", _namespace_name(namespace),
                    sys.executable, "-m", "unwall.firefox_bidi",
                    ws_url, url, report_url or urljoin(url, "/report"),
                    stdin=asyncio.subprocess.DEVNULL, stdout=driver_log, stderr=driver_log,
                    start_new_session=True,
                )  # fmt: skip
        yield FirefoxProcess(process, profile, log_path)
    finally:
        if driver is not None:
            await _end_session(driver)
        await _end_session(process)
        if outer is not None:
            remove_browser_home(outer)


async def _bidi_url(log_path: Path, process: asyncio.subprocess.Process) -> str:
    """The WebDriver BiDi server's URL, as Firefox logs it once it listens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline and process.returncode is None:
        found = re.search(rb"WebDriver BiDi listening on (ws://\S+)", log_path.read_bytes())
        if found:
            return found.group(1).decode()
        await asyncio.sleep(0.2)
    raise RuntimeError(f"Firefox opened no WebDriver BiDi server: {log_path.read_text()[-2000:]}")


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
<link rel="icon" href="data:,">
<script type="module" src={widget}></script></head>
<body><div data-unwall-widget></div></body></html>
"""


@dataclass
class VolunteerPage:
    """A page that embeds the widget, and what its frame showed (`reports`, made by
    `drive_widget` or firefox_in's driver once it clicked the switch)."""

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
    as on a site that embeds the widget; reports POSTed to its /report land in `reports`."""
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


@contextlib.asynccontextmanager
async def drive_widget(
    tab: Any, page: VolunteerPage, interval: float = 0.5
) -> AsyncIterator[VolunteerPage]:
    """Open `page` in a Playwright `tab`, switch the widget on with a click in its frame
    (the visitor's click), and add what the frame shows to `page.reports` twice a second
    until the block ends (what firefox_in's driver does in Firefox)."""
    await tab.add_init_script(RECORD_ICE)
    await tab.goto(page.url)
    frame = await widget_realm(tab)
    # In view first: the switch takes a click only once it has been seen (panel.js).
    await widget_frame(tab).locator("[role=switch]").scroll_into_view_if_needed()
    await widget_switch(tab).click()

    async def report() -> None:
        while True:
            with contextlib.suppress(Exception):
                page.reports.append({**await frame.evaluate(WIDGET_REPORT)})
                del page.reports[:-200]
            await asyncio.sleep(interval)

    task = asyncio.create_task(report())
    try:
        yield page
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
