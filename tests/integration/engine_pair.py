"""Two `unwall.transport.webrtc` peers of the given engines, connected in this process.

Run by test_webrtc_engines.py inside a network namespace of its own (`unshare -n`), so
that Chromium sees only the address set up here. Prints one JSON object: what arrived on
each side, the SDP facts, and what happened when the engine's browser was killed.
Usage: python engine_pair.py OFFERER ANSWERER ADDRESS [CARRIER]
(CARRIER: what both ends prefer; default: each engine's own)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys

from unwall.transport import webrtc

COUNT = 300
SIZE = 1200


def _network(address: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # A veth pair with both ends here (this kernel has no dummy interfaces): an interface
    # that is not loopback, which Chromium gathers host candidates on.
    subprocess.run(["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
    subprocess.run(["ip", "addr", "add", f"{address}/24", "dev", "v0"], check=True)
    subprocess.run(["ip", "link", "set", "v0", "up"], check=True)
    subprocess.run(["ip", "link", "set", "v1", "up"], check=True)
    # Chromium offers host candidates only on the interface of the default route (the
    # namespace's: the veth goes nowhere beyond it).
    subprocess.run(["ip", "route", "add", "default", "dev", "v0"], check=True)
    webrtc.set_host_addresses([address])


async def main(
    offerer_engine: str, answerer_engine: str, carrier: str | None = None
) -> dict[str, object]:
    offerer = webrtc.engine(offerer_engine).new_peer([], carrier=carrier)
    answerer = webrtc.engine(answerer_engine).new_peer([], carrier=carrier)
    got: dict[str, list[bytes]] = {"offerer": [], "answerer": []}
    offerer.on_message = got["offerer"].append
    answerer.on_message = got["answerer"].append
    offer = await offerer.offer()
    answer = await answerer.answer(offer)
    await offerer.accept_answer(answer)
    await asyncio.wait_for(asyncio.gather(offerer.opened.wait(), answerer.opened.wait()), 20)
    sent: dict[str, set[str]] = {"offerer": set(), "answerer": set()}
    for i in range(COUNT):
        for name, peer in (("offerer", offerer), ("answerer", answerer)):
            data = os.urandom(SIZE)
            sent[name].add(hashlib.sha256(data).hexdigest())
            assert peer.send(data)
        if i % 20 == 0:
            # No flood: nothing should need dropping. The media carrier starts at its start
            # bitrate (2.5 Mbit/s), and holds a quarter of a second of it (at least 64 KiB).
            await asyncio.sleep(0.15 if offerer.carrier == webrtc.MEDIA else 0.01)
    deadline = asyncio.get_running_loop().time() + 10
    while (len(got["offerer"]) < COUNT or len(got["answerer"]) < COUNT) and (
        asyncio.get_running_loop().time() < deadline
    ):
        await asyncio.sleep(0.05)
    result: dict[str, object] = {
        "offerer_received": len(got["offerer"]),
        "answerer_received": len(got["answerer"]),
        # an unordered channel: the same messages, in any order
        "offerer_got_exact": {hashlib.sha256(m).hexdigest() for m in got["offerer"]}
        == sent["answerer"],
        "answerer_got_exact": {hashlib.sha256(m).hexdigest() for m in got["answerer"]}
        == sent["offerer"],
        "max_message_size": [offerer.remote_max_message_size, answerer.remote_max_message_size],
        "local_sdp_kept": offerer.local_sdp == offer and answerer.local_sdp == answer,
        "carriers": [offerer.carrier, answerer.carrier],
    }
    counts = getattr(offerer, "carrier_counts", None)
    if counts is not None:
        result["offerer_counts"] = await counts()
    # A browser that dies takes its peers with it, at once, and says so.
    if "chromium" in (offerer_engine, answerer_engine):
        pid = webrtc.engine("chromium").pid  # type: ignore[attr-defined]
        os.killpg(pid, signal.SIGKILL)
        victim = offerer if offerer_engine == "chromium" else answerer
        await asyncio.wait_for(victim.dead.wait(), 10)
        result["killed_why"] = victim.why_dead
        # A crash costs the connections it held; a later one gets a new browser. (One made
        # while the engine has not yet seen the crash's every effect can still go to the
        # dead page and fail: the tunnel retries, and so does this.)
        try:
            again = await _connect(offerer_engine, answerer_engine)
        except webrtc.EngineUnavailable:
            again = await _connect(offerer_engine, answerer_engine)
        arrived: list[bytes] = []
        again[1].on_message = arrived.append
        again[0].send(b"after the crash")
        for _ in range(100):
            if arrived:
                break
            await asyncio.sleep(0.05)
        result["after_restart"] = [m.decode() for m in arrived]
        result["new_pid"] = webrtc.engine("chromium").pid != pid  # type: ignore[attr-defined]
        for peer in again:
            await peer.close()
    await offerer.close()
    await answerer.close()
    await webrtc.close_engines()
    return result


async def _connect(offerer_engine: str, answerer_engine: str) -> tuple[webrtc.Peer, webrtc.Peer]:
    offerer = webrtc.engine(offerer_engine).new_peer([])
    answerer = webrtc.engine(answerer_engine).new_peer([])
    await offerer.accept_answer(await answerer.answer(await offerer.offer()))
    await asyncio.wait_for(asyncio.gather(offerer.opened.wait(), answerer.opened.wait()), 20)
    return offerer, answerer


if __name__ == "__main__":
    _network(sys.argv[3])
    carrier = sys.argv[4] if len(sys.argv) > 4 else None
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], carrier))))
