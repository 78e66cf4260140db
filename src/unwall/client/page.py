"""The client's own status page on localhost (default http://127.0.0.1:8119/).

- ``GET /``            the page (static/page.html, .js, .css): the tunnel's state in plain
                       words with what to do, live figures and a chart, how to point a
                       browser at the proxies, and a self-test button;
- ``GET /status.json`` the :class:`~unwall.client.status.Snapshot`, and the proxies'
                       addresses;
- ``GET /proxy.pac``   a proxy auto-config file: everything through unwall, or, with
                       ``--pac-list FILE``, only the names listed there (read at each request,
                       so edits apply at once);
- ``POST /self-test``  fetch the self-test URL through the client's own HTTP proxy and say
                       how it went.

Served on loopback only (the address is checked at start), and only to requests whose
``Host`` names loopback: a web page that rebinds its own name to 127.0.0.1 gets 403, and the
self-test refuses a cross-origin POST. The page never shows or logs where the user went;
the PAC list and the self-test URL are the user's own settings.

Other web pages must not learn that unwall runs here (issue 22, row 11). Every response
carries ``Cross-Origin-Resource-Policy: same-origin``, so a page elsewhere that loads one as
a subresource (``<script>``, ``<img>``, ``fetch(..., {mode: "no-cors"})``), even from another
port of 127.0.0.1, gets a network error, as from a closed port. A request whose
``Sec-Fetch-Site`` is ``cross-site`` or ``same-site`` gets 403, except a top-level navigation
to ``/`` (``Sec-Fetch-Mode: navigate``, ``Sec-Fetch-Dest: document``): a person following a
link to the page still gets it. That costs nothing in secrecy: whatever answers a navigation
(the page or a 403) is an HTTP response the linking page cannot read, the user sees it, and
only no answer at all would look like a closed port. ``same-origin`` (the page's own
script), ``none`` (typed, bookmarked, the PAC fetch) and no header (curl, older browsers)
pass.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from unwall.client.status import Snapshot

log = logging.getLogger("unwall.client")

STATIC: Final = Path(__file__).with_name("static")
DEFAULT_PAGE: Final = ("127.0.0.1", 8119)
SELF_TEST_TIMEOUT: Final = 20.0
#: A name on the PAC list: letters, digits, dots and hyphens (a leading "*." or "." is
#: taken as "this domain and below", which every listed name already means).
_NAME: Final = re.compile(r"^(?:\*\.|\.)?([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)*)$")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def check_page_address(host: str) -> None:
    """Raise ValueError unless `host` is a loopback address (the page is the user's own)."""
    if not is_loopback(host):
        raise ValueError(
            f"the status page is served on loopback only (127.0.0.1 or ::1), not {host!r}: "
            "it shows what the client is doing to whoever can reach it"
        )


def read_pac_list(path: Path) -> tuple[list[str], int]:
    """The names in a PAC list file (one per line, # comments), and how many lines were
    not names (skipped)."""
    names: list[str] = []
    skipped = 0
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.split("#", 1)[0].strip().lower()
        if not line:
            continue
        match = _NAME.match(line)
        if match is None:
            skipped += 1
            continue
        if match.group(1) not in names:
            names.append(match.group(1))
    return names, skipped


def pac_file(http: tuple[str, int], socks: tuple[str, int], names: list[str] | None) -> str:
    """A PAC file sending everything (names None) or the listed names and their subdomains
    through the HTTP proxy (SOCKS5 as a fallback); everything else DIRECT."""
    proxies = f"PROXY {_reachable(http)}; SOCKS5 {_reachable(socks)}"
    if names is None:
        return (
            "// unwall: everything through the tunnel\n"
            f"function FindProxyForURL(url, host) {{\n  return {json.dumps(proxies)};\n}}\n"
        )
    return (
        "// unwall: only the names on your list through the tunnel, the rest direct\n"
        f"var UNWALL_NAMES = {json.dumps(names)};\n"
        "function FindProxyForURL(url, host) {\n"
        "  host = host.toLowerCase();\n"
        "  for (var i = 0; i < UNWALL_NAMES.length; i++) {\n"
        "    var name = UNWALL_NAMES[i];\n"
        '    if (host === name || dnsDomainIs(host, "." + name)) {\n'
        f"      return {json.dumps(proxies)};\n"
        "    }\n"
        "  }\n"
        '  return "DIRECT";\n'
        "}\n"
    )


def _reachable(address: tuple[str, int]) -> str:
    """host:port as a browser on this machine reaches a listener bound to `address`."""
    host, port = address
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class PageConfig:
    socks: tuple[str, int]
    http: tuple[str, int]
    pac_list: Path | None = None
    #: what the self-test fetches through the tunnel; None: the button says it is not set
    self_test_url: str | None = None


class StatusPage:
    """The page's aiohttp application around a tracker the client feeds."""

    def __init__(self, config: PageConfig, snapshot: Callable[[], Snapshot]) -> None:
        self.config = config
        self.snapshot = snapshot
        self._testing = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._refuse_strangers], client_max_size=1024)
        # On every response, aiohttp's own 404 and 405 included.
        app.on_response_prepare.append(_harden)
        app.router.add_get("/", self._index)
        app.router.add_get("/status.json", self._status)
        app.router.add_get("/proxy.pac", self._pac)
        app.router.add_post("/self-test", self._self_test)
        app.router.add_static("/static/", STATIC, append_version=False)
        return app

    @web.middleware
    async def _refuse_strangers(
        self, request: web.Request, handler: Callable[[web.Request], object]
    ) -> web.StreamResponse:
        if not is_loopback(request.url.host or ""):
            return web.Response(status=403, text="this page answers only to localhost\n")
        if _from_another_site(request):
            return web.Response(
                status=403, text="this page answers only to itself and to you, not to other sites\n"
            )
        response = await handler(request)  # type: ignore[misc]
        assert isinstance(response, web.StreamResponse)
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(STATIC / "page.html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'"
        )
        return response

    async def _status(self, request: web.Request) -> web.StreamResponse:
        body = self.snapshot().as_json()
        body["socks"] = _reachable(self.config.socks)
        body["http"] = _reachable(self.config.http)
        body["pac"] = f"http://{request.host}/proxy.pac"
        body["pac_list"] = self.config.pac_list is not None
        body["self_test"] = self.config.self_test_url is not None
        body["exposed"] = exposed_proxies(self.config)
        return web.json_response(body)

    async def _pac(self, request: web.Request) -> web.StreamResponse:
        names: list[str] | None = None
        if self.config.pac_list is not None:
            try:
                names, skipped = read_pac_list(self.config.pac_list)
            except OSError as exc:
                return web.Response(
                    status=500, text=f"cannot read the PAC list: {exc.strerror or exc}\n"
                )
            if skipped:
                log.warning("PAC list: %d line(s) that are not names were skipped", skipped)
        return web.Response(
            text=pac_file(self.config.http, self.config.socks, names),
            content_type="application/x-ns-proxy-autoconfig",
        )

    async def _self_test(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"http://{request.host}":
            return web.Response(status=403, text="cross-origin self-test refused\n")
        url = self.config.self_test_url
        if url is None:
            return web.json_response(
                {"ok": False, "error": "no self-test URL is set (start with --self-test-url)"}
            )
        async with self._testing:
            result = await self_test(url, _reachable(self.config.http))
        return web.json_response(result)


def exposed_proxies(config: PageConfig) -> list[str]:
    """The proxies listening where other machines can reach them, in words for the page."""
    return [
        f"The {name} proxy listens on {_shown(address)}, which other machines can reach: "
        "anyone who can connect to it can use your tunnel, with no password."
        for name, address in (("SOCKS5", config.socks), ("HTTP", config.http))
        if not is_loopback(address[0])
    ]


def _shown(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _from_another_site(request: web.Request) -> bool:
    """A browser's request on behalf of another site's page, other than a person following
    a link to the page (see the module's docstring)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site not in ("cross-site", "same-site"):
        return False
    navigation = (
        request.method == "GET"
        and request.path == "/"
        and request.headers.get("Sec-Fetch-Mode") == "navigate"
        and request.headers.get("Sec-Fetch-Dest") == "document"
    )
    return not navigation


async def _harden(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"


async def self_test(url: str, http_proxy: str) -> dict[str, object]:
    """Fetch `url` through the client's HTTP proxy: what a browser pointed at it would get."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=SELF_TEST_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as http,
            http.get(url, proxy=f"http://{http_proxy}", allow_redirects=False) as response,
        ):
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return {
            "ok": False,
            "url": url,
            "seconds": round(time.monotonic() - started, 2),
            "error": f"the page could not be fetched through the tunnel: {reason}",
        }
    seconds = round(time.monotonic() - started, 2)
    # The proxy's own refusals say "unwall could not reach ...: why" (proxy.py).
    refused = body.startswith(b"unwall ")
    result: dict[str, object] = {
        "ok": response.status < 400,
        "url": url,
        "status": response.status,
        "bytes": len(body),
        "seconds": seconds,
    }
    if not result["ok"]:
        result["error"] = (
            body.decode("utf-8", "replace").strip()[:300]
            if refused
            else f"the page answered HTTP {response.status}"
        )
    return result


async def serve_page(page: StatusPage, host: str, port: int) -> web.AppRunner:
    """Start the page on host:port (loopback, checked); the caller cleans the runner up."""
    check_page_address(host)
    runner = web.AppRunner(page.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(
            exc.errno, f"the status page cannot listen on {host}:{port}: {exc.strerror}"
        ) from exc
    return runner


__all__ = [
    "DEFAULT_PAGE",
    "PageConfig",
    "StatusPage",
    "check_page_address",
    "exposed_proxies",
    "pac_file",
    "read_pac_list",
    "self_test",
    "serve_page",
]
