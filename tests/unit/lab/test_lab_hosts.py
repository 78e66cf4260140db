"""The box's host-level view (`[hosts]`, issue 23): a censored host whose WebRTC DTLS
ClientHellos all repeat one JA3 string is suspected; one whose ClientHellos vary, as
Chromium's do (it permutes its extensions on every connection), is not.

The flows are real captures (tests/unit/lab/fixtures): four Chromium 156 handshakes, whose
extension orders all differ, and four of aiortc's, which are one and the same. Each is
replayed with the ClientHello coming from the censored host."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from lab_samples import fixture_datagrams

from unwall.lab.analyzers import DtlsAnalyzer
from unwall.lab.flowlog import SUSPICIONS, FlowLog, FlowRow, report
from unwall.lab.inspector import MARK_ALLOW, MARK_DROP, SUSPECTED, Inspector
from unwall.lab.profile import HOSTS_AFTER, CensorProfile, HostRule, ProfileError

CHROMIUM = ["chromium-call", "chromium-datachannel", "chromium-offer-dtls-client", "chromium-video"]
AIORTC = ["aiortc-webrtc", "aiortc-datachannel", "chromium-offer-dtls-server", "aiortc-webrtc"]
HOST = "198.51.100.10"
FLAG = CensorProfile.from_dict({"hosts": {"repeat_ja3": True}})


def _hello_sender(name: str) -> bool:
    """Whether the capture's client side (True) or its peer sent the ClientHello."""
    analyzer = DtlsAnalyzer()
    for from_client, datagram in fixture_datagrams(name):
        if any(f.key == "client-hello" for f in analyzer.feed(datagram, from_client=from_client)):
            return from_client
    raise AssertionError(f"{name} has no DTLS ClientHello")


def _flow(name: str, port: int, host: str = HOST) -> list[bytes]:
    """The capture as IPv4 packets, the censored host (`host`, port `port`) sending the
    ClientHello."""
    flip = not _hello_sender(name)
    packets = []
    for from_client, datagram in fixture_datagrams(name):
        mine = from_client != flip
        src, dst, sport, dport = host, "203.0.113.50", port, 50000
        if not mine:
            src, dst, sport, dport = dst, src, dport, sport
        udp = struct.pack("!HHHH", sport, dport, 8 + len(datagram), 0) + datagram
        header = bytes([0x45, 0]) + struct.pack("!HHHBBH", 20 + len(udp), 1, 0x4000, 64, 17, 0)
        packets.append(header + _ip(src) + _ip(dst) + udp)
    return packets


def _ip(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))


def _replay(inspector: Inspector, flows: list[list[bytes]]) -> list[tuple[int | None, list[str]]]:
    """Each flow's verdict and the box's suspicions of it, the flows one after another."""
    results = []
    now = 0.0
    for packets in flows:
        mark, suspected = None, []
        for packet in packets:
            now += 0.01
            decision = inspector.packet(packet, now)
            assert decision is not None
            suspected += [f.value for f in decision.new_findings if f.key == SUSPECTED]
            if decision.mark is not None:
                mark = decision.mark
                break
        results.append((mark, suspected))
    return results


def test_chromiums_handshakes_vary_and_aiortcs_repeat() -> None:
    """The premise, in the captures themselves."""

    def ja3(name: str) -> str:
        analyzer = DtlsAnalyzer()
        for from_client, datagram in fixture_datagrams(name):
            for finding in analyzer.feed(datagram, from_client=from_client):
                if finding.key == "client-hello":
                    return finding.value
        raise AssertionError(name)

    assert len({ja3(name) for name in CHROMIUM}) == len(CHROMIUM)
    assert len({ja3(name) for name in AIORTC}) == 1


def test_a_host_that_repeats_one_ja3_is_flagged_and_a_browser_is_not() -> None:
    inspector = Inspector(FLAG)
    chromium = _replay(inspector, [_flow(n, 40000 + i) for i, n in enumerate(CHROMIUM)])
    assert all(suspected == [] for _, suspected in chromium), chromium
    other = "198.51.100.11"
    aiortc = _replay(inspector, [_flow(n, 41000 + i, other) for i, n in enumerate(AIORTC)])
    assert [suspected for _, suspected in aiortc[:3]] == [[], [], []]
    [why] = aiortc[3][1]
    assert why.startswith(f"hosts {other} repeated one DTLS JA3 (")
    assert why.endswith(f"in its last {HOSTS_AFTER} handshakes")
    assert aiortc[3][0] == MARK_ALLOW  # "flag": reported, let through


def test_drop_stops_the_repeating_hosts_flow_and_no_other_host() -> None:
    drop = CensorProfile.from_dict({"hosts": {"repeat_ja3": True, "after": 2, "action": "drop"}})
    two_hosts = _replay(
        Inspector(drop),
        [_flow("aiortc-webrtc", 40000), _flow("aiortc-webrtc", 40001, "198.51.100.12")],
    )
    assert [mark for mark, _ in two_hosts] == [MARK_ALLOW, MARK_ALLOW]  # one handshake each
    one_host = _replay(
        Inspector(drop), [_flow("aiortc-webrtc", 40000), _flow("aiortc-webrtc", 40001)]
    )
    assert [mark for mark, _ in one_host] == [MARK_ALLOW, MARK_DROP]
    assert one_host[1][1][0].startswith(f"hosts {HOST} repeated one DTLS JA3")


def test_off_by_default() -> None:
    inspector = Inspector(CensorProfile())
    results = _replay(inspector, [_flow("aiortc-webrtc", 40000 + i) for i in range(6)])
    assert all(suspected == [] for _, suspected in results)


def test_the_rule_judges_only_the_last_handshakes() -> None:
    rule = HostRule(repeat_ja3=True, after=3)
    assert rule.objection(HOST, ["a", "a"]) is None
    assert rule.objection(HOST, ["b", "a", "a", "a"]) is not None
    assert rule.objection(HOST, ["a", "a", "b"]) is None
    assert HostRule(repeat_ja3=False).objection(HOST, ["a"] * 10) is None


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"repeat_ja3": "yes"}, "repeat_ja3"),
        ({"after": 1}, "after"),
        ({"after": True}, "after"),
        ({"action": "rst"}, "action"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_a_bad_hosts_table_is_a_clear_error(table: dict[str, object], words: str) -> None:
    with pytest.raises(ProfileError, match=words):
        CensorProfile.from_dict({"hosts": table})


def test_the_report_says_what_the_host_did(tmp_path: Path) -> None:
    log = FlowLog(tmp_path / "flows.db")
    flow_id = log.flow_seen(FlowRow("udp", HOST, 40000, "203.0.113.50", 50000), 0.0)
    reason = f"hosts {HOST} repeated one DTLS JA3 (66d2) in its last 4 handshakes"
    log.add_findings(flow_id, [("box", "suspected", reason)])
    log.close()
    suspected = report(tmp_path / "flows.db", (), set())["hosts"][HOST]["circumvention_suspected"]
    assert list(suspected) == [SUSPICIONS["hosts"]]
    assert suspected[SUSPICIONS["hosts"]]["evidence"] == [reason]
