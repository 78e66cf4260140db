"""A nomination that reached the peer from another port (unwall.transport.aiortc_engine.ice).

Two ICE agents as the aiortc engine patches them, on 127.0.0.1, with a NAT between them made
of three UDP sockets: what the controlling agent (the client) sends leaves through the
mapping the controlled one (the volunteer) knows, but for the very first packet, which
leaves from another port, as Linux's NAT does when the peer's packet opens the same mapping
at the same moment (the lab's full-cone NATs, under load). That first packet is the check
that nominates. The volunteer cannot confirm the pair it came on (its answer comes back
from the known port), so only a later USE-CANDIDATE on the right pair completes its ICE:
the client's consent checks now carry one (as Chromium's pings of its selected pair do).
Before, the volunteer waited until the client gave up.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aioice

from unwall.transport import webrtc
from unwall.transport.aiortc_engine import engine

LOCAL = "127.0.0.1"


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


class StrayFirstPacketNat:
    """`front` is where the client sends; the volunteer sees the client at `mapped`, but
    the client's first packet at `stray`. Whatever the volunteer sends to either goes back
    to the client from `front`."""

    def __init__(self, volunteer: tuple[str, int]) -> None:
        self.volunteer = volunteer
        self.client: tuple[str, int] | None = None
        self.forwarded = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        async def bind(on_datagram: Any) -> _Socket:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: _Socket(on_datagram), local_addr=(LOCAL, 0)
            )
            return protocol

        self.front = await bind(self._from_client)
        self.mapped = await bind(self._from_volunteer)
        self.stray = await bind(self._from_volunteer)

    def _from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client = addr
        out = self.stray if self.forwarded == 0 else self.mapped
        self.forwarded += 1
        out.send(data, self.volunteer)

    def _from_volunteer(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.client is not None:
            self.front.send(data, self.client)

    def close(self) -> None:
        for socket in (self.front, self.mapped, self.stray):
            if socket.transport is not None:
                socket.transport.close()


def _candidate(port: int) -> aioice.Candidate:
    return aioice.Candidate(
        foundation="1", component=1, transport="udp", priority=1, host=LOCAL, port=port,
        type="host",
    )  # fmt: skip


async def test_a_nomination_from_another_port_is_made_good() -> None:
    pinned = webrtc.pinned_host_addresses()
    webrtc.set_host_addresses([LOCAL])
    engine.install_patches()
    client = aioice.Connection(ice_controlling=True)
    volunteer = aioice.Connection(ice_controlling=False)
    nat: StrayFirstPacketNat | None = None
    try:
        await client.gather_candidates()
        await volunteer.gather_candidates()
        (volunteer_host,) = volunteer.local_candidates
        nat = StrayFirstPacketNat((LOCAL, volunteer_host.port))
        await nat.start()
        client.remote_username, client.remote_password = (
            volunteer.local_username,
            volunteer.local_password,
        )
        volunteer.remote_username, volunteer.remote_password = (
            client.local_username,
            client.local_password,
        )
        await client.add_remote_candidate(_candidate(nat.front.port))
        await client.add_remote_candidate(None)
        await volunteer.add_remote_candidate(_candidate(nat.mapped.port))
        await volunteer.add_remote_candidate(None)
        # The client's ICE completes at once; the volunteer's at the client's first
        # consent check (4 to 6 s later): 9 s is enough, and never enough before.
        await asyncio.wait_for(asyncio.gather(client.connect(), volunteer.connect()), 9)
        (pair,) = volunteer._nominated.values()
        assert pair.remote_addr == (LOCAL, nat.mapped.port)
        await client.send(b"through")
        assert await asyncio.wait_for(volunteer.recv(), 2) == b"through"
    finally:
        webrtc.set_host_addresses(pinned)
        await client.close()
        await volunteer.close()
        if nat is not None:
            nat.close()
