"""SOCKS5 (RFC 1928) server side of the client's local proxy, as a sans-IO state machine.

Why sans-IO: this parser is the part of the client that meets arbitrary applications, so it
has to be testable with captured bytes and no sockets. As with h11 and aioquic, the object
only turns bytes into events and events into bytes; the asyncio shell moves them.

Why this subset: the client carries TCP streams and resolves nothing itself (protocol.md
section 5: names are resolved by the egress), so it offers only "no authentication" (method
0x00) and only CONNECT. A domain name is handed on as given, which makes every client behave
like ``socks5h`` whatever it asked for.

Reply codes where RFC 1928 leaves the choice to us:

* a malformed request (version byte not 5, non-zero RSV, empty domain name, port 0) gets
  GENERAL_FAILURE (0x01), the code the egress would send for a bad stream header;
* a domain name that is not an ASCII (IDNA A-label) host name gets HOST_UNREACHABLE (0x04):
  such a name can never resolve, and protocol.md maps "name does not resolve" to 0x04, so the
  application sees the same answer it would get from the egress;
* BIND, UDP ASSOCIATE and unknown commands get COMMAND_NOT_SUPPORTED (0x07) and unknown
  address types ADDRESS_TYPE_NOT_SUPPORTED (0x08), as the RFC asks.

A bad greeting (not version 5, or no acceptable method) has no reply code at all: the RFC
only lets the server answer ``05 FF`` to a greeting, and only when the greeting was SOCKS5.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ConnectRequest",
    "ReplyCode",
    "Socks5Error",
    "Socks5ServerConnection",
    "encode_reply",
    "is_valid_host_name",
    "reply_for_status",
]

SOCKS_VERSION = 0x05
METHOD_NO_AUTHENTICATION = 0x00
METHOD_NO_ACCEPTABLE = 0xFF
COMMAND_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

_COMMAND_NAMES = {0x02: "BIND", 0x03: "UDP ASSOCIATE"}


class ReplyCode(enum.IntEnum):
    """The REP field of a SOCKS5 reply (RFC 1928 section 6)."""

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


AddressType = Literal["ipv4", "ipv6", "domain"]


@dataclass(frozen=True)
class ConnectRequest:
    """An application asks for a TCP connection to ``host``:``port``.

    ``host`` is the dotted IPv4 string, the compressed IPv6 string, or the domain name exactly
    as the application sent it (never resolved here).
    """

    host: str
    port: int
    address_type: AddressType


class Socks5Error(Exception):
    """The application sent something this proxy cannot serve.

    ``reply`` is the SOCKS5 reply code already queued in ``data_to_send()``, or None when the
    protocol allows no reply (a bad greeting; the ``05 FF`` method rejection, where it
    applies, is queued nonetheless). Either way the shell sends what is queued and closes.
    """

    def __init__(self, message: str, reply: ReplyCode | None) -> None:
        super().__init__(message)
        self.message = message
        self.reply = reply


# protocol.md section 5, stream reply status -> SOCKS5 reply. bad_header (7) has no SOCKS5
# counterpart, so it is a general failure.
_REPLY_FOR_STATUS = {
    0: ReplyCode.SUCCEEDED,
    1: ReplyCode.GENERAL_FAILURE,
    2: ReplyCode.NOT_ALLOWED,
    3: ReplyCode.NETWORK_UNREACHABLE,
    4: ReplyCode.HOST_UNREACHABLE,
    5: ReplyCode.CONNECTION_REFUSED,
    6: ReplyCode.TTL_EXPIRED,
    7: ReplyCode.GENERAL_FAILURE,
    8: ReplyCode.GENERAL_FAILURE,
}


def reply_for_status(status: int) -> ReplyCode:
    """The SOCKS5 reply for a stream-reply status from the egress.

    A status this version does not know (a newer egress) is a general failure rather than an
    exception, so that the application still gets an answer.
    """
    return _REPLY_FOR_STATUS.get(status, ReplyCode.GENERAL_FAILURE)


_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


def is_valid_host_name(name: str) -> bool:
    """Whether ``name`` may go to the egress as a name to resolve.

    Accepts ASCII host names (IDNA A-labels; underscores allowed because real hosts use
    them), 1-255 characters, an optional trailing dot, and dotted-quad IPv4 literals.
    Rejects an all-numeric last label unless the whole name is a valid IPv4 address, so that
    forms like ``010.1.1.1`` or ``127.1`` never reach a resolver that reads them as octal or
    shorthand addresses.
    """
    if not 1 <= len(name) <= 255 or not name.isascii():
        return False
    labels = (name[:-1] if name.endswith(".") else name).split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    if labels[-1].isdigit():
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return False
    return True


def encode_reply(code: ReplyCode, bind_host: str = "0.0.0.0", bind_port: int = 0) -> bytes:
    """A SOCKS5 reply: ``05 REP 00 ATYP BND.ADDR BND.PORT``.

    The bind address is an IP literal only: a reply never needs to carry a name here, and
    refusing one catches a shell that passes the destination name by mistake.
    """
    if not 0 <= bind_port <= 0xFFFF:
        raise ValueError(f"bind port {bind_port} is not in 0..65535")
    address = ipaddress.ip_address(bind_host)
    atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    return bytes((SOCKS_VERSION, code, 0x00, atyp)) + address.packed + bind_port.to_bytes(2, "big")


class _State(enum.Enum):
    GREETING = enum.auto()
    REQUEST = enum.auto()
    AWAITING_REPLY = enum.auto()
    REPLIED = enum.auto()
    FAILED = enum.auto()


class Socks5ServerConnection:
    """One application connection to the SOCKS5 port, from greeting to the CONNECT reply.

    Feed bytes with ``receive_data`` and call ``next_event`` until it returns the
    ``ConnectRequest`` (None means it needs more bytes); write ``data_to_send()`` to the
    application after every call. Once the stream to the egress is answered, write
    ``reply(...)``, then ``trailing_data`` goes to the stream and the shell stops using this
    object: from there on bytes are copied unchanged.
    """

    def __init__(self) -> None:
        self._state = _State.GREETING
        self._buffer = bytearray()
        self._outgoing = bytearray()
        self._error: Socks5Error | None = None

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the application socket."""
        if self._state is not _State.FAILED:
            # After a failure nothing more is parsed, so buffering would only grow memory.
            self._buffer += data

    def next_event(self) -> ConnectRequest | None:
        """The CONNECT request once it is complete, else None.

        Raises Socks5Error on malformed input, and again on every later call.
        """
        if self._error is not None:
            raise self._error
        if self._state is _State.GREETING and not self._parse_greeting():
            return None
        if self._state is _State.REQUEST:
            return self._parse_request()
        return None

    def data_to_send(self) -> bytes:
        """Bytes to write to the application (method selection, error replies); drains them."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def reply(self, code: ReplyCode, bind_host: str = "0.0.0.0", bind_port: int = 0) -> bytes:
        """The one reply to the CONNECT request, to write to the application."""
        if self._state is not _State.AWAITING_REPLY:
            raise RuntimeError(
                "reply() answers a CONNECT request exactly once, after next_event() returned it"
            )
        self._state = _State.REPLIED
        return encode_reply(code, bind_host, bind_port)

    @property
    def trailing_data(self) -> bytes:
        """Bytes the application sent after its CONNECT request, to forward unchanged."""
        if self._state in (_State.AWAITING_REPLY, _State.REPLIED):
            return bytes(self._buffer)
        return b""

    def _fail(self, message: str, reply: ReplyCode | None) -> Socks5Error:
        if reply is not None:
            self._outgoing += encode_reply(reply)
        self._state = _State.FAILED
        self._buffer.clear()
        self._error = Socks5Error(message, reply)
        return self._error

    def _reject_methods(self, message: str) -> Socks5Error:
        self._outgoing += bytes((SOCKS_VERSION, METHOD_NO_ACCEPTABLE))
        return self._fail(message, None)

    def _parse_greeting(self) -> bool:
        """Consume the greeting; True once it is done and the method is chosen."""
        buffer = self._buffer
        if len(buffer) < 2:
            return False
        if buffer[0] != SOCKS_VERSION:
            hint = " (SOCKS4 is not supported)" if buffer[0] == 0x04 else ""
            raise self._fail(
                f"not a SOCKS5 greeting: version byte 0x{buffer[0]:02x}{hint}; "
                "configure the application for SOCKS5",
                None,
            )
        method_count = buffer[1]
        if method_count == 0:
            raise self._reject_methods("the SOCKS5 greeting offers no authentication method")
        if len(buffer) < 2 + method_count:
            return False
        methods = bytes(buffer[2 : 2 + method_count])
        del buffer[: 2 + method_count]
        if METHOD_NO_AUTHENTICATION not in methods:
            offered = ", ".join(f"0x{method:02x}" for method in methods)
            raise self._reject_methods(
                f"the application offers SOCKS5 methods {offered} but this proxy needs "
                "no authentication (0x00); remove the proxy user name and password"
            )
        self._outgoing += bytes((SOCKS_VERSION, METHOD_NO_AUTHENTICATION))
        self._state = _State.REQUEST
        return True

    def _parse_request(self) -> ConnectRequest | None:
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        version, command, reserved, atyp = buffer[:4]
        if version != SOCKS_VERSION:
            raise self._fail(
                f"SOCKS5 request has version byte 0x{version:02x}", ReplyCode.GENERAL_FAILURE
            )
        if command != COMMAND_CONNECT:
            name = _COMMAND_NAMES.get(command, f"0x{command:02x}")
            raise self._fail(
                f"SOCKS5 command {name} is not supported; only CONNECT is",
                ReplyCode.COMMAND_NOT_SUPPORTED,
            )
        if reserved != 0x00:
            raise self._fail(
                f"SOCKS5 request has reserved byte 0x{reserved:02x}, not 0x00",
                ReplyCode.GENERAL_FAILURE,
            )
        if atyp == ATYP_IPV4:
            address_end = 4 + 4
        elif atyp == ATYP_IPV6:
            address_end = 4 + 16
        elif atyp == ATYP_DOMAIN:
            if len(buffer) < 5:
                return None
            if buffer[4] == 0:
                raise self._fail(
                    "SOCKS5 request has an empty domain name", ReplyCode.GENERAL_FAILURE
                )
            address_end = 5 + buffer[4]
        else:
            raise self._fail(
                f"SOCKS5 address type 0x{atyp:02x} is not supported",
                ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
            )
        if len(buffer) < address_end + 2:
            return None
        request = self._decode_destination(
            atyp,
            bytes(buffer[4:address_end]),
            int.from_bytes(buffer[address_end : address_end + 2], "big"),
        )
        del buffer[: address_end + 2]
        self._state = _State.AWAITING_REPLY
        return request

    def _decode_destination(self, atyp: int, address: bytes, port: int) -> ConnectRequest:
        request: ConnectRequest
        if atyp == ATYP_IPV4:
            request = ConnectRequest(str(ipaddress.IPv4Address(address)), port, "ipv4")
        elif atyp == ATYP_IPV6:
            request = ConnectRequest(str(ipaddress.IPv6Address(address)), port, "ipv6")
        else:
            name = address[1:]
            if not name.isascii() or not is_valid_host_name(name.decode("ascii")):
                raise self._fail(
                    f"SOCKS5 domain name {name!r} is not a valid ASCII host name "
                    "(international names must be sent in IDNA form, xn--...)",
                    ReplyCode.HOST_UNREACHABLE,
                )
            request = ConnectRequest(name.decode("ascii"), port, "domain")
        if port == 0:
            raise self._fail("SOCKS5 request asks for port 0", ReplyCode.GENERAL_FAILURE)
        return request
