"""DTLS on the wire between OpenSSL and the socket, as Chromium puts it there (sans-IO).

OpenSSL writes a flight into a memory BIO and reads what arrives from one; aiortc moves
those bytes to and from ICE. What passes here is shaped on the way out and, where the
other end shaped it, restored on the way in, so that OpenSSL at each end reads exactly
what the other end's OpenSSL wrote: the handshake transcripts match and Finished verifies.

Always (any peer; a record's header is not in the transcript):
- records are sent whole, packed into datagrams of at most `MTU` bytes (aiortc would read
  the BIO 1,500 bytes at a time and cut a DTLS 1.3 flight inside a record);
- the records of a ClientHello carry the record-layer version {254, 255}, as Chromium's
  do (RFC 9147 §5.1 allows it for the initial ClientHello; OpenSSL writes {254, 253}).

Only between two unwall ends (`Shaper(key)`, a key agreed in the SDP: protocol.md §2),
since a browser would put the rewritten bytes in its transcript:
- the ClientHello's extensions go out in a new order on every connection, as Chromium
  (BoringSSL) permutes them: the order is drawn from HMAC-SHA256 under the key of the
  ClientHello's own random, which the receiver reads and inverts. OpenSSL's order is fixed,
  and a host whose handshakes all show one order is one a censor can count; without the
  key (it travels only in the SDP, over the broker's channel) a censor cannot undo the
  order to find OpenSSL's behind it;
- a DTLS 1.3 ServerHello lists key_share (51) before supported_versions (43), as Chromium's
  does; OpenSSL writes 43, 51. The receiver puts them back.

Fragmented handshake messages (the ClientHello is 1,413 bytes: two fragments) are rewritten
whole and cut again at the same offsets; a receiver holds the fragments it has until the
message is complete (a few, of a hello of a sane size, until its own handshake is done:
anyone who knows the port can send datagrams here, which aioice passes on). Whatever
cannot be parsed or rewritten passes as it came, for OpenSSL to judge.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

#: The largest datagram sent (Chromium's DTLS MTU): OpenSSL is told the same, and cuts
#: handshake messages into fragments that fit.
MTU = 1200

HANDSHAKE = 22
CLIENT_HELLO, SERVER_HELLO = 1, 2
DTLS_1_0 = b"\xfe\xff"
KEY_SHARE, SUPPORTED_VERSIONS = 51, 43
#: The ServerHello's extensions in Chromium's order, and in OpenSSL's.
CHROMIUM_SERVER_HELLO = (KEY_SHARE, SUPPORTED_VERSIONS)
OPENSSL_SERVER_HELLO = (SUPPORTED_VERSIONS, KEY_SHARE)

#: A rewrite key's size (bytes); the SDP carries it in base64url.
KEY_SIZE = 16
#: What a receiver holds of a ClientHello before it is whole: Chromium's is 1,413 bytes in
#: 2 fragments; one larger, in more pieces or with more extensions passes untouched.
MAX_HELD_HELLO = 4096
MAX_HELD_FRAGMENTS = 8
MAX_EXTENSIONS = 64

RECORD_HEADER = 13  # type, version, epoch, sequence number (6), length
HANDSHAKE_HEADER = 12  # type, length (3), message_seq (2), fragment_offset (3), length (3)
RANDOM_AT = 2  # in a hello's body: after legacy_version
RANDOM_SIZE = 32


class DtlsWireError(ValueError):
    """Bytes that are not DTLS records as OpenSSL or a browser writes them."""


def split_records(data: bytes) -> list[bytes]:
    """The DTLS records in `data`: plaintext ones (RFC 6347 header) and DTLS 1.3 encrypted
    ones (RFC 9147 unified header, which OpenSSL writes with its length)."""
    records, at = [], 0
    while at < len(data):
        first = data[at]
        if 0x20 <= first <= 0x3F:  # 001CSLEE
            if first & 0x10:
                raise DtlsWireError("a DTLS record with a connection ID")
            head = 1 + (2 if first & 0x08 else 1)
            if first & 0x04:
                if at + head + 2 > len(data):
                    raise DtlsWireError("a DTLS record header cut short")
                size = int.from_bytes(data[at + head : at + head + 2], "big")
                head += 2
            else:  # no length: the record runs to the end of the datagram
                size = len(data) - at - head
        else:
            if at + RECORD_HEADER > len(data):
                raise DtlsWireError("a DTLS record header cut short")
            head, size = RECORD_HEADER, int.from_bytes(data[at + 11 : at + 13], "big")
        if at + head + size > len(data):
            raise DtlsWireError("a DTLS record cut short")
        records.append(data[at : at + head + size])
        at += head + size
    return records


def pack_datagrams(records: list[bytes], mtu: int = MTU) -> list[bytes]:
    """Records, in order, in datagrams of at most `mtu` bytes; a record is never split (one
    larger than `mtu` goes alone)."""
    datagrams: list[bytes] = []
    current = b""
    for record in records:
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


@dataclass(frozen=True)
class Fragment:
    """A plaintext handshake record: one fragment of one handshake message."""

    record: bytes

    @property
    def epoch(self) -> int:
        return int.from_bytes(self.record[3:5], "big")

    @property
    def msg_type(self) -> int:
        return self.record[RECORD_HEADER]

    @property
    def length(self) -> int:
        at = RECORD_HEADER + 1
        return int.from_bytes(self.record[at : at + 3], "big")

    @property
    def message_seq(self) -> int:
        at = RECORD_HEADER + 4
        return int.from_bytes(self.record[at : at + 2], "big")

    @property
    def offset(self) -> int:
        at = RECORD_HEADER + 6
        return int.from_bytes(self.record[at : at + 3], "big")

    @property
    def body(self) -> bytes:
        return self.record[RECORD_HEADER + HANDSHAKE_HEADER :]

    def with_body(self, body: bytes) -> bytes:
        """This record carrying another fragment of the same size."""
        if len(body) != len(self.body):
            raise DtlsWireError("a rewritten fragment changed its size")
        return self.record[: RECORD_HEADER + HANDSHAKE_HEADER] + body


def handshake_fragment(record: bytes) -> Fragment | None:
    """The record as a handshake fragment, if it is a whole epoch-0 one (plaintext)."""
    if len(record) < RECORD_HEADER + HANDSHAKE_HEADER or record[0] != HANDSHAKE:
        return None
    fragment = Fragment(record)
    if fragment.epoch != 0:
        return None
    at = RECORD_HEADER + 9
    if int.from_bytes(record[at : at + 3], "big") != len(fragment.body):
        raise DtlsWireError("a handshake fragment's length disagrees with its record")
    if fragment.offset + len(fragment.body) > fragment.length:
        raise DtlsWireError("a handshake fragment runs past its message")
    return fragment


def reassemble(fragments: list[Fragment]) -> bytes | None:
    """The whole message if these fragments (of one message) cover it, else None."""
    length = fragments[0].length
    body = bytearray(length)
    covered = bytearray(length)
    for fragment in fragments:
        body[fragment.offset : fragment.offset + len(fragment.body)] = fragment.body
        covered[fragment.offset : fragment.offset + len(fragment.body)] = b"\1" * len(fragment.body)
    return bytes(body) if all(covered) else None


def cut(fragments: list[Fragment], message: bytes) -> list[bytes]:
    """The fragments' records, carrying `message` (same size) at their own offsets."""
    return [f.with_body(message[f.offset : f.offset + len(f.body)]) for f in fragments]


# -- extensions -----------------------------------------------------------------------------------


def _skip_vector(body: bytes, at: int, size_bytes: int) -> int:
    if at + size_bytes > len(body):
        raise DtlsWireError("a hello cut short")
    return at + size_bytes + int.from_bytes(body[at : at + size_bytes], "big")


def _extensions_at(body: bytes, msg_type: int) -> int:
    """Where a hello's extensions block (its 2-byte length) starts."""
    at = RANDOM_AT + RANDOM_SIZE
    at = _skip_vector(body, at, 1)  # session id
    if msg_type == CLIENT_HELLO:
        at = _skip_vector(body, at, 1)  # cookie
        at = _skip_vector(body, at, 2)  # cipher suites
        at = _skip_vector(body, at, 1)  # compression methods
    else:
        at += 3  # cipher suite, compression method
    if at + 2 > len(body) or _skip_vector(body, at, 2) != len(body):
        raise DtlsWireError("a hello's extensions do not end where it does")
    return at


def extensions(body: bytes, msg_type: int) -> tuple[int, list[tuple[int, bytes]]]:
    """Where a hello's extension list starts, and its extensions (type, whole bytes)."""
    at = _extensions_at(body, msg_type) + 2
    start, found = at, []
    while at < len(body):
        if at + 4 > len(body):
            raise DtlsWireError("an extension header cut short")
        end = at + 4 + int.from_bytes(body[at + 2 : at + 4], "big")
        if end > len(body):
            raise DtlsWireError("an extension cut short")
        found.append((int.from_bytes(body[at : at + 2], "big"), body[at:end]))
        at = end
    return start, found


def _with_extensions(body: bytes, start: int, ordered: list[tuple[int, bytes]]) -> bytes:
    return body[:start] + b"".join(data for _, data in ordered)


def permutation(key: bytes, random: bytes, count: int) -> list[int]:
    """The order (indices) of `count` extensions, drawn under `key` from a hello's random:
    Fisher-Yates on HMAC-SHA256(key, random || counter)."""
    if count > MAX_EXTENSIONS:
        raise DtlsWireError(f"a hello with {count} extensions")
    order = list(range(count))
    stream = b""
    counter = 0
    for i in range(count - 1, 0, -1):
        while len(stream) < 4:
            block = random + counter.to_bytes(4, "big")
            stream += hmac.new(key, block, hashlib.sha256).digest()
            counter += 1
        j = int.from_bytes(stream[:4], "big") % (i + 1)
        stream = stream[4:]
        order[i], order[j] = order[j], order[i]
    return order


def permute_client_hello(body: bytes, key: bytes) -> bytes:
    """The ClientHello with its extensions in the order `key` draws from its random."""
    start, found = extensions(body, CLIENT_HELLO)
    order = permutation(key, body[RANDOM_AT : RANDOM_AT + RANDOM_SIZE], len(found))
    return _with_extensions(body, start, [found[i] for i in order])


def restore_client_hello(body: bytes, key: bytes) -> bytes:
    """The ClientHello `permute_client_hello` was given, from what it made (same key)."""
    start, found = extensions(body, CLIENT_HELLO)
    order = permutation(key, body[RANDOM_AT : RANDOM_AT + RANDOM_SIZE], len(found))
    restored: list[tuple[int, bytes]] = [(0, b"")] * len(found)
    for position, index in enumerate(order):
        restored[index] = found[position]
    return _with_extensions(body, start, restored)


def reorder_server_hello(body: bytes, into: tuple[int, ...], out_of: tuple[int, ...]) -> bytes:
    """A ServerHello whose extensions are exactly `out_of` (in that order), with them in
    the order `into`; any other ServerHello (a DTLS 1.2 one) as it is."""
    start, found = extensions(body, SERVER_HELLO)
    if tuple(kind for kind, _ in found) != out_of:
        return body
    by_kind = dict(found)
    return _with_extensions(body, start, [(kind, by_kind[kind]) for kind in into])


# -- one DTLS transport's shaper ----------------------------------------------------------------


class Shaper:
    """What one DTLS transport sends and receives, shaped (see the module's docstring).
    `outgoing` takes what OpenSSL wrote and gives the datagrams to send; `incoming` takes
    a datagram received and gives what OpenSSL should read (b"" while it holds fragments).
    With a `key` (both ends unwall) the hellos are rewritten; `handshake_done` ends the
    restoring of hellos received."""

    def __init__(self, key: bytes | None = None, mtu: int = MTU) -> None:
        self.key = key
        self.mtu = mtu
        self.restoring = key is not None
        #: fragments of a ClientHello received, by offset, until it is whole
        self._held: dict[int, Fragment] = {}

    def handshake_done(self) -> None:
        self.restoring = False
        self._held.clear()

    def outgoing(self, data: bytes) -> list[bytes]:
        try:
            records = split_records(data)
        except DtlsWireError:
            return [data]  # not ours to judge: as OpenSSL wrote it, as aiortc sent it
        if any(record[0] == HANDSHAKE for record in records):  # else: after the handshake
            hello = [
                (i, f)
                for i, f in ((i, _fragment_or_none(r)) for i, r in enumerate(records))
                if f is not None and f.msg_type in (CLIENT_HELLO, SERVER_HELLO)
            ]
            if hello:
                rewritten = self._shape_hello([f for _, f in hello])
                for (i, _), new in zip(hello, rewritten, strict=True):
                    records[i] = new
        return pack_datagrams(records, self.mtu)

    def _shape_hello(self, fragments: list[Fragment]) -> list[bytes]:
        records = [f.record for f in fragments]
        first = fragments[0]
        kind = first.msg_type
        if any(f.msg_type != kind or f.message_seq != first.message_seq for f in fragments):
            return records  # not one hello: leave it
        if self.key is not None:
            try:
                if kind == CLIENT_HELLO:
                    message = reassemble(fragments)
                    if message is not None:
                        records = cut(fragments, permute_client_hello(message, self.key))
                elif len(fragments) == 1 and first.offset == 0 and len(first.body) == first.length:
                    # as the receiver restores it: a ServerHello whole in one fragment
                    body = reorder_server_hello(
                        first.body, CHROMIUM_SERVER_HELLO, OPENSSL_SERVER_HELLO
                    )
                    records = [first.with_body(body)]
            except DtlsWireError:
                records = [f.record for f in fragments]
        if kind == CLIENT_HELLO and first.message_seq == 0:  # the initial ClientHello only
            records = [r[:1] + DTLS_1_0 + r[3:] for r in records]
        return records

    def incoming(self, datagram: bytes) -> bytes:
        if not self.restoring or not datagram or datagram[0] != HANDSHAKE:
            return datagram
        try:
            records = split_records(datagram)
        except DtlsWireError:
            return datagram  # OpenSSL drops it
        out: list[bytes] = []
        for record in records:
            fragment = _fragment_or_none(record)
            if fragment is None or fragment.msg_type not in (CLIENT_HELLO, SERVER_HELLO):
                out.append(record)
            elif fragment.msg_type == SERVER_HELLO:
                out.append(self._restore_server_hello(fragment))
            else:
                out.extend(self._restore_client_hello(fragment))
        return b"".join(out)

    def _restore_server_hello(self, fragment: Fragment) -> bytes:
        if fragment.offset != 0 or len(fragment.body) != fragment.length:
            return fragment.record  # unwall's ServerHello is one fragment
        try:
            body = reorder_server_hello(fragment.body, OPENSSL_SERVER_HELLO, CHROMIUM_SERVER_HELLO)
        except DtlsWireError:
            return fragment.record
        return fragment.with_body(body)

    def _restore_client_hello(self, fragment: Fragment) -> list[bytes]:
        assert self.key is not None
        if fragment.message_seq > 1 or fragment.length > MAX_HELD_HELLO:
            return [fragment.record]  # not a hello unwall sent: OpenSSL judges it
        held = self._held
        if held and next(iter(held.values())).length != fragment.length:
            held.clear()  # another ClientHello: start again
        if fragment.offset not in held and len(held) >= MAX_HELD_FRAGMENTS:
            held.clear()
        held[fragment.offset] = fragment
        fragments = sorted(held.values(), key=lambda f: f.offset)
        if _covered(fragments) < fragment.length:
            return []
        message = reassemble(fragments)
        held.clear()
        if message is None:
            return [f.record for f in fragments]
        try:
            return cut(fragments, restore_client_hello(message, self.key))
        except DtlsWireError:
            return [f.record for f in fragments]


def _fragment_or_none(record: bytes) -> Fragment | None:
    try:
        return handshake_fragment(record)
    except DtlsWireError:
        return None


def _covered(fragments: list[Fragment]) -> int:
    """Bytes of the message the fragments (sorted by offset) cover from its start on."""
    end = 0
    for fragment in fragments:
        if fragment.offset > end:
            break
        end = max(end, fragment.offset + len(fragment.body))
    return end
