"""The client's local surfaces against the findings of issue 22 (rows 7, 10, 11, 12): real
roles on loopback, curl, raw sockets and Chromium as the applications and the web pages.

- row 7: the HTTP proxy serves one request per connection, so a site that ignores
  ``Connection: close`` cannot answer a request meant for another site;
- row 10: ``--page off`` (flag or config file) serves no page;
- row 11: other web pages, even on another port of 127.0.0.1, cannot load the status page's
  files or get an answer from the HTTP proxy itself;
- row 12: a proxy listening on an address other machines reach is a warning, in the log and
  on the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from listening import listening_ports
from pages import one_page

from unwall.browser import chromium_here, chromium_missing
from unwall.local import LOOPBACK, DemoSite, LocalBridge, RoleProcess, free_port

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
needs_chromium = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))

PAGE_RE = re.compile(r"status page on (http://127\.0\.0\.1:\d+/)")
UNREACHABLE_BROKER = f"http://{LOOPBACK}:{free_port()}"


# --- sites -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def keep_alive_site(name: str) -> AsyncIterator[int]:
    """A site that keeps every connection open and answers each request on it, whatever its
    Connection header says; every answer names the site (body and ``X-Site``), and some
    paths use other framings. Yields its port."""

    def answer(method: bytes, target: bytes) -> tuple[bytes, bool]:
        """The response's bytes, and whether to close after it."""
        said = b"%s answers %s %s\n" % (name.encode(), method, target)
        site = b"X-Site: " + name.encode() + b"\r\n"
        if target == b"/chunked":
            half = len(said) // 2
            chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                half, said[:half], len(said) - half, said[half:]
            )  # fmt: skip
            return (
                b"HTTP/1.1 200 OK\r\n" + site + b"Transfer-Encoding: chunked\r\n\r\n" + chunks,
                False,
            )
        if target == b"/until-close":
            return b"HTTP/1.0 200 OK\r\n" + site + b"\r\n" + said, True
        if target == b"/no-content":
            return b"HTTP/1.1 204 No Content\r\n" + site + b"\r\n", False
        if target == b"/not-modified":
            return b"HTTP/1.1 304 Not Modified\r\n" + site + b"Content-Length: 99\r\n\r\n", False
        if target == b"/early-hints":
            hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        else:
            hints = b""
        head = b"HTTP/1.1 200 OK\r\n" + site + b"Content-Length: %d\r\n\r\n" % len(said)
        return hints + head + (b"" if method == b"HEAD" else said), False

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].split(b" ")
                response, close = answer(method, target)
                writer.write(response)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def curl(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    process = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", "60", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# --- row 7: one site never answers for another ----------------------------------------------


@needs_curl
async def test_a_site_that_keeps_its_connection_cannot_answer_for_another(
    bridge: LocalBridge, tmp_path: Path
) -> None:
    """curl reuses its connection to the proxy for the next URL, as a keep-alive application
    does; the first site ignores Connection: close and would answer the second request if
    the proxy only copied bytes. Every framing a site can use, alternating between sites."""
    await bridge.start_all()
    proxy = f"http://{LOOPBACK}:{bridge.http_port}"
    async with keep_alive_site("alpha") as alpha, keep_alive_site("beta") as beta:
        urls = []
        for path in ("/", "/", "/chunked", "/until-close", "/no-content", "/not-modified"):
            urls += [f"http://{LOOPBACK}:{alpha}{path}", f"http://{LOOPBACK}:{beta}{path}"]
        outputs = [tmp_path / f"{index}.out" for index in range(len(urls))]
        args = ["--proxy", proxy, "--write-out", r"%{http_code} %header{x-site}\n"]
        for url, output in zip(urls, outputs, strict=True):
            args += [url, "--output", str(output)]
        code, out, err = await curl(*args)
        assert code == 0, err
        lines = out.splitlines()
        assert len(lines) == len(urls), out
        for url, output, line in zip(urls, outputs, lines, strict=True):
            site = "alpha" if f":{alpha}/" in url else "beta"
            status = {"/no-content": "204", "/not-modified": "304"}.get(url[url.rindex("/") :])
            assert line == f"{status or '200'} {site}", (url, out)
            body = output.read_text() if output.exists() else ""
            if status is None:
                assert body == f"{site} answers GET {url[url.index('/', 7) :]}\n", url
            else:
                assert body == "", url
        # HEAD, and a 1xx before the answer, the same way.
        code, out, err = await curl(
            "--proxy", proxy, "--head", "--write-out", r"%header{x-site}\n", "--output",
            "/dev/null", f"http://{LOOPBACK}:{alpha}/", "--output", "/dev/null",
            f"http://{LOOPBACK}:{beta}/",
        )  # fmt: skip
        assert (code, out) == (0, "alpha\nbeta\n"), err
        code, out, err = await curl(
            "--proxy", proxy, f"http://{LOOPBACK}:{alpha}/early-hints",
            f"http://{LOOPBACK}:{beta}/early-hints",
        )  # fmt: skip
        assert code == 0, err
        assert out == "alpha answers GET /early-hints\nbeta answers GET /early-hints\n"


async def test_pipelined_requests_never_reach_another_site(bridge: LocalBridge) -> None:
    """Two requests in one write, for two sites: the first site answers the first, with
    Connection: close, and then the connection ends; the second request went nowhere (the
    application sends it again on a new connection). A keep-alive client pool works."""
    await bridge.start_all()
    async with keep_alive_site("alpha") as alpha, keep_alive_site("beta") as beta:
        reader, writer = await asyncio.open_connection(LOOPBACK, bridge.http_port)
        writer.write(
            b"GET http://%s:%d/one HTTP/1.1\r\nHost: x\r\n\r\n" % (LOOPBACK.encode(), alpha)
            + b"GET http://%s:%d/two HTTP/1.1\r\nHost: y\r\n\r\n" % (LOOPBACK.encode(), beta)
        )
        await writer.drain()
        answer = await read_until_closed(reader, 10)
        writer.close()
        assert b"beta" not in answer, answer  # what the old proxy let happen: alpha answered both
        assert answer.count(b"HTTP/1.1 ") == 1, answer
        assert b"\r\nConnection: close\r\n" in answer
        assert answer.endswith(b"\r\n\r\nalpha answers GET /one\n"), answer

        # An application that half-closes after its request still gets the answer.
        reader, writer = await asyncio.open_connection(LOOPBACK, bridge.http_port)
        writer.write(b"GET http://%s:%d/half HTTP/1.0\r\n\r\n" % (LOOPBACK.encode(), beta))
        writer.write_eof()
        answer = await read_until_closed(reader, 10)
        writer.close()
        assert answer.endswith(b"\r\n\r\nbeta answers GET /half\n"), answer

        # aiohttp's pool keeps connections alive and follows Connection: close.
        proxy = f"http://{LOOPBACK}:{bridge.http_port}"
        async with aiohttp.ClientSession() as http:
            for port, name in [(alpha, "alpha"), (beta, "beta"), (alpha, "alpha")] * 2:
                url = f"http://{LOOPBACK}:{port}/pool"
                async with http.get(url, proxy=proxy) as response:
                    assert await response.text() == f"{name} answers GET /pool\n"


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What arrives until the other end closes, or what arrived in `timeout` seconds."""
    data = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    return data


@needs_curl
async def test_uploads_through_the_http_proxy_keep_their_bodies(
    bridge: LocalBridge, site: DemoSite
) -> None:
    """The request body is framed by h11 now, not copied: with Content-Length and chunked."""
    await bridge.start_all()
    path, digest = site.blob(3_000_000)
    proxy = f"http://{LOOPBACK}:{bridge.http_port}"
    for extra in ((), ("--header", "Transfer-Encoding: chunked")):
        code, out, err = await curl(
            "--proxy", proxy, "--data-binary", f"@{path}", *extra, f"{site.url}/upload"
        )
        assert code == 0, err
        assert json.loads(out) == {"size": 3_000_000, "sha256": digest}, extra


# --- row 10: --page off ----------------------------------------------------------------------


async def start_lone_client(
    bridge: LocalBridge, *extra: str, page_from_harness: bool = True
) -> RoleProcess:
    """A client whose broker does not answer: its proxies and page run all the same.
    LocalBridge gives it ``--page 127.0.0.1:0`` unless `extra` names a page, or
    `page_from_harness` is False (a config file's ``page`` would lose to that flag)."""
    bridge.make_key()
    if page_from_harness:
        return await bridge.start_client(wait_ready=False, broker=UNREACHABLE_BROKER, extra=extra)
    args = bridge.client_args(broker=UNREACHABLE_BROKER, extra=extra)
    if "--page" not in extra:
        at = args.index("--page")
        del args[at : at + 2]
    client = await bridge.spawn("client", *args)
    await bridge.wait_log(client, "HTTP proxy on")
    return client


async def page_url(bridge: LocalBridge, client: RoleProcess) -> str:
    await bridge.wait_log(client, "status page on http://", timeout=30)
    match = PAGE_RE.search(client.log_path.read_text())
    assert match, client.log_tail()
    return match.group(1)


@pytest.mark.parametrize("how", ["flag", "config"])
async def test_page_off_serves_no_page(bridge: LocalBridge, tmp_path: Path, how: str) -> None:
    if how == "flag":
        extra: tuple[str, ...] = ("--page", "off")
    else:
        config = tmp_path / "client.toml"
        config.write_text('[client]\npage = "off"\n')
        extra = ("--config", str(config))
    client = await start_lone_client(bridge, *extra, page_from_harness=False)
    await asyncio.sleep(1.0)  # the page would have started right after the proxies
    assert "status page on" not in client.log_path.read_text(), client.log_tail()
    assert listening_ports(client.pid) == {bridge.socks_port, bridge.http_port}


async def test_page_on_by_default_listens(bridge: LocalBridge) -> None:
    """The check above sees a page when there is one (LocalBridge puts it on a free port)."""
    client = await start_lone_client(bridge)
    url = await page_url(bridge, client)
    page_port = int(url.rstrip("/").rsplit(":", 1)[1])
    assert listening_ports(client.pid) == {bridge.socks_port, bridge.http_port, page_port}


# --- row 11: other web pages cannot tell unwall runs ----------------------------------------

FROM_ANOTHER_PORT = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"}


async def test_the_page_refuses_other_sites_and_says_same_origin_only(
    bridge: LocalBridge,
) -> None:
    client = await start_lone_client(bridge)
    url = await page_url(bridge, client)
    loads = [
        ("/static/page.js", {**FROM_ANOTHER_PORT, "Sec-Fetch-Dest": "script"}),
        ("/static/page.css", {**FROM_ANOTHER_PORT, "Sec-Fetch-Dest": "style"}),
        ("/status.json", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}),
        ("/proxy.pac", {**FROM_ANOTHER_PORT, "Sec-Fetch-Dest": "empty"}),
        ("/", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
               "Sec-Fetch-Dest": "iframe"}),
        ("/nothing-here", {**FROM_ANOTHER_PORT, "Sec-Fetch-Dest": "image"}),
    ]  # fmt: skip
    passes = [
        ("/static/page.js", {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Dest": "script"}),
        ("/status.json", {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}),
        ("/proxy.pac", {"Sec-Fetch-Site": "none"}),
        ("/proxy.pac", {}),
        # A person following a link from another site still gets the page.
        ("/", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
               "Sec-Fetch-Dest": "document", "Sec-Fetch-User": "?1"}),
    ]  # fmt: skip
    async with aiohttp.ClientSession() as http:
        for path, headers in loads:
            async with http.get(url + path[1:], headers=headers) as response:
                assert response.status == 403, (path, headers)
                assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin"
        for path, headers in passes:
            async with http.get(url + path[1:], headers=headers) as response:
                assert response.status == 200, (path, headers)
                assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin"
        async with http.get(url + "nothing-here") as response:
            assert response.status == 404
            assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin"


async def http_proxy_answer(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_the_http_proxy_does_not_answer_a_web_page(bridge: LocalBridge) -> None:
    client = await start_lone_client(bridge)
    await bridge.wait_log(client, "HTTP proxy on")
    host = f"Host: {LOOPBACK}:{bridge.http_port}\r\n".encode()
    probe = (
        b"GET / HTTP/1.1\r\n" + host + b"Sec-Fetch-Site: same-site\r\nSec-Fetch-Mode: no-cors\r\n"
        b"Sec-Fetch-Dest: image\r\nUser-Agent: Mozilla/5.0\r\n\r\n"
    )
    assert await http_proxy_answer(bridge.http_port, probe) == b""
    # A person who points curl at the proxy as if it were a site is told what it is.
    answer = await http_proxy_answer(bridge.http_port, b"GET / HTTP/1.1\r\n" + host + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert b"\r\nCross-Origin-Resource-Policy: same-origin\r\n" in answer
    assert b"this is a proxy, not a web server" in answer


PROBE_PAGE = """<!doctype html><title>a page elsewhere on this machine</title><script>
async function probe(url) {
  try { await fetch(url, {mode: "no-cors", cache: "no-store"}); return "answered"; }
  catch (error) { return "failed"; }
}
window.probes = (async () => ({
  page_js: await probe("PAGE/static/page.js"),
  page: await probe("PAGE/"),
  status: await probe("PAGE/status.json"),
  proxy: await probe("PROXY/"),
  socks: await probe("SOCKS/"),
  closed_port: await probe("CLOSED/"),
  another_site: await probe("OTHER/"),
}))();
</script>"""


@needs_chromium
async def test_a_web_page_on_another_port_cannot_tell_unwall_runs(bridge: LocalBridge) -> None:
    """Chromium, a page on another port of 127.0.0.1 (same site, same address space): its
    no-cors fetches of the status page and of the HTTP proxy fail as one to a closed port."""
    client = await start_lone_client(bridge)
    url = await page_url(bridge, client)
    html = (
        PROBE_PAGE.replace("PAGE/", url)
        .replace("PROXY/", f"http://{LOOPBACK}:{bridge.http_port}/")
        .replace("SOCKS/", f"http://{LOOPBACK}:{bridge.socks_port}/")
        .replace("CLOSED/", f"http://{LOOPBACK}:{free_port()}/")
    )
    async with (
        one_page(LOOPBACK, "any site answers") as other,
        one_page(LOOPBACK, html.replace("OTHER/", other + "/")) as origin,
        chromium_here() as browser,
    ):
        page = await browser.new_page()
        await page.goto(origin + "/")
        probes = await page.evaluate("window.probes")
    assert probes == {
        "page_js": "failed",
        "page": "failed",
        "status": "failed",
        "proxy": "failed",
        "socks": "failed",
        "closed_port": "failed",
        "another_site": "answered",  # what the page would see if they answered
    }


# --- row 12: a proxy open to the network is a warning ---------------------------------------


async def test_a_proxy_open_to_the_network_is_a_warning(bridge: LocalBridge) -> None:
    client = await start_lone_client(bridge, "--socks", f"0.0.0.0:{bridge.socks_port}")
    url = await page_url(bridge, client)
    log = client.log_path.read_text()
    assert re.search(
        rf"WARNING .*the SOCKS5 proxy listens on 0\.0\.0\.0:{bridge.socks_port}, which other "
        r"machines can reach: anyone who can connect to it can use your tunnel",
        log,
    ), log
    assert "the HTTP proxy listens on" not in log  # on 127.0.0.1: no warning
    async with aiohttp.ClientSession() as http, http.get(url + "status.json") as response:
        exposed = (await response.json())["exposed"]
    assert len(exposed) == 1
    assert exposed[0].startswith(f"The SOCKS5 proxy listens on 0.0.0.0:{bridge.socks_port}")
