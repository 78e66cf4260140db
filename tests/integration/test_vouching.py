"""Issue 22, rows 3, 4 and 9: the egress serves only sessions a broker vouched for, one
address cannot take every session, and a volunteer earns credit only for carrying.

Each test makes QUIC sessions straight to the egress's relay endpoint, as a stranger would
(tests/integration/vouching.py), next to a control that is served, so that a refusal is
the egress's and not a broken harness. Run against the code before tickets, every
stranger here was served (and credited)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web
from vouching import direct, offer_id, relay_url, voucher

from unwall.local import DemoSite, LocalBridge, free_port
from unwall.wire import report
from unwall.wire.streamheader import StreamStatus


async def test_a_relay_without_a_valid_ticket_carries_nothing(bridge: LocalBridge) -> None:
    """Row 4: a QUIC Initial straight to /v1/relay, with no ticket or a forged one, ends
    the relay (close code 1008) before the egress answers anything; a volunteer checking
    itself (a relay opened and closed unused) is still taken."""
    await bridge.start_egress()
    pin = bridge.pin
    async with aiohttp.ClientSession() as http:
        for url in (relay_url(bridge), relay_url(bridge, offer_id(), forged=True)):
            async with direct(http, url, pin) as stranger:
                with pytest.raises(TimeoutError):
                    await stranger.handshake(timeout=3)
                assert stranger.ws.closed and stranger.ws.close_code == 1008
        async with http.ws_connect(relay_url(bridge)) as check:
            assert not check.closed
        figures = await (await http.get(_egress(bridge, "/v1/health"))).json()
        assert figures["sessions"] == 0, figures


async def test_a_session_without_the_clients_voucher_is_refused(
    bridge: LocalBridge, site: DemoSite
) -> None:
    """Row 4 (and the fake volunteer of row 9): a relay ticket opens the relay, but a
    session that shows no voucher (ticket and the client's secret) gets no stream served
    and is closed; a wrong secret, or a voucher for another relay's offer, is refused; the
    one with the real client's voucher, through its own offer's relay, is served."""
    await bridge.start_egress()
    async with aiohttp.ClientSession() as http:
        offer = offer_id()
        async with direct(http, relay_url(bridge, offer), bridge.pin) as stranger:
            await stranger.handshake()
            started = time.monotonic()
            reply, _ = await stranger.fetch(site.port)
            assert reply.status == StreamStatus.NOT_ALLOWED, reply
            assert "voucher" in reply.reason
            await asyncio.wait_for(asyncio.shield(stranger.session.closed), 15)
            assert time.monotonic() - started < 15
        guessed = offer_id()
        async with direct(http, relay_url(bridge, guessed), bridge.pin) as guesser:
            await guesser.handshake()
            real = voucher(bridge, guessed)
            refused = await guesser.show(type(real)(real.ticket, bytes(32)))
            assert refused.status == StreamStatus.NOT_ALLOWED
            assert "secret" in refused.reason
            # A real voucher, of another offer than the relay's: not this session's.
            refused = await guesser.show(voucher(bridge, offer_id()))
            assert refused.status == StreamStatus.NOT_ALLOWED
            assert "relay" in refused.reason
        mine = offer_id()
        async with direct(http, relay_url(bridge, mine), bridge.pin) as client:
            await client.handshake()
            shown = voucher(bridge, mine)
            assert (await client.show(shown)).status == StreamStatus.OK
            reply, page = await client.fetch(site.port)
            assert reply.status == StreamStatus.OK and b"200 OK" in page


async def test_a_ticket_opens_one_relay_and_a_voucher_serves_one_session(
    bridge: LocalBridge,
) -> None:
    """A relay ticket is good for one relay (a second one with it carries nothing); a
    relay starts at most 2 sessions; an offer's voucher serves one live session."""
    await bridge.start_egress(extra=("--no-retry",))
    async with aiohttp.ClientSession() as http:
        offer = offer_id()
        url = relay_url(bridge, offer)
        async with direct(http, url, bridge.pin) as first:
            await first.handshake()
            shown = voucher(bridge, offer)
            assert (await first.show(shown)).status == StreamStatus.OK
            async with direct(http, url, bridge.pin) as again:
                with pytest.raises(TimeoutError):
                    await again.handshake(timeout=3)
                assert again.ws.closed and again.ws.close_code == 1008
            # Two more sessions through the first relay: one is taken, and it cannot use
            # the voucher the first session holds; the third is not started at all.
            second = first.another()
            await second.handshake()
            refused = await second.show(shown)
            assert refused.status == StreamStatus.NOT_ALLOWED
            assert "another session" in refused.reason
            third = first.another()
            with pytest.raises(TimeoutError):
                await third.handshake(timeout=3)


async def test_one_address_cannot_take_every_session(bridge: LocalBridge) -> None:
    """Row 3: six vouched sessions from one address (relays from 127.0.0.2) against an
    egress of 6 sessions: 4 (`--sessions-per-address`) get in, and a real client, whose
    volunteer relays from another address, still gets its tunnel. Before the cap the six
    filled the table and locked the client out."""
    await bridge.start_broker()
    await bridge.start_egress(
        extra=("--max-sessions", "6", "--sessions-per-address", "4", "--no-retry")
    )
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        hogs = []
        established = 0
        for _ in range(6):
            offer = offer_id()
            context = direct(http, relay_url(bridge, offer), bridge.pin)
            hog = await context.__aenter__()
            hogs.append(context)
            try:
                await hog.handshake(timeout=3)
            except TimeoutError:
                continue
            assert (await hog.show(voucher(bridge, offer))).status == StreamStatus.OK
            established += 1
        assert established == 4
        await bridge.start_volunteer()
        await bridge.start_client()  # waits for "tunnel ready"
        for context in hogs:
            await context.__aexit__(None, None, None)


async def test_credit_only_for_carrying_a_vouched_session(bridge: LocalBridge) -> None:
    """Row 9: a fake volunteer took an offer, relayed nothing, and opened its own relay
    with the offer's ticket and its own session: the egress never reports that offer. A
    session that shows the real client's voucher and whose datagrams come through the
    offer's relay is reported (the control)."""
    reported: list[str] = []

    async def carried(request: web.Request) -> web.Response:
        body = await request.read()
        key = report.report_key(bridge.secret)
        assert report.verify(key, request.headers["Authorization"], body, time.time())
        assert bridge.secret not in request.headers["Authorization"]  # never the secret
        reported.extend(json.loads(body)["offers"])
        return web.json_response({"version": 1, "credited": 0})

    app = web.Application()
    app.router.add_post("/v1/egress/carried", carried)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await bridge.start_egress(extra=("--report-to", f"http://127.0.0.1:{port}"))
        forged, honest = offer_id(), offer_id()
        async with (
            aiohttp.ClientSession() as http,
            direct(http, relay_url(bridge, forged), bridge.pin) as fake,
            direct(http, relay_url(bridge, honest), bridge.pin) as client,
        ):
            await fake.handshake()
            await client.handshake()
            assert (await client.show(voucher(bridge, honest))).status == StreamStatus.OK
            client.session.ping()
            deadline = time.monotonic() + 10
            while honest not in reported and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        assert honest in reported
        await asyncio.sleep(2.5)  # one more report period
        assert forged not in reported
    finally:
        await runner.cleanup()


def _egress(bridge: LocalBridge, path: str) -> str:
    return f"http://{bridge.host}:{bridge.egress_port}{path}"
