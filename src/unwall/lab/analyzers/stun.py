"""STUN over UDP (RFC 8489): the messages ICE and TURN exchange before a WebRTC call.

A binding request with a USERNAME of the form "ufrag:ufrag" and an ICE-CONTROLLING or
ICE-CONTROLLED attribute is an ICE connectivity check (RFC 8445): a WebRTC session is
starting on this flow.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .analyzer import FlowAnalyzer
from .reader import ByteReader, Malformed

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_SIZE = 20

CLASS_NAMES = {0: "request", 1: "indication", 2: "success-response", 3: "error-response"}
METHOD_NAMES = {
    0x001: "binding",
    0x003: "allocate",
    0x004: "refresh",
    0x006: "send",
    0x007: "data",
    0x008: "create-permission",
    0x009: "channel-bind",
}

ATTR_CHANGE_REQUEST = 0x0003
ATTR_USERNAME = 0x0006
ATTR_ERROR_CODE = 0x0009
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_SOFTWARE = 0x8022
ATTR_ICE_CONTROLLED = 0x8029
ATTR_ICE_CONTROLLING = 0x802A
ATTR_USE_CANDIDATE = 0x0025
ATTR_PRIORITY = 0x0024

#: names for the attributes ICE agents send (RFC 8489, RFC 8445, RFC 5245bis drafts, and
#: Chromium's own GOOG-* ones)
ATTRIBUTE_NAMES = {
    0x0001: "MAPPED-ADDRESS", 0x0003: "CHANGE-REQUEST", 0x0006: "USERNAME",
    0x0008: "MESSAGE-INTEGRITY", 0x0009: "ERROR-CODE", 0x000A: "UNKNOWN-ATTRIBUTES",
    0x0014: "REALM", 0x0015: "NONCE",
    0x001C: "MESSAGE-INTEGRITY-SHA256", 0x001D: "PASSWORD-ALGORITHM", 0x001E: "USERHASH",
    0x0020: "XOR-MAPPED-ADDRESS", 0x0024: "PRIORITY", 0x0025: "USE-CANDIDATE",
    0x8022: "SOFTWARE", 0x8023: "ALTERNATE-SERVER", 0x8028: "FINGERPRINT",
    0x8029: "ICE-CONTROLLED", 0x802A: "ICE-CONTROLLING", 0x802B: "RESPONSE-ORIGIN",
    0x802C: "OTHER-ADDRESS", 0xC057: "GOOG-NETWORK-INFO", 0xC058: "GOOG-LAST-ICE-CHECK-RECEIVED",
    0xC059: "GOOG-MISC-INFO", 0xC060: "GOOG-MESSAGE-INTEGRITY-32",
}  # fmt: skip


def attribute_name(attr_type: int) -> str:
    return ATTRIBUTE_NAMES.get(attr_type, f"0x{attr_type:04x}")


def ice_check_fingerprint(message: StunMessage) -> str | None:
    """What an ICE agent's connectivity checks look like, whichever its role: the
    attributes of a binding request with a USERNAME, in order, with ICE-CONTROLLING and
    ICE-CONTROLLED both written ICE-ROLE and USE-CANDIDATE (sent on some checks only) left
    out. None for any other message."""
    if message.kind != "binding-request" or message.attribute(ATTR_USERNAME) is None:
        return None
    names = []
    for attr_type, _value in message.attributes:
        if attr_type == ATTR_USE_CANDIDATE:
            continue
        if attr_type in (ATTR_ICE_CONTROLLING, ATTR_ICE_CONTROLLED):
            names.append("ICE-ROLE")
        else:
            names.append(attribute_name(attr_type))
    return ",".join(names)


@dataclass(frozen=True)
class StunMessage:
    method: int
    message_class: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...]

    @property
    def kind(self) -> str:
        """ "binding-request", "allocate-error-response", ..."""
        method = METHOD_NAMES.get(self.method, f"method-0x{self.method:03x}")
        return f"{method}-{CLASS_NAMES[self.message_class]}"

    def attribute(self, attr_type: int) -> bytes | None:
        return next((value for t, value in self.attributes if t == attr_type), None)


def parse_stun(datagram: bytes) -> StunMessage:
    """One STUN message filling the whole datagram; `Malformed` if it is not one."""
    if len(datagram) < HEADER_SIZE or datagram[0] & 0xC0 or datagram[4:8] != _COOKIE_BYTES:
        raise Malformed("no STUN header with the magic cookie")
    reader = ByteReader(datagram)
    message_type = reader.u16()
    length = reader.u16()
    if length % 4 or HEADER_SIZE + length != len(datagram):
        raise Malformed("STUN length does not match the datagram")
    reader.skip(4)
    transaction_id = reader.take(12)
    attributes = []
    while not reader.at_end():
        attr_type = reader.u16()
        value = reader.vector(2)
        reader.skip(-len(value) % 4)  # values are padded to 4 bytes
        attributes.append((attr_type, value))
    method = (
        (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    )
    message_class = ((message_type >> 7) & 0x02) | ((message_type >> 4) & 0x01)
    return StunMessage(method, message_class, transaction_id, tuple(attributes))


def ice_priority(message: StunMessage) -> str | None:
    """An ICE check's PRIORITY (RFC 8445 5.1.2.1) in its parts: the type preference (110
    for the peer-reflexive priority a check carries), the local preference (each agent
    computes its own: aioice 65535, Chromium 30 for IPv4) and the component."""
    value = message.attribute(ATTR_PRIORITY)
    if value is None or len(value) != 4:
        return None
    priority = int.from_bytes(value, "big")
    local, component = (priority >> 8) & 0xFFFF, 256 - (priority & 0xFF)
    return f"type {priority >> 24} local {local} component {component}"


def describe_stun(message: StunMessage) -> list[tuple[str, str]]:
    pairs = [(message.kind, "magic-cookie"), ("transaction-id", message.transaction_id.hex())]
    check = ice_check_fingerprint(message)
    if check is not None:
        pairs.append(("ice-check", check))
        priority = ice_priority(message)
        if priority is not None:
            pairs.append(("ice-priority", priority))
    for attr_type, value in message.attributes:
        if attr_type == ATTR_USERNAME:
            pairs.append(("username", value.decode("utf-8", "backslashreplace")))
        elif attr_type == ATTR_SOFTWARE:
            pairs.append(("software", value.decode("utf-8", "backslashreplace")))
        elif attr_type == ATTR_ICE_CONTROLLING:
            pairs.append(("ice-role", "controlling"))
        elif attr_type == ATTR_ICE_CONTROLLED:
            pairs.append(("ice-role", "controlled"))
        elif attr_type == ATTR_XOR_MAPPED_ADDRESS:
            pairs.append(("mapped-address", _xor_address(value, message.transaction_id)))
        elif attr_type == ATTR_CHANGE_REQUEST and message.kind == "binding-request":
            pairs.append(("change-request", _change_request(value)))
        elif attr_type == ATTR_ERROR_CODE and len(value) >= 4:
            reason = value[4:].decode("utf-8", "backslashreplace")
            pairs.append(("error-code", f"{(value[2] & 0x07) * 100 + value[3]} {reason}".strip()))
    return pairs


def _change_request(value: bytes) -> str:
    """RFC 5780's CHANGE-REQUEST flags: what the client asks the server to answer from
    ("ip", "port", "ip+port", or "none"). A NAT-behaviour check sends it; no browser does."""
    flags = value[3] if len(value) == 4 else 0
    changed = [name for bit, name in ((0x04, "ip"), (0x02, "port")) if flags & bit]
    return "+".join(changed) or "none"


def _xor_address(value: bytes, transaction_id: bytes) -> str:
    """XOR-MAPPED-ADDRESS as "198.51.100.10:54321" or "[2001:db8::1]:54321"."""
    reader = ByteReader(value)
    reader.skip(1)
    family = reader.u8()
    port = reader.u16() ^ (MAGIC_COOKIE >> 16)
    if family == 0x01:
        address = reader.u32() ^ MAGIC_COOKIE
        return f"{ipaddress.IPv4Address(address)}:{port}"
    if family == 0x02:
        mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
        address = reader.uint(16) ^ mask
        return f"[{ipaddress.IPv6Address(address)}]:{port}"
    raise Malformed(f"address family {family}")


class StunAnalyzer(FlowAnalyzer):
    """Reports STUN messages in either direction of a UDP flow.

    Findings per message: its kind as the key with "magic-cookie" as the value (e.g.
    `("binding-request", "magic-cookie")`), `transaction-id`, and from the attributes
    `username`, `software`, `ice-role`, `mapped-address`, `error-code`, `change-request`
    (RFC 5780, on a binding request: "ip", "port", "ip+port" or "none"), and for an ICE
    connectivity check `ice-check` (see `ice_check_fingerprint`) and `ice-priority`. If
    the flow's first datagram is not STUN the analyzer gives up; after that it skips the
    DTLS, SRTP and other datagrams that share a WebRTC flow with STUN (RFC 7983).
    """

    name = "stun"

    def __init__(self) -> None:
        super().__init__()
        self._seen = False

    def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
        try:
            message = parse_stun(payload)
            pairs = describe_stun(message)
        except Malformed:
            if not self._seen:
                raise
            return []
        self._seen = True
        return pairs
