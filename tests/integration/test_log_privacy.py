"""Issue 11, row 7: by default no log line names a destination or a client's or a
volunteer's address. The whole bridge runs (every role its own process) and is used as a
person would, including fetches that fail; then every role's log is read. The same run with
`--log-destinations` is the positive control: there, the same lines do name them.

Nothing here needs DNS: the destinations are addresses, or names curl refuses itself."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from unwall.local import DemoSite, LocalBridge, free_port, local_bridge

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

REFUSED = "10.11.12.13"  # private: the egress's policy refuses it before dialling


async def _curl(*args: str) -> int:
    process = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--fail", "--max-time", "20", "--output", "/dev/null", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await process.wait()


async def _use(bridge: LocalBridge, site: DemoSite, closed_port: int) -> None:
    await bridge.start_all()
    socks = ("--socks5-hostname", f"127.0.0.1:{bridge.socks_port}")
    http = ("--proxy", f"http://127.0.0.1:{bridge.http_port}")
    assert await _curl(*socks, f"{site.url}/") == 0
    assert await _curl(*socks, f"http://{REFUSED}:4444/") != 0
    assert await _curl(*http, f"http://{REFUSED}:4444/") != 0
    assert await _curl(*socks, f"http://127.0.0.1:{closed_port}/") != 0
    # A malformed target, which the HTTP proxy's error quotes.
    assert await _curl(*http, "--request-target", "http://bad_host!name/", "http://x/") != 0


def _logs(bridge: LocalBridge) -> dict[str, str]:
    return {role.name: role.log_path.read_text(errors="replace") for role in bridge.roles}


async def test_default_logs_name_no_destination_and_no_address(
    tmp_path: Path, site: DemoSite
) -> None:
    closed_port = free_port()
    async with local_bridge(tmp_path, broker_answer_timeout=2.0) as bridge:
        await _use(bridge, site, closed_port)
        await asyncio.sleep(0.5)
        logs = _logs(bridge)
    everything = "\n".join(logs.values())
    assert "refused" in logs["egress"]  # the refusals were logged ...
    for secret in (REFUSED, f":{closed_port}", "bad_host", site.url.removeprefix("http://")):
        assert secret not in everything, secret  # ... without naming what was asked for
    assert "(127.0.0.1)" not in logs["egress"]  # nor the volunteer's address
    assert "Traceback" not in everything


async def test_log_destinations_names_them(tmp_path: Path, site: DemoSite) -> None:
    closed_port = free_port()
    async with local_bridge(
        tmp_path, broker_answer_timeout=2.0, global_args=("--log-destinations",)
    ) as bridge:
        await _use(bridge, site, closed_port)
        await asyncio.sleep(0.5)
        logs = _logs(bridge)
    assert f"{REFUSED}:4444" in logs["egress"]
    assert f"{REFUSED}:4444" in logs["client"]
    assert "bad_host" in logs["client"]
    assert "(127.0.0.1)" in logs["egress"]
