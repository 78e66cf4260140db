"""What the client tells its user: the tunnel's state in plain words, with what to do next,
and its throughput over the last minutes (sans-IO: fed samples, asked for snapshots).

The status page (unwall.client.page) and the terminal's status line (unwall.client.
statusline) both show a :class:`Snapshot`. Nothing here knows, or could show, where the
user went: only counts, rates and the tunnel's own troubles.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

from unwall.client.tunnel import Problem
from unwall.units import human_duration, human_rate

if TYPE_CHECKING:
    from unwall.client.proxy import LocalProxies
    from unwall.client.statusline import StatusLine
    from unwall.client.tunnel import Tunnel

#: One sample a second; the chart shows this many.
HISTORY: Final = 120
#: "Now" is the mean of this many last samples.
NOW_WINDOW: Final = 3


class State(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    NO_VOLUNTEER = "no_volunteer"
    NO_COMPATIBLE = "no_compatible"
    BROKER_UNREACHABLE = "broker_unreachable"
    VOLUNTEER_UNREACHABLE = "volunteer_unreachable"
    EGRESS_UNREACHABLE = "egress_unreachable"
    PIN_MISMATCH = "pin_mismatch"


#: Each state: a headline, and what the user can do about it.
WORDS: Final[dict[State, tuple[str, str]]] = {
    State.CONNECTING: (
        "Connecting",
        "unwall is finding a volunteer and opening the encrypted tunnel; this usually takes "
        "a few seconds. Nothing to do yet.",
    ),
    State.CONNECTED: (
        "Connected",
        "Sites you open through the proxy below travel encrypted through volunteers to the egress.",
    ),
    State.NO_VOLUNTEER: (
        "No volunteer is free right now",
        "unwall keeps trying on its own. Volunteers come and go: wait a minute. If it lasts, "
        "ask a friend outside to open the volunteer page, or get another bridge line.",
    ),
    State.NO_COMPATIBLE: (
        "Your network is hard to reach",
        "Volunteers are online, but none free now can reach a network like yours (its NAT). "
        "unwall keeps trying; a TURN server (--ice-server turn:...) would get through.",
    ),
    State.BROKER_UNREACHABLE: (
        "Cannot reach the broker",
        "The broker named in your bridge line does not answer. Check that you are online. "
        "If you are, the broker may be blocked here: ask for a bridge line with a front "
        "(--front), or a new one.",
    ),
    State.VOLUNTEER_UNREACHABLE: (
        "Cannot connect to volunteers",
        "The broker found a volunteer, but the connection to it failed: this network may "
        "block WebRTC (UDP). A TURN server over TCP or TLS port 443 gets through most "
        "blocks (--ice-server 'turns:HOST:443?transport=tcp').",
    ),
    State.EGRESS_UNREACHABLE: (
        "The egress does not answer",
        "Volunteers connect, but the egress behind them does not answer. It may be down for "
        "a while; unwall keeps trying. If it lasts, ask for a new bridge line.",
    ),
    State.PIN_MISMATCH: (
        "This is not your egress",
        "The server behind the volunteers did not prove it is the egress your bridge line "
        "names. Someone may be intercepting the connection, or the bridge line is out of "
        "date. Nothing was sent through it. Get a fresh bridge line from whoever gave you "
        "this one.",
    ),
}

#: What the network the user is on can see of the tunnel, by WebRTC engine and carrier
#: (docs/fingerprints.md): said as it is, never better.
SEEN_AS: Final[dict[tuple[str, str], str]] = {
    ("chromium", "media"): (
        "The network you are on sees a video call from a Chromium browser: its handshake and "
        "its encrypted video are a browser's (a call with video and no sound)."
    ),
    ("chromium", "datachannel"): (
        "The network you are on sees a Chromium browser's WebRTC data channel, not a video "
        "call (this volunteer cannot carry video): a careful censor can tell it from a call."
    ),
    ("aiortc", "datachannel"): (
        "The network you are on sees a WebRTC data channel whose handshake is not a "
        "browser's: a careful censor can single it out. --webrtc chromium makes it a "
        "browser's video call."
    ),
}


def seen_as(engine: str, carrier: str | None) -> str:
    """The sentence of SEEN_AS for this engine and carrier ("" while nothing carries)."""
    if carrier is None:
        return ""
    return SEEN_AS.get((engine, carrier), "")


_FROM_PROBLEM: Final = {
    Problem.BROKER_UNREACHABLE: State.BROKER_UNREACHABLE,
    Problem.NO_VOLUNTEER: State.NO_VOLUNTEER,
    Problem.NO_COMPATIBLE: State.NO_COMPATIBLE,
    Problem.VOLUNTEER_UNREACHABLE: State.VOLUNTEER_UNREACHABLE,
    Problem.EGRESS_UNREACHABLE: State.EGRESS_UNREACHABLE,
    Problem.PIN_MISMATCH: State.PIN_MISMATCH,
}


def state_of(ready: bool, problem: Problem | None) -> State:
    if ready:
        return State.CONNECTED
    return State.CONNECTING if problem is None else _FROM_PROBLEM[problem]


@dataclass(frozen=True)
class Sample:
    """What the tunnel and the proxies say at one moment."""

    now: float  # seconds, any monotonic clock
    ready: bool
    problem: Problem | None
    detail: str  # the tunnel's own account of its last trouble
    volunteers: int
    connections: int
    switches: int
    bytes_up: int
    bytes_down: int
    ready_since: float | None
    seen_as: str = ""  # what the network sees of the carrying path (SEEN_AS)


@dataclass(frozen=True)
class Snapshot:
    state: str
    title: str
    advice: str
    detail: str  # empty while connected
    seen_as: str  # what the network sees, while connected (SEEN_AS)
    volunteers: int
    connections: int
    switches: int
    connected_for: float | None  # seconds, while connected
    down_now: float  # bytes a second, over the last NOW_WINDOW seconds
    up_now: float
    bytes_down: int
    bytes_up: int
    #: bytes a second, one per second, oldest first (at most HISTORY)
    history_down: list[float] = field(default_factory=list)
    history_up: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return asdict(self)


class StatusTracker:
    """Turns samples (one a second) into snapshots with rates and a short history."""

    def __init__(self) -> None:
        self._last: Sample | None = None
        self._down: deque[float] = deque(maxlen=HISTORY)
        self._up: deque[float] = deque(maxlen=HISTORY)

    def sample(self, sample: Sample) -> None:
        last = self._last
        if last is not None and sample.now > last.now:
            elapsed = sample.now - last.now
            self._down.append(max(0, sample.bytes_down - last.bytes_down) / elapsed)
            self._up.append(max(0, sample.bytes_up - last.bytes_up) / elapsed)
        self._last = sample

    def snapshot(self, current: Sample | None = None) -> Snapshot:
        """The last sample's state and figures (or `current`'s, fresher), with the rates
        of the samples fed."""
        last = current or self._last
        if last is None:
            last = Sample(0.0, False, None, "starting", 0, 0, 0, 0, 0, None)
        state = state_of(last.ready, last.problem)
        title, advice = WORDS[state]
        down = list(self._down)[-NOW_WINDOW:]
        up = list(self._up)[-NOW_WINDOW:]
        return Snapshot(
            state=state.value,
            title=title,
            advice=advice,
            detail="" if state is State.CONNECTED else last.detail,
            seen_as=last.seen_as if state is State.CONNECTED else "",
            volunteers=last.volunteers,
            connections=last.connections,
            switches=last.switches,
            connected_for=(
                last.now - last.ready_since
                if state is State.CONNECTED and last.ready_since is not None
                else None
            ),
            down_now=sum(down) / len(down) if down else 0.0,
            up_now=sum(up) / len(up) if up else 0.0,
            bytes_down=last.bytes_down,
            bytes_up=last.bytes_up,
            history_down=[round(v, 1) for v in self._down],
            history_up=[round(v, 1) for v in self._up],
        )


def status_line(snapshot: Snapshot) -> str:
    """The terminal's one line."""
    if snapshot.state != State.CONNECTED.value:
        return f"unwall: {snapshot.title.lower()}"
    parts = [
        "unwall: connected",
        f"{snapshot.volunteers} volunteer{'s' if snapshot.volunteers != 1 else ''}",
        f"down {human_rate(snapshot.down_now)}, up {human_rate(snapshot.up_now)}",
        f"{snapshot.connections} connection{'s' if snapshot.connections != 1 else ''}",
    ]
    if snapshot.connected_for is not None:
        parts.append(f"for {human_duration(snapshot.connected_for)}")
    return " · ".join(parts)


class ClientStatus:
    """The asyncio shell: samples the tunnel and the proxies once a second into a tracker
    (which the status page reads), and redraws the terminal's status line."""

    INTERVAL: Final = 1.0

    def __init__(self, tunnel: Tunnel, proxies: LocalProxies) -> None:
        self.tunnel = tunnel
        self.proxies = proxies
        self.tracker = StatusTracker()

    def current(self) -> Sample:
        """What the tunnel and the proxies say now."""
        tunnel = self.tunnel
        return Sample(
            now=asyncio.get_running_loop().time(),
            ready=tunnel.ready,
            problem=tunnel.problem,
            detail=tunnel.last_error,
            volunteers=tunnel.volunteers,
            connections=self.proxies.open_connections,
            switches=tunnel.switches,
            bytes_up=tunnel.bytes_up,
            bytes_down=tunnel.bytes_down,
            ready_since=tunnel.ready_since,
            seen_as=seen_as(tunnel.config.webrtc, tunnel.carrier),
        )

    def snapshot(self) -> Snapshot:
        """The state as it is now, with the rates of the last samples."""
        return self.tracker.snapshot(self.current())

    def sample(self) -> None:
        self.tracker.sample(self.current())

    async def run(self, main: Coroutine[Any, Any, None], line: StatusLine | None) -> None:
        """Run `main` (the tunnel), sampling meanwhile; return or raise as `main` does."""

        async def keep_sampling() -> None:
            while True:
                self.sample()
                if line is not None:
                    line.show(status_line(self.tracker.snapshot()))
                await asyncio.sleep(self.INTERVAL)

        sampler = asyncio.ensure_future(keep_sampling())
        try:
            await main
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler


__all__ = [
    "HISTORY",
    "SEEN_AS",
    "WORDS",
    "ClientStatus",
    "Sample",
    "Snapshot",
    "State",
    "StatusTracker",
    "human_duration",
    "human_rate",
    "seen_as",
    "state_of",
    "status_line",
]
