"""The client and the headless volunteer across NATs, with a real broker on loopback (and a
real coturn where STUN or TURN is involved): what they report, what the client says when
it cannot connect, how fast it says it, and the broker's TURN credentials in use."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioice import stun
from coturn import coturn

from unwall.broker.server import BROKER_KEY, BrokerConfig, create_app
from unwall.broker.turn import TurnIssuer
from unwall.client.tunnel import Tunnel, TunnelConfig, TunnelUnavailable
from unwall.transport import webrtc
from unwall.transport.aiortc_engine import engine
from unwall.transport.broker_client import BrokerClient
from unwall.transport.brokerhttp import from_session
from unwall.volunteer.headless import Volunteer, VolunteerConfig
from unwall.wire.broker import (
    PollOffer,
    VolunteerAnswer,
    VolunteerPoll,
    decode_poll_response,
    encode,
)
from unwall.wire.nat import NatKind

PIN = "sha256:" + "A" * 43
NOWHERE = "ws://127.0.0.1:9/v1/relay"  # the egress is not what these tests are about
SECRET = "broker-and-coturn-share-this"


@pytest.fixture(autouse=True)
def loopback_host() -> object:
    """ICE host candidates on 127.0.0.1 only (aioice skips loopback by itself)."""
    before = webrtc.pinned_host_addresses()
    webrtc.set_host_addresses(["127.0.0.1"])
    yield
    webrtc.set_host_addresses(before)


@contextlib.asynccontextmanager
async def broker(config: BrokerConfig) -> AsyncIterator[tuple[str, web.Application]]:
    app = create_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running(coro: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def metrics(url: str) -> set[str]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        return set((await resp.text()).splitlines())


async def until(
    check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def has_metric(url: str, line: str) -> bool:
    """Whether the metric in ``line`` ("NAME VALUE") has at least that value now."""
    name, _, value = line.rpartition(" ")
    for got in await metrics(url):
        if got.startswith(name + " "):
            return float(got.rpartition(" ")[2]) >= float(value)
    return False


def volunteer(url: str, nat: NatKind | None, **changes: object) -> Volunteer:
    config = VolunteerConfig(broker_url=url, egress_url=NOWHERE, nat=nat)
    for key, value in changes.items():
        setattr(config, key, value)
    return Volunteer(config)


async def test_incompatible_nat_is_one_clear_line(caplog: pytest.LogCaptureFixture) -> None:
    async with broker(BrokerConfig(poll_timeout=1.0, answer_timeout=0.5)) as (url, _):
        async with running(volunteer(url, "symmetric").run()):
            await until(
                lambda: has_metric(url, 'unwall_broker_volunteers_by_nat{nat="symmetric"} 8.0'),
                "the volunteer's NAT kind at the broker",
            )
            tunnel = Tunnel(TunnelConfig(broker_url=url, pin=PIN, nat="port-restricted"))
            with caplog.at_level(logging.INFO, logger="unwall"):
                async with running(tunnel.run()):
                    await until(
                        lambda: any("retrying in" in r.message for r in caplog.records),
                        "the client's warning",
                    )
        lines = await metrics(url)
    [line] = [r.message for r in caplog.records if "retrying in" in r.message][:1]
    assert re.fullmatch(
        r"your network's NAT is port-restricted and no volunteer that can accept it is free "
        r"right now; a TURN server \(--ice-server turn:HOST:PORT with --turn-user and "
        r"UNWALL_TURN_PASSWORD\) would let you connect; retrying in \d+ s",
        line,
    ), line
    assert "NAT kind port-restricted (set with --nat)" in caplog.text
    assert 'unwall_broker_offers_by_nat_total{nat="port-restricted"} 8.0' in lines
    assert "unwall_broker_offers_incompatible_total 1.0" in lines
    assert tunnel.last_error.startswith("your network's NAT is port-restricted")


async def test_client_and_volunteer_measure_their_nat_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a stun: server both run RFC 5780 at start; on loopback that says `none`."""
    with coturn(tmp_path, ("127.0.0.1", "127.0.0.2")) as stun_server:
        ice = [stun_server.stun_url]
        async with broker(BrokerConfig(poll_timeout=1.0, answer_timeout=5.0)) as (url, _):
            with caplog.at_level(logging.INFO, logger="unwall"):
                async with running(volunteer(url, None, ice_servers=ice).run()):
                    await until(
                        lambda: has_metric(url, 'unwall_broker_volunteers_by_nat{nat="none"} 8.0'),
                        "the volunteer's measured NAT kind at the broker",
                    )
                    tunnel = Tunnel(TunnelConfig(broker_url=url, pin=PIN, ice_servers=ice))
                    async with running(tunnel.run()):
                        await until(
                            lambda: has_metric(
                                url, 'unwall_broker_offers_by_nat_total{nat="none"} 8.0'
                            ),
                            "the client's measured NAT kind at the broker",
                        )
    checks = [r.message for r in caplog.records if r.message.startswith("NAT check with")]
    assert checks == [f"NAT check with stun:127.0.0.1:{stun_server.port}: none "
                      "(the mapped address is this machine's own)"] * 2  # fmt: skip


async def test_without_stun_the_nat_is_unknown_and_absent_on_the_wire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with broker(BrokerConfig(poll_timeout=1.0)) as (url, _):
        with caplog.at_level(logging.INFO, logger="unwall"):
            async with running(volunteer(url, None).run()):
                await until(
                    lambda: has_metric(url, 'unwall_broker_volunteers_by_nat{nat="unknown"} 8.0'),
                    "an unknown volunteer",
                )
    assert "NAT kind unknown: no stun: ICE server to measure it with" in caplog.text


class RefusingPeer(asyncio.DatagramProtocol):
    """Answers every connectivity check with a signed STUN error: ICE fails at once."""

    def __init__(self, password: str) -> None:
        self.password = password.encode()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        error = stun.Message(request.message_method, stun.Class.ERROR, request.transaction_id)
        error.attributes["ERROR-CODE"] = (500, "Server Error")
        error.add_message_integrity(self.password)
        self.transport.sendto(bytes(error), addr)


async def refusing_volunteer(url: str) -> None:
    """A volunteer whose one candidate refuses every check (a real answer otherwise)."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        poll = encode(VolunteerPoll("volunteer-refuses", 8, 0, "headless"))
        async with http.post(url + "/v1/volunteer/poll", data=poll) as resp:
            offer = decode_poll_response(await resp.read())
        assert isinstance(offer, PollOffer)
        pc = engine.new_peer_connection([])
        await pc.setRemoteDescription(engine.offer_description(offer.sdp))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        await pc.close()  # its own checks would reach the client
        [password] = re.findall(r"a=ice-pwd:(\S+)", answer)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: RefusingPeer(password), local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        candidate = f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host\r\n"
        lines = [
            line for line in answer.splitlines(keepends=True) if not line.startswith("a=candidate:")
        ]
        at = next(i for i, line in enumerate(lines) if line.startswith("a=end-of-candidates"))
        sdp = "".join([*lines[:at], candidate, *lines[at:]])
        body = encode(VolunteerAnswer("volunteer-refuses", offer.offer_id, sdp))
        try:
            async with http.post(url + "/v1/volunteer/answer", data=body) as resp:
                assert resp.status == 200
            await asyncio.sleep(30)
        finally:
            transport.close()


async def test_ice_failure_is_reported_at_once_and_says_whether_turn_was_there() -> None:
    async with (
        broker(BrokerConfig(poll_timeout=5.0, answer_timeout=5.0)) as (url, _),
        running(refusing_volunteer(url)),
    ):
        tunnel = Tunnel(TunnelConfig(broker_url=url, pin=PIN, nat="full-cone"))
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            with pytest.raises(TunnelUnavailable) as info:
                await tunnel._open_path(BrokerClient(from_session(http), url))
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"took {elapsed:.1f} s (the set-up timeout is 20 s): {info.value}"
    message = str(info.value)
    assert message.startswith("could not connect to the volunteer (WebRTC failed after ")
    assert "your NAT: full-cone" in message
    assert "no TURN server is configured (--ice-server turn:HOST:PORT" in message


async def test_volunteer_uses_the_brokers_turn_credentials(tmp_path: Path) -> None:
    """The broker mints coturn credentials; the volunteer allocates a relay with them and
    says so in its polls, so the broker pairs it even with a client whose NAT (symmetric,
    like its own) could never reach it directly; the answer carries the relay candidate."""
    with coturn(tmp_path, ("127.0.0.1",), stun_only=False, auth_secret=SECRET) as turn_server:
        issuer = TurnIssuer(SECRET, (turn_server.turn_url(),), ttl=600)
        config = BrokerConfig(poll_timeout=0.5, answer_timeout=10.0, turn=issuer)
        async with broker(config) as (url, app):
            helper = volunteer(url, "symmetric")
            async with running(helper.run()):
                matchmaker = app[BROKER_KEY].matchmaker
                await until(
                    lambda: relay_reported(matchmaker, helper.config.volunteer_id),
                    "a poll with relay: true",
                )
                tunnel = Tunnel(TunnelConfig(broker_url=url, pin=PIN, nat="symmetric"))
                async with aiohttp.ClientSession() as http:
                    path = await tunnel._open_path(BrokerClient(from_session(http), url))
                    try:
                        answer = path.peer.remote_sdp
                    finally:
                        await path.close()
    assert helper.relay
    assert " typ relay " in answer, answer


def relay_reported(matchmaker: object, volunteer_id: str) -> bool:
    record = matchmaker._store.get_volunteer(volunteer_id)  # type: ignore[attr-defined]
    return record is not None and bool(record.relay)


async def test_client_with_its_own_turn_server_gets_any_volunteer(tmp_path: Path) -> None:
    """--turn-user/--turn-password with a turn: URL (coturn's long-term credentials): the
    client offers a relay candidate and says relay: true, so the broker pairs it with a
    volunteer whose NAT (symmetric, like its own) it could not reach directly."""
    users = [("alice", "correct horse")]
    with coturn(tmp_path, ("127.0.0.1",), stun_only=False, users=users) as turn_server:
        async with broker(BrokerConfig(poll_timeout=0.5, answer_timeout=10.0)) as (url, _):
            async with running(volunteer(url, "symmetric").run()):
                config = TunnelConfig(
                    broker_url=url,
                    pin=PIN,
                    nat="symmetric",
                    ice_servers=[turn_server.turn_url("tcp")],
                    turn_user="alice",
                    turn_password="correct horse",
                )
                tunnel = Tunnel(config)
                assert tunnel.relay
                async with aiohttp.ClientSession() as http:
                    path = await tunnel._open_path(BrokerClient(from_session(http), url))
                    try:
                        offer = path.peer.local_sdp
                    finally:
                        await path.close()
            lines = await metrics(url)
    assert " typ relay " in offer, offer
    assert "unwall_broker_offers_incompatible_total 0.0" in lines
