"""Sessions survive volunteers that come and go (every role a real process)."""

from __future__ import annotations

import asyncio
import signal

from unwall.local import (
    DemoSite,
    Download,
    LocalBridge,
    download_via_socks,
    free_port,
    socks5_open,
)


async def _start(
    bridge: LocalBridge, volunteers: int, *client_args: str, egress: tuple[str, ...] = ()
) -> None:
    await bridge.start_broker()
    await bridge.start_egress(extra=egress)
    for _ in range(volunteers):
        await bridge.start_volunteer()
    await bridge.start_client(extra=client_args)


async def _bytes_reached(download: Download, size: int, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while download.size < size:
            await asyncio.sleep(0.02)


async def test_kill_carrying_volunteer_mid_download(bridge: LocalBridge, site: DemoSite) -> None:
    size = 50_000_000
    _, digest = site.blob(size)
    await _start(bridge, volunteers=3)
    watch = Download()
    task = asyncio.create_task(
        download_via_socks(bridge.socks_port, f"{site.url}/blob/{size}", watch)
    )
    await _bytes_reached(watch, 10_000_000)
    carrier = await bridge.busiest_volunteer()
    await carrier.stop(signal.SIGKILL)
    result = await asyncio.wait_for(task, 120)
    assert result.status == 200
    assert result.size == size
    assert result.sha256 == digest


async def test_volunteers_killed_every_few_seconds(bridge: LocalBridge, site: DemoSite) -> None:
    size = 30_000_000
    _, digest = site.blob(size)
    await _start(bridge, volunteers=3)
    watch = Download()
    # Paced so that the transfer lasts through several kills.
    task = asyncio.create_task(
        download_via_socks(bridge.socks_port, f"{site.url}/blob/{size}?rate=2500000", watch)
    )
    kills = 0
    while not task.done() and kills < 4:
        await asyncio.sleep(2.0)
        if task.done():
            break
        carrier = await bridge.busiest_volunteer()
        await carrier.stop(signal.SIGKILL)
        kills += 1
        await bridge.start_volunteer()  # others keep coming, as browser tabs do
    result = await asyncio.wait_for(task, 120)
    assert kills >= 3
    assert result.size == size
    assert result.sha256 == digest


async def test_graceful_volunteer_stop(bridge: LocalBridge, site: DemoSite) -> None:
    size = 30_000_000
    _, digest = site.blob(size)
    await _start(bridge, volunteers=2)
    watch = Download()
    task = asyncio.create_task(
        download_via_socks(bridge.socks_port, f"{site.url}/blob/{size}?rate=5000000", watch)
    )
    await _bytes_reached(watch, 5_000_000)
    carrier = await bridge.busiest_volunteer()
    loop = asyncio.get_running_loop()
    started = loop.time()
    code = await carrier.stop(signal.SIGTERM, timeout=10)
    assert code == 0
    assert loop.time() - started < 3.0, "a graceful stop finishes quickly"
    text = carrier.log_path.read_text()
    assert "volunteer stopped: clients now 0, helped " in text
    assert "Traceback" not in text
    result = await asyncio.wait_for(task, 120)
    assert result.sha256 == digest


async def test_all_volunteers_gone_then_one_returns(bridge: LocalBridge, site: DemoSite) -> None:
    size = 20_000_000
    _, digest = site.blob(size)
    await _start(bridge, volunteers=2)
    client = next(role for role in bridge.roles if role.name == "client")
    watch = Download()
    task = asyncio.create_task(
        download_via_socks(bridge.socks_port, f"{site.url}/blob/{size}?rate=4000000", watch)
    )
    await _bytes_reached(watch, 4_000_000)
    for volunteer in bridge.volunteers():
        await volunteer.stop(signal.SIGKILL)
    await bridge.wait_log(client, "no volunteer left", timeout=15)
    stalled_at = watch.size
    await asyncio.sleep(3.0)
    assert watch.size - stalled_at < 2_000_000, "nothing moves without a volunteer"
    await bridge.start_volunteer()
    result = await asyncio.wait_for(task, 120)
    assert result.sha256 == digest
    assert "session-1 closed" not in bridge.roles[1].log_path.read_text()


async def test_no_volunteer_beyond_grace_fails_clearly(bridge: LocalBridge, site: DemoSite) -> None:
    size = 20_000_000
    site.blob(size)
    # Both ends give up after 2 s (the egress's session would otherwise hold the site's
    # connection for its default 60 s, and the test's teardown waited for that).
    await _start(bridge, 1, "--grace", "2", "--stream-wait", "2", egress=("--grace", "2"))
    client = next(role for role in bridge.roles if role.name == "client")
    watch = Download()
    task = asyncio.create_task(
        download_via_socks(bridge.socks_port, f"{site.url}/blob/{size}?rate=2000000", watch)
    )
    await _bytes_reached(watch, 1_000_000)
    for volunteer in bridge.volunteers():
        await volunteer.stop(signal.SIGKILL)
    # The open download fails once the grace period is over (the stream is reset) ...
    result = await asyncio.wait_for(task, 30)
    assert result.size < size
    await bridge.wait_log(client, "no volunteer was reachable for 2 s", timeout=15)
    # ... and a new request is refused promptly with "network unreachable", not left hanging.
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await asyncio.wait_for(socks5_open(bridge.socks_port, "127.0.0.1", site.port), 10)
        reply = 0
    except ConnectionError as exc:
        reply = int(str(exc).rsplit(" ", 1)[-1], 16)
    assert reply == 0x03
    assert loop.time() - started < 5


async def test_volunteer_at_capacity_is_not_offered(bridge: LocalBridge, site: DemoSite) -> None:
    await bridge.start_broker()
    await bridge.start_egress()
    await bridge.start_volunteer(capacity=1)
    first = await bridge.start_client(extra=("--paths", "1"))
    second_port = free_port()
    second = await bridge.start_client(
        wait_ready=False, extra=("--paths", "1"), socks_port=second_port, http_port=free_port()
    )
    await bridge.wait_log(second, "no volunteer available", timeout=30)
    assert "tunnel ready" not in second.log_path.read_text()
    await bridge.start_volunteer(capacity=1)
    await bridge.wait_log(second, "tunnel ready", timeout=60)
    # Both work, each through its own volunteer.
    for port in (bridge.socks_port, second_port):
        download = await download_via_socks(port, f"{site.url}/")
        assert download.status == 200
    assert "tunnel ready" in first.log_path.read_text()
