"""Both WebRTC engines behind `unwall.transport.webrtc`, each with each other, for real:
aiortc in this process, Chromium headless (unwall.transport.chromium). Each pair runs in a
network namespace of its own (`unshare -n`, one dummy interface), so that Chromium sees
only that address."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unwall.transport.chromium import chromium_missing

HERE = Path(__file__).parent
_reason = (
    "needs root for a network namespace"
    if os.geteuid() != 0 or shutil.which("unshare") is None
    else chromium_missing()
)
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


def _pair(offerer: str, answerer: str, *carrier: str) -> dict[str, object]:
    run = subprocess.run(
        ["unshare", "-n", sys.executable, str(HERE / "engine_pair.py"), offerer, answerer,
         "198.51.100.77", *carrier],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("offerer", "answerer", "carrier"),
    [
        # Chromium prefers the media carrier; aiortc has only the data channel, and the two
        # settle on it whichever end offers.
        ("chromium", "aiortc", "datachannel"),
        ("aiortc", "chromium", "datachannel"),
        ("chromium", "chromium", "media"),
    ],
)
def test_engines_carry_messages_both_ways(offerer: str, answerer: str, carrier: str) -> None:
    result = _pair(offerer, answerer)
    assert result["carriers"] == [carrier, carrier], result
    assert result["offerer_received"] == result["answerer_received"] == 300, result
    assert result["offerer_got_exact"] and result["answerer_got_exact"], result
    assert result["local_sdp_kept"], result
    # Both sides know how large a message the other takes (QUIC sizes its datagrams by it).
    sizes = result["max_message_size"]
    assert isinstance(sizes, list) and all(isinstance(s, int) and s >= 1200 for s in sizes)
    # A killed browser kills its peers, with a reason; the next peer gets a new browser.
    assert "Chromium" in str(result["killed_why"]), result
    assert result["after_restart"] == ["after the crash"], result
    assert result["new_pid"], result


def test_chromium_carries_media_in_video_frames() -> None:
    """With media, the datagrams ride in the call's video frames (the worker counted them),
    none dropped at a gentle pace, each frame read once."""
    result = _pair("chromium", "chromium")
    counts = result["offerer_counts"]
    assert isinstance(counts, dict), result
    assert counts["sentDatagrams"] == 300 and counts["receivedDatagrams"] == 300, counts
    assert counts["dropped"] == 0 and counts["plainFrames"] == 0, counts
    # many datagrams a frame: a frame every 33 ms, not one per datagram
    assert counts["sentFrames"] < 200, counts


def test_chromium_pair_can_still_choose_the_data_channel() -> None:
    result = _pair("chromium", "chromium", "datachannel")
    assert result["carriers"] == ["datachannel", "datachannel"], result
    assert result["offerer_received"] == result["answerer_received"] == 300, result
    assert result["offerer_counts"] == {}, result
