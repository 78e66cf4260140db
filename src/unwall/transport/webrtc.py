"""The seam between unwall and a WebRTC stack: one peer connection carrying QUIC datagrams.

The client (`unwall.client.tunnel`) and the headless volunteer (`unwall.volunteer.headless`)
use only this module. Each engine implements `Peer` in a package of its own, and nothing
else imports an engine's library:

- ``aiortc`` (`unwall.transport.aiortc_engine`, the default): WebRTC in Python, in this
  process;
- ``chromium`` (`unwall.transport.chromium`): Debian's Chromium, headless, carries the
  WebRTC hop and hands the datagrams to this process over a loopback WebSocket, so that
  what leaves the machine is a browser's DTLS, STUN and SRTP, byte for byte. It costs a
  browser process.

A peer carries the datagrams in one of two carriers (protocol.md §2): a data channel
(``datachannel``: every engine; on the wire, DTLS application data) or the encoded frames of
a video call (``media``: the Chromium engine's default; on the wire, SRTP like any call). The
offer says which carriers the offering end can use; the answer settles it, and an end that
knows only the data channel still works with one that prefers media.

What is engine-agnostic lives here too: ICE server lists, the DTLS role of an offer, the
host addresses ICE may offer.
"""

from __future__ import annotations

import abc
import asyncio
import os
import re
from collections.abc import Callable, Sequence

from unwall.wire.broker import TurnServer

#: The label of the client's data channel (protocol.md §2).
DATA_CHANNEL_LABEL = "unwall"
#: Above this many bytes waiting in a channel's send buffer, `Peer.send` drops.
DEFAULT_MAX_BUFFERED = 1 << 20

ENGINES = ("aiortc", "chromium")
#: how datagrams travel between client and volunteer (protocol.md §2)
CARRIERS = ("media", "datachannel")
MEDIA = "media"
DATACHANNEL = "datachannel"

#: UNWALL_RTC_RELIABLE=1 asks for the old reliable, ordered channel (16 KiB datagrams), for
#: before/after measurements (benchmarks/README.md, issue 9).
RELIABLE = os.environ.get("UNWALL_RTC_RELIABLE") == "1"
#: QUIC's smallest datagram: one SCTP chunk on a lossy path. UNWALL_QUIC_DATAGRAM sets
#: another size (several chunks each), for measurements.
QUIC_DATAGRAM_SIZE = int(os.environ.get("UNWALL_QUIC_DATAGRAM", "1200"))

IceServer = str | TurnServer


class EngineUnavailable(Exception):
    """The WebRTC engine cannot run here (the message says what is missing)."""


# -- ICE servers --------------------------------------------------------------------------------


def is_turn_url(url: str) -> bool:
    return url.startswith(("turn:", "turns:"))


def ice_servers_with_credentials(
    urls: Sequence[str], username: str | None = None, password: str | None = None
) -> list[IceServer]:
    """The ICE servers of `--ice-server` URLs, the `turn:` ones given `--turn-user` and
    `--turn-password` (one pair of credentials for all of them, as a browser's RTCIceServer
    has). ValueError when credentials come without a TURN URL or one without the other."""
    if (username is None) != (password is None):
        raise ValueError("--turn-user and the TURN password (UNWALL_TURN_PASSWORD) go together")
    turn = [url for url in urls if is_turn_url(url)]
    if username is None or password is None:
        return list(urls)
    if not turn:
        raise ValueError("--turn-user needs a TURN server: --ice-server turn:HOST:PORT")
    servers: list[IceServer] = [url for url in urls if not is_turn_url(url)]
    servers.append(TurnServer(tuple(turn), username, password))
    return servers


def has_turn(ice_servers: Sequence[IceServer]) -> bool:
    """Whether any of these is a TURN server (a relay the ICE agent will gather)."""
    return any(isinstance(s, TurnServer) or is_turn_url(s) for s in ice_servers)


def describe_ice_servers(ice_servers: Sequence[IceServer]) -> list[str]:
    """The URLs, for a log line: credentials are never shown."""
    return [url for s in ice_servers for url in ((s,) if isinstance(s, str) else s.urls)]


def has_tcp_turn(ice_servers: Sequence[IceServer]) -> bool:
    """Whether a TURN server is reached over TCP or TLS (the way out where UDP is blocked)."""
    urls = describe_ice_servers(ice_servers)
    return any(
        url.startswith("turns:") or (is_turn_url(url) and "transport=tcp" in url) for url in urls
    )


# -- host addresses -----------------------------------------------------------------------------

_pinned_addresses: list[str] | None = None


def set_host_addresses(addresses: Sequence[str] | None) -> None:
    """Offer only these addresses as ICE host candidates (None: the engine's own choice).

    Process-wide: every peer connection in one unwall process wants the same answer. The
    aiortc engine honours it; Chromium gathers on every interface of its network namespace
    (the lab and the tests run it in a namespace of their own).
    """
    global _pinned_addresses
    _pinned_addresses = list(addresses) if addresses is not None else None


def pinned_host_addresses() -> list[str] | None:
    """The addresses given to `set_host_addresses`, or None if the engine chooses."""
    return list(_pinned_addresses) if _pinned_addresses is not None else None


# -- SDP ----------------------------------------------------------------------------------------

_SETUP_FOR_ROLE = {"client": "active", "server": "passive"}
_SETUP = re.compile(r"^a=setup:(actpass|active|passive)(?=\r?$)", re.MULTILINE)
_MAX_MESSAGE_SIZE = re.compile(r"^a=max-message-size:(\d+)\s*$", re.MULTILINE)


def with_dtls_role(offer_sdp: str, role: str) -> str:
    """The offer with its DTLS setup attribute set for `role` (RFC 8842): "client" offers
    `active`, "server" offers `passive`, "auto" leaves the engine's choice (the aiortc
    engine offers `active`, Chromium `actpass`); the engines follow what the answer says."""
    if role == "auto":
        return offer_sdp
    if role not in _SETUP_FOR_ROLE:
        raise ValueError(f"DTLS role must be auto, client or server, not {role!r}")
    return _SETUP.sub(f"a=setup:{_SETUP_FOR_ROLE[role]}", offer_sdp)


def sdp_max_message_size(sdp: str | None) -> int | None:
    """The `a=max-message-size` of an SDP (RFC 8841); None when absent (or 0: no limit)."""
    match = _MAX_MESSAGE_SIZE.search(sdp or "")
    if match is None or int(match.group(1)) == 0:
        return None
    return int(match.group(1))


def quic_datagram_size(remote_max_message_size: int | None) -> int:
    """The QUIC datagram size for a channel whose peer takes messages up to this size."""
    wanted = 16384 if RELIABLE else QUIC_DATAGRAM_SIZE
    return min(wanted, remote_max_message_size or wanted)


# -- the peer -----------------------------------------------------------------------------------


def check_carrier(engine_name: str, carrier: str | None) -> str:
    """The carrier an engine uses when asked for `carrier` (None: the engine's default);
    ValueError, in words for a person, when the engine cannot."""
    if carrier is None:
        return MEDIA if engine_name == "chromium" else DATACHANNEL
    if carrier not in CARRIERS:
        raise ValueError(f"the carrier must be one of {', '.join(CARRIERS)}, not {carrier!r}")
    if carrier == MEDIA and engine_name != "chromium":
        raise ValueError(
            "the media carrier needs a browser's video path: use it with --webrtc chromium"
        )
    return carrier


class Peer(abc.ABC):
    """One peer connection with one data channel (label `unwall`, unordered, no
    retransmissions: protocol.md §2), in one of two roles, and with the media carrier a
    video track each way whose frames carry the datagrams instead.

    The offering side (the client) calls `offer`, passes the SDP to the volunteer through
    the broker, then `accept_answer`; the answering side (a volunteer) calls `answer`.
    Either way `opened` is set when the carrier can carry (`carrier` then says which one),
    and `dead` (with `why_dead`) when
    the channel closes, ICE fails or the connection fails; a dead peer stays dead.
    Messages arrive in `on_message` (binary ones only; set it before the channel opens so
    that nothing is missed). `close` is always safe to call.
    """

    def __init__(self, max_buffered: int = DEFAULT_MAX_BUFFERED) -> None:
        self.max_buffered = max_buffered
        self.opened = asyncio.Event()
        self.dead = asyncio.Event()
        self.why_dead = ""
        self.dropped = 0
        self.on_message: Callable[[bytes], None] | None = None
        #: the carrier in use once `opened` is set (CARRIERS)
        self.carrier = DATACHANNEL

    def kill(self, why: str) -> None:
        if not self.dead.is_set():
            self.why_dead = why
            self.dead.set()

    def _deliver(self, data: bytes) -> None:
        if self.on_message is not None:
            self.on_message(data)

    @property
    def is_open(self) -> bool:
        return self.opened.is_set() and not self.dead.is_set()

    @abc.abstractmethod
    async def offer(self) -> str:
        """Create the data channel and return the offer, its candidates gathered."""

    @abc.abstractmethod
    async def accept_answer(self, sdp: str) -> None:
        """Apply the volunteer's answer; ValueError if it cannot be used."""

    @abc.abstractmethod
    async def answer(self, offer_sdp: str) -> str:
        """Take a client's offer and return our answer; ValueError if the offer cannot be
        used (malformed, or no data channel in it)."""

    @abc.abstractmethod
    def send(self, data: bytes) -> bool:
        """Send one message; False (and `dropped` counts it) when the channel is not open
        or more than `max_buffered` bytes already wait to be sent."""

    @property
    @abc.abstractmethod
    def buffered_amount(self) -> int:
        """Bytes waiting to be sent on the channel."""

    @property
    @abc.abstractmethod
    def local_sdp(self) -> str | None: ...

    @property
    @abc.abstractmethod
    def remote_sdp(self) -> str | None: ...

    @property
    def remote_max_message_size(self) -> int | None:
        """The largest message the other side takes (None: not known)."""
        return sdp_max_message_size(self.remote_sdp)

    @abc.abstractmethod
    async def close(self) -> None: ...


class Engine(abc.ABC):
    """Makes peers; one per process and engine kind (see `engine`)."""

    name: str

    @abc.abstractmethod
    def new_peer(
        self,
        ice_servers: Sequence[IceServer] = (),
        *,
        relay_only: bool = False,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        carrier: str | None = None,
    ) -> Peer:
        """A peer with exactly these ICE servers (never a default one); ``relay_only``
        offers and uses relay candidates only. ``carrier`` is the one this end prefers
        (None: the engine's default, `check_carrier`); the other end may settle for the data
        channel."""

    async def close(self) -> None:  # noqa: B027 (an engine with nothing to close)
        """Release what the engine holds (a browser process); its peers die with it."""


_engines: dict[str, Engine] = {}


def engine(name: str = "aiortc") -> Engine:
    """The process's engine of this kind, created on first use."""
    if name not in ENGINES:
        raise ValueError(f"the WebRTC engine must be one of {', '.join(ENGINES)}, not {name!r}")
    if name not in _engines:
        if name == "aiortc":
            from unwall.transport.aiortc_engine.engine import AiortcEngine

            _engines[name] = AiortcEngine()
        else:
            from unwall.transport.chromium import ChromiumEngine

            _engines[name] = ChromiumEngine()
    return _engines[name]


async def close_engines() -> None:
    """Close every engine this process started (at shutdown)."""
    engines = list(_engines.values())
    _engines.clear()
    for each in engines:
        await each.close()
