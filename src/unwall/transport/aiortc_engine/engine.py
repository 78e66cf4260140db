"""The aiortc engine as the seam (`unwall.transport.webrtc`) uses it: `AiortcEngine` and
`AiortcPeer`, and the configuration every peer connection unwall makes with aiortc has.

Every such peer connection is made by `new_peer_connection`, which first applies the
engine's patches to aiortc and aioice (`install_patches`: once per process; see the
package's docstring for what each module patches and why).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)

from unwall.transport import webrtc
from unwall.transport.aiortc_engine import dtls, ice, sctp, turn
from unwall.transport.aiortc_engine import sdp as sdp_module  # `sdp` names SDP text here
from unwall.transport.aiortc_engine.sctp import remote_max_message_size
from unwall.transport.webrtc import (
    DATA_CHANNEL_LABEL,
    DEFAULT_MAX_BUFFERED,
    RELIABLE,
    Engine,
    IceServer,
    Peer,
    check_carrier,
)

#: every module with patches, in the order they are applied
PATCHED = (ice, turn, sdp_module, sctp, dtls)

_patched = False


def install_patches() -> None:
    """Apply every patch of this engine to aiortc and aioice, once per process (later calls
    do nothing). Each module's `check` runs before anything is patched, so a release of
    aiortc or aioice without a private the patches need raises IncompatibleDependency
    (saying which) and leaves both libraries as they were."""
    global _patched
    if _patched:
        return
    for module in PATCHED:
        module.check()
    for module in PATCHED:
        module.install()
    _patched = True


def rtc_configuration(
    ice_servers: Sequence[IceServer] = (), relay_only: bool = False
) -> RTCConfiguration:
    """A configuration with exactly these ICE servers: URLs (`stun:host:port`, `turn:...`)
    and TURN servers with credentials. aiortc uses only the first STUN and the first TURN
    server it is given, so the order matters. ``relay_only`` offers relay candidates only."""
    servers = [
        RTCIceServer(urls=s)
        if isinstance(s, str)
        else RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in ice_servers
    ]
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


def new_peer_connection(
    ice_servers: Sequence[IceServer] = (), relay_only: bool = False
) -> RTCPeerConnection:
    """A peer connection with exactly these ICE servers, on patched aiortc and aioice."""
    install_patches()
    return RTCPeerConnection(configuration=rtc_configuration(ice_servers, relay_only))


def answer_description(sdp: str) -> RTCSessionDescription:
    return RTCSessionDescription(sdp=sdp, type="answer")


def offer_description(sdp: str) -> RTCSessionDescription:
    return RTCSessionDescription(sdp=sdp, type="offer")


def create_data_channel(pc: RTCPeerConnection) -> RTCDataChannel:
    """The client's data channel: unordered and without retransmissions (see `sctp`: "SCTP
    as a datagram pipe")."""
    if RELIABLE:
        return pc.createDataChannel(DATA_CHANNEL_LABEL, ordered=True)
    return pc.createDataChannel(DATA_CHANNEL_LABEL, ordered=False, maxRetransmits=0)


# -- the engine ---------------------------------------------------------------------------------


class AiortcPeer(Peer):
    """`webrtc.Peer` on aiortc, in this process."""

    def __init__(
        self,
        ice_servers: Sequence[IceServer],
        relay_only: bool = False,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        super().__init__(max_buffered)
        self.pc = new_peer_connection(ice_servers, relay_only)
        self.channel: RTCDataChannel | None = None
        #: the SDP sent (aiortc's own, and the line `sdp.DTLS_REWRITE`)
        self._local_sdp: str | None = None
        #: the key this end offers for DTLS shaped between two unwall ends
        self._rewrite_key = sdp_module.new_rewrite_key()
        pc = self.pc

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.kill(f"WebRTC connection {pc.connectionState}")

        @pc.on("iceconnectionstatechange")
        def on_ice_state() -> None:
            # ICE may give up before the connection as a whole says so: no need to wait.
            if pc.iceConnectionState == "failed":
                self.kill("ICE failed: no candidate pair got through")

    def _attach(self, channel: RTCDataChannel) -> None:
        self.channel = channel

        @channel.on("message")
        def on_message(message: bytes | str) -> None:
            if isinstance(message, bytes):
                self._deliver(message)

        @channel.on("close")
        def on_close() -> None:
            self.kill("its data channel closed")

        if channel.readyState == "open":
            self.opened.set()
        else:
            channel.on("open", self.opened.set)

    async def offer(self) -> str:
        self._attach(create_data_channel(self.pc))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        # The offerer is the DTLS client (a=setup:active; aiortc takes the role the answer
        # leaves it): its ClientHello is Chromium's, where OpenSSL's ServerHello is not
        # and can be hidden only from an unwall peer (`dtlswire`).
        offer = webrtc.with_dtls_role(str(self.pc.localDescription.sdp), "client")
        self._local_sdp = sdp_module.with_dtls_rewrite(offer, self._rewrite_key)
        return self._local_sdp

    async def accept_answer(self, sdp: str) -> None:
        echoed = sdp_module.dtls_rewrite_key(sdp) == self._rewrite_key
        dtls.agree_rewrite(self.pc, self._rewrite_key if echoed else None)
        try:
            await self.pc.setRemoteDescription(answer_description(sdp))
        except Exception as exc:  # aiortc raises many kinds on hostile SDP
            raise ValueError(f"{type(exc).__name__}: {exc}") from exc

    async def answer(self, offer_sdp: str) -> str:
        pc = self.pc

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if self.channel is None:  # one channel per client; anything more is ignored
                self._attach(channel)

        try:
            await pc.setRemoteDescription(offer_description(offer_sdp))
            if pc.sctp is None:
                raise ValueError("the offer has no data channel")
            # A client that would rather carry media (protocol.md §2): this engine has only
            # the data channel, and says so by neither sending nor taking video.
            for transceiver in pc.getTransceivers():
                transceiver.direction = "inactive"
            key = sdp_module.dtls_rewrite_key(offer_sdp)
            dtls.agree_rewrite(pc, key)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises many kinds on hostile SDP
            raise ValueError(f"{type(exc).__name__}: {exc}") from exc
        answer = str(pc.localDescription.sdp)
        self._local_sdp = answer if key is None else sdp_module.with_dtls_rewrite(answer, key)
        return self._local_sdp

    def send(self, data: bytes) -> bool:
        channel = self.channel
        if self.dead.is_set() or channel is None or channel.readyState != "open":
            self.dropped += 1
            return False
        if channel.bufferedAmount > self.max_buffered:
            self.dropped += 1
            return False
        channel.send(data)
        return True

    @property
    def buffered_amount(self) -> int:
        return int(self.channel.bufferedAmount) if self.channel is not None else 0

    @property
    def local_sdp(self) -> str | None:
        return self._local_sdp

    @property
    def remote_sdp(self) -> str | None:
        description = self.pc.remoteDescription
        return str(description.sdp) if description is not None else None

    @property
    def remote_max_message_size(self) -> int | None:
        return remote_max_message_size(self.pc)

    async def close(self) -> None:
        self.kill("closed")
        with contextlib.suppress(Exception):
            await self.pc.close()


class AiortcEngine(Engine):
    """Peers on aiortc, in this process. Made, the engine has patched aiortc and aioice
    (`install_patches`): a role that makes it at start fails there, before anything runs,
    when they lack what the patches need."""

    name = "aiortc"

    def __init__(self) -> None:
        install_patches()

    def new_peer(
        self,
        ice_servers: Sequence[IceServer] = (),
        *,
        relay_only: bool = False,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        carrier: str | None = None,
    ) -> Peer:
        check_carrier(self.name, carrier)  # the data channel only
        return AiortcPeer(ice_servers, relay_only, max_buffered)
