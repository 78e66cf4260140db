"""aiortc against a peer whose candidates are all mDNS names nobody resolves.

Two aiortc peer connections in this process, on 127.0.0.1; the SDP one of them sends is
rewritten the way a browser at its default settings writes it: every host candidate's
address replaced by a `<uuid>.local` name, then a=end-of-candidates. The other side must
connect from the peer's checks (peer-reflexive candidates), as the client does with
Firefox ESR as volunteer and the headless volunteer would with a browser as client.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator

import pytest
from aiortc import RTCDataChannel, RTCPeerConnection

from unwall.transport import webrtc
from unwall.transport.aiortc_engine import engine, ice

_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( .*)$", re.MULTILINE)


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    before = webrtc.pinned_host_addresses()
    webrtc.set_host_addresses(["127.0.0.1"])
    yield
    webrtc.set_host_addresses(before)


def hidden_behind_mdns(sdp: str) -> str:
    """`sdp` with every candidate's address replaced by a name of its own, as browsers do."""
    names: dict[str, str] = {}

    def rename(match: re.Match[str]) -> str:
        name = names.setdefault(match[2], f"{uuid.uuid4()}.local")
        return f"{match[1]}{name}{match[3]}"

    hidden, count = _CANDIDATE.subn(rename, sdp)
    assert count > 0 and "a=end-of-candidates" in hidden, sdp
    return hidden


async def exchange(offerer: RTCPeerConnection, answerer: RTCPeerConnection, hide: str) -> float:
    """Offer/answer with the offer's or the answer's candidates hidden; seconds to open."""
    channel = offerer.createDataChannel(webrtc.DATA_CHANNEL_LABEL)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    echoed: asyncio.Queue[bytes] = asyncio.Queue()
    channel.on("message", echoed.put_nowait)

    @answerer.on("datachannel")
    def on_datachannel(remote: RTCDataChannel) -> None:
        remote.on("message", remote.send)

    # unwall gives up on a path whose connection state turns "failed" (aiortc itself
    # would go on to DTLS over a nominated pair, so an open channel is not enough).
    states: list[str] = []
    for pc in (offerer, answerer):
        pc.on("connectionstatechange", lambda pc=pc: states.append(pc.connectionState))

    started = time.monotonic()
    await offerer.setLocalDescription(await offerer.createOffer())
    offer = offerer.localDescription.sdp
    await answerer.setRemoteDescription(
        engine.offer_description(hidden_behind_mdns(offer) if hide == "offer" else offer)
    )
    await answerer.setLocalDescription(await answerer.createAnswer())
    answer = answerer.localDescription.sdp
    await offerer.setRemoteDescription(
        engine.answer_description(hidden_behind_mdns(answer) if hide == "answer" else answer)
    )
    async with asyncio.timeout(ice.PEER_CHECK_WAIT + 10):
        await opened.wait()
        channel.send(b"x" * 1000)
        assert await echoed.get() == b"x" * 1000
    assert "failed" not in states, states
    assert offerer.iceConnectionState == answerer.iceConnectionState == "completed"
    return time.monotonic() - started


@pytest.mark.parametrize(
    "hide",
    [
        # the client offers, a browser volunteer answers with mDNS names only
        "answer",
        # a browser offers mDNS names only, the headless volunteer answers
        "offer",
    ],
)
async def test_connects_to_a_peer_known_only_by_unresolvable_mdns_names(hide: str) -> None:
    offerer = engine.new_peer_connection([])
    answerer = engine.new_peer_connection([])
    try:
        seconds = await exchange(offerer, answerer, hide)
    finally:
        await offerer.close()
        await answerer.close()
    # mDNS resolution gives up after 1 s; the checks take milliseconds on loopback.
    assert seconds < 5, seconds


async def test_a_silent_peer_known_only_by_mdns_names_fails_after_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No usable candidate and no check from the peer: ICE fails, after PEER_CHECK_WAIT."""
    monkeypatch.setattr(ice, "PEER_CHECK_WAIT", 1.0)
    offerer = engine.new_peer_connection([])
    silent = engine.new_peer_connection([])
    failed = asyncio.Event()

    @offerer.on("iceconnectionstatechange")
    def on_state() -> None:
        if offerer.iceConnectionState == "failed":
            failed.set()

    try:
        offerer.createDataChannel(webrtc.DATA_CHANNEL_LABEL)
        await offerer.setLocalDescription(await offerer.createOffer())
        await silent.setRemoteDescription(engine.offer_description(offerer.localDescription.sdp))
        await silent.setLocalDescription(await silent.createAnswer())
        answer = hidden_behind_mdns(silent.localDescription.sdp)
        await silent.close()  # it never checks
        started = time.monotonic()
        await offerer.setRemoteDescription(engine.answer_description(answer))
        async with asyncio.timeout(15):
            await failed.wait()
        waited = time.monotonic() - started
    finally:
        await offerer.close()
    # 1 s of mDNS resolution, then the 1 s wait for a check.
    assert 1.5 < waited < 6, waited
