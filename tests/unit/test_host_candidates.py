"""Which host addresses an SDP shows (unwall.transport.hostcandidates), and the aiortc
engine's use of it on candidates as aiortc makes them (unwall.transport.aiortc_engine.sdp)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiortc.rtcicetransport import RTCIceCandidate

from unwall.transport import hostcandidates, webrtc
from unwall.transport.aiortc_engine import sdp


@pytest.fixture(autouse=True)
def defaults() -> Iterator[None]:
    pinned, allowed = webrtc.pinned_host_addresses(), hostcandidates.private_allowed()
    webrtc.set_host_addresses(None)
    hostcandidates.allow_private(False)
    yield
    webrtc.set_host_addresses(pinned)
    hostcandidates.allow_private(allowed)


@pytest.mark.parametrize(
    "address",
    ["10.1.2.3", "172.31.255.1", "192.168.0.9", "100.64.0.1", "100.127.255.254",
     "169.254.169.254", "127.0.0.1", "fd12:3456::1", "fc00::1", "fe80::1", "fe80::1%eth0",
     "::1", "::ffff:192.168.1.1"],
)  # fmt: skip
def test_private_addresses(address: str) -> None:
    assert hostcandidates.is_private(address)
    assert not hostcandidates.offered(address, None)


@pytest.mark.parametrize(
    "address",
    ["198.51.100.7", "203.0.113.5", "192.0.2.1", "8.8.8.8", "172.32.0.1", "100.128.0.1",
     "2001:db8::1", "2a00:1450::1", "abcd.local", "0c7d7c43-3f7a-4d53-b1c1-5a6a3f8c9f7e.local"],
)  # fmt: skip
def test_other_addresses_and_names_are_shown(address: str) -> None:
    assert not hostcandidates.is_private(address)
    assert hostcandidates.offered(address, None)


def test_pins_are_offered_and_nothing_else() -> None:
    assert hostcandidates.offered("127.0.0.1", ["127.0.0.1"])
    assert hostcandidates.offered("10.0.0.5", ["10.0.0.5"])
    assert hostcandidates.offered("2001:db8:0::1", ["2001:db8::1"])
    assert not hostcandidates.offered("198.51.100.9", ["127.0.0.1"])


def test_asked_for() -> None:
    hostcandidates.allow_private(True)
    assert hostcandidates.offered("192.168.1.1", None)
    assert hostcandidates.related_shown("192.168.1.1", None)


SDP = "\r\n".join(
    [
        "v=0",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=candidate:1 1 udp 2130706431 192.168.1.5 5000 typ host",
        "a=candidate:2 1 udp 2130706431 198.51.100.5 5001 typ host",
        "a=candidate:3 1 udp 1694498815 203.0.113.7 6000 typ srflx raddr 192.168.1.5 rport 5000",
        "a=candidate:4 1 udp 16777215 203.0.113.8 7000 typ relay raddr 203.0.113.7 rport 6000",
        "a=end-of-candidates",
        "",
    ]
)


def test_filter_sdp() -> None:
    shown = hostcandidates.filter_sdp(SDP, None)
    assert "192.168.1.5" not in shown
    assert "198.51.100.5 5001 typ host" in shown
    assert "typ srflx raddr 0.0.0.0 rport 0" in shown
    assert "typ relay raddr 203.0.113.7 rport 6000" in shown  # a public mapped address
    assert shown.endswith("a=end-of-candidates\r\n")
    assert hostcandidates.filter_sdp(SDP, ["192.168.1.5"]).count("typ host") == 1
    hostcandidates.allow_private(True)
    assert hostcandidates.filter_sdp(SDP, None) == SDP


def _candidate(ip: str, kind: str, related: str | None = None) -> RTCIceCandidate:
    return RTCIceCandidate(
        component=1, foundation="f", ip=ip, port=5000, priority=1, protocol="udp", type=kind,
        relatedAddress=related, relatedPort=4000 if related else None,
    )  # fmt: skip


def test_aiortc_candidates_shown() -> None:
    candidates = [
        _candidate("10.0.0.2", "host"),
        _candidate("fd00::2", "host"),
        _candidate("198.51.100.2", "host"),
        _candidate("203.0.113.2", "srflx", "10.0.0.2"),
        _candidate("203.0.113.3", "relay", "203.0.113.2"),
    ]
    shown = sdp._shown_candidates(candidates)
    assert [c.ip for c in shown] == ["198.51.100.2", "203.0.113.2", "203.0.113.3"]
    assert (shown[1].relatedAddress, shown[1].relatedPort) == ("0.0.0.0", 0)
    assert (shown[2].relatedAddress, shown[2].relatedPort) == ("203.0.113.2", 4000)
    webrtc.set_host_addresses(["10.0.0.2"])
    shown = sdp._shown_candidates(candidates)
    assert [c.ip for c in shown] == ["10.0.0.2", "203.0.113.2", "203.0.113.3"]
    assert shown[1].relatedAddress == "10.0.0.2"  # pinned: asked for
