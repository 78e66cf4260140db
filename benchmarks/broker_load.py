"""The broker under load (issue 12, part 5).

    .venv/bin/python benchmarks/broker_load.py [--polls N] [--runs R] [--json PATH]
    .venv/bin/python benchmarks/broker_load.py --offers-per-second [--brokers 1,2,3]

Idle long-polls: a real `unwall broker` process holds N volunteer long-polls (10,000 by
default) from many loopback addresses, while /v1/health is asked 200 times; the broker's
RSS (from /proc) and the health check's latency (median, 99th percentile) are reported.

Offers per second: 1, 2 and 3 broker processes on one real redis-server; volunteers poll
one broker, clients post offers to another (round robin), each offer is answered at once;
offers matched per second over 15 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from spread import summarize

from unwall.local import LocalBridge, free_port
from unwall.wire.broker import (
    ClientOffer,
    PollOffer,
    VolunteerAnswer,
    VolunteerPoll,
    decode_poll_response,
    encode,
)

JSON = {"Content-Type": "application/json"}
SDP = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def idle_polls(polls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="unwall-broker-load-") as workdir:
        bridge = LocalBridge(Path(workdir))
        broker = await bridge.start_broker(extra=("--poll-timeout", "120"))
        try:
            before = rss_mb(broker.pid)
            # 100 addresses of 100 networks, 100 polls each (under the per-address limits).
            sessions = [
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(local_addr=(f"127.1.{i}.1", 0), limit=0)
                )
                for i in range(max(1, polls // 100))
            ]
            url = f"{bridge.broker_url}/v1/volunteer/poll"

            async def hold(n: int) -> None:
                body = encode(VolunteerPoll(f"volunteer-{n:06d}", 8, 0, "headless"))
                with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
                    async with sessions[n % len(sessions)].post(url, data=body, headers=JSON):
                        pass

            holders = []
            for n in range(polls):
                holders.append(asyncio.create_task(hold(n)))
                if n % 500 == 499:
                    await asyncio.sleep(0.2)
            async with aiohttp.ClientSession() as http:
                for _ in range(100):
                    async with http.get(f"{bridge.broker_url}/v1/health") as resp:
                        held = (await resp.json())["volunteers"]
                    if held >= polls * 0.99:
                        break
                    await asyncio.sleep(0.2)
                latencies = []
                for _ in range(200):
                    started = time.perf_counter()
                    async with http.get(f"{bridge.broker_url}/v1/health") as resp:
                        await resp.read()
                    latencies.append((time.perf_counter() - started) * 1000)
                    await asyncio.sleep(0.01)
            during = rss_mb(broker.pid)
            for task in holders:
                task.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
            for session in sessions:
                await session.close()
        finally:
            await bridge.stop_all()
    latencies.sort()
    return {
        "polls_held": held,
        "rss_idle_mb": round(before, 1),
        "rss_with_polls_mb": round(during, 1),
        "health_median_ms": round(statistics.median(latencies), 2),
        "health_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
    }


async def offers_per_second(brokers: int, seconds: float = 15.0) -> dict[str, float]:
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="unwall-broker-rate-") as workdir:
        server = subprocess.Popen(  # noqa: ASYNC220 (started once, before the load)
            [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        bridge = LocalBridge(Path(workdir))
        try:
            await asyncio.sleep(0.5)
            shared = ("--redis", f"redis://127.0.0.1:{port}/0", "--offers-per-minute", "1e9")
            urls = []
            for i in range(brokers):
                broker_port = bridge.broker_port if i == 0 else free_port()
                await bridge.start_broker(extra=shared, port=broker_port)
                urls.append(f"http://127.0.0.1:{broker_port}")
            matched = 0
            until = time.monotonic() + seconds

            async def volunteer(n: int) -> None:
                url = urls[n % len(urls)]
                vid = f"volunteer-{n:06d}"
                # Each from an address of its own (polls are limited per address).
                connector = aiohttp.TCPConnector(local_addr=(f"127.2.{n}.1", 0))
                async with aiohttp.ClientSession(connector=connector) as http:
                    await volunteer_loop(url, vid, http)

            async def volunteer_loop(url: str, vid: str, http: aiohttp.ClientSession) -> None:
                while time.monotonic() < until:
                    body = encode(VolunteerPoll(vid, 8, 0, "headless"))
                    async with http.post(f"{url}/v1/volunteer/poll", data=body, headers=JSON) as r:
                        reply = decode_poll_response(await r.read()) if r.status == 200 else None
                    if isinstance(reply, PollOffer):
                        answer = encode(VolunteerAnswer(vid, reply.offer_id, SDP))
                        async with http.post(
                            f"{url}/v1/volunteer/answer", data=answer, headers=JSON
                        ):
                            pass

            async def client(n: int, http: aiohttp.ClientSession) -> None:
                nonlocal matched
                url = urls[(n + 1) % len(urls)]  # another broker than its volunteers'
                while time.monotonic() < until:
                    async with http.post(
                        f"{url}/v1/client/offer", data=encode(ClientOffer(SDP)), headers=JSON
                    ) as r:
                        await r.read()
                        if r.status == 200 and time.monotonic() < until:
                            matched += 1

            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                await asyncio.gather(
                    *(volunteer(n) for n in range(50)),
                    *(client(n, http) for n in range(50)),
                )
        finally:
            await bridge.stop_all()
            server.kill()
            server.wait()
    return {"brokers": brokers, "offers_matched_per_s": round(matched / seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--offers-per-second", action="store_true")
    parser.add_argument("--brokers", default="1,2,3")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    summary: dict[str, object] = {}
    if args.offers_per_second:
        rates = [asyncio.run(offers_per_second(int(n))) for n in args.brokers.split(",")]
        for rate in rates:
            print(
                f"{rate['brokers']} broker(s) on one Redis: "
                f"{rate['offers_matched_per_s']} offers matched/s"
            )
        summary["offers_per_second"] = rates
    else:
        runs = [asyncio.run(idle_polls(args.polls)) for _ in range(args.runs)]
        summary = {"polls": args.polls, "runs": runs}
        summary.update(summarize(runs, digits=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
