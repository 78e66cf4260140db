"""What a box that wants WebRTC to be a call does to unwall's carrier, on real flows.

The box's `[datachannel]` rule (unwall.lab.profile.DataChannelRule, on the carrier
analyzer, unwall.lab.analyzers.carrier) suspects a WebRTC flow that carried more than
64 KiB of DTLS application data and no SRTP: a data channel, not a call. The aiortc
engine, and the Chromium engine with `--carrier datachannel`, carry unwall's QUIC in a data
channel, so through such a box:

- `drop`: the download does not arrive (every new path the client opens is dropped in
  turn, 64 KiB into it), the box's log has the drop, and the report names the censored
  host. For `--webrtc chromium` the box runs the shipped strictest profile
  (profiles/browser-calls-only.toml): Chromium's fingerprints pass, its carrier does not.
- `flag`: the download arrives whole, and the report names the censored host.

- `pass`: `--webrtc chromium --carrier media` (video frames) through the strictest
  profile: the download arrives, the box saw media and suspects nothing; with a headless
  Chromium-engine volunteer, the widget in Chromium, and the widget in Firefox ESR (each
  says it carried the client over media).

Each case is one `Case` (the engine's arguments, the profile, what to expect); another
engine or carrier is one more entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from unwall.lab import manager, topology
from unwall.lab.censored import CensoredClient
from unwall.lab.internet import blob
from unwall.lab.profile import SHIPPED_PROFILES

_reason = topology.lab_possible()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

SIZE = 2_000_000
#: `--webrtc chromium` with the data channel as its carrier
CHROMIUM = ("--webrtc", "chromium", "--carrier", "datachannel")
#: ... and with video frames as its carrier
CHROMIUM_MEDIA = ("--webrtc", "chromium", "--carrier", "media")
STRICTEST = (SHIPPED_PROFILES / "browser-calls-only.toml").read_text()
#: the rule alone: the aiortc engine's DTLS would be stopped by `[webrtc]` before it
DATACHANNEL_ONLY = '[datachannel]\nblock = true\naction = "{action}"\n'
BOTH_FLAGGED = (
    '[webrtc]\nallow = "browsers"\naction = "flag"\n[datachannel]\nblock = true\naction = "flag"\n'
)
SUSPICION = "carrier datachannel-only "


@dataclass(frozen=True)
class Case:
    name: str
    #: arguments for both the client and the headless volunteer
    engine: tuple[str, ...]
    profile: str
    #: "drop": the download fails and the host is named; "flag": it arrives and the host
    #: is named; "pass": it arrives and the box suspects nothing of the carrier
    expect: str
    #: who volunteers: "headless" (with the case's engine), "chromium" or "firefox" (the
    #: widget in that browser, at its defaults)
    volunteer: str = "headless"


CASES = [
    Case("aiortc-drop", (), DATACHANNEL_ONLY.format(action="drop"), "drop"),
    Case("aiortc-flag", (), DATACHANNEL_ONLY.format(action="flag"), "flag"),
    Case("chromium-drop", CHROMIUM, STRICTEST, "drop"),
    Case("chromium-flag", CHROMIUM, BOTH_FLAGGED, "flag"),
    Case("chromium-media", CHROMIUM_MEDIA, STRICTEST, "pass"),
    Case("widget-chromium-media", CHROMIUM_MEDIA, STRICTEST, "pass", volunteer="chromium"),
    Case("widget-firefox-media", CHROMIUM_MEDIA, STRICTEST, "pass", volunteer="firefox"),
]
BROKER_PAGE = "http://203.0.113.20:8080/"


@contextlib.asynccontextmanager
async def _volunteer(
    case: Case, home: topology.Home, info: dict[str, object], tmp_path: Path
) -> AsyncIterator[dict[str, object]]:
    """The case's volunteer, running; yields what its widget said at the end (after the
    block), for the widget kinds."""
    said: dict[str, object] = {}
    if case.volunteer == "headless":
        manager.start_volunteer(home, str(info["stun"]), Path(str(info["state"])), case.engine)
        try:
            yield said
        finally:
            await asyncio.to_thread(manager.stop, "volunteer-home1")
    elif case.volunteer == "chromium":
        from unwall.browser import WIDGET_REPORT, chromium_in, widget_realm, widget_switch

        async with chromium_in(home.host, tmp_path, mdns=True) as browser:
            page = await browser.new_page()
            await page.goto(BROKER_PAGE)
            await widget_switch(page).click()
            yield said
            # What the widget's frame shows, and its volunteer's count of clients by video.
            said.update(await (await widget_realm(page)).evaluate(WIDGET_REPORT))
            said["carrier"] = await page.get_attribute("[data-unwall-widget]", "data-carrier")
    else:
        from unwall.browser import firefox_in

        # The widget on another site's page, served in the lab's internet; firefox_in's
        # driver clicks its switch (in its frame) and posts what the frame shows there.
        reports = tmp_path / "reports.jsonl"
        server = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", topology.INTERNET, sys.executable,
            str(Path(__file__).with_name("lab_volunteer_page.py")), "203.0.113.20",
            BROKER_PAGE.rstrip("/"), str(reports),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            url = (await asyncio.wait_for(server.stdout.readline(), 30)).decode().strip()
            async with firefox_in(home.host, url, tmp_path) as firefox:
                try:
                    yield said
                finally:
                    lines = reports.read_text().splitlines() if reports.exists() else []
                    said.update(json.loads(lines[-1]) if lines else {})
                    said["log"] = firefox.log_tail(20)
        finally:
            server.terminate()
            await server.wait()


def _chromium_or_skip() -> None:
    from unwall.transport.chromium import chromium_missing

    missing = chromium_missing()
    if missing:
        pytest.skip(missing)


async def _download(max_time: int) -> tuple[bool, str]:
    """Fetch SIZE bytes through the client's SOCKS port: (whole and intact, curl's error)."""
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", topology.CENSORED, "curl", "--silent", "--show-error",
        "--max-time", str(max_time), "--socks5-hostname", "127.0.0.1:1080",
        f"http://open.test/blob/{SIZE}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    intact = hashlib.sha256(out).digest() == hashlib.sha256(blob(SIZE)).digest()
    return process.returncode == 0 and intact, err.decode(errors="replace")


def _carrier_flows(state: Path) -> list[tuple[str, str, list[list[str]]]]:
    """The censored host's UDP flows the carrier analyzer saw: (verdict, reason, findings)."""
    db = sqlite3.connect(state / "flows.db")
    rows = db.execute(
        "SELECT verdict, reason, findings FROM flows WHERE client = ? AND protocol = 'udp'",
        (topology.CENSORED_IP,),
    ).fetchall()
    db.close()
    flows = [(v or "", r or "", json.loads(f or "[]")) for v, r, f in rows]
    return [flow for flow in flows if any(f[0] == "carrier" for f in flow[2])]


def _evidence() -> list[str]:
    """Every reason the box's report gives against the censored host."""
    report = json.loads(manager.report(as_json=True))
    assert topology.CENSORED_IP in report["hosts"], report
    suspected = report["hosts"][topology.CENSORED_IP]["circumvention_suspected"]
    return [reason for record in suspected.values() for reason in record["evidence"]]


async def _through_the_box(case: Case, tmp_path: Path) -> None:
    """Bring the lab up with the case's profile, a headless volunteer and the client with
    the case's engine, download through them, and check what the box did and reported."""
    state = tmp_path / "state"
    state.mkdir()
    profile = tmp_path / "profile.toml"
    profile.write_text(case.profile)
    os.environ["UNWALL_LAB_STATE"] = str(state)
    try:
        info = manager.up(profile, homes=("port-restricted",), volunteers=False)
        home = topology.Home(1, topology.parse_nat_kind("port-restricted"))
        async with _volunteer(case, home, info, tmp_path) as said:
            client = CensoredClient(info, tmp_path / "client.log", *case.engine)
            try:
                assert await client.until("tunnel ready", 90) is not None, client.text()
                arrived, error = await _download(25 if case.expect == "drop" else 60)
            finally:
                client.stop()
        flows = _carrier_flows(state)
        everything = _evidence()
        evidence = [reason for reason in everything if reason.startswith(SUSPICION)]
    finally:
        manager.down(quiet=True)
        os.environ.pop("UNWALL_LAB_STATE", None)
    summary = "\n".join(
        f"{verdict} ({reason}): {[f for f in found if f[0] in ('carrier', 'box', 'dtls')]}"
        for verdict, reason, found in flows
    )
    assert flows, "the box's carrier analyzer saw no flow of the censored host"
    if case.expect == "pass":
        assert arrived, error
        assert evidence == [], evidence
        if case.profile == STRICTEST:
            # nor anything else: its NAT check (no CHANGE-REQUEST), the ICE hosts' handshakes
            assert everything == [], everything
        # media seen ("both" as a rule: DTLS 1.3's epoch-3 acknowledgement of the
        # handshake looks like data channel bytes to a box)
        carriers = {v for _, _, f in flows for a, k, v in f if (a, k) == ("carrier", "carrier")}
        assert carriers & {"media", "both"}, summary
        if case.volunteer != "headless":  # the widget says it carried the client in video
            assert said.get("carrier") == "media", said
            assert said.get("clientsOverMedia", 0) >= 1 or said.get("clientsTotal", 0) >= 1, said
        return
    assert evidence, f"the report does not name {topology.CENSORED_IP}:\n{summary}"
    dropped = [flow for flow in flows if flow[0] == "drop" and flow[1].startswith(SUSPICION)]
    if case.expect == "drop":
        assert not arrived, f"the download got through a box that drops data channels:\n{summary}"
        assert dropped, summary
    else:
        assert arrived, error
        assert not dropped, summary
    # What the verdict was given on: a data channel, and not one SRTP packet.
    tallies = [v for _, _, f in flows for a, k, v in f if (a, k) == ("carrier", "tally")]
    assert any("srtp up 0/0 down 0/0" in tally for tally in tallies), summary


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_the_carrier_through_a_box_that_wants_calls(case: Case, tmp_path: Path) -> None:
    if "chromium" in case.engine or case.volunteer == "chromium":
        _chromium_or_skip()
    if case.volunteer == "firefox":
        from unwall.browser import firefox_missing

        if firefox_missing():
            pytest.skip(firefox_missing() or "")
    await _through_the_box(case, tmp_path)
