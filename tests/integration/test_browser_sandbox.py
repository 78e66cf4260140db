"""The tests' own browsers (unwall.browser) never run as root or without their sandbox.

Started by root, Playwright's Chromium runs as an unprivileged user id of its own (not
`nobody`) through a `setpriv` wrapper, without `--no-sandbox`: its renderers run under
seccomp in user namespaces of their own; its profile is that user's, and gone after."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unwall.browser import (
    chromium_here,
    chromium_in,
    chromium_missing,
    firefox_in,
    firefox_missing,
)

NOBODY = 65534


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(proc.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _chromium_processes() -> list[dict[str, Any]]:
    """This test's Chromium processes: user, command line (as one string: Chromium rewrites
    its children's), seccomp mode, user namespace."""
    found = []
    for pid in _descendants(os.getpid()):
        proc = Path("/proc", str(pid))
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "/usr/lib/chromium/chromium" not in line:
                continue
            status = dict(
                entry.split(":", 1) for entry in (proc / "status").read_text().splitlines()
            )
            found.append(
                {
                    "uids": {int(x) for x in status["Uid"].split()},
                    "seccomp": int(status["Seccomp"].strip()),
                    "userns": os.readlink(proc / "ns" / "user"),
                    "line": line,
                }
            )
        except (OSError, KeyError, ValueError):
            continue
    return found


async def _check(browser: Any) -> str:
    """Load a page, check every Chromium process; the profile directory's path."""
    tab = await browser.new_page()
    await tab.goto("data:text/html,<p>sandboxed</p>")
    assert await tab.text_content("p") == "sandboxed"
    processes = _chromium_processes()
    assert processes, "no Chromium process found"
    users = set().union(*(p["uids"] for p in processes))
    if os.geteuid() == 0:
        assert len(users) == 1 and 0 not in users and NOBODY not in users, users
    assert not any("--no-sandbox" in p["line"] for p in processes)
    browser_process = next(p for p in processes if "--type=" not in p["line"])
    renderers = [p for p in processes if "--type=renderer" in p["line"]]
    assert renderers
    for renderer in renderers:
        assert renderer["seccomp"] == 2, renderer
        assert renderer["userns"] != browser_process["userns"], renderer
    profile: str = browser_process["line"].split("--user-data-dir=", 1)[1].split()[0]
    (uid,) = users
    assert Path(profile).stat().st_uid == uid
    assert Path(profile).stat().st_mode & 0o777 == 0o700
    await tab.close()
    return profile


@pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")
async def test_chromium_here_is_sandboxed_and_not_root() -> None:
    async with chromium_here() as browser:
        profile = await _check(browser)
    assert not Path(profile).exists()


@pytest.fixture
def bare_namespace() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root for a network namespace")
    name = f"unwall-sbx{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")
async def test_chromium_in_a_namespace_is_sandboxed_and_not_root(
    bare_namespace: str, tmp_path: Path
) -> None:
    async with chromium_in(bare_namespace, tmp_path) as browser:
        profile = await _check(browser)
    assert not Path(profile).exists()


def _firefox_processes() -> list[dict[str, Any]]:
    found = []
    for pid in _descendants(os.getpid()):
        proc = Path("/proc", str(pid))
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "firefox" not in line:
                continue
            status = dict(
                entry.split(":", 1) for entry in (proc / "status").read_text().splitlines()
            )
            found.append(
                {
                    "uids": {int(x) for x in status["Uid"].split()},
                    "seccomp": int(status["Seccomp"].strip()),
                    "userns": os.readlink(proc / "ns" / "user"),
                    "line": line,
                }
            )
        except (OSError, KeyError, ValueError):
            continue
    return found


def _content_processes(processes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Firefox's child processes but its fork server (unsandboxed by design)."""
    return [p for p in processes if "-contentproc" in p["line"] and "forkserver" not in p["line"]]


@pytest.mark.skipif(firefox_missing() is not None, reason=firefox_missing() or "")
async def test_firefox_is_not_root_and_keeps_its_sandbox(
    bare_namespace: str, tmp_path: Path
) -> None:
    async with firefox_in(
        bare_namespace, "data:text/html,<p>sandboxed</p>", tmp_path, click_widget=False
    ) as firefox:
        processes: list[dict[str, Any]] = []
        # Its content processes start after the parent, and each turns its sandbox on a
        # moment after it starts: wait (20 s at most) for a tab and for every child to be
        # sandboxed; the asserts below then say which one never was.
        for _ in range(100):
            processes = _firefox_processes()
            children = _content_processes(processes)
            if any(p["line"].rstrip().endswith(" tab") for p in children) and all(
                p["seccomp"] == 2 for p in children
            ):
                break
            await asyncio.sleep(0.2)
        profile = firefox.profile
    users = set().union(*(p["uids"] for p in processes))
    assert len(users) == 1 and 0 not in users and NOBODY not in users, users
    # Its child processes, but for the fork server (unsandboxed by design), run under
    # seccomp in a user namespace of their own: the web page's ("tab") among them.
    parent = next(p for p in processes if "-contentproc" not in p["line"])
    children = _content_processes(processes)
    assert any(p["line"].rstrip().endswith(" tab") for p in children), processes
    for each in children:
        assert each["seccomp"] == 2, each
        assert each["userns"] != parent["userns"], each
    assert not profile.exists()
