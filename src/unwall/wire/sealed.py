"""Sealed broker requests: what a client says to the broker, end to end (protocol.md §1.6).

A client's offer crosses a front (a CDN) in HTTPS that the CDN decrypts: the SDP names the
client's addresses. Sealed, the CDN sees only same-sized opaque bodies. The design is that
of Oblivious HTTP (RFC 9458) on HPKE (RFC 9180, base mode), from ``cryptography``:

    request  = enc (32 B) | HPKE-seal(broker key, info=REQUEST_INFO, plaintext)
    plaintext = version (1) | time (u32, Unix s) | response key (32 B)
                | path length (1) | path | body length (u32) | body | zeros
    response = nonce (12 B) | ChaCha20-Poly1305(response key, nonce, plaintext,
                                                aad=RESPONSE_AAD | enc)
    plaintext = status (u16) | body length (u32) | body | zeros

HPKE suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305. The broker's key
pair is derived from the secret its operator's brokers and egresses share, so every broker
of one operator opens the same requests, and the bridge line pins the public key
(``brokerkey=x25519:...``). Only the holder of the private key reads a request, and only
the client (which chose the response key) reads the response; a response made by anyone
else fails to open. Every sealed body, request or response, is a multiple of
:data:`BUCKET` bytes long, so sizes tell an offer from an answer no more than they tell one
SDP from another. A request carries its time: the broker refuses one more than
:data:`CLOCK_SKEW` seconds off its clock, and one it has opened before (:class:`ReplayGuard`).

Pure functions and one small state machine; the clock is an argument.
"""

from __future__ import annotations

import base64
import os
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

VERSION: Final = 1
KEY_PREFIX: Final = "x25519:"
SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
REQUEST_INFO: Final = b"unwall sealed request v1"
RESPONSE_AAD: Final = b"unwall sealed response v1"
#: the media type of a sealed body, both ways
CONTENT_TYPE: Final = "application/octet-stream"
#: where sealed requests are POSTed, and the paths a sealed request may name
SEALED_PATH: Final = "/v1/sealed"
CLIENT_OFFER_PATH: Final = "/v1/client/offer"
CLIENT_TURN_PATH: Final = "/v1/client/turn"
#: every sealed body is a multiple of this many bytes
BUCKET: Final = 4096
ENC_SIZE: Final = 32
TAG_SIZE: Final = 16
NONCE_SIZE: Final = 12
KEY_SIZE: Final = 32
#: a request's time may differ from the broker's clock by this much (clients' clocks are
#: often wrong; a replay within it is caught by ReplayGuard)
CLOCK_SKEW: Final = 600.0
#: requests ReplayGuard remembers at most (the oldest are forgotten first)
MAX_REMEMBERED: Final = 200_000
MAX_PATH: Final = 64

_REQUEST_HEAD = struct.Struct("!BI32s")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_RESPONSE_HEAD = struct.Struct("!HI")


class SealError(ValueError):
    """A sealed body that does not open, or is not well formed; says why, no secrets."""


class StaleRequest(SealError):
    """A request whose time is too far from the broker's clock."""


class Replayed(SealError):
    """A request the broker has opened before."""


# -- keys -----------------------------------------------------------------------------------


def derive_private_key(secret: str | bytes) -> x25519.X25519PrivateKey:
    """The broker's sealing key, derived from the secret its brokers and egresses share."""
    raw = secret.encode() if isinstance(secret, str) else secret
    seed = HKDF(hashes.SHA256(), KEY_SIZE, salt=None, info=b"unwall broker sealing key v1")
    return x25519.X25519PrivateKey.from_private_bytes(seed.derive(raw))


def format_public_key(key: x25519.X25519PublicKey) -> str:
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KEY_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_key_text(secret: str | bytes) -> str:
    """The public key a bridge line pins (``brokerkey=``) for brokers holding `secret`."""
    return format_public_key(derive_private_key(secret).public_key())


def parse_public_key(text: str) -> x25519.X25519PublicKey:
    """``x25519:`` and 43 base64url characters; ValueError (plain words) otherwise."""
    if not text.startswith(KEY_PREFIX):
        raise ValueError(f"a broker key starts with {KEY_PREFIX!r}")
    body = text[len(KEY_PREFIX) :]
    if not _BASE64URL.fullmatch(body):
        raise ValueError("a broker key is base64url after 'x25519:' (A-Z a-z 0-9 - _)")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    if len(raw) != KEY_SIZE or len(body) != 43:
        raise ValueError(f"a broker key is {KEY_SIZE} bytes (43 base64url characters)")
    return x25519.X25519PublicKey.from_public_bytes(raw)


def normalize_public_key(text: str) -> str:
    return format_public_key(parse_public_key(text))


# -- sizes ----------------------------------------------------------------------------------


def _padded(total_overhead: int, used: int) -> int:
    """The plaintext size that makes a body of the next multiple of BUCKET."""
    total = used + total_overhead
    return -(-total // BUCKET) * BUCKET - total_overhead


#: what a request may carry at most: the broker reads a sealed body of this size at most
def max_sealed_size(max_body: int) -> int:
    return _padded(ENC_SIZE + TAG_SIZE, _REQUEST_HEAD.size + 1 + MAX_PATH + 4 + max_body) + (
        ENC_SIZE + TAG_SIZE
    )


# -- the client's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class PendingRequest:
    """What the client keeps to open the response to one sealed request."""

    response_key: bytes
    enc: bytes


def seal_request(
    broker_key: x25519.X25519PublicKey, path: str, body: bytes, now: float
) -> tuple[bytes, PendingRequest]:
    """The sealed body of a request to `path` (e.g. ``/v1/client/offer``) carrying `body`."""
    encoded_path = path.encode("ascii")
    if not 0 < len(encoded_path) <= MAX_PATH:
        raise ValueError(f"path {path!r} is empty or longer than {MAX_PATH}")
    response_key = os.urandom(KEY_SIZE)
    head = _REQUEST_HEAD.pack(VERSION, int(now) & 0xFFFFFFFF, response_key)
    plain = b"".join(
        (head, bytes([len(encoded_path)]), encoded_path, struct.pack("!I", len(body)), body)
    )
    size = _padded(ENC_SIZE + TAG_SIZE, len(plain))
    sealed = SUITE.encrypt(plain + bytes(size - len(plain)), broker_key, info=REQUEST_INFO)
    return sealed, PendingRequest(response_key, sealed[:ENC_SIZE])


def open_response(pending: PendingRequest, sealed: bytes) -> tuple[int, bytes]:
    """The status and body of the broker's sealed response; SealError if it is not one."""
    if len(sealed) < NONCE_SIZE + TAG_SIZE + _RESPONSE_HEAD.size or len(sealed) % BUCKET:
        raise SealError(f"a sealed response of {len(sealed)} bytes is not one")
    try:
        plain = ChaCha20Poly1305(pending.response_key).decrypt(
            sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], RESPONSE_AAD + pending.enc
        )
    except InvalidTag:
        raise SealError("the response was not sealed by the broker we asked") from None
    status, length = _RESPONSE_HEAD.unpack_from(plain)
    body = plain[_RESPONSE_HEAD.size : _RESPONSE_HEAD.size + length]
    if len(body) != length:
        raise SealError("a sealed response's body length exceeds it")
    return status, body


# -- the broker's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class OpenedRequest:
    path: str
    body: bytes
    sent_at: int
    pending: PendingRequest  # to seal the response with


def open_request(broker_key: x25519.X25519PrivateKey, sealed: bytes) -> OpenedRequest:
    """The request inside a sealed body; SealError if it does not open under our key."""
    if len(sealed) < ENC_SIZE + TAG_SIZE + _REQUEST_HEAD.size or len(sealed) % BUCKET:
        raise SealError(
            f"a sealed request is a multiple of {BUCKET} bytes; this one is {len(sealed)}"
        )
    try:
        plain = SUITE.decrypt(sealed, broker_key, info=REQUEST_INFO)
    except (InvalidTag, ValueError):
        raise SealError(
            "the request is not sealed to this broker's key (check the bridge line's brokerkey)"
        ) from None
    version, sent_at, response_key = _REQUEST_HEAD.unpack_from(plain)
    if version != VERSION:
        raise SealError(f"sealed request version {version} is not {VERSION}")
    at = _REQUEST_HEAD.size
    path_length = plain[at]
    path = plain[at + 1 : at + 1 + path_length]
    at += 1 + path_length
    if len(path) != path_length or at + 4 > len(plain):
        raise SealError("a sealed request's path is cut short")
    (body_length,) = struct.unpack_from("!I", plain, at)
    body = plain[at + 4 : at + 4 + body_length]
    if len(body) != body_length:
        raise SealError("a sealed request's body length exceeds it")
    try:
        text = path.decode("ascii")
    except UnicodeDecodeError:
        raise SealError("a sealed request's path is not ASCII") from None
    return OpenedRequest(text, body, sent_at, PendingRequest(response_key, sealed[:ENC_SIZE]))


def seal_response(pending: PendingRequest, status: int, body: bytes) -> bytes:
    """The sealed body of the broker's response (`status`, JSON `body`) to one request."""
    plain = _RESPONSE_HEAD.pack(status, len(body)) + body
    size = _padded(NONCE_SIZE + TAG_SIZE, len(plain))
    nonce = os.urandom(NONCE_SIZE)
    return nonce + ChaCha20Poly1305(pending.response_key).encrypt(
        nonce, plain + bytes(size - len(plain)), RESPONSE_AAD + pending.enc
    )


class ReplayGuard:
    """Refuses a request far from the broker's clock, or opened before within CLOCK_SKEW."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._limit = limit
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # enc -> forget after

    def check(self, opened: OpenedRequest, now: float) -> None:
        off = opened.sent_at - now
        if abs(off) > CLOCK_SKEW:
            raise StaleRequest(
                f"the request's clock is {abs(off) / 60:.0f} minutes "
                f"{'ahead of' if off > 0 else 'behind'} the broker's: set this machine's clock"
            )
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)
        enc = opened.pending.enc
        if enc in self._seen:
            raise Replayed("this sealed request was sent before")
        self._seen[enc] = now + 2 * CLOCK_SKEW
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
