"""What the aiortc engine's SDP shows of a machine with private and public addresses.

Run by test_rtc_private_candidates.py inside a network namespace of its own (`unshare -n`):
one veth (both ends here, going nowhere) carries a TEST-NET address, a documentation IPv6
address, and private ones of every kind. Prints one JSON object: the candidate and `c=`
lines of an offer with nothing pinned, with private addresses asked for, and with a
private address pinned; and whether two aiortc peers with nothing pinned still connect.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from unwall.transport import webrtc

try:
    from unwall.transport import hostcandidates
except ImportError:  # before issue 22: no choice, and private addresses offered
    hostcandidates = None  # type: ignore[assignment]

PUBLIC = ["198.51.100.79", "2001:db8::79"]
PRIVATE = [
    "10.20.30.40",
    "172.16.5.5",
    "192.168.7.7",
    "100.64.1.1",  # CGNAT
    "169.254.7.7",  # link-local
    "fd00::79",  # ULA
]


def _network() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
    for address in PUBLIC + PRIVATE:
        prefix = "64" if ":" in address else "24"
        subprocess.run(
            ["ip", "addr", "add", f"{address}/{prefix}", "dev", "v0", "nodad"]
            if ":" in address
            else ["ip", "addr", "add", f"{address}/{prefix}", "dev", "v0"],
            check=True,
        )
    subprocess.run(["ip", "link", "set", "v0", "up"], check=True)
    subprocess.run(["ip", "link", "set", "v1", "up"], check=True)
    subprocess.run(["ip", "route", "add", "default", "dev", "v0"], check=True)


def _lines(sdp: str) -> dict[str, list[str]]:
    lines = sdp.splitlines()
    return {
        "candidates": [line for line in lines if line.startswith("a=candidate:")],
        "c": [line for line in lines if line.startswith("c=")],
    }


async def _offer() -> dict[str, list[str]]:
    peer = webrtc.engine("aiortc").new_peer([])
    try:
        return _lines(await peer.offer())
    finally:
        await peer.close()


async def main() -> dict[str, Any]:
    result: dict[str, Any] = {}
    webrtc.set_host_addresses(None)
    if hostcandidates is not None:
        hostcandidates.allow_private(False)
    result["default"] = await _offer()
    if hostcandidates is not None:
        hostcandidates.allow_private(True)
        result["asked"] = await _offer()
        hostcandidates.allow_private(False)
    webrtc.set_host_addresses(["10.20.30.40"])
    result["pinned"] = await _offer()
    webrtc.set_host_addresses(None)
    # Two peers with nothing pinned still find each other (on the public addresses).
    offerer = webrtc.engine("aiortc").new_peer([])
    answerer = webrtc.engine("aiortc").new_peer([])
    try:
        await offerer.accept_answer(await answerer.answer(await offerer.offer()))
        await asyncio.wait_for(asyncio.gather(offerer.opened.wait(), answerer.opened.wait()), 20)
        got: list[bytes] = []
        answerer.on_message = got.append
        offerer.send(b"through")
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.05)
        result["carried"] = [m.decode() for m in got]
    finally:
        await offerer.close()
        await answerer.close()
    return result


if __name__ == "__main__":
    _network()
    print(json.dumps(asyncio.run(main())))
