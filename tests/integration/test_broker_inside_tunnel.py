"""Once its tunnel is up, a client asks the broker only inside it (protocol.md §5): its
sealed offers for new volunteers go to the egress on a QUIC stream, and the egress passes
them to the broker. Every role a real process on loopback; the client reaches the broker
through a front of ours, which, once the tunnel is up, turns into a wall (it counts what
still comes and answers an error page). The carrying volunteer is then killed: the client
moves to its standby, refills its paths through the tunnel, and nothing reaches the wall."""

from __future__ import annotations

import asyncio
import signal
import socket

import aiohttp
from aiohttp import web

from unwall.local import DemoSite, Download, LocalBridge, download_via_socks


async def _front(broker_url: str) -> tuple[web.AppRunner, str, dict[str, int]]:
    """A front that forwards to the broker until `walled` is set, then refuses."""
    state = {"forwarded": 0, "after_wall": 0, "walled": 0}
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if state["walled"]:
            state["after_wall"] += 1
            return web.Response(status=502, text="blocked", content_type="text/html")
        state["forwarded"] += 1
        headers = {"Content-Type": request.headers.get("Content-Type", "")}
        async with session.post(broker_url + request.path, data=body, headers=headers) as got:
            answer = await got.read()
            return web.Response(status=got.status, body=answer, content_type=got.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)

    async def close_session(_: web.Application) -> None:
        await session.close()

    app.on_cleanup.append(close_session)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/", state


async def _metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} at {url}")


async def test_a_connected_client_asks_the_broker_only_inside_its_tunnel(
    bridge: LocalBridge, site: DemoSite
) -> None:
    await bridge.start_broker()
    await bridge.start_egress()
    for _ in range(3):
        await bridge.start_volunteer(capacity=1)  # a path each: killing one leaves the other
    runner, front, state = await _front(bridge.broker_url)
    try:
        client = await bridge.start_client(extra=("--front", front, "--paths", "2"))
        await bridge.wait_log(client, "connected to a volunteer (path-2", timeout=60)
        assert state["forwarded"] >= 1  # the first offers went through the front
        state["walled"] = 1
        # a download under way makes the carrying volunteer the busiest (a standby's death
        # is noticed only when its ICE consent runs out, tens of seconds later)
        size = 20_000_000
        _, digest = site.blob(size)
        watch = Download()
        url = f"{site.url}/blob/{size}"
        download = asyncio.create_task(download_via_socks(bridge.socks_port, url, watch))
        async with asyncio.timeout(60):
            while watch.size < 2_000_000:
                await asyncio.sleep(0.02)
        carrier = await bridge.busiest_volunteer()
        await carrier.stop(signal.SIGKILL)
        # the standby carries on; a new volunteer joins through the tunnel
        await bridge.wait_log(client, "connected to a volunteer (path-3", timeout=60)
        await bridge.wait_log(client, "broker requests travel inside the tunnel", timeout=5)
        result = await asyncio.wait_for(download, 120)
        assert (result.status, result.size, result.sha256) == (200, size, digest)
        assert state["after_wall"] == 0, "the connected client went to the front"
        assert await _metric(bridge.broker_url, "unwall_broker_offers_relayed_total") >= 1
        egress = f"http://{bridge.host}:{bridge.egress_port}"
        relayed = await _metric(egress, 'unwall_egress_broker_requests_total{outcome="ok"}')
        assert relayed >= 1
    finally:
        await runner.cleanup()
