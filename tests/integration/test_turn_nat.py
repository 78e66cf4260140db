"""TURN between a client and a headless volunteer each behind a real Linux NAT: the real
`unwall broker`, `egress`, `volunteer` and `client` processes and a real coturn.

Five namespaces of the test's own: `inet` (the internet: coturn, broker and egress on
203.0.113.100, routes to the two gateways and to nothing else, like a TURN server's network
that has no route to anyone's private addresses), and for each side a home network
(198.51.100.0/30 and 198.51.100.4/30) behind a gateway that masquerades onto the internet:
plain MASQUERADE is port-restricted, `--random-fully` symmetric. The client's private host
address and the volunteer's are out of each other's reach and out of coturn's, so no host
pair can connect and only relayed paths can: the client's own TURN server (coturn's REST
API credentials, as --turn-user/--turn-password), the broker's credentials for the
volunteer.

Each side's private host candidate is offered to the other. Relaying a check to it makes
coturn's send fail ("Network is unreachable"), and coturn deletes the whole allocation
then: that is what this guards against (see aiortc_engine/turn.py, "never relay to a peer's
private host address"), including a client whose network lets only TCP out, with TURN over
TLS on 443.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from coturn import Coturn, coturn, require_coturn

from unwall.broker.turn import TurnIssuer
from unwall.egress.identity import generate_identity, load_identity, save_identity
from unwall.lab.internet import make_ca
from unwall.netns import NamespaceError, namespaces_possible

UNWALL = [sys.executable, "-m", "unwall"]
SECRET = "broker-and-coturn-share-this"
SERVICES = "203.0.113.100"  # coturn, broker and egress, in the internet namespace
TURN_NAME = "turn.test"  # the client's name for it (its namespace's /etc/hosts)
SYMMETRIC = ["--random-fully"]
PORT_RESTRICTED: list[str] = []
CONNECT_TIMEOUT = 30.0
NETNS_ETC = Path("/etc/netns")


def run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NamespaceError(f"{' '.join(argv)}: {result.stderr.strip()}")


@dataclass(frozen=True)
class Internet:
    inet: str
    client: str
    volunteer: str


@contextlib.contextmanager
def internet(
    client_nat: list[str], volunteer_nat: list[str], client_udp_blocked: bool = False
) -> Iterator[Internet]:
    """The five namespaces; the client's gateway also refuses to forward UDP if asked."""
    reason = namespaces_possible()
    if reason is not None:
        pytest.skip(reason)
    tag = f"uwtn{os.getpid() % 100000}"
    net = Internet(f"{tag}-inet", f"{tag}-cli", f"{tag}-vol")
    client_gw, volunteer_gw = f"{tag}-cgw", f"{tag}-vgw"
    names = (net.inet, client_gw, volunteer_gw, net.client, net.volunteer)

    def cleanup() -> None:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["rm", "-rf", str(NETNS_ETC / net.client)], timeout=30)

    cleanup()
    try:
        for ns in names:
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "dev", "lo", "up")
        run("ip", "-n", net.inet, "addr", "add", f"{SERVICES}/32", "dev", "lo")
        # Every link is made inside namespaces: nothing appears in the host's.
        homes = (
            (client_gw, net.client, "c0", "203.0.113.", 0, "198.51.100.", 0, client_nat),
            (volunteer_gw, net.volunteer, "v0", "203.0.113.", 4, "198.51.100.", 4, volunteer_nat),
        )
        for gateway, home, uplink, outer, o, inner, i, masquerade in homes:
            run("ip", "-n", net.inet, "link", "add", uplink, "type", "veth",
                "peer", "name", "up", "netns", gateway)  # fmt: skip
            run("ip", "-n", gateway, "link", "add", "dn", "type", "veth",
                "peer", "name", "eth0", "netns", home)  # fmt: skip
            for ns, dev, address in (
                (net.inet, uplink, f"{outer}{o + 1}/30"),
                (gateway, "up", f"{outer}{o + 2}/30"),
                (gateway, "dn", f"{inner}{i + 1}/30"),
                (home, "eth0", f"{inner}{i + 2}/30"),
            ):
                run("ip", "-n", ns, "addr", "add", address, "dev", dev)
                run("ip", "-n", ns, "link", "set", "dev", dev, "up")
            run("ip", "-n", gateway, "route", "add", "default", "via", f"{outer}{o + 1}")
            run("ip", "-n", home, "route", "add", "default", "via", f"{inner}{i + 1}")
            run("ip", "netns", "exec", gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            run("ip", "netns", "exec", gateway, "iptables", "-t", "nat", "-A", "POSTROUTING",
                "-o", "up", "-j", "MASQUERADE", *masquerade)  # fmt: skip
        run("ip", "netns", "exec", net.inet, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if client_udp_blocked:
            run("ip", "netns", "exec", client_gw, "iptables", "-A", "FORWARD",
                "-p", "udp", "-j", "REJECT")  # fmt: skip
        etc = NETNS_ETC / net.client
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{SERVICES} {TURN_NAME}\n")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        yield net
    finally:
        cleanup()


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for TURN_NAME signed by it: (ca, cert, key) PEM files."""
    return make_ca(directory, [TURN_NAME])


class Roles:
    """The unwall processes of one test, each logging to a file; all killed at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, ns: str, *argv: str, env: dict[str, str] | None = None) -> Path:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            self.processes.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, *UNWALL, *argv],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})},
                )
            )
        return log

    def stop(self) -> None:
        for process in self.processes:  # `ip netns exec` execs: this is the role itself
            process.kill()
        for process in self.processes:
            process.wait(timeout=10)


def listening(ns: str, address: str) -> bool:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Hltn"], capture_output=True, text=True, timeout=10
    ).stdout
    return any(address in line.split() for line in out.splitlines())


def wait_for(what: str, check: object, timeout: float, logs: list[Path]) -> float:
    """Seconds until ``check()`` holds; on timeout, fail showing the logs' relevant lines."""
    started = time.monotonic()
    assert callable(check)
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    tails = "\n".join(f"--- {log.name}\n{relevant(log)}" for log in logs)
    raise AssertionError(f"never happened within {timeout:.0f} s: {what}\n{tails}")


def relevant(log: Path) -> str:
    keep = ("unwall.", "TURN", "CHANNEL_BIND, message_class=Class.ERROR", "ICE ", "Error")
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(line[:300] for line in lines if any(k in line for k in keep))[-6000:]


def says(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


@pytest.mark.parametrize(
    ("client_nat", "volunteer_nat", "client_turn", "client_udp_blocked"),
    [
        pytest.param(SYMMETRIC, PORT_RESTRICTED, "udp", False, id="symmetric-port_restricted-udp"),
        pytest.param(SYMMETRIC, PORT_RESTRICTED, "tcp", False, id="symmetric-port_restricted-tcp"),
        pytest.param(SYMMETRIC, SYMMETRIC, "udp", False, id="symmetric-symmetric-udp"),
        pytest.param(SYMMETRIC, SYMMETRIC, "tcp", False, id="symmetric-symmetric-tcp"),
        pytest.param(SYMMETRIC, PORT_RESTRICTED, "tls", True, id="udp_blocked-turns_443"),
    ],
)
def test_client_reaches_a_headless_volunteer_through_turn(
    tmp_path: Path,
    client_nat: list[str],
    volunteer_nat: list[str],
    client_turn: str,
    client_udp_blocked: bool,
) -> None:
    """The client's own TURN server (turn: over UDP or TCP; or, where UDP does not get out
    at all, turns: over TLS on 443) and the broker's credentials for the volunteer: the
    tunnel to the egress comes up, and coturn never fails a relayed send."""
    require_coturn()
    ca, cert, key = tls_files(tmp_path)
    save_identity(generate_identity(), tmp_path / "keys")
    egress_pin = load_identity(tmp_path / "keys").pin
    client_url = {
        "udp": f"turn:{SERVICES}:3478?transport=udp",
        "tcp": f"turn:{SERVICES}:3478?transport=tcp",
        "tls": f"turns:{TURN_NAME}:443?transport=tcp",
    }[client_turn]
    # The volunteer's network lets UDP out: the broker hands it TURN over UDP.
    issuer = TurnIssuer(SECRET, (f"turn:{SERVICES}:3478?transport=udp",), ttl=3600)
    client_credentials = issuer.issue(time.time())
    broker = f"http://{SERVICES}:8080"
    roles = Roles(tmp_path)
    # The secret broker and egress share (tickets: docs/protocol.md §3.1).
    SHARED = {"UNWALL_REPORT_SECRET": "a secret for the broker and the egress of this test"}
    with (
        internet(client_nat, volunteer_nat, client_udp_blocked) as net,
        coturn(
            tmp_path / "coturn",
            (SERVICES,),
            netns=net.inet,
            stun_only=False,
            auth_secret=SECRET,
            tls=(cert, key),
            verbose=True,
        ) as turn_server,
    ):
        try:
            broker_log = roles.start(
                "broker", net.inet, "broker", "--listen", f"{SERVICES}:8080",
                "--turn-url", issuer.urls[0], "--poll-timeout", "2",
                env={"UNWALL_TURN_SECRET": SECRET, **SHARED},  # never on a command line
            )  # fmt: skip
            egress_log = roles.start(
                "egress", net.inet, "egress", "--listen", f"{SERVICES}:7000",
                "--key-dir", str(tmp_path / "keys"), env=SHARED,
            )  # fmt: skip
            wait_for(
                "broker and egress listening",
                lambda: (
                    listening(net.inet, f"{SERVICES}:8080")
                    and listening(net.inet, f"{SERVICES}:7000")
                ),
                20,
                [broker_log, egress_log],
            )
            volunteer_log = roles.start(
                "volunteer", net.volunteer, "-vv", "volunteer", "--broker", broker,
                "--egress", f"ws://{SERVICES}:7000/v1/relay",
                "--nat", "symmetric" if volunteer_nat else "port-restricted",
            )  # fmt: skip
            wait_for(
                "the volunteer's first poll, with the broker's TURN credentials",
                lambda: says(volunteer_log, "the broker gives us (turn:"),
                20,
                [volunteer_log, broker_log],
            )
            client_log = roles.start(
                "client", net.client, "-vv", "client", "--broker", broker, "--pin", egress_pin,
                "--ice-server", client_url, "--turn-user", client_credentials.username,
                "--nat", "symmetric",
                "--paths", "1", "--socks", "127.0.0.1:1080", "--http", "127.0.0.1:8118",
                env={
                    "SSL_CERT_FILE": str(ca),  # trust the test CA for turns:
                    "UNWALL_TURN_PASSWORD": client_credentials.credential,
                },
            )  # fmt: skip
            elapsed = wait_for(
                "the client's tunnel to the egress",
                lambda: says(client_log, "tunnel ready"),
                CONNECT_TIMEOUT,
                [client_log, volunteer_log],
            )
            assert says(volunteer_log, "client connected")
        finally:
            roles.stop()
        failed_sends = failed_relay_sends(turn_server)
    assert not failed_sends, failed_sends
    assert elapsed < 15, f"took {elapsed:.1f} s"
    client_text = client_log.read_text(errors="replace")
    assert "TURN allocation created" in client_text
    # The volunteer has no ICE server of its own: its relay is the broker's.
    assert "TURN allocation created" in volunteer_log.read_text(errors="replace")
    if client_turn == "tls":
        assert "turn/tcp" in client_text and "SSLProtocolTransport" in client_text


def failed_relay_sends(server: Coturn) -> list[str]:
    """coturn's perror lines for relay sends that failed (each one cost an allocation)."""
    return [line for line in server.stderr_text().splitlines() if line.startswith("udp send")]
