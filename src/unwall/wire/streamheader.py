"""The stream-open header and the stream reply (docs/protocol.md, section 5).

Every proxied TCP connection is one QUIC stream. The client's first bytes on the stream
name the destination (:class:`StreamTarget`); the egress's first bytes in the reverse
direction say whether it connected (:class:`StreamReply`). Everything after those bytes is
the proxied payload.

This module is sans-IO: the encoders return bytes, and the decoders are fed whatever bytes
arrived (:meth:`receive_data`) and asked for a result (:meth:`next_event`), which is
``None`` until the header is complete. Malformed input raises :class:`HeaderError` as soon
as the offending byte arrives, so a peer sending garbage is not waited on.
"""

from __future__ import annotations

import enum
import ipaddress
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, TypeVar

try:
    import idna

    _HAVE_IDNA_PACKAGE = True
except ImportError:  # pragma: no cover - the stdlib codec is the fallback
    _HAVE_IDNA_PACKAGE = False

from unwall.wire.ticket import SECRET_SIZE, Voucher

VERSION = 1

MAX_NAME_LENGTH = 255
MAX_LABEL_LENGTH = 63
MAX_REASON_LENGTH = 255
# version, address type, name length, name, port (a voucher: ticket and secret)
MAX_HEADER_SIZE = 1 + 1 + 1 + 255 + SECRET_SIZE
# version, status, reason length, reason
MAX_REPLY_SIZE = 1 + 1 + 1 + MAX_REASON_LENGTH

# Letters, digits, hyphen and, because real host names use it, underscore.
_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class AddressType(enum.IntEnum):
    IPV4 = 1
    DOMAIN = 3
    IPV6 = 4
    #: not a destination: the client's voucher for a volunteer path (ticket and secret,
    #: unwall.wire.ticket); the egress answers it with a reply and ends the stream
    VOUCHER = 0x7F
    #: not a destination: a sealed broker request (unwall.wire.sealed) follows, to the end
    #: of the stream; the egress passes it to its broker and answers with a reply and the
    #: broker's sealed response (protocol.md §5)
    BROKER = 0x7E


class StreamStatus(enum.IntEnum):
    OK = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TIMED_OUT = 6
    BAD_HEADER = 7
    BUSY = 8  # the egress is at a limit (its connections, or this session's): try later


class HeaderError(ValueError):
    """The peer sent a malformed stream-open header or stream reply."""


@dataclass(frozen=True)
class StreamTarget:
    """Where a stream should be connected: an IP literal or a domain name, and a port.

    ``host`` is an IPv4 or IPv6 literal without brackets, or a domain name. Decoded
    targets always carry canonical IP literals or ASCII (IDNA) names.
    """

    host: str
    port: int

    def encode(self) -> bytes:
        """Return the stream-open header; raise ValueError if it cannot be expressed."""
        port = _encode_port(self.port)
        address_type, address = _encode_host(self.host)
        if address_type is AddressType.DOMAIN:
            return bytes((VERSION, address_type, len(address))) + address + port
        return bytes((VERSION, address_type)) + address + port


def encode_voucher(voucher: Voucher) -> bytes:
    """The stream-open header of a voucher stream: ticket length, ticket, secret."""
    raw = voucher.ticket.encode("ascii")
    if not 1 <= len(raw) <= 255 or len(voucher.secret) != SECRET_SIZE:
        raise ValueError("a voucher is a ticket of 1-255 characters and a 32-byte secret")
    return bytes((VERSION, AddressType.VOUCHER, len(raw))) + raw + voucher.secret


@dataclass(frozen=True)
class BrokerRequest:
    """The stream-open header of a stream that carries a sealed request to the broker."""


def encode_broker_request() -> bytes:
    """The stream-open header of a broker stream (the sealed request follows it)."""
    return bytes((VERSION, AddressType.BROKER))


@dataclass(frozen=True)
class StreamReply:
    """The egress's answer to a stream-open header; ``reason`` is text for logs."""

    status: StreamStatus
    reason: str = ""

    def encode(self) -> bytes:
        """Return the reply; the reason is cut to 255 UTF-8 bytes on a character boundary."""
        status = StreamStatus(self.status)
        reason = _truncate_utf8(self.reason, MAX_REASON_LENGTH)
        return bytes((VERSION, status, len(reason))) + reason


_EventT = TypeVar("_EventT")


class _IncrementalDecoder(ABC, Generic[_EventT]):
    """Buffers bytes until one header is complete, then hands the rest on as payload."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._trailing = bytearray()
        self._done = False
        self._error: HeaderError | None = None

    def receive_data(self, data: bytes) -> None:
        if self._done:
            self._trailing += data
        else:
            self._buffer += data

    def next_event(self) -> _EventT | None:
        """Return the decoded header once, or None while more bytes are needed.

        Raises HeaderError on malformed input, and again on every later call.
        """
        if self._error is not None:
            raise HeaderError(str(self._error))
        if self._done:
            return None
        try:
            parsed = self._parse(self._buffer)
        except HeaderError as exc:
            self._error = exc
            raise
        if parsed is None:
            return None
        event, size = parsed
        self._trailing = self._buffer[size:]
        self._buffer = bytearray()
        self._done = True
        return event

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the header: the start of the stream's payload."""
        return bytes(self._trailing)

    @abstractmethod
    def _parse(self, buffer: bytearray) -> tuple[_EventT, int] | None:
        """Return the event and its size in bytes, None if incomplete; raise HeaderError."""


class StreamTargetDecoder(_IncrementalDecoder[StreamTarget | Voucher | BrokerRequest]):
    """Decodes the stream-open header at the egress: a destination, a voucher, or a
    broker request."""

    def _parse(
        self, buffer: bytearray
    ) -> tuple[StreamTarget | Voucher | BrokerRequest, int] | None:
        if len(buffer) < 1:
            return None
        _check_version(buffer[0], "stream-open header")
        if len(buffer) < 2:
            return None
        try:
            address_type = AddressType(buffer[1])
        except ValueError:
            raise HeaderError(
                f"stream-open header has unknown address type 0x{buffer[1]:02x}; "
                "expected 0x01 (IPv4), 0x03 (domain name) or 0x04 (IPv6)"
            ) from None
        if address_type is AddressType.VOUCHER:
            return _parse_voucher(buffer)
        if address_type is AddressType.BROKER:
            return BrokerRequest(), 2
        if address_type is AddressType.DOMAIN:
            if len(buffer) < 3:
                return None
            if buffer[2] == 0:
                raise HeaderError("stream-open header has a zero-length domain name")
            start, length = 3, buffer[2]
        else:
            start, length = 2, 4 if address_type is AddressType.IPV4 else 16
        if len(buffer) < start + length:
            return None
        # Check the address before the port arrives, so a bad name fails without waiting.
        host = _decode_host(address_type, bytes(buffer[start : start + length]))
        end = start + length + 2
        if len(buffer) < end:
            return None
        port = int.from_bytes(buffer[end - 2 : end], "big")
        if port == 0:
            raise HeaderError("stream-open header asks for port 0, which is not a TCP port")
        return StreamTarget(host, port), end


def _parse_voucher(buffer: bytearray) -> tuple[Voucher, int] | None:
    if len(buffer) < 3:
        return None
    if buffer[2] == 0:
        raise HeaderError("a voucher with an empty ticket")
    end = 3 + buffer[2] + SECRET_SIZE
    if len(buffer) < end:
        return None
    try:
        text = bytes(buffer[3 : 3 + buffer[2]]).decode("ascii")
    except UnicodeDecodeError:
        raise HeaderError("a voucher's ticket is not ASCII") from None
    return Voucher(text, bytes(buffer[end - SECRET_SIZE : end])), end


class StreamReplyDecoder(_IncrementalDecoder[StreamReply]):
    """Decodes the stream reply at the client.

    The reason is only for logs, so bytes that are not UTF-8 are replaced rather than
    rejected: a garbled log line must not turn a successful connection into a failure.
    """

    def _parse(self, buffer: bytearray) -> tuple[StreamReply, int] | None:
        if len(buffer) < 1:
            return None
        _check_version(buffer[0], "stream reply")
        if len(buffer) < 2:
            return None
        try:
            status = StreamStatus(buffer[1])
        except ValueError:
            raise HeaderError(
                f"stream reply has unknown status {buffer[1]}; known statuses are 0-8"
            ) from None
        if len(buffer) < 3:
            return None
        end = 3 + buffer[2]
        if len(buffer) < end:
            return None
        reason = bytes(buffer[3:end]).decode("utf-8", errors="replace")
        return StreamReply(status, reason), end


def _check_version(version: int, what: str) -> None:
    if version != VERSION:
        raise HeaderError(
            f"{what} has version {version}, but this side speaks version {VERSION}; "
            "client and egress need the same unwall protocol version"
        )


def _encode_port(port: int) -> bytes:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port {port!r} is not a TCP port; use a number from 1 to 65535")
    return port.to_bytes(2, "big")


def _encode_host(host: str) -> tuple[AddressType, bytes]:
    if not isinstance(host, str):
        raise ValueError(f"host {host!r} is not a string")
    if host.startswith("["):
        raise ValueError(f"host {host!r}: write IPv6 addresses without brackets, like ::1")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv4Address):
            return AddressType.IPV4, address.packed
        if address.scope_id is not None:
            raise ValueError(
                f"host {host!r}: an IPv6 scope (the part after %) only means something "
                "on this machine and cannot be sent to the egress"
            )
        return AddressType.IPV6, address.packed
    name = _to_ascii_name(host)
    problem = _name_problem(name)
    if problem is not None:
        raise ValueError(f"host name {host!r} {problem}")
    return AddressType.DOMAIN, name


def _to_ascii_name(host: str) -> bytes:
    if host.isascii():
        return host.encode("ascii")
    try:
        if _HAVE_IDNA_PACKAGE:
            return idna.encode(host, uts46=True)
        return host.encode("idna")  # pragma: no cover
    except UnicodeError as exc:
        raise ValueError(
            f"host name {host!r} is not a valid internationalized name: {exc}"
        ) from exc


def _decode_host(address_type: AddressType, raw: bytes) -> str:
    if address_type is AddressType.IPV4:
        return str(ipaddress.IPv4Address(raw))
    if address_type is AddressType.IPV6:
        return str(ipaddress.IPv6Address(raw))
    problem = _name_problem(raw)
    if problem is not None:
        raise HeaderError(f"stream-open header's domain name {problem}")
    return raw.decode("ascii")


def _name_problem(name: bytes) -> str | None:
    """Say what is wrong with an ASCII host name, or return None if it is acceptable."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} bytes long; the limit is {MAX_NAME_LENGTH}"
    for byte in name:
        if byte >= 0x80:
            return f"contains the non-ASCII byte 0x{byte:02x}; names must be IDNA-encoded"
        if byte not in _NAME_BYTES and byte != ord("."):
            return (
                f"contains {chr(byte)!r}; host names may contain only letters, digits, "
                "'-', '_' and '.'"
            )
    labels = name.removesuffix(b".").split(b".")
    if any(not label for label in labels):
        return "has an empty label (two dots in a row, or a leading dot)"
    if any(len(label) > MAX_LABEL_LENGTH for label in labels):
        return f"has a label longer than {MAX_LABEL_LENGTH} bytes"
    return None


def _truncate_utf8(text: str, limit: int) -> bytes:
    # A lone surrogate cannot be encoded; the reason is for logs, so replace it.
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return data
    cut = limit
    # Back off over continuation bytes (0b10xxxxxx) to the start of the cut character.
    while cut > 0 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return data[:cut]
