"""`unwall`: one subcommand per role, plus `demo` and `bench`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal

from unwall import __version__
from unwall.config import (
    ConfigError,
    Option,
    add_options,
    host_port,
    non_negative_int,
    positive_float,
    positive_int,
    resolve,
    url,
)
from unwall.logs import setup_logging
from unwall.transport.internals import IncompatibleDependency
from unwall.wire.nat import NatKind, parse_nat_kind

log = logging.getLogger("unwall")

ICE_OPTIONS = [
    Option(
        "--ice-server",
        "ICE server URL (stun:HOST:PORT or turn:...); repeatable. Default: none, host "
        "candidates only (no public STUN server is ever contacted unless named here)",
        default=[],
        repeat=True,
    ),
    Option(
        "--host-address",
        "offer only this address as an ICE host candidate (repeatable); 127.0.0.1 keeps "
        "everything on this machine. Without it no private address (LAN, CGNAT, "
        "link-local, ULA) is offered unless UNWALL_PRIVATE_HOST_CANDIDATES=1",
        default=[],
        repeat=True,
    ),
]


def page_address(text: str) -> tuple[str, int] | Literal["off"]:
    """HOST:PORT on loopback for the client's status page, or 'off'.

    'off' stays a value: None means "not given" to the config loader, which then takes the
    default, so the page served on 8119 after all (issue 22, row 10)."""
    if text.strip().lower() == "off":
        return "off"
    host, port = host_port(text)
    from unwall.client.page import check_page_address

    try:
        check_page_address(host)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return host, port


def nat_kind(text: str) -> NatKind:
    try:
        return parse_nat_kind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def webrtc_engine(text: str) -> str:
    from unwall.transport.webrtc import ENGINES

    if text not in ENGINES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(ENGINES)}, not {text!r}")
    return text


def nat_check_mode(text: str) -> str:
    if text not in ("browser", "rfc5780"):
        raise argparse.ArgumentTypeError(f"must be browser or rfc5780, not {text!r}")
    return text


def broker_http_engine(text: str) -> str:
    from unwall.transport.brokerhttp import ENGINES

    if text not in ENGINES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(ENGINES)}, not {text!r}")
    return text


def _relay_host(text: str) -> Any:
    """A --relay-host pattern (unwall.volunteer.relays.RelayHost)."""
    from unwall.volunteer.relays import relay_host

    return relay_host(text)


def carrier_kind(text: str) -> str:
    from unwall.transport.webrtc import CARRIERS

    if text not in CARRIERS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(CARRIERS)}, not {text!r}")
    return text


#: What a WebRTC peer (client or headless volunteer) takes besides its ICE servers.
PEER_OPTIONS = [
    *ICE_OPTIONS,
    Option("--turn-user", "username for the turn: servers among --ice-server"),
    Option(
        "--turn-password",
        "password for the turn: servers among --ice-server",
        secret=True,
    ),
    Option(
        "--nat",
        "this network's NAT kind, reported to the broker instead of measuring it: none, "
        "full-cone, restricted, port-restricted, symmetric or unknown (default: measured with "
        "the first stun: server, RFC 5780; unknown without one)",
        None,
        nat_kind,
    ),
    Option(
        "--webrtc",
        "WebRTC engine: aiortc (in this process) or chromium (Debian's Chromium, headless, "
        "carries the WebRTC hop: on the wire it is a browser's video call, byte for byte; it "
        "needs /usr/bin/chromium)",
        "aiortc",
        webrtc_engine,
    ),
    Option(
        "--carrier",
        "how datagrams cross the WebRTC hop: media (in a video call's frames; --webrtc "
        "chromium only, and its default) or datachannel (the aiortc engine's only one); a "
        "peer that has only the data channel is served over it either way",
        None,
        carrier_kind,
    ),
]

BROKER_OPTIONS = [
    Option("--listen", "address to listen on", ("127.0.0.1", 8080), host_port),
    Option("--poll-timeout", "seconds a volunteer's poll is held", 20.0, positive_float),
    Option("--answer-timeout", "seconds a client waits for a volunteer", 10.0, positive_float),
    Option(
        "--egress-url",
        "egress relay URL that browser volunteers are told to use (ws(s)://HOST/v1/relay)",
        None,
        url,
    ),
    Option(
        "--ice-server",
        "ICE server URL browser volunteers are told to use; repeatable (default: none)",
        default=[],
        repeat=True,
    ),
    Option(
        "--turn-secret",
        "hand volunteers short-lived TURN credentials in their poll answers, derived from "
        "this secret (coturn's use-auth-secret and static-auth-secret: "
        "src/unwall/broker/coturn.conf)",
        secret=True,
    ),
    Option(
        "--turn-url",
        "TURN server the credentials are for, turn:HOST:PORT[?transport=tcp]; repeatable",
        default=[],
        repeat=True,
    ),
    Option(
        "--turn-ttl",
        "seconds the TURN credentials stay valid for new allocations (at most 3600); "
        "coturn keeps refreshing a relay past them",
        600.0,
        positive_float,
    ),
    Option(
        "--egress",
        "an egress of this operator, PIN=RELAY_URL (sha256:...=wss://HOST/v1/relay); "
        "repeatable. A client whose bridge line names that pin is relayed there; with none "
        "given, every volunteer relays to its own egress",
        default=[],
        repeat=True,
    ),
    Option(
        "--report-secret",
        "the secret this operator's brokers and egresses share: the broker vouches for each "
        "client it matches with a ticket made with it (an egress serves no one else), and "
        "egresses' reports of what volunteers carried come with it",
        secret=True,
    ),
    Option(
        "--earn-room",
        "volunteers earn their room from the egresses' reports: one client, and one more "
        "per client network they carried a vouched session for (the egresses need "
        "--report-to this broker)",
        is_switch=True,
    ),
    Option(
        "--trusted-proxy",
        "a front (CIDR) the broker sits behind: requests from it are counted by the "
        "rightmost X-Forwarded-For address that is not a front; repeatable",
        default=[],
        repeat=True,
    ),
    Option(
        "--offers-per-minute",
        "client offers one address may post per minute (bursts of a quarter of that)",
        120.0,
        positive_float,
    ),
    Option(
        "--redis",
        "share the volunteer pool, waiting offers and answers with other brokers through "
        "this Redis server (redis://HOST:PORT/DB); default: this broker alone, in memory",
    ),
]

EGRESS_OPTIONS = [
    Option("--listen", "address to listen on", ("127.0.0.1", 7000), host_port),
    Option("--key-dir", "directory of the egress key and certificate", Path("egress-keys"), Path),
    Option(
        "--allow",
        "allow this network although the default policy refuses it (CIDR; repeatable)",
        default=[],
        repeat=True,
    ),
    Option(
        "--ports",
        "destination ports allowed, e.g. 80,443,8000-8100, or all (every port: then the "
        "egress also reaches mail, SSH and whatever else its network offers)",
        "80,443",
    ),
    Option("--connect-timeout", "seconds to connect to a destination", 10.0, positive_float),
    Option("--max-sessions", "most client sessions at once", 1000, positive_int),
    Option(
        "--max-connections",
        "most outbound connections at once, all sessions together (default: half the "
        "open-file limit); past it a stream is refused as busy",
        None,
        positive_int,
    ),
    Option(
        "--session-connections",
        "most outbound connections one session holds at once",
        256,
        positive_int,
    ),
    Option(
        "--session-rate",
        "bytes per second one session may move, all its streams and both directions "
        "together; 0: no cap",
        12_500_000,
        non_negative_int,
    ),
    Option(
        "--sessions-per-address",
        "most sessions at once whose relays come from one address (a volunteer's)",
        64,
        positive_int,
    ),
    Option(
        "--sessions-per-network",
        "most sessions at once whose relays come from one /24 (IPv6: /48)",
        256,
        positive_int,
    ),
    Option(
        "--session-stream-rate",
        "new streams one session may open per second (bursts of twice that)",
        50.0,
        positive_float,
    ),
    Option(
        "--grace",
        "seconds a session may have no volunteer before it is closed",
        60.0,
        positive_float,
    ),
    Option(
        "--report-to",
        "a broker of this operator (it needs the same report_secret, from its config file "
        "or UNWALL_REPORT_SECRET): the egress tells it which volunteers carried sessions "
        "(so that they earn clients), and passes it the sealed requests clients send inside "
        "their tunnels (so that a connected client never contacts a broker itself); "
        "repeatable, tried in order",
        default=[],
        repeat=True,
    ),
    Option(
        "--report-over-http",
        "let --report-to be a plain http:// URL of another machine: the report secret then "
        "crosses the network in the clear (without it, such a URL is refused; use https://)",
        is_switch=True,
    ),
    Option(
        "--report-secret",
        "the secret this operator's brokers and egresses share: only sessions whose "
        "client shows a broker's ticket made with it are served, and reports to "
        "--report-to carry it (required)",
        secret=True,
    ),
    Option(
        "--no-retry",
        "create sessions without a QUIC Retry first (saves clients one round trip at "
        "connect; a relay can then take handshake slots without reading our replies)",
        is_switch=True,
    ),
]

VOLUNTEER_OPTIONS = [
    Option("--broker", "broker URL", None, url),
    Option(
        "--check",
        "check this volunteer (broker, egress, NAT, who could reach it), print the verdict "
        "and exit: 0 when ready, 1 when not",
        is_switch=True,
    ),
    Option(
        "--metrics",
        "serve Prometheus metrics on this address, e.g. 127.0.0.1:9108 (default: none)",
        None,
        host_port,
    ),
    Option("--egress", "egress relay URL, e.g. ws://HOST:7000/v1/relay", None, url),
    Option(
        "--relay-host",
        "another host the broker may send a client to (its list of egresses): NAME, "
        "*.NAME or an IP address, with an optional :PORT, over wss:// unless written "
        "ws://PATTERN; repeatable. Names that resolve to loopback, private or link-local "
        "addresses are refused. Default: none, only --egress's own origin",
        default=[],
        type=_relay_host,
        repeat=True,
    ),
    Option("--capacity", "most clients served at once", 8, positive_int),
    Option(
        "--max-rate",
        "bandwidth cap in bytes per second, both directions together (e.g. 2000000); "
        "default: no cap",
        None,
        positive_int,
    ),
    Option("--stats-interval", "seconds between statistics lines", 60.0, positive_float),
    *PEER_OPTIONS,
]

CLIENT_OPTIONS = [
    Option("--bridge", "bridge line from `unwall egress keygen` (gives --broker and --pin)"),
    Option("--broker", "broker URL", None, url),
    Option("--pin", "egress key pin, sha256:..."),
    Option(
        "--front",
        "domain fronting: reach the broker through this https:// front (TLS names the front, "
        "the HTTP Host header names the broker); repeatable: tried in a random order",
        [],
        url,
        repeat=True,
    ),
    Option(
        "--broker-key",
        "the broker's key, x25519:... (from the bridge line): offers travel sealed to it, "
        "which no front or box can read",
    ),
    Option(
        "--ca-file",
        "PEM file of CA certificates to trust for the broker or front, instead of the system's",
    ),
    Option(
        "--broker-http",
        "what speaks HTTPS to the broker or front: chrome (curl_cffi: a current Chrome's TLS "
        "and HTTP/2, as a box sees it) or python (Python's ssl, which a box can single out)",
        "chrome",
        broker_http_engine,
    ),
    Option(
        "--nat-check",
        "how the NAT kind is measured: browser (plain binding requests to the STUN server's "
        "two addresses, as a browser with two STUN servers sends; the filtering is taken as "
        "the strictest) or rfc5780 (its CHANGE-REQUEST tests too, which tell a full-cone or "
        "restricted NAT apart, but which no browser sends: a box can single them out)",
        "browser",
        nat_check_mode,
    ),
    Option("--socks", "SOCKS5 listen address", ("127.0.0.1", 1080), host_port),
    Option("--http", "HTTP proxy listen address", ("127.0.0.1", 8118), host_port),
    Option(
        "--stream-wait",
        "seconds a new connection waits for the tunnel before it is refused",
        10.0,
        positive_float,
    ),
    Option(
        "--dtls-role",
        "DTLS role to insist on: auto, client or server (for interoperability tests)",
        "auto",
    ),
    Option(
        "--paths", "volunteer paths kept open (one carries, the rest stand by)", 2, positive_int
    ),
    Option(
        "--grace",
        "seconds open connections wait when no volunteer is reachable, before they fail",
        60.0,
        positive_float,
    ),
    Option(
        "--page",
        "the status page's address, on loopback only (open it in a browser), or 'off'",
        ("127.0.0.1", 8119),
        page_address,
    ),
    Option(
        "--pac-list",
        "a file of names (one a line, e.g. example.org): the status page's /proxy.pac then "
        "sends only these and their subdomains through unwall; default: everything",
        None,
        Path,
    ),
    Option(
        "--self-test-url",
        "the page the status page's self-test fetches through the tunnel (default: "
        "https://example.com/, the documentation domain reserved by IANA)",
        "https://example.com/",
        url,
    ),
    *PEER_OPTIONS,
]


NATCHECK_OPTIONS = [
    *ICE_OPTIONS,
    Option(
        "--mode",
        "rfc5780 (all of RFC 5780's tests: mapping and filtering) or browser (what the "
        "client does by default: plain binding requests only, the filtering not measured)",
        "rfc5780",
        nat_check_mode,
    ),
    Option("--json", "print the verdict as JSON", is_switch=True),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unwall",
        description="A censorship-circumvention bridge: a local SOCKS5/HTTP proxy whose "
        "traffic travels as end-to-end encrypted QUIC through volunteers' WebRTC to an egress.",
    )
    parser.add_argument("--version", action="version", version=f"unwall {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument(
        "--log-destinations",
        action="store_true",
        help="for debugging only: let log lines name destinations (host:port) and the "
        "addresses of clients and volunteers, which by default they never do. Such a log "
        "tells who went where: do not keep it",
    )
    roles = parser.add_subparsers(dest="role", metavar="ROLE", required=True)

    broker = roles.add_parser("broker", help="pair clients with volunteers (HTTP JSON API)")
    add_options(broker, BROKER_OPTIONS)

    egress = roles.add_parser("egress", help="terminate clients' QUIC sessions, dial out")
    add_options(egress, EGRESS_OPTIONS)
    egress_sub = egress.add_subparsers(dest="egress_command", metavar="COMMAND")
    keygen = egress_sub.add_parser(
        "keygen", help="create the egress key; print pin and bridge line"
    )
    keygen.add_argument("--key-dir", type=Path, default=argparse.SUPPRESS)
    keygen.add_argument(
        "--broker",
        type=url,
        default="http://127.0.0.1:8080/",
        help="broker URL for the bridge line",
    )
    keygen.add_argument(
        "--front",
        type=url,
        action="append",
        default=[],
        help="an https:// front (CDN) that forwards to the broker by Host header, for the "
        "bridge line; repeatable (clients try them in a random order)",
    )
    keygen.add_argument(
        "--ice-server",
        type=str,
        action="append",
        default=[],
        help="a stun: or turn:/turns: URL for the bridge line (no credentials: clients get "
        "TURN credentials from the broker, sealed); repeatable",
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key")

    volunteer = roles.add_parser("volunteer", help="relay clients to the egress (headless)")
    add_options(volunteer, VOLUNTEER_OPTIONS)

    client = roles.add_parser("client", help="local SOCKS5 and HTTP proxy through unwall")
    add_options(client, CLIENT_OPTIONS)

    natcheck = roles.add_parser(
        "natcheck", help="which kind of NAT this network has (RFC 5780, with a STUN server)"
    )
    add_options(natcheck, NATCHECK_OPTIONS)

    demo = roles.add_parser(
        "demo", help="run broker, egress, volunteer and client here; fetch a page through them"
    )
    demo.add_argument("--socks", type=host_port, default=("127.0.0.1", 1080))
    demo.add_argument("--http", type=host_port, default=("127.0.0.1", 8118))
    demo.add_argument(
        "--page",
        type=host_port,
        default=("127.0.0.1", 8119),
        help="the client's status page (loopback)",
    )
    demo.add_argument(
        "--check", action="store_true", help="fetch the test page, exit 0 on success, 1 on failure"
    )

    lab = roles.add_parser("lab", help="the emulated monitoring box (network namespaces; root)")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)
    lab_up = lab_sub.add_parser("up", help="build the lab: censored host, box, internet")
    lab_up.add_argument("--profile", type=Path, help="censor profile (TOML); default: log only")
    lab_up.add_argument(
        "--link",
        metavar="PRESET",
        help="emulate this path between the censored network and the world (replaces the "
        "profile's [link]): clean, intercontinental, censored-lossy, hostile",
    )
    lab_up.add_argument(
        "--home",
        action="append",
        default=[],
        metavar="NAT",
        help="add a home network (home1, home2, ...) behind a NAT of this kind, with a "
        "headless volunteer: none, full-cone, port-restricted, symmetric; repeatable",
    )
    lab_up.add_argument(
        "--client-nat",
        default="port-restricted",
        metavar="NAT",
        help="the NAT the box puts in front of the censored network (default port-restricted)",
    )
    lab_up.add_argument(
        "--no-volunteers", action="store_true", help="start no volunteer (start your own)"
    )
    lab_link = lab_sub.add_parser("link", help="change the running lab's emulated path")
    lab_link.add_argument("preset", help="clean, intercontinental, censored-lossy or hostile")
    lab_link.add_argument("--stats", action="store_true", help="print the emulator's counters")
    lab_sub.add_parser("down", help="remove everything the lab made (idempotent)")
    lab_run = lab_sub.add_parser("run", help="run a command in a lab namespace")
    lab_run.add_argument("namespace", help="censored, box, internet, homeN or volN")
    lab_run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS]")
    lab_report = lab_sub.add_parser("report", help="what the box learned, per censored host")
    lab_report.add_argument("--json", action="store_true", help="machine-readable")
    for hidden in ("_box", "_internet", "_link"):
        daemon = lab_sub.add_parser(hidden)
        daemon.add_argument("--state", type=Path, required=True)
    for name, help_text in (
        ("probe", "measure the emulated path: RTT and loss per direction (UDP probes)"),
        ("_probe", None),
    ):
        prober = lab_sub.add_parser(name, help=help_text) if help_text else lab_sub.add_parser(name)
        prober.add_argument("--count", type=positive_int, default=10_000, help="probes to send")
        prober.add_argument("--rate", type=positive_float, default=2000.0, help="probes per s")

    bench = roles.add_parser("bench", help="measure throughput, latency and CPU on this machine")
    bench.add_argument("--json", type=Path, help="also write the figures to this file")
    bench.add_argument("--size-mb", type=positive_int, default=50, help="download size")
    bench.add_argument("--profile", type=Path, help="py-spy each role into this directory")
    bench.add_argument(
        "--runs",
        type=positive_int,
        default=5,
        help="bridged downloads on one session; bridge_MBps is their median (with the spread)",
    )
    bench.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="PRESET",
        help="measure across the lab's emulated path instead (root): clean, intercontinental, "
        "censored-lossy, hostile; repeatable. Direct TCP through the same link in the same run",
    )
    bench.add_argument(
        "--path-time",
        type=positive_float,
        default=60.0,
        help="with --path: seconds a download may take before it is cut (goodput still counts)",
    )
    bench.add_argument(
        "--path-runs",
        type=positive_int,
        default=1,
        help="with --path: runs per preset; figures get their median, min and max",
    )
    bench.add_argument(
        "--path-kind",
        action="append",
        default=None,
        metavar="KIND",
        help="with --path: what carries the hop, repeatable: headless (volunteer), chromium "
        "(the widget in Chromium), chromium-engine (client and headless volunteer with "
        "--webrtc chromium), chromium-widget (a --webrtc chromium client, the widget in "
        "Chromium). Default: all four",
    )
    bench.add_argument(
        "--path-front",
        action="store_true",
        help="with --path: clients reach the broker through the lab's CDN front, over TLS "
        "(as a censored user would), not straight to it over plain HTTP",
    )
    bench.add_argument(
        "--path-client-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="with --path: one more argument for the client's command line (repeatable; "
        "e.g. --path-client-arg=--nat-check --path-client-arg=rfc5780)",
    )
    bench.add_argument(
        "--browser",
        action="store_true",
        help="also measure a Chromium widget volunteer against a headless one (root, chromium)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet, args.log_destinations)
    try:
        if args.role == "broker":
            return _run(_broker(resolve(args, BROKER_OPTIONS, "broker")))
        if args.role == "egress":
            if args.egress_command == "keygen":
                return _keygen(args)
            return _run(_egress(resolve(args, EGRESS_OPTIONS, "egress")))
        if args.role == "volunteer":
            return _run(_volunteer(resolve(args, VOLUNTEER_OPTIONS, "volunteer")))
        if args.role == "client":
            return _run(_client(resolve(args, CLIENT_OPTIONS, "client")))
        if args.role == "natcheck":
            return _run(_natcheck(resolve(args, NATCHECK_OPTIONS, "natcheck")))
        if args.role == "demo":
            from unwall.local import demo

            return _run(demo(args.socks, args.http, check=args.check, page=args.page))
        if args.role == "lab":
            return _lab(args)
        if args.role == "bench":
            from unwall.bench import bench

            if args.path:
                from unwall.lab.pathbench import VOLUNTEER_KINDS, path_bench

                return _run(
                    path_bench(
                        args.path,
                        args.size_mb,
                        args.json,
                        args.path_time,
                        kinds=args.path_kind or VOLUNTEER_KINDS,
                        runs=args.path_runs,
                        front=args.path_front,
                        client_args=args.path_client_arg,
                    )
                )
            return _run(bench(args.size_mb, args.json, args.profile, args.browser, args.runs))
    except ConfigError as exc:
        print(f"unwall {args.role}: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown role {args.role}")
    return 2


class UsageError(Exception):
    pass


def _run(coro: Coroutine[Any, Any, int | None]) -> int:
    """Run a role until it ends, Ctrl-C or SIGTERM; shut down cleanly either way."""

    async def runner() -> int | None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    try:
        result = asyncio.run(runner())
    except (KeyboardInterrupt, asyncio.CancelledError):
        log.info("stopped")
        return 0
    except (UsageError, ConfigError) as exc:
        log.error("%s", exc)
        return 2
    except (OSError, IncompatibleDependency) as exc:
        log.error("%s", exc)
        return 1
    return result or 0


def _apply_host_addresses(options: dict[str, Any]) -> None:
    """--host-address, and a first check of the --webrtc engine (before anything starts)."""
    if options["webrtc"] == "aiortc":
        from unwall.transport import webrtc

        # Made now, the engine patches aiortc and aioice now: IncompatibleDependency (the
        # installed versions lack what the patches need) stops the role before it starts.
        webrtc.engine("aiortc")
    if options["webrtc"] == "chromium":
        from unwall.transport.chromium import chromium_missing

        missing = chromium_missing()
        if missing is not None:
            raise UsageError(f"--webrtc chromium: {missing}")
        if options["host_address"]:
            log.warning(
                "--host-address with --webrtc chromium: Chromium gathers on this network "
                "namespace's default route, as browsers do, and shows that address (not an "
                "mDNS name) only if it is one of these"
            )
    if options["host_address"]:
        from unwall.transport import webrtc

        webrtc.set_host_addresses(options["host_address"])


def _networks(entries: list[str], flag: str) -> tuple[str, ...]:
    import ipaddress

    try:
        return tuple(str(ipaddress.ip_network(entry, strict=False)) for entry in entries)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _egress_list(entries: list[str]) -> dict[str, str]:
    """`--egress PIN=URL` entries as {pin: url}; raise UsageError on a malformed one."""
    from unwall.wire.pin import normalize_pin

    egresses: dict[str, str] = {}
    for entry in entries:
        cut = min((i for i in (entry.find("=ws://"), entry.find("=wss://")) if i >= 0), default=-1)
        if cut < 0:
            raise UsageError(f"--egress {entry!r}: expected PIN=ws(s)://HOST[:PORT]/v1/relay")
        try:
            pin = normalize_pin(entry[:cut])
        except ValueError as exc:
            raise UsageError(f"--egress {entry!r}: {exc}") from None
        egresses[pin] = entry[cut + 1 :]
    return egresses


async def _broker(options: dict[str, Any]) -> None:
    from unwall.broker.guard import Rate
    from unwall.broker.server import BrokerConfig, run_broker
    from unwall.broker.turn import make_issuer

    host, port = options["listen"]
    try:
        turn = make_issuer(options["turn_secret"], options["turn_url"], options["turn_ttl"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = BrokerConfig(
        poll_timeout=options["poll_timeout"],
        answer_timeout=options["answer_timeout"],
        egress_url=options["egress_url"],
        ice_servers=tuple(options["ice_server"]),
        turn=turn,
        redis_url=options["redis"],
        egresses=_egress_list(options["egress"]),
        report_secret=options["report_secret"],
        earn_room=bool(options["earn_room"]),
        trusted_proxies=_networks(options["trusted_proxy"], "--trusted-proxy"),
        offer_rate=Rate(
            options["offers_per_minute"] / 60, max(1.0, options["offers_per_minute"] / 4)
        ),
    )
    if config.redis_url is not None:
        from unwall.broker.pool import check_redis_url

        try:
            check_redis_url(config.redis_url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if turn is not None:
        log.info(
            "handing volunteers TURN credentials for %s, valid %.0f s",
            ", ".join(turn.urls),
            turn.ttl,
        )
    if not options["report_secret"]:
        raise UsageError(
            "unwall broker vouches for the clients it matches with tickets that its egresses "
            "check, and needs the secret it shares with them: `report_secret = ...` in the "
            "[broker] table of --config, or the environment variable UNWALL_REPORT_SECRET"
        )
    await run_broker(config, host, port)


def _report_urls(urls: list[str], over_http: bool) -> tuple[str, ...]:
    """`--report-to` URLs, checked: http(s) with a host; a plain http:// one only to this
    machine (loopback), or with --report-over-http (then with a warning), since every report
    carries the secret the egress shares with its brokers."""
    import ipaddress
    from urllib.parse import urlsplit

    for given in urls:
        try:
            parts = urlsplit(given)
            host = parts.hostname
        except ValueError:
            host, parts = None, None
        if parts is None or parts.scheme not in ("http", "https") or not host:
            raise UsageError(f"--report-to {given!r}: expected https://BROKER[:PORT]/")
        if parts.scheme == "https":
            continue
        try:
            local = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = False
        if local:
            continue
        if not over_http:
            raise UsageError(
                f"--report-to {given}: a plain http:// URL would send the report secret across "
                "the network in the clear; use https://, or add --report-over-http to send it "
                "anyway (only on a network you trust)"
            )
        log.warning("--report-to %s: the report secret crosses the network in the clear", given)
    return tuple(urls)


async def _egress(options: dict[str, Any]) -> None:
    from unwall.egress.identity import IdentityError, load_identity, load_secret
    from unwall.egress.policy import EgressPolicy
    from unwall.egress.server import EgressConfig, run_egress
    from unwall.transport.quic import check_aioquic

    check_aioquic()  # IncompatibleDependency before anything starts, not at the first session
    if not options["report_secret"]:
        try:
            options["report_secret"] = load_secret(options["key_dir"])
        except IdentityError as exc:
            raise UsageError(str(exc)) from None
    if not options["report_secret"]:
        raise UsageError(
            "unwall egress serves only clients its brokers vouched for, and needs the secret "
            "it shares with them: `report_secret = ...` in the [egress] table of --config, "
            "the environment variable UNWALL_REPORT_SECRET, or the file report-secret in "
            f"{options['key_dir']} (unwall egress keygen makes one); the brokers need the same"
        )
    ports = None if options["ports"] == "all" else options["ports"]
    try:
        identity = load_identity(options["key_dir"])
        policy = EgressPolicy.from_strings(options["allow"], ports)
    except (IdentityError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for network in policy.allow_networks:
        log.warning("egress policy: %s is allowed although it is not a public network", network)
    host, port = options["listen"]
    config = EgressConfig(
        host=host,
        port=port,
        key_dir=options["key_dir"],
        policy=policy,
        connect_timeout=options["connect_timeout"],
        max_sessions=options["max_sessions"],
        grace=options["grace"],
        max_connections=options["max_connections"],
        session_connections=options["session_connections"],
        session_stream_rate=options["session_stream_rate"],
        session_rate=options["session_rate"] or None,
        sessions_per_address=options["sessions_per_address"],
        sessions_per_network=options["sessions_per_network"],
        retry=not options["no_retry"],
        report_to=_report_urls(options["report_to"], bool(options["report_over_http"])),
        report_secret=options["report_secret"],
    )
    if policy.allowed_ports is None:
        log.warning("egress policy: every destination port is allowed (--ports all)")
    await run_egress(config, identity)


def _keygen(args: argparse.Namespace) -> int:
    from unwall.egress.identity import (
        SECRET_FILE,
        IdentityError,
        generate_identity,
        load_secret,
        make_secret,
        save_identity,
    )
    from unwall.wire.bridgeline import BridgeLine, BridgeLineError
    from unwall.wire.sealed import public_key_text

    key_dir = getattr(args, "key_dir", None)
    if key_dir is None and args.config is not None:
        key_dir = resolve(args, EGRESS_OPTIONS, "egress")["key_dir"]
    args.key_dir = key_dir or Path("egress-keys")
    try:  # the line is checked before anything is written
        BridgeLine.parse(
            BridgeLine(
                broker=args.broker,
                pin="sha256:" + "A" * 43,
                fronts=tuple(args.front),
                ice=tuple(args.ice_server),
            ).format()
        )
    except BridgeLineError as exc:
        print(f"unwall egress keygen: {exc}", file=sys.stderr)
        return 2
    identity = generate_identity()
    try:
        save_identity(identity, args.key_dir, overwrite=args.force)
    except IdentityError as exc:
        print(f"unwall egress keygen: {exc}", file=sys.stderr)
        return 1
    print(f"key and certificate written to {args.key_dir}/")
    if make_secret(args.key_dir):
        print(
            f"the secret brokers and egresses share written to {args.key_dir / SECRET_FILE}; "
            "give it to every broker (report_secret in its --config, or UNWALL_REPORT_SECRET)"
        )
    try:
        secret = resolve(args, EGRESS_OPTIONS, "egress")["report_secret"]
        secret = secret or load_secret(args.key_dir)
    except (IdentityError, ConfigError) as exc:
        print(f"unwall egress keygen: {exc}", file=sys.stderr)
        return 1
    broker_key = public_key_text(secret) if secret else None
    print(f"pin: {identity.pin}")
    if broker_key:
        print(f"broker key (from the secret the brokers hold): {broker_key}")
    print("bridge line:")
    line = BridgeLine(
        broker=args.broker,
        pin=identity.pin,
        fronts=tuple(args.front),
        broker_key=broker_key,
        ice=tuple(args.ice_server),
    )
    print(line.format())
    return 0


async def _volunteer(options: dict[str, Any]) -> int:
    from unwall.volunteer.headless import Volunteer, VolunteerConfig

    if not options["broker"] or not options["egress"]:
        raise UsageError("unwall volunteer needs --broker URL and --egress URL")
    _apply_host_addresses(options)
    try:
        volunteer = Volunteer(
            VolunteerConfig(
                broker_url=options["broker"],
                egress_url=options["egress"],
                capacity=options["capacity"],
                ice_servers=options["ice_server"],
                max_rate=options["max_rate"],
                stats_interval=options["stats_interval"],
                turn_user=options["turn_user"],
                turn_password=options["turn_password"],
                nat=options["nat"],
                webrtc=options["webrtc"],
                carrier=options["carrier"],
                metrics=options["metrics"],
                relay_hosts=options["relay_host"],
            )
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if options["check"]:
        import aiohttp

        try:
            await volunteer.learn_nat()
            async with aiohttp.ClientSession() as http:
                check = await volunteer.self_check(http)
        finally:
            await _close_engines()
        print(f"unwall volunteer: {check.line()}")
        return 0 if check.ready else 1
    log.info(
        "volunteer serving up to %d clients (broker %s, egress %s)",
        options["capacity"],
        options["broker"],
        options["egress"],
    )
    try:
        await volunteer.run()
    finally:
        await _close_engines()
    return 0


async def _client(options: dict[str, Any]) -> None:
    from unwall.client.page import PageConfig, StatusPage, serve_page
    from unwall.client.proxy import LocalProxies
    from unwall.client.status import ClientStatus
    from unwall.client.statusline import StatusLine
    from unwall.client.tunnel import Tunnel, TunnelConfig
    from unwall.wire.bridgeline import BridgeLine, BridgeLineError

    broker, pin = options["broker"], options["pin"]
    if options["bridge"]:
        try:
            line = BridgeLine.parse(options["bridge"])
        except BridgeLineError as exc:
            raise UsageError(str(exc)) from None
        broker, pin = broker or line.broker, pin or line.pin
        options["front"] = options["front"] or list(line.fronts)
        options["broker_key"] = options["broker_key"] or line.broker_key
        options["ice_server"] = options["ice_server"] or list(line.ice)
    if not broker or not pin:
        raise UsageError(
            "unwall client needs a bridge line (--bridge 'unwall1 ...') or --broker and --pin"
        )
    if options["broker_key"]:
        from unwall.wire.sealed import normalize_public_key

        try:
            options["broker_key"] = normalize_public_key(options["broker_key"])
        except ValueError as exc:
            raise UsageError(f"--broker-key: {exc}") from None
    else:
        log.warning(
            "no broker key (the bridge line's brokerkey=): offers go to the broker unsealed, "
            "and any front between reads them"
        )
    _apply_host_addresses(options)
    from unwall.transport.quic import check_aioquic

    check_aioquic()  # IncompatibleDependency before anything starts, not at the first path
    if options["dtls_role"] not in ("auto", "client", "server"):
        raise UsageError(
            f"--dtls-role must be auto, client or server, not {options['dtls_role']!r}"
        )
    try:
        tunnel = Tunnel(
            TunnelConfig(
                broker_url=broker,
                pin=pin,
                ice_servers=options["ice_server"],
                stream_wait=options["stream_wait"],
                paths=options["paths"],
                grace=options["grace"],
                dtls_role=options["dtls_role"],
                fronts=tuple(options["front"]),
                broker_key=options["broker_key"],
                ca_file=options["ca_file"],
                broker_http=options["broker_http"],
                nat_check=options["nat_check"],
                turn_user=options["turn_user"],
                turn_password=options["turn_password"],
                nat=options["nat"],
                webrtc=options["webrtc"],
                carrier=options["carrier"],
            )
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    proxies = LocalProxies(tunnel)
    socks_host, socks_port = options["socks"]
    http_host, http_port = options["http"]
    status = ClientStatus(tunnel, proxies)
    page: Any = None
    status_line = StatusLine(sys.stdout) if StatusLine.wanted(sys.stdout) else None
    try:
        socks = await proxies.start_socks(socks_host, socks_port)
        http = await proxies.start_http(http_host, http_port)
        # The addresses bound (a port 0 becomes the one the system chose).
        socks_host, socks_port = socks.sockets[0].getsockname()[:2]
        http_host, http_port = http.sockets[0].getsockname()[:2]
        log.info(
            "SOCKS5 proxy on %s:%d, HTTP proxy on %s:%d",
            socks_host,
            socks_port,
            http_host,
            http_port,
        )
        if options["page"] != "off":
            page_config = PageConfig(
                socks=(socks_host, socks_port),
                http=(http_host, http_port),
                pac_list=options["pac_list"],
                self_test_url=options["self_test_url"],
            )
            page_host, page_port = options["page"]
            try:
                page = await serve_page(StatusPage(page_config, status.snapshot), *options["page"])
            except OSError as exc:
                raise UsageError(f"{exc.strerror}; choose another with --page HOST:PORT") from None
            bound = page.addresses[0][1] if page.addresses else page_port
            shown = f"[{page_host}]" if ":" in page_host else page_host
            log.info("status page on http://%s:%d/ (open it in a browser)", shown, bound)
        if status_line is not None:
            status_line.around_logging()
        await status.run(tunnel.run(), status_line)
    finally:
        if status_line is not None:
            status_line.close()
        if page is not None:
            await page.cleanup()
        await proxies.close()
        await _close_engines()


async def _close_engines() -> None:
    from unwall.transport import webrtc

    await asyncio.shield(webrtc.close_engines())


async def _natcheck(options: dict[str, Any]) -> int:
    from unwall.transport.natcheck import NatCheckConfig, discover_nat, stun_server_of

    server = stun_server_of(options["ice_server"])
    if server is None:
        raise UsageError("unwall natcheck needs a STUN server: --ice-server stun:HOST:PORT")
    local = options["host_address"][0] if options["host_address"] else None
    config = NatCheckConfig(change_request=options["mode"] == "rfc5780")
    verdict = await discover_nat(server, local, config)
    if options["json"]:
        print(
            json.dumps(
                {
                    "nat": verdict.kind,
                    "mapping": verdict.mapping,
                    "filtering": verdict.filtering,
                    "reason": verdict.reason,
                }
            )
        )
    else:
        print(f"NAT: {verdict.describe()}")
    return 0


def _lab(args: argparse.Namespace) -> int:
    from unwall.lab import manager
    from unwall.lab.link import LinkError, preset
    from unwall.lab.profile import ProfileError
    from unwall.lab.topology import LabError

    try:
        if args.lab_command == "up":
            if args.link is not None:
                preset(args.link)  # an unknown name fails before anything is built
            info = manager.up(
                args.profile,
                link=args.link,
                homes=args.home,
                client_nat=args.client_nat,
                volunteers=not args.no_volunteers,
            )
            print("lab is up")
            for key, value in info.items():
                print(f"  {key}: {value}")
            return 0
        if args.lab_command == "down":
            manager.down()
            return 0
        if args.lab_command == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            return manager.run_in(args.namespace, command)
        if args.lab_command == "report":
            print(manager.report(as_json=args.json))
            return 0
        if args.lab_command == "link":
            print("link is now", manager.set_link(preset(args.preset)))
            if args.stats:
                print(json.dumps(manager.link_stats(), indent=2))
            return 0
        if args.lab_command == "probe":
            print(json.dumps(manager.probe_path(args.count, args.rate), indent=2))
            return 0
        if args.lab_command == "_probe":
            from unwall.lab.probe import PROBE_PORT, probe
            from unwall.lab.topology import LabAddresses

            result = asyncio.run(probe(LabAddresses().open, PROBE_PORT, args.count, args.rate))
            print(json.dumps(result.as_dict()))
            return 0
        if args.lab_command == "_link":
            from unwall.lab.delayline import run_delay_line

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
            return run_delay_line(args.state)
        if args.lab_command == "_box":
            from unwall.lab.box import run_box
            from unwall.lab.profile import CensorProfile
            from unwall.lab.topology import LabAddresses

            profile = CensorProfile.load(args.state / "profile.toml")
            return _run(run_box(profile, args.state / "flows.db", LabAddresses().dns))
        if args.lab_command == "_internet":
            from unwall.lab.internet import run_internet
            from unwall.lab.topology import LabAddresses

            return _run(run_internet(LabAddresses(), args.state))
    except (LabError, ProfileError, LinkError) as exc:
        print(f"unwall lab: {exc}", file=sys.stderr)
        return 1
    return 2
