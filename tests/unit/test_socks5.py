"""Table-driven tests of the SOCKS5 server state machine, with bytes as real clients send them."""

from __future__ import annotations

import pytest

from unwall.client.socks5 import (
    ConnectRequest,
    ReplyCode,
    Socks5Error,
    Socks5ServerConnection,
    encode_reply,
    is_valid_host_name,
    reply_for_status,
)

# curl --socks5-hostname, Firefox and Chrome all open with this greeting.
GREETING_NO_AUTH = bytes.fromhex("05 01 00")
METHOD_SELECTED = bytes.fromhex("05 00")
METHOD_REJECTED = bytes.fromhex("05 ff")


def unbound_reply(code: int) -> bytes:
    """A reply with bind address 0.0.0.0:0, as queued for a failed request."""
    return bytes.fromhex(f"05 {code:02x} 00 01 00000000 0000")


def connect_domain(name: bytes, port: int) -> bytes:
    return bytes.fromhex("05 01 00 03") + bytes([len(name)]) + name + port.to_bytes(2, "big")


def connect_ipv4(packed: bytes, port: int) -> bytes:
    return bytes.fromhex("05 01 00 01") + packed + port.to_bytes(2, "big")


def feed_whole(data: bytes) -> tuple[Socks5ServerConnection, ConnectRequest | None]:
    conn = Socks5ServerConnection()
    conn.receive_data(data)
    return conn, conn.next_event()


def feed_bytewise(data: bytes) -> tuple[Socks5ServerConnection, list[ConnectRequest | None]]:
    """Feed one byte at a time, calling next_event after each, as a slow network would."""
    conn = Socks5ServerConnection()
    events = []
    for index in range(len(data)):
        conn.receive_data(data[index : index + 1])
        events.append(conn.next_event())
    return conn, events


def fail_bytewise(data: bytes) -> tuple[Socks5Error, bytes, int]:
    """Feed byte by byte until the error; returns it, all output, and the bytes consumed."""
    conn = Socks5ServerConnection()
    sent = b""
    for index in range(len(data)):
        conn.receive_data(data[index : index + 1])
        try:
            assert conn.next_event() is None
        except Socks5Error as exc:
            return exc, sent + conn.data_to_send(), index + 1
        sent += conn.data_to_send()
    raise AssertionError("no Socks5Error raised")


# --- greeting ------------------------------------------------------------------------------

GREETINGS_ACCEPTED = [
    pytest.param(GREETING_NO_AUTH, id="curl-firefox-chrome"),
    pytest.param(bytes.fromhex("05 02 00 01"), id="no-auth-and-gssapi"),
    pytest.param(bytes.fromhex("05 02 02 00"), id="userpass-preferred-no-auth-offered"),
    pytest.param(bytes.fromhex("05 03 01 02 00"), id="no-auth-last"),
    pytest.param(bytes.fromhex("05 02 00 00"), id="duplicate-method"),
]


@pytest.mark.parametrize("greeting", GREETINGS_ACCEPTED)
def test_greeting_selects_no_authentication(greeting: bytes) -> None:
    conn, event = feed_whole(greeting)
    assert event is None
    assert conn.data_to_send() == METHOD_SELECTED
    assert conn.data_to_send() == b""
    assert conn.trailing_data == b""


@pytest.mark.parametrize("greeting", GREETINGS_ACCEPTED)
def test_greeting_bytewise_answers_only_when_complete(greeting: bytes) -> None:
    conn = Socks5ServerConnection()
    for index in range(len(greeting)):
        conn.receive_data(greeting[index : index + 1])
        assert conn.next_event() is None
        expected = METHOD_SELECTED if index == len(greeting) - 1 else b""
        assert conn.data_to_send() == expected


GREETINGS_REJECTED = [
    pytest.param(
        bytes.fromhex("04 01 0050 7f000001 00"), b"", "SOCKS4 is not supported", id="socks4"
    ),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", b"", "version byte 0x47", id="http-on-socks-port"),
    pytest.param(
        b"\x16\x03\x01\x02\x00", b"", "version byte 0x16", id="tls-clienthello-on-socks-port"
    ),
    pytest.param(bytes.fromhex("05 00"), METHOD_REJECTED, "no authentication", id="zero-methods"),
    pytest.param(bytes.fromhex("05 01 02"), METHOD_REJECTED, "methods 0x02 ", id="userpass-only"),
    pytest.param(
        bytes.fromhex("05 02 01 02"), METHOD_REJECTED, "methods 0x01, 0x02 ", id="gssapi-userpass"
    ),
    pytest.param(bytes.fromhex("05 01 ff"), METHOD_REJECTED, "methods 0xff ", id="method-ff"),
]


@pytest.mark.parametrize(("greeting", "output", "message"), GREETINGS_REJECTED)
def test_bad_greeting(greeting: bytes, output: bytes, message: str) -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(greeting)
    with pytest.raises(Socks5Error, match=message) as info:
        conn.next_event()
    assert info.value.reply is None
    assert info.value.message == str(info.value)
    assert conn.data_to_send() == output


@pytest.mark.parametrize(("greeting", "output", "message"), GREETINGS_REJECTED)
def test_bad_greeting_bytewise(greeting: bytes, output: bytes, message: str) -> None:
    error, sent, _consumed = fail_bytewise(greeting)
    assert message in error.message
    assert error.reply is None
    assert sent == output


# --- CONNECT -------------------------------------------------------------------------------

CONNECTS_ACCEPTED = [
    pytest.param(
        connect_domain(b"example.com", 443),
        ConnectRequest("example.com", 443, "domain"),
        id="curl-socks5-hostname-domain",
    ),
    pytest.param(
        bytes.fromhex("05 01 00 01 5db8d822 0050"),
        ConnectRequest("93.184.216.34", 80, "ipv4"),
        id="ipv4",
    ),
    pytest.param(
        bytes.fromhex("05 01 00 04 20010db8000000000000000000000001 01bb"),
        ConnectRequest("2001:db8::1", 443, "ipv6"),
        id="ipv6-compressed",
    ),
    pytest.param(
        bytes.fromhex("05 01 00 04 00000000000000000000000000000001 ffff"),
        ConnectRequest("::1", 65535, "ipv6"),
        id="ipv6-loopback-max-port",
    ),
    pytest.param(
        bytes.fromhex("05 01 00 01 00000000 0001"),
        ConnectRequest("0.0.0.0", 1, "ipv4"),
        id="ipv4-unspecified-port-1-policy-is-the-egress-job",
    ),
    pytest.param(
        connect_domain(b"WWW.Example.COM.", 80),
        ConnectRequest("WWW.Example.COM.", 80, "domain"),
        id="domain-kept-as-given-with-trailing-dot",
    ),
    pytest.param(
        connect_domain(b"xn--bcher-kva.example", 443),
        ConnectRequest("xn--bcher-kva.example", 443, "domain"),
        id="idna-a-label",
    ),
    pytest.param(
        connect_domain(b"_sip._tcp.example.org", 5060),
        ConnectRequest("_sip._tcp.example.org", 5060, "domain"),
        id="underscores",
    ),
    pytest.param(
        connect_domain(b"127.0.0.1", 8080),
        ConnectRequest("127.0.0.1", 8080, "domain"),
        id="ipv4-literal-as-domain-pysocks-rdns",
    ),
    pytest.param(
        connect_domain(b"localhost", 22),
        ConnectRequest("localhost", 22, "domain"),
        id="single-label",
    ),
    pytest.param(
        connect_domain(b".".join([b"a" * 63] * 4), 443),
        ConnectRequest(".".join(["a" * 63] * 4), 443, "domain"),
        id="domain-255-bytes",
    ),
    pytest.param(
        connect_domain(b"1a.example.123x", 443),
        ConnectRequest("1a.example.123x", 443, "domain"),
        id="digits-in-labels",
    ),
]


@pytest.mark.parametrize(("request_bytes", "expected"), CONNECTS_ACCEPTED)
def test_connect_in_separate_writes(request_bytes: bytes, expected: ConnectRequest) -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(GREETING_NO_AUTH)
    assert conn.next_event() is None
    assert conn.data_to_send() == METHOD_SELECTED
    conn.receive_data(request_bytes)
    assert conn.next_event() == expected
    assert conn.data_to_send() == b""
    assert conn.trailing_data == b""
    assert conn.next_event() is None


@pytest.mark.parametrize(("request_bytes", "expected"), CONNECTS_ACCEPTED)
def test_connect_bytewise(request_bytes: bytes, expected: ConnectRequest) -> None:
    conn, events = feed_bytewise(GREETING_NO_AUTH + request_bytes)
    assert events[-1] == expected
    assert events[:-1] == [None] * (len(events) - 1)
    assert conn.data_to_send() == METHOD_SELECTED


@pytest.mark.parametrize(("request_bytes", "expected"), CONNECTS_ACCEPTED)
def test_connect_pipelined_with_greeting_and_app_data(
    request_bytes: bytes, expected: ConnectRequest
) -> None:
    # Optimistic clients (Tor Browser-style, some libraries) send everything in one write.
    early = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    conn, event = feed_whole(GREETING_NO_AUTH + request_bytes + early)
    assert event == expected
    assert conn.data_to_send() == METHOD_SELECTED
    assert conn.trailing_data == early


CONNECTS_REJECTED = [
    pytest.param(bytes.fromhex("04 01 00 01 7f000001 0050"), 0x01, "version byte 0x04", id="ver-4"),
    pytest.param(bytes.fromhex("05 02 00 01 00000000 0000"), 0x07, "BIND", id="bind"),
    pytest.param(
        bytes.fromhex("05 03 00 01 00000000 0000"), 0x07, "UDP ASSOCIATE", id="udp-associate"
    ),
    pytest.param(bytes.fromhex("05 00 00 01 7f000001 0050"), 0x07, "0x00", id="command-0"),
    pytest.param(bytes.fromhex("05 09 00 01 7f000001 0050"), 0x07, "0x09", id="command-9"),
    pytest.param(bytes.fromhex("05 01 01 01 7f000001 0050"), 0x01, "reserved byte 0x01", id="rsv"),
    pytest.param(bytes.fromhex("05 01 00 00 7f000001 0050"), 0x08, "type 0x00", id="atyp-0"),
    pytest.param(bytes.fromhex("05 01 00 02 7f000001 0050"), 0x08, "type 0x02", id="atyp-2"),
    pytest.param(bytes.fromhex("05 01 00 05 7f000001 0050"), 0x08, "type 0x05", id="atyp-5"),
    pytest.param(bytes.fromhex("05 01 00 03 00 0050"), 0x01, "empty domain", id="domain-len-0"),
    pytest.param(bytes.fromhex("05 01 00 01 7f000001 0000"), 0x01, "port 0", id="ipv4-port-0"),
    pytest.param(
        bytes.fromhex("05 01 00 04 00000000000000000000000000000001 0000"),
        0x01,
        "port 0",
        id="ipv6-port-0",
    ),
    pytest.param(connect_domain(b"example.com", 0), 0x01, "port 0", id="domain-port-0"),
    pytest.param(
        connect_domain("bücher.example".encode(), 443), 0x04, "IDNA", id="domain-utf8-not-idna"
    ),
    pytest.param(connect_domain(b"\xff\xfe", 443), 0x04, "IDNA", id="domain-binary"),
    pytest.param(connect_domain(b"exa mple.com", 443), 0x04, "IDNA", id="domain-space"),
    pytest.param(connect_domain(b"a\x00b.com", 443), 0x04, "IDNA", id="domain-nul"),
    pytest.param(connect_domain(b"a..b", 443), 0x04, "IDNA", id="domain-empty-label"),
    pytest.param(connect_domain(b".example", 443), 0x04, "IDNA", id="domain-leading-dot"),
    pytest.param(connect_domain(b".", 443), 0x04, "IDNA", id="domain-root-only"),
    pytest.param(connect_domain(b"a" * 64 + b".com", 443), 0x04, "IDNA", id="label-64"),
    pytest.param(connect_domain(b"::1", 443), 0x04, "IDNA", id="ipv6-as-domain"),
    pytest.param(connect_domain(b"[::1]", 443), 0x04, "IDNA", id="bracketed-ipv6-as-domain"),
    pytest.param(connect_domain(b"010.1.1.1", 80), 0x04, "IDNA", id="octal-looking-ipv4"),
    pytest.param(connect_domain(b"127.1", 80), 0x04, "IDNA", id="shorthand-ipv4"),
    pytest.param(connect_domain(b"256.1.1.1", 80), 0x04, "IDNA", id="ipv4-out-of-range"),
    pytest.param(connect_domain(b"2130706433", 80), 0x04, "IDNA", id="integer-ipv4"),
    pytest.param(connect_domain(b"127.0.0.1.", 80), 0x04, "IDNA", id="ipv4-trailing-dot"),
    pytest.param(connect_domain(b"example.com/x", 80), 0x04, "IDNA", id="slash"),
    pytest.param(connect_domain(b"example.com:80", 80), 0x04, "IDNA", id="colon"),
]


@pytest.mark.parametrize(("request_bytes", "code", "message"), CONNECTS_REJECTED)
def test_bad_connect_queues_exact_reply(request_bytes: bytes, code: int, message: str) -> None:
    conn, _ = feed_whole(GREETING_NO_AUTH)
    assert conn.data_to_send() == METHOD_SELECTED
    conn.receive_data(request_bytes)
    with pytest.raises(Socks5Error, match=message) as info:
        conn.next_event()
    assert info.value.reply == code
    assert conn.data_to_send() == unbound_reply(code)
    assert conn.trailing_data == b""


@pytest.mark.parametrize(("request_bytes", "code", "message"), CONNECTS_REJECTED)
def test_bad_connect_bytewise(request_bytes: bytes, code: int, message: str) -> None:
    error, sent, _consumed = fail_bytewise(GREETING_NO_AUTH + request_bytes)
    assert error.reply == code
    assert message in error.message
    assert sent == METHOD_SELECTED + unbound_reply(code)


FAIL_AT = [
    # The fixed four bytes are checked as soon as they are in, without waiting for the address.
    pytest.param(bytes.fromhex("05 02 00 01 00000000 0000"), 4, id="command-at-byte-4"),
    pytest.param(bytes.fromhex("05 01 00 07 00000000 0000"), 4, id="atyp-at-byte-4"),
    pytest.param(bytes.fromhex("05 01 00 03 00 0050"), 5, id="empty-domain-at-byte-5"),
    pytest.param(connect_domain(b"a..b", 443), 11, id="bad-domain-with-port"),
]


@pytest.mark.parametrize(("request_bytes", "consumed"), FAIL_AT)
def test_error_raised_as_soon_as_decidable(request_bytes: bytes, consumed: int) -> None:
    _error, _sent, at = fail_bytewise(GREETING_NO_AUTH + request_bytes)
    assert at == len(GREETING_NO_AUTH) + consumed


TRUNCATED = [
    pytest.param(b"", id="nothing"),
    pytest.param(bytes.fromhex("05"), id="greeting-1"),
    pytest.param(bytes.fromhex("05 02 00"), id="greeting-missing-method"),
    pytest.param(GREETING_NO_AUTH + bytes.fromhex("05 01 00"), id="request-3"),
    pytest.param(GREETING_NO_AUTH + bytes.fromhex("05 01 00 03"), id="domain-no-length"),
    pytest.param(GREETING_NO_AUTH + bytes.fromhex("05 01 00 03 0b") + b"example.co", id="domain"),
    pytest.param(GREETING_NO_AUTH + bytes.fromhex("05 01 00 01 7f000001 00"), id="port-half"),
    pytest.param(GREETING_NO_AUTH + bytes.fromhex("05 01 00 04 20010db8"), id="ipv6-partial"),
]


@pytest.mark.parametrize("data", TRUNCATED)
def test_truncated_input_waits(data: bytes) -> None:
    conn, event = feed_whole(data)
    assert event is None
    assert conn.next_event() is None
    assert conn.trailing_data == b""


# --- after the request ---------------------------------------------------------------------


def connected(extra: bytes = b"") -> Socks5ServerConnection:
    conn, event = feed_whole(GREETING_NO_AUTH + connect_domain(b"example.com", 443) + extra)
    assert event == ConnectRequest("example.com", 443, "domain")
    assert conn.data_to_send() == METHOD_SELECTED
    return conn


def test_trailing_data_accumulates_after_request() -> None:
    conn = connected(b"GET / HTTP/1.1\r\n")
    conn.receive_data(b"Host: example.com\r\n\r\n")
    assert conn.next_event() is None
    assert conn.trailing_data == b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert conn.reply(ReplyCode.SUCCEEDED) == unbound_reply(0x00)
    conn.receive_data(b"more")
    assert conn.trailing_data.endswith(b"\r\n\r\nmore")
    assert conn.next_event() is None


def test_trailing_data_may_look_like_socks() -> None:
    # Once CONNECT is read, nothing after it is parsed: a second request is just payload.
    second = connect_domain(b"other.example", 80)
    conn = connected(second)
    assert conn.next_event() is None
    assert conn.data_to_send() == b""
    assert conn.trailing_data == second


REPLIES = [
    pytest.param(ReplyCode.SUCCEEDED, "0.0.0.0", 0, "05 00 00 01 00000000 0000", id="default"),
    pytest.param(ReplyCode.SUCCEEDED, "127.0.0.1", 1080, "05 00 00 01 7f000001 0438", id="v4"),
    pytest.param(
        ReplyCode.HOST_UNREACHABLE,
        "::1",
        443,
        "05 04 00 04 00000000000000000000000000000001 01bb",
        id="v6",
    ),
    pytest.param(ReplyCode.NOT_ALLOWED, "0.0.0.0", 0, "05 02 00 01 00000000 0000", id="ruleset"),
    pytest.param(ReplyCode.TTL_EXPIRED, "10.0.0.1", 65535, "05 06 00 01 0a000001 ffff", id="ttl"),
]


@pytest.mark.parametrize(("code", "host", "port", "expected"), REPLIES)
def test_reply_bytes(code: ReplyCode, host: str, port: int, expected: str) -> None:
    assert connected().reply(code, host, port) == bytes.fromhex(expected)
    assert encode_reply(code, host, port) == bytes.fromhex(expected)


def test_reply_default_arguments() -> None:
    assert connected().reply(ReplyCode.CONNECTION_REFUSED) == unbound_reply(0x05)


def test_reply_only_once() -> None:
    conn = connected()
    conn.reply(ReplyCode.SUCCEEDED)
    with pytest.raises(RuntimeError, match="exactly once"):
        conn.reply(ReplyCode.SUCCEEDED)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="before-greeting"),
        pytest.param(GREETING_NO_AUTH, id="before-request"),
    ],
)
def test_reply_before_request_is_a_bug(data: bytes) -> None:
    conn, _ = feed_whole(data)
    with pytest.raises(RuntimeError, match="after next_event"):
        conn.reply(ReplyCode.SUCCEEDED)


def test_reply_after_failure_is_a_bug() -> None:
    conn, _ = feed_whole(GREETING_NO_AUTH)
    conn.receive_data(bytes.fromhex("05 02 00 01 00000000 0000"))
    with pytest.raises(Socks5Error):
        conn.next_event()
    with pytest.raises(RuntimeError):
        conn.reply(ReplyCode.SUCCEEDED)


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        pytest.param("example.com", 0, "does not appear to be an IPv4 or IPv6", id="name"),
        pytest.param("0.0.0.0", 65536, "not in 0..65535", id="port-high"),
        pytest.param("0.0.0.0", -1, "not in 0..65535", id="port-negative"),
    ],
)
def test_encode_reply_rejects_bad_bind_address(host: str, port: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_reply(ReplyCode.SUCCEEDED, host, port)


# --- errors are final ----------------------------------------------------------------------


def test_error_is_sticky_and_reply_sent_once() -> None:
    conn, _ = feed_whole(GREETING_NO_AUTH)
    conn.data_to_send()
    conn.receive_data(bytes.fromhex("05 01 00 08"))
    with pytest.raises(Socks5Error) as first:
        conn.next_event()
    conn.receive_data(connect_domain(b"example.com", 443))
    with pytest.raises(Socks5Error) as second:
        conn.next_event()
    assert second.value is first.value
    assert conn.data_to_send() == unbound_reply(0x08)
    assert conn.data_to_send() == b""
    assert conn.trailing_data == b""


def test_greeting_error_then_more_data() -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(bytes.fromhex("05 01 02"))
    with pytest.raises(Socks5Error):
        conn.next_event()
    # A client that ignores the rejection and sends RFC 1929 credentials anyway.
    conn.receive_data(bytes.fromhex("01 04 75736572 04 70617373"))
    with pytest.raises(Socks5Error, match="0x02"):
        conn.next_event()
    assert conn.data_to_send() == METHOD_REJECTED


# --- tables shared with the rest of the client ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (0, ReplyCode.SUCCEEDED),
        (1, ReplyCode.GENERAL_FAILURE),
        (2, ReplyCode.NOT_ALLOWED),
        (3, ReplyCode.NETWORK_UNREACHABLE),
        (4, ReplyCode.HOST_UNREACHABLE),
        (5, ReplyCode.CONNECTION_REFUSED),
        (6, ReplyCode.TTL_EXPIRED),
        (7, ReplyCode.GENERAL_FAILURE),
        (8, ReplyCode.GENERAL_FAILURE),
        (255, ReplyCode.GENERAL_FAILURE),
    ],
)
def test_reply_for_status(status: int, code: ReplyCode) -> None:
    assert reply_for_status(status) is code


def test_reply_codes_match_rfc1928() -> None:
    assert [(code.name, int(code)) for code in ReplyCode] == [
        ("SUCCEEDED", 0),
        ("GENERAL_FAILURE", 1),
        ("NOT_ALLOWED", 2),
        ("NETWORK_UNREACHABLE", 3),
        ("HOST_UNREACHABLE", 4),
        ("CONNECTION_REFUSED", 5),
        ("TTL_EXPIRED", 6),
        ("COMMAND_NOT_SUPPORTED", 7),
        ("ADDRESS_TYPE_NOT_SUPPORTED", 8),
    ]


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("example.com", True),
        ("example.com.", True),
        ("a", True),
        ("1.2.3.4", True),
        ("255.255.255.255", True),
        ("a-b_c.d", True),
        ("-leading-hyphen.example", True),
        (".".join(["a" * 63] * 4), True),
        ("", False),
        (".", False),
        ("a" * 256, False),
        (".".join(["a" * 63] * 4) + "a", False),
        ("ünicode.example", False),
        ("a b", False),
        ("a..b", False),
        ("a.b..", False),
        ("a" * 64, False),
        ("1.2.3", False),
        ("01.2.3.4", False),
        ("1.2.3.4.5", False),
        ("example.123", False),
        ("0x7f.0.0.1", False),
        ("[::1]", False),
        ("a%2eb", False),
    ],
)
def test_is_valid_host_name(name: str, valid: bool) -> None:
    assert is_valid_host_name(name) is valid
