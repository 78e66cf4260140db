"""The headless volunteer checks itself: broker, egress, NAT, who could reach it."""

from __future__ import annotations

import asyncio
import sys

import aiohttp

from unwall.local import LOOPBACK, LocalBridge, free_port


async def check(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "unwall", "volunteer", "--check", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_check_says_ready_or_what_is_wrong(bridge: LocalBridge) -> None:
    await bridge.start_broker()
    nowhere = f"ws://{LOOPBACK}:{free_port()}/v1/relay"
    code, out = await check("--broker", bridge.broker_url, "--egress", nowhere, "--nat", "none")
    assert code == 1
    assert "unwall volunteer: NOT READY: cannot reach the egress" in out, out
    await bridge.start_egress()
    code, out = await check(
        "--broker", bridge.broker_url, "--egress", bridge.egress_url, "--nat", "symmetric"
    )
    assert code == 0, out
    assert "unwall volunteer: ready, but hard to reach" in out, out
    code, out = await check(
        "--broker", f"http://{LOOPBACK}:{free_port()}", "--egress", bridge.egress_url
    )
    assert code == 1 and "cannot reach the broker" in out, out


async def test_a_running_volunteer_logs_and_serves_its_verdict(bridge: LocalBridge) -> None:
    await bridge.start_broker()
    await bridge.start_egress()
    port = free_port()
    volunteer = await bridge.start_volunteer(
        extra=(
            "--metrics", f"{LOOPBACK}:{port}", "--nat", "port-restricted",
            "--stats-interval", "0.5",
        )
    )  # fmt: skip
    await bridge.wait_log(volunteer, "self-check: ready: broker and egress reachable")
    # What it gave, as it goes: people helped, data relayed, time on.
    await bridge.wait_log(volunteer, "stats: clients now 0, helped 0; relayed 0.0 MB")
    assert "dropped; on for " in volunteer.log_path.read_text()
    assert "clients behind 4 of 5 kinds of NAT can reach you" in volunteer.log_path.read_text()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{LOOPBACK}:{port}/metrics") as response,
    ):
        text = await response.text()
    assert 'unwall_volunteer_check{verdict="ready"} 1.0' in text
    assert 'unwall_volunteer_check{verdict="egress_unreachable"} 0.0' in text
