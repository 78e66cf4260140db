"""RFC 5780 discovery against a real coturn: on loopback, and behind real Linux NATs.

Behind NAT: three namespaces of the test's own, joined to nothing else. `inside`
(198.51.100.2) routes through `gateway`, which masquerades onto 203.0.113.1; `outside`
holds coturn on 203.0.113.2 and 203.0.113.3. Linux's MASQUERADE keeps a flow's source
port (an endpoint-independent mapping) and lets in only replies to the exact remote
address and port: port-restricted. With `--random-fully` each flow gets a random port:
symmetric.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from coturn import coturn, require_coturn

from unwall.netns import NamespaceError, namespaces_possible
from unwall.transport.natcheck import NatCheckConfig, NatDiscovery, Verdict, discover_nat

UNWALL = [sys.executable, "-m", "unwall"]


async def test_loopback_with_two_addresses_is_no_nat(tmp_path: Path) -> None:
    with coturn(tmp_path, ("127.0.0.1", "127.0.0.2")) as server:
        verdict = await discover_nat(("127.0.0.1", server.port))
    assert verdict.kind == "none", verdict.describe()
    assert verdict.mapped is not None and verdict.mapped[0] == "127.0.0.1"


async def test_loopback_with_one_address_is_no_nat_too(tmp_path: Path) -> None:
    """Mapped == local needs no RFC 5780: without a NAT there is nothing more to learn."""
    with coturn(tmp_path, ("127.0.0.1",)) as server:
        verdict = await discover_nat(("127.0.0.1", server.port))
    assert verdict.kind == "none", verdict.describe()


async def drive(engine: NatDiscovery, sock: socket.socket) -> Verdict:
    """The engine over a real socket (discover_nat's loop, with the engine built here)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    while engine.verdict is None:
        for data, to in engine.datagrams_to_send(loop.time()):
            sock.sendto(data, to)
        timer = engine.get_timer()
        assert timer is not None
        try:
            data, source = await asyncio.wait_for(
                loop.sock_recvfrom(sock, 2048), max(0.0, timer - loop.time())
            )
        except TimeoutError:
            engine.handle_timer(loop.time())
        else:
            engine.receive_datagram(data, (source[0], source[1]), loop.time())
    return engine.verdict


async def test_every_rfc5780_test_against_coturn(tmp_path: Path) -> None:
    """Told that our address is another one, the engine runs every test for real: loopback
    has no NAT and no filter, so coturn's answers to all of them come back: full cone."""
    with (
        coturn(tmp_path, ("127.0.0.1", "127.0.0.2")) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.bind(("127.0.0.1", 0))
        loop = asyncio.get_running_loop()
        pretend = ("127.0.0.9", 9)
        engine = NatDiscovery(pretend, ("127.0.0.1", server.port), loop.time())
        verdict = await drive(engine, sock)
    assert verdict.kind == "full-cone", verdict.describe()
    assert (verdict.mapping, verdict.filtering) == ("endpoint-independent", "endpoint-independent")
    assert {probe.value for probe in engine.outcomes} == {
        "binding",
        "filtering: change IP and port",
        "mapping: alternate IP",
    }


async def test_silent_server_is_unknown_quickly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        config = NatCheckConfig(timeout=0.6)
        verdict = await discover_nat(silent.getsockname(), config=config)
    assert verdict.kind == "unknown"
    assert "no answer" in verdict.reason
    assert time.monotonic() - started < 2.0


async def test_unresolvable_server_is_unknown() -> None:
    verdict = await discover_nat(("no-such-host.invalid", 3478))
    assert verdict.kind == "unknown"
    assert "cannot resolve" in verdict.reason


def test_cli_prints_the_verdict(tmp_path: Path) -> None:
    with coturn(tmp_path, ("127.0.0.1", "127.0.0.2")) as server:
        result = subprocess.run(
            [*UNWALL, "natcheck", "--ice-server", server.stun_url, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["nat"] == "none"
    result = subprocess.run([*UNWALL, "natcheck"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--ice-server stun:HOST:PORT" in result.stderr


# -- behind real NATs ----------------------------------------------------------------------


def run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NamespaceError(f"{' '.join(argv)}: {result.stderr.strip()}")


@contextmanager
def natted(masquerade: list[str]) -> Iterator[tuple[str, str]]:
    """(inside, outside) namespaces with a gateway between them doing ``masquerade``."""
    reason = namespaces_possible()
    if reason is not None:
        pytest.skip(reason)
    tag = f"uwnat{os.getpid() % 100000}"
    inside, gateway, outside = f"{tag}-in", f"{tag}-gw", f"{tag}-out"

    def cleanup() -> None:
        for ns in (inside, gateway, outside):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    cleanup()
    try:
        for ns in (inside, gateway, outside):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        # Links are made inside the gateway, so nothing ever appears in the host's namespace.
        run("ip", "-n", gateway, "link", "add", "in0", "type", "veth", "peer", "name", "gw0")
        run("ip", "-n", gateway, "link", "set", "in0", "netns", inside)
        run("ip", "-n", gateway, "link", "add", "out0", "type", "veth", "peer", "name", "gw1")
        run("ip", "-n", gateway, "link", "set", "out0", "netns", outside)
        run("ip", "-n", inside, "addr", "add", "198.51.100.2/24", "dev", "in0")
        run("ip", "-n", gateway, "addr", "add", "198.51.100.1/24", "dev", "gw0")
        run("ip", "-n", gateway, "addr", "add", "203.0.113.1/24", "dev", "gw1")
        run("ip", "-n", outside, "addr", "add", "203.0.113.2/24", "dev", "out0")
        run("ip", "-n", outside, "addr", "add", "203.0.113.3/24", "dev", "out0")
        for ns, dev in ((inside, "in0"), (gateway, "gw0"), (gateway, "gw1"), (outside, "out0")):
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", inside, "route", "add", "default", "via", "198.51.100.1")
        run("ip", "netns", "exec", gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        nat = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "gw1", "-j", "MASQUERADE"]
        run("ip", "netns", "exec", gateway, *nat, *masquerade)
        yield inside, outside
    finally:
        cleanup()


def natcheck_in(namespace: str, stun_url: str, *extra: str) -> dict[str, str]:
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            namespace,
            *UNWALL,
            "natcheck",
            "--ice-server",
            stun_url,
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    verdict: dict[str, str] = json.loads(result.stdout)
    return verdict


@pytest.mark.parametrize(
    ("masquerade", "kind", "mapping"),
    [
        ([], "port-restricted", "endpoint-independent"),
        (["--random-fully"], "symmetric", "address-and-port-dependent"),
    ],
    ids=["masquerade", "masquerade-random-fully"],
)
def test_behind_linux_nat(tmp_path: Path, masquerade: list[str], kind: str, mapping: str) -> None:
    require_coturn()
    with (
        natted(masquerade) as (inside, outside),
        coturn(tmp_path, ("203.0.113.2", "203.0.113.3"), netns=outside) as server,
    ):
        verdict = natcheck_in(inside, server.stun_url)
    assert verdict["nat"] == kind, verdict
    assert verdict["mapping"] == mapping
    assert verdict["filtering"] == "address-and-port-dependent"


@pytest.mark.parametrize(
    ("masquerade", "kind", "mapping"),
    [
        ([], "port-restricted", "endpoint-independent"),
        (["--random-fully"], "symmetric", "address-and-port-dependent"),
    ],
    ids=["masquerade", "masquerade-random-fully"],
)
def test_behind_linux_nat_as_a_browser_would_ask(
    tmp_path: Path, masquerade: list[str], kind: str, mapping: str
) -> None:
    """The client's default check: plain bindings to the server's two addresses, no
    CHANGE-REQUEST. The mapping is measured as with RFC 5780; the filtering is not, and is
    taken as the strictest (port-restricted is the kind these NATs are anyway)."""
    require_coturn()
    with (
        natted(masquerade) as (inside, outside),
        coturn(tmp_path, ("203.0.113.2", "203.0.113.3"), netns=outside) as server,
    ):
        verdict = natcheck_in(inside, server.stun_url, "--mode", "browser")
    assert verdict["nat"] == kind, verdict
    assert verdict["mapping"] == mapping
    assert verdict["filtering"] is None
    assert "filtering not measured" in verdict["reason"]


def test_behind_nat_a_plain_stun_server_gives_unknown(tmp_path: Path) -> None:
    require_coturn()
    with (
        natted([]) as (inside, outside),
        coturn(tmp_path, ("203.0.113.2",), netns=outside) as server,
    ):
        verdict = natcheck_in(inside, server.stun_url)
    assert verdict["nat"] == "unknown"
    assert "OTHER-ADDRESS" in verdict["reason"]
