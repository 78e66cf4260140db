"""The whole bridge on loopback: every role its own process, curl as the application."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil

import pytest

from unwall.local import DemoSite, LocalBridge, free_port, socks5_open
from unwall.transport.quic import spki_pin

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

SIZE = 20_000_000


async def curl(*args: str, timeout: float = 120.0) -> tuple[int, bytes, str]:
    process = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--max-time",
        str(int(timeout)),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out, err.decode(errors="replace")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_socks5_download_20mb(bridge: LocalBridge, site: DemoSite) -> None:
    await bridge.start_all()
    _, digest = site.blob(SIZE)
    code, body, err = await curl(
        "--socks5-hostname", f"127.0.0.1:{bridge.socks_port}", f"{site.url}/blob/{SIZE}"
    )
    assert code == 0, err
    assert len(body) == SIZE
    assert sha256(body) == digest


async def test_http_proxy_download_5mb(bridge: LocalBridge, site: DemoSite) -> None:
    # 5 MB: what windows and flow control do with 20 MB is the SOCKS test's; this one is
    # about the HTTP proxy.
    size = 5_000_000
    await bridge.start_all()
    _, digest = site.blob(size)
    code, body, err = await curl(
        "--proxy", f"http://127.0.0.1:{bridge.http_port}", f"{site.url}/blob/{size}"
    )
    assert code == 0, err
    assert sha256(body) == digest


async def test_http_connect_tunnel(bridge: LocalBridge, site: DemoSite) -> None:
    await bridge.start_all()
    _, digest = site.blob(1_000_000)
    code, body, err = await curl(
        "--proxytunnel",
        "--proxy",
        f"http://127.0.0.1:{bridge.http_port}",
        f"{site.url}/blob/1000000",
    )
    assert code == 0, err
    assert sha256(body) == digest


async def test_sixteen_concurrent_downloads(bridge: LocalBridge, site: DemoSite) -> None:
    await bridge.start_all()
    sizes = [1_000_000 + 77_777 * i for i in range(16)]
    digests = {size: site.blob(size)[1] for size in sizes}
    results = await asyncio.gather(
        *(
            curl("--socks5-hostname", f"127.0.0.1:{bridge.socks_port}", f"{site.url}/blob/{size}")
            for size in sizes
        )
    )
    for size, (code, body, err) in zip(sizes, results, strict=True):
        assert code == 0, err
        assert sha256(body) == digests[size], f"download of {size} bytes differs"


async def test_upload_20mb(bridge: LocalBridge, site: DemoSite) -> None:
    await bridge.start_all()
    path, digest = site.blob(SIZE)
    code, body, err = await curl(
        "--socks5-hostname",
        f"127.0.0.1:{bridge.socks_port}",
        "--data-binary",
        f"@{path}",
        "-H",
        "Content-Type: application/octet-stream",
        f"{site.url}/upload",
    )
    assert code == 0, err
    answer = json.loads(body)
    assert answer == {"size": SIZE, "sha256": digest}
    assert site.uploads == [(SIZE, digest)]


async def _socks_reply(bridge: LocalBridge, host: str, port: int) -> int:
    try:
        _, writer = await socks5_open(bridge.socks_port, host, port)
    except ConnectionError as exc:
        return int(str(exc).rsplit(" ", 1)[-1], 16)
    writer.close()
    return 0


async def test_refused_destinations_get_socks_codes(bridge: LocalBridge, site: DemoSite) -> None:
    await bridge.start_all()
    # Policy: a private address is never dialled (0x02, not allowed by ruleset).
    assert await _socks_reply(bridge, "10.1.2.3", 80) == 0x02
    # IPv6 loopback: this egress allows 127.0.0.0/8 for the test site, not ::1.
    assert await _socks_reply(bridge, "::1", 80) == 0x02
    # A name that resolves to a refused address is refused after resolution.
    assert await _socks_reply(bridge, "ip6-localhost", 80) in (0x02, 0x04)
    # A closed port: connection refused (0x05).
    assert await _socks_reply(bridge, "127.0.0.1", free_port()) == 0x05
    # The tunnel still works afterwards.
    assert await _socks_reply(bridge, "127.0.0.1", site.port) == 0x00


async def test_http_proxy_refusal_is_403(bridge: LocalBridge) -> None:
    await bridge.start_all()
    code, body, _ = await curl(
        "--proxy",
        f"http://127.0.0.1:{bridge.http_port}",
        "--write-out",
        "\n%{http_code}",
        "http://10.1.2.3/",
    )
    assert code == 0
    assert body.rsplit(b"\n", 1)[-1] == b"403"
    assert b"10.1.2.3" in body


async def test_wrong_pin_fails_closed(bridge: LocalBridge, site: DemoSite) -> None:
    from unwall.egress.identity import generate_identity

    await bridge.start_broker()
    egress = await bridge.start_egress()
    await bridge.start_volunteer()
    wrong = spki_pin(generate_identity().certificate)
    client = await bridge.start_client(pin=wrong, wait_ready=False, extra=("--stream-wait", "3"))
    await bridge.wait_log(client, "does not match the pin", timeout=30)
    # No stream reaches the egress: the application gets a failure, not the page.
    assert await _socks_reply(bridge, "127.0.0.1", site.port) != 0x00
    assert "tunnel ready" not in client.log_path.read_text()
    assert "stream" not in egress.log_path.read_text()


async def test_no_volunteer_is_reported_and_retried(bridge: LocalBridge, site: DemoSite) -> None:
    await bridge.start_broker()
    await bridge.start_egress()
    client = await bridge.start_client(wait_ready=False, extra=("--stream-wait", "2"))
    await bridge.wait_log(client, "no volunteer available", timeout=30)
    # A request meanwhile fails fast with a SOCKS error instead of hanging.
    reply = await asyncio.wait_for(_socks_reply(bridge, "127.0.0.1", site.port), 10)
    assert reply == 0x03
    # The client keeps asking (a second refusal comes), and once a volunteer appears the
    # tunnel comes up.
    async with asyncio.timeout(30):
        while client.log_path.read_text().count("no volunteer available") < 2:
            await asyncio.sleep(0.1)
    await bridge.start_volunteer()
    await bridge.wait_log(client, "tunnel ready", timeout=60)
    assert await _socks_reply(bridge, "127.0.0.1", site.port) == 0x00


async def test_clean_shutdown_no_tracebacks(bridge: LocalBridge, site: DemoSite) -> None:
    await bridge.start_all()
    _, digest = site.blob(5_000_000)
    # A client that disconnects mid-transfer.
    reader, writer = await socks5_open(bridge.socks_port, "127.0.0.1", site.port)
    writer.write(b"GET /blob/5000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.read(100_000)
    writer.transport.abort()
    # The tunnel keeps working.
    code, body, err = await curl(
        "--socks5-hostname", f"127.0.0.1:{bridge.socks_port}", f"{site.url}/blob/5000000"
    )
    assert code == 0, err
    assert sha256(body) == digest
    for role in list(bridge.roles):
        assert await role.stop() in (0, -15), role.log_tail()
        text = role.log_path.read_text()
        assert "Traceback" not in text, f"{role.name}:\n{text}"


async def test_volunteer_stops_and_another_takes_over(bridge: LocalBridge, site: DemoSite) -> None:
    """A volunteer that goes away: one log line, and the session moves to another one."""
    await bridge.start_broker()
    egress = await bridge.start_egress()
    first = await bridge.start_volunteer()
    client = await bridge.start_client()
    assert await _socks_reply(bridge, "127.0.0.1", site.port) == 0x00
    await bridge.start_volunteer()
    await first.stop()
    await bridge.wait_log(client, "tunnel moved to a new volunteer", timeout=30)
    text = client.log_path.read_text()
    assert text.count("; switching") == 1
    assert "Traceback" not in text
    # The same QUIC session carries on: the egress saw one session, on a second path.
    _, digest = site.blob(2_000_000)
    code, body, err = await curl(
        "--socks5-hostname", f"127.0.0.1:{bridge.socks_port}", f"{site.url}/blob/2000000"
    )
    assert code == 0, err
    assert sha256(body) == digest
    egress_log = egress.log_path.read_text()
    assert egress_log.count("opened (datagrams") == 1
    assert re.search(r"session-1 moved to path-\d", egress_log)
    assert "Traceback" not in first.log_path.read_text()
