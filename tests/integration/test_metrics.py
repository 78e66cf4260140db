"""Prometheus metrics on every role (issue 12, part 4): what an operator sees after one
client's download, counts of people rounded up to 8, and no address anywhere."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from test_bridge import curl, sha256

from unwall.local import DemoSite, LocalBridge, free_port

SIZE = 1_000_000


async def _scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    # No label may carry an address (of a client, a volunteer or a destination).
    assert not re.search(r"\d+\.\d+\.\d+\.\d+", "\n".join(
        line for line in text.splitlines() if not line.startswith("#")
    ).replace("e+06", "")), text  # fmt: skip
    figures = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            figures[name] = float(value)
    return figures


async def test_egress_volunteer_and_broker_metrics_after_a_download(
    bridge: LocalBridge, site: DemoSite
) -> None:
    metrics_port = free_port()
    await bridge.start_broker()
    await bridge.start_egress()
    await bridge.start_volunteer(extra=("--metrics", f"127.0.0.1:{metrics_port}"))
    await bridge.start_client()
    _, digest = site.blob(SIZE)
    code, body, err = await curl(
        "--socks5-hostname", f"127.0.0.1:{bridge.socks_port}", f"{site.url}/blob/{SIZE}"
    )
    assert code == 0 and sha256(body) == digest, err

    egress_url = f"http://127.0.0.1:{bridge.egress_port}/metrics"
    for _ in range(50):  # a stream's bytes count once both its directions have ended
        egress = await _scrape(egress_url)
        if egress['unwall_egress_bytes_total{direction="down"}'] >= SIZE:
            break
        await asyncio.sleep(0.1)
    assert egress["unwall_egress_sessions"] == 8.0  # one session, rounded up
    assert egress["unwall_egress_sessions_opened_total"] >= 1
    assert egress['unwall_egress_streams_total{status="ok"}'] >= 1
    assert egress['unwall_egress_streams_total{status="busy"}'] == 0
    assert egress['unwall_egress_bytes_total{direction="down"}'] >= SIZE
    assert egress["unwall_egress_retries_sent_total"] >= 1
    assert egress["unwall_egress_relays"] >= 1

    volunteer = await _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    assert volunteer["unwall_volunteer_clients"] == 8.0
    assert volunteer["unwall_volunteer_clients_served_total"] == 8.0
    assert volunteer['unwall_volunteer_bytes_total{direction="to_clients"}'] >= SIZE
    assert volunteer['unwall_volunteer_nat{nat="unknown"}'] == 1.0

    broker = await _scrape(f"{bridge.broker_url}/metrics")
    assert broker["unwall_broker_volunteers"] == 8.0
    assert broker["unwall_broker_offers_total"] >= 1
    assert broker['unwall_broker_rate_limited_total{what="offers"}'] == 0
    assert "unwall_broker_pool_up" not in broker  # no shared pool
