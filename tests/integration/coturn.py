"""Debian's coturn (`turnserver`) as a test's own STUN/TURN server, on free ports.

Given two listening addresses of one family, coturn answers RFC 5780 CHANGE-REQUESTs (from
its second address and its alternate port) and adds OTHER-ADDRESS to its answers; given
one, it is a plain STUN server. Everything it writes (pid file, SQLite user database, log,
stderr) stays in the test's directory, and the process is killed when the context ends, also
on failure.

It runs from the configuration unwall ships (src/unwall/broker/coturn.conf, which denies
relaying to every special-purpose range), with the test's own lines appended in a file of
mode 600 (the secret never goes on the command line); a TURN server opens the networks the
tests relay to (loopback, 198.51.100.0/24 and 203.0.113.0/24) unless told otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from unwall.broker.coturn import allowed_peers, instance_config, write_config

#: What a test's TURN server relays to, by default: the tests' own peers.
TEST_PEERS = ("127.0.0.0/8", "198.51.100.0/24", "203.0.113.0/24")


def require_coturn() -> str:
    path = shutil.which("turnserver")
    if path is None:
        pytest.skip("coturn (turnserver) is not installed")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port found")


@dataclass
class Coturn:
    addresses: tuple[str, ...]
    port: int
    alt_port: int
    log: Path
    process: subprocess.Popen[bytes]
    #: what coturn writes to stderr (perror: a relay socket's failed sends, for instance)
    stderr: Path | None = None

    @property
    def stun_url(self) -> str:
        return f"stun:{self.addresses[0]}:{self.port}"

    def turn_url(self, transport: str = "udp") -> str:
        return f"turn:{self.addresses[0]}:{self.port}?transport={transport}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stderr_text(self) -> str:
        if self.stderr is None or not self.stderr.exists():
            return ""
        return self.stderr.read_text(errors="replace")


@contextlib.contextmanager
def coturn(
    workdir: Path,
    addresses: Sequence[str] = ("127.0.0.1",),
    *,
    netns: str | None = None,
    port: int | None = None,
    stun_only: bool = True,
    auth_secret: str | None = None,
    users: Sequence[tuple[str, str]] = (),
    realm: str = "unwall.test",
    tls: tuple[Path, Path] | None = None,
    tls_port: int = 443,
    verbose: bool = False,
    relay_addresses: Sequence[str] | None = None,
    allowed: Sequence[str] = TEST_PEERS,
) -> Iterator[Coturn]:
    """Run coturn listening on ``addresses`` (in namespace ``netns`` if given); with
    ``tls`` (certificate and key PEM files) also TURN over TLS on ``tls_port``. A TURN
    server relays from ``relay_addresses`` (default: the first listening address) and to
    public addresses and the networks of ``allowed`` (CIDRs) only."""
    binary = require_coturn()
    workdir.mkdir(parents=True, exist_ok=True)
    if netns is None:
        port = port or free_port(addresses[0])
        alt_port = free_port(addresses[0])
    else:  # a namespace of the test's own: every port is free
        port = port or 3478
        alt_port = port + 1
    log = workdir / "turnserver.log"
    settings = [
        "no-dtls", f"listening-port={port}", f"alt-listening-port={alt_port}",
        f"pidfile={workdir / 'turnserver.pid'}", f"userdb={workdir / 'turndb'}",
        f"log-file={log}",
        *(f"listening-ip={address}" for address in addresses),
    ]  # fmt: skip
    if tls is None:
        settings.append("no-tls")
    else:
        settings += [f"tls-listening-port={tls_port}", f"cert={tls[0]}", f"pkey={tls[1]}"]
    if verbose:
        settings.append("verbose")
    without = set()
    if stun_only:
        settings.append("stun-only")
    else:
        relays = relay_addresses if relay_addresses is not None else addresses[:1]
        settings += [f"realm={realm}", *(f"relay-ip={address}" for address in relays)]
        if any(ipaddress.ip_network(n, strict=False).is_loopback for n in allowed):
            settings.append("allow-loopback-peers")
        settings += allowed_peers(allowed)
        if auth_secret is not None:
            settings.append(f"static-auth-secret={auth_secret}")
        else:
            without.add("use-auth-secret")
            settings.append("lt-cred-mech")
            settings += [f"user={user}:{password}" for user, password in users]
    config = write_config(workdir / "turnserver.conf", instance_config(settings, without))
    argv = [binary, "-c", str(config)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    stderr = workdir / "turnserver.stderr"
    with stderr.open("wb") as err:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    server = Coturn(tuple(addresses), port, alt_port, log, process, stderr)
    try:
        _wait_listening(server, netns, tls_port if tls is not None else None)
        yield server
    finally:
        process.kill()
        process.wait(timeout=10)


def _wait_listening(server: Coturn, netns: str | None, tls_port: int | None = None) -> None:
    """Until a UDP socket is bound on every listening address, and a TCP one on the TLS
    port if there is one (coturn has no ready signal)."""
    shown = [f"[{a}]" if ":" in a else a for a in server.addresses]  # as ss shows them
    wanted = {("-Hlun", f"{address}:{server.port}") for address in shown}
    if tls_port is not None:
        wanted |= {("-Hltn", f"{address}:{tls_port}") for address in shown}
    prefix = ["ip", "netns", "exec", netns] if netns is not None else []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"coturn exited early:\n{server.log_text()[-2000:]}")
        local = set()
        for flags in {flags for flags, _ in wanted}:
            command = [*prefix, "ss", flags]
            out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
            local |= {
                (flags, line.split()[3]) for line in out.splitlines() if len(line.split()) > 3
            }
        if wanted <= local:
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"coturn did not listen on {sorted(a for _, a in wanted)}:\n{server.log_text()[-2000:]}"
    )
