"""The Chromium engine's own rules, with stand-ins for the browser (real processes, no
Chromium): it says why it cannot start, fast, and its loopback page opens once.

The real browser is exercised in tests/integration/test_webrtc_engines.py and the lab."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from unwall.transport.chromium import ChromiumEngine
from unwall.transport.webrtc import EngineUnavailable


async def test_a_missing_browser_is_named() -> None:
    engine = ChromiumEngine(binary="/nonexistent/chromium")
    with pytest.raises(EngineUnavailable, match="apt-get install chromium"):
        await engine.new_peer([]).offer()
    await engine.close()


async def test_a_browser_that_exits_at_once_fails_fast() -> None:
    engine = ChromiumEngine(binary="/bin/false")
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="exited at start"):
        await engine.new_peer([]).offer()
    assert time.monotonic() - started < 10  # not the whole start timeout
    assert engine.pid is None
    await engine.close()


STAND_IN = """#!{python}
import sys, urllib.error, urllib.request
url = sys.argv[-1]
def status(u):
    try:
        return urllib.request.urlopen(u, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code
first = urllib.request.urlopen(url, timeout=5).read().decode()
statuses = [status(url), status(url.replace("/engine", "/control"))]
wrong = url.split("?")[0] + "?t=" + "x" * 10
statuses.append(status(wrong))
open({out!r}, "w").write(" ".join(map(str, statuses)) + "\\n" + first)
"""


async def test_the_page_opens_once_and_its_session_is_not_on_the_command_line(
    tmp_path: Path,
) -> None:
    """The page's URL is on the browser's command line, which any local user can read: it
    works once. The WebSockets need the session token the page carries, not the URL's."""
    out = tmp_path / "seen"
    stand_in = tmp_path / "browser"
    stand_in.write_text(STAND_IN.format(python=sys.executable, out=str(out)))
    stand_in.chmod(0o755)
    engine = ChromiumEngine(binary=str(stand_in))
    with pytest.raises(EngineUnavailable, match="exited at start"):
        await engine.new_peer([]).offer()
    await engine.close()
    statuses, page = out.read_text().split("\n", 1)
    # again: 403; the URL token on the control socket: 403; a wrong token: 403
    assert statuses.split() == ["403", "403", "403"]
    assert "openPeer" in page and "/control" in page
    assert "__SESSION__" not in page  # the session token was filled in
