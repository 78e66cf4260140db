"""The carrier analyzer and the `[datachannel]` rule, on real captured flows: a data channel
(Chromium's, DTLS 1.3; unwall's aiortc, DTLS 1.2), a video call, a call with both; and the
inspector keeping a WebRTC flow under inspection exactly until the rule can decide.

The fixtures come from fixtures/capture_carrier.py and fixtures/capture_webrtc.py."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from lab_samples import (
    aioquic_initials,
    box_verdict,
    feed_all,
    fixture_datagrams,
    keys,
    noise,
    openssl_dtls_client_hello,
    udp_flow_packets,
)

from unwall.lab import inspector as inspector_module
from unwall.lab.analyzers import Finding
from unwall.lab.analyzers.carrier import (
    DATACHANNEL,
    HANDSHAKE,
    MEDIA,
    OTHER,
    SRTCP,
    SRTP,
    STUN,
    CarrierAnalyzer,
    MediaSeen,
    classify,
    describe_rtp,
)
from unwall.lab.analyzers.reader import Malformed
from unwall.lab.flowlog import FlowLog, FlowRow, report
from unwall.lab.inspector import MARK_ALLOW, MARK_DROP, Inspector
from unwall.lab.profile import SHIPPED_PROFILES, CensorProfile, ProfileError

CHROMIUM_DATA = "chromium-datachannel"  # --webrtc chromium's carrier today: DTLS 1.3
AIORTC_DATA = "aiortc-datachannel"  # the aiortc engine's: DTLS 1.2
VIDEO = "chromium-video"  # a call: video, no data channel
CALL = "chromium-call"  # a call with a data channel


def flow(name: str) -> list[tuple[bool, bytes]]:
    return fixture_datagrams(name)


def first(name: str, test: object) -> bytes:
    """The first datagram of a captured flow whose first byte passes `test`."""
    return next(d for _, d in flow(name) if test(d[0]))  # type: ignore[operator]


STUN_CHECK = first(CHROMIUM_DATA, lambda b: b <= 3)
CLIENT_HELLO = first(CHROMIUM_DATA, lambda b: b == 22)
DTLS13_HANDSHAKE = first(CHROMIUM_DATA, lambda b: b == 0x2E)  # epoch 2
DTLS13_DATA = first(CHROMIUM_DATA, lambda b: b == 0x2F)  # epoch 3
DTLS12_CCS = first(AIORTC_DATA, lambda b: b == 20)
DTLS12_DATA = first(AIORTC_DATA, lambda b: b == 23)
RTP = first(VIDEO, lambda b: 128 <= b <= 191)
RTCP = next(d for _, d in flow(VIDEO) if 128 <= d[0] <= 191 and 192 <= d[1] <= 223)


def channel_data(inner: bytes, channel: int = 0x4000) -> bytes:
    """A TURN ChannelData message (RFC 8656 section 12.4) around one datagram."""
    return struct.pack("!HH", channel, len(inner)) + inner


def send_indication(inner: bytes) -> bytes:
    """A TURN Send indication (method 0x006, class indication) with a DATA attribute."""
    padded = inner + b"\x00" * (-len(inner) % 4)
    attribute = struct.pack("!HH", 0x0013, len(inner)) + padded
    header = struct.pack("!HHI", 0x0016, len(attribute), 0x2112A442) + bytes(12)
    return header + attribute


# -- one datagram: what kind it is --------------------------------------------------------------

# (id, datagram, [(kind, size)] expected)
DATAGRAMS = [
    ("stun-ice-check", STUN_CHECK, [(STUN, len(STUN_CHECK))]),
    ("dtls-client-hello", CLIENT_HELLO, [(HANDSHAKE, len(CLIENT_HELLO))]),
    ("dtls12-change-cipher-spec-and-finished", DTLS12_CCS, [(HANDSHAKE, 14), (HANDSHAKE, 61)]),
    ("dtls12-application-data", DTLS12_DATA, [(DATACHANNEL, len(DTLS12_DATA))]),
    ("dtls13-epoch-2-handshake", DTLS13_HANDSHAKE, [(HANDSHAKE, len(DTLS13_HANDSHAKE))]),
    ("dtls13-epoch-3-data", DTLS13_DATA, [(DATACHANNEL, len(DTLS13_DATA))]),
    ("dtls13-no-length-fills-the-datagram", b"\x2b\x01\x02" + bytes(30), [(DATACHANNEL, 33)]),
    ("dtls13-two-records", b"\x2e\x00\x01\x00\x02ab" + b"\x2f\x00\x02\x00\x01c",
     [(HANDSHAKE, 7), (DATACHANNEL, 6)]),
    ("rtp-video", RTP, [(SRTP, len(RTP))]),
    ("rtcp-by-its-second-byte", RTCP, [(SRTCP, len(RTCP))]),
    ("turn-channel-data-around-rtp", channel_data(RTP), [(SRTP, len(RTP))]),
    ("turn-channel-data-around-dtls13", channel_data(DTLS13_DATA),
     [(DATACHANNEL, len(DTLS13_DATA))]),
    ("turn-channel-data-padded", channel_data(DTLS12_DATA) + b"\x00\x00\x00",
     [(DATACHANNEL, len(DTLS12_DATA))]),
    ("turn-send-indication-around-dtls12", send_indication(DTLS12_DATA),
     [(DATACHANNEL, len(DTLS12_DATA))]),
    ("turn-channel-data-in-channel-data", channel_data(channel_data(RTP)), []),
    ("zrtp-or-unknown", b"\x10" + bytes(20), [(OTHER, 21)]),
    ("quic-long-header", aioquic_initials()[0], [(OTHER, len(aioquic_initials()[0]))]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "datagram", "expected"), DATAGRAMS, ids=[case[0] for case in DATAGRAMS]
)
def test_classify(name: str, datagram: bytes, expected: list[tuple[str, int]]) -> None:
    assert [(kind, size) for kind, size, _ in classify(datagram)] == expected


@pytest.mark.parametrize(
    "datagram",
    [b"\x17\xfe\xfd\x00\x01", b"\x17\xfe\xfd" + bytes(8) + b"\x01\x00", b"\x2c\x00",
     b"\x40\x00\x00\x10abc"],
    ids=["dtls12-short-header", "dtls12-length-past-the-end", "dtls13-length-missing",
         "channel-data-length-past-the-end"],
)  # fmt: skip
def test_classify_raises_only_malformed(datagram: bytes) -> None:
    with pytest.raises(Malformed):
        list(classify(datagram))


# -- what RTP shows in the clear ----------------------------------------------------------------


def rtp(
    payload_type: int,
    marker: bool = False,
    ssrc: int = 0x11223344,
    csrcs: Sequence[int] = (),
    extension: tuple[int, bytes] | None = None,
) -> bytes:
    first = 0x80 | len(csrcs) | (0x10 if extension else 0)
    header = struct.pack("!BBHII", first, payload_type | (0x80 * marker), 1, 2, ssrc)
    header += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension:
        profile, body = extension
        body += b"\x00" * (-len(body) % 4)
        header += struct.pack("!HH", profile, len(body) // 4) + body
    return header + bytes(20)


# (id, packets, payload types, extension profiles, extension ids, ssrcs, markers)
RTP_HEADERS = [
    ("plain", [rtp(111)], {111}, set(), set(), 1, 0),
    ("marker-and-csrcs", [rtp(96, marker=True, csrcs=(1, 2))], {96}, set(), set(), 1, 1),
    ("one-byte-extensions", [rtp(96, extension=(0xBEDE, b"\x10\xaa\x00\x32\x01\x02\x03"))],
     {96}, {"one-byte"}, {1, 3}, 1, 0),
    ("one-byte-stops-at-15", [rtp(96, extension=(0xBEDE, b"\xf0\x20\xaa"))],
     {96}, {"one-byte"}, set(), 1, 0),
    ("two-byte-extensions", [rtp(96, extension=(0x1000, b"\x05\x02\xaa\xbb\x00\x20\x00"))],
     {96}, {"two-byte"}, {5, 32}, 1, 0),
    ("another-profile", [rtp(96, extension=(0x1234, b"abcd"))], {96}, {"0x1234"}, set(), 1, 0),
    ("two-streams", [rtp(96, ssrc=1), rtp(97, ssrc=2, marker=True), rtp(96, ssrc=1)],
     {96, 97}, set(), set(), 2, 1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "packets", "types", "profiles", "ids", "ssrcs", "markers"),
    RTP_HEADERS,
    ids=[case[0] for case in RTP_HEADERS],
)
def test_rtp_header(
    name: str,
    packets: list[bytes],
    types: set[int],
    profiles: set[str],
    ids: set[int],
    ssrcs: int,
    markers: int,
) -> None:
    seen = MediaSeen()
    for packet in packets:
        describe_rtp(packet, seen)
    assert seen.payload_types == types
    assert seen.extension_profiles == profiles
    assert seen.extension_ids == ids
    assert (len(seen.ssrcs), seen.markers, seen.rtp_packets) == (ssrcs, markers, len(packets))


def test_rtp_header_truncated_is_malformed() -> None:
    with pytest.raises(Malformed):
        describe_rtp(rtp(96, extension=(0xBEDE, b"\x13\xaa"))[:16], MediaSeen())


# -- whole captured flows -----------------------------------------------------------------------


def run(datagrams: Sequence[tuple[bool, bytes]]) -> tuple[CarrierAnalyzer, list[Finding]]:
    analyzer = CarrierAnalyzer()
    found: list[Finding] = []
    for from_client, datagram in datagrams:
        found += analyzer.feed(datagram, from_client=from_client)
    return analyzer, found


# (fixture, carrier, media packets at least, data channel bytes at least, media findings)
FLOWS = [
    (CHROMIUM_DATA, "datachannel", 0, 30_000, {}),
    (AIORTC_DATA, "datachannel", 0, 30_000, {}),
    ("aiortc-webrtc", "datachannel", 0, 800, {}),
    # DTLS 1.3 acknowledges the handshake in epoch 3 (40 bytes): a box cannot tell that
    # from a data channel, so a video call shows "both"
    (VIDEO, "both", 40, 40, {"rtp-payload-type": {"97", "118", "119"},
                             "rtp-extension-profile": {"one-byte"}, "rtp-ssrcs": {"1", "2"},
                             "rtcp-packet-type": {"200", "201", "205"}}),
    (CALL, "both", 25, 900, {"rtp-payload-type": {"97", "118", "119"}}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "carrier", "media", "data", "findings"), FLOWS, ids=[case[0] for case in FLOWS]
)
def test_captured_flows(
    name: str, carrier: str, media: int, data: int, findings: dict[str, set[str]]
) -> None:
    analyzer, found = run(flow(name))
    assert not analyzer.done
    assert analyzer.webrtc
    assert analyzer.carrier == carrier
    assert analyzer.tally.packets(*MEDIA) >= media
    assert analyzer.tally.bytes(DATACHANNEL) >= data
    seen: dict[str, set[str]] = {}
    for finding in found:
        seen.setdefault(finding.key, set()).add(finding.value)
    for key, values in findings.items():
        assert values <= seen[key], (key, seen)
    if not media:
        assert not [f for f in found if f.key.startswith(("rtp-", "rtcp-"))]
    summary = keys(analyzer.summary())
    assert summary["tally"].startswith("datachannel up ")
    assert ("rtp-marker-rate" in summary) == bool(media)


def test_the_tally_counts_each_direction() -> None:
    analyzer, _ = run(flow(CHROMIUM_DATA))
    up = analyzer.tally.counts[(DATACHANNEL, True)]
    down = analyzer.tally.counts[(DATACHANNEL, False)]
    # 24 messages of 1,200 bytes went from the offerer; acknowledgements came back
    assert up.bytes > 24 * 1200 > 10 * down.bytes
    assert up.packets >= 24
    assert analyzer.tally.counts[(HANDSHAKE, True)].packets >= 2
    expected = sum(
        len(d) for c, d in flow(CHROMIUM_DATA) if c and (d[0] & 0xE3) == 0x23
    )  # every epoch-3 record from the offerer fills its datagram here
    assert up.bytes == expected


def test_the_carrier_is_seen_through_turn() -> None:
    """The same flow relayed by TURN: an Allocate first, then everything in ChannelData
    (and the first DTLS record in a Send indication, as before a channel is bound)."""
    direct, _ = run(flow(CHROMIUM_DATA))
    allocate = bytes.fromhex("000300002112a442") + bytes(12)
    relayed = [(True, allocate)]
    for index, (from_client, datagram) in enumerate(flow(CHROMIUM_DATA)):
        wrapped = send_indication(datagram) if index == 0 else channel_data(datagram)
        relayed.append((from_client, wrapped))
    analyzer, _ = run(relayed)
    assert analyzer.webrtc and analyzer.carrier == "datachannel"
    assert analyzer.tally.bytes(DATACHANNEL) == direct.tally.bytes(DATACHANNEL)


# (id, datagrams: not a WebRTC flow)
NOT_WEBRTC = [
    ("quic", [(True, d) for d in aioquic_initials()]),
    ("random", [(True, b"\x99" + noise(300))]),
    ("stun-only", [(True, STUN_CHECK)] * 64),
]


@pytest.mark.parametrize(("name", "datagrams"), NOT_WEBRTC, ids=[case[0] for case in NOT_WEBRTC])
def test_gives_up_on_flows_that_are_not_webrtc(
    name: str, datagrams: list[tuple[bool, bytes]]
) -> None:
    analyzer, found = run(datagrams)
    assert analyzer.done
    assert found == []


def test_a_dtls_vpn_is_not_webrtc() -> None:
    """DTLS with no STUN before it (a VPN) is counted but is not WebRTC."""
    analyzer, _ = run([(c, d) for c, d in flow(AIORTC_DATA) if d[0] > 3])
    assert not analyzer.done
    assert not analyzer.webrtc


def test_odd_datagrams_are_counted_not_fatal() -> None:
    """Noise in the middle of a WebRTC flow costs the analyzer nothing: it is counted as
    `other`, and what follows is still seen."""
    datagrams = flow(CHROMIUM_DATA)
    odd = [b"\x17\xfe\xfd\x00", b"\x2c", b"\x40\x00\x00\xff", b"\x90\x60" + noise(3), b"\x65"]
    mixed = datagrams[:10] + [(True, d) for d in odd] + datagrams[10:]
    analyzer, _ = run(mixed)
    clean, _ = run(datagrams)
    assert not analyzer.done
    assert analyzer.tally.packets(OTHER) == len(odd)
    assert analyzer.tally.bytes(DATACHANNEL) == clean.tally.bytes(DATACHANNEL)


@pytest.mark.parametrize("seed", range(8))
def test_never_raises_on_noise(seed: int) -> None:
    analyzer = CarrierAnalyzer()
    feed_all(analyzer, [STUN_CHECK, CLIENT_HELLO])
    for size in (1, 2, 3, 7, 12, 13, 40, 300):
        for first_byte in (0, 3, 20, 23, 0x2F, 0x3F, 64, 79, 128, 191, 255):
            analyzer.feed(bytes([first_byte]) + noise(size, seed), from_client=bool(size & 1))
    assert not analyzer.done


# -- the rule, in the box's inspector ------------------------------------------------------------


def packets(datagrams: Sequence[tuple[bool, bytes]]) -> list[bytes]:
    """A flow as IPv4 packets between a censored host and a peer outside."""
    return udp_flow_packets(datagrams)


def rule(**table: object) -> CensorProfile:
    return CensorProfile.from_dict({"datachannel": {"block": True, **table}})


def verdict_at(profile: CensorProfile, datagrams: Sequence[tuple[bool, bytes]]) -> int | None:
    """The index of the packet the box decided the flow on (None: still watching)."""
    inspector = Inspector(profile)
    for number, packet in enumerate(packets(datagrams)):
        decision = inspector.packet(packet, now=float(number))
        assert decision is not None
        if decision.mark is not None:
            return number
    return None


def first_over(datagrams: Sequence[tuple[bool, bytes]], limit: int) -> int:
    """The index of the datagram after which the data channel bytes exceed `limit`."""
    analyzer = CarrierAnalyzer()
    for index, (from_client, datagram) in enumerate(datagrams):
        analyzer.feed(datagram, from_client=from_client)
        if analyzer.tally.bytes(DATACHANNEL) > limit:
            return index
    raise AssertionError(f"the flow carries {limit} bytes or fewer")


@pytest.mark.parametrize("name", [CHROMIUM_DATA, AIORTC_DATA])
def test_a_data_channel_is_dropped_once_over_the_threshold(name: str) -> None:
    mark, reason, suspected = box_verdict(rule(after_bytes=16384), packets(flow(name)))
    assert mark == MARK_DROP
    assert reason.startswith("carrier datachannel-only ")
    assert reason.endswith("bytes of DTLS application data and no SRTP (more than 16384)")
    assert suspected == [reason]
    # ... and not one packet later: the verdict falls on the packet that crossed it
    assert verdict_at(rule(after_bytes=16384), flow(name)) == first_over(flow(name), 16384)


@pytest.mark.parametrize("name", [VIDEO, CALL])
def test_a_call_passes_at_its_first_media_packet(name: str) -> None:
    mark, reason, suspected = box_verdict(rule(after_bytes=1024), packets(flow(name)))
    assert (mark, reason, suspected) == (MARK_ALLOW, "nothing to object to", [])
    first_media = next(i for i, (_, d) in enumerate(flow(name)) if 128 <= d[0] <= 191)
    assert verdict_at(rule(after_bytes=1024), flow(name)) == first_media


def test_below_the_threshold_the_box_keeps_watching() -> None:
    """At the default 64 KiB, the captured 33 KB of Chromium's data channel leave the flow
    undecided (every packet still reaches the inspector); replaying its data records
    (the box checks no MAC) takes it over, and it is dropped then."""
    datagrams = flow(CHROMIUM_DATA)
    assert verdict_at(rule(), datagrams) is None
    records = [(c, d) for c, d in datagrams if c and d[0] == 0x2F and len(d) > 1000]
    longer = datagrams + records * 2
    assert verdict_at(rule(), longer) == first_over(longer, 65536)
    mark, reason, _ = box_verdict(rule(), packets(longer))
    assert mark == MARK_DROP
    assert reason.endswith("(more than 65536)")


def test_flag_lets_it_through_and_says_why() -> None:
    mark, reason, suspected = box_verdict(
        rule(after_bytes=16384, action="flag"), packets(flow(CHROMIUM_DATA))
    )
    assert (mark, reason) == (MARK_ALLOW, "nothing to object to")
    assert len(suspected) == 1
    assert suspected[0].startswith("carrier datachannel-only ")


def test_the_verdict_writes_down_the_tally() -> None:
    inspector = Inspector(rule(after_bytes=16384))
    found: list[Finding] = []
    for number, packet in enumerate(packets(flow(AIORTC_DATA))):
        decision = inspector.packet(packet, now=float(number))
        assert decision is not None
        found += decision.new_findings
        if decision.mark is not None:
            break
    summary = keys([f for f in found if f.analyzer == "carrier"])
    assert summary["carrier"] == "datachannel"
    assert summary["tally"].startswith("datachannel up ")
    assert summary["tally"].endswith("srtp up 0/0 down 0/0; srtcp up 0/0 down 0/0")


def test_without_the_rule_nothing_changes() -> None:
    """Rule off: no carrier analyzer, and a data channel is allowed at packet 10 as ever."""
    profile = CensorProfile()
    assert not profile.datachannel.active
    assert verdict_at(profile, flow(CHROMIUM_DATA)) == inspector_module.DECIDE_AFTER_PACKETS - 1


def test_a_dtls_vpn_is_not_held() -> None:
    """DTLS with no ICE before it and no SRTP offered is not WebRTC: not held, not judged."""
    hello = openssl_dtls_client_hello(srtp_profiles=None, server_name=b"vpn.example")
    datagrams = [(True, hello)] + [(c, d) for c, d in flow(AIORTC_DATA) if d[0] == 23]
    assert verdict_at(rule(after_bytes=0), datagrams) == inspector_module.DECIDE_AFTER_PACKETS - 1


def test_an_analyzer_failure_costs_one_flow_not_the_box(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the carrier analyzer: the flow is let go as the box lets any flow go that
    it cannot judge (the traceback is logged), and the next flow is judged as before."""

    def broken(self: CarrierAnalyzer, payload: bytes, from_client: bool) -> object:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(CarrierAnalyzer, "_inspect", broken)
        mark, reason, _ = box_verdict(rule(after_bytes=16384), packets(flow(CHROMIUM_DATA)))
    assert (mark, reason) == (MARK_ALLOW, "nothing to object to")
    mark, _, _ = box_verdict(rule(after_bytes=16384), packets(flow(CHROMIUM_DATA)))
    assert mark == MARK_DROP


def test_the_watch_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspector_module, "CARRIER_WATCH_PACKETS", 30)
    assert verdict_at(rule(), flow(CHROMIUM_DATA)) == 29


def test_with_the_fingerprint_rules_a_browser_call_passes_and_its_data_channel_does_not() -> None:
    """The shipped strictest profile: Chromium's fingerprints pass; then only the carrier
    tells the call (passes) from the data channel (dropped once over 64 KiB)."""
    strict = CensorProfile.load(SHIPPED_PROFILES / "browser-calls-only.toml")
    assert strict.webrtc.active and strict.datachannel.active
    assert strict.datachannel.after_bytes == 65536
    assert box_verdict(strict, packets(flow(CALL)))[0] == MARK_ALLOW
    datagrams = flow(CHROMIUM_DATA)
    records = [(c, d) for c, d in datagrams if c and d[0] == 0x2F and len(d) > 1000]
    mark, reason, suspected = box_verdict(strict, packets(datagrams + records * 2))
    assert mark == MARK_DROP
    assert suspected == [reason]
    assert reason.startswith("carrier datachannel-only")


def test_the_report_names_the_host(tmp_path: Path) -> None:
    log = FlowLog(tmp_path / "flows.db")
    row = FlowRow("udp", "198.51.100.10", 40000, "203.0.113.50", 50000)
    flow_id = log.flow_seen(row, 0.0)
    reason = "carrier datachannel-only 70000 bytes of DTLS application data and no SRTP"
    log.add_findings(flow_id, [("box", "suspected", reason)])
    log.close()
    host = report(tmp_path / "flows.db", (), set())["hosts"]["198.51.100.10"]
    suspected = host["circumvention_suspected"]
    assert suspected == {
        "WebRTC that carries a data channel and no media: not a call": {
            "evidence": [reason],
            "peers": ["203.0.113.50"],
        }
    }


# -- the rule as data ---------------------------------------------------------------------------


def test_defaults() -> None:
    profile = CensorProfile.from_dict({"datachannel": {"block": True}})
    assert (profile.datachannel.after_bytes, profile.datachannel.action) == (65536, "drop")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"block": "yes"}, "[datachannel] block must be true or false"),
        ({"after_bytes": -1}, "[datachannel] after_bytes must be a whole number"),
        ({"after_bytes": "64k"}, "[datachannel] after_bytes must be a whole number"),
        ({"action": "rst"}, "[datachannel] action must be one of ('drop', 'flag')"),
        ({"threshold": 1}, "unknown key(s) ['threshold'] in [datachannel]"),
    ],
)
def test_bad_rules_are_named(table: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError) as error:
        CensorProfile.from_dict({"datachannel": table})
    assert message in str(error.value)


def test_packets_queued_before_the_mark_get_the_same_verdict() -> None:
    """A fast flow has packets in netfilter's queue when the box decides; judged afresh,
    the middle of a data channel looks like nothing and would be allowed, and that mark
    would overwrite the drop on the whole flow (seen in the lab). They get the verdict."""
    inspector = Inspector(rule(after_bytes=16384))
    stream = packets(flow(CHROMIUM_DATA))
    decided_at = None
    for number, packet in enumerate(stream):
        decision = inspector.packet(packet, now=0.0)
        assert decision is not None
        if decided_at is None and decision.mark is not None:
            decided_at = number
            assert (decision.mark, decision.repeat) == (MARK_DROP, False)
        elif decided_at is not None:
            assert (decision.mark, decision.repeat, decision.new_findings) == (MARK_DROP, True, [])
    assert decided_at is not None and decided_at < len(stream) - 1
    later = inspector.packet(stream[-1], now=inspector_module.REMEMBER_VERDICT_SECONDS + 1)
    assert later is not None and not later.repeat
