"""Issue 11: what a stranger can do to the roles, started for real on loopback, and what
it costs them. One test per row of the issue's table (rows 6-8 live next to the code they
test: test_policy.py, test_log_privacy.py, test_identity.py and test_cli.py)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from unwall.local import LocalBridge

BIG_HEADER = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
BAD_LINE = b"\x16\x03\x01 not http at all\r\n\r\n"


async def _send(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(100), 5)
    finally:
        writer.close()


async def test_row5_malformed_requests_cost_one_line_and_no_traceback(
    bridge: LocalBridge,
) -> None:
    """A 9,000-byte header and a request line that is not HTTP, 100 times each, to broker
    and egress: answered 400 every time, logged as at most a few WARNING lines, with no
    traceback and no sender address; both keep serving."""
    await bridge.start_broker()
    await bridge.start_egress()
    ports = (bridge.broker_port, bridge.egress_port)
    started = time.monotonic()
    for port in ports:
        for data in (BIG_HEADER, BAD_LINE):
            answers = await asyncio.gather(*(_send(port, data) for _ in range(100)))
            assert all(answer.startswith(b"HTTP/1.") and b" 400 " in answer for answer in answers)
    assert time.monotonic() - started < 30
    async with aiohttp.ClientSession() as http:
        for port in ports:
            async with http.get(f"http://127.0.0.1:{port}/v1/health") as response:
                assert response.status == 200
    await asyncio.sleep(0.3)
    for role in bridge.roles:
        text = role.log_path.read_text(errors="replace")
        assert "Traceback" not in text, text[-2000:]
        lines = [line for line in text.splitlines() if "aiohttp.server" in line]
        assert 1 <= len(lines) <= 4, lines  # one per kind, rate-limited
        assert all("WARNING" in line and "malformed HTTP request" in line for line in lines)
        assert not [line for line in lines if "127.0.0.1" in line], lines
