"""The box's inspector, sans-IO: IPv4 packets in, a verdict and findings out.

Only the first packets of a flow reach it (netfilter asks while the flow's conntrack mark
is unset); once it decides, the mark carries the verdict and the kernel applies it to the
rest of the flow without asking again. How long "the first packets" last is the rules'
business: with `[datachannel]` on, a WebRTC flow stays undecided until the rule can say
whether it carries media or only a data channel (`_carrier_watch`).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from unwall.lab.analyzers import Analyzer, Finding, FullyEncryptedAnalyzer, analyzers_for
from unwall.lab.analyzers.carrier import DATACHANNEL, MEDIA, CarrierAnalyzer
from unwall.lab.profile import FINGERPRINT_KEYS, WEBRTC_ANALYZERS, CensorProfile, name_matches

#: conntrack marks: the verdict of a decided flow
MARK_ALLOW = 1
MARK_DROP = 2
MARK_RST = 3

#: a flow with nothing to object to after this many packets is allowed
DECIDE_AFTER_PACKETS = 10
#: with WebRTC rules on, a WebRTC flow is watched until its DTLS handshake has shown what
#: it shows in the clear (ICE checks on several candidate pairs come first), at most this long
WEBRTC_DECIDE_AFTER_PACKETS = 60
#: with `[datachannel]` on, a WebRTC flow is watched until it shows media or more data
#: channel bytes than the rule allows; this caps the user-space work one flow can cost
#: (a flow that trickles keepalives and nothing else is let go after this many packets)
CARRIER_WATCH_PACKETS = 10_000
#: how long a verdict is remembered for the packets of its flow that netfilter queued
#: before the mark was set (a fast flow has dozens in the queue when it is decided)
REMEMBER_VERDICT_SECONDS = 10.0
#: the box's own findings: why it suspects a flow of circumvention
SUSPECTED = "suspected"
#: the host-level view (`[hosts]`): the censored hosts remembered, and the ClientHellos each
MAX_HOSTS = 4096
MAX_HELLOS_PER_HOST = 64


@dataclass(frozen=True)
class FlowKey:
    protocol: str  # "tcp" / "udp" / "other"
    client: str
    client_port: int
    server: str
    server_port: int

    def __str__(self) -> str:
        return (
            f"{self.protocol} {self.client}:{self.client_port} > {self.server}:{self.server_port}"
        )


@dataclass
class Flow:
    key: FlowKey
    first_seen: float
    packets: int = 0
    findings: list[Finding] = field(default_factory=list)
    verdict: int | None = None
    reason: str = ""
    analyzers: list[Analyzer] = field(default_factory=list)
    #: findings the WebRTC rules have judged already
    judged: set[Finding] = field(default_factory=set)
    #: the JA3 string of the DTLS ClientHello the censored host sent on this flow, until
    #: the host-level rule has counted it (then "")
    own_hello: str | None = None
    #: TCP only, per direction (True = from the client): the next sequence number expected,
    #: and segments that arrived ahead of it
    next_seq: dict[bool, int] = field(default_factory=dict)
    ahead: dict[bool, dict[int, bytes]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    flow: Flow
    new_findings: list[Finding]
    #: None: undecided, let this packet through and ask again for the next one
    mark: int | None
    new_flow: bool
    #: the flow was decided already: this packet was queued before its mark was set
    repeat: bool = False


@dataclass(frozen=True)
class ParsedPacket:
    protocol: str
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    syn_only: bool
    seq: int = 0  # TCP sequence number of the first payload byte (or of the SYN)
    syn: bool = False


def parse_ipv4(packet: bytes) -> ParsedPacket | None:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    proto = packet[9]
    src = ".".join(str(b) for b in packet[12:16])
    dst = ".".join(str(b) for b in packet[16:20])
    body = packet[ihl:total]
    if proto == 6 and len(body) >= 20:
        sport, dport = struct.unpack_from("!HH", body, 0)
        offset = (body[12] >> 4) * 4
        flags = body[13]
        (seq,) = struct.unpack_from("!I", body, 4)
        return ParsedPacket(
            "tcp", src, sport, dst, dport, body[offset:], flags & 0x12 == 0x02, seq,
            bool(flags & 0x02),
        )  # fmt: skip
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack_from("!HH", body, 0)
        return ParsedPacket("udp", src, sport, dst, dport, body[8:], False)
    return ParsedPacket("other", src, 0, dst, 0, b"", False)


class Inspector:
    def __init__(self, profile: CensorProfile, inside_net: str = "198.51.100.0/25") -> None:
        self.profile = profile
        self._inside = ipaddress.IPv4Network(inside_net)
        self._flows: dict[FlowKey, Flow] = {}
        #: decided flows, oldest first, with when: see REMEMBER_VERDICT_SECONDS
        self._decided: OrderedDict[FlowKey, tuple[Flow, float]] = OrderedDict()
        #: per censored host, the JA3 strings of its WebRTC ClientHellos, newest last
        #: (`[hosts]`); the least recently seen host is forgotten first
        self._hellos: OrderedDict[str, list[str]] = OrderedDict()

    def _key(self, packet: ParsedPacket) -> tuple[FlowKey, bool]:
        """The flow's key (client first) and whether this packet comes from the client."""
        if ipaddress.IPv4Address(packet.src) in self._inside:
            return FlowKey(
                packet.protocol, packet.src, packet.sport, packet.dst, packet.dport
            ), True
        return FlowKey(packet.protocol, packet.dst, packet.dport, packet.src, packet.sport), False

    def packet(self, data: bytes, now: float) -> Decision | None:
        parsed = parse_ipv4(data)
        if parsed is None:
            return None
        key, from_client = self._key(parsed)
        decided = self._decided.get(key)
        fresh = parsed.syn_only  # a new TCP connection on the same 5-tuple is a new flow
        if decided is not None and not fresh and now - decided[1] < REMEMBER_VERDICT_SECONDS:
            # Queued before the verdict's mark was set: the same verdict. Judged afresh,
            # the middle of a flow would look like nothing at all and be allowed, and its
            # mark would overwrite the verdict on the whole flow.
            return Decision(decided[0], [], decided[0].verdict, False, repeat=True)
        flow = self._flows.get(key)
        new_flow = flow is None
        if flow is None:
            flow = Flow(key, now)
            if key.protocol in ("tcp", "udp"):
                protocol: Literal["tcp", "udp"] = "tcp" if key.protocol == "tcp" else "udp"
                flow.analyzers = list(analyzers_for(protocol, key.server_port, key.client_port))
                if protocol == "tcp" and self.profile.fet_block:
                    flow.analyzers.append(FullyEncryptedAnalyzer())
                if protocol == "udp" and self.profile.datachannel.active:
                    flow.analyzers.append(CarrierAnalyzer())
            self._flows[key] = flow
        flow.packets += 1
        found: list[Finding] = []
        gap = False
        if key.protocol == "tcp":
            pieces, gap = _in_order(flow, parsed, from_client)
        else:
            pieces = [parsed.payload] if parsed.payload else []
        for piece in pieces:
            for analyzer in flow.analyzers:
                if not analyzer.done:
                    new = analyzer.feed(piece, from_client=from_client)
                    found += new
                    if from_client and flow.own_hello is None:
                        flow.own_hello = next(
                            (f.value for f in new if (f.analyzer, f.key) == _CLIENT_HELLO), None
                        )
        found += self._suspicions(flow, found)
        flow.findings += found
        mark = self._decide(flow, found, new_flow, gap)
        if mark is not None:
            carrier = _carrier(flow)
            if carrier is not None:  # what the flow carried up to the verdict, for the log
                summary = carrier.summary()
                found += summary
                flow.findings += summary
            flow.verdict = mark
            self._flows.pop(key, None)  # decided: the kernel handles the rest
            self._remember(key, flow, now)
        return Decision(flow, found, mark, new_flow)

    def _remember(self, key: FlowKey, flow: Flow, now: float) -> None:
        self._decided.pop(key, None)
        self._decided[key] = (flow, now)
        while self._decided:
            _, (_, decided_at) = next(iter(self._decided.items()))
            if now - decided_at < REMEMBER_VERDICT_SECONDS:
                break
            self._decided.popitem(last=False)

    def _suspicions(self, flow: Flow, found: list[Finding]) -> list[Finding]:
        """The box's own findings on these: fingerprints its WebRTC rules object to (once
        the flow shows it is WebRTC: an ICE check or DTLS-SRTP, not any DTLS, such as a
        VPN's), a WebRTC flow that carried a data channel and no media when its
        `[datachannel]` rule is on, fully encrypted first payloads when its FET rule is,
        STUN's CHANGE-REQUEST when its `[stun]` rule is, and a ClientHello that is not a
        browser's to a name its `[tls]` rule watches."""
        objections = []
        if self.profile.stun_change_request:
            for finding in found:
                if finding.analyzer == "stun" and finding.key == "change-request":
                    reason = f"stun change-request ({finding.value}): no browser sends one"
                    objections.append(Finding("box", SUSPECTED, reason))
        if self.profile.tls.active:
            for finding in found:
                if finding.analyzer == "tls" and finding.key == "ja4":
                    name = next(
                        (f.value for f in found if (f.analyzer, f.key) == ("tls", "sni")), None
                    )
                    objection = self.profile.tls.objection(finding.value, name)
                    if objection is not None:
                        objections.append(Finding("box", SUSPECTED, objection))
        if self.profile.fet_block:
            for finding in found:
                if finding.analyzer == "fet" and finding.key == "fully-encrypted":
                    reason = f"fet first payload fully encrypted ({finding.value})"
                    objections.append(Finding("box", SUSPECTED, reason))
        rules = self.profile.webrtc
        seen = flow.findings + found
        objections += self._carrier_objection(flow, seen)
        objections += self._host_objection(flow, seen)
        if not rules.active or not any(_is_webrtc(f) for f in seen):
            return objections
        for finding in seen:
            if finding in flow.judged:
                continue
            if finding.analyzer in WEBRTC_ANALYZERS and finding.key in FINGERPRINT_KEYS:
                flow.judged.add(finding)
                objection = rules.objection(finding.key, finding.value)
                if objection is not None:
                    objections.append(Finding("box", SUSPECTED, objection))
        return objections

    def _host_objection(self, flow: Flow, seen: list[Finding]) -> list[Finding]:
        """The host-level view: count this flow's ClientHello (sent by the censored host,
        on a WebRTC flow) in its host's history, once, and judge the history."""
        rule = self.profile.hosts
        if not rule.active or not flow.own_hello or not any(_is_webrtc(f) for f in seen):
            return []
        ja3, flow.own_hello = flow.own_hello, ""
        host = flow.key.client
        recent = self._hellos.pop(host, [])
        recent = [*recent, ja3][-MAX_HELLOS_PER_HOST:]
        self._hellos[host] = recent
        while len(self._hellos) > MAX_HOSTS:
            self._hellos.popitem(last=False)
        objection = rule.objection(host, recent)
        return [] if objection is None else [Finding("box", SUSPECTED, objection)]

    def _carrier_watch(self, flow: Flow, seen: list[Finding]) -> CarrierAnalyzer | None:
        """The flow's carrier analyzer, if the `[datachannel]` rule applies to this flow: a
        WebRTC flow (STUN first, or the DTLS and STUN analyzers say so) not yet judged."""
        carrier = _carrier(flow)
        if (
            carrier is None
            or carrier.done
            or flow.packets >= CARRIER_WATCH_PACKETS
            or not (carrier.stun_seen or any(_is_webrtc(f) for f in seen))
            or any(f.key == SUSPECTED and f.value.startswith("carrier ") for f in seen)
        ):
            return None
        return carrier

    def _carrier_objection(self, flow: Flow, seen: list[Finding]) -> list[Finding]:
        carrier = self._carrier_watch(flow, seen)
        if carrier is None:
            return []
        tally = carrier.tally
        objection = self.profile.datachannel.objection(
            tally.bytes(DATACHANNEL), tally.packets(*MEDIA)
        )
        return [] if objection is None else [Finding("box", SUSPECTED, objection)]

    def _carrier_pending(self, flow: Flow) -> bool:
        """A WebRTC flow whose carrier the `[datachannel]` rule cannot judge yet."""
        carrier = self._carrier_watch(flow, flow.findings)
        if carrier is None:
            return False
        tally = carrier.tally
        return not self.profile.datachannel.decided(tally.bytes(DATACHANNEL), tally.packets(*MEDIA))

    def _decide(
        self, flow: Flow, found: list[Finding], new_flow: bool, gap: bool = False
    ) -> int | None:
        profile = self.profile
        for suspected in (f for f in found if f.key == SUSPECTED):
            action = _action(profile, suspected.value)
            if action == "drop":
                flow.reason = suspected.value
                return MARK_DROP
        if new_flow:
            network = profile.ip_blocked(flow.key.server)
            if network is not None:
                flow.reason = f"ip {flow.key.server} in {network}"
                return MARK_DROP
        for finding in found:
            if finding.key == "sni":
                entry = name_matches(finding.value, profile.sni_block)
                if entry is not None:
                    flow.reason = f"sni {finding.value} matches {entry}"
                    return _mark_for(profile.sni_action, flow)
            if finding.analyzer == "http" and finding.key == "host":
                entry = name_matches(finding.value, profile.host_block)
                if entry is not None:
                    flow.reason = f"host {finding.value} matches {entry}"
                    return _mark_for(profile.host_action, flow)
        if gap and flow.packets < 2 * DECIDE_AFTER_PACKETS:
            return None  # data is missing in the middle: no verdict on half a ClientHello
        webrtc_watch = (
            profile.webrtc.active or profile.hosts.active
        ) and flow.packets < WEBRTC_DECIDE_AFTER_PACKETS
        if webrtc_watch and _webrtc_pending(flow):
            return None
        if self._carrier_pending(flow):
            return None
        analyzers_done = all(analyzer.done for analyzer in flow.analyzers)
        if flow.packets >= DECIDE_AFTER_PACKETS or (analyzers_done and flow.packets >= 3):
            flow.reason = "nothing to object to"
            return MARK_ALLOW
        return None

    def expire(self, now: float, idle: float = 120.0) -> None:
        for key, flow in list(self._flows.items()):
            if now - flow.first_seen > idle:
                del self._flows[key]


def _action(profile: CensorProfile, suspicion: str) -> str:
    """What the profile does with a flow suspected for this reason: each rule has its own."""
    rule = suspicion.split(" ", 1)[0]
    if rule == "fet":
        return profile.fet_action
    if rule == "carrier":
        return profile.datachannel.action
    if rule == "hosts":
        return profile.hosts.action
    if rule == "stun":
        return profile.stun_action
    if rule == "tls":
        return profile.tls.action
    return profile.webrtc.action


_CLIENT_HELLO = ("dtls", "client-hello")


def _carrier(flow: Flow) -> CarrierAnalyzer | None:
    return next((a for a in flow.analyzers if isinstance(a, CarrierAnalyzer)), None)


def _is_webrtc(finding: Finding) -> bool:
    """What makes a flow WebRTC: an ICE connectivity check, or DTLS offering SRTP."""
    return (finding.analyzer, finding.key) in (("stun", "ice-check"), ("dtls", "srtp"))


def _webrtc_pending(flow: Flow) -> bool:
    """A WebRTC flow (an ICE check or a DTLS handshake seen) whose DTLS analyzer still has
    something to say."""
    webrtc = any(
        f.analyzer == "dtls" or (f.analyzer == "stun" and f.key == "ice-check")
        for f in flow.findings
    )
    dtls = next((a for a in flow.analyzers if a.name == "dtls"), None)
    return webrtc and dtls is not None and not dtls.done


def _mark_for(action: str, flow: FlowKey | Flow) -> int:
    protocol = flow.key.protocol if isinstance(flow, Flow) else flow.protocol
    return MARK_RST if action == "rst" and protocol == "tcp" else MARK_DROP


#: segments kept ahead of a gap, per direction
MAX_AHEAD = 32


def _in_order(flow: Flow, packet: ParsedPacket, from_client: bool) -> tuple[list[bytes], bool]:
    """The new in-order bytes this TCP segment makes available, and whether a gap remains.

    Analyzers read a byte stream: a retransmitted segment must not be fed twice and a
    segment that arrives early must wait, or a ClientHello split over two segments could be
    garbled into "nothing to object to"."""
    if packet.syn:
        flow.next_seq[from_client] = (packet.seq + 1) & 0xFFFFFFFF
        return [], False
    payload = packet.payload
    expected = flow.next_seq.get(from_client)
    if expected is None:  # joined mid-flow: start here
        expected = packet.seq
    ahead = flow.ahead.setdefault(from_client, {})
    if payload:
        offset = (expected - packet.seq) & 0xFFFFFFFF
        if offset < len(payload):  # new bytes at or before `expected`
            ahead[expected] = payload[offset:]
        elif offset > 0x7FFFFFFF and len(ahead) < MAX_AHEAD:  # ahead of `expected`
            ahead.setdefault(packet.seq, payload)
    pieces = []
    while expected in ahead:
        piece = ahead.pop(expected)
        pieces.append(piece)
        expected = (expected + len(piece)) & 0xFFFFFFFF
    flow.next_seq[from_client] = expected
    return pieces, bool(ahead)
