"""The Chromium engine with a second local user racing for it, and what runs as whom.

Run by test_chromium_engine_isolation.py as root inside a network namespace of its own
(`unshare -n`). Prints one JSON object.

Usage: python engine_race.py race ADDRESS
    `engine_intruder.py` runs as `nobody` (setpriv) from before the engine starts until
    a Chromium-to-aiortc pair has carried messages both ways; then: what the intruder saw
    and got, and whether the pair worked.
Usage: python engine_race.py sandbox ADDRESS
    The same pair, without an intruder; then every Chromium process's user, command line,
    seccomp mode and user namespace, and what the browser's user left behind.
Usage: python engine_race.py candidates ADDRESS
    A Chromium offer with no host address pinned (mDNS hiding stays on), and one with
    ADDRESS pinned (the lab's and the tests' opt-in): their candidate lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from unwall.transport import webrtc

HERE = Path(__file__).parent
NOBODY = 65534
COUNT = 50


def _network(address: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
    subprocess.run(["ip", "addr", "add", f"{address}/24", "dev", "v0"], check=True)
    subprocess.run(["ip", "link", "set", "v0", "up"], check=True)
    subprocess.run(["ip", "link", "set", "v1", "up"], check=True)
    subprocess.run(["ip", "route", "add", "default", "dev", "v0"], check=True)


def _processes(group: int) -> list[dict[str, Any]]:
    """Every process of Chromium's process group: user, arguments, sandboxing."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != group:  # pgrp
                continue
            status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
            found.append(
                {
                    "pid": int(proc.name),
                    "uids": [int(x) for x in status["Uid"].split()],
                    "seccomp": int(status["Seccomp"].strip()),
                    "userns": os.readlink(proc / "ns" / "user"),
                    "argv": (proc / "cmdline").read_bytes().decode().split("\x00"),
                }
            )
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return found


async def _pair() -> tuple[webrtc.Peer, webrtc.Peer]:
    offerer = webrtc.engine("chromium").new_peer([], carrier="datachannel")
    answerer = webrtc.engine("aiortc").new_peer([])
    await offerer.accept_answer(await answerer.answer(await offerer.offer()))
    await asyncio.wait_for(asyncio.gather(offerer.opened.wait(), answerer.opened.wait()), 20)
    return offerer, answerer


async def race(address: str, with_intruder: bool = True) -> dict[str, Any]:
    webrtc.set_host_addresses([address])
    intruder = None
    if with_intruder:
        intruder = await asyncio.create_subprocess_exec(
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "/usr/bin/python3", str(HERE / "engine_intruder.py"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert intruder.stdout is not None and intruder.stdin is not None
        assert (await intruder.stdout.readline()).strip() == b"ready"
    result: dict[str, Any] = {}
    try:
        offerer, answerer = await _pair()
        got: dict[str, list[bytes]] = {"offerer": [], "answerer": []}
        offerer.on_message = got["offerer"].append
        answerer.on_message = got["answerer"].append
        for i in range(COUNT):
            offerer.send(b"o%d" % i)
            answerer.send(b"a%d" % i)
            await asyncio.sleep(0.01)
        for _ in range(200):
            if len(got["offerer"]) >= COUNT and len(got["answerer"]) >= COUNT:
                break
            await asyncio.sleep(0.05)
        result["carried"] = [len(got["offerer"]), len(got["answerer"])]
        await asyncio.sleep(1)  # the intruder keeps trying meanwhile
        engine = webrtc.engine("chromium")
        pid = engine.pid  # type: ignore[attr-defined]
        result["processes"] = _processes(pid)
        home = getattr(engine, "_home", None)  # (None before issue 22)
        if home is not None:
            result["home"] = str(home)
            profile = home / "profile"
            stat = profile.stat()
            result["profile"] = {"uid": stat.st_uid, "mode": stat.st_mode & 0o777}
            result["home_mode"] = home.stat().st_mode & 0o777
        await offerer.close()
        await answerer.close()
    except Exception as exc:  # the old engine, taken over, never starts
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if intruder is not None:
            assert intruder.stdin is not None
            intruder.stdin.close()
            out, _ = await intruder.communicate()
            result["intruder"] = json.loads(out.decode().strip().splitlines()[-1])
        await webrtc.close_engines()
    if "home" in result:
        result["home_left"] = Path(result["home"]).exists()
        users = {p["uids"][0] for p in result["processes"]} - {0}
        left = []
        for uid in users:
            find = await asyncio.create_subprocess_exec(
                "find", "/tmp", "/dev/shm", "-xdev", "-maxdepth", "3", "-uid", str(uid),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            out, _ = await find.communicate()
            left += out.decode().split()
        result["left_by_browser_user"] = left
    return result


async def candidates(address: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, pinned in (("unpinned", None), ("pinned", [address])):
        webrtc.set_host_addresses(pinned)
        peer = webrtc.engine("chromium").new_peer([])
        sdp = await peer.offer()
        result[name] = [line for line in sdp.splitlines() if line.startswith("a=candidate:")]
        result[f"{name}_c_lines"] = [line for line in sdp.splitlines() if line.startswith("c=")]
        await peer.close()
        await webrtc.close_engines()  # the next offer starts a browser with the new setting
    return result


if __name__ == "__main__":
    _network(sys.argv[2])
    if sys.argv[1] == "candidates":
        result = asyncio.run(candidates(sys.argv[2]))
    else:
        result = asyncio.run(race(sys.argv[2], with_intruder=sys.argv[1] == "race"))
    print(json.dumps(result))
