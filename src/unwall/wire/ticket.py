"""Tickets: the broker's word to an egress that a session is one it matched (protocol.md §3.1).

An egress serves only clients a broker of its operator vouched for. The broker and the
egress share one secret (`broker_secret`); for each offer it hands to a volunteer the
broker mints a *ticket* under a key derived from it:

    ticket = base64url(body | mac)
    body   = version (1) | issued (u32, Unix s) | commitment (32 B) | len (1) | offer id
    mac    = HMAC-SHA256(key, "unwall ticket" NUL body), first 16 bytes

`commitment` is SHA-256 of a secret that only the client knows (it sends the commitment
with its offer, and the secret only inside its end-to-end encrypted QUIC session). So the
ticket alone, which the volunteer also sees, opens a relay but proves nothing; the client
proves it holds that offer by showing the secret (`Voucher`). A volunteer that takes an
offer and makes its own session with the ticket gets no stream served and no credit.

Pure functions, no I/O; the clock is an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

VERSION: Final = 1
SECRET_SIZE: Final = 32
COMMITMENT_SIZE: Final = 32
MAC_SIZE: Final = 16
MAX_OFFER_ID: Final = 128
#: what a ticket may be as text (the largest made is 243 characters: base64url of 1 + 4 +
#: 32 + 1 + 128 + 16 bytes); a voucher carries it behind a one-byte length
MAX_TICKET_TEXT: Final = 255
#: A relay may open with a ticket this long after it was minted (the offer is answered
#: within seconds, and the volunteer opens its relay as the call connects) ...
RELAY_WINDOW: Final = 120.0
#: ... and a client may prove an offer this long after (a standby path can wait for hours
#: before it carries; the secret never leaves the client, so age is no risk here).
PROOF_WINDOW: Final = 86400.0
#: clocks of broker and egress may differ this much
CLOCK_SKEW: Final = 30.0

#: the commitment of a relay's ticket, which the broker hands the volunteer: no secret's
#: commitment is all zeros, so no voucher can ever be made of a relay ticket
RELAY: Final = bytes(COMMITMENT_SIZE)

_HEADER = struct.Struct("!BI32sB")


class TicketError(ValueError):
    """A ticket or voucher that does not verify; the message says why (no secrets in it)."""


@dataclass(frozen=True)
class Ticket:
    offer_id: str
    commitment: bytes
    issued: int


def derive_key(broker_secret: str) -> bytes:
    """The ticket key of an operator's brokers and egresses (not the secret itself, which
    also authenticates the egresses' reports)."""
    return hmac.new(broker_secret.encode("utf-8"), b"unwall ticket key v1", "sha256").digest()


def commit(secret: bytes) -> bytes:
    """The commitment to a client's per-offer secret."""
    return hashlib.sha256(b"unwall offer secret\0" + secret).digest()


def encode_commitment(commitment: bytes) -> str:
    return _b64(commitment)


def decode_commitment(text: str) -> bytes:
    """Raise ValueError unless `text` is base64url of exactly 32 bytes."""
    raw = _unb64(text, "commitment")
    if len(raw) != COMMITMENT_SIZE:
        raise ValueError("a commitment is 32 bytes, base64url")
    if raw == RELAY:  # a relay's ticket: a client must not get one minted for itself
        raise ValueError("a commitment of 32 zero bytes is no client's")
    return raw


def mint(key: bytes, offer_id: str, commitment: bytes, now: float) -> str:
    """A ticket for `offer_id`, binding the client's `commitment`."""
    offer = offer_id.encode("ascii")
    if not 1 <= len(offer) <= MAX_OFFER_ID or len(commitment) != COMMITMENT_SIZE:
        raise ValueError("an offer id of 1-128 characters and a 32-byte commitment")
    body = _HEADER.pack(VERSION, int(now) & 0xFFFFFFFF, commitment, len(offer)) + offer
    return _b64(body + _mac(key, body))


def verify(key: bytes, text: str, now: float, window: float) -> Ticket:
    """The ticket in `text` if our key made it within `window` seconds of `now`."""
    if len(text) > MAX_TICKET_TEXT:
        raise TicketError("the ticket is too long")
    try:
        raw = _unb64(text, "ticket")
    except ValueError as exc:
        raise TicketError(str(exc)) from None
    if len(raw) < _HEADER.size + 1 + MAC_SIZE:
        raise TicketError("the ticket is too short")
    version, issued, commitment, length = _HEADER.unpack_from(raw)
    body, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
    if version != VERSION or len(body) != _HEADER.size + length:
        raise TicketError("the ticket is malformed")
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise TicketError("the ticket was not made by a broker of this egress")
    age = now - issued
    if age > window or age < -CLOCK_SKEW:
        raise TicketError(f"the ticket is {'too old' if age > 0 else 'from the future'}")
    try:
        offer_id = body[_HEADER.size :].decode("ascii")
    except UnicodeDecodeError:
        raise TicketError("the ticket's offer id is not ASCII") from None
    return Ticket(offer_id=offer_id, commitment=commitment, issued=issued)


@dataclass(frozen=True)
class Voucher:
    """What a client shows its egress for each volunteer path: the broker's ticket and the
    secret whose commitment the ticket binds (stream header address type 0x7f, §5)."""

    ticket: str
    secret: bytes

    def check(self, key: bytes, now: float) -> Ticket:
        ticket = verify(key, self.ticket, now, PROOF_WINDOW)
        if len(self.secret) != SECRET_SIZE or not hmac.compare_digest(
            commit(self.secret), ticket.commitment
        ):
            raise TicketError("the secret does not match the ticket")
        return ticket


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, b"unwall ticket\0" + body, "sha256").digest()[:MAC_SIZE]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    if not text or any(c not in _ALPHABET for c in text):
        raise ValueError(f"the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} is not base64url") from None


_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
