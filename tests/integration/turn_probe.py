"""A small TURN client for tests, from raw STUN messages: enough to ask a TURN server for an
allocation (UDP or TCP relay, RFC 8656 and RFC 6062; IPv4 or IPv6, RFC 6156), for
permissions and relayed connections to peers, and to refresh it, and to read its refusals.

aioice's TURN client hides its error responses and has no Connect (RFC 6062) or address
family; this one sends exactly one request at a time and returns whatever came back. The
long-term credential dance (401 with REALM and NONCE, 438 with a fresh NONCE) is done here.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

MAGIC_COOKIE = 0x2112A442

BINDING = 0x001
ALLOCATE = 0x003
REFRESH = 0x004
CREATE_PERMISSION = 0x008
CHANNEL_BIND = 0x009
CONNECT = 0x00A  # RFC 6062

USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
CHANNEL_NUMBER = 0x000C
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_ADDRESS_FAMILY = 0x0017  # RFC 6156
REQUESTED_TRANSPORT = 0x0019
CONNECTION_ID = 0x002A  # RFC 6062
FINGERPRINT = 0x8028

UDP = 17
TCP = 6

_SUCCESS = 0x0100
_ERROR = 0x0110


def _message_type(method: int, cls: int) -> int:
    """STUN's interleaved method and class bits (RFC 8489 section 5)."""
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | (cls & 0x0110)


def _pad(value: bytes) -> bytes:
    return value + bytes(-len(value) % 4)


def xor_address(address: str, port: int, transaction_id: bytes) -> bytes:
    ip = ipaddress.ip_address(address)
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ip.version == 4:
        xip = int(ip) ^ MAGIC_COOKIE
        return struct.pack("!BBHI", 0, 0x01, xport, xip)
    mask = int.from_bytes(struct.pack("!I", MAGIC_COOKIE) + transaction_id, "big")
    return struct.pack("!BBH", 0, 0x02, xport) + (int(ip) ^ mask).to_bytes(16, "big")


def parse_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    family, xport = value[1], struct.unpack("!H", value[2:4])[0]
    port = xport ^ (MAGIC_COOKIE >> 16)
    if family == 0x01:
        (xip,) = struct.unpack("!I", value[4:8])
        return str(ipaddress.IPv4Address(xip ^ MAGIC_COOKIE)), port
    mask = int.from_bytes(struct.pack("!I", MAGIC_COOKIE) + transaction_id, "big")
    return str(ipaddress.IPv6Address(int.from_bytes(value[4:20], "big") ^ mask)), port


def encode(
    method: int,
    cls: int,
    transaction_id: bytes,
    attributes: list[tuple[int, bytes]],
    key: bytes | None = None,
) -> bytes:
    body = b"".join(struct.pack("!HH", t, len(v)) + _pad(v) for t, v in attributes)

    def header(length: int) -> bytes:
        kind = _message_type(method, cls)
        return struct.pack("!HHI", kind, length, MAGIC_COOKIE) + transaction_id

    if key is not None:
        mac = hmac.new(key, header(len(body) + 24) + body, hashlib.sha1).digest()
        body += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
    crc = binascii.crc32(header(len(body) + 8) + body) ^ 0x5354554E
    body += struct.pack("!HHI", FINGERPRINT, 4, crc)
    return header(len(body)) + body


@dataclass
class Response:
    method: int
    success: bool
    transaction_id: bytes
    attributes: dict[int, bytes] = field(default_factory=dict)

    @property
    def error(self) -> tuple[int, str] | None:
        """(code, reason) of an error response; None for a success."""
        value = self.attributes.get(ERROR_CODE)
        if value is None:
            return None
        return value[2] * 100 + value[3], value[4:].decode("utf-8", "replace")

    @property
    def code(self) -> int:
        """200 for a success, else the error's code."""
        error = self.error
        return 200 if error is None else error[0]

    def address(self, attribute: int) -> tuple[str, int]:
        return parse_xor_address(self.attributes[attribute], self.transaction_id)


def decode(data: bytes) -> Response:
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != MAGIC_COOKIE:
        raise ValueError("not a STUN message")
    transaction_id = data[8:20]
    method = (kind & 0x000F) | ((kind & 0x00E0) >> 1) | ((kind & 0x3E00) >> 2)
    attributes: dict[int, bytes] = {}
    at = 20
    while at + 4 <= 20 + length:
        t, n = struct.unpack("!HH", data[at : at + 4])
        attributes.setdefault(t, data[at + 4 : at + 4 + n])
        at += 4 + n + (-n % 4)
    return Response(method, (kind & 0x0110) == _SUCCESS, transaction_id, attributes)


class TurnProbe:
    """One TURN client connection (UDP or TCP) to ``server``, blocking, one request at a
    time; with ``username`` and ``password``, long-term credentials (coturn's REST ones
    included)."""

    def __init__(
        self,
        server: tuple[str, int],
        username: str,
        password: str,
        transport: str = "udp",
        timeout: float = 5.0,
    ) -> None:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(family, kind)
        self.sock.settimeout(timeout)
        self.sock.connect(server)
        self.stream = transport == "tcp"
        self.username = username
        self.password = password
        self.realm: bytes | None = None
        self.nonce: bytes | None = None
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TurnProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _key(self) -> bytes:
        assert self.realm is not None
        text = f"{self.username}:{self.realm.decode()}:{self.password}"
        return hashlib.md5(text.encode()).digest()

    def _exchange(self, message: bytes, transaction_id: bytes) -> Response:
        self.sock.send(message)
        while True:
            data = self._receive()
            response = decode(data)
            if response.transaction_id == transaction_id:
                return response

    def _receive(self) -> bytes:
        if not self.stream:
            return self.sock.recv(65535)
        while True:
            if len(self._buffer) >= 20:
                length = 20 + struct.unpack("!H", self._buffer[2:4])[0]
                if len(self._buffer) >= length:
                    data, self._buffer = self._buffer[:length], self._buffer[length:]
                    return data
            chunk = self.sock.recv(65535)
            if not chunk:
                raise ConnectionError("the TURN server closed the connection")
            self._buffer += chunk

    def request(self, method: int, attributes: list[tuple[int, bytes]]) -> Response:
        """Send one request with the credentials (learning REALM and NONCE from a 401 or a
        438 and trying again once); return the final response."""
        response: Response | None = None
        for _ in range(3):
            transaction_id = os.urandom(12)
            attrs = list(attributes)
            key = None
            if self.realm is not None and self.nonce is not None:
                attrs += [
                    (USERNAME, self.username.encode()),
                    (REALM, self.realm),
                    (NONCE, self.nonce),
                ]
                key = self._key()
            response = self._exchange(encode(method, 0, transaction_id, attrs, key), transaction_id)
            code = response.code
            if code in (401, 438) and NONCE in response.attributes:
                retry = code == 438 or self.nonce is None or key is None
                self.nonce = response.attributes[NONCE]
                self.realm = response.attributes.get(REALM, self.realm)
                if retry:
                    continue
            return response
        assert response is not None
        return response

    def allocate(self, transport: int = UDP, ipv6: bool = False, lifetime: int = 600) -> Response:
        attributes = [
            (REQUESTED_TRANSPORT, bytes([transport, 0, 0, 0])),
            (LIFETIME, struct.pack("!I", lifetime)),
        ]
        if ipv6:
            attributes.append((REQUESTED_ADDRESS_FAMILY, bytes([0x02, 0, 0, 0])))
        return self.request(ALLOCATE, attributes)

    def refresh(self, lifetime: int = 600) -> Response:
        return self.request(REFRESH, [(LIFETIME, struct.pack("!I", lifetime))])

    def _peer_request(
        self, method: int, address: str, port: int, extra: list[tuple[int, bytes]] | None = None
    ) -> Response:
        """A request whose only own attribute is XOR-PEER-ADDRESS (the transaction id goes
        into its IPv6 form, so each attempt encodes it afresh)."""
        response: Response | None = None
        for _ in range(3):
            transaction_id = os.urandom(12)
            attrs = [(XOR_PEER_ADDRESS, xor_address(address, port, transaction_id))]
            attrs += extra or []
            key = None
            if self.realm is not None and self.nonce is not None:
                attrs += [
                    (USERNAME, self.username.encode()),
                    (REALM, self.realm),
                    (NONCE, self.nonce),
                ]
                key = self._key()
            response = self._exchange(encode(method, 0, transaction_id, attrs, key), transaction_id)
            if response.code == 438 and NONCE in response.attributes:
                self.nonce = response.attributes[NONCE]
                continue
            return response
        assert response is not None
        return response

    def create_permission(self, address: str) -> Response:
        return self._peer_request(CREATE_PERMISSION, address, 0)

    def channel_bind(self, address: str, port: int, channel: int = 0x4000) -> Response:
        number = (CHANNEL_NUMBER, struct.pack("!HH", channel, 0))
        return self._peer_request(CHANNEL_BIND, address, port, [number])

    def connect(self, address: str, port: int) -> Response:
        """RFC 6062 Connect: a TCP connection from a TCP allocation to a peer."""
        return self._peer_request(CONNECT, address, port)
