"""The Chromium engine behind `unwall.transport.webrtc`: a browser carries the WebRTC hop.

Why: the box fingerprints WebRTC (docs/fingerprints.md). aiortc's DTLS is OpenSSL's, DTLS
1.2 only, with its own ClientHello and ServerHello; nothing in Python makes it Chromium's.
Here Debian's Chromium itself (/usr/bin/chromium, headless, one process per unwall
process, started on first use) runs every peer connection, so what leaves the machine is a
browser's DTLS 1.3, STUN, SRTP and SCTP, byte for byte.

How: this process serves one page (`engine.html`, with `peer.js`, `media.js` and
`carrier-worker.js` beside it) and two WebSocket routes on 127.0.0.1, at a random port and
behind a random token; Chromium opens the page, which keeps a control WebSocket to us and one
WebSocket per peer connection. Text frames are commands and events (JSON); binary frames are
QUIC datagrams, unchanged. Chromium is started in its own process group with a parent-death
signal: it never outlives us, and `close` ends the group.

Who can steer it: nobody but this process. Chromium's command line (which every local user
reads in /proc) holds no secret, not even the page's address: Chromium starts with no window
and `--remote-debugging-pipe`, and the page's one-time URL goes through that pipe (fds 3
and 4, which only this process holds). The page then holds the session token its
WebSockets need; a second page or a second control socket is refused.

What it runs as: never root without its sandbox. Started by root, Chromium runs as an
unprivileged user id of its own (`browser_user`; not `nobody`, which other programs share),
with its profile, home and temporary files in a 0700 directory of that user, removed when
the engine stops; started by anyone else, as that user. Either way with Chromium's sandbox
(its renderers in user and PID namespaces of their own, under seccomp), which needs
unprivileged user namespaces: without them the engine refuses to start and says why.

What it shows: host candidates behind mDNS names, as any browser, unless host addresses are
pinned (`--host-address`; the lab and the tests pin theirs) or private ones asked for
(`unwall.transport.hostcandidates`); either way the SDP keeps only the host addresses that
rule allows.

Carriers (protocol.md §2): with the media carrier (the default here) the datagrams ride in
the encoded frames of a video call, paced by Chromium's own congestion controller (GoogCC)
and repaired by NACK/RTX: on the wire, SRTP like any call, and about the link's speed on lossy
paths. With the data channel (an older peer, or `carrier="datachannel"`) they ride
Chromium's SCTP, whose loss-based congestion control backs off on every random loss.

What it costs: a browser process (about 150 MB), one loopback WebSocket hop per message, and
with media a video encoder and decoder at each end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import grp
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from unwall.transport import hostcandidates
from unwall.transport.droptail import DropTailQueue
from unwall.transport.webrtc import (
    DATA_CHANNEL_LABEL,
    DATACHANNEL,
    DEFAULT_MAX_BUFFERED,
    MEDIA,
    RELIABLE,
    Engine,
    EngineUnavailable,
    IceServer,
    Peer,
    check_carrier,
    pinned_host_addresses,
)
from unwall.wire.broker import TurnServer

log = logging.getLogger("unwall.chromium")

CHROMIUM = "/usr/bin/chromium"
HERE = Path(__file__).parent
PAGE = HERE / "engine.html"
#: the page's scripts, served as they are (they hold no secret)
SCRIPTS = ("peer.js", "media.js", "carrier-worker.js")
#: From starting Chromium to its page's first word.
START_TIMEOUT = 30.0
#: UNWALL_CARRIER_TRACE=FILE appends each media peer's carrier counts to FILE every second
#: (JSON lines), for measurements (benchmarks/README.md).
CARRIER_TRACE = os.environ.get("UNWALL_CARRIER_TRACE")
#: UNWALL_MEDIA='{"startKbps": 4000}' overrides the media carrier's settings (media.js
#: DEFAULTS), for measurements
MEDIA_SETTINGS: dict[str, Any] = json.loads(os.environ.get("UNWALL_MEDIA") or "{}")
#: From asking for an offer or answer to having it (ICE gathering included).
SDP_TIMEOUT = 20.0

#: GoogCC's field trials for the media carrier (read from libwebrtc's goog_cc; measured in
#: benchmarks/README.md, issue 21): random loss is not congestion, so no loss-based cap (v2
#: off, v1's thresholds out of reach; the delay-based estimate still backs off on queues);
#: a trendline over 100 packet groups, so that jitter is not taken for a growing queue;
#: probes of 100 ms at 4x and 8x the start bitrate, and one to recover after a large drop.
#: UNWALL_FIELD_TRIALS replaces them ("" for Chromium's own), for measurements.
FIELD_TRIALS = os.environ.get(
    "UNWALL_FIELD_TRIALS",
    "WebRTC-Bwe-LossBasedBweV2/Enabled:false/"
    "WebRTC-BweLossExperiment/Enabled-0.5,0.9,1000000/"
    "WebRTC-Bwe-ProbingConfiguration/p1:4,p2:8,step_size:2,min_probe_duration:100ms/"
    "WebRTC-Bwe-TrendlineEstimatorSettings/window_size:100/"
    "WebRTC-BweRapidRecoveryExperiment/Enabled/",
)

FLAGS = [
    "--headless",
    # No window, no URL: the page is opened through the DevTools pipe (fds 3 and 4), so
    # that nothing on the command line, which every local user can read, opens it.
    "--no-startup-window",
    "--remote-debugging-pipe",
    "--disable-gpu",
    "--disable-background-networking",  # no calls home, no updates, no sync
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    # A page nobody looks at must not be slowed down.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]
#: Host candidates as plain addresses, not mDNS names: only with pinned host addresses
#: (the lab, the tests) or private ones asked for (`hostcandidates`).
PLAIN_HOST_CANDIDATES_FLAG = "--disable-features=WebRtcHideLocalIpsWithMdns"

#: UNWALL_BROWSER_USER=NAME_OR_UID: whom root runs browsers as (default: a free user id).
BROWSER_USER = os.environ.get("UNWALL_BROWSER_USER", "")
#: Where a free user id is looked for: systemd's range for dynamic users, which no
#: distribution gives to accounts.
FREE_UIDS = range(61184, 65520)

NO_SANDBOX = (
    "Chromium's sandbox cannot start here: it needs unprivileged user namespaces "
    "(sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone = 1 where that "
    "exists, kernel.apparmor_restrict_unprivileged_userns = 0 or an AppArmor profile for "
    "Chromium). unwall never runs a browser without its sandbox"
)


def sandbox_missing() -> str | None:
    """Why Chromium's sandbox cannot work on this kernel, or None (as far as the sysctls
    tell; Chromium's own start says the rest)."""
    for name, refusing in (
        ("user/max_user_namespaces", "0"),
        ("kernel/unprivileged_userns_clone", "0"),
        # (kernel.apparmor_restrict_unprivileged_userns = 1 is not enough to tell: an
        # AppArmor profile may still let Chromium in; its start says.)
    ):
        try:
            value = Path("/proc/sys", name).read_text().strip()
        except OSError:
            continue
        if value == refusing:
            return f"{NO_SANDBOX} ({name.replace('/', '.')} is {value})"
    return None


def chromium_missing(binary: str = CHROMIUM) -> str | None:
    """Why the engine cannot run here, or None."""
    if not Path(binary).exists():
        return f"{binary} is not installed (apt-get install chromium)"
    return sandbox_missing()


@dataclass(frozen=True)
class BrowserUser:
    """The unprivileged user a browser started by root runs as."""

    uid: int
    gid: int


def _uid_in_use(uid: int) -> bool:
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    if str(uid) in line.split()[1:]:
                        return True
                    break
    return False


def _free_uid() -> int:
    """A user id no account, group or running process has."""
    candidates = list(FREE_UIDS)
    for uid in secrets.SystemRandom().sample(candidates, 64):
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(uid)
            continue
        except KeyError:
            pass
        if not _uid_in_use(uid):
            return uid
    raise OSError(f"no free user id in {FREE_UIDS.start}-{FREE_UIDS.stop - 1}")


def browser_user() -> BrowserUser | None:
    """Whom a browser started by this process runs as: None when this process is not
    root (the browser runs as this user); else UNWALL_BROWSER_USER (a name or a number), or
    a user id of its own that nothing else on the machine has. Not `nobody`: other
    programs run as it, and one process of a user can read another's memory, files and
    pipes. ValueError if UNWALL_BROWSER_USER names root or no one."""
    if os.geteuid() != 0:
        return None
    if BROWSER_USER:
        try:
            entry = (
                pwd.getpwuid(int(BROWSER_USER))
                if BROWSER_USER.isdigit()
                else pwd.getpwnam(BROWSER_USER)
            )
            user = BrowserUser(entry.pw_uid, entry.pw_gid)
        except KeyError:
            if not BROWSER_USER.isdigit():
                raise ValueError(f"UNWALL_BROWSER_USER: no user {BROWSER_USER!r}") from None
            user = BrowserUser(int(BROWSER_USER), int(BROWSER_USER))
        if user.uid == 0 or user.gid == 0:
            raise ValueError("UNWALL_BROWSER_USER must not be root: browsers never run as root")
        return user
    uid = _free_uid()
    return BrowserUser(uid, uid)


def browser_home(prefix: str, user: BrowserUser | None) -> tuple[Path, Path]:
    """A new directory for one browser run, and in it a 0700 directory of the browser's
    user (its profile, home and temporary files). The outer one is this process's (0711
    when the browser runs as another user: it may pass, not look): logs go there, where the
    browser cannot replace them. Remove the outer one with `remove_browser_home`."""
    parent = Path(tempfile.gettempdir())
    if user is not None and not _passable(parent):
        parent = Path("/tmp")  # the browser's user must reach its directory
    outer = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    inner = outer / "profile"
    inner.mkdir(mode=0o700)
    (inner / "tmp").mkdir(mode=0o700)
    if user is not None:
        outer.chmod(0o711)
        for path in (inner, inner / "tmp"):
            os.chown(path, user.uid, user.gid)
    return outer, inner


def remove_browser_home(outer: Path) -> None:
    shutil.rmtree(outer, ignore_errors=True)


def _passable(path: Path) -> bool:
    """Whether any user may pass through `path` and every directory above it."""
    for each in (path, *path.parents):
        try:
            if not each.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def browser_environment(home: Path) -> dict[str, str]:
    """This process's environment, with the browser's home and temporary files in `home`,
    and without unwall's own variables (secrets among them: UNWALL_REPORT_SECRET,
    UNWALL_TURN_PASSWORD, ...), which the browser's user has no business reading."""
    return {
        **{name: value for name, value in os.environ.items() if not name.startswith("UNWALL_")},
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TMPDIR": str(home / "tmp"),
    }


def _ice_config(ice_servers: Sequence[IceServer], relay_only: bool) -> dict[str, Any]:
    servers: list[dict[str, Any]] = []
    for server in ice_servers:
        if isinstance(server, TurnServer):
            servers.append(
                {
                    "urls": list(server.urls),
                    "username": server.username,
                    "credential": server.credential,
                }
            )
        else:
            servers.append({"urls": [server]})
    return {"iceServers": servers, "iceTransportPolicy": "relay" if relay_only else "all"}


# Loaded here, not in the child: nothing may dlopen between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover (runs in the child, before exec)
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_setup(commands: int, replies: int) -> Callable[[], None]:
    """What the child does before exec: the DevTools pipe's ends on fds 3 (commands in)
    and 4 (replies out), where `--remote-debugging-pipe` looks, and a parent-death signal
    (set after subprocess has changed the user: a change of credentials clears it)."""

    def setup() -> None:  # pragma: no cover (runs in the child, before exec)
        os.dup2(commands, 3)
        os.dup2(replies, 4)
        _die_with_parent()

    return setup


@contextlib.contextmanager
def _fds_3_and_4_taken() -> Iterator[None]:
    """While spawning: fds 3 and 4 open in this process (on /dev/null if they were free).
    subprocess keeps the fds in `pass_fds` across exec only if they are open here too (it
    marks its copies inheritable before `preexec_fn` puts the pipe on them); every other fd
    it closes, so that nothing else of ours (an fd this process inherited, say) reaches
    the browser."""
    held: list[int] = []
    try:
        for fd in (3, 4):
            while True:
                try:
                    os.fstat(fd)
                    break
                except OSError:
                    pass
                new = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # the lowest free fd
                held.append(new)  # below `fd` (a gap), or `fd` itself
                if new >= fd:
                    break
        yield
    finally:
        for fd in held:
            os.close(fd)


def _above_4(fd: int) -> int:
    """`fd` moved above 4 (close-on-exec), so that the child's dup2 onto 3 and 4 cannot
    overwrite the other end before it is copied."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return moved


class DevToolsPipe:
    """This end of Chromium's `--remote-debugging-pipe`: JSON messages, each ended by a
    NUL byte. Only the first reply is waited for; what else arrives is read and dropped, so
    that Chromium never blocks writing."""

    def __init__(self, commands: int, replies: int) -> None:
        self._commands = commands
        self._replies = replies
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._next_id = 0

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one command and return its result; OSError if Chromium fails it or
        closes the pipe."""
        loop = asyncio.get_running_loop()
        if self._reader is None:
            self._reader = asyncio.StreamReader(limit=1 << 22)
            self._transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(self._reader),  # type: ignore[arg-type]
                os.fdopen(self._replies, "rb", buffering=0),
            )
        self._next_id += 1
        wanted = self._next_id
        message = json.dumps({"id": wanted, "method": method, "params": params}).encode()
        # Small, into an empty pipe: the write cannot block.
        os.write(self._commands, message + b"\0")
        while True:
            try:
                raw = await self._reader.readuntil(b"\0")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                raise OSError("Chromium closed its DevTools pipe") from exc
            with contextlib.suppress(ValueError):
                reply = json.loads(raw[:-1])
                if isinstance(reply, dict) and reply.get("id") == wanted:
                    if "error" in reply:
                        raise OSError(f"Chromium refused {method}: {reply['error']}")
                    result = reply.get("result")
                    return result if isinstance(result, dict) else {}

    async def drain(self) -> None:
        """Read and drop whatever Chromium still writes, until it closes the pipe."""
        if self._reader is None:
            return
        with contextlib.suppress(Exception):
            while await self._reader.read(1 << 16):
                pass

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        elif self._replies >= 0:
            with contextlib.suppress(OSError):
                os.close(self._replies)
        self._replies = -1
        if self._commands >= 0:
            with contextlib.suppress(OSError):
                os.close(self._commands)
        self._commands = -1


def _shown(sdp: str) -> str:
    """The SDP as it leaves this process: only the host addresses `hostcandidates`
    allows (Chromium gathers on every interface of its namespace)."""
    return hostcandidates.filter_sdp(sdp, pinned_host_addresses())


def plain_host_candidates() -> bool:
    """Whether Chromium should show host addresses rather than mDNS names: only when
    addresses are pinned (`--host-address`: the lab, the tests) or private ones asked for."""
    return pinned_host_addresses() is not None or hostcandidates.private_allowed()


class ChromiumPeer(Peer):
    """`webrtc.Peer` carried by the engine's Chromium."""

    def __init__(
        self, engine: ChromiumEngine, config: dict[str, Any], max_buffered: int, carrier: str
    ) -> None:
        super().__init__(max_buffered)
        self._engine = engine
        self._config = config
        self._wanted = carrier
        self._counts: asyncio.Future[dict[str, Any]] | None = None
        self._counts_lock = asyncio.Lock()
        self._trace: asyncio.Future[None] | None = None
        self._ws: web.WebSocketResponse | None = None
        self._out: DropTailQueue | None = None
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._local_sdp: str | None = None
        self._remote_sdp: str | None = None
        self._max_message_size: int | None = None
        self.id = ""

    # what the engine calls
    def _attach(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._out = DropTailQueue(ws.send_bytes, self.max_buffered)

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "open":
            size = event.get("maxMessageSize")
            self._max_message_size = int(size) if isinstance(size, int) and size > 0 else None
            self.carrier = MEDIA if event.get("carrier") == MEDIA else DATACHANNEL
            self.opened.set()
            if CARRIER_TRACE and self.carrier == MEDIA:
                self._trace = asyncio.ensure_future(self._trace_counts(CARRIER_TRACE))
        elif kind == "counts":
            if self._counts is not None and not self._counts.done():
                counts = event.get("counts")
                self._counts.set_result(counts if isinstance(counts, dict) else {})
        elif kind == "dead":
            self.kill(str(event.get("why") or "closed"))
        else:
            self._events.put_nowait(event)

    # the interface
    async def _expect(self, kind: str, *, input_error: bool) -> dict[str, Any]:
        """The page's next event, which should be `kind`. An error event is the remote
        SDP's fault (ValueError) when `input_error`, else the engine's."""
        get = asyncio.ensure_future(self._events.get())
        dead = asyncio.ensure_future(self.dead.wait())
        try:
            done, _ = await asyncio.wait(
                {get, dead}, timeout=SDP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            get.cancel()
            dead.cancel()
        if get in done:
            event = get.result()
            if event.get("type") == "error":
                message = f"Chromium: {event.get('message')}"
                raise ValueError(message) if input_error else EngineUnavailable(message)
            if event.get("type") != kind:
                raise EngineUnavailable(f"the engine page sent {event.get('type')!r}, not {kind!r}")
            return event
        if self.dead.is_set():
            raise EngineUnavailable(f"Chromium lost the peer connection: {self.why_dead}")
        raise EngineUnavailable(f"Chromium gave no {kind} within {SDP_TIMEOUT:.0f} s")

    async def offer(self) -> str:
        channel = {"ordered": True} if RELIABLE else {"ordered": False, "maxRetransmits": 0}
        await self._engine._open(
            self,
            {
                "role": "offer",
                "label": DATA_CHANNEL_LABEL,
                "channel": channel,
                "carriers": self._carriers(),
            },
        )
        self._local_sdp = _shown(str((await self._expect("sdp", input_error=False))["sdp"]))
        return self._local_sdp

    async def accept_answer(self, sdp: str) -> None:
        if self._ws is None:
            raise EngineUnavailable("no offer was made")
        if self.dead.is_set():
            raise EngineUnavailable(f"Chromium lost the peer connection: {self.why_dead}")
        self._remote_sdp = sdp
        try:
            await self._ws.send_str(json.dumps({"type": "answer", "sdp": sdp}))
        except (ConnectionError, RuntimeError) as exc:
            raise EngineUnavailable(f"Chromium lost the peer connection: {exc}") from exc
        await self._expect("remote-set", input_error=True)

    async def answer(self, offer_sdp: str) -> str:
        if "m=application" not in offer_sdp or "webrtc-datachannel" not in offer_sdp:
            raise ValueError("the offer has no data channel")
        self._remote_sdp = offer_sdp
        await self._engine._open(
            self, {"role": "answer", "offer": offer_sdp, "carriers": self._carriers()}
        )
        self._local_sdp = _shown(str((await self._expect("sdp", input_error=True))["sdp"]))
        return self._local_sdp

    def _carriers(self) -> list[str]:
        return [MEDIA, DATACHANNEL] if self._wanted == MEDIA else [DATACHANNEL]

    async def carrier_counts(self) -> dict[str, Any]:
        """What the media carrier's worker counted (frames and datagrams each way, drops,
        the estimate it follows); {} with the data channel. For tests and measurements."""
        async with self._counts_lock:  # one question at a time: the page answers in turn
            if self._ws is None or self._ws.closed:
                return {}
            self._counts = asyncio.get_running_loop().create_future()
            await self._ws.send_str(json.dumps({"type": "counts"}))
            return await asyncio.wait_for(self._counts, 5)

    async def _trace_counts(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            while not self.dead.is_set():
                await asyncio.sleep(1)
                counts = await self.carrier_counts()
                with open(path, "a") as out:
                    out.write(
                        json.dumps(
                            {"t": loop.time(), "pid": os.getpid(), "peer": self.id, **counts}
                        )
                        + "\n"
                    )

    def send(self, data: bytes) -> bool:
        if not self.is_open or self._out is None or not self._out.put(data):
            self.dropped += 1
            return False
        return True

    @property
    def buffered_amount(self) -> int:
        return self._out.queued_bytes if self._out is not None else 0

    @property
    def local_sdp(self) -> str | None:
        return self._local_sdp

    @property
    def remote_sdp(self) -> str | None:
        return self._remote_sdp

    @property
    def remote_max_message_size(self) -> int | None:
        return self._max_message_size or super().remote_max_message_size

    async def close(self) -> None:
        self.kill("closed")
        if self._trace is not None:
            self._trace.cancel()
        self._engine._forget(self)
        if self._out is not None:
            await self._out.close()
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.send_str(json.dumps({"type": "close"}))
            with contextlib.suppress(Exception):
                await self._ws.close()


class ChromiumEngine(Engine):
    """One headless Chromium, started on the first peer, shared by all of them."""

    name = "chromium"

    def __init__(self, binary: str = CHROMIUM) -> None:
        self._binary = binary
        self._url_token: bytes | None = None
        self._session: bytes | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._home: Path | None = None
        self._devtools: DevToolsPipe | None = None
        self._drain: asyncio.Task[None] | None = None
        self._control: web.WebSocketResponse | None = None
        self._ready: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._peers: dict[str, ChromiumPeer] = {}
        self._count = 0
        self._watch: asyncio.Task[None] | None = None
        self.user_agent = ""

    def new_peer(
        self,
        ice_servers: Sequence[IceServer] = (),
        *,
        relay_only: bool = False,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        carrier: str | None = None,
    ) -> Peer:
        return ChromiumPeer(
            self,
            _ice_config(ice_servers, relay_only),
            max_buffered,
            check_carrier(self.name, carrier),
        )

    @property
    def pid(self) -> int | None:
        """Chromium's process ID while it runs."""
        return self._process.pid if self._process is not None else None

    async def _open(self, peer: ChromiumPeer, command: dict[str, Any]) -> None:
        """Ask the page for a peer connection; EngineUnavailable if Chromium cannot."""
        await self._ensure_started()
        control = self._control
        if not self._running or control is None:
            raise EngineUnavailable("Chromium's engine page is gone")
        self._count += 1
        peer.id = str(self._count)
        self._peers[peer.id] = peer
        message = {
            "op": "peer",
            "id": peer.id,
            "config": peer._config,
            "maxBuffered": peer.max_buffered,
            "media": MEDIA_SETTINGS,
            **command,
        }
        try:
            await control.send_str(json.dumps(message))
        except (ConnectionError, RuntimeError) as exc:
            self._forget(peer)
            raise EngineUnavailable(f"Chromium's engine page is gone: {exc}") from exc

    def _forget(self, peer: ChromiumPeer) -> None:
        if self._peers.get(peer.id) is peer:
            del self._peers[peer.id]

    @property
    def _running(self) -> bool:
        process, control = self._process, self._control
        return (
            process is not None
            and process.returncode is None
            and control is not None
            and not control.closed
        )

    async def _ensure_started(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._running:
                return
            await self._stop()
            try:
                await self._start()
            except EngineUnavailable:
                raise
            except (OSError, RuntimeError) as exc:
                await self._stop()
                raise EngineUnavailable(f"Chromium could not be started: {exc}") from exc

    # -- the loopback server ------------------------------------------------------------------

    # The page's URL (with `_url_token`) goes to Chromium through the DevTools pipe, never
    # on its command line: it opens the page once and is void after that. The page itself
    # carries `_session`, which the WebSockets need, and which nothing else ever shows.

    def _authorized(self, request: web.Request) -> bool:
        given = request.query.get("t", "").encode()
        return self._session is not None and secrets.compare_digest(given, self._session)

    async def _page(self, request: web.Request) -> web.StreamResponse:
        given = request.query.get("t", "").encode()
        if self._url_token is None or not secrets.compare_digest(given, self._url_token):
            raise web.HTTPForbidden()
        self._url_token = None
        self._session = secrets.token_urlsafe(24).encode()
        page = PAGE.read_text().replace("__SESSION__", self._session.decode())
        return web.Response(text=page, content_type="text/html")

    async def _script(self, request: web.Request) -> web.StreamResponse:
        name = request.path.lstrip("/")
        return web.Response(
            text=(HERE / name).read_text(),
            content_type="text/javascript",
            headers={"Cache-Control": "no-store"},
        )

    async def _control_ws(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request) or self._control is not None:
            raise web.HTTPForbidden()
        ws = web.WebSocketResponse(heartbeat=10.0)
        self._control = ws  # claimed before the handshake: a second one is refused
        try:
            await ws.prepare(request)
        except BaseException:
            self._control = None
            raise
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                with contextlib.suppress(ValueError):
                    event = json.loads(message.data)
                    if isinstance(event, dict) and event.get("type") == "ready":
                        self.user_agent = str(event.get("agent", ""))
                        if self._ready is not None:
                            self._ready.set()
        # The page is gone: so is every peer connection it held (unless a new browser has
        # taken over meanwhile: its peers are not this page's).
        if self._control is ws:
            self._control = None
            for peer in list(self._peers.values()):
                peer.kill("the Chromium engine's page closed")
        return ws

    async def _peer_ws(self, request: web.Request) -> web.StreamResponse:
        peer = self._peers.get(request.match_info["id"])
        if not self._authorized(request) or peer is None or peer._ws is not None:
            raise web.HTTPForbidden()
        ws = web.WebSocketResponse(max_msg_size=1 << 20, compress=False)
        peer._attach(ws)  # claimed before the handshake: a second one is refused
        await ws.prepare(request)
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    peer._deliver(message.data)
                elif message.type == WSMsgType.TEXT:
                    try:
                        event = json.loads(message.data)
                    except ValueError:
                        continue
                    if isinstance(event, dict):
                        peer._event(event)
        finally:
            peer.kill("Chromium closed the peer connection")
            self._forget(peer)
        return ws

    # -- the browser --------------------------------------------------------------------------

    async def _start(self) -> None:
        missing = chromium_missing(self._binary)
        if missing is not None:
            raise EngineUnavailable(missing)
        app = web.Application()
        app.router.add_get("/engine", self._page)
        for script in SCRIPTS:
            app.router.add_get(f"/{script}", self._script)
        app.router.add_get("/control", self._control_ws)
        app.router.add_get("/peer/{id}", self._peer_ws)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        try:
            user = browser_user()
        except ValueError as exc:
            raise EngineUnavailable(str(exc)) from exc
        home, profile = browser_home("unwall-chromium-", user)
        self._home = home
        self._ready = asyncio.Event()
        flags = [*FLAGS, f"--user-data-dir={profile}"]
        if FIELD_TRIALS:
            flags.append(f"--force-fieldtrials={FIELD_TRIALS}")
        if plain_host_candidates():
            flags.append(PLAIN_HOST_CANDIDATES_FLAG)
        self._url_token = secrets.token_urlsafe(24).encode()
        self._session = None
        url = f"http://127.0.0.1:{self._port}/engine?t={self._url_token.decode()}"
        # The DevTools pipe: we write commands into one, Chromium answers into the other.
        commands_in, commands = os.pipe()
        replies, replies_out = os.pipe()
        commands_in, replies_out = _above_4(commands_in), _above_4(replies_out)
        self._devtools = DevToolsPipe(commands, replies)
        output = (home / "chromium.log").open("wb")
        try:
            with _fds_3_and_4_taken():
                self._process = await asyncio.create_subprocess_exec(
                    self._binary,
                    *flags,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    env=browser_environment(profile),
                    start_new_session=True,
                    user=user.uid if user is not None else None,
                    group=user.gid if user is not None else None,
                    extra_groups=[] if user is not None else None,
                    pass_fds=(3, 4),  # the pipe, put there by _child_setup; nothing else
                    preexec_fn=_child_setup(commands_in, replies_out),
                )
        finally:
            output.close()
            os.close(commands_in)
            os.close(replies_out)
        log.info(
            "Chromium engine started (pid %d, %s, sandboxed)",
            self._process.pid,
            f"user id {user.uid}" if user is not None else "this user",
        )
        self._watch = asyncio.ensure_future(self._watch_process(self._process))
        opened = asyncio.ensure_future(self._devtools.call("Target.createTarget", {"url": url}))
        ready = asyncio.ensure_future(self._ready.wait())
        exited = asyncio.ensure_future(self._process.wait())
        why = ""
        try:
            done, _ = await asyncio.wait(
                {opened, exited}, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED"
            )
            if opened in done and opened.exception() is not None:
                why = str(opened.exception())
                await asyncio.wait({exited}, timeout=2)  # a closed pipe: has it exited?
            elif opened in done:
                self._drain = asyncio.ensure_future(self._devtools.drain())
                await asyncio.wait(
                    {ready, exited}, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED"
                )
        finally:
            for task in (opened, ready, exited):
                task.cancel()
        if not self._ready.is_set():
            tail = self._log_tail()
            no_sandbox = "No usable sandbox" in self._log_text()
            gone = self._process.returncode is not None
            await self._stop()
            if no_sandbox:
                raise EngineUnavailable(f"{NO_SANDBOX}: {tail}")
            raise EngineUnavailable(
                f"Chromium exited at start: {tail}"
                if gone
                else f"Chromium did not open its engine page within {START_TIMEOUT:.0f} s: "
                f"{why or tail}"
            )

    def _log_text(self) -> str:
        if self._home is None:
            return ""
        try:
            return (self._home / "chromium.log").read_text(errors="replace")
        except OSError:
            return ""

    def _log_tail(self) -> str:
        lines = self._log_text()
        tail = [line for line in lines.splitlines() if line.strip()][-3:]
        return " / ".join(tail) or "no output"

    async def _watch_process(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self._process is process:
            log.warning("the Chromium engine exited (code %s)", code)
            for peer in list(self._peers.values()):
                peer.kill("the Chromium engine exited")

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if process is not None:
            # The whole group: Chromium's renderer and utility processes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        if self._devtools is not None:
            self._devtools.close()
            self._devtools = None
        for peer in list(self._peers.values()):
            peer.kill("the Chromium engine stopped")
        self._peers.clear()
        control, self._control = self._control, None
        if control is not None:
            with contextlib.suppress(Exception):
                await control.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._home is not None:
            remove_browser_home(self._home)
            self._home = None

    async def close(self) -> None:
        await self._stop()
        log.info("Chromium engine stopped")
