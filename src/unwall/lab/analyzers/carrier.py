"""What a WebRTC flow carries once its DTLS handshake is done: media, a data channel, or both.

One UDP 5-tuple carries everything of a WebRTC session, told apart by the first byte of
each datagram (RFC 7983, RFC 9443): 0-3 STUN, 20-63 DTLS, 64-79 TURN ChannelData,
128-191 RTP and RTCP. A call's audio and video are SRTP: RTP version 2 packets whose
12-byte header (payload type, marker bit, sequence number, timestamp, SSRC and header
extensions) is sent in the clear. A data channel is SCTP inside DTLS application data:
records of content type 23 in DTLS 1.2, and in DTLS 1.3 unified-header ciphertext records
(RFC 9147 section 4: first byte 0b001CSLEE) of an epoch past the handshake's (EE != 2).
So one packet after the handshake tells a data channel from a call.

`CarrierAnalyzer` counts packets and bytes of each kind per direction (`tally`), looks
inside TURN ChannelData and Send/Data indications, and reports what a box can read of the
media in the clear. It only extracts properties: whether a flow is objectionable is the
profile's business (`unwall.lab.profile.DataChannelRule`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from .analyzer import Finding, FlowAnalyzer
from .reader import ByteReader, Malformed
from .stun import parse_stun

#: the kinds of traffic counted; SRTP and SRTCP together are "media"
STUN, HANDSHAKE, DATACHANNEL, SRTP, SRTCP, OTHER = (
    "stun", "dtls-handshake", "datachannel", "srtp", "srtcp", "other",
)  # fmt: skip
KINDS = (STUN, HANDSHAKE, DATACHANNEL, SRTP, SRTCP, OTHER)
MEDIA = (SRTP, SRTCP)

CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
#: the DTLS 1.3 epoch that carries the handshake (its low two bits, in a unified header)
HANDSHAKE_EPOCH_BITS = 2
#: STUN Send and Data indications (RFC 8656) carry a datagram in their DATA attribute
METHOD_SEND, METHOD_DATA, ATTR_DATA = 0x006, 0x007, 0x0013
CLASS_INDICATION = 1
#: RTCP packet types (RFC 5761 section 4: what a box takes for RTCP in the second byte)
RTCP_TYPES = range(192, 224)

#: datagrams a flow may take to start its DTLS handshake before this is not WebRTC
MAX_DATAGRAMS_BEFORE_DTLS = 64
#: distinct values reported per media property (a flood of SSRCs or types says enough)
MAX_DISTINCT = 16


@dataclass
class Count:
    packets: int = 0
    bytes: int = 0


@dataclass
class CarrierTally:
    """Packets and bytes of each kind, per direction (True: from the flow's client)."""

    counts: dict[tuple[str, bool], Count] = field(default_factory=dict)

    def add(self, kind: str, from_client: bool, size: int) -> None:
        count = self.counts.setdefault((kind, from_client), Count())
        count.packets += 1
        count.bytes += size

    def packets(self, *kinds: str) -> int:
        return sum(c.packets for (kind, _), c in self.counts.items() if kind in kinds)

    def bytes(self, *kinds: str) -> int:
        return sum(c.bytes for (kind, _), c in self.counts.items() if kind in kinds)

    def describe(self) -> str:
        """ "datachannel up 12/15000 down 30/1800; srtp up 0/0 down 0/0" (packets/bytes)."""
        parts = []
        for kind in (DATACHANNEL, SRTP, SRTCP):
            up = self.counts.get((kind, True), Count())
            down = self.counts.get((kind, False), Count())
            parts.append(f"{kind} up {up.packets}/{up.bytes} down {down.packets}/{down.bytes}")
        return "; ".join(parts)


@dataclass
class MediaSeen:
    """What the clear part of the RTP and RTCP headers showed."""

    payload_types: set[int] = field(default_factory=set)
    rtcp_types: set[int] = field(default_factory=set)
    ssrcs: set[int] = field(default_factory=set)
    extension_profiles: set[str] = field(default_factory=set)
    extension_ids: set[int] = field(default_factory=set)
    rtp_packets: int = 0
    markers: int = 0


def classify(datagram: bytes) -> Iterator[tuple[str, int, bytes]]:
    """The pieces of one datagram as (kind, size, bytes): one for STUN, RTP and RTCP, one
    per record for DTLS (a datagram may hold several), and what a TURN ChannelData message
    or Send/Data indication carries in place of the TURN wrapping."""
    first = datagram[0]
    if first <= 3:
        inner = _turn_indication_data(datagram)
        if inner is None:
            yield STUN, len(datagram), datagram
        elif inner:
            yield from classify(inner)
    elif 20 <= first <= 63:
        yield from _dtls_records(datagram)
    elif 64 <= first <= 79:
        reader = ByteReader(datagram)
        reader.skip(2)  # the channel number
        inner = reader.vector(2)  # over UDP, padding after it is optional
        if inner and not 64 <= inner[0] <= 79:
            yield from classify(inner)
    elif 128 <= first <= 191 and len(datagram) >= 8:
        kind = SRTCP if datagram[1] in RTCP_TYPES else SRTP
        yield kind, len(datagram), datagram
    else:
        yield OTHER, len(datagram), datagram


def _turn_indication_data(datagram: bytes) -> bytes | None:
    """The DATA of a TURN Send or Data indication; None for any other STUN message."""
    try:
        message = parse_stun(datagram)
    except Malformed:
        return None
    if message.message_class != CLASS_INDICATION or message.method not in (
        METHOD_SEND,
        METHOD_DATA,
    ):
        return None
    return message.attribute(ATTR_DATA) or b""


def _dtls_records(datagram: bytes) -> Iterator[tuple[str, int, bytes]]:
    """DTLS records of one datagram as handshake (plaintext handshake, ChangeCipherSpec,
    alerts, DTLS 1.3's epoch 2) or data channel (application data after the handshake)."""
    reader = ByteReader(datagram)
    while not reader.at_end():
        start = reader.position
        first = reader.u8()
        if 0x20 <= first <= 0x3F:  # DTLS 1.3 unified header: 0b001CSLEE
            if first & 0x10:  # a connection ID of a length only the peers know
                reader.rest()
            else:
                reader.skip(2 if first & 0x08 else 1)  # sequence number
                if first & 0x04:
                    reader.skip(reader.u16())
                else:
                    reader.rest()  # no length: the record fills the datagram
            epoch_bits = first & 0x03
            kind = HANDSHAKE if epoch_bits == HANDSHAKE_EPOCH_BITS else DATACHANNEL
        else:
            reader.skip(10)  # version, epoch, sequence number
            reader.skip(reader.u16())
            kind = DATACHANNEL if first == CONTENT_APPLICATION_DATA else HANDSHAKE
        yield kind, reader.position - start, datagram[start : reader.position]


def describe_rtp(packet: bytes, seen: MediaSeen) -> None:
    """Add what an SRTP packet's clear header shows to `seen`."""
    reader = ByteReader(packet)
    first, second = reader.u8(), reader.u8()
    if first >> 6 != 2:
        raise Malformed("an RTP packet that is not version 2")
    reader.skip(6)  # sequence number, timestamp
    seen.rtp_packets += 1
    seen.markers += second >> 7
    seen.payload_types.add(second & 0x7F)
    seen.ssrcs.add(reader.u32())
    reader.skip(4 * (first & 0x0F))  # CSRCs
    if first & 0x10:
        profile = reader.u16()
        extension = ByteReader(reader.take(4 * reader.u16()))
        if profile == 0xBEDE:  # one-byte headers (RFC 8285 section 4.2)
            seen.extension_profiles.add("one-byte")
            while not extension.at_end():
                byte = extension.u8()
                if byte == 0:
                    continue  # padding
                if byte >> 4 == 15:
                    break  # reserved: stop
                seen.extension_ids.add(byte >> 4)
                extension.skip((byte & 0x0F) + 1)
        elif profile >> 4 == 0x100:  # two-byte headers (RFC 8285 section 4.3)
            seen.extension_profiles.add("two-byte")
            while not extension.at_end():
                ext_id = extension.u8()
                if ext_id == 0:
                    continue
                seen.extension_ids.add(ext_id)
                extension.skip(extension.u8())
        else:
            seen.extension_profiles.add(f"0x{profile:04x}")


class CarrierAnalyzer(FlowAnalyzer):
    """Counts what a WebRTC flow carries, per kind and direction, and what its media shows.

    The flow must start as WebRTC does (a STUN message or a DTLS handshake record) and
    start its DTLS handshake within `MAX_DATAGRAMS_BEFORE_DTLS` datagrams, or the analyzer
    gives up. After that it never finishes on its own: it counts for as long as the box
    feeds it (the box stops when its rule has decided).

    Findings, each once: `carrier` "datachannel", "media" or "both" as the flow shows them
    (none while it is undecided), `rtp-payload-type`, `rtcp-packet-type`,
    `rtp-extension-profile` ("one-byte", "two-byte" or the profile in hex),
    `rtp-extension-id` and `rtp-ssrcs` (the count so far); `summary()` adds the tally and
    the marker-bit rate when the box is done with the flow.
    """

    name = "carrier"

    def __init__(self) -> None:
        super().__init__()
        self.tally = CarrierTally()
        self.media = MediaSeen()
        #: a STUN message and a DTLS handshake on this one flow: WebRTC's multiplexing
        self.stun_seen = False
        self.dtls_seen = False
        self._datagrams = 0

    @property
    def webrtc(self) -> bool:
        return self.stun_seen and self.dtls_seen

    @property
    def carrier(self) -> str | None:
        """ "media", "datachannel", "both", or None (nothing carried yet)."""
        media = self.tally.packets(*MEDIA) > 0
        data = self.tally.packets(DATACHANNEL) > 0
        if media and data:
            return "both"
        return "media" if media else "datachannel" if data else None

    def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
        self._datagrams += 1
        if self._datagrams == 1 and not (payload[0] <= 3 or payload[0] == CONTENT_HANDSHAKE):
            raise Malformed("a flow that starts with neither STUN nor a DTLS handshake")
        try:
            pieces = list(classify(payload))
        except Malformed:
            # Counted, not given up on: one odd datagram must not blind the box to the rest.
            pieces = [(OTHER, len(payload), payload)]
        kinds: set[str] = set()
        for kind, size, piece in pieces:
            self._count(kind, from_client, size, kinds)
            if kind == SRTP:
                with contextlib.suppress(Malformed):
                    describe_rtp(piece, self.media)
            elif kind == SRTCP:
                self.media.rtcp_types.add(piece[1])
        if not self.dtls_seen and self._datagrams >= MAX_DATAGRAMS_BEFORE_DTLS:
            raise Malformed("no DTLS handshake on this flow: not WebRTC")
        return self._properties()

    def _count(self, kind: str, from_client: bool, size: int, kinds: set[str]) -> None:
        """One piece of a datagram; a datagram counts once per kind it holds."""
        if kind == STUN:
            self.stun_seen = True
        elif kind == HANDSHAKE:
            self.dtls_seen = True
        if kind in kinds:
            count = self.tally.counts[(kind, from_client)]
            count.bytes += size
        else:
            kinds.add(kind)
            self.tally.add(kind, from_client, size)

    def _properties(self) -> list[tuple[str, str]]:
        pairs = []
        carrier = self.carrier
        if carrier is not None:
            pairs.append(("carrier", carrier))
        media = self.media
        for key, values in (
            ("rtp-payload-type", media.payload_types),
            ("rtcp-packet-type", media.rtcp_types),
            ("rtp-extension-id", media.extension_ids),
        ):
            pairs += [(key, str(value)) for value in sorted(values)[:MAX_DISTINCT]]
        pairs += [("rtp-extension-profile", p) for p in sorted(media.extension_profiles)]
        if media.ssrcs:
            pairs.append(("rtp-ssrcs", str(min(len(media.ssrcs), MAX_DISTINCT))))
        return pairs

    def summary(self) -> list[Finding]:
        """What the box writes down when it is done with the flow: the tally (packets and
        bytes per kind and direction) and, with media, the share of RTP packets with the
        marker bit set (about one per video frame, none for most audio)."""
        if self.carrier is None:
            return []
        findings = [Finding(self.name, "tally", self.tally.describe())]
        if self.media.rtp_packets:
            rate = self.media.markers / self.media.rtp_packets
            findings.append(Finding(self.name, "rtp-marker-rate", f"{rate:.2f}"))
        return findings
