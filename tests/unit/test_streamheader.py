"""Stream-open header and stream reply: byte-exact encodings, incremental decoding, errors."""

from __future__ import annotations

import ipaddress

import pytest

from unwall.wire.streamheader import (
    MAX_HEADER_SIZE,
    MAX_REPLY_SIZE,
    VERSION,
    AddressType,
    HeaderError,
    StreamReply,
    StreamReplyDecoder,
    StreamStatus,
    StreamTarget,
    StreamTargetDecoder,
    encode_voucher,
)
from unwall.wire.ticket import Voucher

NAME_255 = ".".join(["a" * 63] * 4)  # 4 * 63 + 3 dots = 255 bytes
NAME_255_DOT = ".".join(["b" * 63] * 3 + ["c" * 62]) + "."  # 255 bytes with the root dot

# (target, exact encoding)
TARGET_ENCODINGS = [
    (StreamTarget("1.2.3.4", 80), bytes.fromhex("01 01 01020304 0050")),
    (StreamTarget("0.0.0.1", 1), bytes.fromhex("01 01 00000001 0001")),
    (StreamTarget("255.255.255.255", 65535), bytes.fromhex("01 01 ffffffff ffff")),
    (StreamTarget("::1", 443), bytes.fromhex("01 04" + "00" * 15 + "01" + "01bb")),
    (
        StreamTarget("2606:4700::1", 8443),
        bytes.fromhex("01 04 26064700 00000000 00000000 00000001 20fb"),
    ),
    (StreamTarget("example.com", 443), b"\x01\x03\x0bexample.com\x01\xbb"),
    (StreamTarget("a", 80), b"\x01\x03\x01a\x00\x50"),
    (StreamTarget("Example.COM.", 80), b"\x01\x03\x0cExample.COM.\x00\x50"),
    (StreamTarget("_sip._tcp.example", 5060), b"\x01\x03\x11_sip._tcp.example\x13\xc4"),
    (StreamTarget("xn--bcher-kva.example", 443), b"\x01\x03\x15xn--bcher-kva.example\x01\xbb"),
    (StreamTarget(NAME_255, 80), b"\x01\x03\xff" + NAME_255.encode() + b"\x00\x50"),
    (StreamTarget(NAME_255_DOT, 80), b"\x01\x03\xff" + NAME_255_DOT.encode() + b"\x00\x50"),
]
TARGET_IDS = [f"{target.host[:20]}:{target.port}" for target, _ in TARGET_ENCODINGS]

# (reply, exact encoding)
REPLY_ENCODINGS = [
    (StreamReply(StreamStatus.OK), b"\x01\x00\x00"),
    *[(StreamReply(status), bytes((1, status, 0))) for status in StreamStatus],
    (StreamReply(StreamStatus.NOT_ALLOWED, "no"), b"\x01\x02\x02no"),
    (StreamReply(StreamStatus.TIMED_OUT, "délai"), b"\x01\x06\x06d\xc3\xa9lai"),
    (StreamReply(StreamStatus.HOST_UNREACHABLE, "x" * 255), b"\x01\x04\xff" + b"x" * 255),
]


def feed_bytewise(decoder: StreamTargetDecoder | StreamReplyDecoder, data: bytes) -> object:
    """Feed one byte at a time; only the last byte may complete the header."""
    for index, byte in enumerate(data):
        decoder.receive_data(bytes([byte]))
        event = decoder.next_event()
        if index < len(data) - 1:
            assert event is None, f"header complete after {index + 1} of {len(data)} bytes"
        else:
            return event
    raise AssertionError("no data")


def test_constants() -> None:
    assert VERSION == 1
    assert MAX_HEADER_SIZE == 290  # a voucher with the longest ticket
    assert MAX_REPLY_SIZE == 258
    assert [int(t) for t in AddressType] == [1, 3, 4, 0x7F, 0x7E]
    assert [int(s) for s in StreamStatus] == list(range(9))


# --- stream-open header: encoding ---------------------------------------------------------


@pytest.mark.parametrize(("target", "encoded"), TARGET_ENCODINGS, ids=TARGET_IDS)
def test_target_encodes_byte_exact(target: StreamTarget, encoded: bytes) -> None:
    assert target.encode() == encoded
    assert len(encoded) <= MAX_HEADER_SIZE


def test_longest_header_is_max_header_size() -> None:
    assert len(StreamTarget(NAME_255, 1).encode()) == 260
    assert len(encode_voucher(Voucher("t" * 255, bytes(32)))) == MAX_HEADER_SIZE


# --- vouchers (docs/protocol.md §3.1) -------------------------------------------------------


def test_a_voucher_round_trips_in_pieces() -> None:
    voucher = Voucher("a-ticket_0123", bytes(range(32)))
    raw = encode_voucher(voucher) + b"payload"
    decoder = StreamTargetDecoder()
    for i in range(len(raw)):
        decoder.receive_data(raw[i : i + 1])
    assert decoder.next_event() == voucher
    assert decoder.trailing_data == b"payload"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x01\x7f\x00" + bytes(32), "empty ticket"),
        (b"\x01\x7f\x02\xff\xfe" + bytes(32), "not ASCII"),
    ],
)
def test_a_malformed_voucher_is_a_header_error(raw: bytes, why: str) -> None:
    decoder = StreamTargetDecoder()
    decoder.receive_data(raw)
    with pytest.raises(HeaderError, match=why):
        decoder.next_event()


def test_a_broker_request_header_is_two_bytes_and_the_sealed_request_follows() -> None:
    from unwall.wire.streamheader import BrokerRequest, encode_broker_request

    raw = encode_broker_request() + b"sealed bytes"
    assert raw[:2] == b"\x01\x7e"
    decoder = StreamTargetDecoder()
    decoder.receive_data(raw[:1])
    assert decoder.next_event() is None
    decoder.receive_data(raw[1:])
    assert decoder.next_event() == BrokerRequest()
    assert decoder.trailing_data == b"sealed bytes"


def test_a_voucher_needs_a_ticket_and_a_32_byte_secret() -> None:
    with pytest.raises(ValueError):
        encode_voucher(Voucher("", bytes(32)))
    with pytest.raises(ValueError):
        encode_voucher(Voucher("t", bytes(31)))


@pytest.mark.parametrize(
    ("host", "ascii_name"),
    [
        ("bücher.example", b"xn--bcher-kva.example"),
        ("Bücher.Example", b"xn--bcher-kva.example"),
        ("bücher.example.", b"xn--bcher-kva.example."),
        ("例え.テスト", b"xn--r8jz45g.xn--zckzah"),
        ("münchen.de", b"xn--mnchen-3ya.de"),
    ],
)
def test_target_idna_encodes_non_ascii_names(host: str, ascii_name: bytes) -> None:
    encoded = StreamTarget(host, 443).encode()
    assert encoded == bytes((1, 3, len(ascii_name))) + ascii_name + b"\x01\xbb"
    decoder = StreamTargetDecoder()
    decoder.receive_data(encoded)
    assert decoder.next_event() == StreamTarget(ascii_name.decode(), 443)


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("", 80, "empty"),
        ("[::1]", 80, "without brackets"),
        ("[2001:db8::1]", 443, "without brackets"),
        ("fe80::1%eth0", 80, "scope"),
        ("1.2.3.4:80", 80, "may contain only"),
        ("exa mple.com", 80, "may contain only"),
        ("example.com/path", 80, "may contain only"),
        ("user@example.com", 80, "may contain only"),
        ("exam\x00ple.com", 80, "may contain only"),
        ("a..b", 80, "empty label"),
        (".example.com", 80, "empty label"),
        (".", 80, "empty label"),
        ("example.com..", 80, "empty label"),
        ("a" * 64 + ".com", 80, "longer than 63"),
        (NAME_255 + "a", 80, "256 bytes"),
        (NAME_255_DOT + "x", 80, "256 bytes"),
        ("bü cher.example", 80, None),
        ("ü" * 64 + ".example", 80, None),
        ("example.com", 0, "1 to 65535"),
        ("example.com", -1, "1 to 65535"),
        ("example.com", 65536, "1 to 65535"),
        ("1.2.3.4", 0, "1 to 65535"),
        ("::1", 70000, "1 to 65535"),
        ("example.com", True, "1 to 65535"),
    ],
)
def test_target_encode_rejects(host: str, port: int, message: str | None) -> None:
    with pytest.raises(ValueError, match=message):
        StreamTarget(host, port).encode()


def test_target_encode_rejects_names_idna_2008_disallows() -> None:
    pytest.importorskip("idna")
    with pytest.raises(ValueError, match="internationalized"):
        StreamTarget("☃.example", 80).encode()


# --- stream-open header: decoding ---------------------------------------------------------


@pytest.mark.parametrize(("target", "encoded"), TARGET_ENCODINGS, ids=TARGET_IDS)
def test_target_round_trip_in_one_piece(target: StreamTarget, encoded: bytes) -> None:
    decoder = StreamTargetDecoder()
    decoder.receive_data(encoded)
    assert decoder.next_event() == target
    assert decoder.trailing_data == b""
    assert decoder.next_event() is None


@pytest.mark.parametrize(("target", "encoded"), TARGET_ENCODINGS, ids=TARGET_IDS)
def test_target_decodes_byte_by_byte(target: StreamTarget, encoded: bytes) -> None:
    assert feed_bytewise(StreamTargetDecoder(), encoded) == target


@pytest.mark.parametrize(("target", "encoded"), TARGET_ENCODINGS, ids=TARGET_IDS)
def test_target_decodes_at_every_split(target: StreamTarget, encoded: bytes) -> None:
    payload = b"GET / HTTP/1.1\r\n"
    data = encoded + payload
    for split in range(len(data) + 1):
        decoder = StreamTargetDecoder()
        decoder.receive_data(data[:split])
        first = decoder.next_event()
        decoder.receive_data(data[split:])
        second = decoder.next_event()
        assert (first or second) == target
        assert first is None or second is None
        assert decoder.trailing_data == payload


@pytest.mark.parametrize(
    ("target", "canonical"),
    [
        (StreamTarget("0:0:0:0:0:0:0:1", 80), StreamTarget("::1", 80)),
        (StreamTarget("2606:4700:0::0:1", 80), StreamTarget("2606:4700::1", 80)),
        (StreamTarget("2001:DB8::A", 80), StreamTarget("2001:db8::a", 80)),
    ],
)
def test_target_decodes_to_canonical_ip_literals(
    target: StreamTarget, canonical: StreamTarget
) -> None:
    decoder = StreamTargetDecoder()
    decoder.receive_data(target.encode())
    assert decoder.next_event() == canonical


def test_target_ipv4_mapped_literal_is_sent_as_ipv6() -> None:
    encoded = StreamTarget("::ffff:1.2.3.4", 22).encode()
    assert encoded == bytes.fromhex("01 04" + "00" * 10 + "ffff 01020304 0016")
    decoder = StreamTargetDecoder()
    decoder.receive_data(encoded)
    # str() of a mapped address differs between Python versions; compare as addresses.
    event = decoder.next_event()
    assert event is not None
    assert ipaddress.ip_address(event.host) == ipaddress.ip_address("::ffff:1.2.3.4")


def test_target_trailing_data_accumulates_after_header() -> None:
    decoder = StreamTargetDecoder()
    decoder.receive_data(StreamTarget("example.com", 443).encode() + b"hello")
    assert decoder.trailing_data == b""  # nothing parsed yet
    assert decoder.next_event() == StreamTarget("example.com", 443)
    assert decoder.trailing_data == b"hello"
    decoder.receive_data(b" world")
    assert decoder.next_event() is None
    assert decoder.trailing_data == b"hello world"


def test_target_decoder_needs_data() -> None:
    decoder = StreamTargetDecoder()
    assert decoder.next_event() is None
    decoder.receive_data(b"")
    assert decoder.next_event() is None


def _header(address_type: int, address: bytes, port: bytes = b"\x00\x50") -> bytes:
    return bytes((VERSION, address_type)) + address + port


def _name_header(name: bytes, port: bytes = b"\x00\x50") -> bytes:
    return bytes((VERSION, 3, len(name))) + name + port


# (data, number of bytes after which the error is raised, message)
MALFORMED_TARGETS = [
    (b"\x00\x01\x01\x02\x03\x04\x00\x50", 1, "version 0"),
    (b"\x02\x01\x01\x02\x03\x04\x00\x50", 1, "version 2"),
    (b"\xff", 1, "version 255"),
    (b"\x05\x01\x02\x03\x04\x05", 1, "version 5"),  # a SOCKS5 greeting sent by mistake
    (b"\x01\x00", 2, "unknown address type 0x00"),
    (b"\x01\x02\x01\x02\x03\x04\x00\x50", 2, "unknown address type 0x02"),
    (b"\x01\x05", 2, "unknown address type 0x05"),
    (b"\x01\xff", 2, "unknown address type 0xff"),
    (b"\x01\x03\x00\x00\x50", 3, "zero-length"),
    (_header(1, b"\x01\x02\x03\x04", b"\x00\x00"), 8, "port 0"),
    (_header(4, b"\x00" * 15 + b"\x01", b"\x00\x00"), 20, "port 0"),
    (_name_header(b"example.com", b"\x00\x00"), 16, "port 0"),
    (_name_header("bücher.example".encode()), 18, "non-ASCII byte 0xc3"),
    (_name_header(b"\x80"), 4, "non-ASCII byte 0x80"),
    (_name_header(b"\xff\xfe"), 5, "non-ASCII byte 0xff"),
    (_name_header(b"exa mple.com"), 15, "may contain only"),
    (_name_header(b"a\x00b"), 6, "may contain only"),
    (_name_header(b"evil.com\r\nHost: x"), 20, "may contain only"),
    (_name_header(b"1.2.3.4:80"), 13, "may contain only"),
    (_name_header(b"[::1]"), 8, "may contain only"),
    (_name_header(b"a..b"), 7, "empty label"),
    (_name_header(b"."), 4, "empty label"),
    (_name_header(b".example"), 11, "empty label"),
    (_name_header(b"a" * 64), 67, "longer than 63"),
    (_name_header(b"b" * 63 + b"." + b"c" * 64), 131, "longer than 63"),
]


@pytest.mark.parametrize(("data", "fails_at", "message"), MALFORMED_TARGETS)
def test_target_decoder_rejects(data: bytes, fails_at: int, message: str) -> None:
    decoder = StreamTargetDecoder()
    decoder.receive_data(data)
    with pytest.raises(HeaderError, match=message):
        decoder.next_event()


@pytest.mark.parametrize(("data", "fails_at", "message"), MALFORMED_TARGETS)
def test_target_decoder_rejects_as_soon_as_the_bad_byte_arrives(
    data: bytes, fails_at: int, message: str
) -> None:
    decoder = StreamTargetDecoder()
    for byte in data[: fails_at - 1]:
        decoder.receive_data(bytes([byte]))
        assert decoder.next_event() is None
    decoder.receive_data(data[fails_at - 1 : fails_at])
    with pytest.raises(HeaderError, match=message):
        decoder.next_event()


def test_target_decoder_error_is_sticky() -> None:
    decoder = StreamTargetDecoder()
    decoder.receive_data(b"\x02")
    with pytest.raises(HeaderError):
        decoder.next_event()
    decoder.receive_data(StreamTarget("example.com", 443).encode())
    with pytest.raises(HeaderError, match="version 2"):
        decoder.next_event()
    assert decoder.trailing_data == b""


def test_header_error_is_a_value_error() -> None:
    assert issubclass(HeaderError, ValueError)


# --- stream reply -------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "encoded"), REPLY_ENCODINGS)
def test_reply_encodes_byte_exact(reply: StreamReply, encoded: bytes) -> None:
    assert reply.encode() == encoded
    assert len(encoded) <= MAX_REPLY_SIZE


@pytest.mark.parametrize(("reply", "encoded"), REPLY_ENCODINGS)
def test_reply_round_trip(reply: StreamReply, encoded: bytes) -> None:
    decoder = StreamReplyDecoder()
    decoder.receive_data(encoded + b"payload")
    assert decoder.next_event() == reply
    assert decoder.trailing_data == b"payload"
    assert decoder.next_event() is None


@pytest.mark.parametrize(("reply", "encoded"), REPLY_ENCODINGS)
def test_reply_decodes_byte_by_byte(reply: StreamReply, encoded: bytes) -> None:
    assert feed_bytewise(StreamReplyDecoder(), encoded) == reply


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("a" * 255, "a" * 255),
        ("a" * 300, "a" * 255),
        ("a" * 254 + "é", "a" * 254),  # é is 2 bytes: 256 in all
        ("a" * 253 + "é", "a" * 253 + "é"),  # exactly 255
        ("€" * 85, "€" * 85),  # 3 * 85 = 255
        ("a" + "€" * 85, "a" + "€" * 84),  # cut inside the last €
        ("ab" + "€" * 85, "ab" + "€" * 84),  # cut after its first of three bytes
        ("😀" * 64, "😀" * 63),  # 4-byte characters, 256 bytes
        ("aaa" + "😀" * 64, "aaa" + "😀" * 63),
    ],
)
def test_reply_reason_truncated_on_character_boundary(reason: str, expected: str) -> None:
    encoded = StreamReply(StreamStatus.GENERAL_FAILURE, reason).encode()
    assert encoded[2] == len(expected.encode()) <= 255
    assert encoded[3:] == expected.encode()
    decoder = StreamReplyDecoder()
    decoder.receive_data(encoded)
    assert decoder.next_event() == StreamReply(StreamStatus.GENERAL_FAILURE, expected)


def test_reply_reason_with_lone_surrogate_still_encodes() -> None:
    assert StreamReply(StreamStatus.OK, "a\udcffb").encode() == b"\x01\x00\x03a?b"


def test_reply_encode_rejects_unknown_status() -> None:
    with pytest.raises(ValueError):
        StreamReply(9).encode()  # type: ignore[arg-type]


def test_reply_decoder_replaces_invalid_utf8_in_reason() -> None:
    decoder = StreamReplyDecoder()
    decoder.receive_data(b"\x01\x05\x03a\xffb")
    assert decoder.next_event() == StreamReply(StreamStatus.CONNECTION_REFUSED, "a\ufffdb")


# (data, number of bytes after which the error is raised, message)
MALFORMED_REPLIES = [
    (b"\x00\x00\x00", 1, "version 0"),
    (b"\x02\x00\x00", 1, "version 2"),
    (b"\xff", 1, "version 255"),
    (b"\x01\x09\x00", 2, "unknown status 9"),
    (b"\x01\x80", 2, "unknown status 128"),
    (b"\x01\xff\x00", 2, "unknown status 255"),
]


@pytest.mark.parametrize(("data", "fails_at", "message"), MALFORMED_REPLIES)
def test_reply_decoder_rejects(data: bytes, fails_at: int, message: str) -> None:
    decoder = StreamReplyDecoder()
    for byte in data[: fails_at - 1]:
        decoder.receive_data(bytes([byte]))
        assert decoder.next_event() is None
    decoder.receive_data(data[fails_at - 1 :])
    with pytest.raises(HeaderError, match=message):
        decoder.next_event()
    with pytest.raises(HeaderError, match=message):
        decoder.next_event()


def test_reply_decoder_waits_for_the_whole_reason() -> None:
    decoder = StreamReplyDecoder()
    decoder.receive_data(b"\x01\x02\x05abcd")
    assert decoder.next_event() is None
    decoder.receive_data(b"e")
    assert decoder.next_event() == StreamReply(StreamStatus.NOT_ALLOWED, "abcde")
