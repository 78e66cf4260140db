"""Issue 11: what a stranger can do to the roles, started for real on loopback, and what
it costs them. One test per row of the issue's table (rows 6-8 live next to the code they
test: test_policy.py, test_log_privacy.py, test_identity.py and test_cli.py)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
from vouching import offer_id, relay_url

from unwall import serving
from unwall.local import DemoSite, LocalBridge

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


async def _held_for(port: int, source: str, trickle: bytes = b"", step: float = 0.5) -> float:
    """Seconds until the server closed a connection that sends `trickle` a byte every
    `step` seconds (or nothing), from the address `source`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    started = time.monotonic()

    async def send() -> None:
        for byte in trickle:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(step)

    sender = asyncio.ensure_future(send())
    try:
        while await reader.read(1000):
            pass
    except ConnectionError:
        pass
    finally:
        sender.cancel()
        writer.close()
    return time.monotonic() - started


async def test_row4_idle_and_slow_connections_are_closed(bridge: LocalBridge) -> None:
    """200 idle connections and 100 that send their request head a byte every half
    second, to broker and egress: each is closed within the idle timeout (aiohttp alone
    kept them an hour). Real clients are served meanwhile."""
    await bridge.start_broker()
    await bridge.start_egress()
    head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
    tasks = []
    for port in (bridge.broker_port, bridge.egress_port):
        tasks += [_held_for(port, "127.0.0.3") for _ in range(100)]
        tasks += [_held_for(port, "127.0.0.4", head) for _ in range(50)]
    held = asyncio.gather(*tasks)
    async with aiohttp.ClientSession() as http:
        for port in (bridge.broker_port, bridge.egress_port):
            async with http.get(f"http://127.0.0.1:{port}/v1/health") as response:
                assert response.status == 200
    seconds = await asyncio.wait_for(held, serving.IDLE_TIMEOUT + 20)
    assert max(seconds) < serving.IDLE_TIMEOUT + 5, max(seconds)
    assert min(seconds) > serving.IDLE_TIMEOUT - 1  # the timeout, not an accident


async def test_row4_one_address_holds_a_bounded_number_of_connections(
    bridge: LocalBridge,
) -> None:
    """One address opens far more connections than the cap: the ones past it are closed at
    once, and another address is served as usual."""
    await bridge.start_broker()
    cap = serving.MAX_CONNECTIONS_PER_ADDRESS
    opened = []
    for _ in range(cap + 40):
        opened.append(
            await asyncio.open_connection(
                "127.0.0.1", bridge.broker_port, local_addr=("127.0.0.2", 0)
            )
        )

    async def was_closed(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(1), 1.0) == b""
        except TimeoutError:
            return False  # still open
        except ConnectionError:
            return True

    closed = sum(await asyncio.gather(*(was_closed(reader) for reader, _ in opened)))
    assert closed == 40, closed
    url = f"http://127.0.0.1:{bridge.broker_port}/v1/health"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
    for _, writer in opened:
        writer.close()
    log = bridge.roles[0].log_path.read_text()
    assert log.count("refused a connection: one address already holds") == 1  # rate-limited


async def test_row1_a_flood_of_junk_initials_leaves_real_clients_served(
    bridge: LocalBridge,
) -> None:
    """1,000 QUIC Initials (1.2 MB) through 10 relay WebSockets, each a real client's
    first packet whose handshake nobody finishes (tests/unit/test_router.py floods with
    undecryptable ones). The egress answers each with a Retry and keeps nothing. An
    attacker who does read the Retries and comes back with their tokens takes at most the
    pending slots of its relays (4 each), never the session table; a real client that
    starts right after gets its tunnel at once."""
    from aioquic.quic.connection import QuicConnection

    from unwall.transport import quic

    await bridge.start_broker()
    await bridge.start_egress()
    await bridge.start_volunteer()
    health = f"http://127.0.0.1:{bridge.egress_port}/v1/health"
    async with aiohttp.ClientSession() as http:
        # Relays a broker handed out (a fake volunteer takes offers): without a ticket the
        # egress ends a relay at its first datagram (test_vouching.py).
        sockets = [await http.ws_connect(relay_url(bridge, offer_id())) for _ in range(10)]
        for ws in sockets:
            for _ in range(100):
                await ws.send_bytes(_abandoned_initial())
        retries = [await asyncio.wait_for(ws.receive_bytes(), 5) for ws in sockets]
        assert all(len(r) < len(_abandoned_initial()) for r in retries)  # no amplification
        await asyncio.sleep(0.5)
        async with http.get(health) as response:
            figures = await response.json()
        # Before: all 1,000 sessions, the table full; with the pending caps alone: 40.
        assert figures["sessions"] == 0 and figures["pending"] == 0, figures
        # The attacker that answers: 10 handshakes per relay, each with its Retry's token.
        for ws in sockets:
            for _ in range(10):
                client = QuicConnection(configuration=quic.client_configuration(1200))
                client.connect(quic.PATH_ADDRESS, now=0.0)
                await ws.send_bytes(client.datagrams_to_send(now=0.0)[0][0])
                answer: list[tuple[bytes, object]] = []
                while not answer:  # the flood's own Retries come first; the client skips them
                    retry = await asyncio.wait_for(ws.receive_bytes(), 5)
                    client.receive_datagram(retry, quic.PATH_ADDRESS, now=0.0)
                    answer = client.datagrams_to_send(now=0.0)
                await ws.send_bytes(answer[0][0])
        await asyncio.sleep(0.5)
        async with http.get(health) as response:
            figures = await response.json()
        assert 0 < figures["sessions"] <= 40, figures
        assert figures["pending"] == figures["sessions"], figures
        started = time.monotonic()
        client_role = await bridge.start_client(wait_ready=False)
        await bridge.wait_log(client_role, "tunnel ready", timeout=20)
        assert time.monotonic() - started < 15
        for ws in sockets:
            await ws.close()
    log = next(role for role in bridge.roles if role.name == "egress").log_path.read_text()
    assert "refusing a new session" not in log  # the table never filled


def _abandoned_initial() -> bytes:
    from aioquic.quic.connection import QuicConnection

    from unwall.transport import quic

    client = QuicConnection(configuration=quic.client_configuration(1200))
    client.connect(quic.PATH_ADDRESS, now=0.0)
    return client.datagrams_to_send(now=0.0)[0][0]


async def test_row2_streams_past_the_limits_are_refused_as_busy(bridge: LocalBridge) -> None:
    """A session opens 120 streams at once to a server that holds every connection open,
    through an egress allowed 30 connections per session and 40 streams a second: the ones
    past a limit get a `busy` refusal (SOCKS5 general failure), quickly and without a
    traceback, the egress keeps answering, and its connection count falls back to 0."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    await bridge.start_broker()
    await bridge.start_egress(extra=("--session-connections", "30", "--session-stream-rate", "40"))
    await bridge.start_volunteer()
    await bridge.start_client()
    health = f"http://127.0.0.1:{bridge.egress_port}/v1/health"
    replies = await asyncio.gather(*(_socks_connect(bridge.socks_port, port) for _ in range(120)))
    ok = [r for r in replies if r.reply == 0]
    busy = [r for r in replies if r.reply == 1]
    assert len(ok) <= 30 and len(ok) + len(busy) == 120, [r.reply for r in replies]
    assert len(busy) >= 90
    print(f"row 2: {len(ok)} connected, {len(busy)} refused as busy")
    async with aiohttp.ClientSession() as http:
        async with http.get(health) as response:
            assert (await response.json())["connections"] == len(ok)
        for r in replies:
            r.writer.close()
        for writer in held:
            writer.close()
        for _ in range(100):
            async with http.get(health) as response:
                if (await response.json())["connections"] == 0:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the egress kept its connections")
    server.close()
    egress_log = next(r for r in bridge.roles if r.name == "egress").log_path.read_text()
    assert "Traceback" not in egress_log
    assert egress_log.count("refused as busy") <= 3  # rate-limited, not one per stream


class _Opened:
    def __init__(self, reply: int, writer: asyncio.StreamWriter) -> None:
        self.reply, self.writer = reply, writer


async def _socks_connect(socks_port: int, port: int) -> _Opened:
    reader, writer = await asyncio.open_connection("127.0.0.1", socks_port)
    writer.write(b"\x05\x01\x00")
    await reader.readexactly(2)
    writer.write(b"\x05\x01\x00\x01" + bytes([127, 0, 0, 1]) + port.to_bytes(2, "big"))
    reply = await asyncio.wait_for(reader.readexactly(10), 20)
    return _Opened(reply[1], writer)


async def test_row2_a_session_rate_caps_what_one_session_moves(
    bridge: LocalBridge, site: DemoSite
) -> None:
    """`--session-rate 500000`: a 2 MB download through one session takes at least the
    3.75 s the cap allows (a lower bound: a slow machine only makes it longer)."""
    _, digest = site.blob(2_000_000)
    await bridge.start_broker()
    await bridge.start_egress(extra=("--session-rate", "500000"))
    await bridge.start_volunteer()
    await bridge.start_client()
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--fail", "--max-time", "60",
        "--socks5-hostname", f"127.0.0.1:{bridge.socks_port}", f"{site.url}/blob/2000000",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    body, _ = await process.communicate()
    seconds = time.monotonic() - started
    assert process.returncode == 0
    assert hashlib.sha256(body).hexdigest() == digest
    assert seconds > 3.0, seconds
