"""The Chromium engine's own rules, with stand-ins for the browser (real processes, no
Chromium): it says why it cannot start, fast; its page opens once, through the DevTools
pipe, with nothing secret on the command line; started by root, the browser runs as
another user, with its sandbox, in a 0700 home that is removed afterwards.

The real browser is exercised in tests/integration/test_webrtc_engines.py,
tests/integration/test_chromium_engine_isolation.py and the lab."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unwall.transport import webrtc
from unwall.transport.chromium import ChromiumEngine
from unwall.transport.chromium import engine as engine_module
from unwall.transport.webrtc import EngineUnavailable

#: The stand-ins run as the browser's user: Debian's Python, stdlib only.
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else shutil.which("python3")


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


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the browser's user (another one, when the tests run as root) can write
    in: the stand-ins leave what they saw there."""
    path = Path(tempfile.mkdtemp(prefix="unwall-test-engine-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# A stand-in for Chromium: it takes the DevTools command from fd 3 as Chromium does, notes
# what a browser would know and see, tries what an intruder would, and exits.
STAND_IN = """#!{python}
import json, os, re, socket, sys, urllib.error, urllib.request
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))  # what it was given
command = b""
while not command.endswith(b"\\0"):
    chunk = os.read(3, 65536)
    if not chunk:
        break
    command += chunk
command = json.loads(command[:-1])
os.write(4, json.dumps({{"id": command["id"], "result": {{"targetId": "T"}}}}).encode() + b"\\0")
url = command["params"]["url"]
def status(u):
    try:
        return urllib.request.urlopen(u, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code
page = urllib.request.urlopen(url, timeout=5).read().decode()
statuses = [status(url), status(url.replace("/engine", "/control"))]
statuses.append(status(url.split("?")[0] + "?t=" + "x" * 10))
def websocket(path):
    sock = socket.create_connection(("127.0.0.1", int(url.split(":")[2].split("/")[0])))
    sock.sendall(("GET " + path + " HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\n"
                  "Connection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n"
                  "Sec-WebSocket-Version: 13\\r\\n\\r\\n").encode())
    held.append(sock)
    return int(sock.recv(4096).split(b" ")[1])
held = []
session = re.search(r'const TOKEN = "([^"]+)"', page).group(1)
# the page's control socket, then a second claimant with the same session
claims = [websocket("/control?t=" + session), websocket("/control?t=" + session)]
profile = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--user-data-dir="))
info = os.stat(profile)
writable = os.access(profile, os.W_OK) and os.access(os.environ["TMPDIR"], os.W_OK)
json.dump({{
    "method": command["method"], "url": url, "argv": sys.argv, "page": page,
    "statuses": statuses, "claims": claims,
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
    "groups": os.getgroups(), "home": os.environ.get("HOME"), "profile": profile,
    "profile_uid": info.st_uid, "profile_mode": info.st_mode & 0o777, "writable": writable,
    "fds": fds,
}}, open({out!r}, "w"))
"""


async def _run_stand_in(shared_dir: Path, name: str = "seen") -> dict[str, Any]:
    out = shared_dir / name
    stand_in = shared_dir / f"browser-{name}"
    stand_in.write_text(STAND_IN.format(python=PYTHON, out=str(out)))
    stand_in.chmod(0o755)
    engine = ChromiumEngine(binary=str(stand_in))
    with pytest.raises(EngineUnavailable, match="exited at start"):
        await engine.new_peer([]).offer()
    await engine.close()
    seen: dict[str, Any] = json.loads(out.read_text())
    return seen


async def test_the_page_opens_once_through_the_pipe_and_nothing_secret_is_on_the_command_line(
    shared_dir: Path,
) -> None:
    """The page's one-time URL comes through the DevTools pipe (fd 3), not the command line,
    which any local user can read. The WebSockets need the session the page carries."""
    seen = await _run_stand_in(shared_dir)
    assert seen["method"] == "Target.createTarget"
    token = seen["url"].split("?t=", 1)[1]
    assert len(token) >= 24
    argv = " ".join(seen["argv"])
    assert token not in argv and "http" not in argv and "127.0.0.1" not in argv
    assert "--remote-debugging-pipe" in seen["argv"] and "--no-startup-window" in seen["argv"]
    # again: 403; the URL token on the control socket: 403; a wrong token: 403
    assert seen["statuses"] == [403, 403, 403]
    # the page's session opens the control socket once; a second claimant is refused
    assert seen["claims"] == [101, 403]
    assert "openPeer" in seen["page"] and "/control" in seen["page"]
    assert "__SESSION__" not in seen["page"]  # the session token was filled in
    # only the pipe is handed over: stdin, stdout, stderr, fds 3 and 4 (and the listing's)
    assert set(seen["fds"]) <= {0, 1, 2, 3, 4, 5}, seen["fds"]


@pytest.mark.skipif(os.geteuid() != 0, reason="what root does")
async def test_root_runs_the_browser_as_another_user_with_its_sandbox(shared_dir: Path) -> None:
    seen = await _run_stand_in(shared_dir)
    assert seen["uid"] == seen["euid"] == seen["profile_uid"] != 0
    assert seen["gid"] != 0 and seen["groups"] == []
    assert seen["uid"] != 65534  # not `nobody`, whom other programs share
    assert "--no-sandbox" not in seen["argv"]
    assert seen["profile_mode"] == 0o700 and seen["writable"]
    assert seen["home"] == seen["profile"]
    # ... and its home is gone once the engine stops
    assert not Path(seen["profile"]).exists()
    assert not Path(seen["profile"]).parent.exists()


async def test_no_sandbox_flag_as_any_user(shared_dir: Path) -> None:
    seen = await _run_stand_in(shared_dir)
    assert not any("no-sandbox" in arg for arg in seen["argv"])
    assert not any("no-zygote" in arg for arg in seen["argv"])


@pytest.mark.skipif(os.geteuid() != 0, reason="what root does")
async def test_root_is_refused_as_the_browsers_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "BROWSER_USER", "root")
    engine = ChromiumEngine(binary="/bin/true")
    with pytest.raises(EngineUnavailable, match="must not be root"):
        await engine.new_peer([]).offer()
    await engine.close()


async def test_a_browser_without_a_usable_sandbox_is_refused_with_the_reason(
    shared_dir: Path,
) -> None:
    stand_in = shared_dir / "no-sandbox-browser"
    stand_in.write_text(
        "#!/bin/sh\n"
        "echo '[1:1:FATAL:zygote_host_impl_linux.cc(128)] No usable sandbox! If you are "
        "running on Ubuntu 23.10+ ...' >&2\n"
        "echo 'more lines' >&2\necho 'and more' >&2\necho 'and the last' >&2\nexit 1\n"
    )
    stand_in.chmod(0o755)
    engine = ChromiumEngine(binary=str(stand_in))
    with pytest.raises(EngineUnavailable, match="unprivileged user namespaces") as caught:
        await engine.new_peer([]).offer()
    assert "never runs a browser without its sandbox" in str(caught.value)
    await engine.close()


def test_a_kernel_without_user_namespaces_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = Path.read_text

    def fake(path: Path, *args: Any, **kwargs: Any) -> str:
        if str(path) == "/proc/sys/user/max_user_namespaces":
            return "0\n"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", fake)
    reason = engine_module.sandbox_missing()
    assert reason is not None and "user.max_user_namespaces is 0" in reason
    fake_binary = tmp_path / "chromium"
    fake_binary.write_text("")
    assert engine_module.chromium_missing(str(fake_binary)) == reason


async def test_mdns_hiding_stays_on_unless_addresses_are_pinned(shared_dir: Path) -> None:
    """Chromium shows its host addresses only when they were pinned (the lab, the tests);
    otherwise they stay behind mDNS names, as in any browser."""
    before = webrtc.pinned_host_addresses()
    try:
        webrtc.set_host_addresses(None)
        hidden = await _run_stand_in(shared_dir, "hidden")
        webrtc.set_host_addresses(["198.51.100.7"])
        plain = await _run_stand_in(shared_dir, "plain")
    finally:
        webrtc.set_host_addresses(before)
    flag = "--disable-features=WebRtcHideLocalIpsWithMdns"
    assert flag not in hidden["argv"]
    assert flag in plain["argv"]


CHROMIUM_SDP = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "a=candidate:1 1 udp 2122260223 198.51.100.7 40000 typ host generation 0",
        "a=candidate:2 1 udp 2122194687 192.168.1.20 40001 typ host generation 0",
        "a=candidate:3 1 udp 2122129151 fd00::20 40002 typ host generation 0",
        "a=candidate:4 1 udp 1686052607 203.0.113.9 50000 typ srflx raddr 192.168.1.20 "
        "rport 40001 generation 0",
        "a=candidate:5 1 udp 2122260223 0c7d7c43-3f7a-4d53-b1c1-5a6a3f8c9f7e.local 40003 "
        "typ host generation 0",
        "",
    ]
)


def test_the_sdp_keeps_only_the_host_addresses_allowed() -> None:
    before = webrtc.pinned_host_addresses()
    try:
        webrtc.set_host_addresses(["198.51.100.7"])
        pinned = engine_module._shown(CHROMIUM_SDP)
        webrtc.set_host_addresses(None)
        unpinned = engine_module._shown(CHROMIUM_SDP)
    finally:
        webrtc.set_host_addresses(before)
    assert "198.51.100.7 40000 typ host" in pinned
    assert "192.168.1.20 40001 typ host" not in pinned and "fd00::20" not in pinned
    assert "raddr 0.0.0.0 rport 0" in pinned  # the srflx candidate stays, its base hidden
    assert ".local 40003 typ host" in pinned
    assert "192.168.1.20" not in unpinned and "fd00::20" not in unpinned
    assert "198.51.100.7 40000 typ host" in unpinned  # not private
    assert ".local 40003 typ host" in unpinned
    assert pinned.endswith("\r\n")
