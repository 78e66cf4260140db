"""What a box that allows WebRTC only when it looks like a browser's learns of unwall, on
real flows: the censored host's client with a headless volunteer, and with the widget in
Debian's Chromium and in Firefox ESR as the volunteer. The box runs
`[webrtc] allow = "browsers"` in `drop` mode (only browser-like WebRTC passes) or in
`flag` mode (everything passes, the report lists every fingerprint that was not a
browser's), with the host-level rule `[hosts]` flagging a censored host whose last 2
ClientHellos repeat one JA3 (the lab's profile says 4).

What is expected, and why (docs/fingerprints.md): the aiortc client is the DTLS client
(it offers `a=setup:active`) and sends Chromium's DTLS 1.3 ClientHello; with a headless
volunteer its extensions are permuted per connection, and the volunteer's ServerHello is
laid out as Chromium's (`dtlswire`, agreed in the SDP); a browser volunteer sends its own
ServerHello. The ICE checks and SRTP profiles match Chromium's, the certificates are
encrypted. So the box has no evidence at all, with either volunteer.

With `--webrtc chromium` (unwall.transport.chromium) the client's and the headless
volunteer's WebRTC is Chromium's own: the flows are a browser's, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unwall.lab import manager, topology
from unwall.lab.censored import CensoredClient
from unwall.lab.internet import blob

_reason = topology.lab_possible()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

SIZE = 2_000_000
SHAPED = ("ice-check", "ice-priority", "server-cert", "client-cert", "srtp")


@contextlib.contextmanager
def _lab(tmp_path: Path, action: str) -> Iterator[dict[str, Any]]:
    state = tmp_path / "state"
    os.environ["UNWALL_LAB_STATE"] = str(state)
    state.mkdir()
    profile = tmp_path / "profile.toml"
    profile.write_text(
        f'[webrtc]\nallow = "browsers"\naction = "{action}"\n'
        '[hosts]\nrepeat_ja3 = true\nafter = 2\naction = "flag"\n'
    )
    try:
        yield manager.up(profile, homes=("port-restricted",), volunteers=False)
    finally:
        manager.down(quiet=True)
        os.environ.pop("UNWALL_LAB_STATE", None)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with _lab(tmp_path, "flag") as info:
        yield info


@pytest.fixture
def blocking_lab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with _lab(tmp_path, "drop") as info:
        yield info


def _chromium_or_skip() -> None:
    from unwall.transport.chromium import chromium_missing

    missing = chromium_missing()
    if missing:
        pytest.skip(missing)


async def _fetch_through(info: dict[str, Any], log: Path, *extra: str) -> None:
    client = CensoredClient(info, log, *extra)
    try:
        assert await client.until("tunnel ready", 60) is not None, client.text()
        process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", topology.CENSORED, "curl", "--silent", "--show-error",
            "--max-time", "60", "--socks5-hostname", "127.0.0.1:1080",
            f"http://open.test/blob/{SIZE}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode(errors="replace")
        assert hashlib.sha256(out).hexdigest() == hashlib.sha256(blob(SIZE)).hexdigest()
    finally:
        client.stop()


def _evidence() -> dict[str, list[str]]:
    """The report's evidence against the censored host, by fingerprint."""
    report = json.loads(manager.report(as_json=True))
    assert topology.CENSORED_IP in report["hosts"], report  # the box saw the host's flows
    suspected = report["hosts"][topology.CENSORED_IP]["circumvention_suspected"]
    by_key: dict[str, list[str]] = {}
    for record in suspected.values():
        for reason in record["evidence"]:
            _, key, value = reason.split(" ", 2)
            by_key.setdefault(key, []).append(value.removesuffix(" is not a browser's"))
    return by_key


def _client_hellos() -> list[str]:
    """The JA3 of every DTLS ClientHello the censored host sent, flow by flow."""
    db = sqlite3.connect(manager.state_dir() / "flows.db")
    rows = db.execute("SELECT findings FROM flows WHERE client = ?", (topology.CENSORED_IP,))
    hellos = []
    for (findings,) in rows.fetchall():
        for analyzer, key, value in json.loads(findings):
            if analyzer == "dtls" and key == "ja3":
                hellos.append(value)
    db.close()
    return hellos


async def test_headless_volunteer(blocking_lab: dict[str, Any], tmp_path: Path) -> None:
    """Through the box in drop mode, with two clients one after the other (a handshake
    each at least): every download whole, no fingerprint objected to, and the host not
    flagged for repeating one JA3."""
    home = topology.Home(1, topology.parse_nat_kind("port-restricted"))
    manager.start_volunteer(home, blocking_lab["stun"], Path(blocking_lab["state"]))
    try:
        await _fetch_through(blocking_lab, tmp_path / "client.log")
        await _fetch_through(blocking_lab, tmp_path / "client-again.log")
    finally:
        await asyncio.to_thread(manager.stop, "volunteer-home1")
    assert _evidence() == {}
    hellos = _client_hellos()
    assert len(hellos) >= 2 and len(set(hellos)) == len(hellos), hellos


async def test_chromium_volunteer(blocking_lab: dict[str, Any], tmp_path: Path) -> None:
    """The widget in Chromium as the volunteer, through the box in drop mode: Chromium is
    the DTLS server (its own ServerHello), the client's ClientHello Chromium's; nothing to
    object to. Between these two nothing is rewritten (Chromium would not restore it)."""
    from unwall.browser import chromium_in, chromium_missing, widget_switch

    missing = chromium_missing()
    if missing:
        pytest.skip(missing)
    home = topology.Home(1, topology.parse_nat_kind("port-restricted"))
    async with chromium_in(home.host, tmp_path, mdns=True) as browser:
        page = await browser.new_page()
        await page.goto("http://203.0.113.20:8080/")
        await widget_switch(page).click()
        await _fetch_through(blocking_lab, tmp_path / "client.log")
    assert _evidence() == {}


async def test_firefox_volunteer(blocking_lab: dict[str, Any], tmp_path: Path) -> None:
    """The widget in Firefox ESR (NSS's DTLS 1.3) as the volunteer, through the box in drop
    mode: Firefox's ServerHello, the client's Chromium ClientHello; nothing to object to."""
    from unwall.browser import firefox_in, firefox_missing

    missing = firefox_missing()
    if missing:
        pytest.skip(missing)
    home = topology.Home(1, topology.parse_nat_kind("port-restricted"))
    async with firefox_in(home.host, "http://open.test/volunteer", tmp_path):
        await _fetch_through(blocking_lab, tmp_path / "client.log")
    assert _evidence() == {}


ENGINE = ("--webrtc", "chromium")


async def test_chromium_engine_on_both_sides(blocking_lab: dict[str, Any], tmp_path: Path) -> None:
    """Client and headless volunteer with `--webrtc chromium`, through a box that drops
    every WebRTC flow not a browser's: the download arrives whole, and the box neither
    dropped nor suspected anything."""
    _chromium_or_skip()
    home = topology.Home(1, topology.parse_nat_kind("port-restricted"))
    manager.start_volunteer(home, blocking_lab["stun"], Path(blocking_lab["state"]), ENGINE)
    try:
        await _fetch_through(blocking_lab, tmp_path / "client.log", *ENGINE)
    finally:
        await asyncio.to_thread(manager.stop, "volunteer-home1")
    assert _evidence() == {}
    db = sqlite3.connect(Path(blocking_lab["state"]) / "flows.db")
    flows = "\n".join(repr(row) for row in db.execute("SELECT * FROM flows").fetchall())
    db.close()
    assert "dd3i" in flows  # the box fingerprinted the DTLS: 1.3, Chromium's ...
    assert "is not a browser's" not in flows  # ... and found nothing against them


async def test_chromium_engine_client_with_the_widget(lab: dict[str, Any], tmp_path: Path) -> None:
    """The client with `--webrtc chromium`, the volunteer the widget in Chromium: a
    browser-to-browser call as far as the box can tell (it has no evidence)."""
    from unwall.browser import chromium_in, widget_switch

    _chromium_or_skip()
    home = topology.Home(1, topology.parse_nat_kind("port-restricted"))
    async with chromium_in(home.host, tmp_path, mdns=True) as browser:
        page = await browser.new_page()
        await page.goto("http://203.0.113.20:8080/")
        await widget_switch(page).click()
        await _fetch_through(lab, tmp_path / "client.log", *ENGINE)
    assert _evidence() == {}
