"""How many volunteers can one network enumerate through the broker? (issue 12, part 3)

    .venv/bin/python benchmarks/enumeration.py [--seconds S] [--volunteers N] [--json PATH]

A real broker (in this process, over real HTTP on loopback) and N volunteers that poll it,
each from an address of its own /24 (127.0.I.1), and answer every offer with an SDP that
names their address. An enumerator with 50 addresses of one /24 (127.0.200.0/24) posts
offers as fast as the broker lets it for S seconds and collects the volunteer addresses in
the answers. Run with the harvest guard off (as before) and on; the distinct addresses it
learned are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from unwall.broker.server import BrokerConfig, create_app
from unwall.wire.broker import (
    ClientOffer,
    PollOffer,
    VolunteerAnswer,
    VolunteerPoll,
    decode_client_answer,
    decode_poll_response,
    encode,
)

OFFER_SDP = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
    "a=setup:actpass\r\na=sctp-port:5000\r\n"
)
JSON = {"Content-Type": "application/json"}
CANDIDATE = re.compile(r"a=candidate:\S+ \d \S+ \d+ (\S+) \d+ typ host")


def _answer_sdp(address: str) -> str:
    return (
        "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
        f"a=setup:active\r\na=sctp-port:5000\r\na=candidate:1 1 udp 1 {address} 5000 typ host\r\n"
    )


async def _volunteer(url: str, index: int, stop: asyncio.Event) -> None:
    address = f"127.0.{index + 1}.1"
    volunteer_id = f"volunteer-{index:04d}"
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        while not stop.is_set():
            poll = encode(VolunteerPoll(volunteer_id, 8, 0, "headless"))
            try:
                async with http.post(f"{url}/v1/volunteer/poll", data=poll, headers=JSON) as r:
                    if r.status != 200:
                        await asyncio.sleep(0.5)
                        continue
                    reply = decode_poll_response(await r.read())
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
                continue
            if isinstance(reply, PollOffer):
                answer = encode(VolunteerAnswer(volunteer_id, reply.offer_id, _answer_sdp(address)))
                async with http.post(f"{url}/v1/volunteer/answer", data=answer, headers=JSON):
                    pass


async def _enumerator(url: str, until: float, learned: set[str], tally: dict[str, int]) -> None:
    async def one(address: str) -> None:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            while time.monotonic() < until:
                body = encode(ClientOffer(OFFER_SDP))
                async with http.post(f"{url}/v1/client/offer", data=body, headers=JSON) as r:
                    data = await r.read()
                    tally[str(r.status)] = tally.get(str(r.status), 0) + 1
                    if r.status == 200:
                        learned.update(CANDIDATE.findall(decode_client_answer(data).sdp))
                    elif r.status == 429:
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

    await asyncio.gather(*(one(f"127.0.200.{i}") for i in range(2, 52)))


async def run(seconds: float, guard: bool, volunteers: int = 100) -> dict[str, object]:
    config = BrokerConfig(poll_timeout=5.0, answer_timeout=2.0, guard=guard)
    runner = web.AppRunner(create_app(config), handler_cancellation=True, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    stop = asyncio.Event()
    pollers = [asyncio.create_task(_volunteer(url, i, stop)) for i in range(volunteers)]
    learned: set[str] = set()
    tally: dict[str, int] = {}
    try:
        await asyncio.sleep(1.5)  # every volunteer is polling
        await _enumerator(url, time.monotonic() + seconds, learned, tally)
    finally:
        stop.set()
        await runner.cleanup()
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
    return {"guard": guard, "learned": len(learned), "responses": tally}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--volunteers", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for guard in (False, True):
        result = asyncio.run(run(args.seconds, guard, args.volunteers))
        results.append(result)
        print(
            f"guard {'on ' if guard else 'off'}: the enumerator learned {result['learned']} "
            f"of {args.volunteers} volunteer addresses in {args.seconds:g} s "
            f"(responses {result['responses']})"
        )
    if args.json:
        summary = {"seconds": args.seconds, "volunteers": args.volunteers, "runs": results}
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
