"""The client's status core (sans-IO), its PAC file and its terminal line."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from unwall.client.page import check_page_address, pac_file, read_pac_list
from unwall.client.status import (
    HISTORY,
    SEEN_AS,
    WORDS,
    Sample,
    State,
    StatusTracker,
    human_duration,
    human_rate,
    seen_as,
    state_of,
    status_line,
)
from unwall.client.statusline import StatusLine
from unwall.client.tunnel import Problem


def sample(now: float, down: int = 0, up: int = 0, **kw: object) -> Sample:
    fields: dict[str, object] = {
        "now": now,
        "ready": True,
        "problem": None,
        "detail": "",
        "volunteers": 2,
        "connections": 3,
        "switches": 0,
        "bytes_up": up,
        "bytes_down": down,
        "ready_since": 0.0,
    }
    fields.update(kw)
    return Sample(**fields)  # type: ignore[arg-type]


def test_every_problem_is_a_state_with_words() -> None:
    assert state_of(True, None) is State.CONNECTED
    assert state_of(False, None) is State.CONNECTING
    # Ready wins over a stale problem (a standby path that failed to open).
    assert state_of(True, Problem.NO_VOLUNTEER) is State.CONNECTED
    for problem in Problem:
        state = state_of(False, problem)
        assert state.value == problem.value
    assert set(WORDS) == set(State)
    for title, advice in WORDS.values():
        assert title and len(advice) > 40


def test_what_the_network_sees_is_said_for_every_engine_and_carrier() -> None:
    """Only a browser's media is called a video call; every other pair says what gives it
    away (issue 21: the page told every user "only a video call")."""
    from unwall.transport.webrtc import CARRIERS, ENGINES, check_carrier

    usable = set()
    for engine in ENGINES:
        for carrier in CARRIERS:
            try:
                check_carrier(engine, carrier)
            except ValueError:
                continue
            usable.add((engine, carrier))
    assert set(SEEN_AS) == usable
    assert "video call from a Chromium browser" in seen_as("chromium", "media")
    for pair in usable - {("chromium", "media")}:
        assert "not" in SEEN_AS[pair] and "censor" in SEEN_AS[pair], pair
    assert seen_as("aiortc", None) == ""
    tracker = StatusTracker()
    said = seen_as("aiortc", "datachannel")
    assert tracker.snapshot(sample(1.0, seen_as=said)).seen_as == said
    # only while connected
    assert tracker.snapshot(sample(1.0, ready=False, seen_as=said)).seen_as == ""


def test_rates_now_and_history() -> None:
    tracker = StatusTracker()
    tracker.sample(sample(0.0))
    for second in range(1, 6):
        tracker.sample(sample(float(second), down=second * 100_000, up=second * 1_000))
    snap = tracker.snapshot()
    assert snap.state == "connected" and snap.title == "Connected"
    assert snap.down_now == pytest.approx(100_000)
    assert snap.up_now == pytest.approx(1_000)
    assert snap.history_down == [100_000.0] * 5
    assert snap.connected_for == pytest.approx(5.0)
    assert snap.detail == ""  # no trouble to explain while connected
    for second in range(6, 6 + HISTORY + 10):
        tracker.sample(sample(float(second), down=500_000 + second))
    assert len(tracker.snapshot().history_down) == HISTORY


def test_a_problem_is_shown_with_its_detail_and_no_connected_time() -> None:
    tracker = StatusTracker()
    tracker.sample(
        sample(1.0, ready=False, problem=Problem.PIN_MISMATCH, detail="pin x", ready_since=None)
    )
    snap = tracker.snapshot()
    assert snap.state == "pin_mismatch"
    assert snap.title == WORDS[State.PIN_MISMATCH][0]
    assert snap.detail == "pin x"
    assert snap.connected_for is None
    assert status_line(snap) == "unwall: this is not your egress"


def test_a_counter_that_goes_back_is_not_a_negative_rate() -> None:
    tracker = StatusTracker()
    tracker.sample(sample(0.0, down=1000))
    tracker.sample(sample(1.0, down=10))
    assert tracker.snapshot().down_now == 0.0


def test_the_terminal_line() -> None:
    tracker = StatusTracker()
    tracker.sample(sample(0.0))
    tracker.sample(sample(200.0, down=240_000_000, up=2_000_000, volunteers=1, connections=1))
    line = status_line(tracker.snapshot())
    assert line == (
        "unwall: connected · 1 volunteer · down 1.2 MB/s, up 10.0 kB/s · 1 connection"
        " · for 3 min 20 s"
    )
    assert human_rate(950) == "950 B/s"
    assert human_duration(7300) == "2 h 1 min"


def test_the_page_is_loopback_only() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        check_page_address(host)
    for host in ("0.0.0.0", "::", "198.51.100.7", "example.org"):
        with pytest.raises(ValueError, match="loopback only"):
            check_page_address(host)


def test_pac_everything_and_a_list(tmp_path: Path) -> None:
    everything = pac_file(("0.0.0.0", 8118), ("127.0.0.1", 1080), None)
    assert '"PROXY 127.0.0.1:8118; SOCKS5 127.0.0.1:1080"' in everything
    listing = tmp_path / "names.txt"
    listing.write_text(
        "# my list\nExample.org\n*.news.test\n.wiki.test # with a comment\n\n"
        'bad name\n");alert(1)//\nexample.org\n'
    )
    names, skipped = read_pac_list(listing)
    assert names == ["example.org", "news.test", "wiki.test"]
    assert skipped == 2
    pac = pac_file(("127.0.0.1", 8118), ("::1", 1080), names)
    assert 'var UNWALL_NAMES = ["example.org", "news.test", "wiki.test"];' in pac
    assert "SOCKS5 [::1]:1080" in pac and 'return "DIRECT";' in pac


def test_the_status_line_wipes_itself_around_log_lines() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(out)
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        line = StatusLine(out)
        line.show("unwall: connecting")
        line.around_logging()
        logging.getLogger("unwall.test").warning("a log line")
        line.show("unwall: connected")
        line.close()
        assert handler.emit.__name__ == "emit"  # given back
    finally:
        root.handlers[:] = saved
    text = out.getvalue()
    assert text == (
        "\r\x1b[2Kunwall: connecting"
        "\r\x1b[2Ka log line\n\r\x1b[2Kunwall: connecting"
        "\r\x1b[2Kunwall: connected\n"
    )
    assert not StatusLine.wanted(io.StringIO())
