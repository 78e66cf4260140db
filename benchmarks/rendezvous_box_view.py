"""What the lab's box logs of one unwall host during a session (docs/fingerprints.md, "One
unwall host, as the box logs it"): the client with its rendezvous as it is, then with its
old ways (Python's TLS, RFC 5780's NAT check, offers unsealed), each starting, downloading
1 MB and stopping, every analyzer on and every rule in flag mode. Run as root from the
project root, with no other lab up:

    .venv/bin/python benchmarks/rendezvous_box_view.py [OUT.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from unwall.lab import manager, topology
from unwall.lab.censored import CensoredClient
from unwall.wire.bridgeline import BridgeLine

PROFILE = """
[dns]
poison = ["broker.test", "news.test"]
[ip]
block = ["203.0.113.20/32", "203.0.113.80/32"]
[sni]
block = ["broker.test", "news.test"]
[host]
block = ["broker.test", "news.test"]
[tls]
allow = "browsers"
action = "flag"
[stun]
change_request = true
action = "flag"
[webrtc]
allow = "browsers"
action = "flag"
[hosts]
repeat_ja3 = true
action = "flag"
[datachannel]
block = true
action = "flag"
"""

KEEP = {
    "tls": {"sni", "alpn", "ja4"},
    "http": {"host"},
    "stun": {"change-request", "ice-check", "software"},
    "dtls": {"ja4", "ja4s", "dtls-version"},
    "carrier": {"carrier"},
    "box": {"suspected"},
}


def summarize(db: Path, t0: float, t1: float) -> dict[str, Any]:
    con = sqlite3.connect(db)
    out: dict[str, Any] = {
        "dns": sorted(
            {
                n
                for (n,) in con.execute(
                    "select name from dns where client=? and time between ? and ?",
                    (topology.CENSORED_IP, t0, t1),
                )
            }
        )
    }
    flows: defaultdict[str, set[str]] = defaultdict(set)
    for proto, server, port, findings in con.execute(
        "select protocol, server, server_port, findings from flows"
        " where client=? and start between ? and ?",
        (topology.CENSORED_IP, t0, t1),
    ):
        for analyzer, key, value in json.loads(findings or "[]"):
            if key in KEEP.get(analyzer, ()):
                flows[f"{analyzer} {key}"].add(f"{value}")
        flows["flows"].add(f"{proto} {server}:{port}")
    out.update({k: sorted(v) for k, v in flows.items()})
    return out


async def session(
    info: dict[str, Any], name: str, workdir: Path, *args: str, bridge: str
) -> dict[str, Any]:
    db = Path(os.environ["UNWALL_LAB_STATE"]) / "flows.db"
    t0 = time.time()
    client = CensoredClient(info, workdir / f"{name}.log", *args, paths=2, bridge=bridge)
    try:
        setup = await client.until("tunnel ready", 90)
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            topology.CENSORED,
            "curl",
            "-s",
            "--max-time",
            "60",
            "--socks5-hostname",
            "127.0.0.1:1080",
            "http://open.test/blob/1000000",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        await asyncio.sleep(3)
    finally:
        client.stop()
    await asyncio.sleep(2)  # the box writes its last verdicts
    result = summarize(db, t0, time.time())
    result["setup_s"] = setup
    result["downloaded"] = len(out)
    return result


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["UNWALL_LAB_STATE"] = str(work / "lab")
        profile = work / "profile.toml"
        profile.write_text(PROFILE)
        try:
            info = manager.up(profile)
            old = BridgeLine.parse(info["bridge_line_fronted"])
            info["old_line"] = BridgeLine(old.broker, old.pin, old.fronts, None, old.ice).format()
            fronts = (
                "--ca-file",
                info["lab_ca"],
                "--front",
                "https://news.test/",
                "--front",
                "https://cdn.test/",
            )
            results = {
                "after": await session(info, "after", work, *fronts, bridge="bridge_line_fronted"),
                "before": await session(
                    info,
                    "before",
                    work,
                    *fronts,
                    "--broker-http",
                    "python",
                    "--nat-check",
                    "rfc5780",
                    bridge="old_line",
                ),
            }
        finally:
            manager.down(quiet=True)
    print(json.dumps(results, indent=1))
    Path(sys.argv[1] if len(sys.argv) > 1 else "rendezvous-box-view.json").write_text(
        json.dumps(results, indent=1)
    )


if __name__ == "__main__":
    asyncio.run(main())
