"""Volunteers at home behind NATs, clients behind the box's NAT: who reaches whom.

One lab for the module: four home networks, one per NAT kind, each a router namespace
with the kernel's NAT in front of one volunteer host; the box's NAT in front of the
censored host is changed between cells. Every cell starts one volunteer (headless, or the
widget in Debian's Chromium with its default flags: mDNS host candidates on) in one home,
and a client with the lab's STUN server, then either downloads 1 MB through the client's
SOCKS5 (sha256 equal) or, where the pair cannot meet without a relay, checks that the
client says so in words and then succeeds once it is given TURN.

Setup times are written to artifacts/nat-matrix.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from unwall.lab import manager, topology
from unwall.lab.censored import CensoredClient
from unwall.lab.internet import blob

_reason = topology.lab_possible()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

KINDS = ("none", "full-cone", "port-restricted", "symmetric")
#: Pairs (client, volunteer) that UDP hole punching cannot join: a symmetric NAT sends
#: from a port the other side never learned, and a port-restricted or symmetric NAT drops
#: that. And one the client cannot know it could join: its NAT check sends no
#: CHANGE-REQUEST (no browser does; a box would single it out), so a full-cone NAT's
#: filtering is not measured and is taken as the strictest, port-restricted, which the
#: broker does not pair with a symmetric volunteer (`--nat-check rfc5780` would). Everything
#: else meets directly.
NEEDS_RELAY = {
    ("port-restricted", "symmetric"),
    ("symmetric", "port-restricted"),
    ("symmetric", "symmetric"),
    ("full-cone", "symmetric"),
}
SIZE = 1_000_000
RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("natlab") / "state"
    os.environ["UNWALL_LAB_STATE"] = str(state)
    try:
        info = manager.up(homes=KINDS, volunteers=False, volunteer_turn=False)
        yield info
    finally:
        manager.down(quiet=True)
        os.environ.pop("UNWALL_LAB_STATE", None)
        if RESULTS:
            from tests.integration.conftest import ARTIFACTS

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "nat-matrix.json").write_text(json.dumps(RESULTS, indent=2))


def _home(info: dict[str, Any], kind: str) -> topology.Home:
    index = next(i for i, h in enumerate(info["homes"], 1) if h["nat"] == kind)
    return topology.Home(index, topology.parse_nat_kind(kind))


class Client(CensoredClient):
    async def wait_for(self, text: str, timeout: float) -> float:
        """Seconds from the client's start until `text` is in its log (else it fails)."""
        seconds = await self.until(text, timeout)
        assert seconds is not None, f"no {text!r} in:\n{self.text()}{_volunteer_logs()}"
        return seconds


def _volunteer_logs() -> str:
    """The tails of the headless volunteers' logs, and the UDP mappings the box's and the
    home routers' NATs hold, for a cell that failed."""
    parts = []
    for path in sorted(manager.state_dir().glob("volunteer-home*.log")):
        lines = path.read_text(errors="replace").splitlines()[-15:]
        parts.append(f"\n--- {path.name} (last lines) ---\n" + "\n".join(lines))
    homes = [n for n in topology.namespaces_up() if n.startswith(topology.PREFIX + "home")]
    routers = [topology.BOX, *sorted(homes)]
    for router in routers:
        table = topology.run("conntrack", "-L", "-p", "udp", namespace=router, check=False)
        parts.append(f"\n--- UDP conntrack in {router} ---\n{table.strip()}")
    return "".join(parts)


async def _download() -> str:
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", topology.CENSORED, "curl", "--silent", "--show-error",
        "--max-time", "60", "--socks5-hostname", "127.0.0.1:1080",
        f"http://open.test/blob/{SIZE}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")
    return hashlib.sha256(out).hexdigest()


@pytest.fixture
async def volunteer(
    request: pytest.FixtureRequest, lab: dict[str, Any], tmp_path: Path
) -> AsyncIterator[tuple[str, topology.Home]]:
    kind, home_kind = request.param
    home = _home(lab, home_kind)
    if kind == "headless":
        manager.start_volunteer(home, lab["stun"], Path(lab["state"]))
        try:
            yield kind, home
        finally:
            await asyncio.to_thread(manager.stop, f"volunteer-home{home.index}")
        return
    from unwall.browser import (
        chromium_in,
        chromium_missing,
        firefox_in,
        firefox_missing,
        widget_switch,
    )

    if kind == "firefox":
        missing = firefox_missing()
        if missing:
            pytest.skip(missing)
        async with firefox_in(home.host, "http://open.test/volunteer", tmp_path):
            yield kind, home
        return
    missing = chromium_missing()
    if missing:
        pytest.skip(missing)
    async with chromium_in(home.host, tmp_path, mdns=True) as browser:
        page = await browser.new_page()
        await page.goto("http://203.0.113.20:8080/")
        await widget_switch(page).click()
        yield kind, home


CELLS = [
    pytest.param(
        client,
        (volunteer_kind, home),
        id=f"client-{client}-{volunteer_kind}-{home}",
    )
    for volunteer_kind in ("headless", "chromium")
    for client in KINDS
    for home in KINDS
    # Of the pairs that need TURN, Chromium takes the hardest one (symmetric both sides);
    # the other two are the headless volunteer's, and the widget's TURN has its own test
    # (test_browser_turn.py). Suite time.
    if volunteer_kind == "headless"
    or (client, home) not in NEEDS_RELAY
    or (client, home) == ("symmetric", "symmetric")
] + [
    # Firefox ESR at its defaults (it can only be driven by a page that turns the widget on
    # at load): a public client, and one behind the box's port-restricted NAT.
    pytest.param(
        client, ("firefox", "port-restricted"), id=f"client-{client}-firefox-port-restricted"
    )
    for client in ("none", "port-restricted")
]


@pytest.mark.parametrize(("client_nat", "volunteer"), CELLS, indirect=["volunteer"])
async def test_nat_matrix(
    lab: dict[str, Any], client_nat: str, volunteer: tuple[str, topology.Home], tmp_path: Path
) -> None:
    volunteer_kind, home = volunteer
    topology.set_client_nat(topology.parse_nat_kind(client_nat))
    cell = f"client {client_nat} x {volunteer_kind} volunteer {home.nat}"
    want = hashlib.sha256(blob(SIZE)).hexdigest()
    record: dict[str, Any] = {}
    client = Client(lab, tmp_path / "client.log")
    try:
        if (client_nat, home.nat) not in NEEDS_RELAY:
            record["setup_s"] = round(await client.wait_for("tunnel ready", 45), 2)
            assert await _download() == want
            record["direct"] = True
        else:
            record["direct"] = False
            if volunteer_kind == "headless":
                # The client says why, in words, and does not keep trying the impossible
                # (the broker's matching, whatever kind the volunteer: checked once, here).
                await client.wait_for("TURN", 40)
            client.stop()
            turn = lab["turn"]
            user, password = manager.client_turn_credentials()
            client = Client(
                lab, tmp_path / "client-turn.log", "--ice-server", turn["urls"][0],
                "--turn-user", user, env={"UNWALL_TURN_PASSWORD": password},
            )  # fmt: skip
            record["setup_with_turn_s"] = round(await client.wait_for("tunnel ready", 45), 2)
            assert await _download() == want
    finally:
        client.stop()
        RESULTS[cell] = record


def test_udp_blocked_needs_turn_over_tls(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Only TCP leaves the censored network: TURN over TLS on 443 carries the session. The
    client is given the TURN URL alone, as a bridge line gives it, and gets credentials
    from the broker in the sealed channel."""
    state = tmp_path_factory.mktemp("udplab") / "state"
    os.environ["UNWALL_LAB_STATE"] = str(state)
    profile = state.parent / "profile.toml"
    profile.write_text("[udp]\nblock = true\n")
    try:
        info = manager.up(profile)  # the broker hands out TURN credentials
        asyncio.run(_udp_blocked(info, state))
    finally:
        manager.down(quiet=True)
        os.environ.pop("UNWALL_LAB_STATE", None)


async def _udp_blocked(info: dict[str, Any], state: Path) -> None:
    client = Client(info, state / "client.log")
    try:
        await client.wait_for("blocks UDP", 60)  # it says that nothing gets through over UDP
    finally:
        client.stop()
    client = Client(
        info, state / "client-turn.log", "--ice-server", "turns:turn.test:443?transport=tcp"
    )
    try:
        await client.wait_for("TURN relay configured", 30)
        await client.wait_for("tunnel ready", 60)
        assert await _download() == hashlib.sha256(blob(SIZE)).hexdigest()
    finally:
        client.stop()


@pytest.mark.parametrize("browser", ["chromium", "firefox"])
def test_browsers_at_home_without_stun(
    browser: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No STUN anywhere: a browser at home offers only mDNS names. It still helps a client
    with a public address (the browser's checks reach the client, which learns it as a
    peer-reflexive candidate); a client behind a NAT it cannot help, and the client says so.
    The broker warns about this at start."""
    state = tmp_path_factory.mktemp("nostun") / "state"
    os.environ["UNWALL_LAB_STATE"] = str(state)
    try:
        info = manager.up(
            homes=("port-restricted",), client_nat="none", volunteers=False,
            volunteer_turn=False, broker_stun=False,
        )  # fmt: skip
        assert "no STUN server configured" in (state / "broker.log").read_text()
        asyncio.run(_browser_without_stun(browser, info, state))
    finally:
        manager.down(quiet=True)
        os.environ.pop("UNWALL_LAB_STATE", None)


async def _browser_without_stun(browser: str, info: dict[str, Any], state: Path) -> None:
    from unwall.browser import (
        chromium_in,
        chromium_missing,
        firefox_in,
        firefox_missing,
        widget_switch,
    )

    missing = chromium_missing() if browser == "chromium" else firefox_missing()
    if missing:
        pytest.skip(missing)
    home = topology.Home(1, "port-restricted")
    async with contextlib.AsyncExitStack() as stack:
        if browser == "chromium":
            chromium = await stack.enter_async_context(chromium_in(home.host, state, mdns=True))
            page = await chromium.new_page()
            await page.goto("http://203.0.113.20:8080/")
            await widget_switch(page).click()
        else:
            await stack.enter_async_context(
                firefox_in(home.host, "http://open.test/volunteer", state)
            )
        client = Client(info, state / "client-public.log", stun=False)
        try:
            await client.wait_for("tunnel ready", 45)
            assert await _download() == hashlib.sha256(blob(SIZE)).hexdigest()
        finally:
            client.stop()
        topology.set_client_nat("port-restricted")
        client = Client(info, state / "client-nat.log", stun=False)
        try:
            await client.wait_for("could not connect to the volunteer", 60)
            assert "tunnel ready" not in client.text()
        finally:
            client.stop()
