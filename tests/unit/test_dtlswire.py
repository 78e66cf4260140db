"""DTLS on the wire (unwall.transport.aiortc_engine.dtlswire), on real OpenSSL: two
pyOpenSSL connections made as the aiortc engine makes them (DTLS 1.3 shaped as Chromium's)
shake hands in memory through a `Shaper` each, datagram by datagram, as over ICE."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
from aiortc import rtcdtlstransport
from OpenSSL import SSL

from unwall.lab.analyzers import DtlsAnalyzer
from unwall.transport.aiortc_engine import dtls, engine
from unwall.transport.aiortc_engine.dtlswire import (
    CLIENT_HELLO,
    MAX_HELD_FRAGMENTS,
    MTU,
    SERVER_HELLO,
    DtlsWireError,
    Shaper,
    extensions,
    handshake_fragment,
    permutation,
    permute_client_hello,
    restore_client_hello,
    split_records,
)

needs_dtls13 = pytest.mark.skipif(
    not dtls.dtls13_possible(), reason="this OpenSSL has no DTLS 1.3 (cryptography < 51)"
)
KEY = bytes(range(16))
OPENSSL_CLIENT_HELLO = [65281, 11, 10, 14, 23, 13, 43, 45, 51]


def _connection(server: bool) -> SSL.Connection:
    engine.install_patches()
    certificate = rtcdtlstransport.RTCCertificate.generateCertificate()
    context = certificate._create_ssl_context(srtp_profiles=rtcdtlstransport.SRTP_PROFILES)
    connection = SSL.Connection(context)
    connection.set_options(SSL.OP_NO_QUERY_MTU)
    connection.set_ciphertext_mtu(MTU)
    if server:
        connection.set_accept_state()
    else:
        connection.set_connect_state()
    return connection


class Pair:
    """A DTLS client and server, each with its shaper; `wire` holds every datagram sent,
    (from_client, bytes), as the box would see them."""

    def __init__(self, client_rewrites: bool, server_rewrites: bool, key: bytes = KEY) -> None:
        self.ends = {True: _connection(False), False: _connection(True)}
        self.shapers = {
            True: Shaper(key if client_rewrites else None),
            False: Shaper(key if server_rewrites else None),
        }
        self.wire: list[tuple[bool, bytes]] = []

    def step(self, from_client: bool) -> list[bytes]:
        """Let one end run, and take the datagrams it sends."""
        connection = self.ends[from_client]
        with contextlib.suppress(SSL.WantReadError):
            connection.do_handshake()
        try:
            data = connection.bio_read(65536)
        except SSL.WantReadError:
            return []
        datagrams = self.shapers[from_client].outgoing(data)
        self.wire += [(from_client, d) for d in datagrams]
        return datagrams

    def deliver(self, to_client: bool, datagram: bytes) -> None:
        data = self.shapers[to_client].incoming(datagram)
        if data:
            self.ends[to_client].bio_write(data)

    def run(self, rounds: int = 8, drop: set[int] | None = None) -> bool:
        """Shake hands; `drop` holds indices (in `wire`) of datagrams lost on the way."""
        sending = True
        for _ in range(rounds):
            for datagram in self.step(sending):
                if drop and len(self.wire) - 1 in drop:
                    continue
                self.deliver(not sending, datagram)
            sending = not sending
            if all(self._done(end) for end in self.ends.values()):
                return True
        return False

    @staticmethod
    def _done(connection: SSL.Connection) -> bool:
        try:
            connection.do_handshake()
        except SSL.WantReadError:
            return False
        return True

    def hellos(self) -> dict[str, set[str]]:
        analyzer = DtlsAnalyzer()
        found: dict[str, set[str]] = {}
        for from_client, datagram in self.wire:
            for finding in analyzer.feed(datagram, from_client=from_client):
                found.setdefault(finding.key, set()).add(finding.value)
        return found


def _order(client_hello: str) -> list[int]:
    return [int(x) for x in client_hello.split(",")[2].split("-")]


@needs_dtls13
def test_between_unwall_ends_dtls13_with_chromiums_hellos() -> None:
    pair = Pair(client_rewrites=True, server_rewrites=True)
    assert pair.run()
    for end in pair.ends.values():
        assert end.get_protocol_version_name() == "DTLSv1.3"
    seen = pair.hellos()
    assert seen["ja4"] == {"dd3i140900_fa23b50283d1_01b4b87481e4"}
    assert seen["ja4s"] == {"dd30200_1301_234ea6891581"}  # key_share before supported_versions
    (hello,) = seen["client-hello"]
    assert sorted(_order(hello)) == sorted(OPENSSL_CLIENT_HELLO)
    # the ClientHello in two datagrams of whole records, as Chromium's (1,200 + 263)
    client_datagrams = [d for from_client, d in pair.wire if from_client]
    assert [len(d) for d in client_datagrams[:2]] == [1200, 263]
    assert all(len(d) <= MTU for _, d in pair.wire)


@needs_dtls13
def test_the_order_changes_with_every_connection() -> None:
    orders = set()
    for _ in range(4):
        pair = Pair(True, True)
        assert pair.run()
        (hello,) = pair.hellos()["client-hello"]
        orders.add(tuple(_order(hello)))
    assert len(orders) == 4


@needs_dtls13
def test_with_a_browser_nothing_in_the_transcript_is_rewritten() -> None:
    """An end that does not restore (a browser) gets OpenSSL's hello as OpenSSL wrote it:
    the fixed order, and the handshake completes; only the record version is Chromium's."""
    pair = Pair(client_rewrites=False, server_rewrites=False)
    assert pair.run()
    seen = pair.hellos()
    (hello,) = seen["client-hello"]
    assert _order(hello) == OPENSSL_CLIENT_HELLO
    assert seen["server-hello"] == {"65277,4865,43-51"}
    first = pair.wire[0][1]
    assert first[1:3] == b"\xfe\xff"  # {254, 255} on the ClientHello's records


@needs_dtls13
@pytest.mark.parametrize(("client", "server"), [(True, False), (False, True)])
def test_a_rewrite_the_other_end_does_not_undo_breaks_the_handshake(
    client: bool, server: bool
) -> None:
    """What the rewrite changes is in the transcript: it must be agreed (the SDP line)."""
    pair = Pair(client, server)
    assert not pair.run()


@needs_dtls13
def test_a_lost_fragment_is_held_and_the_retransmission_completes_it() -> None:
    pair = Pair(True, True)
    client = pair.ends[True]
    first = pair.step(True)
    assert len(first) == 2
    pair.deliver(False, first[0])  # the second fragment is lost
    assert pair.shapers[False]._held  # held until the message is whole
    assert pair.step(False) == []  # the server has nothing to answer yet
    time.sleep((client.DTLSv1_get_timeout() or 0) + 0.01)  # OpenSSL's timer: 1 s
    assert client.DTLSv1_handle_timeout()  # the client retransmits its flight
    again = pair.step(True)
    assert len(again) == 2
    pair.deliver(False, again[1])  # with the first, held: whole
    assert not pair.shapers[False]._held
    for datagram in pair.step(False):
        pair.deliver(True, datagram)
    assert pair.run()


@needs_dtls13
def test_fragments_in_reverse_order() -> None:
    pair = Pair(True, True)
    first, second = pair.step(True)
    pair.deliver(False, second)
    pair.deliver(False, first)
    for datagram in pair.step(False):
        pair.deliver(True, datagram)
    assert pair.run()


def test_permutation_is_undone_for_any_random() -> None:
    for _ in range(50):
        random = os.urandom(32)
        order = permutation(KEY, random, 9)
        assert sorted(order) == list(range(9))
    # on a whole (one-fragment) ClientHello: restore(permute(x)) == x, for many randoms
    body = bytearray(_small_client_hello())
    for _ in range(50):
        body[2:34] = os.urandom(32)
        permuted = permute_client_hello(bytes(body), KEY)
        assert restore_client_hello(permuted, KEY) == bytes(body)
        assert sorted(extensions(permuted, 1)[1]) == sorted(extensions(bytes(body), 1)[1])


def _small_client_hello() -> bytes:
    """A DTLS 1.2 ClientHello body (one fragment) from plain OpenSSL."""
    context = SSL.Context(SSL.DTLS_METHOD)
    context.set_max_proto_version(0xFEFD)
    connection = SSL.Connection(context)
    connection.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):
        connection.do_handshake()
    record = connection.bio_read(65536)
    fragment = handshake_fragment(record)
    assert fragment is not None and fragment.length == len(fragment.body)
    return fragment.body


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\xfe\xfd\x00\x00",  # a header cut short
        b"\x16\xfe\xfd" + bytes(8) + b"\x00\x10" + b"x",  # a record cut short
        b"\x3c\x00",  # a unified header cut short
        b"\x30" + bytes(4),  # a connection ID (OpenSSL sets none)
    ],
)
def test_bad_records_are_refused(data: bytes) -> None:
    with pytest.raises(DtlsWireError):
        split_records(data)


def test_what_is_not_a_handshake_passes_untouched() -> None:
    shaper = Shaper(KEY)
    for datagram in (b"\x17\xfe\xfd" + bytes(10), b"\x2f" + bytes(30), b"", b"\x00\x01"):
        assert shaper.incoming(datagram) == datagram


# -- the SDP: who is the DTLS client, and whether both ends rewrite ------------------------------

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=setup:{}\r\n"
)


@pytest.mark.parametrize(
    ("engine_offers", "role", "sent"),
    [
        ("active", "auto", "active"),  # the aiortc engine's choice stands
        ("actpass", "auto", "actpass"),  # Chromium's
        ("active", "server", "passive"),
        ("actpass", "client", "active"),
        ("active", "client", "active"),
    ],
)
def test_the_offer_says_the_dtls_role(engine_offers: str, role: str, sent: str) -> None:
    from unwall.transport.webrtc import with_dtls_role

    assert with_dtls_role(OFFER.format(engine_offers), role) == OFFER.format(sent)


def test_a_bad_dtls_role_is_refused() -> None:
    from unwall.transport.webrtc import with_dtls_role

    with pytest.raises(ValueError, match="auto, client or server"):
        with_dtls_role(OFFER.format("actpass"), "both")


def test_the_rewrite_line_is_a_session_attribute_with_a_key() -> None:
    from unwall.transport.aiortc_engine.sdp import (
        DTLS_REWRITE,
        dtls_rewrite_key,
        new_rewrite_key,
        with_dtls_rewrite,
    )

    offer = OFFER.format("active")
    key = new_rewrite_key()
    marked = with_dtls_rewrite(offer, key)
    assert dtls_rewrite_key(marked) == key and dtls_rewrite_key(offer) is None
    assert marked.index(DTLS_REWRITE) < marked.index("m=application")
    assert new_rewrite_key() != key
    # the line in a media section is not the session's agreement
    (line,) = [x for x in marked.splitlines() if x.startswith(DTLS_REWRITE)]
    assert dtls_rewrite_key(offer + line + "\r\n") is None
    # no key, or not one of 16 bytes: nothing is rewritten
    for bad in ("", " short", " " + "A" * 23, " " + "!" * 22):
        sdp = offer.replace("t=0 0\r\n", f"t=0 0\r\n{DTLS_REWRITE}{bad}\r\n")
        assert dtls_rewrite_key(sdp) is None


# -- what a stranger can send: anyone who knows the port reaches the shaper ------------------------


def _fragment(length: int, offset: int, body: bytes, message_seq: int = 0) -> bytes:
    handshake = (
        bytes([CLIENT_HELLO])
        + length.to_bytes(3, "big")
        + message_seq.to_bytes(2, "big")
        + offset.to_bytes(3, "big")
        + len(body).to_bytes(3, "big")
        + body
    )
    return b"\x16\xfe\xfd" + bytes(8) + len(handshake).to_bytes(2, "big") + handshake


def test_a_flood_of_fragments_holds_little_and_costs_little() -> None:
    shaper = Shaper(KEY)
    # fragments of a huge "ClientHello": passed on for OpenSSL to drop, nothing held
    huge = b"".join(_fragment(0xFFFFFF, i, b"x") for i in range(46))
    started = time.perf_counter()
    for _ in range(50):
        assert shaper.incoming(huge) == huge
    assert time.perf_counter() - started < 0.5
    assert not shaper._held
    # a sane size, but in ever new pieces: at most MAX_HELD_FRAGMENTS are held
    for offset in range(0, 1000, 2):
        assert shaper.incoming(_fragment(1413, offset, b"y")) == b""
        assert len(shaper._held) <= MAX_HELD_FRAGMENTS
    # and once the handshake is done, nothing is held or restored at all
    shaper.handshake_done()
    assert shaper.incoming(_fragment(1413, 0, b"z")) == _fragment(1413, 0, b"z")
    assert not shaper._held


def test_a_hello_with_too_many_extensions_passes_untouched() -> None:
    body = bytearray(_small_client_hello())
    start = body.index(b"\xff\x01")  # renegotiation_info: the first extension OpenSSL writes
    extra = b"\xfa\xfa\x00\x00" * 2100
    total = int.from_bytes(body[start - 2 : start], "big") + len(extra)
    body[start - 2 : start] = total.to_bytes(2, "big")
    body += extra
    message = bytes(body)
    datagram = _fragment(len(message), 0, message)
    assert Shaper(KEY).incoming(datagram) == datagram
    with pytest.raises(DtlsWireError):
        permute_client_hello(message, KEY)


def test_without_the_key_the_order_cannot_be_undone() -> None:
    """A censor who sees the permuted hello cannot find OpenSSL's order behind it: the
    order is drawn under the key the SDP carries, not from the hello alone."""
    body = bytearray(_small_client_hello())
    openssl = [kind for kind, _ in extensions(bytes(body), CLIENT_HELLO)[1]]
    guessed = 0
    for _ in range(20):
        body[2:34] = os.urandom(32)
        wire = permute_client_hello(bytes(body), os.urandom(16))
        undone = restore_client_hello(wire, bytes(16))  # a guess at the key
        guessed += [kind for kind, _ in extensions(undone, CLIENT_HELLO)[1]] == openssl
    assert guessed <= 1


@needs_dtls13
def test_only_the_initial_client_hello_has_the_dtls_10_record_version() -> None:
    pair = Pair(False, False)
    (first, second) = pair.step(True)
    assert first[1:3] == second[1:3] == b"\xfe\xff"
    later = _fragment(100, 0, bytes(100), message_seq=1)
    (datagram,) = Shaper().outgoing(later)
    assert datagram[1:3] == b"\xfe\xfd"


def test_a_server_hello_in_pieces_is_not_rewritten() -> None:
    """The receiver restores only a whole ServerHello: the sender rewrites only one."""
    body = bytes(2) + bytes(32) + b"\x00" + b"\x13\x01" + b"\x00"
    extensions_ = b"\x00\x2b\x00\x02\xfe\xfc" + b"\x00\x33\x00\x04" + bytes(4)
    body += len(extensions_).to_bytes(2, "big") + extensions_

    def fragment(offset: int, piece: bytes) -> bytes:
        handshake = (
            bytes([SERVER_HELLO]) + len(body).to_bytes(3, "big") + bytes(2)
            + offset.to_bytes(3, "big") + len(piece).to_bytes(3, "big") + piece
        )  # fmt: skip
        return b"\x16\xfe\xfd" + bytes(8) + len(handshake).to_bytes(2, "big") + handshake

    whole = fragment(0, body)
    (rewritten,) = Shaper(KEY).outgoing(whole)
    assert rewritten != whole and Shaper(KEY).incoming(rewritten) == whole
    pieces = fragment(0, body[:20]) + fragment(20, body[20:])
    assert b"".join(Shaper(KEY).outgoing(pieces)) == pieces
