"""The Chromium engine (unwall.transport.chromium) against the other users of its machine,
with the real browser, each run in a network namespace of its own (`unshare -n`):

- a second local user (`nobody`) racing for the engine from before it starts reads every
  Chromium command line and listening port, and tries the page, its WebSockets, the
  DevTools pipe and the profile: it gets nothing, and the engine carries as before;
- started by root, Chromium runs as another, unprivileged user, never `--no-sandbox`: its
  renderers are in user namespaces of their own, under seccomp; its home is 0700 and gone
  after;
- with no host address pinned its host candidates stay behind mDNS names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from unwall.transport.chromium import chromium_missing

HERE = Path(__file__).parent
ADDRESS = "198.51.100.78"
NOBODY = 65534

_reason = (
    "needs root for a network namespace and a second user"
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None
    else chromium_missing()
    or (None if Path("/usr/bin/python3").exists() else "needs /usr/bin/python3")
)
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


def _run(mode: str) -> dict[str, Any]:
    run = subprocess.run(
        ["unshare", "-n", sys.executable, str(HERE / "engine_race.py"), mode, ADDRESS],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def race() -> dict[str, Any]:
    return _run("race")


@pytest.fixture(scope="module")
def sandbox() -> dict[str, Any]:
    return _run("sandbox")


def test_a_second_local_user_cannot_take_the_engine(race: dict[str, Any]) -> None:
    intruder = race["intruder"]
    assert intruder["uid"] == NOBODY
    # It was there, and saw the browser start ...
    assert intruder["chromium_processes"] > 0, race
    assert intruder["attempts"] > 0 and intruder["ports"], race
    # ... but no command line showed where the page is or any token,
    assert intruder["urls_on_command_lines"] == [], intruder
    assert intruder["tokens_seen"] == 0, intruder
    # it got no page, no WebSocket, neither end of the DevTools pipe, no look at the profile,
    assert intruder["pages"] == [] and intruder["websockets"] == [], intruder
    assert intruder["pipes_opened"] == [] and intruder["profiles_listed"] == [], intruder
    # and the engine carried both ways meanwhile.
    assert "error" not in race, race.get("error")
    assert race["carried"] == [50, 50], race


def test_root_runs_chromium_as_an_unprivileged_user_with_its_sandbox(
    sandbox: dict[str, Any],
) -> None:
    assert "error" not in sandbox, sandbox.get("error")
    assert sandbox["carried"] == [50, 50], sandbox
    processes = sandbox["processes"]
    assert len(processes) >= 3, sandbox  # browser, zygotes, renderers, utilities
    users = {uid for p in processes for uid in p["uids"]}
    assert len(users) == 1 and 0 not in users and NOBODY not in users, processes
    # (Chromium rewrites its children's command lines into one string: search the text.)
    lines = [" ".join(p["argv"]) for p in processes]
    assert not any("--no-sandbox" in line for line in lines), lines
    browser = next(p for p, line in zip(processes, lines, strict=True) if "--type=" not in line)
    renderers = [p for p, line in zip(processes, lines, strict=True) if "--type=renderer" in line]
    assert renderers, lines
    for renderer in renderers:
        # Chromium's sandbox: seccomp-bpf (mode 2) and a user namespace not the browser's
        assert renderer["seccomp"] == 2, renderer
        assert renderer["userns"] != browser["userns"], (renderer, browser)
    (uid,) = users
    assert sandbox["profile"] == {"uid": uid, "mode": 0o700}
    assert sandbox["home_mode"] == 0o711  # root's: the browser's user may pass, not look
    # Everything the browser's user had is gone with the engine.
    assert sandbox["home_left"] is False
    assert sandbox["left_by_browser_user"] == [], sandbox["left_by_browser_user"]


def test_chromium_hides_host_addresses_unless_they_are_pinned() -> None:
    result = _run("candidates")
    unpinned, pinned = result["unpinned"], result["pinned"]
    hosts = [line.split()[4] for line in unpinned if " typ host" in line]
    assert hosts and all(host.endswith(".local") for host in hosts), unpinned
    assert not any(ADDRESS in line for line in unpinned), unpinned
    assert not any(ADDRESS in line for line in result["unpinned_c_lines"]), result
    # pinned (the lab's and the tests' opt-in): the plain address, and only it
    pinned_hosts = {line.split()[4] for line in pinned if " typ host" in line}
    assert pinned_hosts == {ADDRESS}, pinned
